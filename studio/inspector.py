"""The parameter inspector: forms generated from the JSON schema of the config.

Every setting of ``RunConfig`` (sections data, model, aug, optim, train, eval)
and of the selected method's ``Params`` gets an editor chosen from its JSON
schema, so a new config field needs no new widget:

==========================  =================================================
schema                      editor
==========================  =================================================
integer / number (ranges)   line edit; the range is in the tooltip
boolean                     check box (optional: combo auto / on / off)
enum (``Literal``)          combo box
fixed-length array (tuple)  a small row of line edits (pair / triple editor)
number or list of numbers   line edit: ``0.5`` or ``1.0, 0.1``
optional (``None``)         an "auto" check box next to the editor
anything else               line edit parsed as YAML
==========================  =================================================

Validation is immediate: after each edit the whole config is built through
``engine.config.validate_config``; every invalid value is shown in red with the
engine's reason (below the field; the first in a banner) and ``validity_changed(False,
reason)`` tells the window to disable Start. The method's own checks of the combination
(``engine.preflight``: MAE needs a ViT, SimCLR two views, crops no larger than the images)
follow a moment later from a background thread (``studio.setup_check``) and show the same
way, with links to the method's presets; ``check_now()`` finishes a pending one (Start). Values that differ from the
reference (the loaded preset / YAML, else the defaults) are marked with a dot and
a bold label. Live-tunable settings (``engine.config.live_keys``) carry a
lightning icon and stay editable while a run goes: committing one (Enter, focus
out, toggle) emits ``live_edit(key, value)``.

Presets (``engine.presets``) load from the combo at the top; the current setup
saves to / loads from YAML (the files ``ssl-train --config`` reads).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QPainter, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.config import RunConfig, condition_holds, config_errors, live_keys, load_yaml, validate_config
from engine.errors import ConfigError, UserError
from engine.methods import get_method
from engine.preflight import known_image_size
from engine.presets import list_presets, load_preset, preset_description, presets_by_method

from . import theme
from .setup_check import SetupCheck

# a preset sets a method and its recipe; where it does not name these, the user's choice stays
KEPT_BY_PRESETS = ("data.source", "data.cache_dir", "train.device")

SECTIONS: list[tuple[str, str]] = [
    ("params", "Method"),
    ("data", "Data"),
    ("model", "Backbone"),
    ("aug", "Augmentation"),
    ("optim", "Optimiser"),
    ("train", "Training"),
    ("eval", "Evaluation"),
]
MARK_W = 26  # the marker column: changed dot, live bolt
# settings owned by another control of the window (the device picker)
HIDDEN_KEYS = {"train.device"}


# ===================================================================== schema
@dataclass
class FieldSpec:
    """One editable setting, described by its JSON schema."""

    key: str                       # dotted config key, e.g. 'aug.global_crops.scale'
    section: str                   # first part of the key
    label: str                     # key without the section
    kind: str                      # int | float | bool | enum | tuple | perview | str | list | yaml
    optional: bool = False
    description: str = ""
    choices: list[Any] = field(default_factory=list)
    item_kinds: list[str] = field(default_factory=list)  # tuple / list items: int | float | str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: float | None = None
    exclusive_max: float | None = None
    applies_when: dict[str, list[str]] = field(default_factory=dict)  # engine.config.applies_when

    def range_text(self) -> str:
        lo = f"{_fmt(self.minimum)} ≤ " if self.minimum is not None else (
            f"{_fmt(self.exclusive_min)} < " if self.exclusive_min is not None else "")
        hi = f" ≤ {_fmt(self.maximum)}" if self.maximum is not None else (
            f" < {_fmt(self.exclusive_max)}" if self.exclusive_max is not None else "")
        return f"{lo}value{hi}" if (lo or hi) else ""


def _resolve(schema: dict, defs: dict) -> dict:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _scalar_kind(s: dict) -> str:
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(s.get("type", ""), "yaml")


def field_spec(key: str, prop: dict, defs: dict) -> FieldSpec:
    """The FieldSpec of one schema property."""
    section, _, label = key.partition(".")
    spec = FieldSpec(key=key, section=section, label=label or key, kind="yaml",
                     description=prop.get("description", ""), applies_when=dict(prop.get("applies_when", {})))
    core = prop
    variants = prop.get("anyOf")
    if variants:
        variants = [_resolve(v, defs) for v in variants]
        non_null = [v for v in variants if v.get("type") != "null"]
        spec.optional = len(non_null) < len(variants)
        if len(non_null) == 1:
            core = non_null[0]
        elif (any(v.get("type") in ("number", "integer") for v in non_null)
              and any(v.get("type") == "array" for v in non_null)):
            spec.kind = "perview"
            core = next(v for v in non_null if v.get("type") in ("number", "integer"))
            spec.item_kinds = ["float"]
            _ranges(spec, core)
            return spec
        else:
            return spec
    core = _resolve(core, defs)
    t = core.get("type")
    if "enum" in core:
        spec.kind, spec.choices = "enum", list(core["enum"])
    elif "const" in core:
        spec.kind, spec.choices = "enum", [core["const"]]
    elif t == "boolean":
        spec.kind = "bool"
    elif t == "integer":
        spec.kind = "int"
    elif t == "number":
        spec.kind = "float"
    elif t == "string":
        spec.kind = "str"
    elif t == "array" and "prefixItems" in core:
        spec.kind = "tuple"
        spec.item_kinds = [_scalar_kind(_resolve(i, defs)) for i in core["prefixItems"]]
    elif t == "array":
        spec.kind = "list"
        spec.item_kinds = [_scalar_kind(_resolve(core.get("items", {}), defs))]
    _ranges(spec, core)
    return spec


def _ranges(spec: FieldSpec, core: dict) -> None:
    spec.minimum = core.get("minimum")
    spec.maximum = core.get("maximum")
    spec.exclusive_min = core.get("exclusiveMinimum")
    spec.exclusive_max = core.get("exclusiveMaximum")


def fields_from_schema(schema: dict, prefix: str, defs: dict | None = None) -> list[FieldSpec]:
    """Flatten an object schema (nested sections included) into FieldSpecs with dotted keys."""
    defs = {**(defs or {}), **schema.get("$defs", {})}
    out: list[FieldSpec] = []
    for name, prop in schema.get("properties", {}).items():
        r = _resolve(prop, defs)
        key = f"{prefix}.{name}" if prefix else name
        if r.get("type") == "object" and "properties" in r:
            sub = fields_from_schema(r, key, defs)
            for s in sub:
                if not s.description and r.get("description"):
                    s.description = r["description"]
            out += sub
        else:
            out.append(field_spec(key, r, defs))
    return out


def config_fields(method: str) -> list[FieldSpec]:
    """All editable settings for ``method``: its Params first, then the RunConfig sections."""
    schema = RunConfig.model_json_schema()
    defs = schema.get("$defs", {})
    out = fields_from_schema(get_method(method).Params.model_json_schema(), "params")
    for section, _title in SECTIONS[1:]:
        prop = _resolve(schema["properties"][section], defs)
        out += fields_from_schema(prop, section, defs)
    return [f for f in out if f.key not in HIDDEN_KEYS]


# ---------------------------------------------------------------- dict helpers
def get_dotted(d: dict, key: str, default: Any = None) -> Any:
    cur: Any = d
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return f"{v:.1f}"
        return format(v, ".10g")
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0)
        except (TypeError, ValueError):
            return False
    return a == b


def _parse_scalar(text: str, kind: str) -> Any:
    t = text.strip()
    if kind == "int":
        try:
            return int(t)
        except ValueError:
            f = float(t)  # accept '1e3' and '64.0'
            if not f.is_integer():
                raise ValueError(f"'{t}' is not a whole number") from None
            return int(f)
    if kind == "float":
        return float(t)
    if kind == "str":
        return t
    return yaml.safe_load(t)


# ==================================================================== editors
class FieldEditor(QWidget):
    """Base of the editors: ``edited`` on every user change, ``committed`` when an edit is complete."""

    edited = Signal()
    committed = Signal()

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.lay = QHBoxLayout(self)
        self.lay.setContentsMargins(0, 0, 0, 0)
        self.lay.setSpacing(4)
        self.auto: QCheckBox | None = None
        self._last: Any = None  # last value set from outside, kept when the text is unchanged

    # -- to override
    def _set(self, value: Any) -> None: ...
    def _get(self) -> Any: ...
    def _set_enabled_inner(self, on: bool) -> None: ...
    def _prefill(self) -> None:
        """Leaving 'auto': put a starting value in an empty editor."""

    # -- common
    def add_auto(self) -> None:
        self.auto = QCheckBox("auto")
        self.auto.setToolTip("empty: the engine decides (see the help text)")
        self.auto.toggled.connect(self._auto_toggled)
        self.lay.addWidget(self.auto)

    def _auto_toggled(self, on: bool) -> None:
        self._set_enabled_inner(not on)
        if not on:
            self._prefill()
        self.edited.emit()
        self.committed.emit()

    def set_value(self, value: Any) -> None:
        self._last = copy.deepcopy(value)
        self.blockSignals(True)
        try:
            if self.auto is not None:
                self.auto.blockSignals(True)
                self.auto.setChecked(value is None)
                self.auto.blockSignals(False)
                self._set_enabled_inner(value is not None)
            if value is not None or self.auto is None:
                self._set(value)
        finally:
            self.blockSignals(False)

    def value(self) -> Any:
        """The edited value; raises ValueError with a reason when the text does not parse."""
        if self.auto is not None and self.auto.isChecked():
            return None
        return self._get()

    def set_invalid(self, invalid: bool) -> None:
        color = theme.pick(theme.ERROR_COLOR).name()
        sheet = f"QLineEdit, QComboBox {{ border: 1px solid {color}; }}" if invalid else ""
        if self.styleSheet() != sheet:
            self.setStyleSheet(sheet)


class LineEditor(FieldEditor):
    """Numbers, strings, comma lists and YAML values in one line edit."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(spec, parent)
        self.edit = QLineEdit()
        self.edit.setMinimumWidth(56)
        if spec.kind in ("int", "float"):
            self.edit.setAlignment(Qt.AlignmentFlag.AlignRight)
        if spec.kind == "perview":
            self.edit.setPlaceholderText("p  or  p1, p2, …")
        self.edit.textEdited.connect(lambda _t: self.edited.emit())
        self.edit.editingFinished.connect(self._finished)
        self.lay.addWidget(self.edit, 1)
        self._shown = ""
        if spec.optional:
            self.add_auto()

    def _finished(self) -> None:
        if self.edit.isModified():
            self.edit.setModified(False)
            self.committed.emit()

    def _set(self, value: Any) -> None:
        self._shown = _fmt(value)
        self.edit.setText(self._shown)
        self.edit.setModified(False)

    def _prefill(self) -> None:
        if not self.edit.text().strip():
            s = self.spec
            start = s.minimum if s.minimum is not None else (0 if s.kind in ("int", "float") else None)
            if start is not None:
                self.edit.setText(_fmt(int(start) if s.kind == "int" else start))

    def _set_enabled_inner(self, on: bool) -> None:
        self.edit.setEnabled(on)
        if not on:
            self.edit.setPlaceholderText("auto")
        elif self.spec.kind == "perview":
            self.edit.setPlaceholderText("p  or  p1, p2, …")

    def _get(self) -> Any:
        text = self.edit.text()
        if text == self._shown and self._last is not None:
            return copy.deepcopy(self._last)
        k = self.spec.kind
        if not text.strip():
            if k == "str" and not self.spec.optional:
                return ""
            raise ValueError("a value is required" + (" (or tick auto)" if self.spec.optional else ""))
        try:
            if k in ("int", "float", "str"):
                return _parse_scalar(text, k)
            if k in ("perview", "list"):
                parts = [p for p in re.split(r"[,\s]+", text.strip().strip("[]")) if p]
                item = self.spec.item_kinds[0] if self.spec.item_kinds else "yaml"
                vals = [_parse_scalar(p, "float" if item in ("float", "yaml") else item) for p in parts]
                if k == "perview" and len(vals) == 1:
                    return vals[0]
                return vals
            return yaml.safe_load(text)
        except (ValueError, yaml.YAMLError):
            what = {"int": "a whole number", "float": "a number"}.get(k, "a valid value")
            raise ValueError(f"'{text.strip()}' is not {what}") from None


