"""The window on the ModelManager, with a fake backend: one model at a time, views see only
engine.Backend, and a finished reply is stored before the window goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.models import ModelManager
from engine import BackendInfo
from tests.fakebackend import FakeBackend, Reply
from ui.main_window import MainWindow


@pytest.fixture
def opened():
    return []


@pytest.fixture
def window(qtbot, store, opened):
    def opener(path: str, **kw) -> FakeBackend:
        # The model before is closed first: never two in memory.
        assert all(b.closed for b in opened), "a second model was opened with the first loaded"
        info = BackendInfo(name=Path(path).name, context_tokens=8192, vocab_size=1000)
        b = FakeBackend([Reply(text="Hello from the fake.")], info=info)
        opened.append(b)
        return b

    manager = ModelManager(opener=opener, measure=lambda path, ctx: 3 * 10**9, available=lambda: 0)
    w = MainWindow(store, demo=True, manager=manager)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()


def test_loading_another_model_replaces_the_first(window, qtbot, opened):
    with qtbot.waitSignal(window.model_loaded, timeout=30000):
        window.load_model("/models/first")
    with qtbot.waitSignal(window.model_loaded, timeout=30000):
        window.load_model("/models/second")
    first, second = opened
    assert first.closed and not second.closed
    for backend in (
        window.backend,
        window.chat.backend,
        window.agent.backend,
        window.locate.backend,
        window.server.backend,
    ):
        assert backend is second
    # What the toolbar shows comes from the manager and backend.info, not from engine internals.
    assert window.model_info.text() == "3.0 GB in memory · context 8K"
    assert window.model_picker.currentText() == "second"
    assert window.model_label.text() == "Model:"


def test_chat_footer_uses_the_backend_context(window, qtbot, store):
    with qtbot.waitSignal(window.model_loaded, timeout=30000):
        window.load_model("/models/fake")
    with qtbot.waitSignal(window.chat.reply_finished, timeout=30000) as sig:
        window.chat.send("hello there")
    assert sig.args[0] == "stop"
    assert window.chat.stats.text().endswith("/8192")


def test_finished_reply_is_stored_when_the_window_closes_at_once(qtbot, store, window):
    with qtbot.waitSignal(window.model_loaded, timeout=30000):
        window.load_model("/models/fake")
    with qtbot.waitSignal(window.chat.reply_finished, timeout=30000):
        window.chat.send("keep this")
    tid = window.chat.thread_id
    window.close()  # the queued writes are committed before shutdown returns
    msgs = store.messages(tid)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["content"].strip() == "Hello from the fake."
    assert store.thread(tid).title == "keep this"


def test_a_reply_still_streaming_at_quit_is_stored(qtbot, store):
    # Closing the window mid-reply stops it; what was written is kept, marked stopped.
    slow = FakeBackend([Reply(text="one two three four five six seven eight", chunk=4, delay=0.05)])
    manager = ModelManager(opener=lambda path, **kw: slow, measure=lambda p, c: 0, available=lambda: 0)
    w = MainWindow(store, demo=True, manager=manager)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model("/models/slow")
    w.chat.send("count for me")
    qtbot.waitUntil(lambda: "one" in w.chat.session.reply.text, timeout=10000)
    tid = w.chat.thread_id
    w.close()
    msgs = store.messages(tid)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[1]["content"].startswith("one") and "eight" not in msgs[1]["content"]


def test_asking_again_for_the_model_being_loaded_does_not_restart_it(qtbot, store):
    import threading

    gate, calls = threading.Event(), []

    def opener(path: str, **kw) -> FakeBackend:
        calls.append(path)
        gate.wait(10)  # a slow load: the user clicks again meanwhile
        return FakeBackend([Reply(text="hi")])

    manager = ModelManager(opener=opener, measure=lambda p, c: 0, available=lambda: 0)
    w = MainWindow(store, demo=True, manager=manager)
    qtbot.addWidget(w)
    w.show()
    w.load_model("/models/big")
    qtbot.waitUntil(lambda: calls == ["/models/big"], timeout=10000)
    w.load_model("/models/big")
    assert w.loading_path == "/models/big" and w.cancel_load_button.isVisibleTo(w)
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        gate.set()
    assert calls == ["/models/big"] and w.manager.path == "/models/big"
    w.shutdown()
