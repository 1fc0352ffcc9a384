"""The engine's request loop: events, finish reasons, cancellation, stop strings, sampling."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from engine import (
    Done,
    Engine,
    GenerationRequest,
    PromptProgress,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)
from tests.scripted import scripted_engine

GREEDY = SamplingParams(temperature=0)
PROMPT = [5, 17, 33, 2, 91, 44, 7, 120, 64]


def run(engine: Engine, **kw) -> tuple[list, Done]:
    h = engine.submit(GenerationRequest(**kw))
    events = list(h.events(timeout=120))
    assert isinstance(events[-1], Done)
    return events, events[-1]


def test_greedy_is_deterministic_and_reports_length(engine):
    ev1, d1 = run(engine, prompt_ids=PROMPT, sampling=GREEDY, max_tokens=12)
    _, d2 = run(engine, prompt_ids=PROMPT, sampling=GREEDY, max_tokens=12)
    if d1.finish_reason == "length":
        assert len(d1.token_ids) == 12
    else:  # stopped at an eos id, which must then be the last token
        assert d1.token_ids[-1] in engine.model.eos_token_ids
    assert d1.token_ids == d2.token_ids
    usage = [e for e in ev1 if isinstance(e, Usage)]
    assert len(usage) == 1 and usage[0].prompt_tokens == len(PROMPT)
    assert usage[0].completion_tokens == len(d1.token_ids)
    assert ev1.index(usage[0]) == len(ev1) - 2  # usage comes right before done
    progress = [e for e in ev1 if isinstance(e, PromptProgress)]
    assert progress and progress[-1].processed == progress[-1].total == len(PROMPT)


def test_seeded_sampling_reproduces_and_differs_across_seeds(engine):
    s = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    runs = [
        run(engine, prompt_ids=PROMPT, sampling=s.with_(seed=k), max_tokens=24)[1].token_ids
        for k in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_penalties_change_greedy_output(engine):
    _, plain = run(engine, prompt_ids=PROMPT, sampling=GREEDY, max_tokens=24)
    _, pen = run(
        engine,
        prompt_ids=PROMPT,
        max_tokens=24,
        sampling=GREEDY.with_(repetition_penalty=3.0, presence_penalty=2.0),
    )
    assert plain.token_ids != pen.token_ids
    # with a strong presence penalty over the context, greedy output repeats fewer tokens
    assert len(set(pen.token_ids)) >= len(set(plain.token_ids))


def test_cancel_takes_effect_within_one_token(engine):
    h = engine.submit(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=100000))
    seen = 0
    done = None
    for ev in h.events(timeout=120):
        if isinstance(ev, ReasoningDelta | TextDelta):
            seen += 1
            if seen == 3:
                h.cancel()
        if isinstance(ev, Done):
            done = ev
    assert done is not None and done.finish_reason == "cancelled"
    assert len(done.token_ids) < 12


def test_cancel_before_start_never_runs(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("mlx", 4)))
    try:
        gate = threading.Event()
        eng._jobs.put(gate.wait)  # hold the worker so the next request stays queued
        h = eng.submit(GenerationRequest(prompt_ids=PROMPT, max_tokens=50))
        h.cancel()
        gate.set()
        done = list(h.events(timeout=60))[-1]
        assert done.finish_reason == "cancelled" and done.token_ids == []
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(sampling=SamplingParams(temperature=-1)), "temperature"),
        (dict(sampling=SamplingParams(top_p=0)), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(prompt_ids=[1, 10**9]), "vocab"),
        (dict(prompt_ids=None, prompt=""), "empty"),
        (dict(prompt_ids=None, messages=[]), "no messages"),
        (dict(prompt_ids=None, messages=[{"content": "x"}]), "role"),
        (dict(prompt_ids=None, messages=[{"role": "assistant", "content": "x"}]), "template"),
    ],
)
def test_bad_requests_end_with_a_clear_error(engine, kw, needle):
    args = {"prompt_ids": PROMPT, **kw}
    _, done = run(engine, **args)
    assert done.finish_reason == "error"
    assert needle in done.error


def test_engine_survives_errors(engine):
    run(engine, prompt_ids=[10**9])
    _, done = run(engine, prompt_ids=PROMPT, sampling=GREEDY, max_tokens=3)
    assert done.finish_reason in ("length", "stop") and done.error is None


def test_chat_request_starts_in_reasoning(engine):
    events, done = run(engine, messages=[{"role": "user", "content": "Hello"}], sampling=GREEDY, max_tokens=8)
    assert done.finish_reason in ("length", "stop")
    first = next(e for e in events if isinstance(e, ReasoningDelta | TextDelta))
    assert isinstance(first, ReasoningDelta)  # the template opened <think>


def test_no_thinking_prompt_starts_with_text(engine):
    ids, reasoning = engine.encode(
        GenerationRequest(messages=[{"role": "user", "content": "Hi"}], enable_thinking=False)
    )
    assert not reasoning
    text = engine.model.tokenizer.decode(ids)
    assert text.endswith("<think>\n\n</think>\n\n")


# -- the loop with a scripted model: exact outputs through the real tokenizer and parser --------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
SCRIPT = (
    "I should check the weather.\n</think>\n\nLet me look.\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n"
    "</tool_call>"
)
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def _scripted_run(tiny_model, text, eos=True, **kw):
    eng, model = scripted_engine(tiny_model, text, eos=eos)
    try:
        req = GenerationRequest(**{"messages": MESSAGES, "sampling": GREEDY, **kw})
        model.prompt_len = len(eng.encode(req)[0])
        h = eng.submit(req)
        events = list(h.events(timeout=60))
        return events, events[-1], model
    finally:
        eng.close()


def test_continuation_keeps_its_leading_space(tiny_model):
    # A raw prompt ending mid-sentence (an assistant prefill): the reply's first space is text.
    events, done, _ = _scripted_run(tiny_model, " world, again", prompt="Hello", messages=None)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert done.finish_reason == "stop"
    assert text == " world, again"


def test_special_tokens_never_reach_the_text(tiny_model):
    # Qwen's <|vision_end|>, <|box_start|>... are special; <think>/<tool_call> are parsed, not text.
    script = "mm</think>\n\nSee<|vision_end|> the<|box_start|> cat<|im_start|>."
    events, done, _ = _scripted_run(tiny_model, script, tools=TOOLS)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert done.finish_reason == "stop"
    assert (reasoning.strip(), text) == ("mm", "See the cat.")
    # Skipped tokens still count against max_tokens.
    _, done, _ = _scripted_run(tiny_model, "<|box_start|>" * 10, max_tokens=3)
    assert (done.finish_reason, len(done.token_ids)) == ("length", 3)
    # Localization keeps them: Qwen2.5-VL style boxes are written with <|box_start|> tags.
    events, _, _ = _scripted_run(tiny_model, "a<|box_start|>b", skip_special_tokens=False)
    said = "".join(e.text for e in events if isinstance(e, TextDelta | ReasoningDelta))
    assert said.endswith("a<|box_start|>b")


def test_think_tags_in_the_answer_are_not_text(tiny_model):
    # With thinking off a client's content held a literal <think> (issue 31); a leading one still opens it.
    cases = [
        ("Hi<think> there</think>!", False, "", "Hi there!"),
        ("r</think>\n\nHi<think> there</think>!", True, "r", "Hi there!"),
        ("<think>\nplan</think>\n\nok", False, "plan", "ok"),
    ]
    for script, thinking, reasoning, answer in cases:
        events, done, _ = _scripted_run(tiny_model, script, enable_thinking=thinking)
        said = ["".join(e.text for e in events if isinstance(e, k)) for k in (ReasoningDelta, TextDelta)]
        assert done.finish_reason == "stop"
        assert [said[0].strip(), said[1]] == [reasoning, answer], script


def test_scripted_reasoning_text_and_tool_call(tiny_model):
    events, done, model = _scripted_run(tiny_model, SCRIPT, tools=TOOLS)
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert reasoning.strip() == "I should check the weather."
    assert text.strip() == "Let me look."
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Paris", "days": 3}
    assert done.finish_reason == "stop"
    assert done.token_ids[-1] == tiny_model.eos_token_ids[0]
    assert model.script == done.token_ids


def test_scripted_malformed_call_is_an_error_event(tiny_model):
    bad = (
        "ok\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=days>\nsoon\n"
        "</parameter>\n</function>\n</tool_call>"
    )
    events, done, _ = _scripted_run(tiny_model, bad, tools=TOOLS)
    errs = [e for e in events if isinstance(e, ToolCallError)]
    assert not [e for e in events if isinstance(e, ToolCall)]
    assert len(errs) == 1 and "<tool_call>" in errs[0].raw and "get_weather" in errs[0].raw
    assert done.finish_reason == "stop"


def test_scripted_stop_string_cuts_text(tiny_model):
    events, done, _ = _scripted_run(tiny_model, "r\n</think>\n\nalpha beta STOP gamma", stop=["STOP"])
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "alpha beta "
    assert done.finish_reason == "stop"
    assert done.token_ids[-1] != tiny_model.eos_token_ids[0]


def test_scripted_stop_string_prefix_is_released(tiny_model):
    events, _done, _ = _scripted_run(tiny_model, "r\n</think>\n\nalpha STO beta", stop=["STOP"])
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "alpha STO beta"


def test_scripted_max_tokens_is_length(tiny_model):
    _events, done, model = _scripted_run(tiny_model, SCRIPT, eos=False, max_tokens=5)
    assert done.finish_reason == "length"
    assert done.token_ids == model.script[:5]


def test_scripted_eos_from_generation_config(tiny_model):
    alt = replace(tiny_model, eos_token_ids=[tiny_model.eos_token_ids[1]])
    eng, model = scripted_engine(alt, "hi there")
    try:
        req = GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY)
        model.prompt_len = len(PROMPT)
        done = eng.generate(req)
        assert done.finish_reason == "stop"
        assert done.token_ids[-1] == tiny_model.eos_token_ids[1]
    finally:
        eng.close()