class TupleEditor(FieldEditor):
    """Fixed-length arrays (pairs, triples): one small line edit per item."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(spec, parent)
        self.edits: list[QLineEdit] = []
        self._shown: list[str] = []
        for i, _k in enumerate(spec.item_kinds):
            e = QLineEdit()
            e.setMinimumWidth(42)
            e.setAlignment(Qt.AlignmentFlag.AlignRight)
            e.textEdited.connect(lambda _t: self.edited.emit())
            e.editingFinished.connect(lambda e=e: self._finished(e))
            self.edits.append(e)
            self.lay.addWidget(e, 1)
        if spec.optional:
            self.add_auto()

    def _finished(self, e: QLineEdit) -> None:
        if e.isModified():
            e.setModified(False)
            self.committed.emit()

    def _set(self, value: Any) -> None:
        vals = list(value or [])
        self._shown = []
        for i, e in enumerate(self.edits):
            t = _fmt(vals[i]) if i < len(vals) else ""
            self._shown.append(t)
            e.setText(t)
            e.setModified(False)

    def _set_enabled_inner(self, on: bool) -> None:
        for e in self.edits:
            e.setEnabled(on)

    def _get(self) -> Any:
        out = []
        last = list(self._last or [])
        for i, (e, k) in enumerate(zip(self.edits, self.spec.item_kinds)):
            text = e.text()
            if i < len(last) and i < len(self._shown) and text == self._shown[i]:
                out.append(last[i])
                continue
            try:
                out.append(_parse_scalar(text, k if k in ("int", "float", "str") else "float"))
            except ValueError:
                raise ValueError(f"item {i + 1}: '{text.strip()}' is not a number") from None
        return out


class BoolEditor(FieldEditor):
    """Check box; an optional bool is a combo auto / on / off."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(spec, parent)
        if spec.optional:
            self.combo: QComboBox | None = QComboBox()
            self.combo.addItems(["auto", "on", "off"])
            self.combo.activated.connect(lambda _i: (self.edited.emit(), self.committed.emit()))
            self.lay.addWidget(self.combo)
            self.check = None
        else:
            self.combo = None
            self.check = QCheckBox()
            self.check.toggled.connect(lambda _b: (self.edited.emit(), self.committed.emit()))
            self.lay.addWidget(self.check)
        self.lay.addStretch(1)

    def set_value(self, value: Any) -> None:
        self._last = value
        self.blockSignals(True)
        try:
            if self.combo is not None:
                self.combo.setCurrentIndex(0 if value is None else (1 if value else 2))
            else:
                self.check.blockSignals(True)
                self.check.setChecked(bool(value))
                self.check.blockSignals(False)
        finally:
            self.blockSignals(False)

    def value(self) -> Any:
        if self.combo is not None:
            return [None, True, False][self.combo.currentIndex()]
        return self.check.isChecked()


