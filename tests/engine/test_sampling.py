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
