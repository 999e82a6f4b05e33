"""Trainer behaviour: events, control calls, checkpoints, failures (issue 2 point 7)."""

import threading
import time

import numpy as np
import pytest
import torch

from engine import events as ev
from engine.checkpoint import load_checkpoint
from engine.config import validate_config
from engine.errors import ConfigError, TrainingError
from engine.optim import cosine_schedule
from engine.trainer import Trainer
from helpers import metrics, with_
from test_cli import _tiny


def _trainer(tmp_path, name="r", listeners=(), **dotted):
    cfg = validate_config(with_(_tiny(), **dotted))
    return Trainer(cfg, tmp_path / name, listeners=listeners)


def test_events_reach_every_listener_in_order(tmp_path):
    a, b = [], []
    fin = _trainer(tmp_path, listeners=(a.append, b.append), **{"train.steps": 3}).run()
    assert fin.status == "completed"
    kinds = [type(e).__name__ for e in a]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    assert [type(e) for e in a] == [type(e) for e in b]
    assert {"StepMetrics", "Evaluation", "CheckpointSaved"} <= set(kinds)
    steps = [e.step for e in a if isinstance(e, ev.StepMetrics)]
    assert steps == [1, 2, 3]
    # the names of the classes that the evaluation's labels index, for the embedding legend
    names = a[0].class_names
    assert len(names) == 10 and "circle" in names
    assert metrics(tmp_path / "r")[0]["class_names"] == names


def test_resume_gives_the_same_next_losses(tmp_path):
    full = _trainer(tmp_path, "full", **{"train.steps": 8})
    full.run()
    part = _trainer(tmp_path, "part", **{"train.steps": 8})
    part.subscribe(lambda e: part.stop() if isinstance(e, ev.StepMetrics) and e.step == 4 else None)
    assert part.run().status == "stopped"
    cfg = validate_config(with_(_tiny(), **{"train.steps": 8}))
    Trainer(cfg, tmp_path / "part", resume=True).run()
    loss = lambda rows: {r["step"]: r["loss"] for r in rows if r["event"] == "train"}  # noqa: E731
    a, b = loss(metrics(tmp_path / "full")), loss(metrics(tmp_path / "part"))
    assert sorted(b) == list(range(1, 9))
    for s in range(5, 9):
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), (s, a, b)


def test_stop_while_the_data_load_ends_the_run_without_training(tmp_path):
    """Stop pressed while a large dataset is still being generated/decoded ends the run at the
    next chunk: status stopped, no step, no checkpoint, the stream closed by Finished."""
    seen: list[ev.Event] = []
    tr = _trainer(tmp_path, listeners=(seen.append,), **{"train.steps": 3, "data.shapes_train": 200_000})
    threading.Timer(0.5, tr.stop).start()
    t0 = time.monotonic()
    fin = tr.run()
    assert fin.status == "stopped" and fin.step == 0
    assert time.monotonic() - t0 < 60  # generating 200,000 images would take minutes
    assert isinstance(seen[-1], ev.Finished) and not any(isinstance(e, ev.StepMetrics) for e in seen)
    assert any(isinstance(e, ev.RunWarning) and "loading the data" in e.message for e in seen)
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    assert '"stopped"' in (tmp_path / "r" / "run.json").read_text()


def test_pause_resume_stop_are_cooperative(tmp_path):
    seen: list[ev.Event] = []
    started = threading.Event()

    def listen(e):
        seen.append(e)
        if isinstance(e, ev.StepMetrics):
            started.set()

    tr = _trainer(tmp_path, listeners=(listen,), **{"train.steps": 10_000, "train.ckpt_every": 0})
    th = threading.Thread(target=tr.run)
    th.start()
    assert started.wait(60)
    tr.pause()
    time.sleep(0.3)
    n = len([e for e in seen if isinstance(e, ev.StepMetrics)])
    time.sleep(0.6)
    assert len([e for e in seen if isinstance(e, ev.StepMetrics)]) <= n + 1  # at most the step in flight
    assert any(isinstance(e, ev.StatusChanged) and e.status == "paused" for e in seen)
    tr.resume()
    t = time.time()
    while len([e for e in seen if isinstance(e, ev.StepMetrics)]) <= n + 1 and time.time() - t < 30:
        time.sleep(0.05)
    tr.stop()
    th.join(60)
    assert not th.is_alive()
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.status == "stopped"
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == fin.step


