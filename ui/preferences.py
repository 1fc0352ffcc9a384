"""Preferences: the defaults listed in app.settings.PREFERENCES, one field per entry."""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.settings import PREFERENCES, Preference, data_dir, preference, save_ui_settings


def context_words(tokens: int) -> str:
    """A context size as the toolbar and Preferences both say it: "256K", or "2000" when small."""
    return f"{tokens // 1024}K" if tokens >= 4096 else str(tokens)


def model_context(backend: Any) -> int:
    """The context the model in use serves (prompt + reply tokens); 0 when none or not known.
    The one source for the toolbar and Preferences."""
    return int(backend.info.context_tokens or 0) if backend is not None else 0


__all__ = ["PreferencesDialog"]


class PreferencesDialog(QDialog):
    """Edits every preference generically (choice, int, bool, text, folder); OK saves them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.fields: dict[str, Any] = {}
        lay = QVBoxLayout(self)
        form = QFormLayout()
        for p in PREFERENCES:
            w, holder = self._field(p)
            w.setToolTip(p.help)
            self.fields[p.key] = w
            form.addRow(p.label, holder)
        self.model_context = QLabel(self._context_words(parent))
        self.model_context.setWordWrap(True)
        form.addRow("Model in use", self.model_context)
        lay.addLayout(form)
        mcp = QPushButton("MCP servers…")  # the agent's and the chat's tool servers (mcp.json)
        mcp.clicked.connect(self.edit_mcp_servers)
        lay.addWidget(mcp)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _field(self, p: Preference) -> tuple[Any, QWidget]:
        value = preference(p.key)
        if p.kind == "choice":
            w: Any = QComboBox()
            w.addItems(list(p.choices))
            w.setCurrentText(str(value))
        elif p.kind == "int":
            w = QSpinBox(minimum=p.minimum, maximum=p.maximum, value=int(value))
        elif p.kind == "bool":
            w = QCheckBox(checked=bool(value))
        else:
            w = QLineEdit(str(value))
            if p.key == "data_folder":
                self._data_folder_field(w)
            if p.kind == "folder":
                holder = QWidget()
                row = QHBoxLayout(holder)
                row.setContentsMargins(0, 0, 0, 0)
                row.addWidget(w, 1)
                pick = QPushButton("Choose…")
                pick.clicked.connect(lambda *_, w=w: self._choose_folder(w))
                row.addWidget(pick)
                return w, holder
        return w, w

    @staticmethod
    def _context_words(parent: QWidget | None) -> str:
        """The context the model in use serves: the same source as the window's toolbar."""
        backend = getattr(parent, "backend", None)
        ctx = model_context(backend)
        if backend is None:
            return "No model loaded."
        if not ctx:
            return "Its context is not known."
        planned = getattr(parent, "_planned_context", 0)
        plan = f"; memory was planned for {context_words(planned)}" if 0 < planned < ctx else ""
        return f"context {context_words(ctx)} ({ctx:,} tokens){plan}"

    def edit_mcp_servers(self) -> None:
        from .mcp_editor import McpServersDialog

        McpServersDialog(self).exec()

    @staticmethod
    def _data_folder_field(w: QLineEdit) -> None:
        """Show the folder in use: LOCUS_DATA_DIR's (fixed while it is set), else the default."""
        env = os.environ.get("LOCUS_DATA_DIR")
        if env:
            w.setText(env)
            w.setReadOnly(True)
            w.setToolTip(f"Set by LOCUS_DATA_DIR={env}; unset it to choose another folder here.")
        else:
            w.setPlaceholderText(str(data_dir()))  # empty: the default, shown greyed

    def _choose_folder(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if path:
            edit.setText(path)

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in PREFERENCES:
            w = self.fields[p.key]
            if p.key == "data_folder" and w.isReadOnly():  # LOCUS_DATA_DIR's: never saved as a choice
                out[p.key] = preference(p.key)
            elif p.kind == "choice":
                out[p.key] = w.currentText()
            elif p.kind == "int":
                out[p.key] = w.value()
            elif p.kind == "bool":
                out[p.key] = w.isChecked()
            else:
                out[p.key] = w.text().strip()
        return out

    def accept(self) -> None:
        save_ui_settings(self.values())
        super().accept()
