"""train.compile: compiled modules, and the fall-back to eager when the compiler fails (a
Triton bug broke SimCLR's compiled loss on an H200 with torch 2.11; the run must go on)."""

import pytest
import torch
from torch import nn

import engine.compiling as compiling
import engine.trainer as trainer_mod
from engine import events as ev
from engine.compiling import Compiled, is_compiler_error
from engine.config import validate_config
from engine.trainer import Trainer
from helpers import with_
from test_cli import _tiny


def _broken_backend(gm, example_inputs):
    raise RuntimeError("planted compiler failure")


def test_a_failing_backend_is_a_compiler_error_and_others_are_not():
    m = nn.Linear(3, 2)
    m.compile(backend=_broken_backend)
    with pytest.raises(Exception) as info:
        m(torch.randn(4, 3))
    assert is_compiler_error(info.value)
    assert not is_compiler_error(ValueError("shape mismatch"))
    assert not is_compiler_error(torch.OutOfMemoryError("CUDA out of memory"))


def test_guard_falls_back_once_and_lets_model_errors_through():
    m = nn.Linear(3, 2)
    monkey = Compiled([m])
    compiling_backend = compiling.BACKEND
    try:
        compiling.BACKEND = _broken_backend
        monkey.compile()
    finally:
        compiling.BACKEND = compiling_backend
    messages = []
    y = monkey.guard(lambda: m(torch.randn(4, 3)), messages.append)  # fails compiled, runs eagerly
    assert y.shape == (4, 2) and not monkey.active and m._compiled_call_impl is None
    assert len(messages) == 1 and "planted compiler failure" in messages[0]
    # once eager, a model error is the model's: raised as it is, no second fall-back message
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied|mat1 and mat2"):
        monkey.guard(lambda: m(torch.randn(4, 5)), messages.append)
    assert len(messages) == 1
    with pytest.raises(ValueError, match="compile mode"):
        Compiled([m], mode="fastest")


def test_a_model_error_while_compiled_is_not_swallowed():
    c = Compiled([nn.Linear(2, 2)])
    c.active = True

    def bad():
        raise ValueError("not the compiler")

    with pytest.raises(ValueError, match="not the compiler"):
        c.guard(bad, lambda msg: None)
    assert c.active  # still compiled: only compiler failures switch to eager


def _run(tmp_path, monkeypatch, backend, **dotted):
    monkeypatch.setattr(compiling, "BACKEND", backend)
    monkeypatch.setattr(trainer_mod, "_compile_applies", lambda cuda: True)  # (CUDA only in real runs)
    seen = []
    cfg = validate_config(with_(_tiny(), **{"train.steps": 3, "train.compile": True, **dotted}))
    tr = Trainer(cfg, tmp_path / "r", listeners=(seen.append,))
    return tr, tr.run(), seen


def test_a_run_whose_compiler_fails_goes_on_eagerly(tmp_path, monkeypatch):
    tr, fin, seen = _run(tmp_path, monkeypatch, _broken_backend)
    assert fin.status == "completed" and fin.step == 3
    warnings = [e.message for e in seen if isinstance(e, ev.RunWarning) and "torch.compile failed" in e.message]
    # one message per kind of module as each fails in turn (SimCLR: its backbone, its projector)
    assert len(warnings) == 2 and all("planted compiler failure" in w for w in warnings), warnings
    assert "ResNetBackbone" in warnings[0] and "MLPHead" in warnings[1]
    assert not tr.compiled.active
    losses = [e.loss for e in seen if isinstance(e, ev.StepMetrics)]
    assert [e.step for e in seen if isinstance(e, ev.StepMetrics)] == [1, 2, 3]  # the failed step was repeated
    assert all(torch.isfinite(torch.tensor(x)) for x in losses)
    assert tr.compiled.modules and all(m._compiled_call_impl is None for m in tr.compiled.modules)
    assert fin.knn_top1 is not None  # the final evaluation ran eagerly


