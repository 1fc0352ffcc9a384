"""Chat view: streaming from real engines while the event loop runs, stop, persistence."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication

from engine import GenerationRequest
from tests.scripted import scripted_engine
from ui.chat_view import ChatView, MessageWidget

REPLY = (
    "The user wants code.\n</think>\n\nHere is **bold** text and code:\n\n"
    "```python\nprint('hi')\n```\n\nDone."
)


def _view(qtbot, store, engine) -> ChatView:
    v = ChatView(store)
    qtbot.addWidget(v)
    v.set_backend(engine, "tiny")
    v.resize(900, 600)
    v.show()
    return v


def _scripted(loaded, text: str, question: str, eos: bool = True):
    eng, model = scripted_engine(loaded, text, eos=eos)
    req = GenerationRequest(messages=[{"role": "user", "content": question}], enable_thinking=True)
    model.prompt_len = len(eng.encode(req)[0])
    return eng


def test_real_engine_streams_and_persists(qtbot, store, engine):
    v = _view(qtbot, store, engine)
    v.max_tokens = 12
    ticks = []
    timer = QTimer(interval=5)
    timer.timeout.connect(lambda: ticks.append(v.busy))
    timer.start()
    with qtbot.waitSignal(v.reply_finished, timeout=60000) as sig:
        v.send("Hello")
        assert v.busy  # send returned at once; generation runs on a worker
    timer.stop()
    assert sig.args[0] in ("stop", "length")
    assert any(ticks)  # the event loop kept running while the reply was generated
    assert v.writer.flush(10)  # store writes run on the writer thread, in order
    msgs = store.messages(v.thread_id)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    w = next(m for m in v._messages() if m.role == "assistant")
    assert w.text == msgs[1]["content"] and w.reasoning == msgs[1].get("reasoning_content", "")
    assert "tok/s" in v.stats.text() and "context" in v.stats.text()


def test_markdown_reasoning_and_copy(qtbot, store, loaded):
    eng = _scripted(loaded, REPLY, "code please")
    try:
        v = _view(qtbot, store, eng)
        with qtbot.waitSignal(v.reply_finished, timeout=30000) as sig:
            v.send("code please")
        assert sig.args[0] == "stop"
        w: MessageWidget = v._messages()[-1]
        assert w.reasoning.strip() == "The user wants code."
        assert w.text.startswith("Here is **bold**") and w.text.endswith("Done.")
        # Reasoning is collapsed until the toggle opens it.
        assert w.reasoning_toggle.isVisible() and not w.reasoning_label.isVisible()
        w.reasoning_toggle.click()
        assert w.reasoning_label.isVisible()
        blocks = w.body.code_blocks()
        assert len(blocks) == 1 and blocks[0].code == "print('hi')"
        blocks[0].copy_button.click()
        assert QGuiApplication.clipboard().text() == "print('hi')"
        # Regenerate replaces the reply (the scripted model writes the same again).
        eng.model.model.prompt_len = len(
            eng.encode(GenerationRequest(messages=v.history[:-1], enable_thinking=True))[0]
        )
        with qtbot.waitSignal(v.reply_finished, timeout=30000):
            v.regenerate()
        assert [m.role for m in v._messages()] == ["user", "assistant"]
        assert v.writer.flush(10)
        assert [m["role"] for m in store.messages(v.thread_id)] == ["user", "assistant"]
    finally:
        eng.close()


def test_stop_cancels_while_streaming(qtbot, store, loaded):
    eng = _scripted(loaded, "thinking forever " * 400, "go", eos=False)
    try:
        v = _view(qtbot, store, eng)
        v.max_tokens = 4000
        v.send("go")
        cur = v._current
        qtbot.waitUntil(lambda: len(cur.reasoning) > 20, timeout=30000)
        assert v.busy  # text is on screen while the reply is still being generated
        shown = len(cur.reasoning)
        with qtbot.waitSignal(v.reply_finished, timeout=10000) as sig:
            v.stop_button.click()
        assert sig.args[0] == "cancelled"
        assert not v.busy and v.send_button.isEnabled() and not v.stop_button.isEnabled()
        assert shown <= len(cur.reasoning) < len("thinking forever " * 400)
        assert "stopped" in cur.footer.text()
    finally:
        eng.close()


def test_conversations_list_rename_search_delete(qtbot, store, loaded, dialogs):
    eng = _scripted(loaded, "ok\n</think>\n\nPineapple answer", "first question")
    try:
        v = _view(qtbot, store, eng)
        with qtbot.waitSignal(v.reply_finished, timeout=30000):
            v.send("first question")
        tid = v.thread_id
        assert v.writer.flush(10)
        other = store.create_thread("chat", "Another chat")
        store.add_message(other, {"role": "user", "content": "unrelated"})
        # A fresh view (as after a restart) lists both and reopens the first with its messages.
        v2 = ChatView(store)
        qtbot.addWidget(v2)
        qtbot.waitUntil(lambda: v2.conversations.count() == 2, timeout=10000)
        titles = [v2.conversations.item(i).text() for i in range(v2.conversations.count())]
        assert sorted(titles) == ["Another chat", "first question"]
        with qtbot.waitSignal(v2.conversation_opened, timeout=10000):
            v2.open_conversation(tid)
        assert [(m.role, m.text) for m in v2._messages()] == [
            ("user", "first question"),
            ("assistant", "Pineapple answer"),
        ]
        v2.rename_conversation(tid, "Fruit")
        assert v2.writer.flush(10)
        assert store.thread(tid).title == "Fruit"
        with qtbot.waitSignal(v2.list_filled, timeout=10000):
            v2.search.setText("pineapple")  # matches message text, not only titles
        assert [v2.conversations.item(i).text() for i in range(v2.conversations.count())] == ["Fruit"]
        v2.search.setText("")
        dialogs.answer("Delete")
        v2.delete_conversation(tid)
        assert v2.writer.flush(10)
        assert [t.id for t in store.threads("chat")] == [other]
        assert v2._messages() == []
    finally:
        eng.close()


def test_no_model_is_a_message_not_a_crash(qtbot, store):
    v = ChatView(store)
    qtbot.addWidget(v)
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.send("hi")
    assert "No model is loaded" in sig.args[0] and "Models" in sig.args[0]
    assert store.threads("chat") == []


def test_profile_and_thinking_are_kept_per_conversation(qtbot, store, loaded):
    eng = _scripted(loaded, "r\n</think>\n\nA", "q")
    try:
        v = _view(qtbot, store, eng)
        with qtbot.waitSignal(v.reply_finished, timeout=30000):
            v.send("q")
        v.profile.setCurrentText("coding")
        v.thinking.setChecked(False)
        assert v.writer.flush(10)  # the reply and settings are stored before "other" is made
        other = store.create_thread("chat", "other")
        with qtbot.waitSignal(v.conversation_opened, timeout=10000):
            v.open_conversation(other)
        assert v.profile.currentText() == "thinking" and v.thinking.isChecked()
        with qtbot.waitSignal(v.conversation_opened, timeout=10000):
            v.open_conversation(store.threads("chat")[-1].id)
        assert store.thread(v.thread_id).meta == {"preset": "coding", "thinking": False, "max_tokens": 2048}
        assert v.profile.currentText() == "coding" and not v.thinking.isChecked()
    finally:
        eng.close()


def test_split_code_handles_streaming_fences():
    from ui.markdown import Segment, split_code

    assert split_code("a\n```py\nx = 1\n```\nb") == [
        Segment("text", "a\n"),
        Segment("code", "x = 1", "py"),
        Segment("text", "\nb"),
    ]
    # A fence still being written is already shown as code.
    assert split_code("see:\n```js\nlet y") == [
        Segment("text", "see:\n"),
        Segment("code", "let y", "js"),
    ]
