"""Fair, bounded queueing of generations, and the thread that moves backend events to the loop.

The engine decodes up to `--parallel` requests together (engine/scheduler.py), so the server hands
the backend at most `max_active` (= `--parallel`) requests at a time and keeps the rest waiting
here, first come first served, refusing new ones once `max_queue` are waiting. A running request's
events are moved by a small thread onto an unbounded asyncio queue, so a client that reads slowly
(or not at all) never holds up the engine, and its slot is freed the moment the engine finishes,
not when the client has read everything.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import (
    BUDGET_NOTE,
    Backend,
    ContextLengthError,
    Done,
    EngineError,
    Event,
    GenerationRequest,
    PreparedRequest,
    PromptProgress,
    ReplyAccumulator,
    Usage,
)

from .errors import APIError, invalid
from .prompt_size import too_long
from .requestlog import RequestRecord

log = logging.getLogger("locus.server")

__all__ = ["BUDGET_NOTE", "Finished", "Job", "Plan", "Scheduler", "Started"]

# The engine's error kinds as Anthropic error types (the default: api_error).
_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "unavailable": "overloaded_error",
}


@dataclass
class Plan:
    """One request in engine terms, whichever API it came from: the engine's own request, and what
    only the API needs. `request.max_tokens` is settled against the context when the job is prepared."""

    request: GenerationRequest
    max_tokens: int | None = None  # the client's limit (None: what the context leaves)
    model: str = ""  # the name the client asked for (for the request log)

    @classmethod
    def of(cls, *, model: str = "", max_tokens: int | None = None, **fields: Any) -> Plan:
        """A plan of GenerationRequest `fields`, with the server's rules: each prompt extends the
        last one (preserve_thinking), no thinking budget without thinking, no empty tool list."""
        fields.setdefault("preserve_thinking", True)
        fields.setdefault("priority", "background")  # the window's own requests go first
        req = GenerationRequest(**fields)
        req.tools = req.tools or None
        if not req.enable_thinking:
            req.thinking_budget = None
        return cls(req, max_tokens, model)

    @property
    def has_images(self) -> bool:
        """Some message has a list of parts (where images are)."""
        return any(isinstance(m.get("content"), list) for m in self.request.messages or [])


@dataclass(frozen=True)
class Finished:
    """The last item of a job's event stream."""

    finish_reason: str  # stop | length | cancelled | error
    stop_sequence: str | None = None
    usage: Usage | None = None
    error: str | None = None
    error_kind: str = "api_error"  # Anthropic error type when finish_reason is "error"


@dataclass(frozen=True)
class Started:
    """The engine took the job: how much of the prompt it found in the prompt cache."""

    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int = 0


def model_context(backend: Backend) -> int:
    """The model's own maximum context (0 when it does not say)."""
    return backend.info.context_tokens


def context_limit(backend: Backend, configured: int | None) -> int | None:
    """The longest prompt + reply the server allows: the model's maximum, or less if configured."""
    limit = model_context(backend)
    if configured:
        limit = min(limit, configured) if limit else configured
    return limit or None


def context_note(backend: Backend, configured: int | None) -> str:
    """One line saying which context is served and what set it (printed at start-up)."""
    model = model_context(backend)
    served = context_limit(backend, configured)
    if served is None:
        return "Context: no limit known (the model's config has no max_position_embeddings)"
    if configured and model and configured > model:
        return (
            f"Context: {served:,} tokens: --context {configured:,} is more than this model's "
            f"max_position_embeddings ({model:,}), so the model's maximum is served"
        )
    if configured and configured < model:
        return (
            f"Context: {served:,} tokens (--context; the model takes up to {model:,}: raise "
            "--context for longer conversations, at the cost of memory)"
        )
    return f"Context: {served:,} tokens (the model's max_position_embeddings)"


def build_request(plan: Plan, max_tokens: int = 1) -> GenerationRequest:
    """The plan's engine request (a copy) with `max_tokens`."""
    return dataclasses.replace(plan.request, max_tokens=max_tokens)


def count_tokens(backend: Backend, plan: Plan) -> int:
    """Prompt tokens of a plan as the client sees them: without the reply's prefix (an assistant
    prefill, a forced call's opening). Text-only prompts are counted without the engine's thread."""
    req = build_request(plan)
    req.prefix = ""
    if req.forces_call:
        req.tool_choice = "auto"
    try:
        return backend.count_tokens(req)
    except EngineError as e:
        raise refused(e) from e
    except UnicodeError as e:
        raise invalid(f"the request holds text that is not valid Unicode ({e})") from e


