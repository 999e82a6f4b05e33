"""MoCo v1, v2 (engine/methods/moco.py) and v3 (engine/methods/moco_v3.py), issue 4."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from engine.components.momentum import momentum_at
from engine.config import RunConfig, validate_config
from engine.losses import info_nce
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.methods.moco import SplitBatchNorm2d, split_batchnorm
from engine.methods.moco_v3 import sincos_2d
from engine.presets import load_preset, preset_description
from helpers import with_
from test_cli import _tiny

VIT = {"model.arch": "vit_tiny", "model.patch_size": 8, "params.proj_hidden": 64, "params.pred_hidden": 64,
       "params.proj_out": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # on a shared, busy CPU two intra-op threads are much slower than one
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(method: str, **dotted):
    return validate_config(with_(_tiny(), method=method, **dotted))


def _method(method: str, seed: int = 0, **dotted):
    torch.manual_seed(seed)
    m = create_method(_cfg(method, **dotted), 32)
    m.setup(10, 5)
    return m.train()


def _batch(b: int = 8, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]
    return Batch(views=views, images=torch.zeros(b, 3, 32, 32, dtype=torch.uint8), n_global=2)


def _ce_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i [ -logits[i, t_i] + log sum_j exp(logits[i, j]) ], written out."""
    return torch.stack([-row[t] + torch.log(torch.exp(row).sum()) for row, t in zip(logits, target)]).mean()


# ------------------------------------------------------------------------ losses
def test_info_nce_with_a_queue_matches_the_formula():
    torch.manual_seed(0)
    q, k, queue, t = torch.randn(5, 8), torch.randn(5, 8), torch.randn(7, 8), 0.07
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    # l_i = -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t)) )   (MoCo eq. 1)
    expected = torch.stack([
        -torch.log(torch.exp(qn[i] @ kn[i] / t) / (torch.exp(qn[i] @ kn[i] / t) + torch.exp(nn_ @ qn[i] / t).sum()))
        for i in range(5)
    ]).mean()
    torch.testing.assert_close(info_nce(q, k, queue, t), expected, rtol=1e-5, atol=1e-5)


def test_moco_v1_loss_is_infonce_of_query_key_and_queue():
    m = _method("moco_v1", **{"params.bn_splits": 1, "params.queue_size": 64})
    b = _batch()
    out = m.training_step(b, 0)
    with torch.no_grad():
        q = F.normalize(m.projector(m.backbone(b.views[0])), dim=1)  # [B, 128]
        k = F.normalize(m.key_projector(m.key_backbone(b.views[1])), dim=1)
        n = F.normalize(m.queue.feats, dim=1)  # [K, 128]: random unit vectors before any key arrives
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / 0.07  # [B, 1 + K]
        expected = _ce_rows(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=1e-4)


def test_moco_v3_loss_is_symmetric_infonce_scaled_by_2t():
    t = 0.2  # not 0.5: there 2T = 1 and a missing scale would pass
    m = _method("moco_v3", **{"params.proj_hidden": 128, "params.pred_hidden": 128, "params.temperature": t})
    b = _batch()
    out = m.training_step(b, 0)
    with torch.no_grad():
        q1, q2 = (F.normalize(m.predictor(m.projector(m.backbone(v))), dim=1) for v in b.views)
        k1, k2 = (F.normalize(m.momentum_projector(m.momentum_backbone(v)), dim=1) for v in b.views)
        target = torch.arange(8)  # the key of the same image; the other keys are negatives
        expected = 2 * t * (_ce_rows(q1 @ k2.T / t, target) + _ce_rows(q2 @ k1.T / t, target))
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- shuffling BN
def test_split_batchnorm_normalises_each_group_separately():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    plain = {k: v.clone() for k, v in bn.state_dict().items()}
    keys = list(bn.state_dict())
    split_batchnorm(nn.Sequential(bn), 4)
    assert isinstance(bn, SplitBatchNorm2d) and list(bn.state_dict()) == keys
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    y = bn(x)
    expected = torch.empty_like(x)
    means, vars_ = [], []
    for r in range(4):  # image i is in group i % 4
        xi = x[r::4]
        mu, var = xi.mean((0, 2, 3)), xi.var((0, 2, 3), unbiased=False)
        expected[r::4] = (xi - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps) \
            * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        means.append(mu)
        vars_.append(xi.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    # running statistics: the mean over the groups of the usual update
    torch.testing.assert_close(bn.running_mean, 0.9 * plain["running_mean"] + 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 * plain["running_var"] + 0.1 * torch.stack(vars_).mean(0))
    # a batch that the splits do not divide uses gcd(N, splits) groups; eval mode is a plain BN
    assert bn(torch.randn(6, 3, 2, 2)).shape == (6, 3, 2, 2)
    bn.eval()
    ref = nn.BatchNorm2d(3).eval()
    ref.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn(x), ref(x))


