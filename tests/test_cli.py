"""The command-line contract other tools rely on (issue 2, point 9)."""

import json
import subprocess
import sys

import pytest
import torch

from engine.cli import evaluate, export, train
from helpers import metrics, with_, write_cfg


def test_list_methods(capsys):
    assert train.main(["--list-methods"]) == 0
    names = capsys.readouterr().out.split()
    assert "simclr" in names


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    path = write_cfg(tmp, _tiny())
    out = tmp / "run"
    rc = train.main(["--config", str(path), "--out", str(out), "--steps", "8", "--quiet"])
    assert rc == 0
    return out


def _tiny():
    return {
        "method": "simclr",
        "data": {"source": "shapes", "shapes_size": 32, "shapes_train": 256, "shapes_test": 128},
        "model": {"arch": "resnet18", "cifar_stem": False},
        "aug": {"global_crops": {"count": 2, "size": 32, "scale": [0.3, 1.0]}},
        "optim": {"optimizer": "adamw", "lr": 1e-3, "scale_lr": False, "warmup_epochs": 0},
        "train": {"steps": 6, "batch_size": 32, "device": "cpu", "log_every": 1, "probe_every_s": 1000},
        "eval": {"max_bank": 256, "max_queries": 128},
    }


def test_run_folder_contents(trained_run):
    for name in ("config.yaml", "metrics.jsonl", "events.log", "run.json", "checkpoints/last.pt"):
        assert (trained_run / name).is_file(), name
    rows = metrics(trained_run)
    assert all("step" in r and "event" in r for r in rows)
    train_rows = [r for r in rows if r["event"] == "train"]
    assert len(train_rows) == 8 and all("loss" in r and "lr" in r for r in train_rows)
    evals = [r for r in rows if r["event"] == "eval"]
    assert evals and 0.0 <= evals[-1]["knn_top1"] <= 1.0
    assert rows[0]["event"] == "run_started" and rows[-1]["event"] == "finished"
    assert json.loads((trained_run / "run.json").read_text())["status"] == "completed"


def test_config_yaml_is_reusable(trained_run, tmp_path, capsys):
    out = tmp_path / "again"
    assert train.main(["--config", str(trained_run / "config.yaml"), "--out", str(out), "--steps", "2",
                       "--quiet"]) == 0
    assert (out / "checkpoints" / "last.pt").is_file()


