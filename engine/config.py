"""Typed, validated run configuration: the one place where every setting lives.

`RunConfig` is a pydantic model. Its JSON schema (ranges in ``ge``/``le``, help
text in ``description``) is what the studio turns into parameter forms, so a new
setting needs a field here (or in a method's ``Params``) and no new widget.

Method-specific settings live in each method's own ``Params`` model (one file per
method) and are validated here through the registry; ``RunConfig.params`` holds
the resolved dict.

Loading: YAML with ``yaml.safe_load``; overrides ``key.sub=value`` (values are
parsed as YAML scalars). Saving writes a temporary file and renames it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .fileio import atomic_write_text


class Strict(BaseModel):
    """Base for all config sections: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def applies_when(**conditions: list[str]) -> dict:
    """Schema hint for forms: the setting is used only when every named setting (``__`` for a
    dot: ``model__arch``) matches one of the patterns: exact, ``prefix*``, or ``!value`` (any
    other value). The studio greys the field out otherwise; validation is unaffected."""
    return {"applies_when": {k.replace("__", "."): list(v) for k, v in conditions.items()}}


def condition_holds(value, patterns: list[str]) -> bool:
    """Whether a setting's value matches one of :func:`applies_when`'s patterns."""
    text = "" if value is None else str(value).strip().lower()
    for pat in patterns:
        pat = pat.lower()
        if pat.startswith("!"):
            if text != pat[1:]:
                return True
        elif pat.endswith("*"):
            if text.startswith(pat[:-1]):
                return True
        elif text == pat:
            return True
    return False


_SHAPES = applies_when(data__source=["shapes"])
_FILES = applies_when(data__source=["!shapes"])
_TRANSFORMER = applies_when(model__arch=["vit*", "swin*"])

