"""app.chat_session.ChatSession: a chat without a window, over the fake backend and a real SQLite
store (what the chat view and `locus chat` both drive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.chat_session import ChatSession, ChatSettings, ReplyEnd
from app.store import Store, StoreWriter
from engine import PRESETS, BackendInfo, Usage
from tests.fakebackend import FakeBackend, Reply

USAGE = Usage(prompt_tokens=10, completion_tokens=5, generation_tps=12.5)


@pytest.fixture
def writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "locus.db")
    w = StoreWriter(store)
    yield w
    w.close()
    store.close()


def record(session: ChatSession) -> list[tuple[str, object]]:
    """Every event the session emits, by name, in order."""
    seen: list[tuple[str, object]] = []
    ev = session.events
    for name in ("conversation", "message_added", "reply_removed", "reply_started", "reply_finished"):
        getattr(ev, name).connect(lambda v, n=name: seen.append((n, v)))
    ev.reply_changed.connect(lambda u: seen.append(("reply_changed", u.event)))
    return seen


def reply(session: ChatSession, backend: FakeBackend) -> ReplyEnd:
    """Generate the next reply the way a front end does: request, events folded one by one."""
    ends: list[ReplyEnd] = []
    session.events.reply_finished.connect(ends.append)
    for ev in backend.submit(session.start_reply()).events():
        session.add_event(ev)
    session.events.reply_finished.disconnect(ends.append)
    return ends[-1]


def test_a_turn_is_requested_folded_and_stored(writer):
    fake = FakeBackend([Reply(reasoning="Hmm.", text="Hello there.", usage=USAGE)])
    session = ChatSession(writer, settings=ChatSettings(preset="coding", thinking=False, max_tokens=64))
    session.set_backend(fake, "fake")
    seen = record(session)
    session.add_user("Hi\nsecond line")
    end = reply(session, fake)
    # The request: the history and the settings.
    req = fake.requests[-1]
    assert req.messages == [{"role": "user", "content": "Hi\nsecond line"}]
    assert (req.enable_thinking, req.max_tokens, req.sampling) == (False, 64, PRESETS["coding"])
    assert req.session == f"chat-{session.thread_id}"
    # The reply, folded: one assistant message with its footer.
    assert end.finish_reason == "stop" and end.error is None
    assert end.stats == "12.5 tok/s · context 15/32768" and end.footer == end.stats
    msg = session.history[-1]
    assert msg == {
        "role": "assistant",
        "content": "Hello there.",
        "reasoning_content": "Hmm.",
        "meta": {"footer": end.stats, "finish_reason": "stop"},
    }
    names = [n for n, _ in seen]
    assert names[:2] == ["message_added", "reply_started"] and names[-1] == "reply_finished"
    assert set(names[2:-1]) == {"reply_changed"}
    # Both messages are in SQLite, under a conversation titled by the first line.
    assert writer.flush(10)
    store = writer.store
    assert store.messages(session.thread_id) == session.history
    t = store.thread(session.thread_id)
    assert (t.title, t.kind, t.model, t.meta) == (
        "Hi",
        "chat",
        "fake",
        {"preset": "coding", "thinking": False, "max_tokens": 64},
    )


def test_the_ui_key_is_not_sent_and_regenerate_drops_the_stored_reply(writer):
    fake = FakeBackend([Reply(text="first", usage=USAGE), Reply(text="second", usage=USAGE)])
    session = ChatSession(writer)
    session.set_backend(fake)
    seen = record(session)
    session.add_user("q")
    reply(session, fake)
    assert session.drop_last_reply()
    assert [v["content"] for n, v in seen if n == "reply_removed"] == ["first"]  # type: ignore[index]
    assert session.history[-1]["role"] == "user"
    reply(session, fake)
    session.add_user("more")
    reply(session, fake)
    # The footer kept with a reply is the window's, never the model's.
    assert "meta" in session.history[1] and all("meta" not in m for m in fake.requests[-1].messages)
    assert [m["content"] for m in session.history] == ["q", "second", "more", "second"]
    assert writer.flush(10)
    assert [m["content"] for m in writer.store.messages(session.thread_id)] == [
        "q",
        "second",
        "more",
        "second",
    ]


def test_errors_and_stops(writer):
    fake = FakeBackend(
        [
            Reply(text="", finish_reason="error", error="out of memory", error_kind="internal"),
            Reply(text="partial", finish_reason="cancelled", usage=USAGE),
        ]
    )
    session = ChatSession(writer)
    info = BackendInfo(name="far", context_tokens=0, remote="http://10.0.0.2:8000/v1")
    fake._info = info
    session.set_backend(fake, "far")
    session.add_user("q")
    end = reply(session, fake)
    assert (end.finish_reason, end.error, end.footer, end.message) == (
        "error",
        "out of memory",
        "Error: out of memory",
        None,
    )
    assert [m["role"] for m in session.history] == ["user"]  # nothing written, nothing added
    end = reply(session, fake)
    assert end.footer == "12.5 tok/s · context 15 · remote: far at http://10.0.0.2:8000/v1 · stopped"
    assert session.history[-1]["content"] == "partial"
    # A worker that failed before any Done.
    session.start_reply()
    ends: list[ReplyEnd] = []
    session.events.reply_finished.connect(ends.append)
    session.fail("the bridge broke")
    assert ends == [ReplyEnd("error", "Error: the bridge broke", error="the bridge broke")]
    assert not session.replying


def test_open_settings_delete_and_undo(writer):
    fake = FakeBackend([Reply(text="A", usage=USAGE)])
    first = ChatSession(writer)
    first.set_backend(fake)
    first.add_user("q")
    reply(first, fake)
    first.update_settings(preset="instruct", thinking=False)
    tid = first.thread_id
    # Another session (a restart) opens it: history, settings and the last footer come back.
    session = ChatSession(writer)
    seen = record(session)
    session.begin_open(tid)
    assert session.opening == tid and seen[-1][1].loading
    assert session.finish_open(session.load(tid))
    c = seen[-1][1]
    assert (c.thread_id, [m["content"] for m in c.messages]) == (tid, ["q", "A"])
    assert (c.settings.preset, c.settings.thinking) == ("instruct", False) and "tok/s" in c.footer
    # A read that finishes after another conversation was opened is dropped.
    other = writer.call(writer.store.create_thread, "chat", "other")
    session.begin_open(other)
    assert not session.finish_open(session.load(tid)) and session.thread_id == other
    assert [t.title for t in session.search("")] == ["other", "q"]
    session.rename(tid, "  ")
    assert writer.flush(10) and writer.store.thread(tid).title == "Untitled"
    # Delete and undo bring back the same conversation.
    session.delete(session.load(tid))
    assert writer.flush(10) and [t.id for t in writer.store.threads("chat")] == [other]
    assert session.undo_delete() == tid and session.undo_delete() is None
    assert writer.flush(10) and [m["content"] for m in writer.store.messages(tid)] == ["q", "A"]
    assert writer.store.thread(tid).meta == {"preset": "instruct", "thinking": False, "max_tokens": 2048}


def test_tool_calls_and_results_without_a_store():
    calls = [{"name": "add", "arguments": {"a": 2}}]
    fake = FakeBackend([Reply(text="", tool_calls=calls, usage=USAGE), Reply(text="4", usage=USAGE)])
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    session = ChatSession(system="Be brief.", tools=lambda: tools)
    session.set_backend(fake)
    session.add_user("2+2?")
    end = reply(session, fake)
    cid = end.message["tool_calls"][0]["id"] if end.message else ""  # the fake's id for the call
    call = {"id": cid, "type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    assert end.message is not None and end.message["tool_calls"] == [call]
    session.add_tool_results([{"role": "tool", "tool_call_id": cid, "content": "4"}])
    reply(session, fake)
    assert fake.requests[-1].tools == tools
    assert [m["role"] for m in fake.requests[-1].messages] == ["system", "user", "assistant", "tool"]
    session.truncate(2)  # a failed turn is forgotten
    assert [m["role"] for m in session.history] == ["system", "user"]
    session.new_conversation()
    assert session.history == [{"role": "system", "content": "Be brief."}] and session.thread_id is None
    with pytest.raises(RuntimeError, match="no store"):
        session.load("x")


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_images_files_and_settings_go_into_the_request_and_the_store(writer, tmp_path):
    from app.chat_session import AttachmentError, make_attachment

    fake = FakeBackend([Reply(text="A green square.", usage=USAGE)])
    session = ChatSession(writer)
    session.set_backend(fake)
    session.update_settings(system="Be exact.", temperature=0.2, top_p=0.9, max_tokens=99)
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\nmilk")
    image, text_file = make_attachment(_png(), "sq.png"), make_attachment(notes)
    assert (image.media_type, text_file.media_type, text_file.name) == ("image/png", "text/plain", "notes.md")
    session.add_user("What is this?", [image, text_file])
    reply(session, fake)
    req = fake.requests[-1]
    assert req.messages[0] == {"role": "system", "content": "Be exact."}
    parts = req.messages[1]["content"]
    assert parts[0] == {"type": "image", "image": image.data}  # the engine's (and API's) image part
    assert parts[1]["type"] == "text" and "milk" in parts[1]["text"] and "file" not in parts[1]
    assert parts[2] == {"type": "text", "text": "What is this?"}
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.top_k, req.max_tokens) == (
        0.2,
        0.9,
        20,
        99,
    )
    assert writer.flush(10)
    assert writer.store.attachments(session.thread_id) == {image.sha256: ("image/png", image.data)}
    # A restart reads it back: images from the store, settings from the conversation.
    other = ChatSession(writer)
    other.begin_open(session.thread_id)
    assert other.finish_open(other.load(session.thread_id))
    assert other.request_messages()[:2] == req.messages and other.settings.temperature == 0.2
    # Files that cannot be attached are said so.
    for data, name, why in [
        (b"", "e.png", "is empty"),
        (b"\x00\xffnot an image", "x.bin", "cannot be attached"),
    ]:
        with pytest.raises(AttachmentError, match=why):
            make_attachment(data, name)


def test_stored_settings_that_do_not_fit_are_left_out():
    s = ChatSettings().with_meta(
        {"preset": "nope", "thinking": False, "max_tokens": -3, "temperature": 9, "top_p": "x", "system": 5}
    )
    assert (s.preset, s.thinking, s.max_tokens, s.temperature, s.top_p, s.system) == (
        "thinking",
        False,
        2048,
        None,
        None,
        "",
    )
    s = ChatSettings().with_meta({"preset": "coding", "temperature": 0.0, "top_p": 0.5})
    assert s.effective_sampling == PRESETS["coding"].with_(temperature=0.0, top_p=0.5)


def test_edit_regenerate_versions_and_delete(writer):
    replies = ["Paris.", "Rome.", "Rome, Italy.", "ok"]
    fake = FakeBackend([Reply(text=t, usage=USAGE) for t in replies])
    session = ChatSession(writer)
    session.set_backend(fake)
    session.add_user("France?")
    reply(session, fake)
    session.edit_user(0, "Italy?")  # a new version of the question
    reply(session, fake)
    assert [m["content"] for m in session.history] == ["Italy?", "Rome."]
    assert session.versions(0) == (2, 2) and session.versions(1) == (1, 1)
    assert session.regenerate_at(1)
    assert [m["content"] for m in session.history] == ["Italy?"]
    reply(session, fake)
    assert [m["content"] for m in session.history] == ["Italy?", "Rome, Italy."]
    assert session.versions(1) == (2, 2)
    assert session.switch_version(0, -1)  # the first question, with its own answer
    assert [m["content"] for m in session.history] == ["France?", "Paris."] and session.versions(0) == (1, 2)
    assert not session.switch_version(0, -1)
    assert session.switch_version(0, +1)  # back: the branch as it was last left
    assert [m["content"] for m in session.history] == ["Italy?", "Rome, Italy."]
    session.add_user("Thanks")
    reply(session, fake)
    session.delete_message(1)
    assert [m["content"] for m in session.history] == ["Italy?", "Thanks", "ok"]
    assert writer.flush(10)
    assert [m["content"] for m in writer.store.messages(session.thread_id)] == ["Italy?", "Thanks", "ok"]
    _, nodes = writer.store.tree(session.thread_id)
    assert len(nodes) == 6  # France?, Paris., Italy?, Rome., Thanks, ok: every earlier version kept
