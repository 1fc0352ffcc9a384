"""Preferences: the defaults listed in app.settings.PREFERENCES, one field per entry."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.settings import PREFERENCES, Preference, preference, save_ui_settings

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

    def edit_mcp_servers(self) -> None:
        from .mcp_editor import McpServersDialog

        McpServersDialog(self).exec()

    def _choose_folder(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if path:
            edit.setText(path)

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in PREFERENCES:
            w = self.fields[p.key]
            if p.kind == "choice":
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
