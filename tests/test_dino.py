"""DINO (issue 4): head, centring, teacher-temperature warm-up, loss, teacher, freezing,
monitors, attention probe, presets and training through the Trainer."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import events as ev
from engine.components.centering import Centering, teacher_temp_at, teacher_temp_schedule
from engine.components.dino_head import DINOHead
from engine.components.momentum import momentum_at
from engine.config import RunConfig, validate_config
from engine.data import load_dataset
from engine.errors import ConfigError
from engine.evaluation import knn_evaluate
from engine.losses.dino import dino_loss, entropy
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.presets import load_preset
from engine.trainer import Trainer
from helpers import with_
from test_cli import _tiny

SMALL = {"out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64}
MULTI_CROP = {"aug.local_crops": {"count": 2, "size": 16, "scale": [0.1, 0.4]}}


def build(params: dict | None = None, spe: int = 4, total: int = 100, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="dino", params={**SMALL, **(params or {})}, **dotted))
    m = create_method(cfg, 32)
    m.setup(total, spe)
    return m


def multi_crop_batch(B: int = 8, n_local: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    views += [torch.randn(B, 3, 16, 16, generator=g) for _ in range(n_local)]
    return Batch(views=views, images=torch.zeros(B, 3, 32, 32, dtype=torch.uint8), n_global=2)


# ----------------------------------------------------------------------- head
def test_head_layout_and_weight_norm() -> None:
    h = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)  # paper: 3 layers, GELU, no BN
    linears = [m for m in h.mlp if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32, 64), (64, 64), (64, 16)]
    assert sum(isinstance(m, torch.nn.GELU) for m in h.mlp) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in h.mlp)
    x = torch.randn(5, 32)
    z = h.bottleneck(x)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))  # L2-normalised bottleneck
    g = h.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)  # norm_last_layer: gain frozen at 1
    w = h.last_layer.weight  # [100, 16], every row unit norm -> logits are cosines
    torch.testing.assert_close(w.norm(dim=1), torch.ones(100), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h(x), z @ w.T)
    assert h.last_layer.bias is None
    free = DINOHead(32, 100, 64, 16, norm_last_layer=False, use_bn=True)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in free.mlp) == 2


def test_freeze_last_layer_drops_its_gradients_during_the_first_epoch() -> None:
    m = build({"freeze_last_layer": 1.0, "norm_last_layer": False}, spe=4)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    last = list(m.head.last_layer.parameters())
    assert len(last) == 2  # gain g and direction v (g trainable here)
    before = [p.detach().clone() for p in last]
    for step in range(6):
        opt.zero_grad(set_to_none=True)
        m.training_step(multi_crop_batch(seed=step), step).loss.backward()
        frozen = step < 4  # first epoch: 4 steps
        assert all((p.grad is None) == frozen for p in last), step
        assert all(p.grad is not None for p in m.head.mlp.parameters())  # the rest of the head learns
        opt.step()
        if step == 3:  # no update at all (no weight decay either) during the frozen epoch
            assert all(torch.equal(a, p) for a, p in zip(before, last))
    assert not all(torch.equal(a, p) for a, p in zip(before, last))


def test_a_run_shorter_than_the_frozen_last_layer_is_warned_about() -> None:
    assert build({"freeze_last_layer": 1.0}, spe=4, total=100).setup_warnings() == []
    (msg,) = build({"freeze_last_layer": 1.0}, spe=50, total=40).setup_warnings()
    assert "freeze_last_layer (1 epochs, 50 steps)" in msg and "never trains" in msg


# ------------------------------------------------------- centring and warm-up
def test_centre_update_and_sharpening_formula() -> None:
    c = Centering(4, momentum=0.9)
    t1, t2 = torch.randn(6, 4), torch.randn(6, 4)
    p = c(t1, 0.04)
    torch.testing.assert_close(p, torch.softmax(t1 / 0.04, dim=1))  # centre starts at 0
    c.update(t1)
    torch.testing.assert_close(c.center, 0.1 * t1.mean(0, keepdim=True))
    c.update(t2)
    expect = 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True)
    torch.testing.assert_close(c.center, expect)
    torch.testing.assert_close(c(t2, 0.07), torch.softmax((t2 - expect) / 0.07, dim=1))
    c.update(t2, momentum=0.5)  # the method passes the live momentum
    torch.testing.assert_close(c.center, 0.5 * expect + 0.5 * t2.mean(0, keepdim=True))


def test_method_updates_the_centre_with_the_teacher_output() -> None:
    m = build({"center_momentum": 0.8})
    batch = multi_crop_batch()
    m.center.center.normal_()
    c0 = m.center.center.clone()
    m.training_step(batch, 0)
    with torch.no_grad():
        t = m.teacher_head(m.teacher_backbone(torch.cat(batch.views[:2])))  # [2B, K]
    torch.testing.assert_close(m.center.center, 0.8 * c0 + 0.2 * t.mean(0, keepdim=True), rtol=1e-4, atol=1e-5)


def test_teacher_temperature_warmup_values() -> None:
    s = teacher_temp_schedule(0.04, 0.07, 30, 100)
    expect = np.concatenate([0.04 + 0.03 * np.arange(30) / 29, np.full(70, 0.07)])  # linear, ends included
    np.testing.assert_allclose(s, expect, rtol=1e-12)
    assert s[0] == pytest.approx(0.04) and s[29] == pytest.approx(0.07) and s[99] == pytest.approx(0.07)
    for e in range(120):
        assert teacher_temp_at(e, 0.04, 0.07, 30) == pytest.approx(expect[min(e, 99)])
    assert teacher_temp_at(0, 0.04, 0.07, 0) == 0.07  # no warm-up
    m = build({"warmup_teacher_temp_epochs": 30}, spe=4)  # per epoch: steps 8..11 are epoch 2
    assert m.teacher_temp(0) == pytest.approx(0.04)
    assert m.teacher_temp(9) == pytest.approx(0.04 + 0.03 * 2 / 29)
    assert m.teacher_temp(10_000) == pytest.approx(0.07)
    m.set_live("teacher_temp", 0.06)  # live: the final temperature
    assert m.teacher_temp(10_000) == pytest.approx(0.06)


# ----------------------------------------------------------------------- loss
def test_loss_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    B, K, V, G = 5, 7, 4, 2
    s = [torch.randn(B, K, generator=g) for _ in range(V)]
    q = [torch.softmax(torch.randn(B, K, generator=g) / 0.04, dim=1) for _ in range(G)]
    total, n = 0.0, 0
    for i in range(G):
        for v in range(V):
            if v != i:
                p_s = torch.exp(s[v] / 0.1) / torch.exp(s[v] / 0.1).sum(dim=1, keepdim=True)
                total += (-(q[i] * torch.log(p_s)).sum(dim=1)).mean()
                n += 1
    assert n == G * (V - 1)
    torch.testing.assert_close(dino_loss(s, q, 0.1), total / n)
    # cross-entropy = teacher entropy + KL(teacher || student), averaged over the pairs
    kl = sum(F.kl_div(F.log_softmax(s[v] / 0.1, 1), q[i], reduction="batchmean")
             for i in range(G) for v in range(V) if v != i) / n
    h = (-(torch.cat(q) * torch.cat(q).log()).sum(1)).mean()
    torch.testing.assert_close(entropy(torch.cat(q)), h)
    torch.testing.assert_close(dino_loss(s, q, 0.1), h + kl)
    # the stacked form the method passes ([V, B, K], [G, B, K]) is the same loss, gradients included
    s1 = [x.clone().requires_grad_() for x in s]
    s2 = torch.stack(s).requires_grad_()
    dino_loss(s1, q, 0.1).backward()
    dino_loss(s2, torch.stack(q), 0.1).backward()
    torch.testing.assert_close(torch.stack([x.grad for x in s1]), s2.grad)
    st = torch.stack(s).requires_grad_()
    ref = sum((-(q[i] * F.log_softmax(st[v] / 0.1, 1)).sum(1)).mean() for i in range(G) for v in range(V) if v != i) / n
    ref.backward()
    torch.testing.assert_close(s2.grad, st.grad)


def test_loss_at_dino_scale_matches_the_pairwise_sum() -> None:
    # 65536 outputs, 2 + 6 crops: the all-pairs-at-once sums keep float32 precision
    g = torch.Generator().manual_seed(1)
    V, G, B, K = 8, 2, 16, 65536
    s = torch.randn(V, B, K, generator=g) * 3
    q = torch.softmax(torch.randn(G, B, K, generator=g) / 0.04, dim=-1)
    log_p = F.log_softmax(s.double() / 0.1, dim=-1)
    ref = sum((-(q[i].double() * log_p[v]).sum(1)).mean() for i in range(G) for v in range(V) if v != i) / (G * (V - 1))
    assert dino_loss(s, q, 0.1).item() == pytest.approx(ref.item(), rel=1e-5)


def test_teacher_gets_no_gradient_and_follows_the_student_by_ema() -> None:
    m = build(total=50)
    out = m.training_step(multi_crop_batch(), 0)
    out.loss.backward()
    teacher = list(m.teacher_backbone.parameters()) + list(m.teacher_head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in m.backbone.parameters())
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.head.parameters()):
            p.add_(0.1)
    t0 = [p.clone() for p in m.teacher_backbone.parameters()]
    m.after_optimizer_step(10)
    mom = momentum_at(10, 50, 0.996)  # cosine from 0.996 towards 1
    assert 0.996 < mom < 1
    for a, s, t in zip(t0, m.backbone.parameters(), m.teacher_backbone.parameters()):
        torch.testing.assert_close(t, mom * a + (1 - mom) * s)


def test_step_monitors_and_pair() -> None:
    m = build()
    out = m.training_step(multi_crop_batch(), 0)
    sc = out.scalars
    assert {"teacher_entropy", "entropy_ref", "kl"} <= set(sc)
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in sc.values())  # no host sync
    assert float(sc["entropy_ref"]) == pytest.approx(math.log(256))
    assert 0 <= float(sc["teacher_entropy"]) <= math.log(256) + 1e-4
    assert float(sc["kl"]) >= -1e-4
    assert float(out.loss.detach()) == pytest.approx(float(sc["teacher_entropy"] + sc["kl"]), rel=1e-5)
    z0, z1 = out.pair
    assert z0.shape == (8, 64) and not z0.requires_grad


def test_teacher_sees_only_global_crops() -> None:
    m = build()
    seen = []
    h = m.teacher_backbone.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    m.training_step(multi_crop_batch(B=8, n_local=3), 0)
    h.remove()
    assert seen == [(16, 3, 32, 32)]  # the two global crops, once


def test_needs_two_crops() -> None:
    cfg = validate_config(with_(_tiny(), method="dino", params=SMALL, **{"aug.global_crops.count": 1}))
    with pytest.raises(ConfigError, match="2 crops"):
        create_method(cfg, 32)


def test_teacher_has_no_stochastic_depth() -> None:
    # DINO's teacher ViT is built without drop_path_rate: in training mode its targets are
    # deterministic, while the student keeps its stochastic depth
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="dino", params=SMALL,
                                model={"arch": "vit_tiny", "patch_size": 8, "drop_path": 0.5}))
    m = create_method(cfg, 32).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.teacher_backbone(x), m.teacher_backbone(x))
        assert not torch.allclose(m.backbone(x), m.backbone(x))


# --------------------------------------------------------------------- probes
def test_attention_probe_with_vit() -> None:
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="dino", params=SMALL,
                                model={"arch": "vit_tiny", "patch_size": 8}))
    m = create_method(cfg, 32).eval()
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    res = m.probes(images)["attention"]
    att = res["images"]["attention"]  # [N, heads, H, W]
    assert att.shape == (2, 3, 32, 32) and att.dtype == np.float32
    np.testing.assert_allclose(att.sum(axis=(2, 3)), 1.0, rtol=1e-4)  # per head, a distribution
    assert res["images"]["image"].shape == (2, 32, 32, 3) and res["meta"]["grid"] == [4, 4]


def test_resnet_has_no_probe() -> None:
    assert build().probes(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)) == {}


# ----------------------------------------------------------- config / diagram
def test_params_live_and_diagram() -> None:
    cls = get_method("dino")
    p = cls.Params()
    assert (p.out_dim, p.hidden_dim, p.bottleneck_dim, p.head_layers) == (65536, 2048, 256, 3)
    assert (p.student_temp, p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs) == (0.1, 0.04, 0.07, 30)
    assert (p.center_momentum, p.momentum_teacher, p.freeze_last_layer, p.norm_last_layer) == (0.9, 0.996, 1.0, True)
    assert {"student_temp", "teacher_temp", "center_momentum", "momentum_teacher"} <= set(cls.live_params)
    for name in cls.live_params:
        assert name in cls.Params.model_fields
    d = cls.diagram()
    ids = {b.id for b in d.blocks}
    assert all(e.src in ids and e.dst in ids and e.style in ("solid", "stopgrad", "ema") for e in d.edges)
    assert any(e.style == "ema" for e in d.edges) and any(e.style == "stopgrad" for e in d.edges)
    raw = RunConfig(method="dino").model_dump()
    for b in d.blocks:  # every key shown in the inspector exists
        for key in b.params:
            section, *rest = key.split(".")
            if section == "params":
                assert rest[0] in cls.Params.model_fields, key
                continue
            cur = raw[section]
            for part in rest:
                assert part in cur, key
                cur = cur[part]
    with pytest.raises(ConfigError):
        validate_config({"method": "dino", "params": {"center_momentum": 1.5}})


@pytest.mark.parametrize("preset", ["dino", "dino_cifar"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "dino" and cfg.optim.clip_grad == 3.0
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)
    assert cfg.aug.global_crops.count == 2 and cfg.aug.local_crops.count > 0
    if preset == "dino_cifar":  # ViT-Tiny, 4 px patches on 32 px images: builds and runs
        m = create_method(cfg, 32)
        assert m.backbone.patch_size == 4 and m.head.out_dim == 4096


def test_resnet_cifar_preset_is_lightlys_benchmark_recipe() -> None:
    """dino_cifar_resnet18: a 2-layer BN head (512 -> 2048 -> 256 -> 2048), a constant teacher
    temperature 0.04 and EMA 0.99, two 32 px crops, SGD: the recipe that learned on the CPU proxy
    where the ViT and solo-learn recipes collapsed to a uniform output (tests/test_learning.py)."""
    cfg = validate_config(load_preset("dino_cifar_resnet18"))
    m = create_method(cfg, 32)
    assert cfg.model.arch == "resnet18" and cfg.model.cifar_stem and cfg.optim.optimizer == "sgd"
    linears = [x for x in m.head.mlp if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(512, 2048), (2048, 256)]
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.head.mlp) and m.head.out_dim == 2048
    assert m.teacher_temp(0) == m.teacher_temp(10**6) == pytest.approx(0.04)
    assert (cfg.params["momentum_teacher"], cfg.params["momentum_schedule"]) == (0.99, "constant")
    assert cfg.aug.global_crops.count == 2 and cfg.aug.local_crops.count == 0


# ------------------------------------------------------------------- training
def train_vs_untrained(params: dict, steps: int, tmp, lr: float = 1e-3, **dotted):
    """Real Trainer on 32 px shapes (resnet18 without CIFAR stem, batch 32, 2x32 + 2x16 crops,
    AdamW). Returns (untrained kNN of the same initial weights, events, seconds). One thread:
    on a busy 2-core machine that is faster than two."""
    raw = with_(_tiny(), method="dino", params=params, **{
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
        Trainer(cfg, tmp / "dino", listeners=(seen.append,), data=data).run()
        return untrained, seen, time.time() - t
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    return train_vs_untrained({**SMALL, "freeze_last_layer": 0.5}, steps=12, tmp=tmp_path_factory.mktemp("dino"))


def test_trains_through_the_trainer(dino_run) -> None:
    untrained, seen, seconds = dino_run
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.status == "completed", fin
    steps = [e for e in seen if isinstance(e, ev.StepMetrics)]
    assert [e.step for e in steps] == [4, 8, 12]
    assert all(math.isfinite(e.loss) for e in steps)
    for e in steps:
        sc = e.scalars
        assert all(math.isfinite(v) for v in sc.values())
        assert sc["entropy_ref"] == pytest.approx(math.log(256), rel=1e-6)
        assert 0 < sc["teacher_entropy"] < sc["entropy_ref"]  # neither one-hot nor uniform collapse
        assert sc["kl"] > 0
    knn = [e for e in seen if isinstance(e, ev.Evaluation)][-1]
    assert 0 <= knn.knn_top1 <= 1 and {"std", "rank_me"} <= set(knn.indicators)
    # the evaluation carries DINO's own collapse indicators (its plots and the collapse check read them)
    assert knn.indicators["teacher_entropy"] == steps[-1].scalars["teacher_entropy"]
    assert knn.indicators["entropy_ref"] == pytest.approx(math.log(256)) and "kl" in knn.indicators
    print(f"DINO 12 steps ({seconds:.0f} s): loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f}, "
          f"kNN untrained {untrained:.3f} -> {knn.knn_top1:.3f}")


def test_step_loss_sharpens_the_teacher_at_its_temperature_and_pairs_views_by_index():
    """The method's loss is exactly DINO's: every student crop against every other view's teacher
    output, centred with the centre before this step and sharpened at the teacher temperature."""
    m = build()
    batch = multi_crop_batch()
    m.center.center.normal_()
    c0 = m.center.center.clone()
    tt = m.teacher_temp(0)
    assert tt == pytest.approx(0.04)
    with torch.no_grad():
        t = m.teacher_head(m.teacher_backbone(torch.cat(batch.views[:2])))
        # the student's crops batched as the method batches them (BatchNorm sees the same groups)
        f = torch.cat([m.backbone(torch.cat(batch.views[:2])), m.backbone(torch.cat(batch.views[2:]))])
        s = m.head(f).chunk(4)
    out = m.training_step(batch, 0)
    q = torch.softmax((t - c0) / tt, dim=1).chunk(2)
    terms = [-(q[i] * F.log_softmax(s[v] / 0.1, 1)).sum(1).mean() for i in range(2) for v in range(4) if v != i]
    torch.testing.assert_close(out.loss.detach(), sum(terms) / len(terms), rtol=1e-4, atol=1e-5)