def reasoning_tokens(backend: Backend, reply: ReplyAccumulator) -> int:
    """Tokens a finished reply spent reasoning: as the backend reported them, else its reasoning
    counted with the model's tokenizer (0 for a remote model that did not say: counting there
    costs a generation). Never more than the completion tokens."""
    usage = reply.usage
    n = usage.reasoning_tokens if usage is not None else None
    if n is None:
        n = 0
        try:
            if reply.reasoning and not backend.info.remote:
                n = backend.count_tokens(GenerationRequest(prompt=reply.reasoning, use_cache=False))
        except (EngineError, UnicodeError):
            log.warning("could not count the reasoning's tokens", exc_info=True)
    return min(n, usage.completion_tokens) if usage is not None else n


def refused(e: EngineError) -> APIError:
    """The API error for a request the backend would not take: the model out of reach (a remote
    server down, a pipeline rank lost) is "overloaded" (503/529, try again), the rest a bad request."""
    if e.kind == "unavailable":
        return APIError("overloaded_error", str(e))
    return invalid(str(e))


def check_length(backend: Backend, plan: Plan, limit: int | None) -> None:
    """Refuse a prompt longer than `limit` tokens without the engine's thread; cheap for huge ones:
    the backend stops counting once the limit is passed. Its text alone is counted (images left
    out); prompts this lets through are counted exactly again when prepared."""
    if not limit:
        return
    try:
        n = backend.count_tokens(build_request(_without_images(plan)), stop_above=limit - 1)
    except EngineError as e:
        raise refused(e) from e
    except UnicodeError as e:
        raise invalid(f"the request holds text that is not valid Unicode ({e})") from e
    if n >= limit:
        raise invalid(too_long(n, limit, at_least=True))


def _without_images(plan: Plan) -> Plan:
    """The plan with its images left out: its text alone needs no more tokens than the prompt."""
    if not plan.has_images:
        return plan
    messages = []
    for m in plan.request.messages or []:
        content = m.get("content")
        if isinstance(content, list):
            kept = [p for p in content if p.get("type") != "image"]
            m = {**m, "content": kept or [{"type": "text", "text": ""}]}
        messages.append(m)
    return dataclasses.replace(plan, request=dataclasses.replace(plan.request, messages=messages))