def test_a_compiler_failure_in_one_module_keeps_the_others_compiled(tmp_path, monkeypatch):
    # as the H200's Triton failed on SimCLR's loss only: the backbone must stay compiled
    rec = _Recorder()

    def fails_without_convolutions(gm, example_inputs):
        ops = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function"]
        if "conv2d" not in ops:
            raise RuntimeError("planted failure in a head")
        return rec(gm, example_inputs)

    tr, fin, seen = _run(tmp_path, monkeypatch, fails_without_convolutions)
    assert fin.status == "completed" and fin.step == 3
    warnings = [e.message for e in seen if isinstance(e, ev.RunWarning) and "torch.compile failed" in e.message]
    assert len(warnings) == 1 and "MLPHead" in warnings[0] and "1 other(s) stay compiled" in warnings[0], warnings
    m = tr.method
    assert m.projector._compiled_call_impl is None and m.backbone._compiled_call_impl is not None
    assert tr.compiled.active and any("conv2d" in g for g in rec.graphs)


def test_a_compiled_run_trains_and_exports_plain_weights(tmp_path, monkeypatch):
    # dynamo traces the method's modules for real ("eager" backend: no C++ / Triton build on the CPU)
    tr, fin, seen = _run(tmp_path, monkeypatch, "eager")
    assert fin.status == "completed"
    assert not [e for e in seen if isinstance(e, ev.RunWarning) and "compile" in e.message]
    assert tr.compiled.active
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    keys = list(ckpt["model"])
    assert keys and not any("_orig_mod" in k for k in keys)


def test_compile_mode_is_validated_and_shown_only_with_compile():
    from engine.config import config_errors

    assert config_errors(with_(_tiny(), **{"train.compile_mode": "fastest"}))
    cfg = validate_config(with_(_tiny(), **{"train.compile": True, "train.compile_mode": "reduce-overhead"}))
    assert cfg.train.compile_mode == "reduce-overhead"
    schema = cfg.model_json_schema()
    train = schema["$defs"]["TrainConfig"]["properties"]["compile_mode"]
    assert train["applies_when"] == {"train.compile": ["true"]}


class _Recorder:
    """A dynamo backend that runs each graph eagerly and records the operators it holds."""

    def __init__(self):
        self.graphs: list[list[str]] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append([getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                            if n.op == "call_function"])
        return gm.forward


def test_mae_compiles_its_encoder_and_decoder_blocks(tmp_path, monkeypatch):
    # MAE never calls its ViT backbone: it embeds, drops the masked patches and runs the blocks
    # itself. Compiling the method's children alone compiled three one-node decoder linears.
    from test_mae import MICRO, ONE_CROP, SMALL_DEC

    rec = _Recorder()
    tr, fin, seen = _run(tmp_path, monkeypatch, rec, method="mae", params=dict(SMALL_DEC, decoder_depth=2),
                         **MICRO, **ONE_CROP)
    assert fin.status == "completed" and tr.compiled.active
    units = {id(m) for m in tr.compiled.modules}
    m = tr.method
    assert all(id(b) in units for b in list(m.backbone.blocks) + list(m.decoder_blocks))
    attention_graphs = [g for g in rec.graphs if "scaled_dot_product_attention" in g]
    assert attention_graphs, rec.graphs  # the blocks ran compiled
    # identical blocks share their graphs: compiling costs one graph per kind of block and mode,
    # not one per block (encoder + decoder, training + evaluation, at most a few shapes)
    assert len(attention_graphs) <= 8, len(attention_graphs)
    # the attention probe watches the last block through a hook, which a compiled block skips:
    # it runs that forward eagerly and still shows one map per head
    probes = [e for e in seen if isinstance(e, ev.VisualProbe) and e.probe == "attention"]
    assert probes and probes[-1].images, probes


