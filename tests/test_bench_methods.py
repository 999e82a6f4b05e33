"""CPU smoke test of bench/methods.py (the per-method benchmark against lightly): every
benchmark in --small mode through the module's own functions (tiny ViT / ResNet, batch 4,
one warm-up and one timed step, no DataLoader workers).

lightly is not in the test extras: without it the anchor tests are skipped, and the
``ours`` / ``model_only`` measurements are still checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["dino_vits16", "mae_vitb16", "simmim_vitb16", "moco_v2", "byol", "simsiam", "barlow_twins", "swav",
           "moco_v1", "moco_v3"]


@pytest.fixture(scope="module")
def bm():
    name = "bench_methods_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "methods.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the file executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _args(bm, out: Path, *extra: str):
    return bm.parse_args(["--small", "--device", "cpu", "--out", str(out), "--steps", "1", "--warmup", "1",
                          "--workers", "0", "--no-flops", *extra])


def _ips(res: dict, part: str) -> float:
    v = res[part].get("images_per_s")
    assert v is not None, f"{part}: {res[part]}"
    assert math.isfinite(v) and v > 0
    return v


def test_bench_list(bm):
    assert bm.BENCHES == BENCHES
    args = _args(bm, Path("/nonexistent"))
    assert args.small and not args.cuda and args.steps == 1 and args.warmup == 1


@pytest.mark.parametrize("name", BENCHES)
def test_ours_and_model_only(bm, tmp_path, name):
    res = bm.run_bench(name, _args(bm, tmp_path), parts=["ours", "model_only"])
    _ips(res, "ours")
    _ips(res, "model_only")
    assert res["ok"] is True
    assert res["ours"]["timed_steps"] >= 1
    saved = json.loads((tmp_path / f"{name}-cpu.json").read_text())
    assert saved["ours"]["images_per_s"] == pytest.approx(res["ours"]["images_per_s"])
    assert saved["device"] and saved["versions"]["torch"] and saved["batch_size"] == 4
    assert saved["precision"] == "fp32" and saved["crops"]["global"]["count"] >= 1
    assert saved["target"]["ratio"] >= 1.5 and saved["target"]["issue"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("name", BENCHES)
def test_lightly_anchor(bm, tmp_path, name):
    pytest.importorskip("lightly")
    res = bm.run_bench(name, _args(bm, tmp_path), parts=["lightly"])
    _ips(res, "lightly")
    assert res["lightly"]["lightly_version"]
    assert "EXCLUDES" in res["lightly"]["includes"] or "INCLUDES" in res["lightly"]["includes"]


def test_ratio_and_flops(bm, tmp_path):
    """MAE with FLOP counting: FLOPs per image for ours (and lightly), ratio and target fields."""
    has_lightly = importlib.util.find_spec("lightly") is not None
    parts = ["model_only", "lightly"] if has_lightly else ["model_only"]
    args = _args(bm, tmp_path)
    args.no_flops = False
    res = bm.run_bench("mae_vitb16", args, parts=parts)
    _ips(res, "model_only")
    assert res["flops"]["flops_per_image_ours"] > 0
    assert res["flops"]["peak_bf16_tflops"] is None  # CPU: no utilisation
    if has_lightly:
        assert res["flops"]["flops_per_image_lightly"] > 0
        assert res["ratio_model_only_to_lightly"] > 0
        assert res["target"]["met"]["model_only"] in (True, False)
    assert bm.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bm.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert bm.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert bm.peak_bf16_tflops("Some GPU") is None


def test_missing_lightly_is_a_recorded_skip(bm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightly", None)  # import lightly -> ImportError
    res = bm.run_bench("byol", _args(bm, tmp_path), parts=["lightly"])
    assert "skipped" in res["lightly"] and "lightly" in res["lightly"]["skipped"]
    assert json.loads((tmp_path / "byol-cpu.json").read_text())["lightly"]["skipped"]


def test_failing_part_is_recorded_and_the_rest_runs(bm, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom: out of memory")

    monkeypatch.setitem(bm.PARTS, "ours", boom)
    res = bm.run_bench("simmim_vitb16", _args(bm, tmp_path), parts=["ours", "model_only"])
    assert "boom" in res["ours"]["error"]
    _ips(res, "model_only")
    assert res["ok"] is False
    assert "error" in json.loads((tmp_path / "simmim_vitb16-cpu.json").read_text())["ours"]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGALRM needs the main thread")
def test_time_limit_is_recorded(bm, tmp_path, monkeypatch):
    def slow(*a, **k):
        time.sleep(5)
        return {"images_per_s": 1.0}

    monkeypatch.setitem(bm.PARTS, "model_only", slow)
    t = time.monotonic()
    res = bm.run_bench("mae_vitb16", _args(bm, tmp_path), parts=["model_only", "lightly"], timeout=1.5)
    assert time.monotonic() - t < 3.5
    assert res["model_only"]["error"].startswith("timeout")
    assert res["lightly"]["error"].startswith("not run")
    assert res["ok"] is False


def test_main_keeps_going_after_a_failing_benchmark(bm, tmp_path, monkeypatch):
    real = bm.run_bench

    def run_bench(name, args, **kw):
        if name == "mae_vitb16":
            raise RuntimeError("broken benchmark")
        return real(name, args, **kw)

    monkeypatch.setattr(bm, "run_bench", run_bench)
    rc = bm.main(["--small", "--device", "cpu", "--out", str(tmp_path), "--steps", "1", "--warmup", "1",
                  "--workers", "0", "--no-flops", "--only", "mae_vitb16", "simmim_vitb16", "--parts", "model_only"])
    assert rc == 1
    assert "broken" in json.loads((tmp_path / "mae_vitb16-cpu.json").read_text())["error"]
    assert json.loads((tmp_path / "simmim_vitb16-cpu.json").read_text())["model_only"]["images_per_s"] > 0


def test_profile_step_splits_a_real_trainer_step_into_phases(tmp_path):
    """bench/profile_step.py: the phases of the engine's own step, profiled (CPU smoke here; on
    CUDA it adds kernel counts and GPU busy time, the numbers that say launch- or GPU-bound)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.profile_step import PHASES, main

    assert main(["--device", "cpu", "--only", "dino_vits16", "--steps", "2", "--warmup", "2",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile-dino_vits16-cpu.json").read_text())
    assert res["profiled_steps"] == 2 and res["wall_ms_per_step"] > 0
    assert set(res["phases_ms_per_step"]) == set(PHASES)
    assert all(v["cpu"] > 0 for v in res["phases_ms_per_step"].values())
    names = [r["name"] for r in res["top_by_cpu_self"]]
    assert names and not set(names) & set(PHASES)


def test_compiled_units_are_reported_with_what_fell_back(bm):
    import torch
    from torch import nn

    from engine.compiling import Compiled

    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2)
    comp = Compiled([a, b, c], "default")
    comp.compile()
    b._compiled_call_impl = None  # as after a fall-back of that one module
    assert bm.unit_counts(comp) == {"Linear": {"units": 2, "still_compiled": 1},
                                    "LayerNorm": {"units": 1, "still_compiled": 1}}
    torch._dynamo.reset()


def test_no_channels_last_reaches_our_config_and_names_its_own_files(bm, tmp_path):
    args = _args(bm, tmp_path, "--no-channels-last")
    spec = bm.SPECS["simmim_vitb16"]
    sz = bm.sizes(spec, args)
    assert bm.our_config(spec, args, sz, 3)["train"]["channels_last"] is False
    assert bm.our_config(spec, _args(bm, tmp_path), sz, 3)["train"]["channels_last"] is True
    assert bm.result_path(args, "simmim_vitb16").name == "simmim_vitb16-cpu-nchw.json"
    assert bm.result_path(_args(bm, tmp_path), "simmim_vitb16").name == "simmim_vitb16-cpu.json"