class Scheduler:
    """First come, first served slots for the engine, with a bounded waiting line."""

    def __init__(self, max_active: int = 1, max_queue: int = 32) -> None:
        self.max_active = max(1, max_active)
        self.max_queue = max(0, max_queue)
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        """Wait for a slot; APIError("overloaded_error") at once when the line is full."""
        if self.closed:
            raise APIError("overloaded_error", "the server is shutting down")
        if self.active < self.max_active and not self.waiting:
            self.active += 1
            return
        if self.waiting >= self.max_queue:
            raise APIError(
                "overloaded_error",
                f"the local model is busy: {self.waiting} requests are already waiting "
                f"(the server's --max-queue is {self.max_queue}); try again shortly",
                headers={"retry-after": "1"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as the waiter left
            else:
                self._remove(fut)
            raise
        if self.closed:
            self.release()
            raise APIError("overloaded_error", "the server is shutting down")

    def release(self) -> None:
        """Give the slot to the next waiter, or free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1

    def close(self) -> None:
        """Refuse new work and wake every waiter (they answer "shutting down")."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1  # each woken waiter releases the slot it is handed
                fut.set_result(None)

    def _remove(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass


class Job:
    """One generation: prepared (tokenized, checked) in a thread, then run by the backend.

    Read its events from `queue`: ReasoningDelta, TextDelta, ToolCall, ToolCallError, then one
    Finished; `reply` holds them folded (complete once Finished is on the queue). `cancel()` stops
    the generation within a token and is safe from any thread.
    """

    def __init__(self, backend: Backend, plan: Plan, context_tokens: int | None = None) -> None:
        self.backend = backend
        self.plan = plan
        self.context_tokens = context_tokens
        self.queue: asyncio.Queue[Event | Finished] = asyncio.Queue()
        self.prompt_tokens = 0
        self.max_tokens = 0
        self.finished: Finished | None = None
        self.reply = ReplyAccumulator()  # written by the job's thread only
        self._loop = asyncio.get_running_loop()
        self._prepared: PreparedRequest | None = None
        self._cancel = threading.Event()
        self._handle: Any = None
        self._lock = threading.Lock()
        self._on_end: Callable[[Job], None] | None = None
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.started: Started | None = None
        # For the request log: who asked for what, and when the first token came.
        self.arrived = time.monotonic()
        self.arrived_wall = time.time()
        self.first_token_at: float | None = None
        self.client = ""
        self.endpoint = ""
        self.method = "POST"
        self.model_name = ""
        self.note = ""

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the generation (a no-op once it has finished)."""
        self._cancel.set()
        with self._lock:
            h = self._handle
        if h is not None:
            h.cancel()

    # -- preparation (a worker thread of the event loop) ---------------------------------------
    def prepare(self) -> None:
        """Tokenize, check the context, settle max_tokens; raises APIError for bad requests."""
        limit = context_limit(self.backend, self.context_tokens)
        try:
            prepared = self.backend.prepare(build_request(self.plan))
        except ContextLengthError as e:
            if not e.tokens:
                raise invalid(str(e)) from e
            raise invalid(too_long(e.tokens, limit or e.limit)) from e
        except EngineError as e:
            raise refused(e) from e
        except UnicodeError as e:
            raise invalid(f"the request holds text that is not valid Unicode ({e})") from e
        n = prepared.prompt_tokens  # the reply's prefix included: it takes room in the context
        self.prompt_tokens = n - prepared.prefix_tokens
        if limit and n >= limit:
            raise invalid(too_long(n, limit))
        room = (limit - n) if limit else None
        want = self.plan.max_tokens or room or 32768
        self.max_tokens = min(want, room) if room else want
        prepared.request.max_tokens = self.max_tokens
        self._prepared = prepared

    # -- running (its own thread) -------------------------------------------------------------
    def start(self, on_end: Callable[[Job], None]) -> None:
        """Submit to the backend; `on_end(job)` runs on the loop once the generation is done."""
        self._on_end = on_end
        threading.Thread(target=self._pump, name="locus-server-job", daemon=True).start()

    def _post(self, item: Event | Finished) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server stopped)
            pass

    def _pump(self) -> None:
        fin: Finished
        try:
            fin = self._run()
        except BaseException as e:  # the slot must be freed whatever happens
            log.exception("generation failed")
            fin = Finished("error", error=f"internal error: {type(e).__name__}: {e}")
        self.finished = fin
        self._post(fin)
        try:
            self._loop.call_soon_threadsafe(self._on_end, self)  # type: ignore[arg-type]
        except RuntimeError:
            pass

    def _run(self) -> Finished:
        prepared = self._prepared
        assert prepared is not None
        handle = self.backend.submit(prepared)
        with self._lock:
            self._handle = handle
        if self._cancel.is_set():
            handle.cancel()
        done = self._drain(handle)
        usage = self.reply.usage
        if usage is not None and prepared.prefix_tokens:
            # The prefix is not part of the client's prompt.
            n = self.prompt_tokens
            usage = dataclasses.replace(
                usage,
                prompt_tokens=n,
                cached_tokens=min(usage.cached_tokens, n),
                cache_write_tokens=min(usage.cache_write_tokens, max(0, n - usage.cached_tokens)),
            )
        return self._finish(done, usage)

    def _drain(self, handle: Any) -> Done:
        for ev in handle.events():
            self.reply.add(ev)
            if isinstance(ev, Done):
                return ev
            if isinstance(ev, PromptProgress):
                if self.started is None:  # the first one says what the prompt cache held
                    self.cached_tokens = min(ev.processed, self.prompt_tokens)
                    self.cache_write_tokens = ev.cache_write
                    self.started = Started(self.prompt_tokens, self.cached_tokens, ev.cache_write)
                    self._post(self.started)
            elif not isinstance(ev, Usage):
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                self._post(ev)
        raise RuntimeError("the engine's event stream ended without Done")  # pragma: no cover

    def _finish(self, done: Done, usage: Usage | None) -> Finished:
        if done.finish_reason == "error":
            kind = _ERROR_TYPES.get(done.error_kind or "", "api_error")
            return Finished("error", usage=usage, error=done.error or "generation failed", error_kind=kind)
        return Finished(done.finish_reason, done.stop_sequence, usage)

    def record(self, status: int = 200) -> RequestRecord:
        """This job as a request-log record (call once it has finished)."""
        fin = self.finished
        usage = fin.usage if fin else None
        ttft = self.first_token_at - self.arrived if self.first_token_at is not None else None
        return RequestRecord(
            time=self.arrived_wall,
            client=self.client,
            method=self.method,
            endpoint=self.endpoint,
            model=self.model_name,
            status=status,
            prompt_tokens=usage.prompt_tokens if usage else self.prompt_tokens,
            cached_tokens=usage.cached_tokens if usage else self.cached_tokens,
            ttft_s=ttft,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=fin.finish_reason if fin else "",
            error=(fin.error or "") if fin else "",
            duration_s=time.monotonic() - self.arrived,
            note=self.note,
        )

    def describe(self, request: Any, model: str = "") -> None:
        """Note who sent this job and where (for the request log)."""
        self.client = request.headers.get("user-agent", "")
        self.endpoint = request.url.path
        self.method = request.method
        self.model_name = model
        self.note = getattr(request.state, "locus_note", "") or ""
