"""A chat conversation without a window: history, settings, the requests they make, each reply's
events folded (engine.ReplyAccumulator), and storage in the SQLite store.

An evented model, after napari's `ViewerModel`: front ends subscribe to `session.events.<name>`
and render; the chat view (ui/chat_view.py) and `locus chat` (app/terminal_chat.py) both drive one.
Events are emitted on the thread that calls the session (the UI thread, the terminal's), except
`store_failed`, which comes from the store writer's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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

from .store import StoreWriter, ThreadRecord, new_thread_id

if TYPE_CHECKING:
    from engine import Backend

__all__ = [
    "ChatSession",
    "ChatSettings",
    "Conversation",
    "Emitter",
    "ReplyEnd",
    "ReplyUpdate",
    "SessionEvents",
]

T = TypeVar("T")
# Keys a message's dict may carry for the front end only; never sent to the model.
UI_KEYS = ("meta",)
Loaded = tuple[ThreadRecord, list[dict[str, Any]]]


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
    """How replies are asked for. `sampling`, when given, replaces the preset's."""

    preset: str = "thinking"
    thinking: bool = True
    max_tokens: int = 2048
    sampling: SamplingParams | None = None
    stop: tuple[str, ...] = ()

    @property
    def meta(self) -> dict[str, Any]:
        """What a stored conversation keeps of them."""
        return {"preset": self.preset, "thinking": self.thinking}


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

    `tools`, when given, returns the tool specs for each request (the terminal's MCP servers).
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
        self.opening: str | None = None  # a conversation being read from the store
        self.reply: ReplyAccumulator | None = None  # the reply being generated
        self._started = 0.0
        self._deleted: Loaded | None = None

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

    def new_conversation(self) -> None:
        """Start afresh (the system prompt kept), with the default preset."""
        self.thread_id, self.history, self.opening = None, self._fresh(), None
        self.settings = replace(self.settings, preset=self.default_preset)
        self.events.conversation.emit(Conversation(None, list(self.history), self.settings))

    def load(self, thread_id: str) -> Loaded:
        """Read a stored conversation (after every queued write; call it off the UI thread)."""
        writer = self._writer()
        return writer.call(lambda: (writer.store.thread(thread_id), writer.store.messages(thread_id)))

    def begin_open(self, thread_id: str) -> None:
        """Show `thread_id` as being read; `finish_open` with what `load` read shows it."""
        self.thread_id, self.history, self.opening = thread_id, [], thread_id
        self.events.conversation.emit(Conversation(thread_id, [], self.settings, loading=True))

    def finish_open(self, loaded: Loaded) -> bool:
        """Take a read conversation; False when another was opened meanwhile."""
        t, messages = loaded
        if t.id != self.opening:
            return False
        self.opening = None
        self.history = messages
        name = t.meta.get("preset", "thinking")
        self.settings = replace(
            self.settings,
            preset=name if name in PRESETS else "thinking",
            thinking=bool(t.meta.get("thinking", True)),
        )
        footer = ""
        for m in messages:
            if m.get("role") == "assistant":
                meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
                footer = str(meta.get("footer") or "")
        footer = "" if footer.startswith("Error") else footer
        self.events.conversation.emit(Conversation(t.id, list(messages), self.settings, footer=footer))
        return True

    def search(self, query: str, limit: int = 500) -> list[ThreadRecord]:
        """Chat conversations matching `query` in titles and message text (a store read)."""
        writer = self._writer()
        return writer.call(writer.store.search, query, "chat", limit)

    def rename(self, thread_id: str, title: str) -> None:
        writer = self._writer()
        self._write(writer.store.rename_thread, thread_id, title.strip() or "Untitled")

    def delete(self, loaded: Loaded) -> None:
        """Delete a conversation (what `load` read of it); `undo_delete` brings it back."""
        t, _ = loaded
        self._write(self._writer().store.delete_thread, t.id)
        self._deleted = loaded
        if t.id == self.thread_id:
            self.new_conversation()

    def undo_delete(self) -> str | None:
        """Put the last deleted conversation back (id, title, settings, messages); its id."""
        if self._deleted is None:
            return None
        (t, msgs), self._deleted = self._deleted, None
        store = self._writer().store
        self._write(store.create_thread, t.kind, t.title, model=t.model, meta=t.meta, id=t.id)
        for m in msgs:
            self._write(store.add_message, t.id, m)
        return t.id

    def update_settings(self, **changes: Any) -> None:
        """Change the settings (a stored conversation keeps its preset and thinking)."""
        self.settings = replace(self.settings, **changes)
        if self.thread_id and self.writer is not None:
            self._write(self.writer.store.set_thread_meta, self.thread_id, self.settings.meta)
        self.events.settings.emit(self.settings)

    # -- turns ----------------------------------------------------------------------------------
    def add_user(self, text: str) -> dict[str, Any]:
        """Append (and store) the user's message; a first message makes the stored conversation."""
        if self.thread_id is None:
            self.thread_id = new_thread_id()
            if self.writer is not None:
                self._write(
                    self.writer.store.create_thread,
                    "chat",
                    text.splitlines()[0][:60],
                    model=self.model_name,
                    meta=self.settings.meta,
                    id=self.thread_id,
                )
        return self._append({"role": "user", "content": text}, self.events.message_added)

    def add_tool_results(self, messages: list[dict[str, Any]]) -> None:
        """Append the results of the last reply's tool calls (the next reply reads them)."""
        for m in messages:
            self._append(m, self.events.message_added)

    def drop_last_reply(self) -> bool:
        """Remove the last reply (from history and store) to answer again; whether the history
        now ends with the user's message."""
        if self.history and self.history[-1].get("role") == "assistant":
            gone = self.history.pop()
            if self.thread_id and self.writer is not None:
                self._write(self.writer.store.pop_message, self.thread_id)
            self.events.reply_removed.emit(gone)
        return bool(self.history) and self.history[-1].get("role") in ("user", "tool")

    def truncate(self, length: int) -> None:
        """Forget the history past `length` messages (a failed turn, in memory only)."""
        del self.history[length:]

    def start_reply(self) -> GenerationRequest:
        """The request for the next reply (history + settings); its events go to `add_event`."""
        s = self.settings
        req = GenerationRequest(
            messages=[{k: v for k, v in m.items() if k not in UI_KEYS} for m in self.history],
            tools=self.tools() if self.tools is not None else None,
            enable_thinking=s.thinking,
            sampling=s.sampling or preset(s.preset),
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
        self.events.reply_finished.emit(ReplyEnd("error", f"Error: {message}", error=message))

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
            self.history.append(msg)
            if self.thread_id and self.writer is not None:
                self._write(self.writer.store.add_message, self.thread_id, msg)
        error = (done.error or "generation failed") if reason == "error" else None
        self.events.reply_finished.emit(ReplyEnd(reason, footer, stats, error, msg))

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

    def _append(self, msg: dict[str, Any], emitter: Emitter[dict[str, Any]]) -> dict[str, Any]:
        self.history.append(msg)
        if self.thread_id and self.writer is not None:
            self._write(self.writer.store.add_message, self.thread_id, msg)
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
