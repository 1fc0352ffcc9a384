"""Continuous batching (engine/scheduler.py, engine/batch.py): each request's output in a batch is
its output alone, token for token, and the scheduler's policy is visible.

"Alone" is the engine's single-request path (`generate.generate_step`, what ran every request
before batching), so these tests also pin the batched path to it.
"""

from __future__ import annotations

import io
import random
import time

import pytest

from engine import Engine, GenerationRequest, PromptCache, PromptProgress, SamplingParams, TextDelta
from engine.request import GenerationResult, RequestHandle
from engine.scheduler import DECODE_EVERY, PREFILL_CHUNK

GREEDY = SamplingParams(temperature=0)


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 240) for _ in range(n)]


# Mixed lengths: one token, shorter than a chunk, across chunk boundaries.
PROMPTS = [_ids(n, n) for n in (1, 9, 40, PREFILL_CHUNK + 7, 2 * PREFILL_CHUNK + 100, 3)]


def alone(eng: Engine, req: GenerationRequest):
    """The request on the old single-request path (generate_step), nothing else running."""
    h = RequestHandle()
    eng._jobs.put(lambda: eng._run_job(req, h, None))
    return h.result()


def together(eng: Engine, reqs: list[GenerationRequest]):
    """The requests submitted at once (they join the batch over the first steps)."""
    before = eng.scheduler.widest
    eng.scheduler.widest = 0
    handles = [eng.submit(r) for r in reqs]
    out = [h.result() for h in handles]
    widest, eng.scheduler.widest = eng.scheduler.widest, max(before, eng.scheduler.widest)
    return out, widest


@pytest.fixture(scope="module")
def fp32(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")), prompt_cache=PromptCache(memory_bytes=0))
    yield eng
    eng.close()


def _greedy(ids: list[int], n: int, **kw) -> GenerationRequest:
    return GenerationRequest(prompt_ids=ids, sampling=GREEDY, max_tokens=n, use_cache=False, **kw)


@pytest.mark.parametrize("which", ["fp32", "4bit"])
def test_greedy_in_a_batch_equals_alone(which, fp32, engine):
    eng = fp32 if which == "fp32" else engine
    # Different max_tokens: sequences leave the batch at different steps while others go on.
    reqs = [_greedy(p, 12 + 5 * i) for i, p in enumerate(PROMPTS)]
    ref = [alone(eng, r) for r in reqs]
    got, widest = together(eng, reqs)
    assert widest >= 4  # they really ran as one batch
    for r, g in zip(ref, got, strict=True):
        assert g.error is None and g.finish_reason == r.finish_reason
        assert g.token_ids == r.token_ids
        assert g.text == r.text and g.reasoning == r.reasoning


def test_a_request_joining_mid_stream_leaves_the_others_unchanged(engine):
    long = _greedy(PROMPTS[2], 60)
    ref_long, ref_late = alone(engine, long), alone(engine, _greedy(PROMPTS[1], 10))
    h = engine.submit(long)
    events = h.events(timeout=120)
    seen = 0
    for ev in events:  # a few tokens in, a second request joins
        if isinstance(ev, TextDelta):
            seen += 1
            if seen == 3:
                break
    late = engine.submit(_greedy(PROMPTS[1], 10)).result()
    rest = list(events)
    assert late.token_ids == ref_late.token_ids
    assert rest[-1].token_ids == ref_long.token_ids


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(engine):
    seeded = GenerationRequest(
        prompt_ids=PROMPTS[2],
        sampling=SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=7),
        max_tokens=30,
        use_cache=False,
    )
    noise = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)  # unseeded: draws from the global RNG
    first = engine.submit(seeded).result()
    others = [
        GenerationRequest(prompt_ids=p, sampling=noise, max_tokens=30, use_cache=False) for p in PROMPTS[:3]
    ]
    got, widest = together(engine, [*others, seeded])
    assert widest >= 2
    assert got[-1].token_ids == first.token_ids
    other_seed = GenerationRequest(**{**seeded.__dict__, "sampling": seeded.sampling.with_(seed=8)})
    assert engine.submit(other_seed).result().token_ids != first.token_ids