class EnumEditor(FieldEditor):
    """Combo box of the allowed values (``Literal`` fields)."""

    def __init__(self, spec: FieldSpec, parent: QWidget | None = None) -> None:
        super().__init__(spec, parent)
        self.combo = QComboBox()
        choices = list(spec.choices) + ([None] if spec.optional else [])
        for c in choices:
            self.combo.addItem("auto" if c is None else str(c), c)
        self.combo.activated.connect(lambda _i: (self.edited.emit(), self.committed.emit()))
        self.lay.addWidget(self.combo, 1)

    def set_value(self, value: Any) -> None:
        self._last = value
        i = self.combo.findData(value)
        if i < 0 and value is not None:  # a value outside the schema: show it anyway
            self.combo.addItem(str(value), value)
            i = self.combo.count() - 1
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(max(0, i))
        self.combo.blockSignals(False)

    def value(self) -> Any:
        return self.combo.currentData()


def make_editor(spec: FieldSpec) -> FieldEditor:
    if spec.kind == "bool":
        return BoolEditor(spec)
    if spec.kind == "enum":
        return EnumEditor(spec)
    if spec.kind == "tuple":
        return TupleEditor(spec)
    return LineEditor(spec)


# ======================================================================= rows
class _Row:
    """The widgets of one setting in the form."""

    def __init__(self, spec: FieldSpec, editor: FieldEditor, marker: QLabel, label: QLabel, error: QLabel):
        self.spec, self.editor, self.marker, self.label, self.error = spec, editor, marker, label, error
        self.live = False
        self.changed = False
        self.message = ""

    def widgets(self) -> list[QWidget]:
        return [self.marker, self.label, self.editor, self.error]


