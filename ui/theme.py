"""Light and dark palettes that follow the system, plus the app's stylesheet."""

from __future__ import annotations

import sys
from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

__all__ = ["app_icon", "apply_theme", "is_dark", "palette"]

_COLORS = {
    False: {
        "window": "#f5f5f7",
        "base": "#ffffff",
        "text": "#1d1d1f",
        "button": "#e9e9ee",
        "highlight": "#0a84ff",
        "mid": "#d2d2d7",
        "dim": "#6e6e73",
        "disabled": "#b4b4ba",
        "disabledButton": "#f0f0f3",
    },
    True: {
        "window": "#1e1e20",
        "base": "#2a2a2d",
        "text": "#f2f2f7",
        "button": "#3a3a3d",
        "highlight": "#0a84ff",
        "mid": "#48484a",
        "dim": "#a1a1a6",
        "disabled": "#5c5c61",
        "disabledButton": "#2c2c2f",
    },
}


def is_dark() -> bool:
    """Whether the system asks for a dark appearance (Qt 6.5+ reports it; else light)."""
    app = QGuiApplication.instance()
    if app is None:
        return False
    try:
        return app.styleHints().colorScheme() == Qt.ColorScheme.Dark
    except AttributeError:
        return False


def palette(dark: bool) -> QPalette:
    c = {k: QColor(v) for k, v in _COLORS[dark].items()}
    p = QPalette()
    R = QPalette.ColorRole
    p.setColor(R.Window, c["window"])
    p.setColor(R.WindowText, c["text"])
    p.setColor(R.Base, c["base"])
    p.setColor(R.AlternateBase, c["window"])
    p.setColor(R.Text, c["text"])
    p.setColor(R.Button, c["button"])
    p.setColor(R.ButtonText, c["text"])
    p.setColor(R.Highlight, c["highlight"])
    p.setColor(R.HighlightedText, QColor("#ffffff"))
    p.setColor(R.Mid, c["mid"])
    p.setColor(R.PlaceholderText, c["dim"])
    p.setColor(R.ToolTipBase, c["base"])
    p.setColor(R.ToolTipText, c["text"])
    # Disabled widgets must look disabled (one color for all groups made them identical).
    D = QPalette.ColorGroup.Disabled
    for role in (R.WindowText, R.Text, R.ButtonText, R.PlaceholderText):
        p.setColor(D, role, c["disabled"])
    p.setColor(D, R.Button, c["disabledButton"])
    p.setColor(D, R.Highlight, c["mid"])
    return p


def stylesheet(dark: bool) -> str:
    text = resources.files("resources").joinpath("styles/locus.qss").read_text(encoding="utf-8")
    # Longest names first: "@disabledButton" must not be read as "@disabled" + "Button".
    for k, v in sorted(_COLORS[dark].items(), key=lambda kv: -len(kv[0])):
        text = text.replace("@" + k, v)
    return text


def apply_theme(app: QApplication, dark: bool | None = None) -> bool:
    """Apply the palette and stylesheet for `dark` (None: the system's choice); returns it."""
    dark = is_dark() if dark is None else dark
    if sys.platform != "darwin":
        # macOS's native style already follows the system's appearance; elsewhere Fusion + palette.
        if not app.property("locus_user_style"):
            app.setStyle("Fusion")
        app.setPalette(palette(dark))
    app.setStyleSheet(stylesheet(dark))
    return dark


def app_icon() -> QIcon:
    path = resources.files("resources").joinpath("icons/locus.svg")
    return QIcon(str(path))
