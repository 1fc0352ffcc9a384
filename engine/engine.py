"""The engine: one worker thread owns MLX; callers submit requests and read typed events.

Layers, as in mlx-lm: `generate.generate_step` (token ids) → `Engine.submit` (a stream of typed
events on a per-request queue) → `Engine.generate` (the whole result at once).
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .backend import BackendInfo, PreparedRequest
from .cache import PromptCache
from .chat import opens_reasoning, render_prompt, supports_preserve_thinking
from .errors import ContextLengthError, EngineError, RequestError
from .events import (
    Done,
    ErrorKind,
    Event,
    FinishReason,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)
from .image import PromptInputs, build_prompt_inputs, image_parts
from .loader import DEFAULT_CONTEXT_TOKENS, LoadedModel, load_model
from .parser import StreamParser
from .reuse import MIN_GAP, ChatTokens, boundaries, marked_positions
from .sampling import SamplingParams, make_logits_processors, make_sampler

T = TypeVar("T")


def _cacheable(cache: list[Any]) -> bool:
    # Snapshots understand the caches Qwen3.5/3.6 and most mlx-lm models use.
    return all(type(c).__name__ in ("KVCache", "ArraysCache") for c in cache)


@dataclass
class GenerationRequest:
    """One generation: a conversation (rendered with the model's template), raw text, or raw ids.

    A user message's content may be a list of parts; `{"type": "image", "image": X}` (X: bytes, a
    file path, a `data:` URL or a PIL image) or OpenAI's `{"type": "image_url", ...}` puts an image
    in the prompt (Qwen3.5/3.6 checkpoints with their vision tower).
    """

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool = True
    # None: on when the template supports it, so each prompt extends the last exactly.
    preserve_thinking: bool | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 4096
    stop: list[str] = field(default_factory=list)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Prompt-cache session (a conversation, an agent, a sub-agent): eviction spares each one's
    # newest snapshot. `use_cache=False` neither reads nor writes the cache.
    session: str | None = None
    use_cache: bool = True
    # Indices into `messages` whose end is worth a snapshot shared by later requests (Anthropic's
    # `cache_control` breakpoints); at most 4 are used.
    cache_breakpoints: list[int] = field(default_factory=list)
    # Special tokens (<|box_start|>, <|vision_end|>, ...) are left out of the text; the parser's
    # own tags (<think>, <tool_call>) are not special in Qwen's tokenizer and always stay.
    skip_special_tokens: bool = True
    # Speculative decoding: tokens the model's MTP head drafts per step (0 off; None: the
    # engine's default). Output is the same as without; a model without the head ignores it.
    mtp: int | None = None

    def validate(self) -> None:
        given = [x is not None for x in (self.messages, self.prompt, self.prompt_ids)]
        if sum(given) != 1:
            raise RequestError("give exactly one of messages, prompt or prompt_ids")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop strings must be non-empty strings")
        _check_mtp(self.mtp)
        self.sampling.validate()


def _check_mtp(k: int | None) -> None:
    from .mtp import MAX_DRAFT

    if k is not None and (not isinstance(k, int) or not 0 <= k <= MAX_DRAFT):
        raise RequestError(f"mtp (draft tokens) must be an integer in 0..{MAX_DRAFT} (got {k!r})")


@dataclass
class GenerationResult:
    """Everything one request produced (what `Engine.generate` returns)."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    tool_call_errors: list[ToolCallError]
    finish_reason: FinishReason
    token_ids: list[int]
    usage: Usage | None
    error: str | None = None


class RequestHandle:
    """A submitted request: iterate its events (ending with Done), or cancel it."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self._queue: queue.Queue[Event] = queue.Queue()
        self._cancel = threading.Event()
        self.done: Done | None = None

    def cancel(self) -> None:
        """Stop the request; it ends within one token with finish_reason "cancelled"."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they arrive, through the final Done."""
        while True:
            ev = self._queue.get(timeout=timeout)
            yield ev
            if isinstance(ev, Done):
                self.done = ev
                return

    def result(self) -> GenerationResult:
        """Wait for the request to finish and collect its events."""
        text, reasoning, calls, errs = [], [], [], []
        done: Done | None = None
        for ev in self.events():
            if isinstance(ev, TextDelta):
                text.append(ev.text)
            elif isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
            elif isinstance(ev, ToolCall):
                calls.append(ev)
            elif isinstance(ev, ToolCallError):
                errs.append(ev)
            elif isinstance(ev, Done):
                done = ev
        assert done is not None
        return GenerationResult("".join(text), "".join(reasoning), calls, errs,
                                done.finish_reason, done.token_ids, done.usage, done.error)  # fmt: skip

    def _put(self, ev: Event) -> None:
        self._queue.put(ev)


