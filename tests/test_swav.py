"""SwAV (issue 4): loss, codes on the global crops, prototypes (normalised, frozen), queue,
prototype usage, presets and training through the Trainer."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from engine import events as ev
from engine.components.sinkhorn import sinkhorn
from engine.config import RunConfig, validate_config
from engine.data import load_dataset
from engine.errors import ConfigError
from engine.evaluation import knn_evaluate
from engine.losses.swav import swav_loss
from engine.methods import create_method, get_method
from engine.methods import swav as swav_module
from engine.methods.base import Batch
from engine.presets import load_preset
from engine.trainer import Trainer
from helpers import with_
from test_cli import _tiny

SMALL = {"n_prototypes": 30, "proj_hidden": 256, "proj_out": 64}
MULTI_CROP = {"aug.local_crops": {"count": 2, "size": 16, "scale": [0.1, 0.4]}}


def build(params: dict | None = None, spe: int = 4, total: int = 100, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="swav", params={**SMALL, **(params or {})}, **dotted))
    m = create_method(cfg, 32)
    m.setup(total, spe)
    return m


def multi_crop_batch(B: int = 8, n_local: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    views += [torch.randn(B, 3, 16, 16, generator=g) for _ in range(n_local)]
    return Batch(views=views, images=torch.zeros(B, 3, 32, 32, dtype=torch.uint8), n_global=2)


# ----------------------------------------------------------------------- loss
def test_loss_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    B, K, V = 6, 5, 4
    s = [torch.randn(B, K, generator=g) for _ in range(V)]
    q = [torch.softmax(torch.randn(B, K, generator=g), dim=1) for _ in range(2)]
    loss = 0.0
    for i in (0, 1):  # codes of the two global crops
        sub = 0.0
        for v in range(V):
            if v != i:
                p = torch.exp(s[v] / 0.1) / torch.exp(s[v] / 0.1).sum(dim=1, keepdim=True)
                sub += (-(q[i] * torch.log(p)).sum(dim=1)).mean()
        loss += sub / (V - 1)
    torch.testing.assert_close(swav_loss(s, q, [0, 1], 0.1), loss / 2)


def test_codes_come_from_global_crops_and_block_gradients(monkeypatch) -> None:
    m = build()
    calls = []

    def spy(scores, eps, iters):
        calls.append((scores, eps, iters))
        return sinkhorn(scores, eps, iters)

    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    out = m.training_step(multi_crop_batch(B=8, n_local=3), 0)
    assert len(calls) == 2  # one Sinkhorn per global crop, none for the local crops
    assert all(c[0].shape == (8, 30) and not c[0].requires_grad and c[1:] == (0.05, 3) for c in calls)
    # the loss equals the formula with the codes as constants: gradients reach the scores only
    # through the predictions (stop-gradient on the codes)
    out.loss.backward()
    assert m.prototypes.weight.grad is None  # frozen during the first 313 iterations
    assert all(p.grad is not None for p in m.backbone.parameters())


def test_prototypes_normalised_each_step_and_frozen_at_first() -> None:
    m = build({"freeze_prototypes_iters": 3})
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    with torch.no_grad():
        m.prototypes.weight.mul_(3.0)
    for step in range(5):
        opt.zero_grad(set_to_none=True)
        out = m.training_step(multi_crop_batch(seed=step), step)
        torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(30))  # on the sphere
        w0 = m.prototypes.weight.detach().clone()
        out.loss.backward()
        assert (m.prototypes.weight.grad is None) == (step < 3), step
        opt.step()
        assert torch.equal(w0, m.prototypes.weight) == (step < 3), step


def test_queue_starts_at_its_epoch_and_is_used_once_full(monkeypatch) -> None:
    m = build({"queue_size": 24, "queue_start_epoch": 1}, spe=2)  # B = 8: full after 3 steps
    shapes = []

    def spy(scores, eps, iters):
        shapes.append(tuple(scores.shape))
        return sinkhorn(scores, eps, iters)

    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    counts = []
    for step in range(7):
        shapes.clear()
        m.training_step(multi_crop_batch(seed=step), step)
        m.after_optimizer_step(step)
        counts.append(int(m.queues[0].count))
        used = step >= 2 + 3  # epoch 1 starts at step 2; full after steps 2, 3, 4
        assert shapes == ([(24 + 8, 30)] * 2 if used else [(8, 30)] * 2), step
    assert counts == [0, 0, 8, 16, 24, 24, 24]
    assert len(m.queues) == 2  # one queue per global crop
    # the queue holds the (normalised) global-crop features, rescored with the current prototypes
    torch.testing.assert_close(m.queues[0].feats.norm(dim=1), torch.ones(24))


def test_prototype_usage_and_pair() -> None:
    m = build()
    batch = multi_crop_batch(B=16)
    out = m.training_step(batch, 0)
    u = out.scalars["prototype_usage"]
    assert torch.is_tensor(u) and u.dim() == 0  # no host sync
    with torch.no_grad():
        z = [F.normalize(m.projector(m.backbone(v)), dim=1) for v in batch.views[:2]]
        codes = [sinkhorn(zi @ m.prototypes.weight.T, 0.05, 3) for zi in z]
    used = torch.cat(codes).argmax(dim=1).unique().numel() / 30
    assert float(u) == pytest.approx(used)
    assert 1 / 30 <= float(u) <= 1
    z0, z1 = out.pair
    assert z0.shape == (16, 64) and not z0.requires_grad
    torch.testing.assert_close(z0.norm(dim=1), torch.ones(16))


def test_needs_two_crops() -> None:
    cfg = validate_config(with_(_tiny(), method="swav", params=SMALL, **{"aug.global_crops.count": 1}))
    with pytest.raises(ConfigError, match="2 crops"):
        create_method(cfg, 32)


# ----------------------------------------------------------- config / diagram
def test_params_live_and_diagram() -> None:
    cls = get_method("swav")
    p = cls.Params()
    assert (p.n_prototypes, p.epsilon, p.sinkhorn_iterations, p.temperature) == (3000, 0.05, 3, 0.1)
    assert (p.proj_hidden, p.proj_out, p.freeze_prototypes_iters, p.queue_start_epoch) == (2048, 128, 313, 15)
    assert {"temperature", "epsilon"} <= set(cls.live_params)
    m = build()
    m.set_live("epsilon", 0.03)
    assert m.p.epsilon == 0.03
    with pytest.raises(Exception):
        m.set_live("epsilon", -1.0)
    d = cls.diagram()
    ids = {b.id for b in d.blocks}
    assert all(e.src in ids and e.dst in ids and e.style in ("solid", "stopgrad", "ema") for e in d.edges)
    raw = RunConfig(method="swav").model_dump()
    for b in d.blocks:
        for key in b.params:
            section, *rest = key.split(".")
            if section == "params":
                assert rest[0] in cls.Params.model_fields, key
                continue
            cur = raw[section]
            for part in rest:
                assert part in cur, key
                cur = cur[part]


@pytest.mark.parametrize("preset", ["swav", "swav_cifar"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "swav" and cfg.aug.global_crops.count == 2 and cfg.aug.local_crops.count > 0
    assert cfg.params["epsilon"] == 0.05 and cfg.params["temperature"] == 0.1
    if preset == "swav":
        assert cfg.params["n_prototypes"] == 3000 and cfg.aug.local_crops.size == 96
    else:
        assert 100 <= cfg.params["n_prototypes"] <= 300 and cfg.model.cifar_stem


# ------------------------------------------------------------------- training
def train_vs_untrained(params: dict, steps: int, tmp, lr: float = 1e-3, **dotted):
    """Real Trainer on 32 px shapes (resnet18 without CIFAR stem, batch 32, 2x32 + 2x16 crops,
    AdamW). Returns (untrained kNN of the same initial weights, events, seconds). One thread:
    on a busy 2-core machine that is faster than two."""
    raw = with_(_tiny(), method="swav", params=params, **{
        "train.steps": steps, "train.log_every": 4, "train.eval_every": 10_000, "train.ckpt_every": 10_000,
        "optim.lr": lr, **MULTI_CROP, **dotted})
    cfg = validate_config(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
        untrained, _, _ = knn_evaluate(create_method(cfg, 32), data, cfg, torch.device("cpu"))
        seen: list[ev.Event] = []
        t = time.time()
        Trainer(cfg, tmp / "swav", listeners=(seen.append,), data=data).run()
        return untrained, seen, time.time() - t
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def swav_run(tmp_path_factory):
    # queue of 64 from epoch 1 (8 steps of 32 images): filled by steps 8-9, used from step 10
    return train_vs_untrained({**SMALL, "freeze_prototypes_iters": 4, "queue_size": 64, "queue_start_epoch": 1},
                              steps=12, tmp=tmp_path_factory.mktemp("swav"))


def test_trains_through_the_trainer(swav_run) -> None:
    untrained, seen, seconds = swav_run
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.status == "completed", fin
    steps = [e for e in seen if isinstance(e, ev.StepMetrics)]
    assert [e.step for e in steps] == [4, 8, 12]
    assert all(math.isfinite(e.loss) and math.isfinite(e.scalars["prototype_usage"]) for e in steps)
    assert all(0.3 < e.scalars["prototype_usage"] <= 1 for e in steps)  # codes stay spread out
    assert steps[-1].loss < steps[0].loss
    knn = [e for e in seen if isinstance(e, ev.Evaluation)][-1]
    assert 0 <= knn.knn_top1 <= 1 and {"std", "rank_me"} <= set(knn.indicators)
    print(f"SwAV 12 steps ({seconds:.0f} s): loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f}, "
          f"kNN untrained {untrained:.3f} -> {knn.knn_top1:.3f}")


def test_codes_belong_to_their_own_view_and_to_the_batch_rows(monkeypatch):
    """With the queue in use, Sinkhorn runs on [queue; this view's scores] and the code of view i
    is the last B rows of its own output (not the queue's rows, not another view's)."""
    m = build({"queue_size": 16, "queue_start_epoch": 0}, spe=2)
    for step in range(2):  # fill the queue (B = 8)
        m.training_step(multi_crop_batch(seed=step), step)
        m.after_optimizer_step(step)
    ins, outs, passed = [], [], {}

    def spy(s, e, i):
        ins.append(s)
        outs.append(sinkhorn(s, e, i))
        return outs[-1]

    real_loss = swav_module.swav_loss

    def loss_spy(scores, codes, ids, t):
        passed.update(scores=scores, codes=codes, ids=list(ids))
        return real_loss(scores, codes, ids, t)

    monkeypatch.setattr(swav_module, "sinkhorn", spy)
    monkeypatch.setattr(swav_module, "swav_loss", loss_spy)
    m.training_step(multi_crop_batch(seed=5), 2)
    assert [tuple(s.shape) for s in ins] == [(24, 30), (24, 30)]  # 16 queued + 8 batch rows
    for j, i in enumerate(passed["ids"]):
        torch.testing.assert_close(ins[j][-8:], passed["scores"][i].detach())  # this view's scores
        torch.testing.assert_close(passed["codes"][j], outs[j][-8:])  # the batch rows, not the queue's
