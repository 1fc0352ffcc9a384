"""The engine's seams (issue 28): every request ends with one Done whatever raises, the protocol's
types load no MLX, one list of the fields that steer decoding, `Backend.stats`, and a token counter
that never shares the worker's tokenizer."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Backend,
    BackendInfo,
    BackendStats,
    CacheStats,
    Done,
    GenerationRequest,
    RemoteBackend,
    RequestError,
    SamplingParams,
)
from engine.request import DECODING_FIELDS, PROMPT_FIELDS

ROOT = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(temperature=0)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
# A value other than the default for each field that steers decoding.
SAMPLES: dict[str, Any] = {
    "tools": [*TOOLS, {"type": "function", "function": {"name": "g"}}],
    "sampling": SamplingParams(temperature=0.3, top_k=5, seed=7),
    "max_tokens": 7,
    "stop": ["END"],
    "session": "s1",
    "use_cache": False,
    "skip_special_tokens": False,
    "mtp": 2,
    "prefix": "Sure",
    "tool_choice": "f",
    "thinking_budget": 5,
    "response_format": {"type": "json_object"},
    "parallel_tool_calls": False,
}


def _all_events(handle: Any) -> list[Any]:
    events = list(handle.events(timeout=60))
    assert isinstance(events[-1], Done)
    return events


# -- every request ends with one Done -----------------------------------------------------------
def test_a_raising_finish_still_ends_the_request_and_the_next_one_runs(engine, monkeypatch, caplog):
    from engine import engine as eng_mod

    def broken(self, *a: Any) -> None:
        raise ValueError("finish broke")

    monkeypatch.setattr(eng_mod._Run, "_finish", broken)
    with caplog.at_level(logging.ERROR, logger="locus.engine"):
        done = _all_events(engine.submit(GenerationRequest(prompt_ids=[1, 2, 3], max_tokens=2)))[-1]
    assert done.finish_reason == "error" and done.error_kind == "internal"
    assert "finish broke" in (done.error or "")
    assert "finish broke" in caplog.text  # logged with its traceback, not swallowed
    monkeypatch.undo()
    after = _all_events(engine.submit(GenerationRequest(prompt_ids=[1, 2, 3], sampling=GREEDY, max_tokens=2)))
    assert after[-1].finish_reason in ("stop", "length")


def test_a_raising_finish_ends_a_run_not_submitted_through_the_queue(engine, monkeypatch):
    # A pipeline worker runs each job with `_generate` itself (engine/pipeline.py serve_worker).
    from engine import RequestHandle
    from engine import engine as eng_mod

    monkeypatch.setattr(eng_mod._Run, "_finish", lambda self, *a: 1 / 0)
    h = RequestHandle()
    engine._call(lambda: engine._generate(GenerationRequest(prompt_ids=[1, 2], max_tokens=2), h))
    done = _all_events(h)[-1]
    assert done.error_kind == "internal" and "ZeroDivisionError" in (done.error or "")


def test_a_finish_that_raises_after_its_done_gives_one_done(engine, monkeypatch):
    from engine import engine as eng_mod

    real = eng_mod._Run._finish

    def late(self, *a: Any) -> None:
        real(self, *a)
        raise ValueError("after Done")

    monkeypatch.setattr(eng_mod._Run, "_finish", late)
    h = engine.submit(GenerationRequest(prompt_ids=[1, 2, 3], sampling=GREEDY, max_tokens=2))
    done = _all_events(h)[-1]
    engine._call(lambda: None)  # the worker is past the request
    assert done.finish_reason in ("stop", "length") and h._queue.empty()


def test_a_request_whose_run_raises_before_it_starts_still_ends(engine, monkeypatch, caplog):
    from engine import engine as eng_mod

    # Requests start in the scheduler (engine/scheduler.py) with `_Run.begin`.
    monkeypatch.setattr(eng_mod._Run, "begin", lambda self, *a: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="locus.engine"):
        done = _all_events(engine.submit(GenerationRequest(prompt_ids=[1, 2], max_tokens=2)))[-1]
        engine._call(lambda: None)
    assert done.error_kind == "internal" and "ZeroDivisionError" in (done.error or "")
    assert "ZeroDivisionError" in caplog.text


def test_the_worker_logs_what_a_job_raised(engine, caplog):
    def boom() -> None:
        raise RuntimeError("a job's own fault")

    with caplog.at_level(logging.ERROR, logger="locus.engine"):
        engine._jobs.put(boom)
        engine._call(lambda: None)
    assert any("a job's own fault" in (r.exc_text or "") for r in caplog.records), caplog.text


# -- the protocol's types load no MLX -----------------------------------------------------------
def test_engine_remote_and_the_request_types_load_no_mlx():
    code = (
        "import sys, engine.remote, engine.request, engine.backend\n"
        "from engine import GenerationRequest, SamplingParams, PRESETS, RequestHandle, BackendStats\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'transformers'})\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- one list of the fields that steer decoding -------------------------------------------------
def test_every_request_field_steers_decoding_or_is_marked_as_prompt_only():
    names = [f.name for f in dataclasses.fields(GenerationRequest)]
    assert not set(DECODING_FIELDS) & set(PROMPT_FIELDS)
    assert set(DECODING_FIELDS) | set(PROMPT_FIELDS) == set(names)
    assert set(SAMPLES) == set(DECODING_FIELDS)  # a new field needs a sample value here
    default = GenerationRequest()
    assert all(getattr(default, k) != v for k, v in SAMPLES.items())


def test_a_pipeline_job_carries_every_field_that_steers_decoding():
    from engine.image import PromptInputs
    from engine.pipeline import _Job, pack_job, unpack_job

    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}], **SAMPLES)
    job = unpack_job(pack_job(_Job(req, PromptInputs([4, 5, 6], True), {2: "boundary"})))
    for name in DECODING_FIELDS:
        assert getattr(job.request, name) == getattr(req, name), name
    assert job.request.prompt_ids == [4, 5, 6] and job.request.messages is None


def test_a_remote_backend_sends_or_refuses_every_field_that_steers_decoding():
    from engine.remote import NOT_SENT

    rb = RemoteBackend("http://127.0.0.1:9/v1")
    rb._info = BackendInfo(name="m")  # no server: only the request body is built
    base = dict(messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    _, body = rb._body(GenerationRequest(**base))
    assert set(NOT_SENT) <= set(DECODING_FIELDS)
    for name in set(DECODING_FIELDS) - set(NOT_SENT):
        try:
            _, changed = rb._body(GenerationRequest(**{**base, name: SAMPLES[name]}))
        except RequestError:
            continue  # refused with a message, never dropped
        assert changed != body, f"{name} is neither sent, refused nor in remote.NOT_SENT"


# -- what front ends need from a backend ----------------------------------------------------------
def test_backends_report_their_state_through_the_protocol(engine):
    from engine.pipeline import PipelineBackend
    from tests.fakebackend import FakeBackend

    stats = engine.stats()
    assert isinstance(stats, BackendStats) and stats.ranks == 1
    assert isinstance(stats.prompt_cache, CacheStats)
    assert dataclasses.asdict(stats.prompt_cache) == engine.prompt_cache.budget()
    remote = RemoteBackend("http://127.0.0.1:9/v1")
    assert remote.stats() == BackendStats()  # answered without reaching the server
    remote._info = BackendInfo(name="m")  # isinstance reads `info` on Python 3.11
    for backend in (engine, remote, FakeBackend()):
        assert isinstance(backend, Backend)
    assert "__getattr__" not in vars(PipelineBackend) and "stats" in vars(PipelineBackend)


# -- the token counter never shares the worker's tokenizer --------------------------------------
class _Busy:
    """A Rust tokenizer the worker is using: any other use of it fails, as "Already borrowed"."""

    def __init__(self, real: Any) -> None:
        self.real, self.busy = real, False

    def __getattr__(self, name: str) -> Any:
        if self.busy:
            raise RuntimeError("Already borrowed")
        return getattr(self.real, name)


class _Tokenizer:
    def __init__(self, real: Any) -> None:
        self.real, self.backend_tokenizer = real, _Busy(real.backend_tokenizer)

    def encode(self, *a: Any, **kw: Any) -> Any:
        if self.backend_tokenizer.busy:
            raise RuntimeError("Already borrowed")
        return self.real.encode(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_counting_never_touches_the_tokenizer_the_worker_uses(tiny_model):
    from engine.counting import PromptMeter
    from engine.literal import Prompt, encode

    tok = _Tokenizer(tiny_model.tokenizer)
    prompt = Prompt((("<|im_start|>user\n", False), ("say <|im_end|> and <tool_call>", True), ("ok", False)))
    want = len(encode(tiny_model.tokenizer, prompt))
    meter = PromptMeter(tok)
    tok.backend_tokenizer.busy = True  # from here on the worker holds it
    assert meter.count(prompt) == (want, want)
    assert meter.count("word " * 300_000, stop_above=10)[1] > 10
    assert meter.lower_bound("x" * 1000) > 0


@pytest.mark.parametrize("stop_above", [None, 5])
def test_engine_counts_match_its_prompts(engine, stop_above):
    req = GenerationRequest(messages=[{"role": "user", "content": "a <|im_end|> b " * 20}], tools=TOOLS)
    n = engine.count_tokens(req, stop_above=stop_above)
    full = len(engine.encode(req)[0])
    assert n == full if stop_above is None else 5 < n <= full
