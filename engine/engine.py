"""The engine: one worker thread owns MLX; callers submit requests and read typed events.

Layers, as in mlx-lm: `generate.generate_step` (token ids) → `Engine.submit` (a stream of typed
events on a per-request queue) → `Engine.generate` (the whole result at once).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from .backend import BackendInfo, BackendStats, CacheStats
from .cache import PromptCache
from .chat import opens_reasoning, render_chat, supports_preserve_thinking
from .constrain import constrained
from .errors import ContextLengthError, EngineError, RequestError
from .events import Done, ErrorKind, Event, FinishReason, PromptProgress, ReasoningDelta, Usage
from .image import PromptInputs, build_prompt_inputs, image_parts
from .literal import Prompt, assistant_text
from .literal import encode as encode_prompt
from .loader import DEFAULT_CONTEXT_TOKENS, LoadedModel, load_model
from .mlxlm_compat import cache_class_name, keep_leading_space
from .parser import THINK_CLOSE, THINK_OPEN, StreamParser
from .request import GenerationRequest, GenerationResult, PreparedRequest, RequestHandle, check_mtp
from .reuse import MIN_GAP, ChatTokens, boundaries, marked_positions
from .sampling import constraint_processors, make_logits_processors, make_sampler
from .scheduler import CLOSE, DEFAULT_PARALLEL, Scheduler

T = TypeVar("T")
log = logging.getLogger("locus.engine")

# Longest the worker spends on other jobs between two batched steps (seconds).
JOB_SLICE = 0.05
# Seconds the worker waits, before the next step, for a request prepared between steps: its caller
# submits it a moment later, and a step of a large model can take seconds.
SUBMIT_GRACE_S = 0.05
# Said (as reasoning) when a thinking budget runs out, before the engine closes the reasoning.
BUDGET_NOTE = "I have used my thinking budget, so I will answer now with what I have."


def _cacheable(cache: list[Any]) -> bool:
    # Snapshots understand the caches Qwen3.5/3.6 and most mlx-lm models use.
    return all(cache_class_name(c) is not None for c in cache)


def display_name(path: Any) -> str:
    """A readable name for a checkpoint folder: its Hugging Face repo id when it sits in the hub
    cache (…/models--org--name/snapshots/HASH), otherwise the folder's name."""
    parts = os.path.normpath(str(path or "")).split(os.sep)
    for part in parts:
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    return parts[-1] if parts and parts[-1] not in ("", ".") else ""


def _primed_parser(req: GenerationRequest, reasoning: bool) -> StreamParser:
    """The reply's parser, having read the reply's prefix (`reasoning`: the prompt before the
    prefix leaves output inside the reasoning)."""
    parser = StreamParser(req.rendered_tools, reasoning=reasoning)
    if req.reply_prefix:
        parser.prime(req.reply_prefix)
    return parser


def _detokenizer(tokenizer: Any) -> Any:
    """mlx-lm's streaming detokenizer, minus its trimming of a leading space: the reply may
    continue text already in the prompt (an assistant prefill, a raw prompt), where the space matters."""
    detok = tokenizer.detokenizer
    detok.reset()
    return keep_leading_space(detok)


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's added tokens marked special (never text for a reader)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return frozenset(int(i) for i, t in added.items() if getattr(t, "special", False))


def think_tag_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the `<think>` / `</think>` added tokens (Qwen does not mark them special)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tags = (THINK_OPEN, THINK_CLOSE)
    return frozenset(int(i) for i, t in added.items() if getattr(t, "content", None) in tags)


