"""The method library: every registered method, grouped by family.

Each entry shows the method's name in bold and its two-line summary below; the
paper is the entry's tooltip (with the summary). A filter field narrows the
list by name, family, summary or paper. Selecting an entry emits
``method_selected(name)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (
    QLineEdit,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.methods import get_method, list_methods

# display order of the families; others follow alphabetically
FAMILIES = ("contrastive", "self-distillation", "masked image modelling", "hybrid", "task-specific")

_NAME_ROLE = Qt.ItemDataRole.UserRole
_SUMMARY_ROLE = Qt.ItemDataRole.UserRole + 1
_PAPER_ROLE = Qt.ItemDataRole.UserRole + 2


@dataclass(frozen=True)
class MethodInfo:
    name: str
    family: str
    paper: str
    summary: str


def method_infos() -> list[MethodInfo]:
    """The registry's methods with their library metadata (methods that fail to import are skipped)."""
    out = []
    for name in list_methods():
        try:
            cls = get_method(name)
        except Exception:  # noqa: BLE001 - a broken method must not take the library down
            continue
        summary = " ".join(line.strip() for line in cls.summary.strip().splitlines())
        out.append(MethodInfo(name, cls.family or "other", cls.paper, summary))
    return out


def family_order(family: str) -> tuple[int, str]:
    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), family)


class _MethodDelegate(QStyledItemDelegate):
    """Method rows: bold name, then the summary lines in a smaller, dimmer font."""

    PAD = 4

    def _fonts(self, option: QStyleOptionViewItem) -> tuple[QFont, QFont]:
        bold = QFont(option.font)
        bold.setBold(True)
        small = QFont(option.font)
        small.setPointSizeF(max(6.0, option.font.pointSizeF() * 0.88))
        return bold, small

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        if index.data(_NAME_ROLE) is None:
            return super().sizeHint(option, index)
        bold, small = self._fonts(option)
        tree = self.parent()
        width = option.rect.width()
        if width <= 0 and tree is not None:
            width = tree.viewport().width() - tree.indentation()
        width = max(120, width)
        summary = index.data(_SUMMARY_ROLE) or ""
        fm = QFontMetrics(small)
        rect = fm.boundingRect(QRect(0, 0, width - 2 * self.PAD, 10_000), Qt.TextFlag.TextWordWrap, summary)
        return QSize(width, QFontMetrics(bold).height() + rect.height() + 3 * self.PAD)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        if index.data(_NAME_ROLE) is None:
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        text_name = opt.text
        opt.text = ""
        style = opt.widget.style() if opt.widget else None
        if style is not None:
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        bold, small = self._fonts(option)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        group = QPalette.ColorGroup.Normal if option.state & QStyle.StateFlag.State_Enabled \
            else QPalette.ColorGroup.Disabled
        fg = option.palette.color(group, QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        dim = QPalette(option.palette).color(group, QPalette.ColorRole.PlaceholderText)
        r = option.rect.adjusted(self.PAD, self.PAD, -self.PAD, -self.PAD)
        painter.save()
        painter.setFont(bold)
        painter.setPen(fg)
        h = QFontMetrics(bold).height()
        painter.drawText(QRect(r.left(), r.top(), r.width(), h), Qt.AlignmentFlag.AlignLeft, text_name)
        painter.setFont(small)
        painter.setPen(fg if selected else dim)
        painter.drawText(QRect(r.left(), r.top() + h + self.PAD // 2, r.width(), r.height() - h),
                         int(Qt.AlignmentFlag.AlignLeft) | int(Qt.TextFlag.TextWordWrap),
                         index.data(_SUMMARY_ROLE) or "")
        painter.restore()


class MethodLibrary(QWidget):
    """Tree of methods grouped by family; ``method_selected(name)`` on selection."""

    method_selected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter = QLineEdit(placeholderText="Filter methods…")
        self.filter.setClearButtonEnabled(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.tree.setRootIsDecorated(False)
        self.tree.setIndentation(10)
        self.tree.setUniformRowHeights(False)
        self.tree.setWordWrap(True)
        self.tree.setItemDelegate(_MethodDelegate(self.tree))
        self.tree.setVerticalScrollMode(QTreeWidget.ScrollMode.ScrollPerPixel)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.filter)
        lay.addWidget(self.tree)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._populate()
        self.filter.textChanged.connect(self._apply_filter)
        self.tree.currentItemChanged.connect(self._on_current)
        self.setMinimumWidth(220)

    def _populate(self) -> None:
        infos = method_infos()
        families = sorted({i.family for i in infos}, key=family_order)
        header_font = QFont(self.font())
        header_font.setBold(True)
        for fam in families:
            group = QTreeWidgetItem([fam.capitalize()])
            group.setFlags(Qt.ItemFlag.ItemIsEnabled)
            group.setFont(0, header_font)
            group.setData(0, Qt.ItemDataRole.UserRole + 3, fam)
            self.tree.addTopLevelItem(group)
            for info in sorted((i for i in infos if i.family == fam), key=lambda i: i.name):
                item = QTreeWidgetItem([info.name])
                item.setData(0, _NAME_ROLE, info.name)
                item.setData(0, _SUMMARY_ROLE, info.summary)
                item.setData(0, _PAPER_ROLE, info.paper)
                item.setToolTip(0, f"<b>{info.name}</b> ({info.family})<br><i>{info.paper}</i>"
                                   f"<br><br>{info.summary.replace(chr(10), ' ')}")
                group.addChild(item)
                self._items[info.name] = item
            group.setExpanded(True)

    # ----------------------------------------------------------------- API
    def methods(self) -> list[str]:
        return list(self._items)

    def current_method(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, _NAME_ROLE) if item is not None else None

    def select(self, name: str, emit: bool = True) -> bool:
        """Select ``name``; emits ``method_selected`` unless ``emit`` is False. False if unknown."""
        item = self._items.get(name)
        if item is None:
            return False
        if not emit:
            self.tree.blockSignals(True)
        try:
            self.tree.setCurrentItem(item)
            self.tree.scrollToItem(item)
        finally:
            if not emit:
                self.tree.blockSignals(False)
        return True

    # ------------------------------------------------------------ internals
    def _on_current(self, item: QTreeWidgetItem | None, _prev: QTreeWidgetItem | None) -> None:
        if item is not None and item.data(0, _NAME_ROLE):
            self.method_selected.emit(item.data(0, _NAME_ROLE))

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(i)
            fam = (group.data(0, Qt.ItemDataRole.UserRole + 3) or "").lower()
            any_visible = False
            for j in range(group.childCount()):
                it = group.child(j)
                hay = " ".join(str(it.data(0, r) or "") for r in (_NAME_ROLE, _SUMMARY_ROLE, _PAPER_ROLE)).lower()
                visible = not needle or needle in hay or needle in fam
                it.setHidden(not visible)
                any_visible |= visible
            group.setHidden(not any_visible)
        # word-wrapped rows need their heights recomputed after width / filter changes
        self.tree.doItemsLayout()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.tree.doItemsLayout()
