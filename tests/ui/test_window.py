"""Main window: drops route folders to Agent and images to Locate; loading on a worker."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.models import LoadingCancelled, LoadingProgress, ModelLoaded
from ui.main_window import MainWindow, route_drop


@pytest.fixture
def window(qtbot, store):
    w = MainWindow(store, demo=True)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()


def _drop(window: MainWindow, paths: list[Path]) -> QDropEvent:
    warnings.simplefilter("ignore", DeprecationWarning)  # PySide marks the Qt 6 ctor deprecated
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    action = Qt.DropAction.CopyAction
    enter = QDragEnterEvent(
        QPoint(50, 50), action, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(window, enter)
    drop = QDropEvent(
        QPointF(50, 50), action, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(window, drop)
    drop.enter_accepted = enter.isAccepted()  # type: ignore[attr-defined]
    return drop


def test_drop_folder_opens_agent(window, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "main.py").write_text("x = 1\n")
    ev = _drop(window, [proj])
    assert ev.enter_accepted and ev.isAccepted()
    assert window.current_view == "Agent"
    assert window.agent.project == proj.resolve()
    assert "main.py" in window.agent.tree_paths()


def test_drop_image_opens_locate(window, tmp_path):
    img = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(img)
    ev = _drop(window, [img])
    assert ev.isAccepted()
    assert window.current_view == "Locate"
    assert window.locate.image_path == img and window.locate.image_size == (64, 48)


def test_drop_of_other_files_is_refused_with_a_hint(window, tmp_path):
    # Issue 16 (7): the drag is accepted so that the drop arrives, and says what would work.
    f = tmp_path / "notes.txt"
    f.write_text("hi")
    window.show_view("Chat")
    ev = _drop(window, [f])
    assert ev.enter_accepted and not ev.isAccepted()
    assert window.current_view == "Chat"
    assert window.error_banner.isVisible()
    assert "notes.txt" in window.error_banner.text() and "folder" in window.error_banner.text()
    heic = tmp_path / "IMG_1.HEIC"
    heic.write_bytes(b"\0\0\0\x18ftypheic")
    assert not window.open_paths([heic])
    assert "HEIC" in window.error_banner.text() and "JPEG" in window.error_banner.text()


def test_route_drop_prefers_first_usable_path(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.JPG").write_bytes(b"")
    assert route_drop([tmp_path / "a.txt", tmp_path / "b.JPG"]) == ("Locate", tmp_path / "b.JPG")
    assert route_drop([tmp_path]) == ("Agent", tmp_path)
    assert route_drop([tmp_path / "missing"]) is None


def test_demo_notice_and_model_loads_on_a_worker(window, qtbot, tiny_dir):
    assert window.demo_banner.isVisible() and "RANDOM" in window.demo_banner.text()
    # The demo model's own load ends first: a load started while it runs crashed the whole test
    # process (SIGSEGV) in full runs, undiagnosed; see the issue 23 note.
    qtbot.waitUntil(lambda: window.loading_path is None, timeout=60000)
    with qtbot.waitSignal(window.model_loaded, timeout=60000):
        window.load_model(str(tiny_dir("mlx", 4)))
        assert window.backend is None and "Loading" in window.model_label.text()
    assert window.chat.backend is window.backend and window.locate.backend is window.backend
    assert window.model_label.text().startswith("Model:")


def test_load_failure_is_an_actionable_message(window, qtbot, tmp_path):
    window.load_model(str(tmp_path / "nope"))
    qtbot.waitUntil(lambda: window.loading_path is None, timeout=30000)
    assert window.backend is None
    assert window.error_banner.isVisible() and "Could not load the model" in window.error_banner.text()
    assert "Traceback" not in window.error_banner.text()


def test_settings_are_remembered(qtbot, store, tiny_dir):
    from app.settings import load_ui_settings

    w = MainWindow(store)
    qtbot.addWidget(w)
    assert not w.demo_banner.isVisibleTo(w)
    with qtbot.waitSignal(w.model_loaded, timeout=60000):
        w.load_model(str(tiny_dir("mlx", 4)))
    assert load_ui_settings()["last_model"] == str(tiny_dir("mlx", 4))
    w.server.port.setValue(9123)
    w.resize(640, 470)
    w.shutdown()
    assert load_ui_settings()["server_port"] == 9123
    w2 = MainWindow(store)
    qtbot.addWidget(w2)
    assert w2.server.port.value() == 9123
    assert (w2.width(), w2.height()) == (640, 470)
    w2.shutdown()


def test_cancel_loading_drops_the_model(window, qtbot, tiny_dir):
    # Hold the load at its first step (listeners run on the manager's thread) until Cancel.
    gate, events = threading.Event(), []
    window.manager.add_listener(
        lambda ev: events.append(ev) or (isinstance(ev, LoadingProgress) and gate.wait(30))
    )
    window.load_model(str(tiny_dir("mlx", 4)))
    assert window._cancel_action.isVisible() and window._progress_action.isVisible()
    qtbot.waitUntil(lambda: any(isinstance(e, LoadingProgress) for e in events), timeout=30000)
    window.cancel_load()
    gate.set()
    assert not window._cancel_action.isVisible()
    assert window.model_label.text() == "No model loaded"
    assert window.manager.wait_idle(60)
    qtbot.wait(50)  # events are delivered on the UI thread
    assert window.backend is None and window.chat.backend is None
    # The load itself stopped: it never finished, and nothing is held.
    assert isinstance(events[-1], LoadingCancelled) and window.manager.backend is None
    assert not any(isinstance(e, ModelLoaded) for e in events)
