"""Agent view with a replayed model: approval cards apply diffs, undo reverts, the tree stays live."""

from __future__ import annotations

import pytest

from app.agent import ReplayBackend
from ui.agent_view import AgentView, ApprovalCard
from ui.screenshots import edit_replay


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "proj"
    p.mkdir()
    (p / "hello.py").write_text('print("hello")\n')
    return p


@pytest.fixture
def view(qtbot, project):
    v = AgentView()
    qtbot.addWidget(v)
    v.resize(1000, 700)
    v.show()
    v.open_project(project)
    yield v
    v.shutdown()


def _run(view: AgentView, qtbot, outputs: list[str], task: str = "greet better") -> ApprovalCard:
    view.backend_factory = lambda: ReplayBackend(outputs)
    with qtbot.waitSignal(view.approval_shown, timeout=30000) as sig:
        view.start_run(task)
    return sig.args[0]


def test_approve_applies_diff_and_undo_reverts(view, qtbot, project):
    card = _run(view, qtbot, edit_replay("hello.py", 'print("hello")', 'print("hi there")'))
    assert card.req.tool == "edit_file"
    assert '-print("hello")' in card.diff_view.toPlainText()
    assert '+print("hi there")' in card.diff_view.toPlainText()
    assert (project / "hello.py").read_text() == 'print("hello")\n'  # nothing before approval
    with qtbot.waitSignal(view.run_finished, timeout=30000) as sig:
        card.approve_button.click()
    assert sig.args[0] == "answered"
    assert (project / "hello.py").read_text() == 'print("hi there")\n'
    assert card.outcome.text() == "Approved" and not card.approve_button.isEnabled()
    text = view.transcript.toPlainText()
    assert "read_file" in text and "edit_file" in text and "Done (answered)" in text
    view.undo_button.click()
    assert (project / "hello.py").read_text() == 'print("hello")\n'
    assert "Undone: hello.py" in view.transcript.toPlainText()


def test_reject_with_reason_leaves_file(view, qtbot, project):
    outputs = edit_replay("hello.py", 'print("hello")', 'print("no")')
    card = _run(view, qtbot, outputs)
    card.reason.setText("keep it as is")
    with qtbot.waitSignal(view.run_finished, timeout=30000):
        card.reject_button.click()
    assert (project / "hello.py").read_text() == 'print("hello")\n'
    assert "keep it as is" in view.transcript.toPlainText()


def test_stop_while_waiting_for_approval(view, qtbot, project):
    card = _run(view, qtbot, edit_replay("hello.py", 'print("hello")', 'print("x")'))
    with qtbot.waitSignal(view.run_finished, timeout=30000) as sig:
        view.stop_button.click()
    assert sig.args[0] == "stopped"
    assert not card.approve_button.isEnabled()
    assert (project / "hello.py").read_text() == 'print("hello")\n'
    assert view.run_button.isEnabled() and not view.stop_button.isEnabled()


def test_tree_follows_changes_on_disk(view, qtbot, project):
    assert view.tree_paths() == ["hello.py"]
    (project / "pkg").mkdir()
    (project / "pkg" / "new.py").write_text("x = 1\n")
    qtbot.waitUntil(lambda: "pkg/new.py" in view.tree_paths(), timeout=10000)
    (project / "hello.py").unlink()
    qtbot.waitUntil(lambda: "hello.py" not in view.tree_paths(), timeout=10000)


def test_tree_leaves_out_what_gitignore_ignores(view, project):
    # The same walk as the agent's list_dir tool: what it cannot see is not shown either.
    (project / ".gitignore").write_text("build/\n*.log\n!keep.log\n")
    (project / "build").mkdir()
    (project / "build" / "out.o").write_text("")
    (project / "run.log").write_text("")
    (project / "keep.log").write_text("")
    (project / "src").mkdir()
    (project / "src" / "a.py").write_text("")
    view.refresh_tree()
    assert view.tree_paths() == [".gitignore", "hello.py", "keep.log", "src", "src/a.py"]


