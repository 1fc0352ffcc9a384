"""Chat, third round: images and files in messages, per-conversation settings, message actions
(copy, edit and resend, regenerate with versions, delete), export, dates, and the defects a first
hour found (line breaks, text meant for the model, reasoning-only replies, the thinking indicator,
reopening the last conversation, the transcript's scroll position, Esc in the search)."""

from __future__ import annotations

import io
import json
import time

from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication, QImage, QTextDocument
from PySide6.QtWidgets import QApplication, QLabel, QMenu

from engine import Usage
from tests.fakebackend import FakeBackend, Reply
from tests.ui.test_chat_view import _scripted
from ui.chat_view import ChatView

USAGE = Usage(prompt_tokens=10, completion_tokens=5, generation_tps=12.5)


def _view(qtbot, store, backend=None, name: str = "fake", **kw) -> ChatView:
    v = ChatView(store, **kw)
    qtbot.addWidget(v)
    if backend is not None:
        v.set_backend(backend, name)
    v.resize(900, 600)
    v.show()
    return v


def _shown(w) -> str:
    """A message's text as drawn: each label rendered the way it is formatted."""
    labels = [w.body] if isinstance(w.body, QLabel) else w.body.findChildren(QLabel)
    out = []
    for label in labels:
        if not label.isVisibleTo(w):
            continue
        doc = QTextDocument()
        if label.textFormat() == Qt.TextFormat.MarkdownText:
            doc.setMarkdown(label.text())
        else:
            doc.setPlainText(label.text())
        out.append(doc.toPlainText())
    return "\n".join(out)


def _send(qtbot, v: ChatView, text: str, timeout: int = 30000) -> str:
    with qtbot.waitSignal(v.reply_finished, timeout=timeout) as sig:
        v.send(text)
    qtbot.wait(20)  # widgets added to a shown layout are shown by a queued call
    return sig.args[0]