def test_live_change_applies_at_next_step_and_is_logged(tmp_path):
    seen = []
    tr = _trainer(tmp_path, listeners=(seen.append,), **{"train.steps": 6})

    def on(e):
        if isinstance(e, ev.StepMetrics) and e.step == 2:
            tr.set_param("params.temperature", 0.2)
            tr.set_param("optim.lr", 5e-4)

    tr.subscribe(on)
    tr.run()
    changes = [e for e in seen if isinstance(e, ev.LiveChange)]
    assert [(c.key, c.new, c.step) for c in changes] == [("params.temperature", 0.2, 2), ("optim.lr", 5e-4, 2)]
    assert tr.method.p.temperature == 0.2
    lrs = {e.step: e.lr for e in seen if isinstance(e, ev.StepMetrics)}
    from engine.optim import cosine_schedule

    shape = cosine_schedule(1.0, 0.0, 6)  # the LR's shape; the live change rescales its peak
    assert lrs[2] == pytest.approx(1e-3 * shape[1]) and lrs[3] == pytest.approx(5e-4 * shape[2])
    logged = [r for r in metrics(tmp_path / "r") if r["event"] == "live_change"]
    assert len(logged) == 2 and "live_change" in (tmp_path / "r" / "events.log").read_text()
    # exported, the config is the one the run ended with; config.yaml keeps the start values
    import yaml

    from engine.rundir import config_as_ended

    text, changes = config_as_ended(tmp_path / "r")
    start = validate_config(yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()))
    assert changes == {"params.temperature": (start.params["temperature"], 0.2), "optim.lr": (start.optim.lr, 5e-4)}
    ended = validate_config(yaml.safe_load(text))
    assert ended.params["temperature"] == 0.2 and ended.optim.lr == 5e-4 and ended.train == start.train
    assert text.startswith("# r: the config it ended with") and "#   optim.lr: 0.001 -> 0.0005" in text


def test_invalid_live_change_is_refused(tmp_path):
    tr = _trainer(tmp_path)
    with pytest.raises(ConfigError, match="cannot change during a run"):
        tr.set_param("params.proj_out", 64)
    with pytest.raises(ConfigError, match="params.temperature"):
        tr.set_param("params.temperature", -1.0)


def test_nan_loss_ends_with_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from engine.methods.simclr import SimCLR

    orig = SimCLR.training_step

    def poisoned(self, batch, step):
        out = orig(self, batch, step)
        if step >= 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    seen = []
    tr = _trainer(tmp_path, listeners=(seen.append,), **{"train.steps": 8, "train.ckpt_every": 2})
    with pytest.raises(TrainingError, match="lower optim.lr"):
        tr.run()
    errs = [e for e in seen if isinstance(e, ev.Error)]
    assert len(errs) == 1 and "nan" in errs[0].message.lower()
    assert isinstance(seen[-1], ev.Finished) and seen[-1].status == "failed"
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_schedules_warmup_then_cosine(tmp_path):
    seen = []
    _trainer(tmp_path, listeners=(seen.append,),
             **{"train.steps": 16, "optim.warmup_epochs": 1.0, "optim.min_lr": 1e-5}).run()
    lrs = [e.lr for e in seen if isinstance(e, ev.StepMetrics)]
    peak = max(lrs)
    assert lrs[0] == 0.0 and lrs.index(peak) == 8  # 8 steps per epoch of warmup
    assert peak == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[8:], lrs[9:]))
    assert lrs[-1] > 1e-5 - 1e-12


# ------------------------------------------------- what is saved when things go wrong
def _poison(monkeypatch, from_step: int, weights: bool = False, pause_at: int | None = None, box=None):
    """SimCLR whose loss reads NaN from ``from_step`` (gradients stay finite unless ``weights``)."""
    from engine.methods.simclr import SimCLR

    orig = SimCLR.training_step

    def poisoned(self, batch, step):
        out = orig(self, batch, step)
        if step >= from_step:
            out.loss = out.loss * float("nan") if weights else out.loss + torch.tensor(float("nan"))
        if pause_at is not None and step == pause_at:
            box["trainer"].pause()
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)


def test_stop_while_paused_checks_the_unlogged_steps_before_saving(tmp_path, monkeypatch):
    box: dict = {}
    _poison(monkeypatch, from_step=3, pause_at=5, box=box)
    seen = []

    def listen(e):
        seen.append(e)
        if isinstance(e, ev.StatusChanged) and e.status == "paused":
            box["trainer"].stop()  # Stop pressed while paused: the loop ends between read-backs

    tr = box["trainer"] = _trainer(tmp_path, listeners=(listen,),
                                   **{"train.steps": 20, "train.log_every": 100, "train.ckpt_every": 100})
    with pytest.raises(TrainingError, match="the loss became nan"):
        tr.run()
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()  # nothing saved from the bad steps
    assert seen[-1].status == "failed"


