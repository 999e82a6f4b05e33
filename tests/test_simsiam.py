"""SimSiam (issue 4): loss formula, stop-gradient, fixed predictor LR, config, training and
the collapse experiment (no predictor, no stop-gradient -> collapse; section 4.1 of the paper)."""

from __future__ import annotations

import math

import pytest
import torch

from engine import events as ev
from engine.config import validate_config
from engine.losses.byol import negative_cosine
from engine.methods import get_method
from engine.optim import build_optimizer, set_lr_wd
from engine.presets import load_preset
from test_byol import build, check_diagram, check_run, final_eval, random_batch, train_vs_untrained

SMALL_SS = {"proj_hidden": 256, "proj_out": 256, "pred_hidden": 64}


# ------------------------------------------------------------------------- loss
def test_negative_cosine_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 4
    # D(p, z) = - p/||p|| . z/||z||, averaged over the batch
    expected = -sum(
        sum(p[i, k] * z[i, k] for k in range(3)) / (p[i].norm() * z[i].norm()) for i in range(5)
    ) / 5
    assert negative_cosine(p, z).item() == pytest.approx(float(expected), rel=1e-5)
    assert negative_cosine(z, 3 * z).item() == pytest.approx(-1.0, rel=1e-6)


# ---------------------------------------------------------------- architecture
def test_layout_and_paper_defaults() -> None:
    p = get_method("simsiam").Params()
    assert (p.proj_layers, p.proj_hidden, p.proj_out, p.pred_hidden) == (3, 2048, 2048, 512)
    assert p.fix_pred_lr and p.predictor and p.stop_gradient
    m = build("simsiam", SMALL_SS)
    assert m.projector.dims == [512, 256, 256, 256]
    out_bn = m.projector[-1]
    assert isinstance(out_bn, torch.nn.BatchNorm1d) and not out_bn.affine  # BN on the output, no affine
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.projector) == 3  # BN on every layer
    pred = m.predictor
    assert pred.dims == [256, 64, 256] and isinstance(pred[1], torch.nn.BatchNorm1d)
    assert isinstance(pred[-1], torch.nn.Linear) and pred[-1].bias is not None  # no BN on the output


def _captured_step(m, batch):
    """Run a training step, keeping z (projector outputs) and p (predictor outputs) with their grads."""
    zs, ps = [], []

    def keep(store):
        def hook(_mod, _inp, o):
            o.retain_grad()
            store.append(o)  # returns None: the output is unchanged
        return hook

    handles = [m.projector.register_forward_hook(keep(zs)), m.predictor.register_forward_hook(keep(ps))]
    out = m.training_step(batch, 0)
    for h in handles:
        h.remove()
    return out, zs, ps


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_gradient_on_z_only_through_p(stop_gradient: bool) -> None:
    m = build("simsiam", {**SMALL_SS, "stop_gradient": stop_gradient})
    out, zs, ps = _captured_step(m, random_batch(B=8))
    out.loss.backward(retain_graph=True)
    dzs = [z.grad.clone() for z in zs]  # (autograd.grad below also accumulates into retained .grad)
    for z, p, dz in zip(zs, ps, dzs):  # both views: each is a target of the other
        # what reaches z through the predictor alone: J_h(z)^T dL/dp
        (via_p,) = torch.autograd.grad(p, z, grad_outputs=p.grad.clone(), retain_graph=True)
        assert via_p.abs().sum() > 0
        if stop_gradient:
            torch.testing.assert_close(dz, via_p)  # the target branch adds nothing
        else:
            assert (dz - via_p).abs().max() > 1e-4  # the target branch would add its own term
    assert m.backbone.conv1.weight.grad.abs().sum() > 0


def test_ablation_without_predictor() -> None:
    m = build("simsiam", {**SMALL_SS, "predictor": False, "stop_gradient": False})
    assert m.predictor is None and len(m.param_groups()) == 1
    out = m.training_step(random_batch(B=8), 0)
    out.loss.backward()
    assert -1.0 <= out.loss.item() <= 1.0 and out.scalars["out_std"].dim() == 0


