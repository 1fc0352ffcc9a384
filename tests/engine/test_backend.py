"""engine.Backend: the local Engine implements it; Done says which stop matched and why it failed."""

from __future__ import annotations

import pytest

from engine import (
    Backend,
    BackendInfo,
    ContextLengthError,
    Engine,
    GenerationRequest,
    Handle,
    PreparedRequest,
    RequestError,
    SamplingParams,
    TextDelta,
)
from tests.scripted import scripted_engine

GREEDY = SamplingParams(temperature=0)
MESSAGES = [{"role": "user", "content": "Say something."}]


def test_engine_is_a_backend_and_describes_its_model(engine):
    assert isinstance(engine, Backend)
    info = engine.info
    assert isinstance(info, BackendInfo)
    tc = engine.model.config.get("text_config", engine.model.config)
    assert info.context_tokens == tc["max_position_embeddings"]
    assert info.vocab_size == tc["vocab_size"]
    assert info.name == engine.model.path.name
    assert info.remote is None and info.ranks == 1
    assert info.model_id == engine.model.model_id
    assert isinstance(engine.submit(GenerationRequest(prompt_ids=[1, 2], max_tokens=1)), Handle)


def test_prepared_request_runs_without_rendering_again(engine, monkeypatch):
    req = GenerationRequest(messages=MESSAGES, sampling=GREEDY, max_tokens=4)
    prepared = engine.prepare(req)
    assert isinstance(prepared, PreparedRequest)
    assert prepared.prompt_tokens == engine.count_tokens(req) == len(engine.encode(req)[0])
    plain = engine.submit(req).result()
    calls = []
    real = Engine._prepare
    monkeypatch.setattr(Engine, "_prepare", lambda self, r: calls.append(r) or real(self, r))
    again = engine.submit(prepared).result()
    assert calls == []  # the prepared inputs were used as they were
    assert again.token_ids == plain.token_ids


def test_prepare_refuses_a_prompt_past_the_context(engine):
    n = engine.info.context_tokens
    with pytest.raises(ContextLengthError) as e:
        engine.prepare(GenerationRequest(prompt_ids=[1] * n))
    assert e.value.kind == "context_length" and str(n) in str(e.value)


def test_done_carries_error_kind(engine):
    bad = engine.submit(GenerationRequest(prompt_ids=[1], max_tokens=0)).events(timeout=60)
    done = list(bad)[-1]
    assert done.finish_reason == "error" and done.error_kind == "invalid_request"
    long = [1] * engine.info.context_tokens
    done = list(engine.submit(GenerationRequest(prompt_ids=long)).events(timeout=60))[-1]
    assert done.finish_reason == "error" and done.error_kind == "context_length"
    assert issubclass(ContextLengthError, RequestError)


@pytest.mark.parametrize(("stops", "want"), [(["STOP", "beta"], "beta"), (["OP", "STOP"], "STOP")])
def test_done_carries_the_stop_string_that_matched(tiny_model, stops, want):
    eng, model = scripted_engine(tiny_model, "r\n</think>\n\nalpha beta STOP gamma", eos=True)
    try:
        req = GenerationRequest(messages=MESSAGES, sampling=GREEDY, stop=stops)
        model.prompt_len = len(eng.encode(req)[0])
        events = list(eng.submit(req).events(timeout=60))
    finally:
        eng.close()
    done = events[-1]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert done.finish_reason == "stop" and done.stop_sequence == want
    assert text == "alpha beta STOP gamma"[: "alpha beta STOP gamma".index(want)]


def test_no_stop_sequence_at_end_of_turn(tiny_model):
    eng, model = scripted_engine(tiny_model, "r\n</think>\n\nalpha", eos=True)
    try:
        req = GenerationRequest(messages=MESSAGES, sampling=GREEDY, stop=["zzz"])
        model.prompt_len = len(eng.encode(req)[0])
        done = list(eng.submit(req).events(timeout=60))[-1]
    finally:
        eng.close()
    assert done.finish_reason == "stop" and done.stop_sequence is None
