"""Look and feel: Fusion style with a dark or light palette that follows the system.

``apply_theme(app)`` reads ``QStyleHints.colorScheme()`` (Qt >= 6.5) and keeps
following it: when the system switches between dark and light, the palette is
rebuilt and every widget gets a ``PaletteChange`` event (the diagram redraws
itself on it). ``SSL_STUDIO_THEME=dark|light`` forces a scheme (screenshots,
tests).

Also here: the few colours the studio draws itself (diagram blocks by kind,
markers for changed / invalid / live settings) and small generated icons, so the
look stays consistent in both schemes without image files.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPainterPath, QPalette, QPixmap, QPolygonF
from PySide6.QtWidgets import QApplication, QSplashScreen

_current = {"dark": False}

# diagram block fill colours by Block.kind: (light scheme, dark scheme)
KIND_COLORS: dict[str, tuple[str, str]] = {
    "data": ("#dbe9f6", "#23415c"),
    "augment": ("#e4dcf3", "#3f3561"),
    "encoder": ("#d6efdc", "#24503a"),
    "head": ("#fbe6cd", "#5e4322"),
    "loss": ("#f7d4d4", "#5f2a2a"),
    "memory": ("#e9e9e9", "#3b3f45"),
    "op": ("#f3efc8", "#55502a"),
    "module": ("#e2e8ee", "#353d47"),
}

CHANGED_COLOR = ("#d9822b", "#f0a04b")   # orange dot: changed from preset / defaults
ERROR_COLOR = ("#c62828", "#ff6b6b")     # invalid value
LIVE_COLOR = ("#1e88e5", "#64b5f6")      # live-tunable setting
ACCENT_COLOR = ("#2a82da", "#2a82da")
MUTED_COLOR = ("#555555", "#a8a8a8")     # secondary text (hints, messages)
STATUS_COLORS: dict[str, tuple[str, str]] = {  # run status in the runs panel (>= 4.5:1 on either scheme)
    "completed": ("#2e7d32", "#81c784"), "running": ("#1565c0", "#64b5f6"), "paused": ("#ef6c00", "#ffb74d"),
    "stopped": ("#6d4c41", "#bcaaa4"), "failed": ("#c62828", "#ff6b6b"),
}


def is_dark() -> bool:
    """True when the dark palette is active."""
    return _current["dark"]


def pick(pair: tuple[str, str]) -> QColor:
    """The light or dark variant of a colour pair, for the active scheme."""
    return QColor(pair[1] if _current["dark"] else pair[0])


def system_prefers_dark() -> bool:
    """The scheme asked for by SSL_STUDIO_THEME, else by the system (QStyleHints.colorScheme)."""
    forced = os.environ.get("SSL_STUDIO_THEME", "").strip().lower()
    if forced in ("dark", "light"):
        return forced == "dark"
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is None:  # Qt < 6.5: guess from the window colour
        return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128
    return scheme() == Qt.ColorScheme.Dark


def dark_palette() -> QPalette:
    p = QPalette()
    window, base, alt = QColor(45, 47, 51), QColor(30, 31, 34), QColor(52, 54, 58)
    text, disabled = QColor(225, 227, 230), QColor(128, 130, 134)
    accent = QColor(ACCENT_COLOR[1])
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: alt,
        QPalette.ColorRole.ToolTipBase: QColor(60, 63, 68),
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: disabled,
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: QColor(53, 55, 60),
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor(255, 90, 90),
        QPalette.ColorRole.Link: QColor(100, 170, 240),
        QPalette.ColorRole.Highlight: accent,
        QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
        QPalette.ColorRole.Light: QColor(70, 72, 77),
        QPalette.ColorRole.Midlight: QColor(60, 62, 66),
        QPalette.ColorRole.Mid: QColor(40, 41, 44),
        QPalette.ColorRole.Dark: QColor(25, 26, 28),
        QPalette.ColorRole.Shadow: QColor(10, 10, 10),
    }
    for role, color in roles.items():
        p.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Highlight, QColor(70, 72, 77))
    return p


def apply_theme(app: QApplication, dark: bool | None = None) -> None:
    """Fusion style and the palette of the system scheme (or ``dark`` when given); keeps following it."""
    app.setStyle("Fusion")
    use_dark = system_prefers_dark() if dark is None else dark
    _current["dark"] = use_dark
    app.setPalette(dark_palette() if use_dark else app.style().standardPalette())
    if dark is None and not getattr(app, "_ssl_theme_hooked", False):
        hints = QGuiApplication.styleHints()
        signal = getattr(hints, "colorSchemeChanged", None)
        if signal is not None:
            signal.connect(lambda *_: apply_theme(app))
            app._ssl_theme_hooked = True  # type: ignore[attr-defined]


# ------------------------------------------------------------------ small icons
def _pixmap(size: int = 16) -> tuple[QPixmap, QPainter]:
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pm)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    return pm, painter


def live_icon(size: int = 14) -> QIcon:
    """A small lightning bolt: the setting can change while a run goes."""
    pm, p = _pixmap(size)
    s = size / 16.0
    bolt = QPolygonF([QPointF(9 * s, 1 * s), QPointF(3 * s, 9 * s), QPointF(7.5 * s, 9 * s),
                      QPointF(6 * s, 15 * s), QPointF(13 * s, 6 * s), QPointF(8.5 * s, 6 * s),
                      QPointF(10 * s, 1 * s)])
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(pick(LIVE_COLOR))
    p.drawPolygon(bolt)
    p.end()
    return QIcon(pm)


def dot_icon(color: QColor, size: int = 10) -> QIcon:
    pm, p = _pixmap(size)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(color)
    p.drawEllipse(QRectF(1, 1, size - 2, size - 2))
    p.end()
    return QIcon(pm)


def run_icon(kind: str, size: int = 18) -> QIcon:
    """Toolbar icons drawn in the text colour: 'start', 'pause', 'resume', 'stop'."""
    pm, p = _pixmap(size)
    color = {"start": QColor("#2e9d4f"), "resume": QColor("#2e9d4f"), "stop": QColor("#d0443e"),
             "pause": QColor("#d99a1c")}.get(kind, QColor("#888888"))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(color)
    s = size
    if kind in ("start", "resume"):
        path = QPainterPath()
        path.moveTo(0.25 * s, 0.15 * s)
        path.lineTo(0.85 * s, 0.5 * s)
        path.lineTo(0.25 * s, 0.85 * s)
        path.closeSubpath()
        p.drawPath(path)
    elif kind == "pause":
        p.drawRect(QRectF(0.22 * s, 0.18 * s, 0.2 * s, 0.64 * s))
        p.drawRect(QRectF(0.58 * s, 0.18 * s, 0.2 * s, 0.64 * s))
    else:
        p.drawRoundedRect(QRectF(0.2 * s, 0.2 * s, 0.6 * s, 0.6 * s), 2, 2)
    p.end()
    return QIcon(pm)


def splash_screen(message: str) -> QSplashScreen:
    """A small window shown at once while PyTorch and the methods load (the window follows
    in 2-5 s); ``finish(window)`` closes it."""
    pal = QApplication.palette()
    pm = QPixmap(440, 150)
    pm.fill(pal.color(QPalette.ColorRole.Window))
    p = QPainter(pm)
    p.setPen(pal.color(QPalette.ColorRole.WindowText))
    font = p.font()
    font.setPointSize(22)
    font.setBold(True)
    p.setFont(font)
    p.drawText(QRectF(0, 22, 440, 44), Qt.AlignmentFlag.AlignHCenter, "SSL Studio")
    font.setPointSize(10)
    font.setBold(False)
    p.setFont(font)
    p.drawText(QRectF(0, 68, 440, 24), Qt.AlignmentFlag.AlignHCenter, "self-supervised visual representation learning")
    p.end()
    splash = QSplashScreen(pm)
    splash.showMessage(message, Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignHCenter,
                       pal.color(QPalette.ColorRole.PlaceholderText))
    splash.show()
    QApplication.processEvents()
    return splash