def _png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# -- defects -----------------------------------------------------------------------------------------
def test_shift_enter_line_break_is_shown_in_the_message(qtbot, store):
    v = _view(qtbot, store, FakeBackend([Reply(text="ok", usage=USAGE)]))
    v.input.setFocus()
    qtbot.keyClicks(v.input, "line one")
    qtbot.keyClick(v.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(v.input, "line two")
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        qtbot.keyClick(v.input, Qt.Key.Key_Return)
    user = v._messages()[0]
    assert "line one\nline two" in _shown(user)


def test_text_meant_for_the_model_is_not_shown(qtbot, store):
    raw = "ok\n</think>\n\nSure.\n<tool_call>\n<function=lookup>\n<parameter=q>\nx\n</tool_call>"
    v = _view(qtbot, store, FakeBackend([Reply(raw=raw, usage=USAGE)]))
    _send(qtbot, v, "look it up")
    shown = _shown(v._messages()[-1])
    assert "Sure." in shown and "could not read" in shown
    assert "Write tool calls exactly" not in shown and "<parameter=" not in shown


def test_reasoning_only_reply_says_so(qtbot, store):
    fake = FakeBackend(
        [Reply(reasoning="Let me think about this at length.", text="", usage=USAGE, finish_reason="length")]
    )
    v = _view(qtbot, store, fake)
    assert _send(qtbot, v, "hard question") == "length"
    w = v._messages()[-1]
    assert w.reasoning and "token limit" in _shown(w) and "Max tokens" in _shown(w)
    # The same note when the conversation is opened again.
    v2 = _view(qtbot, store, reopen=False)
    with qtbot.waitSignal(v2.conversation_opened, timeout=10000):
        v2.open_conversation(v.thread_id)
    assert "token limit" in _shown(v2._messages()[-1])


def test_thinking_indicator_while_reasoning_streams_collapsed(qtbot, store, loaded):
    eng = _scripted(loaded, "thinking forever " * 400, "go", eos=False)
    try:
        v = _view(qtbot, store, eng, "tiny")
        v.max_tokens = 4000
        v.send("go")
        cur = v._current
        qtbot.waitUntil(lambda: len(cur.reasoning) > 20, timeout=30000)
        assert cur.reasoning_toggle.isVisible() and not cur.reasoning_label.isVisible()
        assert "Thinking…" in cur.reasoning_toggle.text()
        qtbot.waitUntil(lambda: "words)" in cur.reasoning_toggle.text(), timeout=10000)  # it counts
        with qtbot.waitSignal(v.reply_finished, timeout=10000):
            v.stop()
        assert "Thinking" not in cur.reasoning_toggle.text()  # it ended
    finally:
        eng.close()


def test_thinking_indicator_gives_way_to_the_answer(qtbot, store):
    fake = FakeBackend(
        [Reply(reasoning="Hmm " * 10, text="The answer is long. " * 20, usage=USAGE, delay=0.02)]
    )
    v = _view(qtbot, store, fake)
    v.send("q")
    cur = v._current
    qtbot.waitUntil(lambda: "Thinking" in cur.reasoning_toggle.text() and bool(cur.reasoning), timeout=10000)
    qtbot.waitUntil(lambda: bool(cur.text), timeout=10000)
    assert v.busy and cur.reasoning_toggle.text() == "▸ Reasoning"  # the answer is streaming
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        pass


def test_last_conversation_is_reopened_at_start(qtbot, store):
    v = _view(qtbot, store, FakeBackend([Reply(text="a", usage=USAGE), Reply(text="b", usage=USAGE)]))
    _send(qtbot, v, "first chat")
    first = v.thread_id
    v.new_conversation()
    _send(qtbot, v, "second chat")
    assert v.writer.flush(10)
    with qtbot.waitSignal(v.conversation_opened, timeout=10000):
        v.open_conversation(first)  # the one shown at quit, not the newest
    v.shutdown()
    v2 = ChatView(store)  # a restart
    qtbot.addWidget(v2)
    with qtbot.waitSignal(v2.conversation_opened, timeout=10000) as sig:
        pass
    assert sig.args[0] == first and [m.text for m in v2._messages()] == ["first chat", "a"]


def test_long_reply_ends_with_its_last_line_in_view(qtbot, store):
    para = "A line of the answer that is long enough to wrap in the transcript. " * 8
    text = "\n\n".join(f"{para} ({i})" for i in range(12)) + "\n\nTHE END."
    v = _view(qtbot, store, FakeBackend([Reply(text=text, usage=USAGE, chunk=400)]))
    _send(qtbot, v, "tell me a lot")
    qtbot.wait(200)
    bar = v.scroll.verticalScrollBar()
    last = v._messages()[-1]
    vp = v.scroll.viewport()
    bottom = last.mapTo(vp, last.rect().bottomLeft()).y()
    # The thumb is at the end and the view shows the reply's end: they agree.
    assert bar.maximum() > 0 and bar.value() == bar.maximum()
    assert 0 < bottom <= vp.height()


def test_escape_clears_the_conversation_search(qtbot, store):
    v = _view(qtbot, store)
    v.search.setFocus()
    qtbot.keyClicks(v.search, "pasta")
    assert v.search.text() == "pasta"
    qtbot.keyClick(v.search, Qt.Key.Key_Escape)
    assert v.search.text() == ""


# -- images and files ---------------------------------------------------------------------------------
def test_image_dropped_pasted_attached_goes_to_the_real_engine_and_is_stored(qtbot, store, engine, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(_png())
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n")
    v = _view(qtbot, store, engine, "tiny")
    v.max_tokens = 4
    # Drop on the composer: files come in as attachments (Copy, never Move).
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(photo)), QUrl.fromLocalFile(str(notes))])
    drop = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction | Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    v.input.dropEvent(drop)
    assert drop.dropAction() == Qt.DropAction.CopyAction
    # Paste: an image on the clipboard.
    QGuiApplication.clipboard().setImage(QImage(20, 10, QImage.Format.Format_RGB32))
    v.input.paste()
    assert [a.name for a in v.attachments.items] == ["photo.png", "notes.txt", "pasted image.png"]
    # A file that is not an image nor text is refused with a message for a person.
    bad = tmp_path / "clip.bin"
    bad.write_bytes(b"\x00\x01\x02garbage" * 10)
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.attachments.add([(bad, bad.name)])
    assert "clip.bin cannot be attached" in sig.args[0]
    reason = _send(qtbot, v, "what is in the picture?")
    assert reason in ("stop", "length")
    # The engine got the images as image parts (the API's path), the file's text as text.
    req = next(m for m in v.session.request_messages() if m["role"] == "user")
    kinds = [p["type"] for p in req["content"]]
    assert kinds == ["image", "text", "image", "text"] and isinstance(req["content"][0]["image"], bytes)
    ids, _ = engine.encode(engine_request(v))
    pad = engine.model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(pad) > 0
    user = v._messages()[0]
    assert user.image_count == 2 and "notes.txt" in " ".join(x.text() for x in user.findChildren(QLabel))
    assert not v.attachments.items and not v.attachments.isVisible()
    # Stored with the conversation: a restart shows the thumbnails again.
    assert v.writer.flush(10)
    assert len(store.attachments(v.thread_id)) == 2
    v2 = _view(qtbot, store, reopen=False)
    with qtbot.waitSignal(v2.conversation_opened, timeout=10000):
        v2.open_conversation(v.thread_id)
    w = v2._messages()[0]
    assert w.image_count == 2 and w.text == "what is in the picture?"
    pix = [x.pixmap() for x in w.findChildren(QLabel) if x.objectName() == "messageImage"]
    assert pix and not pix[0].isNull() and pix[0].width() > 0


