"""Issue 27, Agent and Server views: the answer once, coloured diffs, JSON arguments, a past run
without the last run's card, a clicked file shown, each new approval card in view, and the Server
log's error rows with their message."""

from __future__ import annotations

import socket

import httpx
import pytest
from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QApplication

from app.agent import ReplayBackend
from ui.agent_view import AgentView, ApprovalCard
from ui.screenshots import _call, edit_replay


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "proj"
    p.mkdir()
    (p / "hello.py").write_text('print("hello")\n')
    return p


@pytest.fixture
def view(qtbot, project, store):
    v = AgentView(store=store)
    qtbot.addWidget(v)
    v.resize(1000, 560)
    v.show()
    v.open_project(project)
    yield v
    v.shutdown()
    qtbot.wait(300)  # the past-runs list is read on a worker: done before the store closes


def _run(view: AgentView, qtbot, outputs: list[str], task: str = "greet better") -> ApprovalCard:
    view.backend_factory = lambda: ReplayBackend(outputs)
    with qtbot.waitSignal(view.approval_shown, timeout=30000) as sig:
        view.start_run(task)
    return sig.args[0]


def test_answer_once_json_arguments_and_coloured_diff(view, qtbot):
    card = _run(view, qtbot, edit_replay("hello.py", 'print("hello")', 'print("hi")'))
    # The card's diff is coloured: added lines green, removed red.
    fmts = {}
    doc = card.diff_view.document()
    for i in range(doc.blockCount()):
        block = doc.findBlockByNumber(i)
        ranges = block.layout().formats()
        if ranges:
            fmts[block.text()[:1]] = ranges[0].format.foreground().color().name()
    assert fmts.get("+") == "#2ea043" and fmts.get("-") == "#e5534b"
    with qtbot.waitSignal(view.run_finished, timeout=30000):
        card.approve_button.click()
    text = view.transcript.toPlainText()
    answer = "I changed the greeting in hello.py."
    assert text.count(answer) == 1, text  # streamed once, not printed again with "Done"
    assert '{"path": "hello.py"}' in text and "{'path'" not in text  # JSON, not a Python dict
    html = view.transcript.toHtml()
    assert "#2ea043" in html and "#e5534b" in html  # the applied diff in the transcript too


def test_a_past_run_shows_without_the_last_runs_card(view, qtbot):
    card = _run(view, qtbot, edit_replay("hello.py", 'print("hello")', 'print("x")'))
    with qtbot.waitSignal(view.run_finished, timeout=30000):
        card.reject_button.click()
    assert view.cards
    qtbot.waitUntil(lambda: view.runs.count() == 1, timeout=10000)
    with qtbot.waitSignal(view.run_shown, timeout=10000):
        view.show_run(view.runs.item(0).data(256))
    assert view.cards == [] and "Task:" in view.transcript.toPlainText()


def test_clicking_a_file_in_the_tree_shows_it(view, qtbot):
    root = view.tree.topLevelItem(0)
    item = next(root.child(i) for i in range(root.childCount()) if root.child(i).text(0) == "hello.py")
    rect = view.tree.visualItemRect(item)
    from PySide6.QtCore import Qt

    qtbot.mouseClick(view.tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.tabs.currentWidget() is view.file_view
    assert view.file_view.toPlainText() == 'print("hello")\n'
    assert view.tabs.tabText(1) == "hello.py"


def test_each_new_approval_card_is_in_view(view, qtbot, project):
    edits = [("hello", "one"), ("one", "two"), ("two", "three"), ("three", "four")]
    outputs = ["Look first.\n</think>\n\n" + _call("read_file", path="hello.py")]
    outputs += [
        "Change it.\n</think>\n\n" + _call("edit_file", path="hello.py", old_string=a, new_string=b)
        for a, b in edits
    ]
    outputs.append("Done.\n</think>\n\nFour edits.")
    card = _run(view, qtbot, outputs)
    for _ in edits[1:]:
        with qtbot.waitSignal(view.approval_shown, timeout=30000) as sig:
            card.approve_button.click()
        card = sig.args[0]
        qtbot.wait(50)
        QApplication.processEvents()
        port = view.cards_area.viewport()
        top = card.mapTo(port, QPoint(0, 0)).y()
        bottom = top + card.height()
        # The whole card where it fits (its diff too, not half below the fold), else its top.
        assert top >= 0 and (bottom <= port.height() or top == 0), (top, bottom, port.height())
    with qtbot.waitSignal(view.run_finished, timeout=30000):
        card.approve_button.click()


def test_server_log_error_rows_carry_their_message(qtbot):
    from engine import BackendInfo
    from tests.fakebackend import FakeBackend, Reply
    from ui.server_view import ServerView

    v = ServerView()
    qtbot.addWidget(v)
    info = BackendInfo(name="m", context_tokens=8192, vocab_size=1000)
    v.set_backend(FakeBackend([Reply(text="hi")], info=info), "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        v.port.setValue(s.getsockname()[1])
    with qtbot.waitSignal(v.state_changed):
        v.start_button.click()
    qtbot.waitUntil(lambda: v.server is not None and v.server.started, timeout=20000)
    base = f"http://127.0.0.1:{v.port.value()}"
    r = httpx.post(base + "/v1/messages", json={"model": "m", "messages": []}, timeout=30)
    assert r.status_code == 400
    qtbot.waitUntil(lambda: v.request_log.rowCount() == 1, timeout=5000)
    v.request_log.selectRow(0)
    detail = v.request_detail.text()
    assert "400" in detail and "messages: expected at least 1 item" in detail
    assert "messages: expected at least 1 item" in v.request_log.item(0, 1).toolTip()
    with qtbot.waitSignal(v.state_changed, timeout=20000):
        v.stop_button.click()
