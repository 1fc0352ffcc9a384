"""Issue-19 call shapes through the real engine (tiny tokenizer, scripted outputs): a call inside
the reasoning, closing tags supplied at end of turn, and none supplied at the token limit."""

from __future__ import annotations

from engine import GenerationRequest, SamplingParams, ToolCall, ToolCallError
from engine.events import ReasoningDelta, TextDelta
from tests.scripted import scripted_engine

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    }
]
OPEN_CALL = (
    "Write it.\n<tool_call>\n<function=write_file>\n<parameter=path>\na.html\n</parameter>\n"
    "<parameter=content>\n<p>x</parameter> y</p>\n"
)


def _run(tiny_model, text: str, *, eos: bool, max_tokens: int = 512) -> list:
    eng, model = scripted_engine(tiny_model, text, eos=eos)
    try:
        req = GenerationRequest(
            messages=[{"role": "user", "content": "go"}],
            tools=TOOLS,
            sampling=SamplingParams(temperature=0),
            max_tokens=max_tokens,
        )
        model.prompt_len = len(eng.encode(req)[0])
        return list(eng.submit(req).events(timeout=60))
    finally:
        eng.close()


def test_call_inside_reasoning_with_closings_missing_at_end_of_turn(tiny_model):
    events = _run(tiny_model, OPEN_CALL, eos=True)
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Write it.\n"
    assert not [e for e in events if isinstance(e, TextDelta)]
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].arguments == {
        "path": "a.html",
        "content": "<p>x</parameter> y</p>",
    }
    assert events[-1].finish_reason == "stop"


def test_same_output_cut_by_the_token_limit_is_an_error(tiny_model):
    n = len(tiny_model.tokenizer.encode(OPEN_CALL, add_special_tokens=False))
    events = _run(tiny_model, OPEN_CALL + "more text", eos=False, max_tokens=n)
    assert events[-1].finish_reason == "length"
    assert not [e for e in events if isinstance(e, ToolCall)]
    errs = [e for e in events if isinstance(e, ToolCallError)]
    assert len(errs) == 1 and "cut off" in errs[0].message and errs[0].name == "write_file"
