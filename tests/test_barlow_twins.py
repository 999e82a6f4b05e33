"""Barlow Twins (issue 4): loss formula, batch standardisation, LR groups, config, training."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from engine.config import validate_config
from engine.losses.barlow import barlow_twins_loss, batch_standardize, cross_correlation
from engine.methods import get_method
from engine.optim import build_optimizer, set_lr_wd
from engine.presets import load_preset
from test_byol import build, check_diagram, check_run, final_eval, random_batch, train_vs_untrained

SMALL_BT = {"proj_hidden": 256, "proj_out": 256}


# ------------------------------------------------------------------------- loss
def test_loss_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    B, D, lambd = 7, 4, 0.3
    z1, z2 = torch.randn(B, D, generator=g) * 2 + 1, torch.randn(B, D, generator=g)

    def standardise(z, i):  # column i over the batch, biased variance, eps 1e-5
        col = [float(z[b, i]) for b in range(B)]
        mu = sum(col) / B
        var = sum((c - mu) ** 2 for c in col) / B
        return [(c - mu) / math.sqrt(var + 1e-5) for c in col]

    a = [standardise(z1, i) for i in range(D)]  # a[i][b]
    b_ = [standardise(z2, j) for j in range(D)]
    C = [[sum(a[i][b] * b_[j][b] for b in range(B)) / B for j in range(D)] for i in range(D)]
    on = sum((1 - C[i][i]) ** 2 for i in range(D))
    off = sum(C[i][j] ** 2 for i in range(D) for j in range(D) if i != j)
    loss, on_t, off_t = barlow_twins_loss(z1, z2, lambd)
    assert on_t.item() == pytest.approx(on, rel=1e-5)
    assert off_t.item() == pytest.approx(off, rel=1e-5)
    assert loss.item() == pytest.approx(on + lambd * off, rel=1e-5)
    torch.testing.assert_close(cross_correlation(z1, z2), torch.tensor(C), rtol=1e-5, atol=1e-6)


def test_standardisation_is_batchnorm_without_affine_and_identity_gives_zero() -> None:
    z = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)) * 3 + 2
    bn = torch.nn.BatchNorm1d(6, affine=False).train()
    torch.testing.assert_close(batch_standardize(z), bn(z))
    # decorrelated, identical views: C = I and the loss is ~0
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))
    zz = q[:, :6] - q[:, :6].mean(0)  # orthogonal, centred columns (q has a column near 1/sqrt(16))
    zz = torch.linalg.qr(zz)[0] * 4.0
    c = cross_correlation(zz, zz)
    torch.testing.assert_close(c, torch.eye(6), atol=1e-3, rtol=0)
    assert barlow_twins_loss(zz, zz)[0].item() < 1e-3
    # bf16 inputs: float32 result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert barlow_twins_loss(z.bfloat16(), z.bfloat16())[0].dtype == torch.float32


# ---------------------------------------------------------------- architecture
def test_layout_scalars_and_gradients() -> None:
    p = get_method("barlow_twins").Params()
    assert (p.proj_layers, p.proj_hidden, p.proj_out, p.lambd) == (3, 8192, 8192, 0.0051)
    m = build("barlow_twins", SMALL_BT)
    proj = m.projector
    assert proj.dims == [512, 256, 256, 256]
    linears = [x for x in proj if isinstance(x, torch.nn.Linear)]
    assert all(lin.bias is None for lin in linears)  # no biases: the official projector
    assert not isinstance(proj[-1], torch.nn.BatchNorm1d)  # last Linear plain (the loss standardises)
    out = m.training_step(random_batch(B=16), 0)
    s = out.scalars
    assert set(s) == {"loss_on_diag", "loss_off_diag"} and all(v.dim() == 0 for v in s.values())
    torch.testing.assert_close(s["loss_on_diag"] + s["loss_off_diag"], out.loss.detach())
    out.loss.backward()  # no stop-gradient: both branches train the shared encoder
    assert m.backbone.conv1.weight.grad.abs().sum() > 0
    assert out.pair[0].shape == (16, 256)


def test_bias_lr_groups() -> None:
    m = build("barlow_twins", SMALL_BT)
    groups = m.param_groups()
    assert all(q.ndim > 1 for q in groups[0]["params"])
    assert all(q.ndim <= 1 for q in groups[1]["params"]) and groups[1]["lr_scale"] == pytest.approx(0.024)
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    cfg = validate_config(load_preset("barlow_twins"))
    opt = build_optimizer(m, groups, cfg.optim, 1.6, torch.device("cpu"))
    set_lr_wd(opt, 1.6, 1e-6, 1.6)
    lrs = sorted({round(g["lr"], 8) for g in opt.param_groups})
    assert lrs == pytest.approx([1.6 * 0.024, 1.6])  # 0.2 and 0.0048 x 8 in the paper


def test_live_lambda_and_config() -> None:
    cls = get_method("barlow_twins")
    assert cls.live_params == ("lambd",)
    m = build("barlow_twins", SMALL_BT)
    batch = random_batch(B=16)
    assert m.set_live("lambd", 0.1) == 0.0051
    with torch.no_grad():
        out = m.training_step(batch, 0)
    on, off_w = out.scalars["loss_on_diag"], out.scalars["loss_off_diag"]
    _, on_ref, off = barlow_twins_loss(*out.pair, 0.1)
    torch.testing.assert_close(off_w, 0.1 * off)  # the live lambda is used
    torch.testing.assert_close(on, on_ref)  # the on-diagonal term does not depend on lambda
    with pytest.raises(ValidationError):
        m.set_live("lambd", -1.0)
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("barlow_twins")


@pytest.mark.parametrize("preset", ["barlow_twins", "barlow_twins_cifar"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "barlow_twins" and cfg.optim.optimizer == "lars"
    assert cfg.params["lambd"] == 0.0051
    assert cfg.params["proj_out"] == (8192 if preset == "barlow_twins" else 2048)


# -------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def bt_run(tmp_path_factory):
    return train_vs_untrained("barlow_twins", SMALL_BT, steps=30, tmp=tmp_path_factory.mktemp("bt"))


def test_trains_through_the_trainer(bt_run) -> None:
    untrained, seen, seconds = bt_run
    steps = check_run(seen)
    first, last = steps[0].scalars, steps[-1].scalars
    assert {"loss_on_diag", "loss_off_diag"} <= set(last)
    assert steps[-1].loss < 0.7 * steps[0].loss  # C moves towards the identity
    assert last["loss_on_diag"] < first["loss_on_diag"]
    ind = final_eval(seen).indicators
    assert ind["std"] > 0.5 * ind["std_ref"]
    print(f"Barlow Twins 30 steps ({seconds:.0f} s): loss {steps[0].loss:.1f} -> {steps[-1].loss:.1f}, "
          f"kNN untrained {untrained:.3f} -> {final_eval(seen).knn_top1:.3f}")


# the step's LOSS (not only the logged scalar) uses the live lambda
def test_barlow_twins_step_loss_uses_the_live_lambda() -> None:
    from engine.losses.barlow import barlow_twins_loss
    from test_byol import build, random_batch

    m = build("barlow_twins", SMALL_BT)
    m.set_live("lambd", 0.1)
    with torch.no_grad():
        out = m.training_step(random_batch(B=16), 0)
    loss, on, off = barlow_twins_loss(*out.pair, 0.1)
    assert off.item() > 1.0  # the off-diagonal term matters at this lambda
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(on.item() + 0.1 * off.item(), rel=1e-5)