def test_a_called_backbone_compiles_whole_and_parameter_free_modules_stay_eager():
    from engine.compiling import compile_units
    from engine.methods import create_method

    cfg = validate_config(with_(_tiny(), method="dino", params={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
                                **{"model.arch": "vit_mim_micro", "model.patch_size": 4,
                                   "aug.local_crops.count": 2, "aug.local_crops.size": 16}))
    m = create_method(cfg, 32)
    units = compile_units(m)
    assert m.backbone in units and m.teacher_backbone in units and m.head in units
    assert m.center not in units  # no parameters: a Python temperature would recompile it each epoch
    assert all(next(u.parameters(), None) is not None for u in units)
    simclr = create_method(validate_config(_tiny()), 32)
    assert simclr.criterion not in compile_units(simclr)  # the loss (where a Triton bug hit SimCLR)
    assert simclr.backbone in compile_units(simclr) and simclr.projector in compile_units(simclr)
    rec = _Recorder()
    for u in units:
        u.compile(backend=rec)
    x = torch.randn(2, 3, 32, 32)
    m.backbone(x)
    # the called backbone is one graph with its blocks inlined, not one graph per block
    assert len(rec.graphs) == 1 and rec.graphs[0].count("scaled_dot_product_attention") == len(m.backbone.blocks)


# one small preset per method (the ImageNet presets differ in sizes only)
PRESETS = ["simclr_cifar", "moco_v1_cifar", "moco_v2_cifar", "moco_v3_cifar", "byol_cifar", "simsiam_cifar",
           "barlow_twins_cifar", "swav_cifar", "dino_cifar", "dino_cifar_resnet18", "mae_small", "simmim_small",
           "beit_small", "multimae_small"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_method_runs_its_backbone_compiled(preset, tmp_path, monkeypatch):
    """A compiled run of each method traces its convolutions / attention (the compute), with no
    fall-back to eager, and finishes. Catches a method that calls its network in a way
    ``train.compile`` does not reach (as MAE did before transformer blocks were units)."""
    from engine.presets import load_preset

    torch._dynamo.reset()  # compiled code is cached per code object: start clean
    raw = load_preset(preset)
    vit = not raw["model"]["arch"].startswith("resnet")
    d = {"data.source": "shapes", "data.shapes_size": 32, "data.shapes_train": 64, "data.shapes_test": 32,
         "train.steps": 2, "train.batch_size": 8, "train.device": "cpu", "train.log_every": 1,
         "train.compile": True, "train.probe_every_s": 1000, "eval.max_bank": 64, "eval.max_queries": 32,
         "aug.global_crops.size": 32}
    if vit:
        d.update({"model.arch": "vit_mim_micro", "model.patch_size": 4, "model.num_heads": None})
    if raw["aug"].get("local_crops", {}).get("count", 0):
        d["aug.local_crops.size"] = 16
    rec = _Recorder()
    monkeypatch.setattr(compiling, "BACKEND", rec)
    monkeypatch.setattr(trainer_mod, "_compile_applies", lambda cuda: True)
    seen = []
    tr = Trainer(validate_config(with_(raw, **d)), tmp_path / "r", listeners=(seen.append,))
    fin = tr.run()
    assert fin.status == "completed", fin
    assert tr.compiled.active
    assert not [e.message for e in seen if isinstance(e, ev.RunWarning) and "compile" in e.message]
    heavy = "scaled_dot_product_attention" if vit else "conv2d"
    assert any(heavy in g for g in rec.graphs), rec.graphs


def test_a_failure_outside_any_module_call_sends_every_module_back_to_eager(tmp_path, monkeypatch):
    # a backward graph is compiled lazily, inside loss.backward(): no module is being called,
    # so the culprit is unknown and everything goes back to eager
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.exc import InductorError

    def bw_fails(gm, example_inputs):  # what inductor raises when a kernel does not build
        raise InductorError(RuntimeError("planted backward failure"), None)

    tr, fin, seen = _run(tmp_path, monkeypatch, aot_autograd(fw_compiler=lambda gm, ex: gm.forward, bw_compiler=bw_fails))
    assert fin.status == "completed" and fin.step == 3
    warnings = [e.message for e in seen if isinstance(e, ev.RunWarning) and "torch.compile failed" in e.message]
    assert len(warnings) == 1 and "planted backward failure" in warnings[0] and "eagerly" in warnings[0], warnings
    assert not tr.compiled.active and all(m._compiled_call_impl is None for m in tr.compiled.modules)
