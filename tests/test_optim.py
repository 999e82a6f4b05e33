import numpy as np
import pytest
import torch

from engine.config import OptimConfig
from engine.optim import LARS, build_optimizer, cosine_schedule, set_lr_wd


def test_cosine_schedule_values():
    s = cosine_schedule(1.0, 0.0, 10, warmup=2)
    assert len(s) == 10
    np.testing.assert_allclose(s[:2], [0.0, 0.5])
    assert s[2] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert np.all(np.diff(s[2:]) <= 0)


def test_lars_matches_its_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    g = torch.randn(5, 3)
    w0 = w.detach().clone()
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.02)
    w.grad = g.clone()
    opt.step()
    d = g + 0.01 * w0
    trust = 0.02 * w0.norm() / d.norm()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * trust * d)


def g_ratio(g: torch.Tensor, w: torch.Tensor) -> float:
    return float(g.norm() / w.norm())


def test_clipped_lars_steps_like_sgd_or_eta_of_the_weights_whichever_is_smaller():
    """solo-learn's clip_lr: the step is lr * min(trust / lr, 1) * g = min(trust, lr) * g, i.e. a
    relative step of min(eta, lr * ||g|| / ||w||); unclipped LARS moves lr * eta of ||w||."""
    torch.manual_seed(0)
    w0 = torch.randn(64, 32)
    small = 1e-3 * torch.randn(64, 32)  # ||g|| / ||w|| = 1e-3: SGD's step (lr 2: 0.2 %) is the smaller
    large = 10.0 * torch.randn(64, 32)  # ||g|| / ||w|| = 10: eta (2 %) is the smaller
    for g, clipped_step in ((small, 2.0 * g_ratio(small, w0)), (large, 0.02)):
        steps = {}
        for clip in (False, True):
            w = torch.nn.Parameter(w0.clone())
            opt = LARS([w], lr=2.0, momentum=0.9, weight_decay=0.0, eta=0.02, clip=clip)
            w.grad = g.clone()
            opt.step()
            steps[clip] = float((w0 - w.detach()).norm() / w0.norm())
        assert steps[False] == pytest.approx(2.0 * 0.02, rel=1e-4)  # lr * eta of ||w||, whatever g
        assert steps[True] == pytest.approx(clipped_step, rel=1e-4)
    cfg = OptimConfig(optimizer="lars", lars_clip=True)
    m = torch.nn.Linear(4, 4)
    opt = build_optimizer(m, [{"params": list(m.parameters())}], cfg, 0.5, torch.device("cpu"))
    assert all(g["clip"] for g in opt.param_groups)


def test_bias_and_norm_params_get_no_decay_and_no_lars():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(m, [{"params": list(m.parameters())}], OptimConfig(weight_decay=0.1), 0.5,
                          torch.device("cpu"))
    groups = {g["lars"]: g for g in opt.param_groups}
    assert groups[True]["weight_decay"] == 0.1 and len(groups[True]["params"]) == 1
    assert groups[False]["weight_decay"] == 0.0 and len(groups[False]["params"]) == 3
    set_lr_wd(opt, 0.2, 0.05)
    assert groups[True]["lr"] == 0.2 and groups[True]["weight_decay"] == 0.05
    assert groups[False]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_each_optimizer_reduces_a_simple_loss(name):
    torch.manual_seed(0)
    m = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = build_optimizer(m, [{"params": list(m.parameters())}], OptimConfig(optimizer=name, weight_decay=0.0), 0.05,
                          torch.device("cpu"))
    first = None
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(m(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    if name != "lars":  # the fused kernels on the CPU too (a small run's optimiser step: 4x cheaper)
        assert opt.defaults["fused"] is True


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_cpu_step_matches_the_reference_implementation(name):
    """The fused CPU kernels give the same parameters as torch's plain single-tensor loop."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(16, 4)
    fused = torch.nn.Linear(16, 4)
    fused.load_state_dict(ref.state_dict())
    cfg = OptimConfig(optimizer=name, weight_decay=0.05, exclude_bias_norm=False)
    a = build_optimizer(fused, [{"params": list(fused.parameters())}], cfg, 0.05, torch.device("cpu"))
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    kw = {"betas": cfg.betas} if name == "adamw" else {"momentum": cfg.momentum}
    b = cls(ref.parameters(), lr=0.05, weight_decay=0.05, foreach=False, **kw)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    for _ in range(10):
        for m, o in ((fused, a), (ref, b)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_global_and_per_parameter() -> None:
    import torch

    from engine.config import OptimConfig
    from engine.trainer import clip_gradients

    def model_with_grads():
        m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        for i, p in enumerate(m.parameters()):
            p.grad = torch.full_like(p, 0.1 if i == 3 else 2.0)  # the last bias is already small
        return m

    m = model_with_grads()
    norms = [p.grad.norm().item() for p in m.parameters()]
    total = sum(n * n for n in norms) ** 0.5
    gn = clip_gradients(m, OptimConfig(clip_grad=1.0, clip_mode="per_param"))
    assert gn.item() == pytest.approx(total, rel=1e-5)  # logged: the norm before clipping
    after = [p.grad.norm().item() for p in m.parameters()]
    # each parameter clipped on its own (DINO): large ones to 1, the small one untouched
    assert after[:3] == pytest.approx([1.0, 1.0, 1.0], rel=1e-4)
    assert after[3] == pytest.approx(norms[3], rel=1e-6)

    m = model_with_grads()
    clip_gradients(m, OptimConfig(clip_grad=1.0, clip_mode="global"))
    after = [p.grad.norm().item() for p in m.parameters()]
    assert sum(a * a for a in after) ** 0.5 == pytest.approx(1.0, rel=1e-4)  # one norm over all
    assert after[3] / after[0] == pytest.approx(norms[3] / norms[0], rel=1e-4)  # directions kept


def test_peak_lr_scales_linearly_or_by_square_root() -> None:
    from engine.config import OptimConfig
    from engine.optim import peak_lr

    assert peak_lr(OptimConfig(lr=0.3), 4096) == pytest.approx(4.8)  # SimCLR: 0.3 x B/256
    assert peak_lr(OptimConfig(lr=0.1, lr_scaling="sqrt"), 4096) == pytest.approx(6.4)  # SimCLR v2
    assert peak_lr(OptimConfig(lr=0.1, scale_lr=False, lr_scaling="sqrt"), 4096) == 0.1


# a zero weight (or zero gradient) gets trust ratio 1, so a zero-initialised layer still moves
def test_lars_trust_ratio_is_one_for_a_zero_weight():
    from engine.optim import LARS

    w = torch.nn.Parameter(torch.zeros(4, 3))
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.02)
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), -0.1 * g)  # trust 1 (and no decay of a zero weight)