def engine_request(v: ChatView):
    from engine import GenerationRequest

    return GenerationRequest(messages=v.session.request_messages(), enable_thinking=True)


# -- settings per conversation -------------------------------------------------------------------------
def test_system_prompt_and_sampling_are_sent_and_kept_per_conversation(qtbot, store):
    fake = FakeBackend([Reply(text="a", usage=USAGE), Reply(text="b", usage=USAGE)])
    v = _view(qtbot, store, fake)
    v.settings_button.click()
    assert v.settings_panel.isVisible()
    assert v.settings_panel.temperature.value() == 1.0  # the thinking profile's, shown
    v.settings_panel.system.setPlainText("Answer like a pirate.")
    v.settings_panel.temperature.setValue(0.3)
    v.settings_panel.top_p.setValue(0.5)
    v.settings_panel.max_tokens.setValue(777)
    _send(qtbot, v, "hello")
    req = fake.requests[-1]
    assert req.messages[0] == {"role": "system", "content": "Answer like a pirate."}
    assert (req.sampling.temperature, req.sampling.top_p, req.max_tokens) == (0.3, 0.5, 777)
    assert "temp 0.3" in v.sampling_label.text() and "system prompt" in v.sampling_label.text()
    tid = v.thread_id
    assert v.writer.flush(10)
    assert store.thread(tid).meta == {
        "preset": "thinking",
        "thinking": True,
        "max_tokens": 777,
        "system": "Answer like a pirate.",
        "temperature": 0.3,
        "top_p": 0.5,
    }
    # A new conversation starts from the defaults; the old one brings its own back.
    v.new_conversation()
    assert v.settings_panel.system.toPlainText() == "" and v.settings_panel.temperature.value() == 1.0
    v.profile.setCurrentText("coding")
    assert v.settings_panel.temperature.value() == 0.6  # the profile's numbers, visible
    with qtbot.waitSignal(v.conversation_opened, timeout=10000):
        v.open_conversation(tid)
    p = v.settings_panel
    assert (p.system.toPlainText(), p.temperature.value(), p.top_p.value(), p.max_tokens.value()) == (
        "Answer like a pirate.",
        0.3,
        0.5,
        777,
    )
    p.reset_button.click()  # back to the profile's values
    assert v.session.settings.temperature is None and p.temperature.value() == 1.0


# -- message actions -------------------------------------------------------------------------------------
def test_copy_edit_resend_and_switch_versions(qtbot, store, dialogs):
    fake = FakeBackend([Reply(text=t, usage=USAGE) for t in ("Paris.", "Rome.", "Berlin.")])
    v = _view(qtbot, store, fake)
    _send(qtbot, v, "Capital of France?")
    user, reply = v._messages()
    reply.buttons["copy"].click()
    assert QGuiApplication.clipboard().text() == "Paris."
    # Edit and resend: a new version of the question, and a new answer after it.
    user.buttons["edit"].click()
    assert user.editor is not None and user.editor.toPlainText() == "Capital of France?"
    user.editor.setPlainText("Capital of Italy?")
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        next(b for b in user.findChildren(type(v.send_button)) if b.text() == "Send").click()
    assert [m.text for m in v._messages()] == ["Capital of Italy?", "Rome."]
    first = v._messages()[0]
    assert first.version_label.text() == "2/2" and first.prev_button.isVisible()
    # ‹ shows the earlier question with its own answer; › comes back.
    first.prev_button.click()
    assert [m.text for m in v._messages()] == ["Capital of France?", "Paris."]
    assert v._messages()[0].version_label.text() == "1/2"
    v._messages()[0].next_button.click()
    assert [m.text for m in v._messages()] == ["Capital of Italy?", "Rome."]
    # Regenerate keeps the earlier answer as a version.
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        v._messages()[1].buttons["regenerate"].click()
    assert [m.text for m in v._messages()] == ["Capital of Italy?", "Berlin."]
    assert v._messages()[1].version_label.text() == "2/2"
    v._messages()[1].prev_button.click()
    assert v._messages()[1].text == "Rome."
    # All of it is stored: a restart shows the branch last chosen, with its versions.
    assert v.writer.flush(10)
    assert [m["content"] for m in store.messages(v.thread_id)] == ["Capital of Italy?", "Rome."]
    v2 = _view(qtbot, store, reopen=False)
    with qtbot.waitSignal(v2.conversation_opened, timeout=10000):
        v2.open_conversation(v.thread_id)
    assert [m.version_label.text() for m in v2._messages()] == ["2/2", "1/2"]
    # Delete (after a confirmation) removes one message.
    dialogs.answer("Delete")
    v2._messages()[1].buttons["delete"].click()
    assert [m.text for m in v2._messages()] == ["Capital of Italy?"]
    assert v2.writer.flush(10) and [m["content"] for m in store.messages(v.thread_id)] == [
        "Capital of Italy?"
    ]


