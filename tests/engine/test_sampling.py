"""Penalties as Qwen's sampling settings assume them: presence/frequency over generated tokens only
(vLLM / OpenAI semantics), repetition over prompt and output (transformers), checked against numpy."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine import GenerationRequest, SamplingParams
from engine.errors import RequestError
from engine.sampling import make_logits_processors

PROMPT = [5, 17, 33, 2, 91, 44, 7, 120, 64]


def reference(logits: np.ndarray, prompt: list[int], output: list[int], p: SamplingParams):
    """The penalties written from vLLM's and transformers' definitions, in numpy."""
    out = logits.astype(np.float64).copy()
    if p.repetition_penalty != 1.0:
        for t in set(prompt) | set(output):
            v = out[t]
            out[t] = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
    counts = np.bincount(np.array(output, dtype=np.int64), minlength=len(out)) if output else 0
    out = out - p.frequency_penalty * counts - p.presence_penalty * (np.asarray(counts) > 0)
    return out


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(presence_penalty=1.5),
        SamplingParams(frequency_penalty=0.7),
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(presence_penalty=-1.0, frequency_penalty=0.5, repetition_penalty=0.8),
    ],
)
def test_processor_matches_reference_step_by_step(params):
    rng = np.random.default_rng(0)
    vocab = 64
    prompt = [int(t) for t in rng.integers(0, vocab, 12)]
    (proc,) = make_logits_processors(params, len(prompt))
    output: list[int] = []
    for _ in range(20):
        logits = rng.normal(size=vocab).astype(np.float32) * 3
        history = mx.array(prompt + output, dtype=mx.uint32)
        got = np.array(proc(history, mx.array(logits)[None]))[0]
        np.testing.assert_allclose(got, reference(logits, prompt, output, params), atol=1e-5)
        output.append(int(rng.integers(0, vocab)))


def test_no_processor_when_all_penalties_are_off():
    assert make_logits_processors(SamplingParams(), 10) == []


def test_frequency_penalty_is_validated():
    with pytest.raises(RequestError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=3).validate()


def test_greedy_with_presence_penalty_equals_output_only_reference(engine):
    """The prompt's own tokens are not pushed down; far-back output repetition still is."""
    p = SamplingParams(temperature=0, presence_penalty=2.0)
    h = engine.submit(GenerationRequest(prompt_ids=PROMPT, sampling=p, max_tokens=24))
    done = list(h.events(timeout=120))[-1]
    got = done.token_ids

    # Reference: the same model, full forward over prompt + output each step, numpy penalties.
    model = engine.model.model
    eos = set(engine.model.eos_token_ids)
    want: list[int] = []
    for _ in range(len(got)):
        logits = model(mx.array([PROMPT + want]), cache=model.make_cache())[0, -1]
        nxt = int(np.argmax(reference(np.array(logits.astype(mx.float32)), PROMPT, want, p)))
        want.append(nxt)
        if nxt in eos:
            break
    assert got == want


def reference_filter(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Temperature → top-k → top-p → min-p, written from transformers' logits warpers."""
    x = logits.astype(np.float64) / p.temperature
    if 0 < p.top_k < len(x):
        kth = np.sort(x)[-p.top_k]
        x = np.where(x < kth, -np.inf, x)
    if p.top_p < 1:
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        x[order[mass_before >= p.top_p]] = -np.inf
    if p.min_p > 0:
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        x = np.where(probs < p.min_p * probs.max(), -np.inf, x)
    return x


FILTERS = [
    SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0),  # instruct preset
    SamplingParams(temperature=1.0, top_p=0.95, top_k=20, min_p=0.0),  # thinking preset
    SamplingParams(temperature=0.6, top_p=1.0, top_k=0, min_p=0.1),
    SamplingParams(temperature=1.3, top_p=0.5, top_k=5, min_p=0.05),
]


@pytest.mark.parametrize("params", FILTERS)
def test_filter_matches_reference_order(params):
    from engine.sampling import filter_logits

    rng = np.random.default_rng(1)
    for _ in range(10):
        logits = (rng.normal(size=200) * 2.5).astype(np.float32)
        got = np.array(filter_logits(mx.array(logits)[None], params))[0]
        want = reference_filter(logits, params)
        assert np.array_equal(np.isinf(got), np.isinf(want))
        kept = ~np.isinf(want)
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5)


def test_samples_follow_the_filtered_distribution():
    from engine.sampling import make_sampler

    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=6, min_p=0.0)
    logits = np.array([2.0, 1.5, 1.2, 1.0, 0.4, 0.1, -0.5, -1.0], dtype=np.float32)
    want = np.exp(reference_filter(logits, params))
    want /= want.sum()
    mx.random.seed(0)
    sample = make_sampler(params)
    n = 4000
    batch = mx.broadcast_to(mx.array(logits)[None], (n, len(logits)))
    counts = np.bincount(np.array(sample(batch)), minlength=len(logits)) / n
    assert np.all(counts[want == 0] == 0)
    np.testing.assert_allclose(counts, want, atol=0.03)


@pytest.mark.parametrize("temperature", [5e-324, 1e-9])
def test_a_vanishing_temperature_is_greedy(temperature):
    # Dividing float32 logits by a value that is 0 (or tiny) in float32 gives inf - inf = NaN.
    from engine.sampling import make_sampler

    logits = mx.array([[0.1, 2.5, -1.0, 2.4]])
    sampler = make_sampler(SamplingParams(temperature=temperature, top_p=1.0, top_k=0))
    assert SamplingParams(temperature=temperature).greedy
    assert [int(sampler(logits).item()) for _ in range(20)] == [1] * 20


@pytest.mark.parametrize("top_p", [5e-324, 1e-12])
def test_a_vanishing_top_p_keeps_the_top_token(top_p):
    from engine.sampling import filter_logits

    logits = mx.array([[0.1, 2.5, -1.0, 2.4]])
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=top_p, top_k=0))
    assert np.isfinite(np.array(kept)).tolist() == [[False, True, False, False]]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_a_seed_out_of_range_is_a_request_error(seed):
    with pytest.raises(RequestError, match="seed"):
        SamplingParams(seed=seed).validate()