class _Section(QWidget):
    """A collapsible group of rows with a header button."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(True)
        self.header.setArrowType(Qt.ArrowType.DownArrow)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.header.setAutoRaise(True)
        f = QFont(self.header.font())
        f.setBold(True)
        self.header.setFont(f)
        self.body = QWidget()
        self.grid = QGridLayout(self.body)
        self.grid.setContentsMargins(6, 0, 2, 6)
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(3)
        self.grid.setColumnStretch(2, 1)
        self.grid.setColumnMinimumWidth(0, MARK_W)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.header)
        lay.addWidget(self.body)
        self.header.toggled.connect(self._toggle)
        self.rows: list[_Row] = []

    def _toggle(self, on: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)

    def add_row(self, row: _Row) -> None:
        r = len(self.rows) * 2
        self.grid.addWidget(row.marker, r, 0, Qt.AlignmentFlag.AlignVCenter)
        self.grid.addWidget(row.label, r, 1)
        self.grid.addWidget(row.editor, r, 2)
        self.grid.addWidget(row.error, r + 1, 1, 1, 2)
        self.rows.append(row)


# ================================================================== inspector
class ParameterInspector(QWidget):
    """Schema-generated settings of one run; the single source of the current setup.

    Signals:
        config_changed(object)        the validated RunConfig, or None while invalid
        validity_changed(bool, str)   ok, reason (empty when ok)
        method_changed(str)           the method changed (preset / YAML / set_method)
        live_edit(str, object)        a live-tunable value was committed during a run
        error(str)                    a preset / YAML could not be loaded or saved
    """

    config_changed = Signal(object)
    validity_changed = Signal(bool, str)
    method_changed = Signal(str)
    live_edit = Signal(str, object)
    error = Signal(str)
    message = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        defaults = RunConfig()
        self._values: dict[str, Any] = defaults.model_dump(mode="json")
        self._baseline: dict[str, Any] = copy.deepcopy(self._values)
        self._cfg: RunConfig | None = defaults
        self._error = ""  # shown: a value's error, else the method's refusal of the setup
        self._error_key: str | None = None
        self._value_error = ""  # the schema's reason (or an unparsable text)
        self._value_errors: dict[str, str] = {}  # every setting the schema refuses -> its reason
        self._setup_error = ""  # the method's reason (engine.preflight), as last checked
        self._setup = SetupCheck(self)
        self._setup.checked.connect(self._setup_checked)
        # side of the images a setup will train on, when known (the window adds loaded data)
        self.image_size_of: Callable[[RunConfig], int | None] = lambda cfg: known_image_size(cfg.data)
        self._parse_errors: dict[str, str] = {}
        self._rows: dict[str, _Row] = {}
        self._sections: dict[str, _Section] = {}
        self._live: set[str] = set(live_keys(defaults))
        self._running = False
        self._block_filter: list[str] | None = None
        self._text_filter = ""
        self._preset: str | None = None
        self._preset_methods: dict[str, list[str]] | None = None  # method -> its presets
        # injectable file dialogs (tests): () -> path or ""
        self.open_file_dialog: Callable[[], str] = self._ask_open
        self.save_file_dialog: Callable[[], str] = self._ask_save
        self._build_ui()
        self._build_form()
        self._revalidate()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("Load a named preset (assets/presets)")
        self.preset_combo.addItem("Preset…", None)
        for name in list_presets():
            self.preset_combo.addItem(name, name)
            try:
                desc = preset_description(name)
            except UserError:
                desc = ""
            self.preset_combo.setItemData(self.preset_combo.count() - 1, desc, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.activated.connect(self._preset_activated)
        self.open_btn = QToolButton(text="Open…", toolTip="Load a YAML config (ssl-train --config format)")
        self.save_btn = QToolButton(text="Save…", toolTip="Save the current setup as YAML")
        self.reset_btn = QToolButton(text="Reset", toolTip="Back to the preset / loaded values")
        self.open_btn.clicked.connect(self._open_clicked)
        self.save_btn.clicked.connect(self._save_clicked)
        self.reset_btn.clicked.connect(self.reset_to_baseline)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.preset_combo, 1)
        for b in (self.open_btn, self.save_btn, self.reset_btn):
            top.addWidget(b)

        self.search = QLineEdit(placeholderText="Search settings…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._search_changed)

        self.filter_bar = QFrame()
        self.filter_bar.setFrameShape(QFrame.Shape.StyledPanel)
        fl = QHBoxLayout(self.filter_bar)
        fl.setContentsMargins(6, 2, 2, 2)
        self.filter_label = QLabel()
        self.filter_clear = QToolButton(text="Show all")
        self.filter_clear.clicked.connect(lambda: self.set_block_filter(None))
        fl.addWidget(self.filter_label, 1)
        fl.addWidget(self.filter_clear)
        self.filter_bar.hide()

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                            | Qt.TextInteractionFlag.LinksAccessibleByMouse)
        self.banner.linkActivated.connect(self._banner_link)
        self.banner.hide()

        self.form = QWidget()
        self.form_lay = QVBoxLayout(self.form)
        self.form_lay.setContentsMargins(0, 0, 0, 0)
        self.form_lay.setSpacing(2)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.form)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self._update_legend()

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addWidget(self.search)
        lay.addWidget(self.filter_bar)
        lay.addWidget(self.banner)
        lay.addWidget(self.scroll, 1)
        lay.addWidget(self.legend)
        self.setMinimumWidth(330)

    def _update_legend(self) -> None:
        live = theme.pick(theme.LIVE_COLOR).name()
        changed = theme.pick(theme.CHANGED_COLOR).name()
        self.legend.setText(
            f"<small><span style='color:{changed}'>●</span> changed &nbsp; "
            f"<span style='color:{live}'>⚡</span> live: editable while a run goes "
            f"(Enter applies)</small>")

    def _build_form(self) -> None:
        """(Re)build all rows for the current method; values come from ``self._values``."""
        self.scroll.setUpdatesEnabled(False)
        try:
            for sec in self._sections.values():
                sec.setParent(None)
                sec.deleteLater()
            self._sections.clear()
            self._rows.clear()
            while self.form_lay.count():
                item = self.form_lay.takeAt(0)
                if item.widget():
                    item.widget().deleteLater()
            method = self._values.get("method", "simclr")
            specs = config_fields(method)
            for section, title in SECTIONS:
                sec_specs = [s for s in specs if s.section == section]
                if not sec_specs:
                    continue
                sec = _Section(f"{title}: {method}" if section == "params" else title)
                for spec in sec_specs:
                    sec.add_row(self._make_row(spec))
                self._sections[section] = sec
                self.form_lay.addWidget(sec)
            self.form_lay.addStretch(1)
            # one label column width for every section, so the editors line up
            bold = QFont(self.font())
            bold.setBold(True)
            from PySide6.QtGui import QFontMetrics

            fm = QFontMetrics(bold)
            width = max((fm.horizontalAdvance(r.spec.label) for r in self._rows.values()), default=80) + 8
            for sec in self._sections.values():
                sec.grid.setColumnMinimumWidth(1, min(width, 170))
        finally:
            self.scroll.setUpdatesEnabled(True)
        self._apply_row_states()
        self._apply_filters()

    def _make_row(self, spec: FieldSpec) -> _Row:
        editor = make_editor(spec)
        editor.set_value(get_dotted(self._values, spec.key))
        marker = QLabel()
        marker.setFixedWidth(MARK_W)
        label = QLabel(spec.label)
        label.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        label.customContextMenuRequested.connect(lambda pos, k=spec.key, lab=label: self._row_menu(k, lab, pos))
        error = QLabel()
        error.setWordWrap(True)
        error.hide()
        row = _Row(spec, editor, marker, label, error)
        self._rows[spec.key] = row
        editor.edited.connect(lambda k=spec.key: self._on_edited(k))
        editor.committed.connect(lambda k=spec.key: self._on_committed(k))
        return row

    def _row_tooltip(self, row: _Row) -> str:
        s = row.spec
        parts = [f"<b>{s.key}</b>"]
        if s.description:
            parts.append(s.description)
        rng = s.range_text()
        if rng:
            parts.append(f"range: {rng}")
        if s.kind == "enum":
            parts.append("choices: " + ", ".join(str(c) for c in s.choices))
        base = get_dotted(self._baseline, s.key)
        parts.append(f"reference value: {_fmt(base) if base is not None else 'auto'}")
        if row.live:
            parts.append("<i>live: can change while a run goes (applied before the next step)</i>")
        if not self.applies(s.key):
            parts.append("<i>not used with the current setup: applies when "
                         + _html(self.applies_text(s.key)) + "</i>")
        return "<br>".join(parts)

    def applies(self, key: str) -> bool:
        """Whether a setting is used with the current values (its schema's ``applies_when``)."""
        row = self._rows.get(key)
        if row is None:
            return True
        return all(condition_holds(get_dotted(self._values, k), pats) for k, pats in row.spec.applies_when.items())

    def applies_text(self, key: str) -> str:
        conds = self._rows[key].spec.applies_when
        return " and ".join(f"{k} is " + " or ".join(p.replace("!", "not ") for p in pats)
                            for k, pats in conds.items())

    # -------------------------------------------------------- editing flow
    def _on_edited(self, key: str) -> None:
        row = self._rows[key]
        try:
            value = row.editor.value()
        except ValueError as e:
            self._parse_errors[key] = str(e)
        else:
            self._parse_errors.pop(key, None)
            set_dotted(self._values, key, value)
        self._revalidate()

    def _on_committed(self, key: str) -> None:
        row = self._rows[key]
        if not (self._running and row.live):
            return
        try:
            value = row.editor.value()
        except ValueError as e:
            self.set_field_error(key, str(e))
            return
        if self._error_key == key:  # the engine already refused it: the reason is on the field
            return
        self.live_edit.emit(key, value)

    def confirm_live_value(self, key: str, value: Any) -> None:
        """The run accepted a live change: it becomes part of the current setup."""
        set_dotted(self._values, key, value)
        self._parse_errors.pop(key, None)
        row = self._rows.get(key)
        if row is not None:
            row.editor.set_value(value)
        self._revalidate()

    def set_field_error(self, key: str, message: str) -> None:
        """Show ``message`` on a field (e.g. a live change the run refused)."""
        row = self._rows.get(key)
        if row is None:
            self.error.emit(message)
            return
        self._show_row_error(row, message)

    def _show_row_error(self, row: _Row, message: str) -> None:
        row.message = message
        color = theme.pick(theme.ERROR_COLOR).name()
        row.error.setText(f"<small style='color:{color}'>{_html(message)}</small>")
        row.error.setVisible(bool(message) and self._row_visible(row))
        row.editor.set_invalid(bool(message))

    def _revalidate(self) -> None:
        """Build the config through the engine; update errors, marks and listeners.

        Each value is checked here at once (the schema); the method's checks of the combination
        follow from ``self._setup`` (off the GUI thread) and update the same error display."""
        cfg: RunConfig | None = None
        msg = ""
        if self._parse_errors:
            key, why = next(iter(self._parse_errors.items()))
            msg = f"invalid value for '{key}': {why}"
        else:
            try:
                cfg = validate_config(copy.deepcopy(self._values))
            except ConfigError as e:
                msg = str(e)
            except Exception as e:  # noqa: BLE001 - a method's validator raising something odd
                msg = f"{type(e).__name__}: {e}"
        # every invalid setting gets its own reason (the banner names the first)
        others: dict[str, str] = {}
        if msg and not self._parse_errors:
            for line in config_errors(copy.deepcopy(self._values)):
                key = self._key_of_error(line)
                if key is not None:
                    others.setdefault(key, line)
        self._cfg, self._value_error, self._value_errors = cfg, msg, others
        if cfg is not None:
            self._live = set(live_keys(cfg))
            if not self._running and self._setup.request(cfg, self.image_size_of(cfg)):
                self._setup_error = self._setup.problem
        self._show_validity()
        self.config_changed.emit(cfg)

    def _setup_checked(self) -> None:
        """The method's answer for the newest setup arrived (``SetupCheck.checked``)."""
        if self._setup.problem != self._setup_error:
            self._setup_error = self._setup.problem
            self._show_validity()

    def _show_validity(self) -> None:
        """Errors on the fields and in the banner; ``validity_changed`` for the window's Start."""
        msg = self._value_error or ("" if self._cfg is None or self._running else self._setup_error)
        if self._parse_errors:
            key = next(iter(self._parse_errors))
        else:
            key = self._key_of_error(msg) if msg else None
        self._error, self._error_key = msg, key
        self._apply_row_states()
        if msg:
            color = theme.pick(theme.ERROR_COLOR).name()
            more = len(set(self._parse_errors) | set(self._value_errors) | {key}) - 1
            text = f"<span style='color:{color}'>⚠ {_html(msg)}</span>"
            if more > 0:
                text += f"<br><small>and {more} more invalid setting{'s' if more > 1 else ''} (in red below)</small>"
            if not self._value_error:  # the method refuses the combination: offer its own recipes
                links = ", ".join(f"<a href='preset:{n}'>{n}</a>" for n in self.presets_of(self.method()))
                if links:
                    text += f"<br><small>or start from a preset of {_html(self.method())}: {links}</small>"
            self.banner.setText(text)
            self.banner.show()
        else:
            self.banner.hide()
        self.validity_changed.emit(self.is_valid(), msg)

    def recheck(self) -> None:
        """Check the setup again (the images' size became known: the data finished loading)."""
        if self._cfg is not None and not self._running:
            if self._setup.request(self._cfg, self.image_size_of(self._cfg)):
                self._setup_checked()

    def shutdown(self) -> None:
        """The window closes: no new setup check, the running one ends."""
        self._setup.cancel()
        self._setup.wait()

    def check_now(self) -> bool:
        """Finish the method's check of the current setup now (Start); True when it can run."""
        if self._cfg is not None and not self._running and self._setup.pending():
            self._setup.check_now()
            self._setup_checked()
        return self.is_valid()

    def _key_of_error(self, msg: str) -> str | None:
        """The setting an engine message is about: a quoted location ('optim.lr'), else the
        first setting it names (\"set aug.global_crops.count to 2\", \"(model.arch vit_*)\")."""
        candidates = re.findall(r"'([^']+)'", msg) + re.findall(r"\b[a-z_]+(?:\.[a-z0-9_]+)+", msg)
        for loc in candidates:
            best = None
            for k in self._rows:
                if loc == k or loc.startswith(k + "."):
                    if best is None or len(k) > len(best):
                        best = k
            if best is not None:
                return best
        return None

    def _apply_row_states(self) -> None:
        bold = QFont(self.font())
        bold.setBold(True)
        normal = QFont(self.font())
        marks = _marker_pixmaps()
        for key, row in self._rows.items():
            row.live = key in self._live
            row.changed = not _same(get_dotted(self._values, key), get_dotted(self._baseline, key))
            row.label.setFont(bold if row.changed else normal)
            row.marker.setPixmap(marks[(row.changed, row.live)])
            tip = self._row_tooltip(row)
            for w in (row.label, row.editor, row.marker):
                w.setToolTip(tip)
            err = (self._parse_errors.get(key) or (self._error if key == self._error_key else "")
                   or self._value_errors.get(key, ""))
            self._show_row_error(row, err)
            used = self.applies(key)  # greyed out, still editable in YAML, when the setup ignores it
            row.editor.setEnabled((not self._running or row.live) and used)
            row.label.setEnabled((not self._running or row.live) and used)

    # ----------------------------------------------------------- filtering
    def set_block_filter(self, keys: list[str] | None, title: str = "") -> None:
        """Show only ``keys`` (a diagram block's params); None shows everything."""
        self._block_filter = list(keys) if keys is not None else None
        if keys is None:
            self.filter_bar.hide()
        else:
            self.filter_label.setText(f"Settings of <b>{_html(title)}</b> ({len(keys)})")
            self.filter_bar.show()
        self._apply_filters()

    def _search_changed(self, text: str) -> None:
        self._text_filter = text.strip().lower()
        self._apply_filters()

    def _row_visible(self, row: _Row) -> bool:
        if self._block_filter is not None and not any(
                row.spec.key == k or row.spec.key.startswith(k + ".") for k in self._block_filter):
            return False
        if self._text_filter and self._text_filter not in (row.spec.key + " " + row.spec.description).lower():
            return False
        return True

    def _apply_filters(self) -> None:
        for sec in self._sections.values():
            any_visible = False
            for row in sec.rows:
                vis = self._row_visible(row)
                for w in (row.marker, row.label, row.editor):
                    w.setVisible(vis)
                row.error.setVisible(vis and bool(row.message))
                any_visible |= vis
            sec.setVisible(any_visible)

    def visible_keys(self) -> list[str]:
        return [k for k, r in self._rows.items() if self._row_visible(r)]

    # ------------------------------------------------------------- context
    def _row_menu(self, key: str, label: QLabel, pos) -> None:
        menu = QMenu(self)
        reset = menu.addAction("Reset to reference value")
        reset.setEnabled(self._rows[key].changed and not self._running)
        copy_key = menu.addAction(f"Copy key '{key}'")
        act = menu.exec(label.mapToGlobal(pos))
        if act is reset:
            self.set_value(key, get_dotted(self._baseline, key))
        elif act is copy_key:
            from PySide6.QtGui import QGuiApplication

            QGuiApplication.clipboard().setText(key)

    # ------------------------------------------------------------------ API
    def config(self) -> RunConfig | None:
        """The validated config of the current setup (None while a value is invalid)."""
        return self._cfg

    def error_text(self) -> str:
        return self._error

    def is_valid(self) -> bool:
        """The values pass the schema and the method accepts them (as last checked)."""
        return self._cfg is not None and not (self._setup_error and not self._running)

    def raw_config(self) -> dict[str, Any]:
        """The current values as a plain dict (what YAML files hold)."""
        return copy.deepcopy(self._values)

    def method(self) -> str:
        return str(self._values.get("method", "simclr"))

    def current_preset(self) -> str | None:
        return self._preset

    def value(self, key: str) -> Any:
        return copy.deepcopy(get_dotted(self._values, key))

    def editor(self, key: str) -> FieldEditor | None:
        row = self._rows.get(key)
        return row.editor if row is not None else None

    def keys(self) -> list[str]:
        return list(self._rows)

    def live_keys(self) -> set[str]:
        return set(self._live)

    def changed_keys(self) -> set[str]:
        return {k for k, r in self._rows.items() if r.changed} | (
            {"train.device"} if not _same(get_dotted(self._values, "train.device"),
                                          get_dotted(self._baseline, "train.device")) else set())

    def set_value(self, key: str, value: Any) -> None:
        """Set one setting programmatically (as if typed), then validate."""
        set_dotted(self._values, key, copy.deepcopy(value))
        self._parse_errors.pop(key, None)
        row = self._rows.get(key)
        if row is not None:
            row.editor.set_value(value)
        self._revalidate()

    def set_text(self, key: str, text: str) -> None:
        """Type ``text`` into a line editor (tests, scripted use) and commit it."""
        ed = self._rows[key].editor
        if isinstance(ed, LineEditor):
            ed.edit.setText(text)
            ed.edit.setModified(True)
            self._on_edited(key)
            ed._finished()
        else:
            raise TypeError(f"'{key}' is not edited as text")

    def set_method(self, name: str) -> None:
        """Switch to method ``name``: its Params take their defaults; other sections stay."""
        if name == self.method():
            return
        cls = get_method(name)
        params = cls.Params().model_dump(mode="json")
        self._values["method"] = name
        self._values["params"] = params
        self._preset = None  # a preset names its method: it no longer describes the setup
        self.preset_combo.setCurrentIndex(0)
        self._baseline["method"] = name
        self._baseline["params"] = copy.deepcopy(params)
        # the rebuilt form shows every field's last valid value: an unparsable text typed before
        # the switch is dropped with its error (it would stay hidden behind the shown value)
        self._parse_errors = {}
        self._build_form()
        self._revalidate()
        self.method_changed.emit(name)

    def load_config(self, raw: dict[str, Any], preset: str | None = None) -> RunConfig:
        """Load a full setup (preset, YAML, a run's config); it becomes the reference for change marks.

        Raises ConfigError when ``raw`` is not a valid config (nothing changes then).
        """
        cfg = validate_config(copy.deepcopy(raw))
        old_method = self.method()
        self._values = cfg.model_dump(mode="json")
        self._baseline = copy.deepcopy(self._values)
        self._parse_errors.clear()
        self._preset = preset
        i = self.preset_combo.findData(preset) if preset else 0
        self.preset_combo.setCurrentIndex(max(0, i))
        self._build_form()
        self._revalidate()
        if cfg.method != old_method:
            self.method_changed.emit(cfg.method)
        return cfg

    def load_preset(self, name: str) -> RunConfig:
        """Load a preset: its method and recipe; the dataset and device chosen stay unless it names them."""
        raw = load_preset(name)
        for key in KEPT_BY_PRESETS:
            section, field_name = key.split(".")
            if isinstance(raw.setdefault(section, {}), dict) and field_name not in raw[section]:
                raw[section][field_name] = copy.deepcopy(get_dotted(self._values, key))
        return self.load_config(raw, preset=name)

    def presets_of(self, method: str) -> list[str]:
        """The presets that set up ``method`` (offered when the method refuses the setup)."""
        if self._preset_methods is None:
            self._preset_methods = presets_by_method()  # read once
        return self._preset_methods.get(method, [])

    def load_yaml_file(self, path: str) -> RunConfig:
        return self.load_config(load_yaml(path))

    def save_yaml_file(self, path: str) -> None:
        cfg = self.config()
        if cfg is None:
            raise ConfigError(f"the setup is not valid, fix it before saving: {self._error}")
        cfg.save(path)

    def reset_to_baseline(self) -> None:
        """Drop every edit since the last preset / YAML / method change."""
        old_method = self.method()
        self._values = copy.deepcopy(self._baseline)
        self._parse_errors.clear()
        if self._values.get("method") != old_method:
            self._build_form()
        else:
            for key, row in self._rows.items():
                row.editor.set_value(get_dotted(self._values, key))
        self._revalidate()

    def set_running(self, running: bool) -> None:
        """During a run only live-tunable settings stay editable (their commits emit ``live_edit``)."""
        self._running = running
        for w in (self.preset_combo, self.open_btn, self.reset_btn):
            w.setEnabled(not running)
        if running:
            self._setup.cancel()  # the run checks its own setup; edits now are live changes
        else:
            self.recheck()
        self._show_validity()
        self._apply_filters()

    # --------------------------------------------------------- file dialogs
    def _ask_open(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self, "Open config", "", "YAML config (*.yaml *.yml);;All files (*)")
        return path

    def _ask_save(self) -> str:
        path, _ = QFileDialog.getSaveFileName(self, "Save config", f"{self.method()}.yaml",
                                              "YAML config (*.yaml *.yml)")
        return path

    def _open_clicked(self) -> None:
        path = self.open_file_dialog()
        if not path:
            return
        try:
            self.load_yaml_file(path)
            self.message.emit(f"loaded {path}")
        except UserError as e:
            self.error.emit(str(e))

    def _save_clicked(self) -> None:
        path = self.save_file_dialog()
        if not path:
            return
        try:
            self.save_yaml_file(path)
            self.message.emit(f"saved {path}")
        except (UserError, OSError) as e:
            self.error.emit(str(e))

    def _banner_link(self, href: str) -> None:
        if href.startswith("preset:"):
            self._load_preset_reporting(href.split(":", 1)[1])

    def _preset_activated(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        if name:
            self._load_preset_reporting(name)

    def _load_preset_reporting(self, name: str) -> None:
        try:
            self.load_preset(name)
            self.message.emit(f"preset {name}: {preset_description(name)}")
        except UserError as e:
            self.error.emit(str(e))

    def changeEvent(self, event) -> None:  # noqa: N802 - re-colour marks with the scheme
        super().changeEvent(event)
        if event.type() == event.Type.PaletteChange and self._rows:
            self._update_legend()
            self._apply_row_states()


_MARKS: dict[bool, dict[tuple[bool, bool], QPixmap]] = {}


def _marker_pixmaps() -> dict[tuple[bool, bool], QPixmap]:
    """(changed, live) -> the marker picture: an orange dot and / or a lightning bolt (cached per scheme)."""
    cached = _MARKS.get(theme.is_dark())
    if cached is None:
        cached = _MARKS[theme.is_dark()] = _draw_markers()
    return cached


def _draw_markers() -> dict[tuple[bool, bool], QPixmap]:
    dot = theme.dot_icon(theme.pick(theme.CHANGED_COLOR), 10).pixmap(10, 10)
    bolt = theme.live_icon(14).pixmap(14, 14)
    out = {}
    for changed in (False, True):
        for live in (False, True):
            pm = QPixmap(MARK_W, 16)
            pm.fill(Qt.GlobalColor.transparent)
            p = QPainter(pm)
            if changed:
                p.drawPixmap(1, 3, dot)
            if live:
                p.drawPixmap(12, 1, bolt)
            p.end()
            out[(changed, live)] = pm
    return out


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