def _detokenizer(tokenizer: Any) -> Any:
    """mlx-lm's streaming detokenizer, minus its trimming of a leading space: the reply may
    continue text already in the prompt (an assistant prefill, a raw prompt), where the space matters."""
    detok = tokenizer.detokenizer
    detok.reset()
    if hasattr(detok, "_maybe_trim_space"):  # BPE (Qwen)
        detok._maybe_trim_space = lambda text: text
    if hasattr(detok, "trim_space"):  # SentencePiece
        detok.trim_space = False
    return detok


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's added tokens marked special (never text for a reader)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return frozenset(int(i) for i, t in added.items() if getattr(t, "special", False))


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

    def begin(self, cache: list[Any], cached: int, kinds: dict[int, str],
              relookup: Callable[[int], tuple[list[Any], int]] | None,
              ) -> tuple[list[Any], int, dict[int, str]]:  # fmt: skip
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
            job = self.jobs.get()
            try:
                job()
            except BaseException:  # jobs report their own errors; the worker must survive
                pass


class Engine:
    """Owns a model; all its MLX work runs on the process's single MLX worker thread.

    Thread-safe: submit from any thread. Requests of all engines run one at a time, in order.
    """

    def __init__(
        self,
        loaded: LoadedModel | None = None,
        prompt_cache: PromptCache | None = None,
        mtp: int = 0,
    ):
        _check_mtp(mtp)
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache()
        self.mtp = mtp  # draft tokens for requests that do not say (0: no speculative decoding)
        self._worker = _Worker.get()
        self._jobs = self._worker.jobs
        self._thread = self._worker.thread
        self._loaded = loaded
        self._closed = False

    @property
    def _stream(self) -> Any:
        return self._worker.stream

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread and wait for its result."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[T] = Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed back to the caller's thread
                fut.set_exception(e)

        self._jobs.put(job)
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
    ) -> Engine:
        """Start an engine and load the model at `path` on its worker thread."""
        eng = cls(prompt_cache=prompt_cache, mtp=mtp)
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

        return self._call(job)

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
        return BackendInfo(
            name=lm.path.name,
            context_tokens=int(tc.get("max_position_embeddings") or 0),
            vocab_size=int(tc.get("vocab_size") or 0),
            images=lm.has_vision_weights,
            tools="tools" in template,
            thinking="<think>" in template or "enable_thinking" in template,
            model_id=lm.model_id,
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

        self._call(release)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, req: GenerationRequest) -> tuple[list[int], bool]:
        """The prompt's token ids (images expanded to their tokens) and whether output starts
        inside a reasoning block."""
        inputs = self._call(lambda: self._prepare(req))
        return inputs.ids, inputs.reasoning

    def prepare(self, req: GenerationRequest) -> PreparedRequest:
        """The request rendered and tokenized (images expanded to their tokens) on the worker
        thread; `submit` it to run without doing that again. Raises RequestError (ImageError for
        images, ContextLengthError past the context) naming the problem."""
        req.validate()

        def job() -> PreparedRequest:
            inputs = self._prepare(req)
            self._check_context(len(inputs.ids))
            return PreparedRequest(req, len(inputs.ids), inputs.reasoning,
                                   self.model.model_id, inputs)  # fmt: skip

        return self._call(job)

    def count_tokens(self, req: GenerationRequest) -> int:
        """The prompt tokens `req` takes (images and an assistant prefix included)."""
        req.validate()
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
        self._jobs.put(lambda: self._generate(request, handle, prepared))
        return handle

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
        if req.prompt_ids is not None:
            vocab = int(lm.config.get("text_config", lm.config).get("vocab_size", 0)) or None
            bad = [
                i
                for i in req.prompt_ids
                if not isinstance(i, int) or i < 0 or (vocab and i >= vocab)
            ]
            if bad or not req.prompt_ids:
                raise RequestError(
                    f"prompt ids must be integers in [0, vocab size); bad: {bad[:5]}"
                )
            return list(req.prompt_ids), False
        if req.prompt is not None:
            if not req.prompt:
                raise RequestError("the prompt is empty")
            return self._splice(req, tok.encode(req.prompt, add_special_tokens=False)), False
        text = self._render(req, req.messages or [])
        return self._splice(req, tok.encode(text, add_special_tokens=False)), opens_reasoning(text)

    def _render(
        self, req: GenerationRequest, messages: list[dict[str, Any]], gen: bool = True
    ) -> str:
        tok = self.model.tokenizer
        preserve = req.preserve_thinking
        if preserve is None:
            preserve = supports_preserve_thinking(tok)
        return render_prompt(
            tok, messages, tools=req.tools, enable_thinking=req.enable_thinking,
            preserve_thinking=preserve, add_generation_prompt=gen, **req.template_kwargs,
        )  # fmt: skip

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
        if req.cache_breakpoints and req.messages and not images:
            tok = lm.tokenizer

            def render(msgs: list[dict[str, Any]]) -> list[int]:
                ids = tok.encode(self._render(req, msgs, gen=False), add_special_tokens=False)
                return self._splice(req, ids)

            for p in marked_positions(render, req.messages, req.cache_breakpoints, prompt):
                kinds[p] = "breakpoint"

        def relookup(m: int) -> tuple[list[Any], int]:  # the longest snapshot of at most m tokens
            return pc.lookup(lm.model_id, prompt[: m + 1], lm.model.make_cache(), extra)

        cache, cached, kinds = sync.begin(cache, cached, kinds, relookup)
        # A boundary just past the resume point (a tool turn right after the cached reply) is
        # cheaper to prefill again than to keep; a marked one is kept as the client asked.
        kinds = {p: k for p, k in kinds.items() if cached < p < len(prompt) - 1
                 and (k == "breakpoint" or not cached or p - cached >= MIN_GAP)}  # fmt: skip
        return _CacheTicket(pc, lm, req, prompt, cache, cached, kinds, extra)

    def _lockstep(
        self, req: GenerationRequest, inputs: PromptInputs, handle: RequestHandle
    ) -> _Solo:
        """What keeps this request in step with other processes (none: a plain engine)."""
        return _Solo(handle)

    def _check_context(self, n: int) -> None:
        limit = self.info.context_tokens
        if limit and n >= limit:
            raise ContextLengthError(f"the prompt has {n} tokens; this model's context is {limit}")

    def _generate(
        self, req: GenerationRequest, handle: RequestHandle, prepared: PreparedRequest | None = None
    ) -> None:
        import mlx.core as mx

        from .generate import Cancelled, generate_step
        from .model import bind_images

        tokens: list[int] = []
        t0 = time.perf_counter()
        t_first = t0
        prompt: list[int] = []
        cached = 0
        ticket: _CacheTicket | None = None
        reason: FinishReason = "stop"
        error: str | None = None
        error_kind: ErrorKind | None = None
        stops = _StopFilter(req.stop)
        from .mtp import DraftStats

        drafts = DraftStats()
        try:
            if handle.cancelled:
                raise Cancelled
            lm = self.model
            if prepared is not None and prepared.model_id == lm.model_id and prepared.inputs:
                inputs = prepared.inputs
            else:
                inputs = self._prepare(req)
            prompt, reasoning = inputs.ids, inputs.reasoning
            self._check_context(len(prompt))
            if req.sampling.seed is not None:
                mx.random.seed(req.sampling.seed)
            eos = set(lm.eos_token_ids)
            detok = _detokenizer(lm.tokenizer)
            special = special_token_ids(lm.tokenizer) - eos if req.skip_special_tokens else ()
            parser = StreamParser(req.tools, reasoning=reasoning)
            mx.reset_peak_memory()
            model = bind_images(lm.model, inputs)  # features and M-RoPE positions of the images
            sync = self._lockstep(req, inputs, handle)
            ticket = self._cache_begin(req, prompt, inputs.image_keys, sync)
            cache, cached = ticket.cache, ticket.cached
            # First progress: how much of the prompt the cache already holds (servers report it
            # before the first token, e.g. in Anthropic's message_start).
            planned = len(prompt) - cached if ticket.pc is not None else 0
            handle._put(PromptProgress(cached, len(prompt), cache_write=planned))

            def progress(done: int, total: int) -> None:
                handle._put(PromptProgress(done, total))

            common: dict[str, Any] = dict(
                logits_processors=make_logits_processors(req.sampling, len(prompt)), progress=progress,
                cancelled=sync.prefill_cancelled, stream=self._stream, start=cached,
                checkpoints=sorted(ticket.kinds), on_checkpoint=ticket.checkpoint,
            )  # fmt: skip
            k = self.mtp if req.mtp is None else req.mtp
            if k and getattr(lm.model, "mtp_head", None) is not None:
                from .mtp import speculative_step

                steps = speculative_step(model, prompt, cache, params=req.sampling,
                                         draft_tokens=k, stats=drafts, **common)  # fmt: skip
            else:
                steps = generate_step(model, prompt, cache, sampler=make_sampler(req.sampling),
                                      share=sync.share, **common)  # fmt: skip
            reason, hit = "length", False
            for tok in steps:
                if not tokens:
                    t_first = time.perf_counter()
                tokens.append(tok)
                if sync.token_cancelled():
                    reason = "cancelled"
                    break
                if tok in eos:
                    reason = "stop"
                    break
                if tok not in special:
                    detok.add_token(tok)
                    seg, hit = stops.feed(detok.last_segment)
                    for ev in parser.feed(seg):
                        handle._put(ev)
                    if hit:
                        reason = "stop"
                        break
                if len(tokens) >= req.max_tokens:
                    break
            steps.close()
            if tokens:  # the cache now holds prompt + tokens: the next turn may extend it
                ticket.reply(tokens)
            if not hit:  # text after a stop string is dropped; otherwise flush what was held
                detok.finalize()
                tail, hit = stops.feed(detok.last_segment)
                for ev in parser.feed(tail if hit else tail + stops.flush()):
                    handle._put(ev)
            for ev in parser.finish(truncated=reason != "stop"):
                handle._put(ev)
        except Cancelled:
            reason = "cancelled"
        except EngineError as e:
            reason, error, error_kind = "error", str(e), e.kind  # type: ignore[assignment]
        except Exception as e:  # never let a request kill the worker thread
            reason, error, error_kind = "error", f"{type(e).__name__}: {e}", "internal"
        t_end = time.perf_counter()
        usage = None
        written = ticket.written if ticket is not None else 0
        if prompt:
            n = len(tokens)
            usage = Usage(
                prompt_tokens=len(prompt),
                completion_tokens=n,
                cached_tokens=cached,
                cache_write_tokens=written,
                prompt_tps=(len(prompt) - cached) / max(t_first - t0, 1e-9) if n else 0.0,
                generation_tps=(n - 1) / max(t_end - t_first, 1e-9) if n > 1 else 0.0,
                peak_memory_gb=mx.get_peak_memory() / 1e9,
                draft_tokens=drafts.drafted,
                draft_accepted=drafts.accepted,
            )
            handle._put(usage)
        matched = stops.matched if reason == "stop" else None
        handle._put(Done(reason, tokens, usage, error, matched, error_kind))


class _CacheTicket:
    """One request's use of the prompt cache: where it resumed, where it snapshots, and how many
    prompt tokens it wrote to new snapshots (Anthropic's cache_creation_input_tokens)."""

    def __init__(self, pc: PromptCache | None, lm: LoadedModel, req: GenerationRequest,
                 prompt: list[int], cache: list[Any], cached: int, kinds: dict[int, str],
                 extra: list[tuple[int, str]]):  # fmt: skip
        self.pc, self.lm, self.prompt, self.cache, self.cached = pc, lm, prompt, cache, cached
        self.kinds, self.extra = kinds, extra
        self.session = req.session or "default"
        self.written_to = cached

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