def test_right_click_offers_the_message_actions(qtbot, store):
    v = _view(qtbot, store, FakeBackend([Reply(text="Hello **there**.", usage=USAGE)]))
    _send(qtbot, v, "hi")
    user, reply = v._messages()
    seen: dict[str, list[str]] = {}

    def close_menu() -> None:
        menu = QApplication.activePopupWidget()
        if isinstance(menu, QMenu):
            seen.setdefault("menu", [a.text() for a in menu.actions() if a.text()])
            menu.close()

    timer = QTimer(interval=20)
    timer.timeout.connect(close_menu)
    timer.start()
    # Right-click on the answer's text gives this message's menu, not the label's own.
    label = reply.body.findChildren(QLabel)[0]
    assert label.contextMenuPolicy() == Qt.ContextMenuPolicy.NoContextMenu
    assert user.body.contextMenuPolicy() == Qt.ContextMenuPolicy.NoContextMenu
    reply._menu(reply.rect().center())
    timer.stop()
    assert seen["menu"] == ["Copy Message", "Regenerate", "Delete Message"]
    assert user.buttons.keys() == {"copy", "edit", "delete"}


def test_regenerate_that_fails_shows_the_earlier_answer_again(qtbot, store):
    fake = FakeBackend(
        [
            Reply(text="Kept answer.", usage=USAGE),
            Reply(text="", finish_reason="error", error="out of memory", error_kind="internal"),
        ]
    )
    v = _view(qtbot, store, fake)
    _send(qtbot, v, "q")
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        v.regenerate()
    assert [m.text for m in v._messages()] == ["q", "Kept answer."]
    assert v.history[-1]["content"] == "Kept answer."


# -- export, dates ---------------------------------------------------------------------------------------
def test_export_markdown_and_json_and_dates_in_the_list(qtbot, store, tmp_path):
    fake = FakeBackend([Reply(reasoning="Count.", text="Two.", usage=USAGE), Reply(text="2", usage=USAGE)])
    v = _view(qtbot, store, fake)
    assert v.export_conversation(tmp_path / "none.md") is None  # nothing yet: a hint, no file
    v.attachments.add([(_png(), "red.png")])
    _send(qtbot, v, "1+1?")
    with qtbot.waitSignal(v.reply_finished, timeout=10000):
        v.regenerate()
    md = v.export_conversation(tmp_path / "chat.md").read_text()
    assert md.startswith("# 1+1?") and "## You" in md and "## Locus" in md and "1+1?" in md
    assert "![red.png](data:image/png;base64," in md and "\n2\n" in md
    doc = json.loads(v.export_conversation(tmp_path / "chat.json").read_text())
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert len(doc["tree"]["nodes"]) == 3 and doc["settings"]["preset"] == "thinking"  # both answers kept
    assert {n["message"].get("reasoning_content") for n in doc["tree"]["nodes"]} >= {"Count."}
    # The list shows when each conversation was last written to.
    qtbot.waitUntil(lambda: v.conversations.count() == 1, timeout=10000)
    assert v.conversations.item(0).data(257) == time.strftime(
        "%H:%M", time.localtime(store.thread(v.thread_id).updated)
    )


def test_list_dates():
    from ui.chat_view import list_date

    now = time.mktime((2026, 6, 15, 12, 0, 0, 0, 0, -1))
    assert list_date(now - 3600, now) == "11:00"
    assert list_date(time.mktime((2026, 3, 2, 9, 0, 0, 0, 0, -1)), now) == "Mar 2"
    assert list_date(time.mktime((2024, 3, 2, 9, 0, 0, 0, 0, -1)), now) == "2024-03-02"