def test_key_encoder_sees_a_shuffled_batch_and_keys_come_back_in_order():
    m = _method("moco_v2", **{"params.bn_splits": 4, "params.queue_size": 64})
    assert any(isinstance(mod, SplitBatchNorm2d) for mod in m.key_backbone.modules())
    seen = []
    h = m.key_backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = _batch().views[1]
    m.eval()  # BN independent of the batch: each key must be the key of its own image
    k = m._keys(x)
    h.remove()
    assert not torch.equal(seen[0], x)  # shuffled on the way in
    with torch.no_grad():
        torch.testing.assert_close(k, F.normalize(m.key_projector(m.key_backbone(x)), dim=1), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- stop-gradient
@pytest.mark.parametrize("name,key_modules", [
    ("moco_v1", ("key_backbone", "key_projector")),
    ("moco_v2", ("key_backbone", "key_projector")),
    ("moco_v3", ("momentum_backbone", "momentum_projector")),
])
def test_key_encoder_gets_no_gradient(name, key_modules):
    extra = {"params.proj_hidden": 128, "params.pred_hidden": 128} if name == "moco_v3" else \
        {"params.queue_size": 64, "params.symmetric": name == "moco_v2"}
    m = _method(name, **extra)
    keys = [p for mod in key_modules for p in getattr(m, mod).parameters()]
    assert keys and not any(p.requires_grad for p in keys)  # frozen copies, not optimised ...
    trainable = {id(p) for g in m.param_groups() for p in g["params"]}
    assert not any(id(p) in trainable for p in keys)
    for p in keys:
        p.requires_grad_(True)  # ... and even if they were trainable, the keys carry no graph
    out = m.training_step(_batch(), 0)
    out.loss.backward()
    assert all(p.grad is None for p in keys)
    assert m.backbone.conv1.weight.grad is not None and m.backbone.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------ queue and EMA
def test_moco_step_enqueues_keys_and_moves_the_key_encoder():
    m = _method("moco_v1", **{"params.queue_size": 12, "params.momentum": 0.9})
    assert int(m.queue.count) == 0 and m.queue.feats.shape == (12, 128)
    torch.testing.assert_close(m.queue.feats.norm(dim=1), torch.ones(12))  # random unit vectors at start
    out = m.training_step(_batch(), 0)
    for k, v in out.scalars.items():
        assert torch.is_tensor(v) and v.dim() == 0, k
    assert float(out.scalars["queue_fill"]) == 0.0 and float(out.scalars["hard_neg_sim"]) == -1.0
    assert -1.0 <= float(out.scalars["pos_sim"]) <= 1.0
    keys = m._pending.clone()
    with torch.no_grad():  # an optimiser step on the query encoder
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.01)
    old = [p.clone() for p in m.key_backbone.parameters()]
    m.after_optimizer_step(0)
    assert int(m.queue.count) == 8
    torch.testing.assert_close(m.queue.filled(), keys)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(8))
    for o, pk, pq in zip(old, m.key_backbone.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(pk, 0.9 * o + 0.1 * pq)  # theta_k <- m theta_k + (1 - m) theta_q
    out = m.training_step(_batch(seed=2), 1)
    assert float(out.scalars["queue_fill"]) == pytest.approx(8 / 12)
    assert -1.0 < float(out.scalars["hard_neg_sim"]) <= 1.0
    m.after_optimizer_step(1)  # 16 keys through a queue of 12: the 4 oldest are gone
    assert int(m.queue.count) == 12
    torch.testing.assert_close(m.queue.filled()[:4], keys[4:])


def test_live_queue_resize_temperature_and_momentum():
    m = _method("moco_v2", **{"params.queue_size": 16})
    assert set(m.live_params) == {"temperature", "momentum", "queue_size"}
    for s in range(3):
        m.training_step(_batch(seed=s), s)
        m.after_optimizer_step(s)
    newest = m.queue.filled()[-10:].clone()  # 24 keys went through: the queue holds the newest 16
    assert m.set_live("queue_size", 10) == 16
    assert m.queue.size == 10 and m.p.queue_size == 10
    torch.testing.assert_close(m.queue.filled(), newest)
    m.set_live("queue_size", 40)  # grow: new rows are random unit vectors, 10 real keys kept
    assert m.queue.feats.shape == (40, 128) and int(m.queue.count) == 10
    torch.testing.assert_close(m.queue.feats.norm(dim=1), torch.ones(40))
    out = m.training_step(_batch(), 3)
    assert float(out.scalars["queue_fill"]) == pytest.approx(10 / 40)
    with pytest.raises(ValidationError):
        m.set_live("queue_size", 0)
    with pytest.raises(ValidationError):
        m.set_live("temperature", 0.0)
    with pytest.raises(KeyError):
        m.set_live("proj_out", 64)
    m.set_live("momentum", 0.5)
    assert m.p.momentum == 0.5
    m.set_live("temperature", 1.0)
    a = m.training_step(_batch(), 4).loss
    m.set_live("temperature", 0.05)
    assert not torch.isclose(a, m.training_step(_batch(), 4).loss)
    assert set(get_method("moco_v3").live_params) == {"temperature", "momentum"}


def test_moco_v3_momentum_rises_to_one_by_cosine():
    m = _method("moco_v3", **{"params.proj_hidden": 64, "params.pred_hidden": 64})
    m.setup(20, 5)
    for step in (0, 9, 19):
        m.after_optimizer_step(step)
        assert float(m.m) == pytest.approx(momentum_at(step + 1, 20, 0.99))
    assert float(m.m) == pytest.approx(1.0)
    out = m.training_step(_batch(), 0)
    assert set(out.scalars) >= {"pos_sim", "hard_neg_sim", "momentum"}
    assert all(v.dim() == 0 for v in out.scalars.values())


# ------------------------------------------------------------------ structure
def test_moco_v1_v2_defaults_and_heads():
    p1, p2 = get_method("moco_v1").Params(), get_method("moco_v2").Params()
    assert (p1.queue_size, p1.momentum, p1.temperature, p1.proj_layers, p1.proj_out) == (65536, 0.999, 0.07, 1, 128)
    assert (p2.queue_size, p2.momentum, p2.temperature, p2.proj_layers, p2.proj_out) == (65536, 0.999, 0.2, 2, 128)
    m1 = _method("moco_v1", **{"params.queue_size": 64})
    lin = [mod for mod in m1.projector if isinstance(mod, nn.Linear)]
    assert len(lin) == 1 and lin[0].in_features == 512 and lin[0].out_features == 128 and lin[0].bias is not None
    m2 = _method("moco_v2", **{"params.queue_size": 64})
    kinds = [type(mod) for mod in m2.projector]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]  # MLP without BN, hidden = backbone width
    assert m2.projector[0].out_features == 512
    for name in ("moco_v1", "moco_v2", "moco_v3"):
        cls = get_method(name)
        assert cls.paper and cls.summary and cls.family == "contrastive"
        for field in cls.Params.model_fields.values():
            assert field.description, (name, field)


