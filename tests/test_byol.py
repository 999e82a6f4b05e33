"""BYOL (issue 4): loss formula, stop-gradient on the target, EMA schedule, config, training."""

from __future__ import annotations

import math
import time

import pytest
import torch
from pydantic import ValidationError

from engine import events as ev
from engine.components.momentum import momentum_at
from engine.config import RunConfig, validate_config
from engine.data import load_dataset
from engine.evaluation import knn_evaluate
from engine.losses.byol import normalized_mse
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.presets import load_preset
from engine.trainer import Trainer
from helpers import with_
from test_cli import _tiny

SMALL_BYOL = {"proj_hidden": 256, "pred_hidden": 256, "proj_out": 64}


# ------------------------------------------------------------ shared helpers (also used by
# test_simsiam.py and test_barlow_twins.py)
def random_batch(B: int = 8, size: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, size, size, generator=g) for _ in range(2)]
    return Batch(views=views, images=torch.zeros(B, 3, size, size, dtype=torch.uint8), n_global=2)


def build(method: str, params: dict | None = None, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method=method, params=params or {}, **dotted))
    m = create_method(cfg, 32)
    m.setup(100, 8)
    return m


def check_diagram(method: str) -> None:
    """Every edge joins two blocks; every block key is a real config key (or a method param)."""
    cls = get_method(method)
    d = cls.diagram()
    ids = [b.id for b in d.blocks]
    assert len(ids) == len(set(ids))
    for e in d.edges:
        assert e.src in ids and e.dst in ids, e
        assert e.style in ("solid", "stopgrad", "ema")
    raw = RunConfig(method=method).model_dump()
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
    d.to_dict()  # plain data for the studio


# Learning (kNN above the untrained network) is checked by tests/test_learning.py for the
# methods listed there; the training tests here check the run itself (finite, loss falling,
# no collapse) in a few steps.


def train_vs_untrained(method: str, params: dict, steps: int, lr: float = 2e-3, tmp=None, **dotted):
    """Train through the real Trainer on 32 px shapes (AdamW, batch 32, resnet18 without CIFAR stem).

    Returns (untrained kNN of a freshly built method with the trainer's seed, events, seconds).
    Runs on one thread: on a busy 2-core machine that is several times faster than two.
    """
    raw = with_(_tiny(), method=method, params=params, **{
        "train.steps": steps, "train.log_every": 5, "train.eval_every": 0, "optim.lr": lr,
        "train.ckpt_every": 10_000, **dotted})
    cfg = validate_config(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
        fresh = create_method(cfg, 32)
        untrained, _, _ = knn_evaluate(fresh, data, cfg, torch.device("cpu"))
        seen: list[ev.Event] = []
        t = time.time()
        Trainer(cfg, tmp / method, listeners=(seen.append,), data=data).run()
        return untrained, seen, time.time() - t
    finally:
        torch.set_num_threads(threads)


def final_eval(seen) -> ev.Evaluation:
    return [e for e in seen if isinstance(e, ev.Evaluation)][-1]


def check_run(seen) -> list[ev.StepMetrics]:
    """The run completed with finite losses; returns its StepMetrics."""
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.status == "completed", fin
    steps = [e for e in seen if isinstance(e, ev.StepMetrics)]
    assert steps and all(math.isfinite(e.loss) for e in steps)
    assert all(math.isfinite(v) for e in steps for v in e.scalars.values())
    return steps


# ------------------------------------------------------------------------- loss
def test_normalized_mse_matches_formula() -> None:
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    # || p/||p|| - z/||z|| ||^2, averaged over the batch
    expected = sum(
        sum((p[i, k] / p[i].norm() - z[i, k] / z[i].norm()) ** 2 for k in range(5)) for i in range(6)
    ) / 6
    assert normalized_mse(p, z).item() == pytest.approx(float(expected), rel=1e-5)
    cos = (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))
    assert normalized_mse(p, z).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-5)
    assert normalized_mse(z, 2 * z).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_mse(z, -z).item() == pytest.approx(4.0, rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert normalized_mse(p.bfloat16(), z.bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------- architecture
def test_layout_and_paper_defaults() -> None:
    p = get_method("byol").Params()
    assert (p.proj_hidden, p.proj_out, p.pred_hidden, p.momentum, p.momentum_schedule) == (
        4096, 256, 4096, 0.996, "cosine")
    m = build("byol", SMALL_BYOL)
    assert m.projector.dims == [512, 256, 64] and m.predictor.dims == [64, 256, 64]
    assert isinstance(m.projector[1], torch.nn.BatchNorm1d) and isinstance(m.predictor[1], torch.nn.BatchNorm1d)
    # the target starts as an exact, frozen copy of the online encoder and projector
    for a, b in zip(m.target_backbone.parameters(), m.backbone.parameters()):
        assert torch.equal(a, b) and not a.requires_grad
    assert all(not q.requires_grad for q in m.target_projector.parameters())
    trainable = {id(q) for g in m.param_groups() for q in g["params"]}
    assert not trainable & {id(q) for q in m.target_backbone.parameters()}


def test_target_network_gets_no_gradient() -> None:
    m = build("byol", SMALL_BYOL)
    for q in list(m.target_backbone.parameters()) + list(m.target_projector.parameters()):
        q.requires_grad_(True)  # even if they asked for one, the target branch is not differentiated
    out = m.training_step(random_batch(), 0)
    out.loss.backward()
    assert all(q.grad is None for q in m.target_backbone.parameters())
    assert all(q.grad is None for q in m.target_projector.parameters())
    assert all(q.grad is not None for q in m.predictor.parameters())
    assert m.backbone.conv1.weight.grad is not None and m.backbone.conv1.weight.grad.abs().sum() > 0
    assert 0.0 <= out.loss.item() <= 8.0
    assert out.scalars["out_std"].dim() == 0 and out.pair[0].shape == (8, 64) and not out.pair[0].requires_grad


def test_ema_update_follows_the_cosine_momentum() -> None:
    m = build("byol", SMALL_BYOL)
    with torch.no_grad():
        for q in m.backbone.parameters():
            q.add_(1.0)  # the online network moves away from the target
    before = [q.clone() for q in m.target_backbone.parameters()]
    online = [q.clone() for q in m.backbone.parameters()]
    m.after_optimizer_step(30)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 30 / 100) + 1) / 2  # BYOL section 3.2, K = 100
    assert tau == pytest.approx(momentum_at(30, 100, 0.996))
    for t0, o, t1 in zip(before, online, m.target_backbone.parameters()):
        torch.testing.assert_close(t1, tau * t0 + (1 - tau) * o)
    assert m.tau.item() == pytest.approx(tau)
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996) and momentum_at(100, 100, 0.996) == pytest.approx(1.0)


