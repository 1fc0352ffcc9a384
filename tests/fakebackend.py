"""A fake `engine.Backend` in pure Python (no model, no MLX work): it replays scripted replies.

Front ends (server, agent, CLI, window) depend on `engine.Backend` alone, so their tests can drive
them with this fake and say exactly what the model "writes", how the request ends and what the
backend reports about itself (`info`, `stats`). It keeps the engine's contract where a front end could tell:

- `prepare` validates the request (RequestError) and refuses a prompt past `info.context_tokens`
  (ContextLengthError with tokens and limit); `submit` never raises: a bad request ends in Done
  with finish_reason "error" and error_kind "invalid_request";
- events come in the engine's order: one PromptProgress, reasoning/text deltas, tool calls, Usage,
  then Done; `cancel()` ends the reply within one event with finish_reason "cancelled";
- a reply given as raw model text goes through the real StreamParser, primed with the request's
  reply prefix (an assistant prefill, a forced tool_choice's opening), as the engine does.

Every request it was given is kept in `requests` (the GenerationRequest, prepared or not).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine import (
    BackendInfo,
    BackendStats,
    ContextLengthError,
    Done,
    ErrorKind,
    Event,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    PromptProgress,
    ReasoningDelta,
    RequestError,
    StreamParser,
    TextDelta,
    ToolCall,
    Usage,
)


@dataclass
class Reply:
    """One scripted reply.

    `raw` is model output as Qwen writes it after the prompt (reasoning, `</think>`, the answer,
    `<tool_call>` XML) and is parsed by the real parser; otherwise `reasoning`, `text` and
    `tool_calls` ({"name": ..., "arguments": {...}} or ToolCall) are sent as they are. `events`,
    when given, replaces all of that (Usage and Done still follow unless it holds them).
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any] | ToolCall] = field(default_factory=list)
    raw: str | None = None
    events: list[Event] | None = None
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    usage: Usage | None = None  # default: the prompt's count, a token per 4 characters written
    cached_tokens: int = 0
    chunk: int = 5  # characters per delta
    delay: float = 0.0  # seconds before each event (time for a client to cancel)


def estimate_tokens(req: GenerationRequest) -> int:
    """The fake's token count: about four characters a token, of everything the prompt holds."""
    if req.prompt_ids is not None:
        return len(req.prompt_ids) + len(req.reply_prefix) // 4
    body = req.prompt if req.prompt is not None else json.dumps(req.messages, default=str)
    tools = json.dumps(req.rendered_tools or [], default=str)
    return (len(body) + len(tools) + len(req.reply_prefix)) // 4 + 1


class FakeHandle:
    """A submitted request of the fake backend (engine.Handle)."""

    def __init__(self, events: list[Event], delay: float) -> None:
        self._events = events
        self._delay = delay
        self._cancel = threading.Event()
        self._queue: queue.Queue[Event] = queue.Queue()
        self.done: Done | None = None
        threading.Thread(target=self._play, name="fake-backend", daemon=True).start()

    def _play(self) -> None:
        usage = None
        for ev in self._events:
            if self._delay:
                self._cancel.wait(self._delay)
            if self._cancel.is_set() and not isinstance(ev, PromptProgress):
                ev = Done("cancelled", usage=usage)
            if isinstance(ev, Usage):
                usage = ev
            self._queue.put(ev)
            if isinstance(ev, Done):
                return

    def cancel(self) -> None:
        """End the reply within one event (finish_reason "cancelled")."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they come, through the final Done."""
        while True:
            ev = self._queue.get(timeout=timeout)
            if isinstance(ev, Done):
                self.done = ev
            yield ev
            if isinstance(ev, Done):
                return

    def result(self) -> GenerationResult:
        """Wait for the end and collect the events."""
        return GenerationResult.of(self.events())


