"""Generation features in the engine request: an assistant prefix, tool_choice, a thinking budget,
and counting prompt tokens off the worker thread."""

from __future__ import annotations

import io

import pytest

from engine import (
    BUDGET_NOTE,
    Done,
    GenerationRequest,
    ReasoningDelta,
    RequestError,
    SamplingParams,
    TextDelta,
    ToolCall,
    Usage,
)
from tests.scripted import scripted_engine

GREEDY = SamplingParams(temperature=0)
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


def _run(tiny_model, script: str, then: str | None = None, **kw):
    """Events of one request to a scripted model replaying `script` (then eos)."""
    eng, model = scripted_engine(tiny_model, script, then=then)
    req = GenerationRequest(**{"messages": MESSAGES, "sampling": GREEDY, **kw})
    prepared = eng.prepare(req)
    model.prompt_len = prepared.prompt_tokens
    events = list(eng.submit(prepared).events(timeout=60))
    return events, prepared, eng


def _said(events, kind) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def _prompt_text(tiny_model, eng, req) -> str:
    return tiny_model.tokenizer.decode(eng.encode(req)[0])


# -- prefix -------------------------------------------------------------------------------------


def test_prefix_is_in_the_prompt_and_not_in_the_reply(tiny_model):
    req = GenerationRequest(messages=MESSAGES, enable_thinking=False, prefix='{"color":')
    events, prepared, eng = _run(tiny_model, ' "blue"}', **_kw(req))
    assert _said(events, TextDelta) == ' "blue"}'
    assert prepared.prefix_tokens == len(tiny_model.tokenizer.encode('{"color":'))
    plain = eng.count_tokens(GenerationRequest(messages=MESSAGES, enable_thinking=False))
    assert prepared.prompt_tokens == plain + prepared.prefix_tokens
    assert not prepared.opens_reasoning
    assert _prompt_text(tiny_model, eng, req).endswith('<think>\n\n</think>\n\n{"color":')


def test_prefix_that_closes_the_reasoning_starts_the_answer(tiny_model):
    # Thinking on: the template opens <think>; a prefix may write reasoning and close it.
    req = GenerationRequest(messages=MESSAGES, prefix="Short.\n</think>\n\nThe")
    events, prepared, _ = _run(tiny_model, " weather is fine.", **_kw(req))
    assert not prepared.opens_reasoning
    assert _said(events, ReasoningDelta) == "" and _said(events, TextDelta) == " weather is fine."
    # A prefix inside the reasoning leaves the output there.
    events, prepared, _ = _run(tiny_model, " more.</think>\n\nAnswer.", prefix="Thinking")
    assert prepared.opens_reasoning
    assert _said(events, ReasoningDelta) == " more." and _said(events, TextDelta) == "Answer."


def test_prefix_held_back_by_the_parser_is_never_emitted(tiny_model):
    # "<b" might start a tag: the prefix's text counts as written, so only the reply comes out.
    events, _, _ = _run(tiny_model, "old> text", enable_thinking=False, prefix="Some <b")
    assert _said(events, TextDelta) == "old> text"


def test_prefix_opening_a_tool_call_is_parsed_with_the_reply(tiny_model):
    script = "get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    events, _, _ = _run(
        tiny_model, script, tools=TOOLS, enable_thinking=False, prefix="<tool_call>\n<function="
    )
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
    assert call.raw.startswith("<tool_call>\n<function=get_weather>")


def test_prefix_and_thinking_budget_with_an_image(tiny_model):
    # The real tiny model (it has a vision tower); its words are random, the mechanics are not.
    from engine import Engine

    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": _png()}, {"type": "text", "text": "What is it?"}],
        }
    ]
    eng = Engine(tiny_model)
    try:
        req = GenerationRequest(
            messages=msgs, sampling=GREEDY, max_tokens=10, prefix="It is a", enable_thinking=False
        )
        prepared = eng.prepare(req)
        assert prepared.prefix_tokens == len(tiny_model.tokenizer.encode("It is a"))
        assert tiny_model.tokenizer.decode(eng.encode(req)[0]).endswith("</think>\n\nIt is a")
        events = list(eng.submit(prepared).events(timeout=60))
        assert events[-1].error is None and events[-1].usage.prompt_tokens == prepared.prompt_tokens
        assert not _said(events, TextDelta).startswith("It is a")
        # Thinking with a budget: closed on the same cache, the image still in it.
        req = GenerationRequest(messages=msgs, sampling=GREEDY, max_tokens=10, thinking_budget=2)
        res = eng.generate(req)
        assert res.error is None and res.reasoning.endswith(BUDGET_NOTE)
        assert BUDGET_NOTE + "\n</think>\n\n" in tiny_model.tokenizer.decode(res.token_ids)
    finally:
        eng.close()


# -- tool_choice --------------------------------------------------------------------------------


def test_tool_choice_required_and_named_force_a_call(tiny_model):
    body = "<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>"
    events, prepared, eng = _run(tiny_model, "get_weather>\n" + body, tools=TOOLS, tool_choice="required")
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert (call.name, call.arguments) == ("get_weather", {"city": "Rome"})
    assert not prepared.opens_reasoning  # a forced call renders the prompt without thinking
    text = _prompt_text(tiny_model, eng, prepared.request)
    assert text.endswith("</think>\n\n<tool_call>\n<function=")
    events, prepared, eng = _run(tiny_model, body, tools=TOOLS, tool_choice="get_weather")
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert (call.name, call.arguments) == ("get_weather", {"city": "Rome"})
    assert _prompt_text(tiny_model, eng, prepared.request).endswith("<function=get_weather>\n")
    assert prepared.prefix_tokens == len(tiny_model.tokenizer.encode("<tool_call>\n<function=get_weather>\n"))