def test_non_finite_weights_under_a_finite_loss_are_never_checkpointed(tmp_path, monkeypatch):
    seen = []

    def listen(e):
        seen.append(e)
        if isinstance(e, ev.StepMetrics) and e.step == 4:  # after step 4's (finite) loss, before its checkpoint
            with torch.no_grad():  # as a non-finite gradient would leave them
                next(tr.method.backbone.parameters()).fill_(float("nan"))

    tr = _trainer(tmp_path, listeners=(listen,), **{"train.steps": 4, "train.ckpt_every": 2,
                                                     "train.log_every": 1})
    with pytest.raises(TrainingError, match="weights became NaN"):
        tr.run()
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_failed_resume_leaves_the_run_summary_alone(tmp_path):
    import json

    _trainer(tmp_path, **{"train.steps": 3}).run()
    before = json.loads((tmp_path / "r" / "run.json").read_text())
    cfg = validate_config(with_(_tiny(), **{"train.steps": 6, "params.proj_out": 64}))
    with pytest.raises(Exception, match="cannot resume"):
        Trainer(cfg, tmp_path / "r", resume=True).run()
    after = json.loads((tmp_path / "r" / "run.json").read_text())
    assert after["status"] == "completed" and after["step"] == 3 and after["best_knn_top1"] == before["best_knn_top1"]


def test_checkpoint_names_the_image_size_and_files_get_normal_permissions(tmp_path):
    import os

    _trainer(tmp_path, **{"train.steps": 2}).run()
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["image_size"] == 32  # export / eval rebuild the model without guessing from the data
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.yaml", "run.json", "checkpoints/last.pt"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_an_explicit_set_on_resume_wins_over_the_checkpoints_live_value(tmp_path):
    tr = _trainer(tmp_path, **{"train.steps": 4})
    tr.subscribe(lambda e: tr.set_param("params.temperature", 0.3) if isinstance(e, ev.StepMetrics)
                 and e.step == 1 else None)
    tr.subscribe(lambda e: tr.stop() if isinstance(e, ev.StepMetrics) and e.step == 2 else None)
    tr.run()
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["live"] == {"params.temperature": 0.3}
    same = Trainer(validate_config(with_(_tiny(), **{"train.steps": 4})), tmp_path / "r", resume=True)
    same.run()
    assert same.method.p.temperature == 0.3  # the live change carries over
    again = Trainer(validate_config(with_(_tiny(), **{"train.steps": 6, "params.temperature": 0.7})),
                    tmp_path / "r", resume=True)
    again.run()
    assert again.method.p.temperature == 0.7  # but not over a value given for this resume