def test_penalties_apply_per_sequence_over_its_own_output(engine):
    pen = GREEDY.with_(presence_penalty=1.5, repetition_penalty=1.3)
    reqs = [
        GenerationRequest(prompt_ids=p, sampling=pen, max_tokens=25, use_cache=False) for p in PROMPTS[:4]
    ]
    ref = [alone(engine, r) for r in reqs]
    got, _ = together(engine, reqs)
    assert [g.token_ids for g in got] == [r.token_ids for r in ref]


def test_stop_strings_max_tokens_and_cancel_are_per_sequence(engine):
    base = alone(engine, _greedy(PROMPTS[3], 40))
    assert len(base.text) > 6, "the tiny model must write some text for this test"
    stop = base.text[3:6]
    long = _greedy(PROMPTS[4], 40)
    ref_long = alone(engine, long)
    h_long = engine.submit(long)
    h_stop = engine.submit(_greedy(PROMPTS[3], 40, stop=[stop]))
    h_len = engine.submit(_greedy(PROMPTS[2], 4))
    h_cancel = engine.submit(_greedy(PROMPTS[1], 100000))
    seen = 0
    for ev in h_cancel.events(timeout=120):
        if isinstance(ev, TextDelta):
            seen += 1
            if seen == 2:
                h_cancel.cancel()
    assert h_cancel.done.finish_reason == "cancelled" and len(h_cancel.done.token_ids) < 40
    r_stop, r_len, r_long = h_stop.result(), h_len.result(), h_long.result()
    assert r_stop.finish_reason == "stop" and r_stop.text == base.text[: base.text.index(stop)]
    assert r_len.finish_reason == "length" and len(r_len.token_ids) == 4
    assert r_long.token_ids == ref_long.token_ids


def test_thinking_budget_closes_inside_the_batch_as_alone(fp32):
    chat = [{"role": "user", "content": "Think about the sea."}]
    req = GenerationRequest(messages=chat, sampling=GREEDY, max_tokens=20, thinking_budget=3, use_cache=False)
    ref = alone(fp32, req)
    got, widest = together(fp32, [_greedy(PROMPTS[4], 30), req, _greedy(PROMPTS[2], 30)])
    assert widest >= 2
    assert got[1].token_ids == ref.token_ids and got[1].reasoning == ref.reasoning