def test_tool_choice_none_leaves_the_tools_out_of_the_prompt(tiny_model):
    eng, _ = scripted_engine(tiny_model, "x")
    try:
        auto = _prompt_text(tiny_model, eng, GenerationRequest(messages=MESSAGES, tools=TOOLS))
        none = _prompt_text(
            tiny_model, eng, GenerationRequest(messages=MESSAGES, tools=TOOLS, tool_choice="none")
        )
        bare = _prompt_text(tiny_model, eng, GenerationRequest(messages=MESSAGES))
    finally:
        eng.close()
    assert "get_weather" in auto and none == bare


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"tool_choice": "required"}, "has no tools"),
        ({"tool_choice": "nope", "tools": TOOLS}, "no tool of that name"),
        ({"tool_choice": 3, "tools": TOOLS}, "tool_choice must be"),
        ({"prefix": None}, "prefix must be a string"),
        ({"thinking_budget": 0}, "thinking_budget must be a positive"),
        ({"thinking_budget": True}, "thinking_budget must be a positive"),
    ],
)
def test_bad_feature_fields_are_refused(engine, kw, needle):
    req = GenerationRequest(messages=MESSAGES, **kw)
    with pytest.raises(RequestError, match=needle):
        req.validate()
    done = engine.submit(req).result()
    assert done.finish_reason == "error" and needle in (done.error or "")


# -- thinking budget ----------------------------------------------------------------------------


def test_thinking_budget_closes_the_reasoning_on_the_same_cache(tiny_model):
    events, prepared, _ = _run(
        tiny_model, "hmm " * 200, then="The answer.", thinking_budget=20, max_tokens=400
    )
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    reasoning = _said(events, ReasoningDelta)
    assert reasoning.startswith("hmm hmm") and reasoning.endswith("\n\n" + BUDGET_NOTE)
    assert _said(events, TextDelta) == "The answer."
    # The note and </think> went into the reply itself (one request, one cache), but are not
    # counted as the model's output.
    reply = tiny_model.tokenizer.decode(done.token_ids)
    assert BUDGET_NOTE + "\n</think>\n\nThe answer." in reply
    (usage,) = [e for e in events if isinstance(e, Usage)]
    closing = tiny_model.tokenizer.encode("\n\n" + BUDGET_NOTE + "\n</think>\n\n")
    assert usage.completion_tokens == len(done.token_ids) - len(closing)
    thought = reasoning[: -len(BUDGET_NOTE)]
    assert 20 <= len(tiny_model.tokenizer.encode(thought)) <= 22
    assert usage.prompt_tokens == prepared.prompt_tokens


def test_thinking_budget_not_reached_or_not_thinking_changes_nothing(tiny_model):
    events, _, _ = _run(tiny_model, "brief</think>\n\nDone.", thinking_budget=50)
    assert (_said(events, ReasoningDelta), _said(events, TextDelta)) == ("brief", "Done.")
    events, _, _ = _run(tiny_model, "Plain answer.", thinking_budget=1, enable_thinking=False)
    assert _said(events, TextDelta) == "Plain answer." and BUDGET_NOTE not in repr(events)


def test_thinking_budget_applies_after_a_prefix_in_the_reasoning(tiny_model):
    events, _, _ = _run(tiny_model, "la " * 100, then="Yes.", prefix="Let me think:", thinking_budget=5)
    reasoning = _said(events, ReasoningDelta)
    assert "Let me think" not in reasoning and reasoning.endswith(BUDGET_NOTE)
    assert _said(events, TextDelta) == "Yes."


def test_thinking_budget_on_the_real_model_keeps_going(engine):
    # The real (random) tiny model: the answer after the note comes from the same cache, and
    # max_tokens still bounds what the model writes.
    req = GenerationRequest(messages=MESSAGES, sampling=GREEDY, max_tokens=12, thinking_budget=3)
    res = engine.generate(req)
    assert res.error is None and res.reasoning.endswith(BUDGET_NOTE)
    assert res.usage is not None and res.usage.completion_tokens <= 12
    text = engine.model.tokenizer.decode(res.token_ids)
    assert BUDGET_NOTE + "\n</think>\n\n" in text


# -- counting -----------------------------------------------------------------------------------


def test_count_tokens_off_the_worker_agrees_with_prepare(engine, monkeypatch):
    from engine import Engine

    req = GenerationRequest(messages=MESSAGES, tools=TOOLS, prefix="Sure")
    exact = engine.prepare(req).prompt_tokens
    calls = []
    monkeypatch.setattr(Engine, "_call", lambda self, fn: calls.append(fn) or fn())
    assert engine.count_tokens(req) == exact
    assert calls == []  # text only: counted on this thread
    assert engine.count_tokens(req, stop_above=exact) == exact
    # Past the bound: a lower bound above it (a huge prompt is not tokenized whole).
    big = GenerationRequest(messages=[{"role": "user", "content": "word " * 400_000}])
    n = engine.count_tokens(big, stop_above=1000)
    assert 1000 < n <= 400_000 + 100 and calls == []


def _kw(req: GenerationRequest) -> dict:
    return {"messages": req.messages, "enable_thinking": req.enable_thinking, "prefix": req.prefix}


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_thinking_budget_output_is_identical_with_mtp(engine):
    # The continuation after the note restarts decoding on the same cache, drafting included.
    runs = {}
    for k in (0, 2):
        req = GenerationRequest(messages=MESSAGES, sampling=GREEDY, max_tokens=14, thinking_budget=3, mtp=k)
        res = engine.generate(req)
        assert res.error is None and res.reasoning.endswith(BUDGET_NOTE)
        assert (res.usage.draft_tokens > 0) == (k > 0)
        runs[k] = res.token_ids
    assert runs[0] == runs[2]
