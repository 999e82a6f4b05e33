"""BEiT (issue 5): masked-token loss, [MASK] embedding, the two stages, tokenizer files, training."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
from pydantic import ValidationError

from engine import events as ev
from engine.augment import to_float
from engine.components.tokenizer import load_tokenizer, save_tokenizer
from engine.config import validate_config
from engine.data import load_dataset
from engine.data.shapes import make_shapes
from engine.errors import CheckpointError, ConfigError
from engine.evaluation import knn_evaluate
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.methods.beit import mim_cross_entropy
from engine.optim import build_optimizer, set_lr_wd
from engine.preflight import preflight
from engine.presets import load_preset
from engine.trainer import Trainer
from helpers import with_
from test_byol import check_diagram, check_run, final_eval
from test_cli import _tiny

SMALL = {"vocab_size": 64, "tokenizer_steps": 3, "tok_width": 32, "tok_code_dim": 8}
VIT = {"model.arch": "vit_tiny", "model.patch_size": 8, "aug.global_crops.count": 1}  # 4 x 4 patches at 32 px
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(params: dict | None = None, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="beit", params={**SMALL, **(params or {})}, **{**VIT, **dotted}))
    m = create_method(cfg, 32)
    m.setup(100, 8)
    return m


def shapes_batch(n: int = 8) -> Batch:
    d = make_shapes(n, 32, seed=3)
    return Batch(views=[to_float(d.images, MEAN, STD)], images=d.images, n_global=1)


def train_keep(method: str, params: dict, steps: int, tmp, lr: float = 2e-3, listeners=(), ctx: dict | None = None,
               **dotted):
    """The real Trainer on 32 px shapes (batch 32, one thread), keeping the trainer (also in
    ``ctx['trainer']`` before it runs, for listeners). Returns (untrained kNN of a fresh method
    with the trainer's seed, events, seconds, trainer)."""
    raw = with_(_tiny(), method=method, params=params, **{
        "train.steps": steps, "train.log_every": 5, "train.eval_every": 10_000, "optim.lr": lr,
        "train.ckpt_every": 10_000, **dotted})  # one evaluation, at the end
    cfg = validate_config(raw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)
        untrained, _, _ = knn_evaluate(create_method(cfg, 32), data, cfg, torch.device("cpu"))
        seen: list[ev.Event] = []
        t = time.time()
        trainer = Trainer(cfg, tmp / method, listeners=(seen.append, *listeners), data=data)
        if ctx is not None:
            ctx["trainer"] = trainer
        trainer.run()
        return untrained, seen, time.time() - t, trainer
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------- loss
def test_loss_counts_only_masked_positions_and_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    B, L, K = 3, 6, 5
    logits = torch.randn(B, L, K, generator=g)
    targets = torch.randint(0, K, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) < 0.5
    mask[0, 0], mask[0, 1] = True, False
    # explicit: mean over masked (b, l) of -log softmax(logits[b, l])[targets[b, l]]
    terms = [-(logits[b, l, targets[b, l]] - torch.logsumexp(logits[b, l], 0))
             for b in range(B) for l in range(L) if mask[b, l]]
    expected = sum(terms) / len(terms)
    loss = mim_cross_entropy(logits, targets, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), K, generator=g)  # visible positions only
    assert mim_cross_entropy(changed, targets, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    changed[0, 0, targets[0, 0]] += 5.0  # a masked position does count
    assert mim_cross_entropy(changed, targets, mask).item() != pytest.approx(loss.item(), rel=1e-6)


def test_method_loss_uses_the_head_on_masked_tokens_only() -> None:
    m = build()
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, m.num_patches, m.backbone.out_dim, generator=g)
    targets = torch.randint(0, 64, (2, m.num_patches), generator=g)
    mask = m.generate_mask(2, "cpu", generator=g)
    loss, logits = m.mim_loss(h, targets, mask)
    assert logits.shape == (int(mask.sum()), 64)
    assert loss.item() == pytest.approx(mim_cross_entropy(m.head(h), targets, mask).item(), rel=1e-5)
    h2 = h.clone()
    h2[~mask] = torch.randn(int((~mask).sum()), h.shape[-1], generator=g)
    assert m.mim_loss(h2, targets, mask)[0].item() == pytest.approx(loss.item(), rel=1e-6)