class _StopFilter:
    """Cuts the text at the first stop string, holding back text that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.buf = ""
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.buf += text
        found = [(i, s) for s in self.stops if (i := self.buf.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: (f[0], -len(f[1])))
            out, self.buf = self.buf[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class _Solo:
    """How a request keeps in step with other processes running the same model; alone (this
    class) there are none, so it only reads the handle. engine/pipeline.py has the other kind."""

    share: Callable[[Any], Any] | None = None  # maps each sampled token to the one all use

    def __init__(self, handle: RequestHandle):
        self.handle = handle

    def begin(
        self,
        cache: list[Any],
        cached: int,
        kinds: dict[int, str],
        relookup: Callable[[int], tuple[list[Any], int]] | None,
    ) -> tuple[list[Any], int, dict[int, str]]:
        """The resume point and snapshot positions every process uses (alone: its own)."""
        return cache, cached, kinds

    def prefill_cancelled(self) -> bool:
        return self.handle.cancelled

    def token_cancelled(self) -> bool:
        return self.handle.cancelled


class _Worker:
    """The one thread that runs MLX for every Engine in the process.

    It never exits: MLX's CPU backend can abort the process when a thread that ran MLX work is
    torn down, so the thread lives (as a daemon) until the interpreter stops.
    """

    _instance: _Worker | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self.stream: Any = None
        # Each engine's scheduler (engine/scheduler.py); those with requests step between jobs.
        self.schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()
        self.expecting = 0  # requests prepared between steps and not submitted yet
        self.expect_until = 0.0  # how long to wait for them (time.monotonic)
        self.thread = threading.Thread(target=self._run, name="locus-mlx", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _Worker:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _run(self) -> None:
        import mlx.core as mx

        self.stream = mx.new_stream(mx.default_device())
        while True:
            busy = [s for s in list(self.schedulers) if s.busy]
            if not busy:
                self._do(self.jobs.get())
                continue
            # Between two steps of the running batches: the jobs waiting now (new requests, their
            # tokenization), for JOB_SLICE seconds at most; a job that re-queues itself waits a step.
            deadline = time.perf_counter() + JOB_SLICE
            for _ in range(self.jobs.qsize()):
                try:
                    self._do(self.jobs.get_nowait())
                except queue.Empty:
                    break
                if time.perf_counter() > deadline:
                    break
            self._await_submits()
            for sched in busy:
                sched.step()

    def _await_submits(self) -> None:
        """Requests just prepared are submitted from their callers' threads a moment later: run
        those submits before the next step (SUBMIT_GRACE_S at most), so they join it."""
        for _ in range(64):
            left = self.expect_until - time.monotonic()
            if self.expecting <= 0 or left <= 0:
                break
            try:
                self._do(self.jobs.get(timeout=left))
            except queue.Empty:
                break
        self.expecting = 0

    @staticmethod
    def _do(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:  # a job reports its own errors; the worker must survive, and say so
            log.exception("a job on the MLX worker thread raised")


def on_mlx_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on the process's MLX worker thread and wait for its result: MLX work on two threads
    at once (a demo model built in the window while the engine runs) can crash the process."""
    worker = _Worker.get()
    if threading.current_thread() is worker.thread:
        return fn()
    fut: Future[T] = Future()

    def job() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed back to the caller's thread
            fut.set_exception(e)

    worker.jobs.put(job)
    return fut.result()


