"""Preferences → MCP servers: the data folder's mcp.json (add, remove, enable, edit an entry) and, after
Check, each server's status, last error and tools. Reading, checking and writing are app.mcp's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.cli_mcp import open_hub
from app.mcp import McpConfigError, ServerStatus, parse_config, read_entries, write_entries
from app.textsafe import show_line

from .bridge import run_in_background

__all__ = ["McpServersDialog"]

_NEW_ENTRY = {"command": "", "args": []}


def check_servers(entries: dict[str, dict[str, Any]]) -> list[ServerStatus]:
    """Start every enabled server once (worker thread) and return their statuses as started."""
    with open_hub(parse_config({"mcpServers": entries}), start_timeout=20) as hub:
        return [dataclasses.replace(st, tools=list(st.tools)) for st in hub.statuses()]


class McpServersDialog(QDialog):
    """A list of servers (checked: enabled), the selected entry's JSON, and its last check."""

    def __init__(self, parent: QWidget | None = None, path: Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("MCP servers")
        self.path = path
        self.statuses: dict[str, ServerStatus] = {}
        self.task: Any = None
        self._shown: str | None = None
        try:
            self.entries, problem = read_entries(path), ""
        except McpConfigError as e:
            self.entries, problem = {}, str(e)
        self._build()
        for name in self.entries:
            self._add_item(name)
        self.error.setText(show_line(problem))
        if self.list.count():
            self.list.setCurrentRow(0)

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.list = QListWidget()
        self.list.currentItemChanged.connect(self._selected)
        row.addWidget(self.list, 1)
        side = QVBoxLayout()
        self.editor = QPlainTextEdit(
            placeholderText='{"command": "...", "args": []}  or  {"url": "https://..."}'
        )
        self.editor.setFont(QFont("Menlo, Consolas, monospace"))
        self.state = QLabel("", wordWrap=True)
        self.tools = QListWidget()
        for w in (QLabel("Entry (JSON):"), self.editor, self.state, QLabel("Tools:"), self.tools):
            side.addWidget(w)
        row.addLayout(side, 2)
        lay.addLayout(row)
        buttons = QHBoxLayout()
        for text, slot in (("Add…", self._add), ("Remove", self._remove), ("Check", self._check)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            buttons.addWidget(b)
            setattr(self, f"{text.strip('…').lower()}_button", b)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        self.error = QLabel("", wordWrap=True, styleSheet="color: #c0392b")
        lay.addWidget(self.error)
        ok = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        ok.accepted.connect(self.accept)
        ok.rejected.connect(self.reject)
        lay.addWidget(ok)

    def _add_item(self, name: str) -> QListWidgetItem:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        enabled = self.entries[name].get("disabled") is not True
        item.setCheckState(Qt.CheckState.Checked if enabled else Qt.CheckState.Unchecked)
        self.list.addItem(item)
        return item

    def _commit(self) -> bool:
        """Take the editor's JSON back into the shown entry; False (and why) when it is not JSON."""
        if self._shown is None or self._shown not in self.entries:
            return True
        try:
            entry = json.loads(self.editor.toPlainText() or "{}")
        except ValueError as e:
            self.error.setText(f"{self._shown}: the entry is not valid JSON ({e})")
            return False
        if not isinstance(entry, dict):
            self.error.setText(f"{self._shown}: the entry must be a JSON object")
            return False
        self.entries[self._shown] = entry
        return True

    def _selected(self, item: QListWidgetItem | None, _previous: Any = None) -> None:
        self._commit()
        self._shown = item.text() if item is not None else None
        entry = {k: v for k, v in self.entries.get(self._shown or "", {}).items() if k != "disabled"}
        self.editor.setPlainText(json.dumps(entry, indent=2) if self._shown else "")
        self._show_status()

    def _show_status(self) -> None:
        st = self.statuses.get(self._shown or "")
        self.state.setText(show_line(st.line()) if st else "Not checked yet: press Check to start it.")
        self.tools.clear()
        for t in st.tools if st else []:
            self.tools.addItem(show_line(t.name + ("  (read-only)" if t.read_only else "")))

    def _add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add an MCP server", "Name:")
        name = name.strip()
        if ok and name and name not in self.entries:
            self._commit()
            self.entries[name] = dict(_NEW_ENTRY)
            self.list.setCurrentItem(self._add_item(name))

    def _remove(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self._shown = None
            self.entries.pop(item.text(), None)
            self.list.takeItem(self.list.row(item))

    def collect(self) -> dict[str, dict[str, Any]] | None:
        """The entries as edited (unchecked ones disabled), or None when one is not JSON."""
        if not self._commit():
            return None
        out = {}
        for i in range(self.list.count()):
            item = self.list.item(i)
            entry = {k: v for k, v in self.entries[item.text()].items() if k != "disabled"}
            if item.checkState() != Qt.CheckState.Checked:
                entry["disabled"] = True
            out[item.text()] = entry
        return out

    def _check(self) -> None:
        entries = self.collect()
        if entries is None:
            return
        try:
            parse_config({"mcpServers": entries})
        except McpConfigError as e:
            self.error.setText(show_line(e))
            return
        self.error.setText("")
        self.state.setText("Starting the servers…")
        self.check_button.setEnabled(False)
        self.task = run_in_background(check_servers, entries, on_done=self._checked, on_error=self._failed)

    def _checked(self, statuses: list[ServerStatus]) -> None:
        self.statuses = {st.name: st for st in statuses}
        self.check_button.setEnabled(True)
        self._show_status()

    def _failed(self, message: str) -> None:
        self.check_button.setEnabled(True)
        self.error.setText(show_line(message))

    def accept(self) -> None:
        entries = self.collect()
        if entries is None:
            return
        try:
            write_entries(entries, self.path)
        except McpConfigError as e:
            self.error.setText(show_line(e))
            return
        super().accept()