# ---------------------------------------------------------------- architecture
def test_layout_and_paper_defaults() -> None:
    p = get_method("beit").Params()
    assert (p.mask_ratio, p.min_block, p.layer_scale, p.vocab_size, p.tok_ema) == (0.4, 16, 0.1, 8192, True)
    m = build()
    assert m.head.out_features == 64 and m.tokenizer.vocab_size == 64
    assert m.tokenizer.patch_size == m.backbone.patch_size == 8 and m.grid == (4, 4)
    for blk in m.backbone.blocks:  # LayerScale as timm's init_values=0.1
        assert torch.allclose(blk.ls1.gamma, torch.full_like(blk.ls1.gamma, 0.1))
    assert m.mask_token.shape == (m.backbone.out_dim,)
    # the backbone is a plain timm ViT built with init_values=0.1 (what an exporter has to pass)
    plain = timm.create_model(m.backbone.timm_name, pretrained=False, img_size=32, patch_size=8, num_classes=0,
                              init_values=m.backbone.init_values)
    plain.load_state_dict(m.backbone.state_dict(), strict=True)
    assert m.num_masked() == round(0.4 * 16)
    mask = m.generate_mask(5, "cpu")
    assert mask.shape == (5, 16) and (mask.sum(1) == m.num_masked()).all()
    with pytest.raises(ConfigError, match="ViT"):
        build(**{"model.arch": "resnet18"})
    with pytest.raises(ConfigError, match="global_crops.count"):
        build(**{"aug.global_crops.count": 0})


def test_embed_is_the_cls_token_or_the_mean_patch_token() -> None:
    m = build().eval()
    x = shapes_batch(3).views[0]
    with torch.no_grad():
        tokens = m.backbone.forward_tokens(x)  # [3, 1 + 16, D]
        torch.testing.assert_close(m.embed(x), tokens[:, 0])  # default: CLS
        torch.testing.assert_close(tokens[:, 1:], m.encode(x))  # the same encoder as training, unmasked
        m.p.embed_pool = "mean"
        torch.testing.assert_close(m.embed(x), tokens[:, 1:].mean(1))


def test_masked_patches_are_replaced_by_the_mask_embedding() -> None:
    m = build().eval()
    x = shapes_batch(2).views[0]
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5] = True  # patch (1, 1): pixels 8..16 x 8..16
    y = x.clone()
    y[:, :, 8:16, 8:16] = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x, mask), m.encode(y, mask))  # the masked pixels are never seen
        assert not torch.allclose(m.encode(x), m.encode(y))  # unmasked, they are


def test_stage_switch_and_frozen_tokenizer() -> None:
    m = build()
    batch = shapes_batch()
    # stage one: only the tokenizer learns
    out = m.training_step(batch, 2)
    out.loss.backward()
    assert {"tok_recon", "tok_perplexity", "codes_used"} <= set(out.scalars) and out.scalars["stage"] == 1
    assert all(q.grad is None for q in m.backbone.parameters()) and m.head.weight.grad is None
    assert m.tokenizer.encoder[0].weight.grad is not None and not bool(m.tokenizer_ready)
    m.zero_grad(set_to_none=True)
    # stage two from step tokenizer_steps: the tokenizer is frozen
    tok_state = {k: v.clone() for k, v in m.tokenizer.state_dict().items()}
    torch.manual_seed(5)
    out = m.training_step(batch, 3)
    out.loss.backward()
    assert bool(m.tokenizer_ready) and out.scalars["stage"] == 2 and "mim_acc" in out.scalars
    assert all(not q.requires_grad and q.grad is None for q in m.tokenizer.parameters())
    for k, v in m.tokenizer.state_dict().items():
        assert torch.equal(v, tok_state[k]), k  # no codebook update either
    assert m.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert m.mask_token.grad.abs().sum() > 0 and m.head.weight.grad is not None
    # the step's loss is the cross-entropy against the frozen tokenizer's codes of the unmasked view
    torch.manual_seed(5)
    x = batch.views[0]
    targets = m.tokenizer.encode(x).reshape(8, -1)
    mask = m.generate_mask(8, "cpu")
    expected = mim_cross_entropy(m.head(m.encode(x, mask)), targets, mask)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_run_no_longer_than_the_tokenizer_stage_is_warned_about(tmp_path) -> None:
    m = build()  # tokenizer_steps 3
    assert m.setup_warnings() == []  # 100 steps
    m.setup(3, 8)
    (msg,) = m.setup_warnings()
    assert "tokenizer_steps (3)" in msg and "the ViT never" in msg
    # the trainer says so at the start of the run, in the event stream (and so in the log)
    cfg = validate_config(with_(_tiny(), method="beit", params=SMALL, **{**VIT, "train.steps": 2,
                                "train.eval_every": 10_000, "train.ckpt_every": 10_000}))
    seen: list[ev.Event] = []
    Trainer(cfg, tmp_path / "run", listeners=(seen.append,)).run()
    warnings = [e.message for e in seen if isinstance(e, ev.RunWarning)]
    assert any("tokenizer_steps (3)" in w for w in warnings)
    assert "tokenizer_steps (3)" in (tmp_path / "run" / "events.log").read_text()