class Engine:
    """Owns a model; all its MLX work runs on the process's single MLX worker thread.

    Thread-safe: submit from any thread. Each engine's requests run as one continuous batch of up
    to `parallel` sequences (engine/scheduler.py), between the worker's other jobs.
    """

    def __init__(
        self,
        loaded: LoadedModel | None = None,
        prompt_cache: PromptCache | None = None,
        mtp: int = 0,
        parallel: int = DEFAULT_PARALLEL,
    ):
        check_mtp(mtp)
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache()
        self.mtp = mtp  # draft tokens for requests that do not say (0: no speculative decoding)
        self._worker = _Worker.get()
        self._jobs = self._worker.jobs
        self._thread = self._worker.thread
        self._loaded = loaded
        self._closed = False
        self._meter: Any = None  # counting.PromptMeter of the loaded tokenizer
        # Requests run as one continuous batch of up to `parallel` sequences (engine/scheduler.py).
        self.scheduler = Scheduler(self, parallel)
        self._worker.schedulers.add(self.scheduler)

    @property
    def _stream(self) -> Any:
        return self._worker.stream

    def _call(self, fn: Callable[[], T], idle: bool = False) -> T:
        """Run `fn` on the worker thread and wait for its result; `idle`: once no request of this
        engine is running or waiting (loading or releasing the model)."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[T] = Future()

        def job() -> None:
            if idle and self.scheduler.busy:
                self._jobs.put(job)  # again after the batch's next step
                return
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed back to the caller's thread
                fut.set_exception(e)

        self._jobs.put(job)
        return self._wait(fut)

    def _wait(self, fut: Future[T]) -> T:
        """The result of a job handed to the worker thread (a pipeline gives up on a dead one)."""
        return fut.result()

    # -- public API ---------------------------------------------------------------------------
    @classmethod
    def from_path(
        cls,
        path: str,
        *,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        memory_check: bool = True,
        prompt_cache: PromptCache | None = None,
        mtp: int = 0,
        parallel: int = DEFAULT_PARALLEL,
    ) -> Engine:
        """Start an engine and load the model at `path` on its worker thread."""
        eng = cls(prompt_cache=prompt_cache, mtp=mtp, parallel=parallel)
        eng.load(path, context_tokens=context_tokens, memory_check=memory_check)
        return eng

    def load(self, path: str, **kwargs: Any) -> LoadedModel:
        """Load (or replace) the model; raises ModelLoadError with a clear message."""

        def job() -> LoadedModel:
            self._loaded = None
            import gc

            gc.collect()
            self._loaded = load_model(path, **kwargs)
            return self._loaded

        return self._call(job, idle=True)

    @property
    def model(self) -> LoadedModel:
        if self._loaded is None:
            raise EngineError("no model is loaded")
        return self._loaded

    @property
    def info(self) -> BackendInfo:
        """The loaded model as a front end sees it (engine.Backend)."""
        lm = self.model
        tc = lm.config.get("text_config")
        tc = tc if isinstance(tc, dict) else lm.config
        template = getattr(lm.tokenizer, "chat_template", None) or ""
        try:
            created = int(os.path.getmtime(os.path.join(str(lm.path), "config.json")))
        except (OSError, TypeError):
            created = 0
        return BackendInfo(
            name=display_name(lm.path) or lm.model_id,
            context_tokens=int(tc.get("max_position_embeddings") or 0),
            vocab_size=int(tc.get("vocab_size") or 0),
            images=lm.has_vision_weights,
            tools="tools" in template,
            thinking="<think>" in template or "enable_thinking" in template,
            model_id=lm.model_id,
            created=created,
        )

    def stats(self) -> BackendStats:
        """The prompt cache's budget and use (engine.Backend); never waits for the worker."""
        pc = self.prompt_cache
        s = self.scheduler.stats()
        return BackendStats(
            prompt_cache=CacheStats(**pc.budget()) if pc is not None else None,
            running=s["active"],
            queued=s["waiting"],
            batch_size=s["batch"],
            parallel=s["parallel"],
        )

    def close(self) -> None:
        """Release the model once the requests already queued have run."""
        if self._closed:
            return
        self._closed = True

        def release() -> None:
            import gc

            import mlx.core as mx

            if self.prompt_cache is not None:
                self.prompt_cache.flush()  # keep this session's snapshots across a restart
            self._loaded = None
            gc.collect()
            mx.clear_cache()

        self._call(release, idle=True)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, req: GenerationRequest) -> tuple[list[int], bool]:
        """The prompt's token ids (images expanded to their tokens, the reply's prefix included)
        and whether output starts inside a reasoning block."""
        inputs = self._call(lambda: self._prepare(req))
        return inputs.ids, _primed_parser(req, inputs.reasoning).in_reasoning

    def prepare(self, req: GenerationRequest) -> PreparedRequest:
        """The request rendered and tokenized (images expanded to their tokens) on the worker
        thread; `submit` it to run without doing that again. Raises RequestError (ImageError for
        images, ContextLengthError past the context) naming the problem."""
        req.validate()

        def job() -> PreparedRequest:
            inputs = self._prepare(req)
            self._check_context(len(inputs.ids))
            self._worker.expecting += 1  # its submit follows: the worker waits for it a moment
            self._worker.expect_until = time.monotonic() + SUBMIT_GRACE_S
            prefix = req.reply_prefix
            n = len(encode_prompt(self.model.tokenizer, self._prefix(req))) if prefix else 0
            opens = _primed_parser(req, inputs.reasoning).in_reasoning
            return PreparedRequest(req, len(inputs.ids), opens, self.model.model_id, inputs, prefix_tokens=n)

        return self._call(job)

    def count_tokens(self, req: GenerationRequest, *, stop_above: int | None = None) -> int:
        """The prompt tokens `req` takes (images and the reply's prefix included).

        Text-only requests are counted on the calling thread with the tokenizer alone, so a count
        never waits for the generation running; with `stop_above`, counting stops (returning a
        lower bound) once the prompt is known to take more than that."""
        req.validate()
        if req.prompt_ids is None and not (req.messages and image_parts(req.messages)[1]):
            lm = self.model
            meter = self._meter
            if meter is None or meter.tokenizer is not lm.tokenizer:
                from .counting import PromptMeter

                meter = self._meter = PromptMeter(lm.tokenizer)
            text = self._text(req)
            if stop_above is not None and (bound := meter.lower_bound(text.text)) > stop_above:
                return bound
            n, at_least = meter.count(text, stop_above=stop_above)
            return at_least if stop_above is not None and at_least > stop_above else n
        return len(self._call(lambda: self._prepare(req)).ids)

    def submit(self, req: GenerationRequest | PreparedRequest) -> RequestHandle:
        """Queue a request (or one `prepare` returned); read its events from the returned handle."""
        handle = RequestHandle()
        prepared = req if isinstance(req, PreparedRequest) else None
        request = prepared.request if prepared is not None else req
        assert isinstance(request, GenerationRequest)
        try:
            request.validate()
        except RequestError as e:
            handle._put(Done("error", error=str(e), error_kind=e.kind))  # type: ignore[arg-type]
            return handle
        sched, worker = self.scheduler, self._worker

        def add() -> None:
            if prepared is not None:
                worker.expecting -= 1
            sched.add(request, handle, prepared)

        self._jobs.put(add)
        return handle

    def _run_job(
        self, req: GenerationRequest, handle: RequestHandle, prepared: PreparedRequest | None
    ) -> None:
        """Run a request on the worker; whatever raises, its handle ends with one Done (a reader
        waits for it), and the worker logs the error."""
        try:
            self._generate(req, handle, prepared)
        except BaseException as e:
            handle._put(Done("error", error=f"{type(e).__name__}: {e}", error_kind="internal"))
            raise
        if not handle.ended:
            log.error("request %d ended without Done", handle.id)
            handle._put(Done("error", error="the request ended without finishing", error_kind="internal"))

    def generate(self, req: GenerationRequest) -> GenerationResult:
        """Run a request to the end and return everything it produced."""
        return self.submit(req).result()

    # -- generation (worker thread only) ------------------------------------------------------
    def _prepare(self, req: GenerationRequest) -> PromptInputs:
        sources: list[Any] = []
        if req.messages is not None:
            messages, sources = image_parts(req.messages)
            if sources:
                req = dataclasses.replace(req, messages=messages)
        ids, reasoning = self._encode(req)
        return build_prompt_inputs(self.model, ids, reasoning, sources)

    def _encode(self, req: GenerationRequest) -> tuple[list[int], bool]:
        lm = self.model
        tok = lm.tokenizer
        prefix = req.reply_prefix
        if req.prompt_ids is not None:
            vocab = int(lm.config.get("text_config", lm.config).get("vocab_size", 0)) or None
            bad = [i for i in req.prompt_ids if not isinstance(i, int) or i < 0 or (vocab and i >= vocab)]
            if bad or not req.prompt_ids:
                raise RequestError(f"prompt ids must be integers in [0, vocab size); bad: {bad[:5]}")
            tail = encode_prompt(tok, self._prefix(req)) if prefix else []
            return list(req.prompt_ids) + tail, False
        if req.prompt is not None:
            if not req.prompt:
                raise RequestError("the prompt is empty")
        text = self._text(req, with_prefix=False)
        ids = self._splice(req, encode_prompt(tok, text + self._prefix(req)))
        return ids, req.prompt is None and opens_reasoning(text.text)

    def _text(self, req: GenerationRequest, with_prefix: bool = True) -> Prompt:
        """The prompt (a raw prompt as given, or the messages through the template, their content
        kept as plain text), and the reply's prefix."""
        if req.prompt is not None:
            text = Prompt.of(req.prompt)
        else:
            text = self._render(req, req.messages or [])
        return text + self._prefix(req) if with_prefix else text

    def _prefix(self, req: GenerationRequest) -> Prompt:
        """The reply's prefix: the client's text (its role and image tokens plain), then a forced
        call's opening."""
        call = req.reply_prefix[len(req.prefix) :]
        return assistant_text(self.model.tokenizer, req.prefix) + Prompt.of(call)

    def _render(self, req: GenerationRequest, messages: list[dict[str, Any]], gen: bool = True) -> Prompt:
        tok = self.model.tokenizer
        preserve = req.preserve_thinking
        if preserve is None:
            preserve = supports_preserve_thinking(tok)
        # A forced call is the reply's start: no reasoning before it.
        think = req.enable_thinking and not req.forces_call
        return render_chat(
            tok,
            messages,
            tools=req.rendered_tools,
            enable_thinking=think,
            preserve_thinking=preserve,
            add_generation_prompt=gen,
            **req.template_kwargs,
        )

    def _splice(self, req: GenerationRequest, ids: list[int]) -> list[int]:
        """Replies the template re-rendered, put back as the very ids generated for them."""
        lm, pc = self.model, self.prompt_cache
        ct = ChatTokens.of(lm.tokenizer)
        if pc is None or ct is None or not req.use_cache:
            return ids
        return pc.replies.splice(lm.model_id, lm.tokenizer, ct, ids)

    def _cache_begin(
        self,
        req: GenerationRequest,
        prompt: list[int],
        images: Sequence[tuple[int, str]] = (),
        sync: _Solo | None = None,
    ) -> _CacheTicket:
        """Resume from the longest cached prefix; say where to snapshot and how.

        `images` are (start, content hash) of the prompt's images: part of every snapshot's key, as
        two different images of one size give the same token ids.
        """
        lm = self.model
        fresh = lm.model.make_cache()
        pc = self.prompt_cache
        sync = sync if sync is not None else _Solo(RequestHandle())
        if not req.use_cache or pc is None or not _cacheable(fresh):
            sync.begin(fresh, 0, {}, None)
            return _CacheTicket(None, lm, req, prompt, fresh, 0, {}, [])
        extra = list(images)
        cache, cached = pc.lookup(lm.model_id, prompt, fresh, extra)
        # Message boundaries: the system + tools prefix (shared by new sessions), marked
        # breakpoints, the last user message (a retry that edits it) and the generation prompt.
        kinds: dict[int, str] = {}
        ct = ChatTokens.of(lm.tokenizer)
        if ct is not None:
            kinds = boundaries(ct, prompt)
            # The last message's text less its last token (text added after it may merge with
            # it): Claude Code's recovery after max_tokens resends that turn with text appended.
            gen = max((p for p, k in kinds.items() if k == "generation"), default=0)
            if gen > 3:
                kinds.setdefault(gen - 3, "turn_end")
        if req.cache_breakpoints and req.messages and not images:
            tok = lm.tokenizer

            def render(msgs: list[dict[str, Any]]) -> list[int]:
                ids = encode_prompt(tok, self._render(req, msgs, gen=False))
                return self._splice(req, ids)

            for p in marked_positions(render, req.messages, req.cache_breakpoints, prompt):
                kinds[p] = "breakpoint"
        # Where the client's last breakpoint ends: Anthropic's cache_creation counts up to it. A
        # marked system prompt alone does not render (no user turn): it ends at its boundary.
        marked = max((p for p, k in kinds.items() if k == "breakpoint"), default=0)
        if 0 in req.cache_breakpoints and req.messages and req.messages[0].get("role") == "system":
            marked = max(marked, next((p for p, k in kinds.items() if k == "system"), 0))

        def relookup(m: int) -> tuple[list[Any], int]:  # the longest snapshot of at most m tokens
            return pc.lookup(lm.model_id, prompt[: m + 1], lm.model.make_cache(), extra)

        cache, cached, kinds = sync.begin(cache, cached, kinds, relookup)
        # A boundary just past the resume point (a tool turn right after the cached reply) is
        # cheaper to prefill again than to keep; a marked one is kept as the client asked.
        kinds = {
            p: k
            for p, k in kinds.items()
            if cached < p < len(prompt) - 1 and (k == "breakpoint" or not cached or p - cached >= MIN_GAP)
        }
        ticket = _CacheTicket(pc, lm, req, prompt, cache, cached, kinds, extra)
        ticket.marked = marked
        return ticket

    def _lockstep(self, req: GenerationRequest, inputs: PromptInputs, handle: RequestHandle) -> _Solo:
        """What keeps this request in step with other processes (none: a plain engine)."""
        return _Solo(handle)

    def _check_context(self, n: int) -> None:
        limit = self.info.context_tokens
        if limit and n >= limit:
            raise ContextLengthError(
                f"the prompt has {n} tokens; this model's context is {limit}", tokens=n, limit=limit
            )

    def _generate(
        self, req: GenerationRequest, handle: RequestHandle, prepared: PreparedRequest | None = None
    ) -> None:
        _Run(self, req, handle).run(prepared)

    def _batches(self) -> bool:
        """Whether the scheduler may batch this engine's requests: not when a subclass runs them
        its own way (the pipeline's, in lockstep with other processes)."""
        return type(self)._generate is Engine._generate

    def _draft_tokens(self, req: GenerationRequest) -> int:
        """Tokens `req` drafts with the MTP head (0: none). A seeded, sampled request does not draft:
        speculative sampling draws differently, and its text must depend on its seed alone."""
        k = self.mtp if req.mtp is None else req.mtp
        lm = self._loaded
        if not k or lm is None or getattr(lm.model, "mtp_head", None) is None:
            return 0
        return 0 if req.sampling.seed is not None and not req.sampling.greedy else k

    def _new_run(self, req: GenerationRequest, handle: RequestHandle) -> _Run:
        """A request's state on the worker, for the scheduler to drive step by step."""
        return _Run(self, req, handle)


