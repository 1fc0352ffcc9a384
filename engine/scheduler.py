"""The engine's scheduler: many requests, one model call per decoded token for all of them.

It runs on the MLX worker thread, one `step` at a time between the worker's other jobs. Each step
(1) admits waiting requests up to `parallel` sequences, (2) runs one prefill forward: the next
chunk (up to PREFILL_CHUNK tokens) of the first prompt by policy (interactive before background,
then the fewest prompt tokens left, then arrival), with the next prompts' chunks when they are
text and about as long; a prompt fed all but its last id joins the running batch, (3) when a decode
step is due (`_decode_due`: at least every DECODE_EVERY prompt tokens) runs ONE batched forward
for every running sequence (a joining one feeds its prompt's last id and gets its first token
from it: no forward of its own) and samples each row with that sequence's own logits processors
and sampler, and (4) hands each sequence its token (stop strings, parser, budget, cancel,
max_tokens: the request's `_Run` in engine/engine.py) and lets finished ones leave. First tokens
are handed over as soon as they are computed.

Decoding is pipelined as in mlx-lm: the next forward is queued before the tokens of the last one are
read, so a sequence that ends has had its last token fed to its cache (its reply snapshot holds
prompt + reply, as when it runs alone). Requests that draft with the MTP head run alone (drafting
pays with one sequence); when others are running they join the batch without drafting.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import mlx.core as mx

from .batch import BatchCache, prefill_together
from .events import Done, PromptProgress
from .generate import prefill
from .request import DEFAULT_PARALLEL, PRIORITIES, GenerationRequest, PreparedRequest, RequestHandle
from .sampling import LogitsProcessor, Sampler, filter_logits, make_sampler

log = logging.getLogger("locus.engine")

# What a request's `accept` says when its thinking budget closes the reasoning (tokens to feed).
CLOSE = "close"

# A prompt's prefill chunk, one per scheduler step: the worker takes new requests between steps,
# so a short prompt that arrives during a long one's prefill starts after one chunk at most.
PREFILL_CHUNK = 512
# Prompt tokens prefilled at most between two decode steps of the running batch: each decode step
# delays every prompt still to prefill, so a burst of prompts is prefilled mostly back to back,
# while a running sequence still gets a token after every two chunks of someone's long prompt.
DECODE_EVERY = 2 * PREFILL_CHUNK
# Prompt tokens one batched prefill forward may take (several prompts' chunks, right-padded): the
# sequential parts (the Gated DeltaNet recurrence, small ops) then run once for all of them.
PREFILL_TOKENS = 8 * PREFILL_CHUNK
# Seconds without progress (waiting for admission, or no chunk of its prompt prefilled) after which
# a request goes by arrival within its priority class, so a long prompt is not starved by a steady
# stream of shorter ones. A prompt being prefilled chunk after chunk is not starved, however slow.
AGE_LIMIT_S = 30.0
_now = time.monotonic  # the scheduler's clock (a test sets it)
__all__ = ["CLOSE", "DECODE_EVERY", "DEFAULT_PARALLEL", "PREFILL_CHUNK", "Scheduler"]


def row_sampler(params: Any) -> Sampler:
    """A sequence's sampler: a seeded request draws from its own key, so it gives the same text
    alone or in a batch, whatever else is drawn meanwhile."""
    if params.greedy or params.seed is None:
        return make_sampler(params)
    key = [mx.random.key(params.seed)]

    def sample(logprobs: mx.array) -> mx.array:
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(filter_logits(logprobs, params), key=sub)

    return sample


class _Seq:
    """One request in the scheduler: its `_Run`, its prefill position, its sampling state."""

    def __init__(self, run: Any, order: int, since: float) -> None:
        self.run = run
        self.order = order
        self.since = since  # when it arrived, then when it last made progress (time.monotonic)
        self.ids: list[int] = []
        self.pos = 0  # of `ids`, how many the cache holds
        self.first = True  # prefilling the prompt (not a continuation after a closed budget)
        self.checkpoints: list[int] = []
        self.fresh = False  # its next token is the first of the reply
        self.pending = False  # in the batch feeding its prompt's last id; its first token comes next
        self.ahead = False  # its first token was handed over as soon as computed, before being fed
        self.said: Any = None  # what handing it over said (the row leaves once the token is fed)
        self.procs: list[LogitsProcessor] = []
        self.history: mx.array | None = None
        self.sampler: Sampler = row_sampler(run.req.sampling)
        self.simple = run.req.sampling.greedy  # greedy without processors: sampled with the batch

    def start(self, ids: list[int], start: int, first: bool) -> None:
        """Prefill `ids` from `start` (the cache holds that many), then decode after them."""
        self.ids, self.pos, self.first = ids, start, first
        kinds = self.run.ticket.kinds if first else {}
        self.checkpoints = sorted(p for p in kinds if start < p < len(ids))

    @property
    def rank(self) -> tuple[int, int, int, int]:
        pri = PRIORITIES.index(self.run.req.priority)
        return _ranked(pri, len(self.ids) - self.pos, self.order, self.since)

    def sample(self, logits: mx.array, fed: mx.array | None) -> mx.array:
        """The next token (1,) from this row's logits (1, vocab); `fed` is the token just fed."""
        if self.procs:
            if fed is not None:
                self.history = mx.concatenate([self.history, fed]) if self.history is not None else fed
            for proc in self.procs:
                logits = proc(self.history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return self.sampler(logprobs)


class Scheduler:
    """The requests of one Engine, run as a continuous batch on the MLX worker thread."""

    def __init__(self, engine: Any, parallel: int = DEFAULT_PARALLEL) -> None:
        self.engine = engine
        self.parallel = max(1, int(parallel))
        self.waiting: list[tuple[int, GenerationRequest, RequestHandle, PreparedRequest | None]] = []
        self.prefilling: list[_Seq] = []
        self.rows: list[_Seq] = []
        self.batch: BatchCache | None = None
        self.y: mx.array | None = None  # each row's token sampled last step, not yet handed over
        self.steps = 0  # batched forwards run (tests, stats)
        self.widest = 0  # the largest batch decoded so far
        self.held = False  # the next admission waits for memory (the batch's caches would not fit)
        self.since = 0  # prompt tokens prefilled since the last decode step
        self._order = itertools.count()
        self.arrived: dict[int, float] = {}  # arrival time of each waiting request, by its order

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.rows)

    @property
    def active(self) -> int:
        """Sequences admitted (prefilling or decoding)."""
        return len(self.prefilling) + len(self.rows)

    def add(self, req: GenerationRequest, handle: RequestHandle, prepared: PreparedRequest | None) -> None:
        """Queue a request (worker thread)."""
        order = next(self._order)
        self.arrived[order] = _now()
        self.waiting.append((order, req, handle, prepared))

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit, run one prefill forward, and (when due) decode one token for every running sequence."""
        try:
            self._admit()
            self.since += self._prefill()
            if self.rows and self._decode_due():
                self.since = 0
                self._decode()
        except Exception as e:  # a failed batched call ends every sequence in flight, not the worker
            log.exception("a batched step failed")
            self._fail_all(f"{type(e).__name__}: {e}")

    def _decode_due(self) -> bool:
        """Decode now when no prompt is left to prefill, when DECODE_EVERY prompt tokens have been
        prefilled since the last decode, or when a sequence waits for its first token and the next
        prompt would not finish within that budget (a short request during a long prefill)."""
        if not self.prefilling or self.since >= DECODE_EVERY:
            return True
        if not any(seq.pending for seq in self.rows):
            return False
        nxt = min(self.prefilling, key=lambda s: s.rank)
        return len(nxt.ids) - 1 - nxt.pos > DECODE_EVERY - self.since

    def _fail_all(self, error: str) -> None:
        seqs, self.prefilling, self.rows = self.prefilling + self.rows, [], []
        self.batch, self.y = None, None
        for seq in seqs:
            seq.run.handle._put(Done("error", seq.run.tokens, None, error, None, "internal"))

    def _waiting_rank(
        self, item: tuple[int, GenerationRequest, RequestHandle, Any]
    ) -> tuple[int, int, int, int]:
        order, req, _, prepared = item
        pri = PRIORITIES.index(req.priority) if req.priority in PRIORITIES else 0
        if prepared is not None:
            n = prepared.prompt_tokens
        else:  # not prepared: token ids say their length; text is taken as short
            n = len(req.prompt_ids) if req.prompt_ids is not None else 0
        return _ranked(pri, n, order, self.arrived.get(order, _now()))

    def _admit(self) -> None:
        while self.waiting and self.active < self.parallel:
            item = min(self.waiting, key=self._waiting_rank)
            order, req, handle, prepared = item
            alone = self._alone(req)
            if alone == "wait" or (alone == "solo" and self.active):
                return  # it runs alone once those running have finished; nothing passes it
            if not self._fits(req, prepared):
                if not self.held:
                    log.info("request %d waits: the batch's caches would not fit in memory", handle.id)
                self.held = True
                return  # it waits until running sequences free their memory; nothing passes it
            self.held = False
            self.waiting.remove(item)
            since = self.arrived.pop(order, _now())
            if alone == "solo":
                self.engine._run_job(req, handle, prepared)  # the whole request, as before batching
                continue
            run = self.engine._new_run(req, handle)
            seq = _Seq(run, order, since)
            if run.settle(lambda r=run, p=prepared: r.begin(p)):
                continue  # it ended before its first token (cancelled, a bad prompt)
            run.draft = 0  # batched steps do not draft
            seq.start(run.prompt, run.cached, True)
            self.prefilling.append(seq)

    def _reserve(self, plan: Any, req: GenerationRequest, prompt_tokens: int) -> int:
        """The live cache a sequence may grow to: its prompt plus all the tokens it may write."""
        return plan.sequence_bytes(prompt_tokens + req.max_tokens)

    def _fits(self, req: GenerationRequest, prepared: PreparedRequest | None) -> bool:
        """Admission by memory (the load-time memory plan): the caches the running sequences and
        this one may grow to must fit the plan's room for live caches. Alone, a request always
        starts (the context and fit checks govern it)."""
        pc = getattr(self.engine, "prompt_cache", None)
        plan = getattr(pc, "plan", None)
        if plan is None or not self.active:
            return True
        n = prepared.prompt_tokens if prepared is not None else len(req.prompt_ids or ())
        need = self._reserve(plan, req, n)
        for seq in self.prefilling + self.rows:
            need += self._reserve(plan, seq.run.req, len(seq.run.prompt))
        return need <= plan.live_room_bytes

    def _alone(self, req: GenerationRequest) -> str:
        """ "batch"; "solo" (drafts with the MTP head: alone when nothing else waits or runs);
        "wait" (a model the batch cannot run: alone once the batch is empty)."""
        from .model import Model

        eng = self.engine
        lm = eng._loaded
        # An engine that runs requests its own way (the pipeline's, in lockstep with other
        # processes), or a model the batch cannot drive, runs one request at a time.
        if not eng._batches() or lm is None or not isinstance(lm.model, Model):
            return "wait" if self.active else "solo"
        if eng._draft_tokens(req) and len(self.waiting) == 1 and not self.active:
            return "solo"
        return "batch"

    # -- prefill ----------------------------------------------------------------------------------
    def _prefill(self) -> int:
        """One prefill forward by policy: the first prompt's next chunk, together with the next
        ones' when they are text and about as long (several short prompts, or chunks of several
        long ones, in one batched call). Prompts fed all but their last id join the batch.
        Returns the prompt tokens fed."""
        self._settle_ready()
        group = self._group()
        if not group:
            return 0
        if len(group) == 1:
            seq, n = group[0]
            chunk = mx.array(seq.ids[seq.pos : seq.pos + n], dtype=mx.uint32)
            if seq.run.settle(lambda: self._chunk(seq, chunk)):
                self.prefilling.remove(seq)
        else:
            self._chunk_together(group)
        self._settle_ready()
        return sum(n for _, n in group)

    def _settle_ready(self) -> None:
        """Cancelled prompts end; prompts fed all but their last id join the batch."""
        for seq in sorted(self.prefilling, key=lambda s: s.rank):
            run = seq.run
            if run.handle.cancelled:  # as alone: a prefill cut short keeps no reply snapshot
                self.prefilling.remove(seq)
                run.settle(_cancelled)
            elif seq.pos >= len(seq.ids) - 1:  # the last id is fed by the batch's next step
                self.prefilling.remove(seq)
                if not run.settle(lambda s=seq: self._join(s) if _foldable(s) else self._first(s)):
                    self.rows.append(seq)

    def _group(self) -> list[tuple[_Seq, int]]:
        """The chunks of the next prefill forward: (sequence, tokens). Each is the sequence's own
        next chunk (its boundaries never depend on what else runs), so its numbers are the same
        alone or not; padding may waste at most about a quarter of the call."""
        ranked = sorted(self.prefilling, key=lambda s: s.rank)
        if not ranked:
            return []
        first = ranked[0]
        group = [(first, _next_chunk(first))]
        total = width = group[0][1]
        for seq in ranked[1:] if _plain(first) else ():
            n = _next_chunk(seq)
            wide = max(width, n)
            if len(group) >= self.parallel or total + n > PREFILL_TOKENS or not _plain(seq):
                break
            if wide * (len(group) + 1) > 1.25 * (total + n) + 64:
                break
            group.append((seq, n))
            total, width = total + n, wide
        return group

    def _chunk_together(self, group: list[tuple[_Seq, int]]) -> None:
        model = self.engine.model.model
        try:
            with mx.stream(self.engine._stream):
                prefill_together(
                    model,
                    [seq.ids[seq.pos : seq.pos + n] for seq, n in group],
                    [seq.run.cache for seq, _ in group],
                    len(model.layers),
                )
        except Exception as e:  # every sequence of the call ends with the error
            log.exception("a batched prefill failed")
            for seq, _ in group:
                self.prefilling.remove(seq)
                seq.run.settle(lambda e=e: _raise(e))
            return
        for seq, n in group:
            if seq.run.settle(lambda s=seq, k=n: self._fed(s, k)):
                self.prefilling.remove(seq)

    def _chunk(self, seq: _Seq, chunk: mx.array) -> None:
        run = seq.run
        prefill(run.model, chunk, run.cache, step=chunk.shape[0], stream=self.engine._stream)
        return self._fed(seq, chunk.shape[0])

    def _fed(self, seq: _Seq, n: int) -> None:
        """`n` more prompt tokens are in the cache: progress, and a snapshot at a boundary."""
        run = seq.run
        seq.pos += n
        seq.since = _now()  # progress: its aging clock starts again
        if seq.first:
            run.handle._put(PromptProgress(seq.pos, len(seq.ids)))
            if seq.pos in seq.checkpoints:
                run.ticket.checkpoint(seq.pos)
        return None

    def _ready(self, seq: _Seq) -> None:
        run = seq.run
        seq.procs = run.processors()
        seq.simple = run.req.sampling.greedy and not seq.procs
        seq.history = mx.array(seq.ids, dtype=mx.uint32) if seq.procs else None
        seq.fresh = True

    def _enter(self, seq: _Seq, y0: mx.array) -> None:
        run = seq.run
        if self.batch is None:
            self.batch = BatchCache(len(self.engine.model.model.layers))
        self.batch.add(run.cache, getattr(run.model, "delta", 0))
        self.y = y0 if self.y is None else mx.concatenate([self.y, y0.astype(self.y.dtype)])

    def _join(self, seq: _Seq) -> None:
        """The sequence joins the batch feeding its prompt's last id: the next batched forward
        gives its first token together with everyone else's next one (no forward of its own)."""
        self._ready(seq)
        seq.pending = True
        self._enter(seq, mx.array(seq.ids[-1:], dtype=mx.uint32))
        return None

    def _first(self, seq: _Seq) -> None:
        """The first token, from the prompt's last id run alone (an image token: only the bound
        model places it); then the sequence joins the batch."""
        run = seq.run
        self._ready(seq)
        with mx.stream(self.engine._stream):
            last = mx.array(seq.ids[-1:], dtype=mx.uint32)
            logits = run.model(last[None], cache=run.cache)[:, -1, :]
            y0 = seq.sample(logits, None)
        self._enter(seq, y0)
        return None

    # -- decode -----------------------------------------------------------------------------------
    def _decode(self) -> None:
        rows, y, batch = self.rows, self.y, self.batch
        assert y is not None and batch is not None
        with mx.stream(self.engine._stream):
            logits = batch.logits(self.engine.model.model, y)
            nxt = self._sample(rows, y, logits)
        mx.async_eval(nxt)
        self.steps += 1
        self.widest = max(self.widest, len(rows))
        if self.steps % 256 == 0:
            mx.clear_cache()
        outs = []
        for i, (seq, tok) in enumerate(zip(rows, y.tolist(), strict=True)):
            if seq.pending:  # it fed its prompt's last id: its first token is in `nxt`
                seq.pending, seq.ahead, seq.said = False, True, None
            elif seq.ahead:  # handed over already; now fed, the row may leave
                seq.ahead = False
                if seq.said is not None:
                    outs.append((i, seq, seq.said))
            elif (out := self._deliver(seq, tok)) is not None:
                outs.append((i, seq, out))
        if outs:
            nxt = self._leave(outs, nxt)
        self.y = nxt
        if any(seq.ahead for seq in self.rows):
            # First tokens go out now, not after the prompts prefilled before the next decode step.
            for seq, tok in zip(self.rows, nxt.tolist(), strict=True):
                if seq.ahead:
                    seq.said = self._deliver(seq, tok)
        time.sleep(0)  # let the readers of the events just queued run (and cancel in time)

    @staticmethod
    def _sample(rows: list[_Seq], y: mx.array, logits: mx.array) -> mx.array:
        """Each row's next token: greedy rows without processors together, the others each with
        its own processors (over its own history) and sampler."""
        if all(s.simple for s in rows):
            return mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True), axis=-1)
        parts = []
        for i, seq in enumerate(rows):  # a row that fed its prompt's last id has it in its history
            parts.append(seq.sample(logits[i : i + 1], None if seq.pending else y[i : i + 1]))
        return mx.concatenate(parts)

    def _deliver(self, seq: _Seq, tok: int) -> Any:
        """Hand a row its token; what `_Run.accept` says (None: it goes on), "error" if it raised."""
        run = seq.run
        if seq.fresh:
            seq.fresh = False
            if seq.first:
                run.handle._put(PromptProgress(len(seq.ids), len(seq.ids)))
        said: list[Any] = []

        def body() -> None:
            said.append(run.accept(tok))
            return None

        if run.settle(body):  # it raised: the request has ended with an error
            return "ended"
        return said[0]

    def _leave(self, outs: list[tuple[int, _Seq, Any]], nxt: mx.array) -> mx.array | None:
        """Finished rows (and rows that must feed forced tokens) leave the batch with their caches."""
        batch = self.batch
        assert batch is not None
        gone = {i for i, _, _ in outs}
        for i, seq, _ in outs:
            seq.run.cache[:] = batch.take(i)  # the ticket's list too: its reply snapshot reads it
        keep = [i for i in range(len(self.rows)) if i not in gone]
        batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]
        for _, seq, out in outs:
            run = seq.run
            if out == CLOSE:
                ids, start = run.closing()
                seq.start(ids, start, False)
                self.prefilling.append(seq)
            elif out != "ended":
                run.settle(lambda r=run, o=out: r.end(o))
        if not keep:
            self.batch = None
            return None
        return nxt[mx.array(keep, dtype=mx.int32)]

    def stats(self) -> dict[str, int]:
        """Waiting and admitted requests, and the batch decoding now (read from any thread)."""
        return {
            "waiting": len(self.waiting),
            "active": self.active,
            "batch": len(self.rows),
            "parallel": self.parallel,
        }


