"""The component diagram of a method: blocks and arrows from ``Method.diagram()``.

Layout is layered left to right, computed from the edges (Sugiyama-style, small
graphs only): each block's layer is its longest path from a source (EMA edges,
which link parallel branches, and edges that would close a cycle are left out
of the layering), blocks within a layer are ordered by the barycentre of their
neighbours, then centred vertically.

Edges: ``solid`` (gradient flows), ``ema`` (dashed: an exponential moving
average copies weights) and ``stopgrad`` (a double bar across the arrow: no
gradient flows back); an edge label sits on the middle of its arrow.

Clicking a block emits ``block_selected(Block)``; clicking empty space emits
``block_selected(None)``. ``set_changed_keys`` marks blocks whose settings
differ from the preset / defaults with an orange dot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QPainter,
    QPainterPath,
    QPainterPathStroker,
    QPalette,
    QPen,
    QPolygonF,
)
from PySide6.QtWidgets import (
    QApplication,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QStyleOptionGraphicsItem,
    QWidget,
)

from engine.methods.base import Block, Diagram, Edge

from . import theme

H_GAP = 52.0   # between layers
V_GAP = 28.0   # between blocks of a layer
PAD_X, PAD_Y = 11.0, 9.0
MIN_W = 96.0
MIN_SCALE = 0.6  # the smallest zoom the view fits a diagram to (then it scrolls)
WRAP_AT = 18   # block labels longer than this (characters) break onto two lines


def wrap_label(label: str, width: int = WRAP_AT) -> list[str]:
    """A block label as one line, or two lines split at the space nearest the middle when it
    is longer than ``width`` characters (long one-line boxes make a linear diagram so wide
    that the view has to shrink all of it). A label without spaces stays on one line."""
    if len(label) <= width or " " not in label:
        return [label]
    paren = label.find(" (")
    if paren > 0 and max(paren, len(label) - paren - 1) <= width + 4:  # "(...)" on its own line
        return [label[:paren], label[paren + 1:]]
    spaces = [i for i, c in enumerate(label) if c == " " and label[i + 1:i + 2] not in ("+", "-", "/", "x")]
    spaces = spaces or [i for i, c in enumerate(label) if c == " "]  # a line may start with "+"
    cut = min(spaces, key=lambda i: max(i, len(label) - i - 1))
    return [label[:cut], label[cut + 1:]]


def key_matches(param: str, keys: set[str]) -> bool:
    """A block param matches a changed key when either is the other or a dotted prefix of it."""
    return any(k == param or k.startswith(param + ".") or param.startswith(k + ".") for k in keys)


# ----------------------------------------------------------------------- layout
DUMMY = "__via"  # prefix of the virtual nodes that carry long edges through a layer


@dataclass
class Layout:
    """Result of :func:`layered_layout`.

    pos:    node id -> (layer, position in layer); includes the virtual nodes
    chains: edge index -> virtual node ids, in order (edges that skip layers)
    """

    pos: dict[str, tuple[int, int]]
    chains: dict[int, list[str]]

    def rows(self) -> list[list[str]]:
        n = max((l for l, _ in self.pos.values()), default=-1) + 1
        return [[v for _, v in sorted((j, v) for v, (l, j) in self.pos.items() if l == i)] for i in range(n)]


def layered_layout(blocks: list[Block], edges: list[Edge]) -> Layout:
    """Layers left to right along the edges; long edges get virtual nodes in the layers they cross."""
    ids = [b.id for b in blocks]
    known = set(ids)
    flow = [(e.src, e.dst) for e in edges if e.src in known and e.dst in known and e.src != e.dst
            and e.style != "ema"]
    # drop edges that close a cycle (DFS in declaration order)
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in flow:
        succ[a].append(b)
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def dfs(n: str) -> None:
        state[n] = 1
        for m in succ[n]:
            if state.get(m) == 1:
                back.add((n, m))
            elif m not in state:
                dfs(m)
        state[n] = 2

    for n in ids:
        if n not in state:
            dfs(n)
    dag = [(a, b) for a, b in flow if (a, b) not in back]
    preds: dict[str, list[str]] = defaultdict(list)
    for a, b in dag:
        preds[b].append(a)
    layer: dict[str, int] = {}

    def depth(n: str) -> int:
        if n not in layer:
            layer[n] = 0  # guards recursion (no cycles remain)
            layer[n] = max((depth(q) + 1 for q in preds[n]), default=0)
        return layer[n]

    for n in ids:
        depth(n)
    # blocks linked only by EMA edges sit in the layer of their EMA partner
    for e in edges:
        if e.style == "ema" and e.src in known and e.dst in known and not preds[e.dst] and not succ[e.dst]:
            layer[e.dst] = layer[e.src]
    # virtual nodes for forward edges that skip layers
    chains: dict[int, list[str]] = {}
    links: list[tuple[str, str]] = []
    for i, e in enumerate(edges):
        if e.src not in known or e.dst not in known or e.src == e.dst:
            continue
        a, b = layer[e.src], layer[e.dst]
        if e.style != "ema" and b - a > 1:
            chain = [f"{DUMMY}{i}_{k}" for k in range(a + 1, b)]
            for k, v in zip(range(a + 1, b), chain):
                layer[v] = k
            chains[i] = chain
            path = [e.src, *chain, e.dst]
            links += list(zip(path, path[1:]))
        else:
            links.append((e.src, e.dst))
    n_layers = max(layer.values(), default=-1) + 1
    nodes = ids + [v for c in chains.values() for v in c]
    rows: list[list[str]] = [[n for n in nodes if layer[n] == i] for i in range(n_layers)]
    nbrs: dict[str, list[str]] = defaultdict(list)
    for a, b in links:
        nbrs[a].append(b)
        nbrs[b].append(a)
    # barycentre ordering, a few down / up sweeps
    for _ in range(4):
        for i in list(range(1, n_layers)) + list(range(n_layers - 2, -1, -1)):
            where = {n: j for row in rows for j, n in enumerate(row)}
            ref = {n for j in (i - 1, i + 1) if 0 <= j < n_layers for n in rows[j]}

            def bary(n: str, where=where, ref=ref) -> float:
                ns = [where[m] for m in nbrs[n] if m in ref]
                return sum(ns) / len(ns) if ns else where[n]

            rows[i].sort(key=bary)
    return Layout({n: (i, j) for i, row in enumerate(rows) for j, n in enumerate(row)}, chains)


# ------------------------------------------------------------------------ items
class BlockItem(QGraphicsRectItem):
    """A rounded box: label, kind, and a dot when one of its settings was changed."""

    def __init__(self, block: Block, font: QFont) -> None:
        super().__init__()
        self.block = block
        self.changed = False
        self.selected_for_filter = False
        self.font_label = QFont(font)
        self.font_label.setBold(True)
        self.font_kind = QFont(font)
        self.font_kind.setPointSizeF(max(6.0, font.pointSizeF() * 0.82))
        fl, fk = QFontMetricsF(self.font_label), QFontMetricsF(self.font_kind)
        self.lines = wrap_label(block.label)
        w = max(MIN_W, *(fl.horizontalAdvance(t) + 2 * PAD_X for t in self.lines),
                fk.horizontalAdvance(block.kind) + 2 * PAD_X)
        h = len(self.lines) * fl.height() + fk.height() + 2 * PAD_Y + 2
        self.setRect(QRectF(0, 0, w, h))
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable, True)
        self.setAcceptHoverEvents(True)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        tip = [f"<b>{block.label}</b> <i>({block.kind})</i>"]
        if block.note:
            tip.append(block.note)
        if block.params:
            tip.append("settings: " + ", ".join(block.params))
            tip.append("<i>click to show only these settings in the inspector</i>")
        self.setToolTip("<br>".join(tip))
        self._hover = False

    def hoverEnterEvent(self, event) -> None:  # noqa: N802
        self._hover = True
        self.update()

    def hoverLeaveEvent(self, event) -> None:  # noqa: N802
        self._hover = False
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        pal = QApplication.palette()
        r = self.rect()
        fill = QColor(theme.KIND_COLORS.get(self.block.kind, theme.KIND_COLORS["module"])[int(theme.is_dark())])
        border = pal.color(QPalette.ColorRole.WindowText)
        border.setAlpha(110)
        pen = QPen(border, 1.2)
        if self.isSelected():
            pen = QPen(pal.color(QPalette.ColorRole.Highlight), 2.6)
        elif self._hover:
            pen = QPen(pal.color(QPalette.ColorRole.Highlight), 1.6)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(pen)
        painter.setBrush(QBrush(fill))
        painter.drawRoundedRect(r, 8, 8)
        text = pal.color(QPalette.ColorRole.WindowText)
        painter.setPen(text)
        painter.setFont(self.font_label)
        fl = QFontMetricsF(self.font_label)
        for k, line in enumerate(self.lines):
            painter.drawText(QRectF(r.left(), r.top() + PAD_Y + k * fl.height(), r.width(), fl.height()),
                             Qt.AlignmentFlag.AlignHCenter, line)
        painter.setFont(self.font_kind)
        dim = QColor(text)
        dim.setAlpha(150)
        painter.setPen(dim)
        painter.drawText(QRectF(r.left(), r.top() + PAD_Y + len(self.lines) * fl.height() + 2, r.width(),
                                QFontMetricsF(self.font_kind).height()),
                         Qt.AlignmentFlag.AlignHCenter, self.block.kind)
        if self.changed:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.pick(theme.CHANGED_COLOR))
            painter.drawEllipse(QPointF(r.right() - 8, r.top() + 8), 4.5, 4.5)

    def anchor(self, side: str) -> QPointF:
        r = self.sceneBoundingRect()
        return {
            "right": QPointF(r.right(), r.center().y()),
            "left": QPointF(r.left(), r.center().y()),
            "top": QPointF(r.center().x(), r.top()),
            "bottom": QPointF(r.center().x(), r.bottom()),
        }[side]


class EdgeItem(QGraphicsPathItem):
    """An arrow between two blocks (solid, dashed EMA, or with a stop-gradient bar), with its label."""

    def __init__(self, edge: Edge, src: BlockItem, dst: BlockItem, offset: float, font: QFont,
                 via: list[tuple[QPointF, QPointF]] | None = None) -> None:
        super().__init__()
        self.edge = edge
        self.src, self.dst = src, dst
        self.offset = offset
        self.via = via or []  # (entry, exit) points of the layers the edge crosses
        self.font = QFont(font)
        self.font.setPointSizeF(max(6.0, font.pointSizeF() * 0.82))
        self.setZValue(-1)
        self.head = QPolygonF()
        self.bar: list[tuple[QPointF, QPointF]] = []
        self.label_pos: QPointF | None = None
        tips = {"ema": "EMA: the target's weights follow an exponential moving average (no gradient)",
                "stopgrad": "stop-gradient: no gradient flows back along this arrow"}
        tip = (edge.label + "<br>" if edge.label else "") + tips.get(edge.style, "")
        if tip:
            self.setToolTip(tip)
        self._build()

    def _build(self) -> None:
        s_rect, d_rect = self.src.sceneBoundingRect(), self.dst.sceneBoundingRect()
        path = QPainterPath()
        o = self.offset
        label_at: QPointF | None = None
        if d_rect.left() >= s_rect.right() - 1:  # forward, through the crossed layers
            a, b = self.src.anchor("right") + QPointF(0, o), self.dst.anchor("left") + QPointF(0, o)
            path.moveTo(a)
            cur = a
            for k, (enter, leave) in enumerate(self.via):
                dx = max(20.0, (enter.x() - cur.x()) * 0.5)
                path.cubicTo(cur + QPointF(dx, 0), enter - QPointF(dx, 0), enter)
                path.lineTo(leave)
                if k == (len(self.via) - 1) // 2:
                    label_at = (enter + leave) / 2
                cur = leave
            dx = max(30.0, (b.x() - cur.x()) * 0.5)
            path.cubicTo(cur + QPointF(dx, 0), b - QPointF(dx, 0), b)
        elif abs(d_rect.center().x() - s_rect.center().x()) < 1 and d_rect.top() != s_rect.top():  # same layer
            down = d_rect.top() > s_rect.top()
            a = self.src.anchor("bottom" if down else "top") + QPointF(o, 0)
            b = self.dst.anchor("top" if down else "bottom") + QPointF(o, 0)
            path.moveTo(a)
            path.lineTo(b)
        else:  # backward: loop under the blocks
            a, b = self.src.anchor("bottom") + QPointF(o, 0), self.dst.anchor("bottom") + QPointF(o, 0)
            drop = 40.0 + abs(a.x() - b.x()) * 0.12
            low = max(a.y(), b.y()) + drop
            path.moveTo(a)
            path.cubicTo(QPointF(a.x(), low), QPointF(b.x(), low), b)
        self.setPath(path)
        # arrow head
        end = path.pointAtPercent(1.0)
        before = path.pointAtPercent(0.96)
        ang = math.atan2(end.y() - before.y(), end.x() - before.x())
        size = 9.0
        self.head = QPolygonF([
            end,
            end - QPointF(size * math.cos(ang - 0.42), size * math.sin(ang - 0.42)),
            end - QPointF(size * math.cos(ang + 0.42), size * math.sin(ang + 0.42)),
        ])
        # stop-gradient marker: a double bar across the arrow near its end
        self.bar = []
        if self.edge.style == "stopgrad":
            t = 0.4 if self.via else 0.6
            p = path.pointAtPercent(t)
            ang2 = math.radians(-path.angleAtPercent(t))
            nx, ny = -math.sin(ang2), math.cos(ang2)
            tx, ty = math.cos(ang2), math.sin(ang2)
            for shift in (-3.0, 3.0):
                c = p + QPointF(tx * shift, ty * shift)
                self.bar.append((c + QPointF(nx * 8 + tx * 3, ny * 8 + ty * 3),
                                 c - QPointF(nx * 8 + tx * 3, ny * 8 + ty * 3)))
        self.label_pos = (label_at or path.pointAtPercent(0.5)) if self.edge.label else None

    def boundingRect(self) -> QRectF:  # noqa: N802
        r = super().boundingRect().united(self.head.boundingRect()).adjusted(-12, -12, 12, 12)
        if self.label_pos is not None:
            w = QFontMetricsF(self.font).horizontalAdvance(self.edge.label) + 12
            r = r.united(QRectF(self.label_pos.x() - w / 2, self.label_pos.y() - 12, w, 24))
        return r

    def shape(self) -> QPainterPath:
        stroker = QPainterPathStroker()
        stroker.setWidth(10)
        return stroker.createStroke(self.path())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        pal = QApplication.palette()
        color = pal.color(QPalette.ColorRole.WindowText)
        color.setAlpha(170)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(color, 1.5)
        if self.edge.style == "ema":
            pen.setStyle(Qt.PenStyle.DashLine)
            pen.setColor(theme.pick(theme.LIVE_COLOR))
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(self.path())
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(pen.color())
        painter.drawPolygon(self.head)
        if self.bar:
            bar_pen = QPen(theme.pick(theme.ERROR_COLOR), 2.2)
            painter.setPen(bar_pen)
            for a, b in self.bar:
                painter.drawLine(a, b)
        if self.label_pos is not None:
            painter.setFont(self.font)
            fm = QFontMetricsF(self.font)
            w, h = fm.horizontalAdvance(self.edge.label) + 8, fm.height() + 2
            box = QRectF(self.label_pos.x() - w / 2, self.label_pos.y() - h / 2, w, h)
            bg = pal.color(QPalette.ColorRole.Base)
            bg.setAlpha(225)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(bg)
            painter.drawRoundedRect(box, 3, 3)
            painter.setPen(pal.color(QPalette.ColorRole.WindowText))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, self.edge.label)


# ------------------------------------------------------------------------- view
class DiagramView(QGraphicsView):
    """Draws a :class:`Diagram`; emits ``block_selected(Block | None)`` on clicks."""

    block_selected = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setFrameShape(QGraphicsView.Shape.NoFrame)
        self.setMinimumHeight(140)
        self.diagram: Diagram | None = None
        self.blocks: dict[str, BlockItem] = {}
        self.edges: list[EdgeItem] = []
        self._changed: set[str] = set()
        self._selected: str | None = None

    # ----------------------------------------------------------------- API
    def set_diagram(self, diagram: Diagram | None) -> None:
        """Show ``diagram`` (None: clear); selection is reset."""
        self.diagram = diagram
        self._selected = None
        self._rebuild()

    def selected_block(self) -> Block | None:
        item = self.blocks.get(self._selected or "")
        return item.block if item is not None else None

    def select_block(self, block_id: str | None) -> None:
        """Select a block programmatically (None: clear); emits ``block_selected``."""
        self.scene().clearSelection()
        item = self.blocks.get(block_id or "")
        self._selected = item.block.id if item is not None else None
        if item is not None:
            item.setSelected(True)
        self.block_selected.emit(item.block if item is not None else None)

    def set_changed_keys(self, keys: set[str]) -> None:
        """Mark the blocks whose ``params`` include a changed setting."""
        self._changed = set(keys)
        for item in self.blocks.values():
            changed = any(key_matches(p, self._changed) for p in item.block.params)
            if changed != item.changed:
                item.changed = changed
                item.update()

    def changed_blocks(self) -> list[str]:
        return [bid for bid, item in self.blocks.items() if item.changed]

    # ------------------------------------------------------------ internals
    def _rebuild(self) -> None:
        scene = self.scene()
        scene.clear()
        self.blocks, self.edges = {}, []
        d = self.diagram
        if d is None or not d.blocks:
            return
        font = QFont(self.font())
        for b in d.blocks:
            item = BlockItem(b, font)
            scene.addItem(item)
            self.blocks[b.id] = item
        lay = layered_layout(d.blocks, d.edges)
        rows = lay.rows()
        small = QFont(font)
        small.setPointSizeF(max(6.0, font.pointSizeF() * 0.82))
        fm = QFontMetricsF(small)
        # size of every node; a virtual node is as wide as the label it may carry
        label_of = {v: d.edges[i].label for i, chain in lay.chains.items()
                    for k, v in enumerate(chain) if k == (len(chain) - 1) // 2}
        sizes: dict[str, tuple[float, float]] = {}
        for row in rows:
            for n in row:
                if n in self.blocks:
                    r = self.blocks[n].rect()
                    sizes[n] = (r.width(), r.height())
                else:
                    text = label_of.get(n, "")
                    sizes[n] = ((fm.horizontalAdvance(text) + 16) if text else 12.0, fm.height() + 6)
        widths = [max((sizes[n][0] for n in row), default=MIN_W) for row in rows]
        # the gap after a layer leaves room for the labels of the edges leaving it (one-layer edges)
        gaps = [H_GAP] * len(rows)
        for i, e in enumerate(d.edges):
            if e.label and i not in lay.chains and e.src in lay.pos and e.dst in lay.pos \
                    and lay.pos[e.dst][0] > lay.pos[e.src][0]:
                li = lay.pos[e.src][0]
                gaps[li] = max(gaps[li], fm.horizontalAdvance(e.label) + 32)
        xs, x = [], 0.0
        for i, w in enumerate(widths):
            xs.append(x)
            x += w + gaps[i]
        heights = [sum(sizes[n][1] for n in row) + V_GAP * max(0, len(row) - 1) for row in rows]
        tallest = max(heights, default=0.0)
        via_box: dict[str, QRectF] = {}
        for i, row in enumerate(rows):
            y = (tallest - heights[i]) / 2
            for n in row:
                w, h = sizes[n]
                if n in self.blocks:
                    self.blocks[n].setPos(xs[i] + (widths[i] - w) / 2, y)
                else:
                    via_box[n] = QRectF(xs[i], y, widths[i], h)
                y += h + V_GAP
        # parallel edges between the same pair are spread apart
        seen: dict[frozenset, int] = defaultdict(int)
        for i, e in enumerate(d.edges):
            if e.src not in self.blocks or e.dst not in self.blocks or e.src == e.dst:
                continue
            k = frozenset((e.src, e.dst))
            idx = seen[k]
            seen[k] += 1
            offset = 0.0 if idx == 0 else (8.0 * ((idx + 1) // 2) * (1 if idx % 2 else -1))
            via = [(QPointF(via_box[v].left(), via_box[v].center().y()),
                    QPointF(via_box[v].right(), via_box[v].center().y())) for v in lay.chains.get(i, [])]
            item = EdgeItem(e, self.blocks[e.src], self.blocks[e.dst], offset, font, via)
            scene.addItem(item)
            self.edges.append(item)
        self._add_legend(font)
        self.set_changed_keys(self._changed)
        rect = scene.itemsBoundingRect().adjusted(-20, -16, 20, 16)
        scene.setSceneRect(rect)
        self._fit()

    def _add_legend(self, font: QFont) -> None:
        styles = {e.style for e in (self.diagram.edges if self.diagram else [])}
        entries = [("gradient flow", "solid")]
        if "ema" in styles:
            entries.append(("EMA update", "ema"))
        if "stopgrad" in styles:
            entries.append(("stop-gradient", "stopgrad"))
        entries.append(("changed setting", "changed"))
        small = QFont(font)
        small.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        bottom = self.scene().itemsBoundingRect().bottom() + 18
        left = self.scene().itemsBoundingRect().left()
        x = left
        color = QApplication.palette().color(QPalette.ColorRole.WindowText)
        color.setAlpha(150)
        for text, style in entries:
            if style == "changed":
                dot = self.scene().addEllipse(QRectF(x + 8, bottom - 4, 9, 9), QPen(Qt.PenStyle.NoPen),
                                              QBrush(theme.pick(theme.CHANGED_COLOR)))
                dot.setZValue(-2)
            else:
                pen = QPen(theme.pick(theme.LIVE_COLOR) if style == "ema" else color, 1.5)
                if style == "ema":
                    pen.setStyle(Qt.PenStyle.DashLine)
                self.scene().addLine(x, bottom, x + 26, bottom, pen)
                if style == "stopgrad":
                    bar = QPen(theme.pick(theme.ERROR_COLOR), 2.0)
                    for dx in (10, 16):
                        self.scene().addLine(x + dx, bottom - 6, x + dx + 2, bottom + 6, bar)
            label = QGraphicsSimpleTextItem(text)
            label.setFont(small)
            label.setBrush(color)
            label.setPos(x + 32, bottom - QFontMetricsF(small).height() / 2)
            self.scene().addItem(label)
            x += 32 + QFontMetricsF(small).horizontalAdvance(text) + 24

    def _fit(self) -> None:
        rect = self.scene().sceneRect()
        if rect.isEmpty():
            return
        self.resetTransform()
        vw, vh = self.viewport().width(), self.viewport().height()
        fit = min(vw / rect.width(), vh / rect.height(), 1.5)
        if fit <= 0:
            return
        # shrink to fit, but not below MIN_SCALE (text would be unreadable): a long pipeline in
        # a narrow pane scrolls instead, showing its start (the data side) first
        scale = max(fit, MIN_SCALE)
        self.scale(scale, scale)
        if rect.width() * scale > vw + 1:
            self.centerOn(QPointF(rect.left() + vw / scale / 2, rect.center().y()))
        else:
            self.centerOn(rect.center())

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit()

    def changeEvent(self, event) -> None:  # noqa: N802 - redraw with the new scheme's colours
        super().changeEvent(event)
        if event.type() == event.Type.PaletteChange and self.diagram is not None:
            self._rebuild()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        item = self.itemAt(event.position().toPoint())
        while item is not None and not isinstance(item, BlockItem):
            item = item.parentItem()
        block_id = item.block.id if isinstance(item, BlockItem) else None
        if block_id != self._selected or block_id is None:
            self.select_block(block_id)
        event.accept()

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802 - a quick second click is a click
        self.mousePressEvent(event)
