"""A chat conversation without a window: history, settings, the requests they make, each reply's
events folded (engine.ReplyAccumulator), and storage in the SQLite store.

An evented model, after napari's `ViewerModel`: front ends subscribe to `session.events.<name>`
and render; the chat view (ui/chat_view.py) and `locus chat` (app/terminal_chat.py) both drive one.
Events are emitted on the thread that calls the session (the UI thread, the terminal's), except
`store_failed`, which comes from the store writer's thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from engine import (
    PRESETS,
    Done,
    Event,
    GenerationRequest,
    PromptProgress,
    ReplyAccumulator,
    SamplingParams,
    ToolCall,
    preset,
)

from .store import MessageNode, StoreWriter, ThreadRecord, new_thread_id, path_to

if TYPE_CHECKING:
    from engine import Backend

__all__ = [
    "Attachment",
    "AttachmentError",
    "ChatSession",
    "ChatSettings",
    "Conversation",
    "Emitter",
    "Loaded",
    "ReplyEnd",
    "ReplyUpdate",
    "SessionEvents",
    "make_attachment",
    "message_text",
]

T = TypeVar("T")
# Keys a message's dict may carry for the front end only; never sent to the model.
UI_KEYS = ("meta",)
# What a chat takes besides images: text files, inlined (their name shown, their text sent).
MAX_FILE_BYTES = 512 * 1024
MAX_IMAGE_BYTES = 40 * 1024 * 1024
_WIRE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class Emitter(Generic[T]):
    """One field's event: `connect(fn)`, and `fn(value)` runs for each `emit(value)`, in order."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[T], Any]] = []

    def connect(self, fn: Callable[[T], Any]) -> Callable[[T], Any]:
        self._listeners.append(fn)
        return fn

    def disconnect(self, fn: Callable[[T], Any]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def emit(self, value: T) -> None:
        for fn in list(self._listeners):
            fn(value)


@dataclass(frozen=True)
class ChatSettings:
    """How replies are asked for. `sampling`, when given, replaces the preset's; `temperature`
    and `top_p`, when given, replace those of either. `system` is the conversation's system prompt."""

    preset: str = "thinking"
    thinking: bool = True
    max_tokens: int = 2048
    sampling: SamplingParams | None = None
    stop: tuple[str, ...] = ()
    system: str = ""
    temperature: float | None = None
    top_p: float | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """What a stored conversation keeps of them (the optional ones only when set)."""
        out: dict[str, Any] = {"preset": self.preset, "thinking": self.thinking}
        out["max_tokens"] = self.max_tokens
        if self.system:
            out["system"] = self.system
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out

    def with_meta(self, meta: dict[str, Any]) -> ChatSettings:
        """These settings with a stored conversation's (values that do not fit are left out)."""
        name = meta.get("preset")
        return replace(
            self,
            preset=name if isinstance(name, str) and name in PRESETS else "thinking",
            thinking=bool(meta.get("thinking", True)),
            max_tokens=_number(meta.get("max_tokens"), int, 1, 1 << 20) or self.max_tokens,
            system=meta["system"] if isinstance(meta.get("system"), str) else "",
            temperature=_number(meta.get("temperature"), float, 0.0, 2.0),
            top_p=_number(meta.get("top_p"), float, 0.01, 1.0),
        )

    @property
    def effective_sampling(self) -> SamplingParams:
        """What the engine is asked to sample with."""
        base = self.sampling or preset(self.preset)
        return base.with_(temperature=self.temperature, top_p=self.top_p)


def _number(v: Any, kind: type, lo: float, hi: float) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        return None
    return kind(v)


@dataclass(frozen=True)
class Attachment:
    """An image (or a text file) the user put in a message; `sha256` names it in the store."""

    name: str
    media_type: str
    data: bytes
    sha256: str

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/")

    def part(self) -> dict[str, Any]:
        """The message part that names it (a text file's text is in the part itself)."""
        if self.is_image:
            return {"type": "image", "attachment": self.sha256, "media_type": self.media_type} | {
                "name": self.name
            }
        text = self.data.decode("utf-8")
        return {"type": "text", "text": f"<file name={self.name!r}>\n{text}\n</file>", "file": self.name}


class AttachmentError(ValueError):
    """A file that cannot go into a chat; the message says which and why."""


def make_attachment(source: str | Path | bytes, name: str = "") -> Attachment:
    """An image or UTF-8 text file for a message, from a path or bytes. Images are checked the
    way the engine reads them; formats an API client cannot send are kept as PNG."""
    if isinstance(source, str | Path):
        path = Path(source)
        name = name or path.name
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise AttachmentError(f"{name} is too large to attach (over {MAX_IMAGE_BYTES >> 20} MB)")
            data = path.read_bytes()
        except OSError as e:
            raise AttachmentError(f"cannot read {name}: {e.strerror or e}") from e
    else:
        data, name = bytes(source), name or "pasted image"
    if not data:
        raise AttachmentError(f"{name} is empty")
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        if len(data) > MAX_FILE_BYTES:
            raise AttachmentError(f"{name} is too long to attach (over {MAX_FILE_BYTES >> 10} KB of text)")
        return Attachment(name, "text/plain", data, sha)
    return _image_attachment(data, name)


def _image_attachment(data: bytes, name: str) -> Attachment:
    from engine import ImageError, load_image

    try:
        loaded = load_image(data)
    except ImageError as e:
        msg = str(e).removeprefix("image: ").removeprefix("image ")
        raise AttachmentError(f"{name} cannot be attached: {msg}") from e
    media = _WIRE_FORMATS.get(loaded.format or "")
    if media is None:  # BMP, TIFF…: kept as PNG, which every backend takes
        buf = io.BytesIO()
        loaded.image.save(buf, "PNG")
        data, media = buf.getvalue(), "image/png"
    return Attachment(name, media, data, hashlib.sha256(data).hexdigest())


def message_text(m: dict[str, Any]) -> str:
    """A message's text as the user wrote or reads it (attached files' text left out)."""
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        texts = [p for p in c if isinstance(p, dict) and p.get("type") == "text" and "file" not in p]
        return "".join(str(p.get("text") or "") for p in texts)
    return ""


@dataclass(frozen=True)
class Loaded:
    """A stored conversation as read: the thread, every message of every branch, its images."""

    thread: ThreadRecord
    head: str | None
    nodes: list[MessageNode]
    images: dict[str, tuple[str, bytes]]
    dump: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation shown (the path to the head)."""
        return [n.message for n in path_to(self.head, self.nodes)]

    def __iter__(self) -> Any:  # `t, messages = loaded`, as before branches
        return iter((self.thread, self.messages))


@dataclass(frozen=True)
class Conversation:
    """The conversation shown changed: a new one, one being read (`loading`), or one read."""

    thread_id: str | None
    messages: list[dict[str, Any]]
    settings: ChatSettings
    loading: bool = False
    footer: str = ""  # the last reply's footer (not an error's)


@dataclass(frozen=True)
class ReplyUpdate:
    """A reply's event folded in: `reply` holds everything so far."""

    reply: ReplyAccumulator
    event: Event


@dataclass(frozen=True)
class ReplyEnd:
    """A reply ended. `stats` is speed and context; `footer` adds how it ended (kept with it)."""

    finish_reason: str
    footer: str
    stats: str = ""
    error: str | None = None
    message: dict[str, Any] | None = None  # the assistant message added (None: nothing written)


@dataclass
class SessionEvents:
    """What a front end may subscribe to, field by field."""

    conversation: Emitter[Conversation] = field(default_factory=Emitter)
    message_added: Emitter[dict[str, Any]] = field(default_factory=Emitter)  # a user or tool message
    reply_removed: Emitter[dict[str, Any]] = field(default_factory=Emitter)  # regenerate dropped it
    reply_started: Emitter[ReplyAccumulator] = field(default_factory=Emitter)
    reply_changed: Emitter[ReplyUpdate] = field(default_factory=Emitter)
    prompt_progress: Emitter[PromptProgress] = field(default_factory=Emitter)
    reply_finished: Emitter[ReplyEnd] = field(default_factory=Emitter)
    settings: Emitter[ChatSettings] = field(default_factory=Emitter)
    store_failed: Emitter[BaseException] = field(default_factory=Emitter)  # the writer's thread


class ChatSession:
    """One chat: its history and settings, the request for the next reply, the reply being
    folded, and (with a `writer`) every message stored as it is finished.

    The stored conversation is a tree: editing a message or regenerating a reply adds a sibling
    (a version), and `history` is the path shown. `tools`, when given, returns the tool specs for
    each request (the terminal's MCP servers).
    """

    def __init__(
        self,
        writer: StoreWriter | None = None,
        *,
        settings: ChatSettings | None = None,
        system: str | None = None,
        tools: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.writer = writer
        self.settings = settings or ChatSettings()
        self.defaults = self.settings  # what a new conversation starts with
        self.default_preset = self.settings.preset
        self.system = system
        self.tools = tools
        self.events = SessionEvents()
        self.backend: Backend | None = None
        self.model_name = ""
        self._context_tokens = 0
        self._remote: str | None = None
        self.thread_id: str | None = None
        self.history: list[dict[str, Any]] = self._fresh()
        self._uids: list[str | None] = [None] * len(self.history)  # each message's node (None: unstored)
        self._nodes: dict[str, MessageNode] = {}  # every branch, oldest first
        self.images: dict[str, tuple[str, bytes]] = {}  # sha256 -> (media type, bytes)
        self.opening: str | None = None  # a conversation being read from the store
        self.reply: ReplyAccumulator | None = None  # the reply being generated
        self._started = 0.0
        self._deleted: Loaded | None = None
        self._replaced: str | None = None  # the reply a regenerate replaces (shown again if it fails)

    # -- the model ------------------------------------------------------------------------------
    def set_backend(self, backend: Backend | None, model_name: str = "") -> None:
        """The model replies come from (None: none loaded)."""
        self.backend = backend
        self.model_name = model_name
        # Read once: a reply that ends after the model is unloaded still gets its footer.
        self._context_tokens = backend.info.context_tokens if backend is not None else 0
        self._remote = backend.info.remote if backend is not None else None

    # -- conversations --------------------------------------------------------------------------
    def _fresh(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _emit_conversation(self, footer: str = "") -> None:
        c = Conversation(self.thread_id, list(self.history), self.settings, footer=footer)
        self.events.conversation.emit(c)

    def new_conversation(self) -> None:
        """Start afresh (the system prompt kept), with the default settings and preset."""
        self.thread_id, self.history, self.opening = None, self._fresh(), None
        self._uids, self._nodes, self.images = [None] * len(self.history), {}, {}
        self.settings = replace(self.defaults, preset=self.default_preset)
        self._emit_conversation()

    def load(self, thread_id: str) -> Loaded:
        """Read a stored conversation (after every queued write; call it off the UI thread)."""
        writer = self._writer()
        dump = writer.call(writer.store.dump_thread, thread_id)
        nodes = [
            MessageNode(uid, parent, json.loads(body), created)
            for _seq, _role, body, created, uid, parent in dump["messages"]
        ]
        return Loaded(dump["thread"], dump["head"], nodes, dump["attachments"], dump)

    def begin_open(self, thread_id: str) -> None:
        """Show `thread_id` as being read; `finish_open` with what `load` read shows it."""
        self.thread_id, self.history, self.opening = thread_id, [], thread_id
        self._uids, self._nodes = [], {}
        self.events.conversation.emit(Conversation(thread_id, [], self.settings, loading=True))

    def finish_open(self, loaded: Loaded) -> bool:
        """Take a read conversation; False when another was opened meanwhile."""
        t = loaded.thread
        if t.id != self.opening:
            return False
        self.opening = None
        self._nodes = {n.uid: n for n in loaded.nodes}
        self.images = dict(loaded.images)
        self._show_path(loaded.head)
        self.settings = replace(self.defaults, preset=self.default_preset).with_meta(t.meta)
        footer = ""
        for m in self.history:
            if m.get("role") == "assistant":
                meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
                footer = str(meta.get("footer") or "")
        footer = "" if footer.startswith("Error") else footer
        self._emit_conversation(footer)
        if self.writer is not None:
            self._write(self.writer.store.set_state, "last_chat", t.id)
        return True

    def _show_path(self, head: str | None) -> None:
        path = path_to(head, list(self._nodes.values()))
        self.history = [n.message for n in path]
        self._uids = [n.uid for n in path]

    def last_opened(self) -> str | None:
        """The conversation shown when Locus last quit, if it is still stored (a store read)."""
        writer = self._writer()

        def read() -> str | None:
            tid = writer.store.state("last_chat")
            return tid if tid and any(t.id == tid for t in writer.store.threads("chat", 100000)) else None

        return writer.call(read)

    def search(self, query: str, limit: int = 500) -> list[ThreadRecord]:
        """Chat conversations matching `query` in titles and message text (a store read)."""
        writer = self._writer()
        return writer.call(writer.store.search, query, "chat", limit)

    def rename(self, thread_id: str, title: str) -> None:
        self._write(self._writer().store.rename_thread, thread_id, title.strip() or "Untitled")

    def delete(self, loaded: Loaded) -> None:
        """Delete a conversation (what `load` read of it); `undo_delete` brings it back."""
        self._write(self._writer().store.delete_thread, loaded.thread.id)
        self._deleted = loaded
        if loaded.thread.id == self.thread_id:
            self.new_conversation()

    def undo_delete(self) -> str | None:
        """Put the last deleted conversation back (every branch, image and setting); its id."""
        if self._deleted is None:
            return None
        loaded, self._deleted = self._deleted, None
        self._write(self._writer().store.restore_thread, loaded.dump)
        return loaded.thread.id

    def update_settings(self, **changes: Any) -> None:
        """Change the settings (a stored conversation keeps them in its metadata)."""
        self.settings = replace(self.settings, **changes)
        if self.thread_id and self.writer is not None:
            self._write(self.writer.store.set_thread_meta, self.thread_id, self.settings.meta)
        self.events.settings.emit(self.settings)

    # -- versions and branches ------------------------------------------------------------------
    def versions(self, index: int) -> tuple[int, int]:
        """(position from 1, count) of the shown message `index` among its versions."""
        uid = self._uids[index] if 0 <= index < len(self._uids) else None
        if uid is None or uid not in self._nodes:
            return 1, 1
        sibs = self._siblings(uid)
        return sibs.index(uid) + 1, len(sibs)

    def _siblings(self, uid: str) -> list[str]:
        parent = self._nodes[uid].parent
        return [u for u, n in self._nodes.items() if n.parent == parent]

    def _leaf(self, uid: str) -> str:
        """The newest message down from `uid` (a branch shows where it was last taken)."""
        while kids := [u for u, n in self._nodes.items() if n.parent == uid]:
            uid = kids[-1]
        return uid

    def switch_version(self, index: int, step: int) -> bool:
        """Show the previous (-1) or next (+1) version of message `index`, with what followed it."""
        uid = self._uids[index] if 0 <= index < len(self._uids) else None
        if uid is None or uid not in self._nodes or self.replying:
            return False
        sibs = self._siblings(uid)
        pos = sibs.index(uid) + step
        if not 0 <= pos < len(sibs):
            return False
        self._set_head(self._leaf(sibs[pos]))
        self._emit_conversation()
        return True

    def _set_head(self, head: str | None) -> None:
        self._show_path(head)
        if self.thread_id and self.writer is not None:
            self._write(self.writer.store.set_head, self.thread_id, head)

    def edit_user(self, index: int, text: str, attachments: list[Attachment] | None = None) -> dict[str, Any]:
        """Replace user message `index` by a new version (earlier versions and what followed them
        are kept); the history then ends with it, ready for a reply. Images are kept unless given."""
        old = self.history[index]
        if old.get("role") != "user":
            raise ValueError("only your own messages can be edited")
        if attachments is None:
            parts = old.get("content") if isinstance(old.get("content"), list) else []
            kept = [p for p in parts if isinstance(p, dict) and (p.get("type") == "image" or "file" in p)]
            content: Any = [*kept, {"type": "text", "text": text}] if kept else text
        else:
            content = self._content(text, attachments)
        self.truncate(index)
        self._emit_conversation()
        return self._append({"role": "user", "content": content}, self.events.message_added)

    def delete_message(self, index: int) -> None:
        """Delete message `index` (the messages after it stay: they now follow the one before)."""
        uid = self._uids[index]
        del self.history[index], self._uids[index]
        if uid is not None and uid in self._nodes:
            parent = self._nodes.pop(uid).parent
            for u, n in list(self._nodes.items()):
                if n.parent == uid:
                    self._nodes[u] = replace(n, parent=parent)
            head = next((u for u in reversed(self._uids) if u is not None), None)
            if self.thread_id and self.writer is not None:
                self._write(self.writer.store.delete_message, self.thread_id, uid, head)
        self._emit_conversation()

    # -- turns ----------------------------------------------------------------------------------
    def _content(self, text: str, attachments: list[Attachment]) -> Any:
        if not attachments:
            return text
        for a in attachments:
            if a.is_image:
                self.images[a.sha256] = (a.media_type, a.data)
        return [*(a.part() for a in attachments), {"type": "text", "text": text}]

    def add_user(self, text: str, attachments: list[Attachment] | None = None) -> dict[str, Any]:
        """Append (and store) the user's message with its images and files; a first message makes
        the stored conversation."""
        attachments = list(attachments or [])
        if self.thread_id is None:
            self.thread_id = new_thread_id()
            if self.writer is not None:
                first = text.strip().splitlines()[0][:60] if text.strip() else ""
                self._write(
                    self.writer.store.create_thread,
                    "chat",
                    first or (attachments[0].name if attachments else "New conversation"),
                    model=self.model_name,
                    meta=self.settings.meta,
                    id=self.thread_id,
                )
        content = self._content(text, attachments)
        return self._append({"role": "user", "content": content}, self.events.message_added)

    def add_tool_results(self, messages: list[dict[str, Any]]) -> None:
        """Append the results of the last reply's tool calls (the next reply reads them)."""
        for m in messages:
            self._append(m, self.events.message_added)

    def drop_last_reply(self) -> bool:
        """Take the last reply out of the history to answer again (it stays stored as an earlier
        version); whether the history now ends with the user's message."""
        if self.history and self.history[-1].get("role") == "assistant":
            gone = self.history.pop()
            self._replaced = self._uids.pop()
            self.events.reply_removed.emit(gone)
        return bool(self.history) and self.history[-1].get("role") in ("user", "tool")

    def regenerate_at(self, index: int) -> bool:
        """Answer again from reply `index` (it and what followed stay as an earlier version);
        whether the history now ends where a reply can start."""
        if self.history[index].get("role") != "assistant" or self.replying:
            return False
        self._replaced = self._uids[index]
        self.truncate(index)
        self._emit_conversation()
        return bool(self.history) and self.history[-1].get("role") in ("user", "tool")

    def truncate(self, length: int) -> None:
        """Forget the history past `length` messages (stored messages stay as a branch)."""
        del self.history[length:], self._uids[length:]

    def request_messages(self) -> list[dict[str, Any]]:
        """The history as the engine takes it: system prompt first, stored images as bytes."""
        out = [{k: v for k, v in m.items() if k not in UI_KEYS} for m in self.history]
        if self.settings.system and not (out and out[0].get("role") == "system"):
            out.insert(0, {"role": "system", "content": self.settings.system})
        for i, m in enumerate(out):
            if isinstance(m.get("content"), list):
                out[i] = {**m, "content": [self._wire_part(p) for p in m["content"]]}
        return out

    def _wire_part(self, p: Any) -> Any:
        if not isinstance(p, dict):
            return p
        if p.get("type") == "image" and "attachment" in p:
            found = self.images.get(str(p["attachment"]))
            if found is None:
                return {"type": "text", "text": f"[image {p.get('name') or ''} is missing from the store]"}
            return {"type": "image", "image": found[1]}
        return {"type": "text", "text": str(p.get("text") or "")} if p.get("type") == "text" else p

    def start_reply(self) -> GenerationRequest:
        """The request for the next reply (history + settings); its events go to `add_event`."""
        s = self.settings
        req = GenerationRequest(
            messages=self.request_messages(),
            tools=self.tools() if self.tools is not None else None,
            enable_thinking=s.thinking,
            sampling=s.effective_sampling,
            max_tokens=s.max_tokens,
            stop=list(s.stop),
            session=f"chat-{self.thread_id}" if self.thread_id else None,
        )
        self.reply = ReplyAccumulator()
        self._started = time.monotonic()
        self.events.reply_started.emit(self.reply)
        return req

    @property
    def replying(self) -> bool:
        """A reply has started and not ended."""
        return self.reply is not None and self.reply.done is None

    def rate(self) -> float:
        """Pieces of the reply per second so far (a display's speed while it streams)."""
        n = self.reply.deltas if self.reply is not None else 0
        return n / max(time.monotonic() - self._started, 1e-6)

    def add_event(self, ev: Event) -> None:
        """Fold one of the reply's events in; Done ends the reply (and stores it)."""
        reply = self.reply
        if reply is None or reply.done is not None:
            return
        reply.add(ev)
        if isinstance(ev, PromptProgress):
            self.events.prompt_progress.emit(ev)
        elif isinstance(ev, Done):
            self._finish(reply, ev)
        else:
            self.events.reply_changed.emit(ReplyUpdate(reply, ev))

    def fail(self, message: str) -> None:
        """The reply could not be generated at all (no Done will come)."""
        if self.reply is not None and self.reply.done is None:
            self.reply.add(Done("error", error=message, error_kind="internal"))
        self._restore_replaced()
        self.events.reply_finished.emit(ReplyEnd("error", f"Error: {message}", error=message))

    def _restore_replaced(self) -> None:
        """A regenerate that wrote nothing shows the reply it was to replace again."""
        old, self._replaced = self._replaced, None
        if old is not None and old in self._nodes:
            self._show_path(self._leaf(old))
            self._emit_conversation()

    def _finish(self, reply: ReplyAccumulator, done: Done) -> None:
        reason = done.finish_reason
        stats = self._stats(reply)
        footer = stats
        if self._remote and reason != "error":  # which replies left the machine, kept with them
            footer = (footer + f" · remote: {self.model_name} at {self._remote}").strip(" ·")
        if reason == "cancelled":
            footer = (footer + " · stopped").strip(" ·")
        elif reason == "error":
            footer = f"Error: {done.error}"
        elif reason == "length":
            footer += " · hit the token limit"
        msg = None
        if reply.text or reply.reasoning or reply.calls:
            msg = assistant_message(reply)
            # The footer (speed, context, "stopped") comes back with the conversation.
            msg["meta"] = {"footer": footer, "finish_reason": reason}
            self._replaced = None
            self._append(msg, None)
        error = (done.error or "generation failed") if reason == "error" else None
        end = ReplyEnd(reason, footer, stats, error, msg)
        if msg is None:
            self._restore_replaced()
        self.events.reply_finished.emit(end)

    def _stats(self, reply: ReplyAccumulator) -> str:
        u = reply.usage
        if u is None:
            return ""
        limit = self._context_tokens
        ctx = u.prompt_tokens + u.completion_tokens
        stats = f"{u.generation_tps:.1f} tok/s · context {ctx}" + (f"/{limit}" if limit else "")
        if u.draft_tokens:  # speculative decoding: how many drafts the model kept
            stats += f" · drafts {u.draft_accepted}/{u.draft_tokens}"
        return stats

    # -- storage --------------------------------------------------------------------------------
    def _writer(self) -> StoreWriter:
        if self.writer is None:
            raise RuntimeError("this chat session has no store")
        return self.writer

    def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue a store write (committed in order on the writer's thread)."""
        fut = self._writer().submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda f: f.exception() and self.events.store_failed.emit(f.exception()))

    def _append(self, msg: dict[str, Any], emitter: Emitter[dict[str, Any]] | None) -> dict[str, Any]:
        """Add `msg` after the last shown message (a new version when that one has replies)."""
        parent = next((u for u in reversed(self._uids) if u is not None), None)
        uid: str | None = None
        if self.thread_id and self.writer is not None:
            uid = new_thread_id()
            self._nodes[uid] = MessageNode(uid, parent, msg, time.time())
            store = self.writer.store
            for p in msg.get("content") if isinstance(msg.get("content"), list) else []:
                if isinstance(p, dict) and p.get("type") == "image" and p.get("attachment") in self.images:
                    media, data = self.images[p["attachment"]]
                    self._write(store.add_attachment, self.thread_id, p["attachment"], media, data)
            self._write(store.add_message, self.thread_id, msg, uid=uid, parent=parent)
        self.history.append(msg)
        self._uids.append(uid)
        if emitter is not None:
            emitter.emit(msg)
        return msg


def assistant_message(reply: ReplyAccumulator) -> dict[str, Any]:
    """A reply as the history's assistant message: answer, reasoning and tool calls."""
    msg: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        msg["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        msg["tool_calls"] = [_call(c) for c in reply.tool_calls]
    return msg


def _call(c: ToolCall) -> dict[str, Any]:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