def _ranked(pri: int, left: int, order: int, since: float) -> tuple[int, int, int, int]:
    """Priority class first; within it, the fewest prompt tokens left, except that a request older
    than AGE_LIMIT_S without progress goes ahead of younger ones, by arrival."""
    aged = _now() - since >= AGE_LIMIT_S
    return (pri, 0 if aged else 1, 0 if aged else left, order)


def _next_chunk(seq: _Seq) -> int:
    """Tokens of the sequence's next prefill chunk: up to PREFILL_CHUNK, never past its next
    snapshot point, all but the prompt's last id."""
    end = len(seq.ids) - 1
    stop = next((p for p in seq.checkpoints if p > seq.pos), end)
    return max(0, min(PREFILL_CHUNK, stop - seq.pos))


def _plain(seq: _Seq) -> bool:
    """A text prompt (no images): its chunks can be fed together with others'."""
    return getattr(seq.run.model, "inputs", None) is None


def _raise(e: Exception) -> None:
    raise e


def _foldable(seq: _Seq) -> bool:
    """Whether the prompt's last id can be fed in the batch: any text token (the batch shifts its
    rotary position by the row's delta, as the bound model does past the last image)."""
    inputs = getattr(seq.run.model, "inputs", None)
    last = len(seq.ids) - 1
    return not seq.first or inputs is None or all(not (s.start <= last < s.end) for s in inputs.images)


def _cancelled() -> None:
    from .generate import Cancelled

    raise Cancelled
