"""macOS opens documents through QFileOpenEvent (a folder or an image dropped on the Dock icon, or
"Open With"): route them like a drop on the window, queueing those that arrive before it exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject

__all__ = ["FileOpenFilter"]


class FileOpenFilter(QObject):
    """Installed on the QApplication before the window is built; `set_window` flushes the queue."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pending: list[Path] = []
        self.window: Any = None

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FileOpen:
            path = event.file() or event.url().toLocalFile()  # type: ignore[attr-defined]
            if path:
                self.open(Path(path))
                return True
        return False

    def open(self, path: Path) -> None:
        if self.window is None:
            self.pending.append(path)
        else:
            self.window.open_paths([path])

    def set_window(self, window: Any) -> None:
        self.window = window
        pending, self.pending = self.pending, []
        for p in pending:
            window.open_paths([p])