# --------------------------------------------------------------------------- data
class DataConfig(Strict):
    source: str = Field(
        "shapes",
        description="'shapes' (embedded procedural dataset), a folder of images "
        "(class sub-folders or flat), or a .tar.gz of such a folder.",
    )
    image_size: int | None = Field(
        None, ge=8, le=1024,
        description="Side of the cached square images in pixels; empty keeps the native size "
        "(images of mixed sizes are resized on the short side and centre-cropped).",
    )
    shapes_train: int = Field(2000, ge=10, le=1_000_000, description="shapes: training images.",
                              json_schema_extra=_SHAPES)
    shapes_test: int = Field(500, ge=10, le=1_000_000, description="shapes: evaluation images.",
                             json_schema_extra=_SHAPES)
    shapes_size: int = Field(64, ge=16, le=512, description="shapes: image side in pixels.",
                             json_schema_extra=_SHAPES)
    seed: int = Field(0, ge=0, description="Seed of the shapes generator and of the split of unsplit folders.")
    test_fraction: float = Field(
        0.1, ge=0.0, le=0.5,
        description="Fraction held out for evaluation when the source has no train/test split.",
        json_schema_extra=_FILES,
    )
    cache_dir: str | None = Field(
        None,
        description="Folder for the decoded uint8 cache (.npy memmap keyed by the source); "
        "empty keeps the cache in memory only.",
        json_schema_extra=_FILES,
    )
    workers: int = Field(0, ge=0, le=256, description="Decoding processes (0: one per CPU core).",
                         json_schema_extra=_FILES)
    on_device: bool = Field(
        True, description="Keep the uint8 cache on the training device (GPU) when it fits."
    )

    @field_validator("source", "cache_dir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        """Paths are kept absolute, so a run resumes, evaluates and exports from any folder
        (a relative --data was saved as typed and could not be found from elsewhere)."""
        if v is None or not v.strip() or v.strip().lower() == "shapes":
            return v
        return os.path.abspath(os.path.expanduser(v.strip()))


# ------------------------------------------------------------------ augmentation
class CropConfig(Strict):
    count: int = Field(2, ge=0, le=16, description="Number of crops of this kind per image.")
    size: int | None = Field(
        None, ge=8, le=1024, description="Output side in pixels; empty: the dataset's image size."
    )
    scale: tuple[float, float] = Field(
        (0.08, 1.0), description="Random-resized-crop area range, as fractions of the image."
    )

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError("scale must satisfy 0 < min <= max <= 1")
        return v


PerView = float | list[float]


class AugConfig(Strict):
    global_crops: CropConfig = Field(default_factory=CropConfig, description="Global views (teacher and student).")
    local_crops: CropConfig = Field(
        default_factory=lambda: CropConfig(count=0, size=32, scale=(0.05, 0.4)),
        description="Small local views (multi-crop); count 0 disables them.",
    )
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="Crop aspect-ratio range.")
    hflip_p: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    jitter_p: float = Field(0.8, ge=0, le=1, description="Probability of colour jitter.")
    brightness: float = Field(0.4, ge=0, le=2, description="Colour jitter: brightness strength.")
    contrast: float = Field(0.4, ge=0, le=2, description="Colour jitter: contrast strength.")
    saturation: float = Field(0.4, ge=0, le=2, description="Colour jitter: saturation strength.")
    hue: float = Field(0.1, ge=0, le=0.5, description="Colour jitter: hue shift (fraction of a turn).")
    gray_p: float = Field(0.2, ge=0, le=1, description="Probability of converting to grayscale.")
    blur_p: PerView = Field(
        0.0, description="Gaussian blur probability; a list gives one value per global view "
        "(BYOL: [1.0, 0.1]). SimCLR leaves blur out on 32-96 px images."
    )
    blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="Blur sigma range in pixels of the crop (not scaled with the crop size, as in "
        "SimCLR's, BYOL's and DINO's code).")
    solarize_p: PerView = Field(0.0, description="Solarization probability; a list gives one value per global view.")
    local_blur_p: float | None = Field(
        None, ge=0, le=1, description="Blur probability of the local crops; empty: the first value of blur_p "
        "(DINO: 0.5 beside global [1.0, 0.1]).", json_schema_extra=applies_when(aug__local_crops__count=["!0"]))
    local_solarize_p: float | None = Field(
        None, ge=0, le=1, description="Solarization probability of the local crops; empty: the first value of "
        "solarize_p (DINO: 0).", json_schema_extra=applies_when(aug__local_crops__count=["!0"]))
    mean: tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="Normalisation mean.")
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="Normalisation std.")

    @field_validator("ratio", "blur_sigma")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"needs 0 < low <= high, got ({v[0]}, {v[1]})")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every std must be positive, got {v}")
        return v

    @field_validator("blur_p", "solarize_p")
    @classmethod
    def _prob(cls, v: PerView) -> PerView:
        vals = v if isinstance(v, list) else [v]
        if any(not (0.0 <= p <= 1.0) for p in vals):
            raise ValueError("probabilities must be within [0, 1]")
        return v


# -------------------------------------------------------------------- backbone
class ModelConfig(Strict):
    arch: str = Field(
        "resnet18",
        description="Backbone: resnet18, resnet50 (torchvision) or a timm ViT "
        "(vit_tiny, vit_small, vit_base, vit_large or a full timm name).",
    )
    cifar_stem: bool | None = Field(
        None, description="ResNet: 3x3 stride-1 first conv and no max-pool; empty: on for images <= 64 px.",
        json_schema_extra=applies_when(model__arch=["resnet*"]),
    )
    patch_size: int = Field(16, ge=2, le=32, description="ViT patch size in pixels (Swin: fixed by the model).",
                            json_schema_extra=applies_when(model__arch=["vit*"]))
    drop_path: float = Field(0.0, ge=0, le=0.9, description="ViT / Swin stochastic depth rate.",
                             json_schema_extra=_TRANSFORMER)
    num_heads: int | None = Field(
        None, ge=1, le=64, description="ViT attention heads; empty: the architecture's (vit_small: 6, as DeiT; "
        "MoCo v3's ViT-S has 12). Must divide the width.", json_schema_extra=applies_when(model__arch=["vit*"]))


# ------------------------------------------------------------------ optimiser
class OptimConfig(Strict):
    optimizer: Literal["sgd", "adamw", "lars"] = Field("lars", description="Optimiser (AdamW and SGD fused).")
    lr: float = Field(
        0.3, gt=0, le=100,
        description="Base learning rate; the peak LR is lr x batch_size / 256 when scale_lr is on "
        "(lr x sqrt(batch_size) with lr_scaling sqrt).",
    )
    scale_lr: bool = Field(True, description="Scale the LR with the batch size (lr_scaling).")
    lr_scaling: Literal["linear", "sqrt"] = Field(
        "linear", description="With scale_lr: linear: lr x batch_size / 256 (Goyal et al.; most methods); "
        "sqrt: lr x sqrt(batch_size) (SimCLR v2: 0.1 x sqrt(4096) = 6.4).",
        json_schema_extra=applies_when(optim__scale_lr=["true"]))
    min_lr: float = Field(0.0, ge=0, description="LR at the end of the cosine schedule (absolute).")
    warmup_epochs: float = Field(10.0, ge=0, description="Linear warmup length in epochs.")
    weight_decay: float = Field(1e-6, ge=0, le=1, description="Weight decay at the start.")
    weight_decay_end: float | None = Field(
        None, ge=0, le=1, description="Weight decay at the end (cosine); empty keeps it constant."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD / LARS momentum.",
                            json_schema_extra=applies_when(optim__optimizer=["sgd", "lars"]))
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.",
                                       json_schema_extra=applies_when(optim__optimizer=["adamw"]))
    lars_eta: float = Field(0.001, gt=0, le=1, description="LARS trust coefficient (0.001: You et al., SimCLR, BYOL, "
                            "Barlow Twins; solo-learn's CIFAR recipes use 0.02 with lars_clip).",
                            json_schema_extra=applies_when(optim__optimizer=["lars"]))
    lars_clip: bool = Field(
        False, description="solo-learn's clip_lr: a layer's step is plain SGD's at the scheduled LR or eta of "
        "its weight norm, whichever is smaller (unclipped: LR x eta of its norm). Its CIFAR BYOL and DINO "
        "recipes (eta 0.02) assume it.",
        json_schema_extra=applies_when(optim__optimizer=["lars"]))
    clip_grad: float = Field(0.0, ge=0, description="Clip the gradient norm to this value (0: off).")
    clip_mode: Literal["global", "per_param"] = Field(
        "global", description="global: one norm over all parameters; per_param: each parameter's "
        "own norm (DINO's clip_gradients)."
    )
    exclude_bias_norm: bool = Field(
        True, description="No weight decay (and no LARS adaptation) for biases and norm layers."
    )


# -------------------------------------------------------------------- training
class TrainConfig(Strict):
    epochs: float | None = Field(100, gt=0, description="Training length in epochs (ignored when steps is set).")
    steps: int | None = Field(None, ge=1, description="Training length in optimiser steps.")
    time_limit_s: float | None = Field(
        None, gt=0, description="Stop (cleanly, with a checkpoint) after this many seconds."
    )
    batch_size: int = Field(256, ge=2, le=65536, description="Images per step (before multi-view).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on the CPU."
    )
    channels_last: bool = Field(True, description="channels_last memory format on CUDA.")
    compile: bool = Field(
        False, description="torch.compile the method's modules (CUDA only; the first steps take longer while it "
        "compiles; a compiler failure falls back to eager with a warning).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode: reduce-overhead adds CUDA graphs (fewer kernel launches), "
        "max-autotune also searches kernel configurations (slower to start).",
        json_schema_extra=applies_when(train__compile=["true"]))
    seed: int = Field(0, ge=0, description="Seed of weights, data order and augmentation.")
    log_every: int = Field(10, ge=1, description="Read metrics back to the host every N steps.")
    eval_every: int = Field(
        0, ge=0, description="kNN / collapse evaluation every N steps (0: at each epoch end)."
    )
    ckpt_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: at each epoch end).")
    probe_every_s: float = Field(10.0, gt=0, description="Visual probes at most every N seconds.")


class EvalConfig(Strict):
    knn_k: int = Field(200, ge=1, description="kNN neighbours (capped by the memory bank size).")
    knn_t: float = Field(0.1, gt=0, description="kNN temperature for the weighted vote.")
    max_bank: int = Field(10000, ge=10, description="Training images in the kNN memory bank (subsampled).")
    max_queries: int = Field(2000, ge=10, description="Test images used as kNN queries (subsampled).")
    standardize: bool | None = Field(
        None,
        description="Standardise each feature dimension (mean 0, std 1 over the memory bank) before the kNN's "
        "L2 normalisation, as MAE's linear probe puts a BatchNorm without affine before its classifier; "
        "empty: the method's choice (on for masked image modelling, whose features have a few dimensions "
        "of very large variance).",
    )


# ----------------------------------------------------------------------- run
class RunConfig(Strict):
    method: str = Field("simclr", description="Method name (ssl-train --list-methods).")
    params: dict[str, Any] = Field(default_factory=dict, description="Method-specific settings.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    aug: AugConfig = Field(default_factory=AugConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _resolve_params(self) -> "RunConfig":
        from .methods import get_method  # late: methods import config

        cls = get_method(self.method)  # raises ConfigError for unknown names
        try:
            resolved = cls.Params(**self.params).model_dump(mode="json")
        except ValidationError as e:
            raise ValueError(_first_error(e, prefix="params")) from None
        # bypass validate_assignment recursion
        object.__setattr__(self, "params", resolved)
        return self

    # ------------------------------------------------------------ helpers
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_yaml())


# ===================================================================== helpers
def _first_error(e: ValidationError, prefix: str = "") -> str:
    return _error_line(e.errors()[0], prefix)


def _error_line(err: Any, prefix: str = "") -> str:
    """One pydantic error as the one-line message the CLI prints."""
    loc = ".".join(str(p) for p in err["loc"])
    if prefix:
        loc = f"{prefix}.{loc}" if loc else prefix
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if not loc:  # a whole-config check (e.g. the method's params): its message is complete
            return msg
    return f"invalid value for '{loc}': {msg} (got {err.get('input')!r})"


def validate_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw dict; raise ConfigError with one clear line on failure.

    A top-level ``description`` string (as in the preset files) is a comment and is ignored,
    so a preset file is also a valid ``--config`` file."""
    if isinstance(raw, dict) and isinstance(raw.get("description"), str):
        raw = {k: v for k, v in raw.items() if k != "description"}
    try:
        return RunConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_first_error(e)) from None
    except ConfigError:
        raise