class FakeBackend:
    """An engine.Backend that replays `replies`, one per request (the last one repeats).

    `replies` items are Reply objects or raw model text (a str: `Reply(raw=...)`); `replies` may
    also be a function of the GenerationRequest. `info` describes the "model"; `count` counts a
    request's prompt tokens (default: estimate_tokens).
    """

    def __init__(
        self,
        replies: list[Reply | str] | Callable[[GenerationRequest], Reply | str] = ("",),
        *,
        info: BackendInfo | None = None,
        count: Callable[[GenerationRequest], int] = estimate_tokens,
    ) -> None:
        self.replies = replies if callable(replies) else list(replies)
        self._info = info or BackendInfo(
            name="fake-model", context_tokens=32768, vocab_size=1000, model_id="fake-1", created=1767225600
        )
        self.count = count
        self.requests: list[GenerationRequest] = []
        self.handles: list[FakeHandle] = []
        self.counted: list[tuple[GenerationRequest, int | None]] = []
        self.closed = False
        self.stats_reported = BackendStats()  # what `stats()` says (a test may set a prompt cache's)

    @property
    def info(self) -> BackendInfo:
        if self.closed:
            from engine import EngineError

            raise EngineError("no model is loaded")
        return self._info

    def stats(self) -> BackendStats:
        """`stats_reported` (none of its own: no prompt cache, one process)."""
        return self.stats_reported

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Validate and count `request`; ContextLengthError past `info.context_tokens`."""
        request.validate()
        n = self.count(request)
        limit = self._info.context_tokens
        if limit and n >= limit:
            raise ContextLengthError(
                f"the prompt has {n} tokens; this model's context is {limit}", tokens=n, limit=limit
            )
        prefix = len(request.reply_prefix) // 4
        return PreparedRequest(
            request, n, self._opens(request).in_reasoning, self._info.model_id, None, prefix_tokens=prefix
        )

    def count_tokens(self, request: GenerationRequest, *, stop_above: int | None = None) -> int:
        """The prompt tokens `request` takes (`count`), noting the call in `counted`."""
        request.validate()
        self.counted.append((request, stop_above))
        return self.count(request)

    def submit(self, request: GenerationRequest | PreparedRequest) -> FakeHandle:
        """Play the next reply; a bad request ends at once with an invalid_request Done."""
        prepared = request if isinstance(request, PreparedRequest) else None
        req = prepared.request if prepared is not None else request
        assert isinstance(req, GenerationRequest)
        self.requests.append(req)
        try:
            if prepared is None:
                prepared = self.prepare(req)
            else:
                req.validate()
        except RequestError as e:
            done = Done("error", error=str(e), error_kind=e.kind)  # type: ignore[arg-type]
            return self._handle([done], 0.0)
        reply = self._next(req)
        return self._handle(self._events(reply, req, prepared.prompt_tokens), reply.delay)

    def close(self) -> None:
        self.closed = True

    # -- internals ---------------------------------------------------------------------------
    def _handle(self, events: list[Event], delay: float) -> FakeHandle:
        h = FakeHandle(events, delay)
        self.handles.append(h)
        return h

    def _next(self, req: GenerationRequest) -> Reply:
        if callable(self.replies):
            r = self.replies(req)
        else:
            r = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return Reply(raw=r) if isinstance(r, str) else r

    def _opens(self, req: GenerationRequest) -> StreamParser:
        # As the engine's template does: thinking on opens <think> (a forced call turns it off).
        thinking = (
            req.messages is not None and req.enable_thinking and self._info.thinking and not req.forces_call
        )
        parser = StreamParser(req.rendered_tools, reasoning=thinking)
        if req.reply_prefix:
            parser.prime(req.reply_prefix)
        return parser

    def _events(self, reply: Reply, req: GenerationRequest, prompt_tokens: int) -> list[Event]:
        out: list[Event] = [PromptProgress(reply.cached_tokens, prompt_tokens)]
        written = 0
        if reply.events is not None:
            out += reply.events
        elif reply.raw is not None:
            parser = self._opens(req)
            raw = reply.raw
            for i in range(0, len(raw), reply.chunk):
                out += parser.feed(raw[i : i + reply.chunk])
            out += parser.finish(truncated=reply.finish_reason != "stop")
            written = len(raw)
        else:
            c = reply.chunk
            out += [ReasoningDelta(reply.reasoning[i : i + c]) for i in range(0, len(reply.reasoning), c)]
            out += [TextDelta(reply.text[i : i + c]) for i in range(0, len(reply.text), c)]
            for k, call in enumerate(reply.tool_calls):
                if isinstance(call, dict):
                    # Unique across requests, as a model's are (clients drop a repeated call id).
                    cid = f"call_fake_{len(self.requests)}_{k}"
                    call = ToolCall(id=cid, name=call["name"], arguments=call.get("arguments", {}), raw="")
                out.append(call)
            written = len(reply.text) + len(reply.reasoning)
        usage = next((e for e in out if isinstance(e, Usage)), None)
        if usage is None and not any(isinstance(e, Done) for e in out):
            usage = reply.usage or Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=max(1, written // 4),
                cached_tokens=reply.cached_tokens,
            )
            out.append(usage)
        if not any(isinstance(e, Done) for e in out):
            out.append(
                Done(
                    reply.finish_reason,
                    usage=usage,
                    error=reply.error,
                    stop_sequence=reply.stop_sequence,
                    error_kind=reply.error_kind or ("internal" if reply.error else None),
                )
            )
        return out
