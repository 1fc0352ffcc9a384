"""Preferences → MCP servers: add, disable, edit and check servers; mcp.json written on OK."""

from __future__ import annotations

import json
import sys

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QInputDialog

from tests.app.mcp.helpers import py_entry
from ui.mcp_editor import McpServersDialog


@pytest.mark.slow
def test_servers_are_checked_disabled_added_and_saved(qtbot, tmp_path, monkeypatch):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"gone": {"command": "no-such-mcp-server-here"}}, "keep": 1}))
    dlg = McpServersDialog(path=path)
    qtbot.addWidget(dlg)
    assert dlg.list.count() == 1 and "no-such-mcp-server-here" in dlg.editor.toPlainText()
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("py", True))
    dlg.add_button.click()
    dlg.editor.setPlainText(json.dumps(py_entry()))
    dlg.check_button.click()
    qtbot.waitUntil(lambda: len(dlg.statuses) == 2, timeout=60_000)
    assert "MCP server 'py': 6 tools" in dlg.state.text()  # the selected server's last check
    assert "mcp__py__add" in [dlg.tools.item(i).text() for i in range(dlg.tools.count())]
    dlg.list.setCurrentRow(0)
    assert "'gone' failed to start" in dlg.state.text() and "not found" in dlg.state.text()
    dlg.list.item(0).setCheckState(Qt.CheckState.Unchecked)
    dlg.accept()
    saved = json.loads(path.read_text())
    assert saved["keep"] == 1 and saved["mcpServers"]["gone"]["disabled"] is True
    assert saved["mcpServers"]["py"]["command"] == sys.executable


def test_a_bad_entry_is_shown_and_nothing_is_saved(qtbot, tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    dlg = McpServersDialog(path=path)
    qtbot.addWidget(dlg)
    dlg.editor.setPlainText("{nope")
    dlg.accept()
    assert "not valid JSON" in dlg.error.text() and dlg.result() == 0
    dlg.editor.setPlainText('{"args": []}')
    dlg.accept()
    assert "needs exactly one of" in dlg.error.text()
    assert json.loads(path.read_text()) == {"mcpServers": {"a": {"command": "x"}}}