def _png() -> bytes:
    from PIL import Image

    img = Image.new("RGB", (64, 48), (200, 30, 60))
    for x in range(0, 64, 8):
        img.putpixel((x, x % 48), (0, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_prompt_batches_with_text_and_keeps_its_positions(fp32):
    msgs = [
        {"role": "user", "content": [{"type": "image", "image": _png()}, {"type": "text", "text": "What?"}]}
    ]
    img = GenerationRequest(
        messages=msgs, sampling=GREEDY, max_tokens=16, enable_thinking=False, use_cache=False
    )
    ref = alone(fp32, img)
    texts = [_greedy(PROMPTS[2], 24), _greedy(PROMPTS[4], 24)]
    ref_texts = [alone(fp32, r) for r in texts]
    got, widest = together(fp32, [texts[0], img, texts[1]])
    assert widest >= 2
    assert got[1].token_ids == ref.token_ids
    assert [got[0].token_ids, got[2].token_ids] == [r.token_ids for r in ref_texts]


def _reply_snapshot(eng: Engine, ids: list[int]) -> list:
    """The arrays of the prompt cache's snapshot of exactly `ids` (every layer's state)."""
    import mlx.core as mx

    def job() -> list:
        lm = eng.model
        cache, n = eng.prompt_cache.lookup(lm.model_id, [*ids, 0], lm.model.make_cache(), [])
        assert n == len(ids)
        out = []
        for c in cache:
            if hasattr(c, "keys") and c.keys is not None:
                out += [c.keys[..., : c.offset, :], c.values[..., : c.offset, :]]
            elif not hasattr(c, "keys"):
                out += [x for x in c.cache if x is not None]
        mx.eval(out)
        return out

    return eng._call(job)


def test_prompt_cache_resume_inside_a_batch(tiny_dir):
    """Each request snapshots its own reply in the batch and resumes from its own snapshot there:
    the resumed reply equals one computed from scratch, with `cached_tokens` as alone."""
    path = str(tiny_dir("per_expert"))
    others = [_greedy(PROMPTS[4], 30), _greedy(PROMPTS[2], 30)]

    def req(ids: list[int], **kw) -> GenerationRequest:
        return GenerationRequest(prompt_ids=ids, sampling=GREEDY, max_tokens=12, session="a", **kw)

    results = []
    for batched in (False, True):
        eng = Engine.from_path(path, prompt_cache=PromptCache(memory_bytes=1 << 30))
        try:
            if batched:  # the first turn's reply snapshot is taken as it leaves a batch
                (first, *_), _ = together(eng, [req(PROMPTS[3]), *others])
            else:
                first = alone(eng, req(PROMPTS[3]))
            ids2 = PROMPTS[3] + first.token_ids + PROMPTS[1]  # the next turn extends prompt + reply
            if batched:
                (second, *_), widest = together(eng, [req(ids2), *others])
                assert widest >= 2
            else:
                second = alone(eng, req(ids2))
            scratch = alone(eng, req(ids2, use_cache=False))
            results.append((first, second, scratch, _reply_snapshot(eng, PROMPTS[3] + first.token_ids)))
        finally:
            eng.close()
    (f_solo, solo, scratch_solo, snap_solo), (f_batch, batch, scratch_batch, snap_batch) = results
    assert f_batch.token_ids == f_solo.token_ids
    assert len(snap_batch) == len(snap_solo) and all(
        a.shape == b.shape and bool((a == b).all()) for a, b in zip(snap_batch, snap_solo, strict=True)
    ), "the reply snapshot taken in the batch differs from the one taken alone"
    # Resumed from the reply's snapshot (prompt + reply), the one taken as it left the batch.
    assert batch.usage.cached_tokens == solo.usage.cached_tokens == len(PROMPTS[3]) + len(f_solo.token_ids)
    assert batch.token_ids == scratch_batch.token_ids == solo.token_ids == scratch_solo.token_ids


# -- the scheduling policy ----------------------------------------------------------------------


def _drive(eng: Engine, fn):
    """Run `fn(scheduler)` on the worker thread, stepping the scheduler by hand."""
    return eng._call(lambda: fn(eng.scheduler))


def test_a_short_request_gets_its_first_token_before_a_long_prefill_ends(engine):
    """The short prompt is prefilled at the next step and its first token computed and handed over
    in that same step; then it gets a token at least every DECODE_EVERY prompt tokens of the long
    one, so its text flows while the long prompt is still being prefilled."""
    long_ids = _ids(16 * PREFILL_CHUNK, 99)
    h_long, h_short = RequestHandle(), RequestHandle()

    def long_done() -> int:
        return max(
            (e.processed for e in list(h_long._queue.queue) if isinstance(e, PromptProgress)), default=0
        )

    def run(s):
        s.add(_greedy(long_ids, 4), h_long, None)
        s.step()  # admitted, first chunk
        s.add(_greedy(PROMPTS[1], 12), h_short, None)
        s.step()
        first_at = long_done()
        assert [len(seq.run.tokens) for seq in s.rows] == [1]  # the short one's first token
        steps = 0
        while not any(isinstance(e, TextDelta) for e in list(h_short._queue.queue)):
            s.step()
            steps += 1
            assert steps < 50
        text_at = long_done()
        gaps, last = [], (s.steps, long_done())
        while s.rows and s.rows[0].run is not None and long_done() < len(long_ids):
            s.step()
            if s.steps != last[0]:  # a decode step ran: prompt tokens prefilled since the one before
                gaps.append(long_done() - last[1])
                last = (s.steps, long_done())
        return first_at, text_at, gaps

    first_at, text_at, gaps = _drive(engine, run)
    # First token after one chunk of the long prompt; text while it was still being prefilled.
    assert first_at == PREFILL_CHUNK
    assert text_at < len(long_ids)
    assert gaps and max(gaps) <= DECODE_EVERY
    assert h_long.result().error is None and h_short.result().error is None


def test_prompts_starting_together_are_prefilled_and_answered_in_one_forward_each(engine, monkeypatch):
    lm_class = type(engine.model.model)
    shapes: list[tuple[int, ...]] = []
    call = lm_class.__call__

    def counted(self, inputs, *a, **kw):
        shapes.append(tuple(inputs.shape))
        return call(self, inputs, *a, **kw)

    reqs = [_greedy(_ids(n, n + 1), 3) for n in (41, 45, 38, 48)]
    want = [alone(engine, r).token_ids for r in reqs]
    handles = [RequestHandle() for _ in reqs]

    def run(s):
        for r, h in zip(reqs, handles, strict=True):
            s.add(r, h, None)
        monkeypatch.setattr(lm_class, "__call__", counted)
        s.step()
        firsts = [len(seq.run.tokens) for seq in s.rows]
        monkeypatch.setattr(lm_class, "__call__", call)
        while s.busy:
            s.step()
        return firsts

    firsts = _drive(engine, run)
    # One step: the four prompts (all but their last ids, right-padded) in ONE forward, then one
    # batched forward whose tokens are the four first tokens, handed over at once.
    assert firsts == [1, 1, 1, 1]
    assert shapes == [(4, 47), (4, 1)]
    assert [h.result().token_ids for h in handles] == want


@pytest.mark.parametrize("which", ["fp32", "4bit"])
def test_long_prompts_prefilled_together_chunk_by_chunk_equal_alone(which, fp32, engine):
    """Three long prompts of about the same length share each prefill forward, chunk after chunk
    (at cache offsets 0, 512, 1024), with a prompt-cache boundary inside; each output as alone."""
    eng = fp32 if which == "fp32" else engine
    reqs = [
        _greedy(_ids(n, n), 6)
        for n in (2 * PREFILL_CHUNK + 90, 2 * PREFILL_CHUNK + 70, 2 * PREFILL_CHUNK + 99)
    ]
    want = [alone(eng, r).token_ids for r in reqs]
    got, widest = together(eng, reqs)
    assert widest == 3 and [g.token_ids for g in got] == want


def test_prompts_arriving_together_are_prefilled_back_to_back(engine):
    """Four prompts of different lengths arriving together (too different to share a forward):
    each decode step would delay every prompt still waiting, so they are prefilled with two decode
    steps in between (not one after each), outputs unchanged."""
    reqs = [_greedy(_ids(n, n), 3) for n in (60, 200, 350, 500)]
    want = [alone(engine, r).token_ids for r in reqs]
    handles = [RequestHandle() for _ in reqs]

    def run(s):
        before = s.steps
        for r, h in zip(reqs, handles, strict=True):
            s.add(r, h, None)
        started: set[int] = set()
        while len(started) < len(reqs) and s.busy:
            s.step()
            started |= {id(seq.run) for seq in s.rows if seq.run.tokens}
        decodes = s.steps - before
        while s.busy:
            s.step()
        return decodes

    assert _drive(engine, run) == 2
    assert [h.result().token_ids for h in handles] == want


def _finish_order(eng: Engine) -> list[str]:
    """The order in which a long background, an interactive and a short background request end, one
    at a time (the engine runs one sequence)."""
    order: list[str] = []
    handles = {n: RequestHandle() for n in ("bg", "ui", "bg-short")}

    def run(s):
        s.add(_greedy(PROMPTS[2], 2, priority="background"), handles["bg"], None)
        s.add(_greedy(PROMPTS[4], 2, priority="interactive"), handles["ui"], None)
        s.add(_greedy(PROMPTS[0], 2, priority="background"), handles["bg-short"], None)
        while s.busy:
            s.step()
            for n, h in handles.items():
                if h.ended and n not in order:
                    order.append(n)

    _drive(eng, run)
    return order


def test_interactive_requests_are_admitted_before_background_ones(tiny_model):
    eng = Engine(tiny_model, parallel=1)
    try:
        order = _finish_order(eng)
        # One at a time: interactive first, then the background ones, shortest prompt first.
        assert order == ["ui", "bg-short", "bg"]
    finally:
        eng.close()


def test_stats_show_the_batch(engine):
    stats = engine.stats()
    assert stats.parallel == engine.scheduler.parallel >= 4
    assert stats.running == stats.queued == stats.batch_size == 0


def test_mtp_drafts_alone_and_batches_without_drafting_with_the_same_output(tiny_model):
    from dataclasses import replace

    assert tiny_model.model.mtp_head is not None
    eng = Engine(tiny_model, mtp=2, parallel=4)
    try:
        reqs = [_greedy(p, 20) for p in PROMPTS[1:4]]
        ref = [alone(eng, replace(r, mtp=0)) for r in reqs]
        eng.scheduler.widest = 0
        first = eng.submit(reqs[0])
        events = first.events(timeout=120)
        next(events)  # it has started, alone
        rest = [eng.submit(r) for r in reqs[1:]]
        got = [GenerationResult.of(events), *(h.result() for h in rest)]
        assert [g.token_ids for g in got] == [r.token_ids for r in ref]
        # The first ran alone and drafted; the others, waiting together, were batched without drafts.
        assert got[0].usage.draft_tokens > 0
        assert eng.scheduler.widest == 2 and all(g.usage.draft_tokens == 0 for g in got[1:])
    finally:
        eng.close()


def test_a_seeded_sampled_request_does_not_draft_so_its_text_is_its_seeds(tiny_model):
    """With --mtp on, a seeded request at temperature 1 gives the same text alone (where it would
    otherwise draft, drawing differently) as in a batch: it does not draft."""
    eng = Engine(tiny_model, mtp=2, parallel=4)
    try:
        seeded = GenerationRequest(
            prompt_ids=PROMPTS[2],
            sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=11),
            max_tokens=24,
            use_cache=False,
        )
        lone = eng.submit(seeded).result()
        assert lone.usage.draft_tokens == 0
        got, widest = together(eng, [*(_greedy(p, 24) for p in PROMPTS[1:3]), seeded])
        assert widest == 3 and got[-1].token_ids == lone.token_ids
    finally:
        eng.close()


def test_admission_waits_for_memory_the_batch_caches_need(fp32):
    """With a memory plan whose room for live caches holds two sequences' worst case (prompt plus
    max_tokens), a third waits for one to finish, instead of joining; every output is unchanged."""
    from engine.memplan import MemoryPlan

    reqs = [_greedy(_ids(10, 70 + i), 20) for i in range(4)]
    want = [alone(fp32, r).token_ids for r in reqs]
    per_seq = 30 * 1000  # (10 prompt + 20 new tokens) x 1000 bytes, no state

    def plan(free: int) -> MemoryPlan:
        sizes = dict(weights_bytes=0, kv_bytes_per_token=1000, state_bytes=0, sequences=4)
        return MemoryPlan(
            free_bytes=free, context_tokens=30, snapshot_budget_bytes=0, overhead_bytes=0, **sizes
        )

    pc = fp32.prompt_cache
    try:
        pc.plan = plan(2 * per_seq + per_seq // 2)
        out, widest = together(fp32, reqs)
        assert [r.token_ids for r in out] == want
        assert widest == 2
        pc.plan = plan(10 * per_seq)  # room for all: they batch
        out, widest = together(fp32, reqs)
        assert [r.token_ids for r in out] == want and widest == 4
    finally:
        pc.plan = None


def test_a_request_past_the_age_limit_goes_by_arrival(tiny_model, monkeypatch):
    """Aging: once requests have waited AGE_LIMIT_S, the older goes first even when its prompt is
    longer (a long prompt is not starved by a stream of short ones); the priority class still rules."""
    from engine import scheduler

    monkeypatch.setattr(scheduler, "AGE_LIMIT_S", 0.0)  # every request is already "old"
    eng = Engine(tiny_model, parallel=1)
    try:
        order = _finish_order(eng)
        assert order == ["ui", "bg", "bg-short"]  # not shortest-first: the older background one first
    finally:
        eng.close()


def test_a_prompt_being_prefilled_is_not_aged_however_slow(engine, monkeypatch):
    """Aging counts time without progress: a long prompt that arrived more than AGE_LIMIT_S ago but
    had a chunk prefilled since does not go ahead of a short request that arrives now (on a slow
    machine every chunk may take longer than the limit)."""
    from engine import scheduler

    clock = [0.0]
    monkeypatch.setattr(scheduler, "AGE_LIMIT_S", 1.0)
    monkeypatch.setattr(scheduler, "_now", lambda: clock[0])
    h_long, h_short = RequestHandle(), RequestHandle()

    def run(s):
        s.add(_greedy(_ids(4 * PREFILL_CHUNK, 5), 2), h_long, None)  # arrives at 0
        clock[0] = 0.5
        s.step()  # its first chunk, done at 0.5
        clock[0] = 1.2  # 1.2 s since it arrived, 0.7 s since its last progress
        s.add(_greedy(PROMPTS[1], 2), h_short, None)
        s.step()
        short_started = bool(s.rows) and s.rows[0].run.handle is h_short
        long_pos = s.prefilling[0].pos if s.prefilling else None
        while s.busy:
            s.step()
        return short_started, long_pos

    assert _drive(engine, run) == (True, PREFILL_CHUNK)
    assert h_long.result().error is None and h_short.result().error is None


def test_a_request_prepared_between_steps_joins_the_next_step(engine, monkeypatch):
    """A server prepares a request (a job between two steps), then submits it from its own thread a
    moment later: the worker waits for that submit before stepping on, so the request is queued
    before the next step, not one step (a whole prefill chunk, seconds on a large model) later."""
    from engine.scheduler import Scheduler

    started, added = [0], []
    step, add = Scheduler.step, Scheduler.add

    def counted_step(self):
        started[0] += 1
        return step(self)

    def counted_add(self, *a):
        added.append(started[0])
        return add(self, *a)

    monkeypatch.setattr(Scheduler, "step", counted_step)
    monkeypatch.setattr(Scheduler, "add", counted_add)
    h_long = engine.submit(_greedy(_ids(16 * PREFILL_CHUNK, 7), 2))
    while started[0] < 2:  # the worker is stepping through the long prompt
        time.sleep(0.001)
    at_prepare: list[int] = []
    prepare = engine._prepare

    def recorded(req):  # on the worker, in the prepare job: the steps started so far
        out = prepare(req)
        at_prepare.append(started[0])
        return out

    monkeypatch.setattr(engine, "_prepare", recorded)
    prepared = engine.prepare(_greedy(PROMPTS[2], 2))
    time.sleep(0.01)  # the caller's own work between prepare and submit
    h_short = engine.submit(prepared)
    assert h_short.result().error is None and h_long.result().error is None
    assert added[-1] == at_prepare[-1]
