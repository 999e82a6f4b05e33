"""The GPU benchmark scripts build valid configs for every method they list (checked here, run there)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cifar_accuracy import LIGHTLY_200_EPOCHS, markdown, method_config  # noqa: E402
from engine.config import validate_config  # noqa: E402


@pytest.mark.parametrize("method", sorted(LIGHTLY_200_EPOCHS))
def test_cifar_accuracy_configs_are_valid_resnet18_cifar_stem(method: str, tmp_path) -> None:
    args = argparse.Namespace(epochs=20, batch_size=512, device="cuda", cache_dir=str(tmp_path), compile=False,
                              time_limit=None, small=False)
    cfg = validate_config(method_config(method, args, "/data/cifar10.tar.gz"))
    assert cfg.method == method
    assert cfg.model.arch == "resnet18" and cfg.model.cifar_stem is True
    assert cfg.train.batch_size == 512 and cfg.train.epochs == 20
    assert cfg.eval.max_bank == 50_000 and cfg.eval.knn_k == 200
    # the preset's warm-up shrinks with the 10x shorter schedule (200 -> 20 epochs)
    assert cfg.optim.warmup_epochs <= 2.0
    if method == "byol":  # solo-learn's LARS recipe: eta 0.02, clipped at the lr
        assert (cfg.optim.optimizer, cfg.optim.lars_eta, cfg.optim.lars_clip) == ("lars", 0.02, True)
    if method == "barlow_twins":  # unclipped (without solo-learn's scale_loss, clipping broke it on the CPU proxy)
        assert (cfg.optim.optimizer, cfg.optim.lars_eta, cfg.optim.lars_clip) == ("lars", 0.02, False)
    if method == "dino":  # the ResNet recipe (lightly's benchmark), not the ViT preset's AdamW and multi-crop
        assert cfg.aug.local_crops.count == 0 and cfg.optim.optimizer == "sgd" and cfg.params["head_bn"] is True
        assert cfg.optim.lr == pytest.approx(0.12)  # x 512 / 256: lightly's 0.06 x 512 / 128


@pytest.mark.parametrize("method", sorted(LIGHTLY_200_EPOCHS))
def test_cifar_accuracy_lightly_recipe_is_lightlys_benchmark_optimiser(method: str, tmp_path) -> None:
    args = argparse.Namespace(epochs=10, batch_size=512, device="cuda", cache_dir=str(tmp_path), compile=False,
                              time_limit=None, small=False, recipe="lightly")
    cfg = validate_config(method_config(method, args, "/data/cifar10.tar.gz"))
    o = cfg.optim
    assert (o.optimizer, o.lr, o.weight_decay, o.warmup_epochs, o.exclude_bias_norm) == ("sgd", 0.24, 5e-4, 0.0, False)
    assert cfg.model.arch == "resnet18" and cfg.model.cifar_stem is True
    if method == "byol":
        assert (cfg.params["proj_hidden"], cfg.params["pred_hidden"], cfg.params["momentum"]) == (1024, 1024, 0.99)
    if method == "dino":
        assert cfg.aug.local_crops.count == 0 and cfg.params["head_layers"] == 2 and cfg.params["out_dim"] == 2048
    from engine.preflight import preflight

    preflight(cfg, 32)  # the method accepts the recipe (its own checks, on the meta device)


def test_markdown_table_names_epochs_device_and_reference() -> None:
    table = markdown({"device": "NVIDIA H100", "rows": [
        {"method": "simclr", "epochs": 20, "knn_top1": 0.7012, "lightly_200_epochs": 0.848, "wall_s": 90.0},
        {"method": "byol", "epochs": 20, "error": "CUDA out of memory", "lightly_200_epochs": 0.868}]})
    assert "| simclr | 20 | 0.701 | 0.848 | 1.5 min | NVIDIA H100 |" in table
    assert "| byol | 20 | CUDA out of memory | 0.868 | - | NVIDIA H100 |" in table


def test_step_weighted_rate_weights_each_window_by_its_steps():
    from bench.common import step_weighted_rate

    # windows end at steps 10 (warm-up), 30 (20 steps at 200/s) and 32 (2 steps at 50/s)
    windows = [(10, 100.0), (30, 200.0), (32, 50.0)]
    assert step_weighted_rate(windows, after_step=10) == pytest.approx(22 / (20 / 200 + 2 / 50))
    assert step_weighted_rate(windows, after_step=40) is None


def test_run_py_lightly_anchor_runs_at_smoke_size():
    pytest.importorskip("lightly")  # a bench-only extra: skipped where it is not installed (CI)
    from bench.run import bench_lightly, make_data

    args = argparse.Namespace(batch_size=8, steps=2, warmup=1, workers=0, precision="fp32", device="cpu",
                              n_images=64, data=None, cache_dir=None)
    res = bench_lightly(args, make_data(args))
    assert res["images_per_s"] > 0 and res["timed_steps"] == 2 and res["warmup_steps"] == 1


def test_cifar_accuracy_reports_the_untrained_backbone_floor(tmp_path) -> None:
    """The accuracy table's first row: the same kNN on a randomly initialised backbone, the floor a
    trained method must clear (on CIFAR-10 a random ResNet-18 already reaches about 0.36)."""
    import json

    from bench.cifar_accuracy import main

    assert main(["--small", "--baseline-only", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cifar10-accuracy-cpu-smoke-baseline.json").read_text())
    (row,) = res["rows"]
    assert row["method"].startswith("untrained") and row["status"] == "completed" and row["epochs"] == 0
    assert 0.0 < row["knn_top1"] < 1.0
