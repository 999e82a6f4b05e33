"""torch.compile for a method's modules, with a fall-back to eager when the compiler fails.

``torch.compile`` compiles lazily, at a module's first call (and again at the first call in
another mode: evaluation under ``no_grad``, a new crop size), so a compiler failure surfaces
in the middle of a training step, an evaluation or a probe. A compiler bug must not end a
run: measured on an H200 (torch 2.11.0+cu130, its Triton), inductor failed to build the
cross-entropy kernel of SimCLR's loss ("operand #1 does not dominate this use"). The trainer
wraps those calls in :meth:`Compiled.guard`: on an error raised by dynamo / inductor / Triton
it finds the compiled module being called when the compiler failed (the innermost
``nn.Module.__call__`` of a compiled unit in the traceback), switches every unit of that class
back to eager (``nn.Module.compile``'s ``_compiled_call_impl`` cleared), reports why, and
repeats the call; the other units stay compiled. A failure outside any module call (a backward
graph is built lazily inside ``loss.backward()``) sends every unit back to eager. Errors of the
model itself (shapes, out of memory) are not compiler errors and pass through untouched.

What is compiled (:func:`compile_units`): ``nn.Module.compile`` replaces a module's
``__call__``, so it only acts where that module is *called*. The masked-image methods do not
call their ViT backbone: MAE embeds the patches, drops the masked ones and runs
``vit.blocks`` on the rest (MAE's own code does the same), SimMIM and BEiT insert mask tokens
between the patch embedding and the blocks, and a decoder is a ``ModuleList`` iterated in the
method. Compiling only the method's direct children therefore compiled nothing of MAE but its
three small decoder linears (measured on the CPU with a recording backend: three one-node
graphs; SimMIM: one). So every transformer block is a unit as well (regional compilation:
identical blocks share one compiled graph, so compile time does not grow with depth), and where
a backbone *is* called (DINO, MoCo v3, the ResNets) dynamo traces it whole and inlines its
blocks (one graph per crop size: 199 nodes for DINO's ViT-S/16 on the CPU).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

T = TypeVar("T")

# compile modes torch.compile accepts (``train.compile_mode``)
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKEND: Any = "inductor"  # a test seam: tests put a backend that fails here
RECOMPILE_LIMIT = 64
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "triton")


def is_compiler_error(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) comes from the compiler stack."""
    seen = 0
    while e is not None and seen < 8:
        mod = type(e).__module__ or ""
        if mod.startswith(_COMPILER_MODULES):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _summary(e: BaseException, limit: int = 300) -> str:
    """The informative part of a compiler error: its text, or its root cause's where it only
    says which backend raised (dynamo's wrapper)."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    for err in dict.fromkeys((e, root)):  # the error, then its root cause (once if the same)
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.endswith("raised:") and not ln.startswith("Set TORCH")]
        if lines:
            text = " ".join(lines[:2])
            break
    else:
        text = type(root).__name__
    if root is not e and type(root).__name__ not in text:
        text = f"{type(root).__name__}: {text}"
    return text[:limit]


def _is_block(m: nn.Module) -> bool:
    """A transformer block: attention and MLP sub-modules (timm's ViT, BEiT, Swin and Eva blocks)."""
    return isinstance(getattr(m, "attn", None), nn.Module) and isinstance(getattr(m, "mlp", None), nn.Module)


def compile_units(method: nn.Module) -> list[nn.Module]:
    """The modules ``train.compile`` compiles, in order: each direct child of ``method`` that has
    parameters (backbones, heads, decoders, teachers) followed by the transformer blocks inside it.

    Children without parameters stay eager: losses, the DINO centre, feature queues. They are
    cheap, they take Python floats that change during a run (temperatures, momenta: each new
    value would be a recompilation) and a loss is where the compiler has failed (the SimCLR
    cross-entropy kernel, see above)."""
    units: list[nn.Module] = []
    for child in method.children():
        if next(child.parameters(), None) is None:
            continue
        units.append(child)
        units.extend(m for m in child.modules() if m is not child and _is_block(m))
    return units


@contextmanager
def eager(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module`` and everything inside it run their eager forward.

    For the probes that watch a forward through hooks (the attention probe's pre-hook on the
    last block's attention): a compiled graph was traced without the hook and would not call it."""
    saved = [(m, m._compiled_call_impl) for m in module.modules() if m._compiled_call_impl is not None]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield module
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


class Compiled:
    """The modules compiled for a run, and the way back to eager."""

    def __init__(self, modules: list[nn.Module], mode: str = "default") -> None:
        if mode not in MODES:
            raise ValueError(f"compile mode {mode!r}: one of {', '.join(MODES)}")
        self.modules = list(modules)
        self.mode = mode
        self.active = False
        self.failure: str | None = None

    def compile(self) -> None:
        # A student and its EMA teacher share their modules' code, called with and without
        # gradients, at several crop sizes, and in eval mode: more than dynamo's default of 8
        # compiled variants of one function, after which it would silently run eagerly.
        conf = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if self.modules and hasattr(conf, name):
                setattr(conf, name, max(int(getattr(conf, name)), RECOMPILE_LIMIT))
        kwargs = {"backend": BACKEND}
        if BACKEND == "inductor":
            kwargs["mode"] = self.mode
        for m in self.modules:
            m.compile(**kwargs)
        self.active = bool(self.modules)

    def to_eager(self, reason: BaseException) -> str:
        """Every module back to its eager forward; returns the message for the run's log."""
        for m in self.modules:
            m._compiled_call_impl = None  # what nn.Module.compile() set
        self.active = False
        torch._dynamo.reset()
        self.failure = f"{type(reason).__name__}: {_summary(reason)}"
        return (f"torch.compile failed ({self.failure}); the run goes on eagerly (train.compile is "
                "ignored from here; the step was repeated uncompiled)")

    def culprit(self, e: BaseException) -> nn.Module | None:
        """The compiled module whose compilation raised ``e``: the innermost frame of ``e``'s
        traceback that is a compiled unit's ``__call__`` (None when the compiler failed outside
        any, e.g. building a backward graph lazily during ``loss.backward()``)."""
        units = {id(m): m for m in self.modules if m._compiled_call_impl is not None}
        found = None
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "_wrapped_call_impl":  # nn.Module.__call__
                found = units.get(id(frame.f_locals.get("self")), found)
            tb = tb.tb_next
        return found

    def to_eager_partly(self, reason: BaseException, culprit: nn.Module) -> str:
        """The culprit's kind of module (every compiled unit of its class: the same code fails
        the same way) back to eager; the other units stay compiled."""
        kind = type(culprit)
        off = [m for m in self.modules if type(m) is kind and m._compiled_call_impl is not None]
        for m in off:
            m._compiled_call_impl = None
        still = sum(m._compiled_call_impl is not None for m in self.modules)
        self.active = still > 0
        why = f"{type(reason).__name__}: {_summary(reason)}"
        self.failure = why if self.failure is None else f"{self.failure}; {why}"
        return (f"torch.compile failed in {kind.__name__} ({why}); {len(off)} such module(s) run eagerly "
                f"from here, {still} other(s) stay compiled (the step was repeated)")

    def guard(self, fn: Callable[[], T], on_fallback: Callable[[str], None]) -> T:
        """``fn()``; if it fails inside the compiler while compiled, the failing module's kind (or,
        when the failing module is unknown, every module) goes back to eager and ``fn()`` runs
        again: a compiler bug in a head or a loss does not cost the backbone its compilation."""
        for _ in range(len(self.modules) + 1):  # each fall-back switches at least one module off
            if not self.active:
                return fn()
            if self.mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs: a new step; earlier outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - only compiler errors are handled; the rest re-raised
                if not is_compiler_error(e):
                    raise
                culprit = self.culprit(e)
                on_fallback(self.to_eager(e) if culprit is None else self.to_eager_partly(e, culprit))
        return fn()