def test_live_momentum_and_config() -> None:
    cls = get_method("byol")
    assert cls.live_params == ("momentum",)
    m = build("byol", SMALL_BYOL)
    assert m.set_live("momentum", 0.99) == 0.996 and m.p.momentum == 0.99
    with pytest.raises(ValidationError):
        m.set_live("momentum", 1.5)
    with pytest.raises(KeyError):
        m.set_live("proj_out", 128)
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("byol")
    styles = {e.style for e in cls.diagram().edges}
    assert {"ema", "stopgrad"} <= styles


@pytest.mark.parametrize("preset", ["byol", "byol_cifar"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "byol" and cfg.aug.solarize_p == [0.0, 0.2]
    if preset == "byol":  # the paper's asymmetric blur (no blur on 32 px images)
        assert cfg.aug.blur_p == [1.0, 0.1] and cfg.optim.optimizer == "lars" and cfg.optim.lr == 0.2


# -------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def byol_run(tmp_path_factory):
    return train_vs_untrained("byol", {**SMALL_BYOL, "momentum": 0.99}, steps=20, tmp=tmp_path_factory.mktemp("byol"))


def test_trains_through_the_trainer(byol_run) -> None:
    untrained, seen, seconds = byol_run
    steps = check_run(seen)
    assert {"out_std", "tau"} <= set(steps[-1].scalars)
    assert steps[-1].scalars["tau"] > 0.99  # the cosine schedule raised it
    assert steps[-1].loss < steps[0].loss  # the online network learns to predict the target
    ind = final_eval(seen).indicators
    assert ind["std"] > 0.5 * ind["std_ref"] and steps[-1].scalars["out_std"] > 0.5 * ind["std_ref"]
    print(f"BYOL 20 steps ({seconds:.0f} s): loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f}, "
          f"kNN untrained {untrained:.3f} -> {final_eval(seen).knn_top1:.3f}")


def test_vit_backbone_and_attention_probe() -> None:
    m = build("byol", SMALL_BYOL, **{"model.arch": "vit_tiny", "model.patch_size": 8})
    out = m.training_step(random_batch(B=4), 0)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    m.eval()
    probe = m.probes(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))["attention"]
    assert probe["images"]["attention"].shape == (2, 3, 32, 32)  # vit_tiny: 3 heads


def test_step_loss_pairs_each_prediction_with_the_other_views_target():
    m = build("byol", SMALL_BYOL)
    b = random_batch(B=8)
    out = m.training_step(b, 0)
    with torch.no_grad():
        p1, p2 = (m.predictor(m.projector(m.backbone(v))) for v in b.views)
        t1, t2 = (m.target_projector(m.target_backbone(v)) for v in b.views)
    torch.testing.assert_close(out.loss.detach(), normalized_mse(p1, t2) + normalized_mse(p2, t1),
                               rtol=1e-4, atol=1e-5)