def test_moco_v3_heads_follow_the_official_code():
    r = _method("moco_v3")  # ResNet: 2-layer projector, predictor without output BN
    lin = [mod for mod in r.projector if isinstance(mod, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(512, 4096), (4096, 256)]
    assert all(x.bias is None for x in lin)
    assert isinstance(r.projector[-1], nn.BatchNorm1d) and not r.projector[-1].affine
    assert isinstance(r.predictor[-1], nn.Linear) and r.predictor[-1].bias is None
    assert [(x.in_features, x.out_features) for x in r.predictor if isinstance(x, nn.Linear)] == \
        [(256, 4096), (4096, 256)]
    v = _method("moco_v3", **VIT)  # ViT: 3-layer projector, output BN (no affine) in the predictor too
    assert sum(isinstance(x, nn.Linear) for x in v.projector) == 3
    assert isinstance(v.predictor[-1], nn.BatchNorm1d) and not v.predictor[-1].affine


def test_moco_v3_vit_frozen_patch_embedding_sincos_and_attention_probe():
    m = _method("moco_v3", **VIT, **{"params.freeze_patch_embed": True})
    pe = m.backbone.patch_embed.proj
    assert not pe.weight.requires_grad and not pe.bias.requires_grad
    trainable = {id(p) for g in m.param_groups() for p in g["params"]}
    assert id(pe.weight) not in trainable and id(m.backbone.pos_embed) not in trainable
    torch.testing.assert_close(m.backbone.pos_embed[0, 1:], sincos_2d(4, 4, 192))
    assert torch.all(m.backbone.pos_embed[0, 0] == 0)
    before = pe.weight.clone()
    opt = torch.optim.AdamW([p for g in m.param_groups() for p in g["params"]], lr=1e-2)
    m.training_step(_batch(4), 0).loss.backward()
    opt.step()
    assert torch.equal(pe.weight, before)
    assert torch.equal(m.momentum_backbone.patch_embed.proj.weight, before)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    probe = m.eval().probes(imgs)
    assert set(probe) == {"attention"}
    assert probe["attention"]["images"]["attention"].shape == (2, 3, 32, 32)
    assert _method("moco_v3", **{"params.proj_hidden": 64, "params.pred_hidden": 64}).probes(imgs) == {}
    learned = _method("moco_v3", **VIT, **{"params.sincos_pos_embed": False})
    assert learned.backbone.pos_embed.requires_grad and learned.backbone.patch_embed.proj.weight.requires_grad


def _resolves(key: str, params_cls) -> bool:
    section, _, rest = key.partition(".")
    if section == "params":
        return rest in params_cls.model_fields
    model = RunConfig.model_fields[section].annotation
    for part in rest.split("."):
        if part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2", "moco_v3"])
def test_diagram(name):
    cls = get_method(name)
    d = cls.diagram().to_dict()
    ids = {b["id"] for b in d["blocks"]}
    for e in d["edges"]:
        assert e["src"] in ids and e["dst"] in ids and e["style"] in ("solid", "ema", "stopgrad")
    for b in d["blocks"]:
        for key in b["params"]:
            assert _resolves(key, cls.Params), (name, key)
    ema = [(e["src"], e["dst"]) for e in d["edges"] if e["style"] == "ema"]
    assert ("encoder", "key_encoder" if name != "moco_v3" else "m_encoder") in ema
    if name != "moco_v3":
        assert {"query", "key", "queue", "loss"} <= ids
        assert ("queue", "loss") in {(e["src"], e["dst"]) for e in d["edges"]}


@pytest.mark.parametrize("preset", ["moco_v1", "moco_v1_cifar", "moco_v2", "moco_v2_cifar", "moco_v3",
                                    "moco_v3_cifar", "moco_v3_resnet50"])
def test_presets_validate(preset):
    cfg = validate_config(load_preset(preset))
    assert cfg.method == preset.split("_cifar")[0].split("_resnet50")[0]
    assert preset_description(preset)
    if cfg.model.arch.startswith("vit"):
        assert cfg.params["freeze_patch_embed"] and cfg.optim.optimizer == "adamw"
    elif cfg.method == "moco_v3":
        assert cfg.optim.optimizer == "lars" and cfg.params["temperature"] == 1.0


# ------------------------------------------------------- training through the Trainer
# Learning is measured on the pretext task: the in-batch InfoNCE (T = 0.2) between the query
# network's output for one view and the key encoder's for the other, on fixed augmented views
# of 64 training images, before and after training. The kNN margin over the untrained network
# (the criterion) is checked for all three by tests/test_learning.py (150 steps each).
from engine import events as ev  # noqa: E402
from engine.augment import GPUAugment  # noqa: E402
from engine.data import load_dataset  # noqa: E402
from engine.evaluation import knn_evaluate  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

TRAIN = {"optim.lr": 2e-3, "train.log_every": 5, "train.eval_every": 0, "train.ckpt_every": 10**6}
QUEUE = {"params.queue_size": 64, "params.bn_splits": 2, "params.momentum": 0.99}
RUNS = {  # method -> (steps, settings); v1 / v2 symmetric with T 0.2 learn fastest on the CPU
    "moco_v1": (40, {**QUEUE, "params.symmetric": True, "params.temperature": 0.2}),
    "moco_v2": (10, {**QUEUE, "params.symmetric": True}),
    "moco_v3": (30, {"params.proj_hidden": 256, "params.pred_hidden": 256}),
}


@torch.no_grad()
def _pretext_loss(m, views) -> float:
    x1, x2 = views
    if hasattr(m, "predictor"):  # v3: q = h(g(f(x1))), k = g_k(f_k(x2))
        q, k = m.predictor(m.projector(m.backbone(x1))), m.momentum_projector(m.momentum_backbone(x2))
    else:
        q, k = m.projector(m.backbone(x1)), m.key_projector(m.key_backbone(x2))
    return float(info_nce(q, k, None, 0.2))


def _train(tmp, name: str, steps: int, **dotted) -> dict:
    cfg = _cfg(name, **{**TRAIN, "train.steps": steps, **dotted})
    data = load_dataset(cfg.data)
    views = GPUAugment(cfg.aug, 32)(data.train.images[:64], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
    fresh = create_method(cfg, 32)
    untrained_knn = knn_evaluate(fresh, data, cfg, torch.device("cpu"))[0]
    before = _pretext_loss(fresh.train(), views)
    seen: list = []
    tr = Trainer(cfg, tmp / name, listeners=(seen.append,), data=data)
    fin = tr.run()
    after = _pretext_loss(tr.method.train(), views)
    steps_ev = [e for e in seen if isinstance(e, ev.StepMetrics)]
    evals = [e for e in seen if isinstance(e, ev.Evaluation)]
    print(f"{name} {steps} steps: pretext loss {before:.3f} -> {after:.3f}, train loss {steps_ev[0].loss:.3f} -> "
          f"{steps_ev[-1].loss:.3f}, kNN untrained {untrained_knn:.3f} -> {fin.knn_top1:.3f}")
    return {"fin": fin, "steps": steps_ev, "evals": evals, "method": tr.method, "before": before, "after": after,
            "untrained_knn": untrained_knn}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> the training result of RUNS[name], trained once per module on first use."""
    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            steps, dotted = RUNS[name]
            done[name] = _train(tmp_path_factory.mktemp("moco"), name, steps, **dotted)
        return done[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_training_runs_without_nan_and_logs_the_monitors(runs, name):
    r = runs(name)
    assert r["fin"].status == "completed"
    assert all(math.isfinite(e.loss) for e in r["steps"])
    assert all(math.isfinite(v) for e in r["steps"] for v in e.scalars.values())
    last = r["steps"][-1].scalars
    assert -1.0 <= last["pos_sim"] <= 1.0 and -1.0 <= last["hard_neg_sim"] <= 1.0
    if name == "moco_v3":
        assert last["momentum"] > 0.99  # the cosine schedule raised it
    else:
        assert last["queue_fill"] == 1.0  # 64 keys: full after one symmetric step
        assert int(r["method"].queue.count) == 64
    if name != "moco_v2":
        # MoCo v2's BN-free MLP head sits in a narrow cone (loss at chance) for its first ~100
        # steps at this scale, whatever the optimiser (seen with AdamW and SGD): not checked
        ind = r["evals"][-1].indicators
        assert ind["std"] > 0.3 * ind["std_ref"]  # no collapse
    assert 0.0 <= r["fin"].knn_top1 <= 1.0


# MoCo v2's BN-free MLP head leaves the pretext loss at chance for its first ~100 CPU steps
# here (its 10-step run is too short to show it; tests/test_learning.py shows it learning over 150 steps)
@pytest.mark.parametrize("name", ["moco_v1", "moco_v3"])
def test_training_learns_the_pretext_task(runs, name):
    r = runs(name)
    assert r["after"] < r["before"] - 0.15, (r["before"], r["after"])


def test_moco_v3_vit_gets_the_official_xavier_init() -> None:
    """vits.py: every Linear of the ViT Xavier-uniform (qkv as three D x D matrices), bias 0."""
    import math

    from engine.config import validate_config
    from engine.methods import create_method
    from helpers import with_
    from test_cli import _tiny

    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="moco_v3", **{"model.arch": "vit_tiny", "model.patch_size": 8}))
    vit = create_method(cfg, 32).backbone.requires_grad_(False)
    D = vit.out_dim
    for w, bound in ((vit.blocks[0].attn.qkv.weight, math.sqrt(6 / (2 * D))),
                     (vit.blocks[-1].mlp.fc1.weight, math.sqrt(6 / (5 * D)))):
        assert 0.95 * bound < float(w.abs().max()) <= bound
    assert float(vit.blocks[0].attn.qkv.bias.abs().max()) == 0