def config_errors(raw: dict[str, Any]) -> list[str]:
    """Every problem of a raw config, one line each (what :func:`validate_config` raises for the
    first); empty when it is valid. The studio marks each invalid setting, not only the first.
    (The method's ``params`` are checked once the rest is valid.)"""
    if isinstance(raw, dict) and isinstance(raw.get("description"), str):
        raw = {k: v for k, v in raw.items() if k != "description"}
    try:
        RunConfig(**raw)
    except ValidationError as e:
        return [_error_line(err) for err in e.errors()]
    except ConfigError as e:
        return [str(e)]
    return []


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.1' -> (['optim', 'lr'], 0.1); values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. optim.lr=0.1)")
    key, val = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(val) if val.strip() else None
    except yaml.YAMLError:
        value = val
    return key.split("."), value


def set_in(d: dict[str, Any], path: list[str], value: Any) -> None:
    cur = d
    for p in path[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = {}
            cur[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{p}' is not a section")
        cur = nxt
    cur[path[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the
    last one silently: a setting typed twice is a mistake to report, not to guess)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key '{key}' appears twice in one mapping", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def safe_load_strict(text: str) -> Any:
    """``yaml.safe_load`` (no object construction) that also refuses duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give a .yaml file (e.g. a run's config.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = safe_load_strict(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"config file {p} cannot be read as UTF-8 text ({type(e).__name__}); "
                          "give a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    return data


def build_config(
    base: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    **direct: Any,
) -> RunConfig:
    """base dict (from YAML or preset) <- direct dotted settings <- --set overrides."""
    raw: dict[str, Any] = dict(base or {})
    raw = yaml.safe_load(yaml.safe_dump(raw))  or {}  # deep copy of plain data
    # the method's own params: when switching method, params of another method are dropped
    for key, value in direct.items():
        if value is not None:
            set_in(raw, key.split("."), value)
    for ov in overrides or []:
        path, value = parse_override(ov)
        set_in(raw, path, value)
    return validate_config(raw)


def total_steps(cfg: RunConfig, n_train: int) -> tuple[int, int]:
    """(total optimiser steps, steps per epoch) for a dataset of n_train images."""
    spe = max(1, n_train // cfg.train.batch_size)
    if cfg.train.steps is not None:
        return cfg.train.steps, spe
    return max(1, math.ceil((cfg.train.epochs or 1) * spe)), spe


def live_keys(cfg: RunConfig) -> list[str]:
    """Settings that may change during a run (the trainer applies them at the next step)."""
    from .methods import get_method

    return ["optim.lr", "optim.weight_decay", "optim.clip_grad"] + [
        f"params.{k}" for k in get_method(cfg.method).live_params
    ]