def test_sandbox_notice_matches_sandbox(view):
    assert view.sandbox_notice.isVisibleTo(view) == (not view.sandbox.active)


def test_errors_are_messages(qtbot, tmp_path):
    v = AgentView()
    qtbot.addWidget(v)
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.start_run("do something")
    assert "project folder" in sig.args[0]
    v.open_project(tmp_path)
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.start_run("do something")  # no model and no backend
    assert "No model" in sig.args[0]
    v.shutdown()


def test_undo_to_a_chosen_step(view, qtbot, project):
    for new in ('print("one")', 'print("two")'):
        old = (project / "hello.py").read_text().strip()
        card = _run(view, qtbot, edit_replay("hello.py", old, new))
        with qtbot.waitSignal(view.run_finished, timeout=30000):
            card.approve_button.click()
    assert (project / "hello.py").read_text() == 'print("two")\n'
    assert view.steps.count() == 2 and "hello.py" in view.steps.item(0).text()
    view.steps.setCurrentRow(0)
    view.undo_to_button.click()  # back to before the first change
    assert (project / "hello.py").read_text() == 'print("hello")\n'
    assert view.steps.count() == 0


def test_allow_command_prefix_skips_later_questions(view, qtbot, project):
    def call(cmd: str) -> str:
        return (
            "Run it.\n</think>\n\n<tool_call>\n<function=run_command>\n<parameter=command>\n"
            f"{cmd}\n</parameter>\n</function>\n</tool_call>"
        )

    outputs = [call("touch a.txt"), call("touch b.txt"), "Done.\n</think>\n\nBoth ran."]
    card = _run(view, qtbot, outputs)
    assert card.req.command == "touch a.txt" and card.prefix.text() == "touch"
    shown: list = []
    view.approval_shown.connect(shown.append)
    with qtbot.waitSignal(view.run_finished, timeout=30000) as sig:
        card.prefix_button.click()
    assert sig.args[0] == "answered"
    assert shown == []  # the second echo was allowed by the prefix, not asked about
    assert (project / "a.txt").exists() and (project / "b.txt").exists()
    assert "starting with 'touch'" in card.outcome.text()


HIDING = "echo safe\x1b[2K\r\x1b]0;title\x07\x1b[8mrm -rf ~\x1b[0m\b\u202eexe.txt\u200b"


def _no_controls(text: str) -> bool:
    return not any(c in text for c in "\x1b\r\x07\b\u202e\u200b")


def test_approval_cards_show_control_characters_escaped(view, qtbot, project):
    def call(cmd: str) -> str:
        return (
            "Run it.\n</think>\n\n<tool_call>\n<function=run_command>\n<parameter=command>\n"
            f"{cmd}\n</parameter>\n</function>\n</tool_call>"
        )

    card = _run(view, qtbot, [call(HIDING), *edit_replay("hello.py", "hello", "hi\x1b[8m hidden\x1b[0m")])
    assert card.req.command == HIDING
    for shown in (card.title.text(), card.diff_view.toPlainText()):
        assert _no_controls(shown), ascii(shown)
        assert "\\x1b[2K\\r\\x1b]0;title\\x07\\x1b[8mrm -rf ~" in shown and "\\u202eexe.txt\\u200b" in shown
    assert card.hidden_note is not None and card.prefix.text() == ""
    card.prefix.setText("echo;")
    card.prefix_button.click()  # not a plain prefix: nothing is decided
    assert "plain words" in card.outcome.text() and card.approve_button.isEnabled()
    with qtbot.waitSignal(view.approval_shown, timeout=30000) as sig:
        card.reject_button.click()
    edit = sig.args[0]
    assert _no_controls(edit.diff_view.toPlainText())
    assert '+print("hi\\x1b[8m hidden\\x1b[0m")' in edit.diff_view.toPlainText()
    with qtbot.waitSignal(view.run_finished, timeout=30000):
        edit.approve_button.click()
    text = view.transcript.toPlainText()
    assert _no_controls(text) and "hidden\\x1b[0m" in text and "\\u202eexe.txt" in text