def test_eval_knn_prints_one_json_line(trained_run, capsys):
    assert evaluate.main(["knn", "--run", str(trained_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    row = json.loads(out[0])
    assert 0.0 <= row["knn_top1"] <= 1.0 and row["step"] == 8
    # the same number the run logged at its end
    last = [r for r in metrics(trained_run) if r["event"] == "eval"][-1]
    assert row["knn_top1"] == pytest.approx(last["knn_top1"], abs=1e-6)


def test_eval_linear_prints_one_json_line(trained_run, capsys):
    assert evaluate.main(["linear", "--run", str(trained_run), "--device", "cpu", "--epochs", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    row = json.loads(out[0])
    assert 0.0 <= row["linear_top1"] <= 1.0 and 0.0 <= row["train_top1"] <= 1.0
    assert row["step"] == 8 and row["n_train"] == 256 and row["n_test"] == 128 and row["epochs"] == 5
    kept = json.loads((trained_run / "linear_probe.json").read_text())  # for the runs panel's Linear column
    assert kept["linear_top1"] == row["linear_top1"] and kept["step"] == 8
    with pytest.raises(SystemExit) as e:  # argparse: exit 2
        evaluate.main(["linear", "--run", str(trained_run), "--epochs", "0"])
    assert e.value.code == 2
    assert evaluate.main(["linear", "--run", str(trained_run), "--lr", "-1"]) == 2
    assert "--lr must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["torchvision", "timm", "safetensors"])
def test_export_loads_strictly_into_library_models(trained_run, tmp_path, fmt):
    import timm
    import torchvision

    out = tmp_path / f"bb.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    assert export.main(["--run", str(trained_run), "--format", fmt, "--out", str(out)]) == 0
    if fmt == "safetensors":
        from safetensors.torch import load_file

        sd = load_file(out)
    else:
        sd = torch.load(out, weights_only=True)
    if fmt == "torchvision":
        m = torchvision.models.resnet18()
        m.fc = torch.nn.Identity()
    else:
        m = timm.create_model("resnet18", num_classes=0, pretrained=False)
    m.load_state_dict(sd, strict=True)
    # same features as the run's own backbone
    from engine.export import load_run_method

    _, method, _ = load_run_method(trained_run)
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    torch.testing.assert_close(m(x), method.backbone(x), rtol=1e-4, atol=1e-4)


def test_console_script_bad_method_exits_2(tmp_path):
    exe = [sys.executable, "-m", "engine.cli.train"]
    r = subprocess.run(exe + ["--method", "nope", "--data", "shapes", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown method 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_relative_data_path_still_resolves_from_another_folder(tmp_path, monkeypatch, capsys):
    """--data and data.cache_dir given relative to where ssl-train started are saved absolute, so
    the run resumes and evaluates from any folder."""
    import numpy as np
    import yaml
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "proj" / "imgs" / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "proj" / "imgs" / cls / f"{i}.png")
    cfg = write_cfg(tmp_path, _tiny())
    monkeypatch.chdir(tmp_path / "proj")
    rc = train.main(["--config", str(cfg), "--data", "imgs", "--set", "data.cache_dir=cache", "--out", "runs/r",
                     "--steps", "2", "--batch-size", "16", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "proj" / "runs" / "r" / "config.yaml").read_text())["data"]
    assert saved["source"] == str(tmp_path / "proj" / "imgs")
    assert saved["cache_dir"] == str(tmp_path / "proj" / "cache")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert train.main(["--resume", "proj/runs/r", "--steps", "4", "--quiet"]) == 0, capsys.readouterr().err
    assert evaluate.main(["knn", "--run", "proj/runs/r"]) == 0, capsys.readouterr().err


def test_export_prints_a_timm_recipe_that_loads_a_cifar_stem_run(tmp_path, capsys):
    """The printed timm line is code a user can paste: for a CIFAR-stem ResNet it swaps the stem."""
    import timm

    cfg = write_cfg(tmp_path, with_(_tiny(), **{"model.cifar_stem": True, "data.shapes_size": 16,  # small: a
                                                 "aug.global_crops.size": 16, "eval.max_bank": 64,  # CIFAR stem
                                                 "eval.max_queries": 32}))  # keeps the full resolution
    assert train.main(["--config", str(cfg), "--out", str(tmp_path / "r"), "--steps", "1", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "bb.pt"
    assert export.main(["--run", str(tmp_path / "r"), "--format", "timm", "--out", str(out)]) == 0
    recipe = capsys.readouterr().out.split("timm: ", 1)[1].strip()
    scope = {"timm": timm, "torch": torch}
    exec(recipe if recipe.startswith("m = ") else f"m = {recipe}", scope)
    scope["m"].load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_unwritable_outputs_are_one_line_errors(tmp_path, trained_run, capsys, monkeypatch):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-folder", tmp_path / "a-file" / "bb.pt"):
        assert export.main(["--run", str(trained_run), "--format", "timm", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "a-folder").iterdir())  # no temporary file left behind
    # a linear probe whose run folder cannot take the result still prints it, with a warning
    from engine.errors import OutputError
    from engine.rundir import RunDir

    def refuse(self, data):
        raise OutputError(f"cannot write {self.linear_probe}: Read-only file system")

    monkeypatch.setattr(RunDir, "write_linear_probe", refuse)
    assert evaluate.main(["linear", "--run", str(trained_run), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    assert "linear_top1" in json.loads(captured.out) and "Read-only file system" in captured.err
    assert evaluate.main(["linear", "--run", str(trained_run), "--lr", "inf"]) == 2
    assert "finite" in capsys.readouterr().err


def test_config_that_is_not_text_or_is_a_folder_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"\xff\xfe\x00junk")
    for cfg, needle in ((bad, "UTF-8"), (tmp_path, "is a folder")):
        assert train.main(["--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err, err


# the export's metadata tells a CIFAR-stem ResNet (3x3 conv1, no max-pool) from the standard one
@pytest.mark.parametrize("cifar", [True, False])
def test_export_spec_records_the_cifar_stem(cifar: bool) -> None:
    import torchvision

    from engine.components import build_backbone
    from engine.config import validate_config
    from engine.export import _plain_state_dict, timm_spec
    from helpers import with_

    cfg = validate_config(with_(_tiny(), **{"model.cifar_stem": cifar}))
    bb = build_backbone(cfg.model, 32)
    spec = timm_spec(cfg, bb)
    assert spec["cifar_stem"] is cifar
    # what the metadata tells the user to do makes the torchvision model load the weights strictly
    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()
    if spec["cifar_stem"]:
        m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = torch.nn.Identity()
    m.load_state_dict(_plain_state_dict(bb), strict=True)


# the safetensors file carries the same metadata as FILE.json (model name, kwargs, ...)
def test_export_safetensors_carries_the_metadata(trained_run, tmp_path) -> None:
    import json

    from safetensors import safe_open

    from engine.cli import export

    out = tmp_path / "bb.safetensors"
    assert export.main(["--run", str(trained_run), "--format", "safetensors", "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    side = json.loads(out.with_suffix(".safetensors.json").read_text())
    assert meta == side
    assert meta["format"] == "safetensors" and meta["model_name"] == "resnet18" and meta["kwargs"] == {"num_classes": 0}


# a run that fails (TrainingError, here a NaN loss) makes ssl-train exit 1, not 2
def test_failed_training_exits_1(tmp_path, monkeypatch, capsys) -> None:
    from engine.cli import train
    from engine.methods.simclr import SimCLR
    from helpers import write_cfg

    orig = SimCLR.training_step

    def poisoned(self, batch, step):
        out = orig(self, batch, step)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    path = write_cfg(tmp_path, _tiny())
    rc = train.main(["--config", str(path), "--out", str(tmp_path / "run"), "--steps", "3", "--quiet"])
    assert rc == 1
    assert "training failed" in capsys.readouterr().err


# the exported keys are the library model's own, also for a torch.compile'd backbone
def test_plain_state_dict_unwraps_torch_compile() -> None:
    import torchvision

    from engine.export import _plain_state_dict

    m = torchvision.models.resnet18()
    compiled = torch.compile(m)  # wraps as _orig_mod (compiles lazily: nothing is compiled here)
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    sd = _plain_state_dict(compiled)
    assert list(sd) == list(m.state_dict())
    torchvision.models.resnet18().load_state_dict(sd, strict=True)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_cleanly_with_a_checkpoint(tmp_path, sig):
    """Ctrl-C (or a scheduler's SIGTERM) ends the run after the current step: exit 0, status
    'stopped', a checkpoint to resume from, the run folder's lock released."""
    import signal
    import time

    path = write_cfg(tmp_path, _tiny())
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "engine.cli.train", "--config", str(path), "--out", str(out),
                          "--steps", "100000", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def trained() -> bool:
            m = out / "metrics.jsonl"
            return m.exists() and '"train"' in m.read_text()

        deadline = time.monotonic() + 120
        while not trained():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        p.send_signal(getattr(signal, sig))
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, stderr
    assert "stopped at step" in stdout
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "run.lock").exists()