def test_param_groups() -> None:
    m = build({"tok_lr": 0.004})  # run lr 1e-3, scale_lr off: the tokenizer's lr_scale is 4
    main, tok = m.param_groups()
    assert tok["fixed_lr"] and tok["lr_scale"] == pytest.approx(4.0) and tok["wd_scale"] == 0.0
    ids = {id(q) for q in tok["params"]}
    assert ids == {id(q) for q in m.tokenizer.parameters()}
    assert not ids & {id(q) for q in main["params"]} and id(m.mask_token) in {id(q) for q in main["params"]}
    # through the trainer's optimiser plumbing: the tokenizer keeps tok_lr (even at the start of the
    # warm-up, LR 0) and gets no weight decay; the ViT follows the schedule
    opt = build_optimizer(m, m.param_groups(), m.cfg.optim, 1e-3, torch.device("cpu"))
    set_lr_wd(opt, 0.0, 0.05, 1e-3)
    for g in opt.param_groups:
        is_tok = {id(q) for q in g["params"]} <= ids
        assert g["lr"] == pytest.approx(0.004 if is_tok else 0.0)
        assert g["weight_decay"] == (0.0 if is_tok else g["weight_decay"])
    assert any(g["weight_decay"] == 0.05 for g in opt.param_groups)


def test_tokenizer_path_round_trip(tmp_path) -> None:
    m1 = build()
    m1.training_step(shapes_batch(), 0)  # one update moves the codebook
    path = save_tokenizer(m1.tokenizer, tmp_path / "tok.pt")
    m2 = build({"tokenizer_path": str(path)})
    for k, v in m1.tokenizer.state_dict().items():
        assert torch.equal(m2.tokenizer.state_dict()[k], v), k
    assert bool(m2.tokenizer_ready) and all(not q.requires_grad for q in m2.tokenizer.parameters())
    assert len(m2.param_groups()) == 1  # nothing of the tokenizer is optimised
    out = m2.training_step(shapes_batch(), 0)  # no stage one
    assert "mim_acc" in out.scalars