def test_fixed_predictor_lr() -> None:
    m = build("simsiam", SMALL_SS)
    groups = m.param_groups()
    assert len(groups) == 2 and groups[1].get("fixed_lr") is True
    assert {id(q) for q in groups[1]["params"]} == {id(q) for q in m.predictor.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    cfg = validate_config(load_preset("simsiam"))
    opt = build_optimizer(m, groups, cfg.optim, 0.1, torch.device("cpu"))
    set_lr_wd(opt, 0.01, 1e-4, peak_lr=0.1)  # late in the cosine: the rest is at 0.01
    pred = {id(q) for q in m.predictor.parameters()}
    for g in opt.param_groups:
        is_pred = all(id(q) in pred for q in g["params"])
        assert g["lr"] == pytest.approx(0.1 if is_pred else 0.01)
    assert len(build("simsiam", {**SMALL_SS, "fix_pred_lr": False}).param_groups()) == 1


def test_config_and_presets() -> None:
    cls = get_method("simsiam")
    assert cls.live_params == ()
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("simsiam")
    assert "stopgrad" in {e.style for e in cls.diagram().edges}
    a, c = validate_config(load_preset("simsiam")), validate_config(load_preset("simsiam_cifar"))
    assert a.method == c.method == "simsiam" and a.optim.optimizer == "sgd" and a.optim.lr == 0.05
    assert a.optim.weight_decay == 1e-4 and a.params["fix_pred_lr"] is True
    assert c.params["proj_layers"] == 2 and c.model.cifar_stem is True


# ------------------------------------------------------- training and collapse
# Both runs without the projector's output BN (the paper's table 4 ablation): with it, a
# collapsing network cannot reach a constant output (BN keeps unit variance per dimension)
# and collapses to rank ~1 instead, which the std indicator shows only after long runs.
COLLAPSE_STEPS = 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("simsiam")
    base = {**SMALL_SS, "proj_last_bn": False}
    proper = train_vs_untrained("simsiam", base, steps=COLLAPSE_STEPS, tmp=tmp / "proper")
    collapsed = train_vs_untrained("simsiam", {**base, "predictor": False, "stop_gradient": False},
                                   steps=COLLAPSE_STEPS, tmp=tmp / "collapsed")
    return proper, collapsed


def test_trains_through_the_trainer(runs) -> None:
    (untrained, seen, seconds), _ = runs
    steps = check_run(seen)
    assert "out_std" in steps[-1].scalars
    assert steps[-1].loss < steps[0].loss - 0.2  # negative cosine falls towards -1
    print(f"SimSiam {COLLAPSE_STEPS} steps ({seconds:.0f} s): loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f}, "
          f"kNN untrained {untrained:.3f} -> {final_eval(seen).knn_top1:.3f}")


def test_collapse_experiment(runs) -> None:
    (_, proper, _), (_, collapsed, _) = runs
    check_run(collapsed)
    good, bad = final_eval(proper).indicators, final_eval(collapsed).indicators
    ref = 1 / math.sqrt(SMALL_SS["proj_out"])
    assert good["std_ref"] == pytest.approx(ref) and bad["std_ref"] == pytest.approx(ref)
    print(f"SimSiam std after {COLLAPSE_STEPS} steps: proper {good['std']:.4f}, "
          f"no predictor + no stop-grad {bad['std']:.4f} (1/sqrt(d) {ref:.4f})")
    assert bad["std"] < 0.3 * ref, bad
    assert good["std"] > 0.5 * ref, good
    # the per-step monitor says the same
    out_std = lambda seen: [e for e in seen if isinstance(e, ev.StepMetrics)][-1].scalars["out_std"]  # noqa: E731
    assert out_std(collapsed) < 0.3 * ref < 0.5 * ref < out_std(proper)
    # the studio's collapse warning fires for the first and not for the second
    from studio.dashboard.curves import collapse_message

    assert collapse_message(bad) is not None
    assert collapse_message(good) is None
