"""Small shared dialogs and helpers: destructive confirmations, save folders, platform wording."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from app.settings import load_ui_settings, save_ui_settings

__all__ = ["confirm", "machine_name", "save_file", "save_folder"]


def confirm(parent: QWidget | None, title: str, text: str, action: str) -> bool:
    """Ask before a destructive action; the safe button is the default (Enter does not delete)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    ok = box.addButton(action, QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    box.exec()
    return box.clickedButton() is ok


def machine_name() -> str:
    """How to say "this machine" on this platform."""
    return "this Mac" if sys.platform == "darwin" else "this computer"


def save_folder() -> Path:
    """Where a save dialog opens: the last folder saved to, else Pictures, else home (never cwd)."""
    last = load_ui_settings().get("last_save_dir")
    if isinstance(last, str) and Path(last).is_dir():
        return Path(last)
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    if pictures and Path(pictures).is_dir():
        return Path(pictures)
    return Path.home()


def save_file(parent: QWidget | None, title: str, name: str, pattern: str) -> Path | None:
    """A save dialog in save_folder() suggesting `name`; remembers the folder chosen."""
    path, _ = QFileDialog.getSaveFileName(parent, title, str(save_folder() / name), pattern)
    if not path:
        return None
    save_ui_settings({"last_save_dir": str(Path(path).parent)})
    return Path(path)