class _Run:
    """One request on the worker thread: its prompt and cache, the decoding loop (stop strings,
    max_tokens, the thinking budget) and the usage it reports. Ends every request with Done."""

    def __init__(self, engine: Engine, req: GenerationRequest, handle: RequestHandle) -> None:
        from .mtp import DraftStats

        self.engine, self.req, self.handle = engine, req, handle
        self.tokens: list[int] = []
        self.forced = 0  # of `tokens`, those the engine wrote (closing the reasoning at a budget)
        self.t0 = self.t_first = time.perf_counter()
        self.prompt: list[int] = []
        self.cached = 0
        self.ticket: _CacheTicket | None = None
        self.stops = _StopFilter(req.stop)
        self.drafts = DraftStats()
        self.reasoned = False  # some reasoning text was emitted
        self.hit = False  # a stop string ended the text

    def run(self, prepared: PreparedRequest | None) -> None:
        """The whole request, alone: prompt, decoding loop, Done."""
        self.settle(lambda: self._generate(prepared))

    def settle(self, body: Callable[[], FinishReason | None]) -> bool:
        """Run `body` (a step of this request); if it ends the request (returns a reason, or raises),
        end it with Done and return True. `body` returning None keeps the request going."""
        from .generate import Cancelled

        reason: FinishReason | None = "stop"
        error: str | None = None
        kind: ErrorKind | None = None
        try:
            reason = body()
        except Cancelled:
            reason = "cancelled"
        except EngineError as e:
            reason, error, kind = "error", str(e), e.kind  # type: ignore[assignment]
        except Exception as e:  # never let a request kill the worker thread
            log.exception("request %d failed", self.handle.id)
            reason, error, kind = "error", f"{type(e).__name__}: {e}", "internal"
        if reason is None:
            return False
        try:
            self._finish(reason, error, kind)
        except Exception as e:  # the request still ends (handles drop a second Done)
            log.exception("a request's finish failed")
            self.handle._put(Done("error", self.tokens, None, f"{type(e).__name__}: {e}", None, "internal"))
        return True

    def _put(self, events: list[Event]) -> None:
        for ev in events:
            self.reasoned = self.reasoned or isinstance(ev, ReasoningDelta)
            self.handle._put(ev)

    def _generate(self, prepared: PreparedRequest | None) -> FinishReason:
        import mlx.core as mx

        self.begin(prepared)
        if self.req.sampling.seed is not None:  # batched requests draw from a key of their own
            mx.random.seed(self.req.sampling.seed)
        return self.end(self._loop())

    def begin(self, prepared: PreparedRequest | None) -> None:
        """Everything before the first token: the prompt, its cache, the parser (first progress)."""
        import mlx.core as mx

        from .generate import Cancelled
        from .model import bind_images

        if self.handle.cancelled:
            raise Cancelled
        eng, req = self.engine, self.req
        lm = eng.model
        if prepared is not None and prepared.model_id == lm.model_id and prepared.inputs:
            inputs = prepared.inputs
        else:
            inputs = eng._prepare(req)
        self.prompt = inputs.ids
        eng._check_context(len(self.prompt))
        self.eos = set(lm.eos_token_ids)
        self.detok = _detokenizer(lm.tokenizer)
        self.special = special_token_ids(lm.tokenizer) - self.eos if req.skip_special_tokens else ()
        # Once the answer has begun (or with thinking off), these tokens are markup, not text.
        self.think_tags = think_tag_ids(lm.tokenizer) if req.skip_special_tokens else frozenset()
        self.parser = _primed_parser(req, inputs.reasoning)
        mx.reset_peak_memory()
        self.model = bind_images(lm.model, inputs)  # features and M-RoPE positions of the images
        # Other processes running the same model (a pipeline) keep in step through `sync`.
        self.sync = sync = eng._lockstep(req, inputs, self.handle)
        self.ticket = ticket = eng._cache_begin(req, self.prompt, inputs.image_keys, sync)
        self.cache, self.cached = ticket.cache, ticket.cached
        # First progress: how much of the prompt the cache already holds (servers report it
        # before the first token, e.g. in Anthropic's message_start).
        planned = max(0, ticket.marked - self.cached) if ticket.pc is not None else 0
        self.handle._put(PromptProgress(self.cached, len(self.prompt), cache_write=planned))
        self.draft = eng._draft_tokens(req)
        self.budget = req.thinking_budget if self.parser.in_reasoning else None
        if self.budget is None and self.parser.in_reasoning and constrained(req):
            self.budget = max(1, req.max_tokens // 2)  # leave the constrained answer room to finish
        self.opens_reasoning = self.parser.in_reasoning  # a constraint starts after `</think>`
        self.thought = 0  # tokens generated inside the reasoning

    def end(self, reason: FinishReason) -> FinishReason:
        """After the last token: the reply's snapshot, the text held back, the parser's end."""
        ticket = self.ticket
        assert ticket is not None
        if self.tokens:  # the cache now holds prompt + tokens: the next turn may extend it
            ticket.reply(self.tokens)
        if not self.hit:  # text after a stop string is dropped; otherwise flush what was held
            self._flush()
        self._put(self.parser.finish(truncated=reason != "stop"))
        return reason

    def _decode(self, ids: list[int], start: int, first: bool) -> Iterator[int]:
        """Token ids after `ids` (the cache holds the first `start`); `first`: the prompt itself
        (progress events, snapshots), otherwise a continuation of the reply."""
        from .generate import generate_step

        req, ticket, handle = self.req, self.ticket, self.handle
        assert ticket is not None
        common: dict[str, Any] = dict(
            logits_processors=self.processors(),
            progress=(lambda d, t: handle._put(PromptProgress(d, t))) if first else None,
            cancelled=self.sync.prefill_cancelled,
            stream=self.engine._stream,
            start=start,
            checkpoints=sorted(ticket.kinds) if first else (),
            on_checkpoint=ticket.checkpoint,
        )
        if self.draft:
            from .mtp import speculative_step

            return speculative_step(
                self.model,
                ids,
                self.cache,
                params=req.sampling,
                draft_tokens=self.draft,
                stats=self.drafts,
                **common,
            )
        return generate_step(
            self.model, ids, self.cache, sampler=make_sampler(req.sampling), share=self.sync.share, **common
        )

    def processors(self) -> list[Any]:
        """This request's logits processors, fresh for a decoding run (penalties over its output,
        then its constraint's mask, engine/constrain.py)."""
        lm = self.engine.model
        return make_logits_processors(self.req.sampling, len(self.prompt)) + constraint_processors(
            self.req,
            lm.tokenizer,
            start=len(self.prompt),
            reasoning=self.opens_reasoning,
            vocab_size=self.engine.info.vocab_size or len(lm.tokenizer.vocab),
            eos_ids=sorted(self.eos),
        )

    def _text(self, tok: int) -> bool:
        """Feed one token's text through the stop strings and the parser; True at a stop."""
        self.detok.add_token(tok)
        seg, self.hit = self.stops.feed(self.detok.last_segment)
        self._put(self.parser.feed(seg))
        return self.hit

    def _flush(self) -> bool:
        """Release the text held back (a partial character, a possible stop); True at a stop."""
        self.detok.finalize()
        tail, self.hit = self.stops.feed(self.detok.last_segment)
        self._put(self.parser.feed(tail if self.hit else tail + self.stops.flush()))
        return self.hit

    def _loop(self) -> FinishReason:
        steps = self._decode(self.prompt, self.cached, True)
        try:
            while True:
                out = self.accept(next(steps))
                if out == CLOSE:
                    steps.close()
                    ids, start = self.closing()
                    steps = self._decode(ids, start, False)
                elif out is not None:
                    return out
        finally:
            steps.close()

    def accept(self, tok: int) -> FinishReason | str | None:
        """Take one generated token (the cache already holds it): its text, stop strings, limits.
        Returns why the request ends, CLOSE when the thinking budget closes the reasoning, or None."""
        req, tokens = self.req, self.tokens
        if not tokens:
            self.t_first = time.perf_counter()
        tokens.append(tok)
        if self.sync.token_cancelled():
            return "cancelled"
        if tok in self.eos or (tok not in self.special and not self._stray(tok) and self._text(tok)):
            return "stop"
        if len(tokens) - self.forced >= req.max_tokens:
            return "length"
        if self.budget is not None and self.parser.in_reasoning:
            self.thought += 1
            if self.thought >= self.budget:
                self.budget = None
                if self._flush():  # text held back may end the reasoning by itself
                    return "stop"
                if self.parser.in_reasoning:
                    return CLOSE
        return None

    def _stray(self, tok: int) -> bool:
        """A `<think>`/`</think>` token in the answer; a leading `<think>` still opens reasoning."""
        return tok in self.think_tags and not self.parser.in_reasoning and len(self.tokens) > 1

    def closing(self) -> tuple[list[int], int]:
        """The thinking budget is spent inside the reasoning: write the note and `</think>`, and
        let the model answer, continuing on the same cache (it holds prompt + tokens). Returns the
        ids to continue from and how many of them the cache holds."""
        note = ("\n\n" if self.reasoned else "") + BUDGET_NOTE
        close = self.engine.model.tokenizer.encode(
            note + "\n" + THINK_CLOSE + "\n\n", add_special_tokens=False
        )
        # The "\n" before `</think>` is the template's framing, not reasoning.
        self._put(self.parser.feed(note + THINK_CLOSE + "\n\n"))
        start = len(self.prompt) + len(self.tokens)
        self.tokens.extend(close)
        self.forced += len(close)
        return self.prompt + self.tokens, start

    def _finish(self, reason: FinishReason, error: str | None, kind: ErrorKind | None) -> None:
        import mlx.core as mx

        t_end = time.perf_counter()
        usage = None
        if self.prompt:
            n, p = len(self.tokens) - self.forced, len(self.prompt)
            usage = Usage(
                prompt_tokens=p,
                completion_tokens=n,
                cached_tokens=self.cached,
                cache_write_tokens=self.ticket.written if self.ticket is not None else 0,
                prompt_tps=(p - self.cached) / max(self.t_first - self.t0, 1e-9) if n else 0.0,
                generation_tps=(n - 1) / max(t_end - self.t_first, 1e-9) if n > 1 else 0.0,
                peak_memory_gb=mx.get_peak_memory() / 1e9,
                draft_tokens=self.drafts.drafted,
                draft_accepted=self.drafts.accepted,
            )
            self.handle._put(usage)
        matched = self.stops.matched if reason == "stop" else None
        self.handle._put(Done(reason, self.tokens, usage, error, matched, kind))


class _CacheTicket:
    """One request's use of the prompt cache: where it resumed, where it snapshots, and how many
    prompt tokens it wrote to new snapshots (Anthropic's cache_creation_input_tokens)."""

    def __init__(
        self,
        pc: PromptCache | None,
        lm: LoadedModel,
        req: GenerationRequest,
        prompt: list[int],
        cache: list[Any],
        cached: int,
        kinds: dict[int, str],
        extra: list[tuple[int, str]],
    ):
        self.pc, self.lm, self.prompt, self.cache, self.cached = pc, lm, prompt, cache, cached
        self.kinds, self.extra = kinds, extra
        self.session = req.session or "default"
        self.written_to = cached
        self.marked = 0  # prompt tokens up to the client's last cache breakpoint (0: none)

    @property
    def written(self) -> int:
        return max(0, self.written_to - self.cached)

    def _store(self, tokens: list[int], kind: str) -> None:
        pc = self.pc
        if pc is None:
            return
        mid = self.lm.model_id
        was = pc.holds(mid, tokens, self.extra)
        pc.store(mid, tokens, self.cache, session=self.session, kind=kind, extra=self.extra)
        if not was and pc.holds(mid, tokens, self.extra):
            self.written_to = max(self.written_to, min(len(tokens), len(self.prompt)))

    def checkpoint(self, pos: int) -> None:
        self._store(self.prompt[:pos], self.kinds.get(pos, "boundary"))

    def reply(self, tokens: list[int]) -> None:
        """Snapshot prompt + reply, and remember a finished assistant turn by its content."""
        self._store(self.prompt + tokens, "reply")
        tok = self.lm.tokenizer
        ct = ChatTokens.of(tok)
        if self.pc is None or ct is None or tokens[-1] != ct.im_end:
            return
        start = max((i for i, t in enumerate(self.prompt) if t == ct.im_start), default=-1)
        if start >= 0 and ct.role_at(self.prompt, start) == "assistant":
            self.pc.replies.remember(self.lm.model_id, tok, self.prompt[start:] + tokens)
