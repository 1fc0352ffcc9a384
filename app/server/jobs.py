"""Fair, bounded queueing of generations, and the thread that moves engine events to the loop.

All engines in a process share one MLX worker that runs jobs in order, so the server hands the
engine at most `max_active` requests at a time and keeps the rest waiting here, first come first
served, refusing new ones once `max_queue` are waiting. A running request's events are moved by a
small thread onto an unbounded asyncio queue, so a client that reads slowly (or not at all) never
holds up the engine, and its slot is freed the moment the engine finishes, not when the client has
read everything.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import (
    Done,
    EngineError,
    Event,
    GenerationRequest,
    PromptProgress,
    ReasoningDelta,
    SamplingParams,
    StreamParser,
    TextDelta,
    Usage,
    render_prompt,
)

from .errors import APIError, invalid
from .prompt_size import PromptMeter, too_long
from .requestlog import RequestRecord

log = logging.getLogger("locus.server")

# Said (as reasoning) when a thinking budget runs out, before the answer is forced to start.
BUDGET_NOTE = "I have used my thinking budget, so I will answer now with what I have."


@dataclass
class Plan:
    """One request in engine terms, whichever API it came from."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    enable_thinking: bool
    sampling: SamplingParams
    max_tokens: int | None
    stop: list[str] = field(default_factory=list)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Text the answer must start with (an assistant prefill, or the opening of a forced tool
    # call); it is appended after the generation prompt and not returned to the client.
    prefix: str = ""
    # The prefix opens a tool call: parse it together with what the model writes next.
    prefix_is_call: bool = False
    # Reasoning tokens allowed before the answer is forced to start (None: no limit).
    thinking_budget: int | None = None
    session: str | None = None
    has_images: bool = False
    # Indices into `messages` a client marked for caching (Anthropic's cache_control).
    cache_breakpoints: list[int] = field(default_factory=list)
    model: str = ""  # the name the client asked for (for the request log)
    # Draft tokens for speculative decoding (the request's `mtp` extension; None: server default).
    mtp: int | None = None


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


def is_local(engine: Any) -> bool:
    """Whether `engine` is a model loaded in this process (an engine.Engine, with a tokenizer at
    hand) rather than another engine.Backend, e.g. a remote server, known only by its `info`."""
    return hasattr(engine, "model") and hasattr(engine, "encode")


def model_context(engine: Any) -> int:
    """The model's own maximum context (max_position_embeddings; 0 when the config has none)."""
    if not is_local(engine):
        return engine.info.context_tokens
    cfg = engine.model.config
    tc = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    return int(tc.get("max_position_embeddings") or cfg.get("max_position_embeddings") or 0)


def context_limit(engine: Any, configured: int | None) -> int | None:
    """The longest prompt + reply the server allows: the model's maximum, or less if configured."""
    limit = model_context(engine)
    if configured:
        limit = min(limit, configured) if limit else configured
    return limit or None


def context_note(engine: Any, configured: int | None) -> str:
    """One line saying which context is served and what set it (printed at start-up)."""
    model = model_context(engine)
    served = context_limit(engine, configured)
    if served is None:
        return "Context: no limit known (the model's config has no max_position_embeddings)"
    if configured and model and configured > model:
        return (f"Context: {served:,} tokens: --context {configured:,} is more than this model's "
                f"max_position_embeddings ({model:,}), so the model's maximum is served")  # fmt: skip
    if configured and configured < model:
        return (f"Context: {served:,} tokens (--context; the model takes up to {model:,}: raise "
                "--context for longer conversations, at the cost of memory)")  # fmt: skip
    return f"Context: {served:,} tokens (the model's max_position_embeddings)"


def build_request(engine: Any, plan: Plan, max_tokens: int = 1) -> GenerationRequest:
    """The engine request for a plan (rendering the prompt here when it needs a prefix)."""
    common: dict[str, Any] = dict(
        tools=plan.tools or None, sampling=plan.sampling, max_tokens=max_tokens, stop=plan.stop,
        session=plan.session, mtp=plan.mtp,
    )  # fmt: skip
    if plan.prefix:
        if not is_local(engine):
            raise invalid("an assistant prefill or a forced tool_choice needs the model's chat "
                          "template, which a remote model's server keeps to itself")  # fmt: skip
        if plan.has_images:
            raise invalid(
                "images cannot be combined with an assistant prefill or a forced tool_choice yet"
            )
        return GenerationRequest(prompt=render(engine, plan) + plan.prefix, **common)
    return GenerationRequest(
        messages=plan.messages, enable_thinking=plan.enable_thinking, preserve_thinking=True,
        template_kwargs=plan.template_kwargs, cache_breakpoints=plan.cache_breakpoints, **common,
    )  # fmt: skip


def render(engine: Any, plan: Plan, enable_thinking: bool | None = None) -> str:
    """The plan's prompt text through the model's chat template (tokenizer only, no MLX)."""
    return render_prompt(
        engine.model.tokenizer, plan.messages, tools=plan.tools or None,
        enable_thinking=plan.enable_thinking if enable_thinking is None else enable_thinking,
        preserve_thinking=True, **plan.template_kwargs,
    )  # fmt: skip


def count_tokens(engine: Any, plan: Plan, meter: PromptMeter | None = None) -> int:
    """Prompt tokens of a plan, exactly as a generation would see them (a text of more than
    prompt_size.SLICE characters is counted in slices cut at spaces, off the engine's thread)."""
    try:
        if not is_local(engine):
            return engine.count_tokens(build_request(engine, plan))
        if not plan.has_images:
            # Text only: the tokenizer alone gives the count, without waiting for the engine's
            # thread to finish the generation it is running.
            meter = meter or PromptMeter(engine.model.tokenizer)
            try:
                return meter.count(render(engine, plan))[0]
            except RuntimeError:  # a Rust tokenizer busy in another thread ("Already borrowed")
                pass
        req = build_request(engine, plan)
        return len(engine.encode(req)[0]) - len(_prefix_tokens(engine, plan))
    except EngineError as e:
        raise invalid(str(e)) from e
    except UnicodeError as e:
        raise invalid(f"the request holds text that is not valid Unicode ({e})") from e


def check_length(engine: Any, plan: Plan, limit: int | None, meter: PromptMeter) -> None:
    """Refuse a prompt longer than `limit` tokens without the engine's thread; cheap for huge ones:
    a bound from the character count first, then counting that stops past the limit. Prompts this
    lets through are counted exactly again when prepared."""
    if not limit:
        return
    try:
        text = render(engine, _without_images(plan)) + plan.prefix
    except EngineError as e:
        raise invalid(str(e)) from e
    except UnicodeError as e:
        raise invalid(f"the request holds text that is not valid Unicode ({e})") from e
    if 4 * len(text) < limit:  # a token is at least one byte, a character at most four
        return
    at_least = meter.lower_bound(text)
    if at_least < limit:
        _, at_least = meter.count(text, stop_above=limit - 1)
    if at_least >= limit:
        raise invalid(too_long(at_least, limit, at_least=True))


def _without_images(plan: Plan) -> Plan:
    """The plan with its images left out: its text alone needs no more tokens than the prompt."""
    if not plan.has_images:
        return plan
    messages = []
    for m in plan.messages:
        content = m.get("content")
        if isinstance(content, list):
            kept = [p for p in content if p.get("type") != "image"]
            m = {**m, "content": kept or [{"type": "text", "text": ""}]}
        messages.append(m)
    return dataclasses.replace(plan, messages=messages, has_images=False)


def _prefix_tokens(engine: Any, plan: Plan) -> list[int]:
    if not plan.prefix:
        return []
    return engine.model.tokenizer.encode(plan.prefix, add_special_tokens=False)


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
    """One generation: prepared (tokenized, checked) in a thread, then run by the engine.

    Read its events from `queue`: ReasoningDelta, TextDelta, ToolCall, ToolCallError, then one
    Finished. `cancel()` stops the engine within a token and is safe from any thread.
    """

    def __init__(self, engine: Any, plan: Plan, context_tokens: int | None = None) -> None:
        self.engine = engine
        self.plan = plan
        self.context_tokens = context_tokens
        self.queue: asyncio.Queue[Event | Finished] = asyncio.Queue()
        self.prompt_tokens = 0
        self.max_tokens = 0
        self.finished: Finished | None = None
        self._loop = asyncio.get_running_loop()
        self._req: GenerationRequest | None = None
        self._opens_reasoning = False
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
        plan = self.plan
        if not is_local(self.engine):
            return self._prepare_remote()
        try:
            req = build_request(self.engine, plan)
            req.validate()
            ids, opens = self.engine.encode(req)
        except EngineError as e:
            raise invalid(str(e)) from e
        except UnicodeError as e:
            raise invalid(f"the request holds text that is not valid Unicode ({e})") from e
        self.prompt_tokens = len(ids) - len(_prefix_tokens(self.engine, plan))
        limit = context_limit(self.engine, self.context_tokens)
        if limit and len(ids) >= limit:
            raise invalid(too_long(len(ids), limit))
        room = (limit - len(ids)) if limit else None
        want = plan.max_tokens or room or 32768
        self.max_tokens = min(want, room) if room else want
        req.max_tokens = self.max_tokens
        self._opens_reasoning = opens
        self._req = req

    def _prepare_remote(self) -> None:
        """`prepare` for a backend without a tokenizer here: its own count, when it has one."""
        try:
            req = build_request(self.engine, self.plan)
            n = self.engine.prepare(req).prompt_tokens  # 0: not known before it runs
        except EngineError as e:
            raise invalid(str(e)) from e
        self.prompt_tokens = n
        limit = context_limit(self.engine, self.context_tokens)
        room = (limit - n) if limit and n else None
        want = self.plan.max_tokens or room or 4096
        self.max_tokens = min(want, room) if room else want
        req.max_tokens = self.max_tokens
        self._opens_reasoning = False  # a thinking budget needs the template: not enforced
        self._req = req

    # -- running (its own thread) -------------------------------------------------------------
    def start(self, on_end: Callable[[Job], None]) -> None:
        """Submit to the engine; `on_end(job)` runs on the loop once the engine is done."""
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

    def _submit(self, req: GenerationRequest) -> Any:
        handle = self.engine.submit(req)
        with self._lock:
            self._handle = handle
        if self._cancel.is_set():
            handle.cancel()
        return handle

    def _run(self) -> Finished:
        plan, req = self.plan, self._req
        assert req is not None
        parser = None
        # A forced call's opening was in the prompt: parse it together with the rest.
        if plan.prefix_is_call:
            parser = StreamParser(plan.tools, reasoning=False)
            parser.feed(plan.prefix)
        budget = plan.thinking_budget
        enforce = (
            budget is not None and plan.enable_thinking and self._opens_reasoning
            and not plan.prefix and not plan.has_images and budget < self.max_tokens
        )  # fmt: skip
        reasoning: list[str] = []
        answered = False
        over_budget = False

        def forward(ev: Event) -> None:
            nonlocal answered, over_budget
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
                # Each decoded token gives at most one delta, so this never stops early.
                if enforce and not answered and not over_budget and len(reasoning) >= budget:
                    over_budget = True
                    with self._lock:
                        handle = self._handle
                    handle.cancel()
            else:
                answered = True
            if parser is not None and isinstance(ev, TextDelta):
                for out in parser.feed(ev.text):
                    self._post(out)
            else:
                self._post(ev)

        usage, done = self._drain(self._submit(req), forward)
        if over_budget and not answered and not self.cancelled:
            # Budget spent inside the reasoning: close it and let the model answer.
            note = ("\n\n" if reasoning else "") + BUDGET_NOTE
            forward(ReasoningDelta(note))
            thought = ("".join(reasoning)).strip()
            prompt = render(self.engine, plan) + thought + "\n</think>\n\n"
            used = usage.completion_tokens if usage else budget
            req2 = GenerationRequest(
                prompt=prompt, tools=plan.tools or None, sampling=plan.sampling,
                max_tokens=max(1, self.max_tokens - used), stop=plan.stop, session=plan.session,
                mtp=plan.mtp,
            )  # fmt: skip
            usage2, done = self._drain(self._submit(req2), forward)
            if usage and usage2:
                usage = Usage(
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens + usage2.completion_tokens,
                    cached_tokens=usage.cached_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    prompt_tps=usage.prompt_tps,
                    generation_tps=usage2.generation_tps,
                    peak_memory_gb=max(usage.peak_memory_gb, usage2.peak_memory_gb),
                    draft_tokens=usage.draft_tokens + usage2.draft_tokens,
                    draft_accepted=usage.draft_accepted + usage2.draft_accepted,
                )
        if parser is not None:
            for out in parser.finish(truncated=done.finish_reason != "stop"):
                self._post(out)
        if usage is not None and plan.prefix:  # the prefix is not part of the client's prompt
            usage = Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=min(usage.cached_tokens, self.prompt_tokens),
                cache_write_tokens=min(
                    usage.cache_write_tokens, max(0, self.prompt_tokens - usage.cached_tokens)
                ),
                prompt_tps=usage.prompt_tps,
                generation_tps=usage.generation_tps,
                peak_memory_gb=usage.peak_memory_gb,
                draft_tokens=usage.draft_tokens,
                draft_accepted=usage.draft_accepted,
            )
        return self._finish(done, usage)

    def _drain(self, handle: Any, forward: Callable[[Event], None]) -> tuple[Usage | None, Done]:
        usage: Usage | None = None
        for ev in handle.events():
            if isinstance(ev, Done):
                return ev.usage or usage, ev
            if isinstance(ev, Usage):
                usage = ev
            elif isinstance(ev, PromptProgress):
                if self.started is None:  # the first one says what the prompt cache held
                    self.cached_tokens = min(ev.processed, self.prompt_tokens)
                    self.cache_write_tokens = ev.cache_write
                    self.started = Started(self.prompt_tokens, self.cached_tokens, ev.cache_write)
                    self._post(self.started)
            else:
                forward(ev)
        raise RuntimeError("the engine's event stream ended without Done")  # pragma: no cover

    def _finish(self, done: Done, usage: Usage | None) -> Finished:
        if done.finish_reason == "error":
            msg = done.error or "generation failed"
            # The engine reports request problems it finds late (e.g. images it cannot take yet)
            # as text; everything else is the server's fault.
            kind = "invalid_request_error" if _is_request_error(msg) else "api_error"
            return Finished("error", usage=usage, error=msg, error_kind=kind)
        stop_seq = None
        if not is_local(self.engine):
            stop_seq = done.stop_sequence
        elif done.finish_reason == "stop" and self.plan.stop:
            stop_seq = self._which_stop(done.token_ids)
        return Finished(done.finish_reason, stop_seq, usage)

    def _which_stop(self, token_ids: list[int]) -> str | None:
        """The stop string that ended generation (None when it ended at end-of-turn)."""
        lm = self.engine.model
        if not token_ids or token_ids[-1] in set(lm.eos_token_ids):
            return None
        longest = max(len(s) for s in self.plan.stop)
        tail = lm.tokenizer.decode(token_ids[-(longest + 8) :])
        found = [(tail.rfind(s), s) for s in self.plan.stop if s in tail]
        if found:
            return max(found, key=lambda x: (x[0] + len(x[1]), len(x[1])))[1]
        return self.plan.stop[0]

    def record(self, status: int = 200) -> RequestRecord:
        """This job as a request-log record (call once it has finished)."""
        fin = self.finished
        usage = fin.usage if fin else None
        ttft = self.first_token_at - self.arrived if self.first_token_at is not None else None
        return RequestRecord(
            time=self.arrived_wall, client=self.client, method=self.method,
            endpoint=self.endpoint, model=self.model_name, status=status,
            prompt_tokens=usage.prompt_tokens if usage else self.prompt_tokens,
            cached_tokens=usage.cached_tokens if usage else self.cached_tokens,
            ttft_s=ttft, output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=fin.finish_reason if fin else "", error=(fin.error or "") if fin else "",
            duration_s=time.monotonic() - self.arrived,
        )  # fmt: skip

    def describe(self, request: Any, model: str = "") -> None:
        """Note who sent this job and where (for the request log)."""
        self.client = request.headers.get("user-agent", "")
        self.endpoint = request.url.path
        self.method = request.method
        self.model_name = model


def _is_request_error(message: str) -> bool:
    m = message.lower()
    return "image" in m or "prompt has" in m
