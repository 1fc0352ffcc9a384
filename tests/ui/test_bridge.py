"""The bridge: worker results, events and errors arrive on the UI thread as signals."""

from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication

from ui.bridge import Task, run_in_background, stream_in_background, user_message
from ui.theme import app_icon, apply_theme, palette


def test_events_and_result_arrive_on_the_ui_thread(qtbot):
    seen: list[tuple[object, bool]] = []
    worker_threads: list[str] = []

    def work(n: int, task: Task) -> int:
        worker_threads.append(threading.current_thread().name)
        for i in range(n):
            task.emit_event(i)
        return n * 10

    on_ui = lambda: QThread.currentThread() is QApplication.instance().thread()  # noqa: E731
    done: list[int] = []
    t = run_in_background(
        work, 3, on_event=lambda e: seen.append((e, on_ui())), on_done=lambda r: done.append((r, on_ui()))
    )
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    assert worker_threads == ["locus-ui-worker"]
    assert seen == [(0, True), (1, True), (2, True)]
    assert done == [(30, True)] and t.result == 30


def test_errors_become_messages(qtbot):
    def boom() -> None:
        raise ValueError("the model directory has no config.json")

    errors: list[str] = []
    run_in_background(boom, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert errors == ["the model directory has no config.json"]
    assert user_message(MemoryError()).startswith("Out of memory")


def test_stream_cancel_reaches_the_producer(qtbot):
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            yield i
            i += 1
            stop.wait(0.005)

    got: list[int] = []
    t = stream_in_background(produce, on_event=got.append, on_cancel=stop.set)
    qtbot.waitUntil(lambda: len(got) > 3, timeout=5000)
    with qtbot.waitSignal(t.finished, timeout=5000):
        t.cancel()
    assert t.cancelled.is_set() and not t.running


def test_palettes(qtbot):
    app = QApplication.instance()
    assert palette(True).window().color().lightness() < 80
    assert palette(False).window().color().lightness() > 200
    assert apply_theme(app, dark=True) is True
    if sys.platform != "darwin":  # macOS keeps its native, system-following palette
        assert app.palette().base().color().lightness() < 80
    assert not app_icon().isNull()
    assert "#sidebar" in app.styleSheet() and "@" not in app.styleSheet().split("*/", 1)[1]
    apply_theme(app, dark=False)


def test_emits_after_the_window_is_gone_are_dropped(qtbot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # `--screenshot` exits while workers still report: "Signal source has been deleted" (issue 31).
    import shiboken6
    from PySide6.QtCore import QObject

    from ui.bridge import Relay, Task

    parent = QObject()
    relay = Relay(lambda item: None, parent)
    shiboken6.delete(parent)
    relay("late")  # no RuntimeError
    crashes: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: crashes.append(a.exc_value))
    go = threading.Event()
    task = Task(lambda: go.wait(10)).start()
    shiboken6.delete(task)
    go.set()
    assert task.wait(10)
    qtbot.wait(100)  # done/finished are emitted just after the function returns
    assert crashes == []