def test_a_run_folder_in_use_is_refused_and_overwrite_keeps_other_files(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from engine.errors import UserError

    _trainer(tmp_path, **{"train.steps": 2}).run()
    root = tmp_path / "r"
    assert not (root / "run.lock").exists()  # released at the end
    (root / "probes").mkdir(exist_ok=True)
    (root / "probes" / "probe-attention-2.npz").write_bytes(b"x")
    (root / "checkpoints" / "notes.txt").write_text("mine")
    (root / "README").write_text("mine too")
    # a live process holds the folder: neither overwrite nor resume touches it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / "run.lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        for kw in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(UserError, match="in use"):
                Trainer(validate_config(with_(_tiny(), **{"train.steps": 4})), root, **kw).run()
        assert (root / "checkpoints" / "last.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: a stale lock does not block; overwrite replaces only the run's own files
    Trainer(validate_config(with_(_tiny(), **{"train.steps": 2})), root, overwrite=True).run()
    assert not (root / "probes" / "probe-attention-2.npz").exists()
    assert (root / "checkpoints" / "notes.txt").read_text() == "mine" and (root / "README").exists()
    assert not (root / "run.lock").exists() and os.path.exists(root / "checkpoints" / "last.pt")


def test_weight_decay_follows_its_schedule(tmp_path):
    seen: list[ev.Event] = []
    tr = _trainer(tmp_path, listeners=(seen.append,),
                  **{"train.steps": 8, "optim.weight_decay": 0.04, "optim.weight_decay_end": 0.4})
    tr.run()
    wds = [e.weight_decay for e in seen if isinstance(e, ev.StepMetrics)]
    np.testing.assert_allclose(wds, cosine_schedule(0.04, 0.4, 8), rtol=1e-6)
    decayed = [g for g in tr.opt.param_groups if g["wd_scale"] == 1.0]
    assert decayed and decayed[0]["weight_decay"] == pytest.approx(wds[-1])


def test_resume_restores_the_global_rng(tmp_path):
    """MoCo's shuffling BN draws its permutation from torch's global RNG: a resumed run must
    continue that stream, whatever the process drew in between."""
    dotted = {"train.steps": 6, "method": "moco_v2", "params.bn_splits": 2, "params.queue_size": 64,
              "eval.max_bank": 64, "eval.max_queries": 32}
    _trainer(tmp_path, "full", **dotted).run()
    part = _trainer(tmp_path, "part", **dotted)
    part.subscribe(lambda e: part.stop() if isinstance(e, ev.StepMetrics) and e.step == 3 else None)
    assert part.run().status == "stopped"
    torch.manual_seed(999)
    Trainer(validate_config(with_(_tiny(), **dotted)), tmp_path / "part", resume=True).run()
    loss = lambda rows: {r["step"]: r["loss"] for r in rows if r["event"] == "train"}  # noqa: E731
    a, b = loss(metrics(tmp_path / "full")), loss(metrics(tmp_path / "part"))
    for s in range(4, 7):
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), s


# optimiser step s trains on batch divmod(s, steps_per_epoch) of the stream:
# epoch 0 starts with its batch 0 and every batch of an epoch is used once
def test_trainer_step_s_takes_batch_divmod_s_steps_per_epoch(tmp_path, monkeypatch) -> None:
    from engine.data.stream import BatchStream

    calls = []
    real = BatchStream.batch

    def record(self, epoch, index):
        calls.append((epoch, index))
        return real(self, epoch, index)

    monkeypatch.setattr(BatchStream, "batch", record)
    tr = _trainer(tmp_path, **{"train.steps": 6, "train.batch_size": 64, "train.eval_every": 0,
                               "train.ckpt_every": 10_000})  # 256 training images: 4 batches an epoch
    tr.run()
    assert calls == [divmod(s, 4) for s in range(6)]


def test_local_crops_are_not_made_for_a_method_that_ignores_them(tmp_path):
    """A DINO-style multi-crop setting kept when switching to SimCLR would compute crops that
    SimCLR never reads: none are made, and the run says so."""
    seen: list[ev.Event] = []
    tr = _trainer(tmp_path, listeners=(seen.append,),
                  **{"train.steps": 1, "aug.local_crops.count": 4, "aug.local_crops.size": 16})
    tr.run()
    assert len(tr.augment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), generator=tr.gen)) == 2
    assert any(isinstance(e, ev.RunWarning) and "uses no local crops" in e.message for e in seen)


def test_a_stop_on_an_evaluation_step_evaluates_and_saves_once_and_nan_knn_is_no_best(tmp_path, monkeypatch):
    """Stopping (or ending) right on an evaluation + checkpoint step does not do both again; a
    kNN of NaN (a diverged network's features) is no accuracy: it never becomes the best."""
    import json

    import engine.trainer as trainer_mod

    real = trainer_mod.knn_evaluate
    calls = []

    def knn(*a, **k):
        calls.append(1)
        acc, emb, lab = real(*a, **k)
        return (float("nan") if len(calls) == 1 else acc), emb, lab

    monkeypatch.setattr(trainer_mod, "knn_evaluate", knn)
    seen: list[ev.Event] = []

    def listen(e):
        seen.append(e)
        if isinstance(e, ev.Evaluation) and e.step == 4:
            tr.stop()  # pressed right after the step-4 evaluation: its checkpoint follows in the loop

    tr = _trainer(tmp_path, listeners=(listen,), **{"train.steps": 8, "train.eval_every": 2,
                                                     "train.ckpt_every": 2})
    assert tr.run().status == "stopped"
    evals = [e.step for e in seen if isinstance(e, ev.Evaluation)]
    saves = [e.step for e in seen if isinstance(e, ev.CheckpointSaved)]
    assert evals == [2, 4] and saves == [2, 4]
    assert [e.knn_top1 for e in seen if isinstance(e, ev.Evaluation)][0] is None
    summary = json.loads((tmp_path / "r" / "run.json").read_text())  # strict JSON: no NaN
    assert summary["best_knn_top1"] == summary["last_knn_top1"] is not None


def test_the_last_probe_snapshot_is_of_the_final_step(tmp_path):
    """Probes run every probe_every_s seconds; the run's end adds one of the final model, so the
    studio's step slider ends where the run ended."""
    seen: list[ev.Event] = []
    _trainer(tmp_path, listeners=(seen.append,), **{"train.steps": 3, "model.arch": "vit_tiny",
                                                     "model.patch_size": 8, "train.probe_every_s": 1000}).run()
    probes = [e.step for e in seen if isinstance(e, ev.VisualProbe)]
    assert probes and probes[-1] == 3