def test_bad_tokenizer_paths(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build({"tokenizer_path": str(tmp_path / "missing.pt")})
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        build({"tokenizer_path": str(tmp_path / "corrupt.pt")})
    path = save_tokenizer(build().tokenizer, tmp_path / "tok.pt")
    with pytest.raises(CheckpointError, match="vocabulary of 64"):
        build({"tokenizer_path": str(path), "vocab_size": 128})
    with pytest.raises(CheckpointError, match="one token per 8 px"):
        build({"tokenizer_path": str(path)}, **{"model.patch_size": 4})
    # the studio's / CLI's setup check (built on the meta device) reads the file and says the same
    ok = validate_config(with_(_tiny(), method="beit", params={**SMALL, "tokenizer_path": str(path)}, **VIT))
    preflight(ok, 32)
    bad = validate_config(with_(_tiny(), method="beit", params={**SMALL, "tokenizer_path": str(path),
                                                                 "vocab_size": 128}, **VIT))
    with pytest.raises(CheckpointError, match="vocabulary of 64"):
        preflight(bad, 32)
    with pytest.raises(ConfigError, match="tokenizer_steps is 0"):
        validate_config(with_(_tiny(), method="beit", params={"tokenizer_steps": 0}))


def test_live_mask_ratio_and_config() -> None:
    cls = get_method("beit")
    assert cls.live_params == ("mask_ratio", "mask_type")
    m = build()
    assert m.set_live("mask_ratio", 0.6) == 0.4 and m.num_masked() == round(0.6 * 16)
    assert m.set_live("mask_type", "random") == "block"  # the paper's ablation without blockwise masking
    g = torch.Generator().manual_seed(0)
    assert (m.generate_mask(64, "cpu", generator=g).sum(1) == m.num_masked()).all()
    loss = m.training_step(shapes_batch(4), 10).loss  # stage two (3 tokenizer steps) with random masks
    assert torch.isfinite(loss)
    with pytest.raises(ValidationError):
        m.set_live("mask_ratio", 0.99)
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("beit")
    assert "stopgrad" in {e.style for e in cls.diagram().edges}


@pytest.mark.parametrize("preset", ["beit", "beit_small"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "beit" and cfg.optim.optimizer == "adamw"
    if preset == "beit":  # the paper's recipe
        assert (cfg.model.arch, cfg.model.patch_size, cfg.params["vocab_size"]) == ("vit_base", 16, 8192)
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (
            1.5e-3, 0.05, 2048, 800)
        assert cfg.optim.warmup_epochs == 10  # counted from the end of the tokenizer stage
        m = create_method(cfg.model_copy(update={"model": cfg.model.model_copy(update={"arch": "vit_tiny"})}), 224)
        assert m.num_masked() == 75  # of 196, as the official --num_mask_patches
    else:
        assert cfg.params["mask_ratio"] == 0.4
        assert cfg.model.patch_size == 4 and cfg.params["vocab_size"] == 512


def test_probes() -> None:
    m = build()
    imgs = make_shapes(4, 32, seed=1).images
    m.eval()
    first = m.probes(imgs)
    assert set(first) == {"tokenizer"}  # stage one: no MIM prediction yet
    assert first["tokenizer"]["images"]["reconstruction"].shape == (4, 32, 32, 3)
    m.train()
    m.training_step(shapes_batch(), 3)  # enter stage two
    m.eval()
    probes = m.probes(imgs)
    panels = probes["reconstruction"]["images"]
    assert list(panels) == ["original", "masked", "reconstruction", "pasted"]
    assert all(a.shape == (4, 32, 32, 3) and a.dtype.name == "uint8" for a in panels.values())
    assert 0.0 <= probes["reconstruction"]["meta"]["token_accuracy"] <= 1.0
    assert get_method("beit").mask_preview(imgs, m.cfg).shape == (4, 3, 32, 32)


# -------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def beit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("beit")
    ctx: dict = {}
    at_switch: dict = {}

    def snapshot(e):  # the tokenizer as it is when stage two begins (the listener runs on the training thread)
        if isinstance(e, ev.StepMetrics) and e.step == 20:
            at_switch.update({k: v.clone() for k, v in ctx["trainer"].method.tokenizer.state_dict().items()})

    params = {**SMALL, "tokenizer_steps": 20, "tok_lr": 2e-3}
    res = train_keep("beit", params, steps=35, tmp=tmp, lr=1e-3, listeners=(snapshot,), ctx=ctx,
                     **{**VIT, "optim.warmup_epochs": 0})
    return (*res, at_switch, tmp / "beit")


def test_trains_through_the_trainer(beit_run) -> None:
    untrained, seen, seconds, trainer, at_switch, run_dir = beit_run
    steps = check_run(seen)
    # the ViT's schedule starts with stage two: LR 0 during the tokenizer stage, then (no warm-up
    # here) the cosine from the peak
    assert all(e.lr == 0.0 for e in steps if e.step <= 20)
    assert [e.lr for e in steps if e.step > 20][0] > 0.8e-3
    assert not [e for e in seen if isinstance(e, ev.RunWarning)]  # 20 tokenizer steps of 35: no warning
    one = [e for e in steps if e.step <= 20]
    two = [e for e in steps if e.step > 20]
    assert one and two and all("tok_recon" in e.scalars for e in one) and all("mim_acc" in e.scalars for e in two)
    # the tokenizer learns (its loss is noisy from window to window: the last two against the first)
    assert max(e.scalars["tok_recon"] for e in one[-2:]) < one[0].scalars["tok_recon"]
    assert one[-1].scalars["codes_used"] > 0.1 * 64  # more than a few codes
    assert two[-1].loss < two[0].loss  # the ViT learns to predict the tokens
    assert two[0].loss < math.log(64) + 1.0
    # frozen in stage two: the tokenizer at the end is the tokenizer at the switch
    assert at_switch
    for k, v in trainer.method.tokenizer.state_dict().items():
        assert torch.equal(v.cpu(), at_switch[k].cpu()), k
    # the run's checkpoint carries the tokenizer: a new run can load it from the run folder
    tok = load_tokenizer(run_dir)
    for k, v in trainer.method.tokenizer.state_dict().items():
        assert torch.equal(tok.state_dict()[k], v.cpu()), k
    print(f"BEiT 20 tokenizer + 15 BEiT steps ({seconds:.0f} s): tok_recon {one[0].scalars['tok_recon']:.3f} -> "
          f"{one[-1].scalars['tok_recon']:.3f}, codes used {one[-1].scalars['codes_used']:.0f}/64, "
          f"MIM loss {two[0].loss:.3f} -> {two[-1].loss:.3f} (acc {two[-1].scalars['mim_acc']:.2f}), "
          f"kNN untrained {untrained:.3f} -> {final_eval(seen).knn_top1:.3f}")


def test_exported_backbone_loads_strictly_into_plain_timm(tmp_path) -> None:
    """ssl-export of a BEiT run: LayerScale (init_values) and the image size travel with the
    weights, so timm.create_model(name, **kwargs) takes them with strict=True."""
    import timm

    from engine.config import validate_config
    from engine.export import export_backbone
    from engine.presets import load_preset
    from engine.trainer import Trainer

    raw = load_preset("beit_small")
    raw["data"] = {"source": "shapes", "shapes_size": 32, "shapes_train": 64, "shapes_test": 32}
    raw["train"].update(steps=3, batch_size=16, device="cpu", eval_every=0, log_every=1, probe_every_s=1000)
    raw["params"].update(tokenizer_steps=1)
    raw["eval"] = {"max_bank": 64, "max_queries": 32}
    Trainer(validate_config(raw), tmp_path / "run").run()
    meta = export_backbone(tmp_path / "run", "timm", tmp_path / "bb.pt")
    assert meta["kwargs"]["init_values"] == pytest.approx(0.1) and meta["kwargs"]["img_size"] == 32
    m = timm.create_model(meta["model_name"], **meta["kwargs"])
    m.load_state_dict(torch.load(tmp_path / "bb.pt", weights_only=True), strict=True)


# the probe predicts the MASKED patches' tokens and keeps the visible ones
def test_beit_probe_predicts_masked_tokens_and_keeps_visible_ones() -> None:
    from engine.data.shapes import make_shapes
    from engine.methods.beit import PROBE_SEED
    from engine.augment import resize_normalize

    m = build()
    m.training_step(shapes_batch(), 3)  # enter stage two
    m.eval()
    imgs = make_shapes(4, 32, seed=1).images
    probes = m.probes(imgs)
    with torch.no_grad():
        x = resize_normalize(imgs, 32, m.cfg.aug.mean, m.cfg.aug.std).float()
        codes = m.tokenizer.encode(x).reshape(4, -1)
        mask = m.generate_mask(4, "cpu", generator=torch.Generator().manual_seed(PROBE_SEED))
        pred = m.head(m.encode(x, mask)).argmax(-1)
    expected = (pred[mask] == codes[mask]).float().mean().item()
    assert expected < 0.9  # an untrained head: most masked tokens are wrong
    assert probes["reconstruction"]["meta"]["token_accuracy"] == pytest.approx(expected)
    # the pasted panel's visible patches are the original pixels
    panels = probes["reconstruction"]["images"]
    vis = ~mask[0].reshape(4, 4)
    i, j = [int(v) for v in vis.nonzero()[0]]
    orig, pasted = panels["original"][0], panels["pasted"][0]
    assert (orig[8 * i:8 * i + 8, 8 * j:8 * j + 8] == pasted[8 * i:8 * i + 8, 8 * j:8 * j + 8]).all()


@pytest.mark.parametrize("method", ["beit", "simmim"])
def test_vit_gets_beits_init_with_output_projections_scaled_by_depth(method) -> None:
    """BEiT's (and SimMIM's ViT's) init: weights N(0, 0.02), bias 0, and block l's attn.proj and
    mlp.fc2 divided by sqrt(2 l) (fix_init_weight); LayerScale on top."""
    torch.manual_seed(0)
    params = SMALL if method == "beit" else {"mask_patch": 8}
    cfg = validate_config(with_(_tiny(), method=method, params=params, **VIT))
    vit = create_method(cfg, 32).backbone.requires_grad_(False)
    for layer, blk in enumerate(vit.blocks, start=1):
        for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
            assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * layer), rel=0.1), (layer, w.shape)
        assert blk.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert float(blk.attn.qkv.bias.abs().max()) == 0 and float(blk.ls1.gamma[0]) == pytest.approx(0.1)
    assert vit.patch_embed.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert vit.cls_token.std().item() == pytest.approx(0.02, rel=0.3)
