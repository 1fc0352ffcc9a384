"""Issue 16: the window round 2. Each test fails on the code before it (see the issue's numbers)."""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QAction, QDragEnterEvent
from PySide6.QtWidgets import QApplication, QPushButton

from app.agent import ReplayBackend
from app.localize import Box
from tests.scripted import scripted_engine
from tests.ui.test_chat_view import _scripted
from ui.agent_view import AgentView
from ui.chat_view import ChatView
from ui.locate_view import LocateView, box_dict
from ui.main_window import MainWindow
from ui.models_view import ModelsView
from ui.screenshots import edit_replay


@pytest.fixture
def window(qtbot, store):
    w = MainWindow(store, demo=True)
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    yield w
    w.shutdown()


def _model_copy(tiny_dir, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "models"
    dest = root / "tiny-model"
    shutil.copytree(tiny_dir("mlx", 4), dest)
    return root, dest


# -- 1. nothing is lost without asking ------------------------------------------------------------
def test_model_delete_asks_with_size_and_spares_the_loaded_one(qtbot, tiny_dir, tmp_path, dialogs):
    root, dest = _model_copy(tiny_dir, tmp_path)
    v = ModelsView()
    qtbot.addWidget(v)
    v.extra_dirs = [root]
    with qtbot.waitSignal(v.models_listed, timeout=30000):
        v.refresh()
    row = next(i for i, m in enumerate(v.models) if m.path.resolve() == dest.resolve())
    v.table.selectRow(row)
    qtbot.mouseClick(v.delete_button, Qt.MouseButton.LeftButton)  # clicked(False) once deleted
    qtbot.waitUntil(lambda: bool(dialogs.seen), timeout=5000)
    assert dest.exists() and " KB in " in dialogs.seen[0]  # cancelled; it showed the size
    v.set_loaded(dest)
    assert "loaded" in v.table.item(row, 0).text()
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.delete_selected()
    assert "loaded" in sig.args[0] and dest.exists() and len(dialogs.seen) == 1


def test_conversation_delete_asks_and_can_be_undone(qtbot, store, dialogs):
    v = ChatView(store)
    qtbot.addWidget(v)
    tid = store.create_thread("chat", "Keep me", meta={"preset": "coding"})
    store.add_message(tid, {"role": "user", "content": "hello"})
    v.refresh_list()
    assert not v.delete_conversation(tid)  # the dialog was cancelled
    assert store.thread(tid).title == "Keep me"
    dialogs.answer("Delete")
    assert v.delete_conversation(tid)
    assert v.writer.flush(10)  # store writes run on the writer thread, in order
    assert store.threads("chat") == [] and v.undo_bar.isVisibleTo(v)
    v.undo_delete_button.click()
    assert v.writer.flush(10)
    t = store.thread(tid)
    assert (t.title, t.meta) == ("Keep me", {"preset": "coding"})
    assert store.messages(tid) == [{"role": "user", "content": "hello"}]
    assert v.thread_id == tid and not v.undo_bar.isVisibleTo(v)


# -- 2. exported PNG without the hover highlight ---------------------------------------------------
def test_export_png_ignores_the_hover_highlight(qtbot, tmp_path):
    v = LocateView()
    qtbot.addWidget(v)
    Image.new("RGB", (200, 150), (250, 250, 250)).save(tmp_path / "a.png")
    v.open_image(tmp_path / "a.png")
    v.set_boxes([Box("cat", 10, 20, 110, 90)])
    plain = v.render_annotated()
    v.highlight(0)  # as when the mouse is over the box
    lit = v.render_annotated()
    assert lit == plain
    assert v.box_items[0].brush().color().alpha() > 0  # still highlighted on screen


# -- 3. drops are Copy or Link, never Move ---------------------------------------------------------
def test_drop_never_accepts_move(window, tmp_path):
    warnings.simplefilter("ignore", DeprecationWarning)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path))])
    move_or_copy = Qt.DropAction.MoveAction | Qt.DropAction.CopyAction
    ev = QDragEnterEvent(
        QPoint(5, 5), move_or_copy, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    ev.setDropAction(Qt.DropAction.MoveAction)
    QApplication.sendEvent(window, ev)
    assert ev.isAccepted() and ev.dropAction() == Qt.DropAction.CopyAction
    only_move = QDragEnterEvent(
        QPoint(5, 5),
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(window, only_move)
    assert not only_move.isAccepted()


# -- 4. Agent: open, recent, past runs, undo across sessions ---------------------------------------
def test_agent_past_runs_and_undo_across_sessions(qtbot, store, tmp_path):
    from app.settings import load_ui_settings

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "hello.py").write_text('print("hello")\n')
    v = AgentView(store=store)
    qtbot.addWidget(v)
    v.show()
    assert v.open_button.text().startswith("Open Folder")
    v.open_project(proj)
    assert load_ui_settings()["last_project"] == str(proj.resolve())
    assert Path(load_ui_settings()["recent_projects"][0]) == proj.resolve()
    v.backend_factory = lambda: ReplayBackend(edit_replay("hello.py", 'print("hello")', 'print("hi")'))
    with qtbot.waitSignal(v.approval_shown, timeout=30000) as sig:
        v.start_run("greet")
    with qtbot.waitSignal(v.run_finished, timeout=30000):
        sig.args[0].approve_button.click()
    v.shutdown()
    # A new session (as after a restart): the run is listed with its steps, and can be undone.
    v2 = AgentView(store=store)
    qtbot.addWidget(v2)
    with qtbot.waitSignal(v2.runs_listed, timeout=10000):  # read off the UI thread
        v2.open_project(proj)
    assert v2.runs.count() == 1 and "greet" in v2.runs.item(0).text()
    with qtbot.waitSignal(v2.run_shown, timeout=10000):
        v2.show_run(v2.runs.item(0).data(256))
    assert "edit_file" in v2.transcript.toPlainText()
    assert v2.steps.count() == 1
    v2.undo(1)
    assert (proj / "hello.py").read_text() == 'print("hello")\n'
    v2.shutdown()


def test_cli_takes_a_project_folder_and_qt_options(tmp_path, capsys):
    from app.cli import _split_project, build_parser, split_qt_args

    ours, qt = split_qt_args(["-platform", "offscreen", "--demo", "-style=fusion", str(tmp_path)])
    assert qt == ["-platform", "offscreen", "-style=fusion"] and ours == ["--demo", str(tmp_path)]
    parser = build_parser()
    rest, project = _split_project(parser, ours)
    assert project == str(tmp_path) and parser.parse_args(rest).demo
    assert _split_project(parser, ["chat", "--demo"]) == (["chat", "--demo"], None)
    with pytest.raises(SystemExit):
        _split_project(parser, [str(tmp_path / "missing")])
    assert "DIR" in parser.format_help() and "-platform" in parser.format_help()


# -- 5. menus, Enter/Shift+Enter, Escape -----------------------------------------------------------
def test_menu_bar_roles_and_shortcuts(window):
    titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert titles == ["File", "Edit", "View", "Window", "Help"]
    R = QAction.MenuRole
    assert window.about_action.menuRole() == R.AboutRole
    assert window.preferences_action.menuRole() == R.PreferencesRole
    assert window.quit_action.menuRole() == R.QuitRole
    assert not window.quit_action.shortcut().isEmpty()
    assert not window.new_action.shortcut().isEmpty()
    window.view_actions[2].trigger()
    assert window.current_view == "Locate"


def test_enter_sends_shift_enter_breaks_and_escape_stops(qtbot, store, loaded):
    eng = _scripted(loaded, "thinking forever " * 400, "line one\nline two", eos=False)
    try:
        v = ChatView(store)
        qtbot.addWidget(v)
        v.set_backend(eng, "tiny")
        v.max_tokens = 4000
        v.show()
        v.input.setFocus()
        qtbot.keyClicks(v.input, "line one")
        qtbot.keyClick(v.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(v.input, "line two")
        assert v.input.toPlainText() == "line one\nline two" and v.task is None
        qtbot.keyClick(v.input, Qt.Key.Key_Return)
        assert v.busy and v.writer.flush(10)
        assert store.messages(v.thread_id)[0]["content"] == "line one\nline two"
        qtbot.waitUntil(lambda: v.session.reply.deltas > 2, timeout=30000)
        with qtbot.waitSignal(v.reply_finished, timeout=30000) as sig:
            qtbot.keyClick(v.input, Qt.Key.Key_Escape)
        assert sig.args[0] == "cancelled"
        v.input.set_enter_sends(False)  # the Preferences choice: Enter breaks, Ctrl+Enter sends
        qtbot.keyClicks(v.input, "x")
        qtbot.keyClick(v.input, Qt.Key.Key_Return)
        assert v.input.toPlainText() == "x\n" and not v.busy
    finally:
        eng.close()


# -- 6. models listed at start, the picker shows the loaded model ----------------------------------
def test_models_listed_at_start_and_picker_shows_loaded(window, qtbot, tiny_dir, tmp_path):
    root, dest = _model_copy(tiny_dir, tmp_path)
    window.models.extra_dirs = [root]
    qtbot.waitUntil(lambda: window.models.list_task is not None, timeout=5000)
    qtbot.waitUntil(lambda: not window.models.list_task.running, timeout=30000)
    window.models.refresh()  # again with the extra dir, as a later refresh would
    qtbot.waitUntil(lambda: any(m.path == dest for m in window.models.models), timeout=30000)
    picker = [window.model_picker.itemText(i) for i in range(window.model_picker.count())]
    assert "tiny-model" in picker
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.load_model(str(dest))
    assert window.model_picker.currentText() == "tiny-model"
    assert "memory" in window.model_info.text() and "context" in window.model_info.text()
    qtbot.waitUntil(lambda: window.models.loaded_path == dest.resolve(), timeout=5000)
    row = next(i for i, m in enumerate(window.models.models) if m.path == dest)
    assert "loaded" in window.models.table.item(row, 0).text()


# -- 8. disabled looks disabled; decided cards are disabled ----------------------------------------
@pytest.mark.parametrize("dark", [False, True])
def test_disabled_buttons_look_disabled(qtbot, dark):
    from ui.theme import apply_theme

    app = QApplication.instance()
    apply_theme(app, dark)
    try:
        contrast = []
        for enabled in (True, False):
            b = QPushButton("Approve")
            b.setEnabled(enabled)
            qtbot.addWidget(b)
            b.resize(120, 30)
            b.show()
            im = b.grab().toImage()
            lum = [im.pixelColor(x, y).lightness() for x in range(20, 100) for y in range(8, 22)]
            contrast.append(max(lum) - min(lum))  # text against the button's face
        assert contrast[0] - contrast[1] > 60, contrast  # disabled text is faint
    finally:
        apply_theme(app, False)


# -- 9. the window keeps its size and layout --------------------------------------------------------
def test_long_error_neither_widens_window_nor_moves_layout(window, qtbot):
    QApplication.processEvents()
    width = window.width()
    window.show_message("Could not load /" + "very-long-folder-name/" * 200 + "model")
    QApplication.processEvents()
    qtbot.wait(50)
    assert window.width() == width
    # A row above the view (issue 27), never over it: the view's controls stay clickable.
    banner_bottom = window.error_banner.mapTo(window, QPoint(0, window.error_banner.height())).y()
    assert window.stack.mapTo(window, QPoint(0, 0)).y() >= banner_bottom
    assert window.error_banner.isVisible() and window.error_banner.width() <= window.width()
    window.locate.status.setText("Error: " + "x" * 3000)
    window.agent.project_label.setText("Project: /" + "y" * 3000)
    QApplication.processEvents()
    assert window.width() == width


def test_new_card_is_scrolled_into_view_at_a_small_size(qtbot, tmp_path):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "hello.py").write_text('print("hello")\n')
    v = AgentView()
    qtbot.addWidget(v)
    v.resize(640, 420)
    v.show()
    v.open_project(proj)
    v.backend_factory = lambda: ReplayBackend(edit_replay("hello.py", 'print("hello")', 'print("hi")'))
    with qtbot.waitSignal(v.approval_shown, timeout=30000) as sig:
        v.start_run("greet")
    card = sig.args[0]
    qtbot.wait(100)
    vp = v.cards_area.viewport()
    top_left = card.approve_button.mapTo(vp, QPoint(0, 0))
    assert vp.rect().contains(top_left) and card.approve_button.isVisible()
    card.approve_button.click()
    assert not card.reject_button.isEnabled() and not card.allow_button.isEnabled()
    v.shutdown()


# -- 11. small things a user notices ---------------------------------------------------------------
def test_stats_follow_the_conversation_and_footers_survive_restart(qtbot, store, loaded):
    eng = _scripted(loaded, "r\n</think>\n\nAnswer", "q")
    try:
        v = ChatView(store)
        qtbot.addWidget(v)
        v.set_backend(eng, "tiny")
        with qtbot.waitSignal(v.reply_finished, timeout=30000):
            v.send("q")
        tid, footer = v.thread_id, v.stats.text()
        assert "tok/s" in footer
        v.new_conversation()
        assert v.stats.text() == ""  # not the other conversation's speed
        assert v.writer.flush(10)  # what shutdown does before a restart
        v2 = ChatView(store)  # after a restart
        qtbot.addWidget(v2)
        with qtbot.waitSignal(v2.conversation_opened, timeout=10000):
            v2.open_conversation(tid)
        reply = next(m for m in v2._messages() if m.role == "assistant")
        assert reply.footer.text() == footer and v2.stats.text() == footer
    finally:
        eng.close()


def test_json_export_rounds_and_save_dialogs_avoid_cwd(monkeypatch, tmp_path):
    from ui.dialogs import save_folder

    d = box_dict(Box("cup", 79.80000000000001, 10.0, 120.33333333, 50.5))
    assert json.dumps(d) == '{"label": "cup", "bbox": [79.8, 10, 120.33, 50.5]}'
    monkeypatch.chdir(tmp_path)
    assert save_folder() != tmp_path and save_folder().is_dir()


def test_platform_words_demo_banner_and_claude_code_names(window):
    from PySide6.QtWidgets import QGroupBox

    from ui.server_view import claude_code_env

    names = [g.title() for g in window.models.findChildren(QGroupBox)]
    if sys.platform != "darwin":
        assert not any("Mac" in n for n in names)
    assert "--model" not in window.demo_banner.text() and "Models" in window.demo_banner.text()
    env = claude_code_env("127.0.0.1", 8723, "", "qwen")
    assert "ANTHROPIC_AUTH_TOKEN" in env and "ANTHROPIC_BASE_URL" in env
    assert "SMALL_FAST" not in env and "ANTHROPIC_DEFAULT_HAIKU_MODEL=qwen" in env


def test_nothing_to_undo_is_a_hint_not_an_error(window):
    window.agent.undo(1)
    assert not window.error_banner.isVisible()
    assert "Nothing to undo" in window.statusBar().currentMessage()


def test_expected_errors_print_no_traceback(qtbot, capfd):
    from engine import EngineError
    from ui.bridge import run_in_background

    def fail() -> None:
        raise EngineError("the model needs 20 GB; 8 GB are free")

    got: list[str] = []
    t = run_in_background(fail, on_error=got.append)
    qtbot.waitUntil(lambda: bool(got), timeout=5000)
    t.wait(5)
    assert got == ["the model needs 20 GB; 8 GB are free"]
    assert "Traceback" not in capfd.readouterr().err


def test_close_is_fast_with_a_reply_running(qtbot, store, loaded):
    eng, _ = scripted_engine(loaded, "thinking forever " * 400, eos=False)
    w = MainWindow(store)
    qtbot.addWidget(w)
    w.show()
    w.set_backend(eng, "tiny")
    w.chat.max_tokens = 4000
    w.chat.send("go")
    qtbot.waitUntil(lambda: w.chat.session.reply.deltas > 2, timeout=30000)
    t = time.monotonic()
    w.close()
    assert time.monotonic() - t < 1.0 and not w.isVisible()


def test_preferences_are_saved_and_applied(window, qtbot):
    from app.settings import preference
    from ui.preferences import PreferencesDialog

    dlg = PreferencesDialog(window)
    qtbot.addWidget(dlg)
    dlg.fields["enter_sends"].setChecked(False)
    dlg.fields["sampling_profile"].setCurrentText("coding")
    dlg.fields["server_port"].setValue(9555)
    dlg.accept()
    try:
        assert preference("enter_sends") is False and preference("server_port") == 9555
        window.apply_preferences()
        assert not window.chat.input.enter_sends and window.chat.profile.currentText() == "coding"
        assert window.server.port.value() == 9555
    finally:
        from app.settings import save_ui_settings

        save_ui_settings({"enter_sends": True, "sampling_profile": "thinking", "server_port": 8723})


def test_request_log_shows_records(qtbot):
    from ui.server_view import RequestLog

    log = RequestLog(limit=2)
    qtbot.addWidget(log)
    log.set_records(
        [
            {
                "time": 0,
                "method": "POST",
                "path": "/v1/messages",
                "status": 200,
                "duration_ms": 812.4,
                "output_tokens": 31,
            },
            {"time": 1, "method": "GET", "path": "/v1/models", "status": 200, "duration": 0.003},
            {"time": 2, "method": "POST", "path": "/v1/chat/completions", "status": 401, "error": "bad key"},
        ]
    )
    rows = [[log.item(r, c).text() for c in range(5)] for r in range(log.rowCount())]
    assert [r[1] for r in rows] == ["GET /v1/models", "POST /v1/chat/completions"]  # newest 2
    assert rows[0][3] == "3 ms" and rows[1][2] == "401 bad key"
