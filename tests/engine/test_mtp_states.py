"""Per-position linear-attention states: a rejected draft rolls back without re-running the model."""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np
import pytest

from engine.generate import generate_step
from engine.model import Model
from engine.mtp import DraftStats, speculative_step
from engine.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)
PROMPT = [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300]
BLOCK = [42, 7, 311, 12, 9]


def _recurrent(cache):
    return [c for c in cache if not hasattr(c, "keys")]


def _states(cache):
    return [(np.array(c[0]), np.array(c[1])) for c in _recurrent(cache)]


def test_state_at_each_position_equals_a_run_over_the_prefix(tiny_model):
    """The state recorded after block position a equals the state of a model that was run on the
    prompt and the block's first a + 1 tokens only."""
    model = tiny_model.model
    cache = model.make_cache()
    model(mx.array(PROMPT)[None], cache=cache, hidden=True)
    with model.recording() as rec:
        model(mx.array(BLOCK)[None], cache=cache, hidden=True)
    assert rec.covers(cache) and len(rec.entries) == len(_recurrent(cache)) > 0
    for a in range(len(BLOCK)):
        ref = model.make_cache()
        model(mx.array(PROMPT + BLOCK[: a + 1])[None], cache=ref, hidden=True)
        refs = {id(c): s for c, s in zip(_recurrent(cache), _states(ref), strict=True)}
        for c, steps in rec.entries:
            conv, state = steps[a]
            want_conv, want_state = refs[id(c)]
            assert np.abs(np.array(conv) - want_conv).max() < 1e-5
            assert np.abs(np.array(state) - want_state).max() < 1e-5


def test_recording_keeps_the_forward_and_the_final_state(tiny_model):
    model = tiny_model.model
    plain_cache, rec_cache = model.make_cache(), model.make_cache()
    for c in (plain_cache, rec_cache):
        model(mx.array(PROMPT)[None], cache=c, hidden=True)
    h_plain = model(mx.array(BLOCK)[None], cache=plain_cache, hidden=True)
    with model.recording():
        h_rec = model(mx.array(BLOCK)[None], cache=rec_cache, hidden=True)
    assert np.abs(np.array(h_plain) - np.array(h_rec)).max() < 1e-4
    for (c1, s1), (c2, s2) in zip(_states(plain_cache), _states(rec_cache), strict=True):
        assert np.abs(c1 - c2).max() < 1e-5 and np.abs(s1 - s2).max() < 1e-5
    # outside `recording` nothing is recorded
    with model.recording() as rec:
        pass
    model(mx.array([1])[None], cache=rec_cache, hidden=True)
    assert rec.entries == []


def _noisy_oracle(truth, right=0.6, seed=0):
    rng = random.Random(seed)

    def draft(tokens, k):
        n = len(tokens)
        return [truth[n + i] if n + i < len(truth) and rng.random() < right else 1 for i in range(k)]

    return draft


def _counted_run(model, monkeypatch, k, n):
    """`n` tokens of a noisy-oracle speculative run; (tokens, stats, main-model forwards, cache)."""
    ref_steps = generate_step(model, PROMPT, model.make_cache(), sampler=lambda lp: mx.argmax(lp, axis=-1))
    ref = [next(ref_steps) for _ in range(n + 10)]
    ref_steps.close()
    calls = {"n": 0}
    real_call = Model.__call__

    def counting(self, *args, **kw):
        calls["n"] += 1
        return real_call(self, *args, **kw)

    monkeypatch.setattr(Model, "__call__", counting)
    stats = DraftStats()
    cache = model.make_cache()
    steps = speculative_step(
        model,
        PROMPT,
        cache,
        params=GREEDY,
        draft_tokens=k,
        stats=stats,
        drafter=_noisy_oracle(PROMPT + ref, seed=k),
    )
    out = [next(steps) for _ in range(n)]
    steps.close()
    monkeypatch.undo()
    return out, ref, stats, calls["n"], cache


@pytest.mark.parametrize("k", [1, 3, 4])
def test_a_rejection_does_not_re_advance_the_model(tiny_model, monkeypatch, k):
    """One main-model forward per round (plus the prefill's two), however many drafts are
    rejected, and a stop inside a round needs none either; output and cache stay exact."""
    model = tiny_model.model
    out, ref, stats, forwards, cache = _counted_run(model, monkeypatch, k, 23)
    assert out == ref[:23]
    assert 0 < stats.accepted < stats.drafted  # some rounds rejected drafts
    assert forwards == 2 + stats.rounds
    n = len(PROMPT) + 23
    assert all(c.offset == n for c in cache[:-1] if hasattr(c, "keys"))
    more = generate_step(model, PROMPT + ref[:24], cache, start=n, sampler=lambda lp: mx.argmax(lp, axis=-1))
    assert [next(more) for _ in range(5)] == ref[24:29]
    more.close()


def test_without_recorded_states_a_rejection_re_advances(tiny_model, monkeypatch):
    """The fallback (a model that cannot record states): restore + re-advance, still exact, and
    the forward count above does see the difference."""
    model = tiny_model.model
    monkeypatch.setattr(Model, "recording", None)
    out, ref, stats, forwards, _ = _counted_run(model, monkeypatch, 3, 23)
    assert out == ref[:23]
    assert forwards > 2 + stats.rounds
