"""Answers that write the tool-call tags as prose, and parameter values padded with spaces."""

from __future__ import annotations

import pytest

from engine.events import TextDelta, ToolCall, ToolCallError
from engine.parser import StreamParser

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}, "loose": {}},
            },
        },
    }
]
CALL = "<tool_call>\n<function=search>\n<parameter=q>\nqwen\n</parameter>\n</function>\n</tool_call>"

PROSE = [
    "To call a tool, the model writes <tool_call> and then the function block; it ends with "
    "</tool_call>. That is all there is to it.",
    "Wrap the call in `<tool_call>` tags.\nEach parameter goes in its own tag.",
    "<tool_call> is the tag that opens a call; nothing else opens one.",
    "Tags: <tool_call></tool_call> around <function=NAME> blocks. Done.",
    "Like this: <tool_call> then a newline.\n\nThe rest of the answer stays.",
]


def _run(text: str, size: int) -> list:
    p = StreamParser(TOOLS, reasoning=False)
    out = []
    for i in range(0, len(text), size):
        out += p.feed(text[i : i + size])
    return out + p.finish()


def _text(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize("prose", PROSE)
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_prose_that_names_the_tag_keeps_all_its_text(prose, size):
    events = _run(prose, size)
    assert not [e for e in events if isinstance(e, ToolCall | ToolCallError)], events
    assert _text(events) == prose


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_a_real_call_after_such_prose_is_still_a_call(size):
    events = _run(PROSE[0] + "\n\n" + CALL, size)
    calls = [e for e in events if isinstance(e, ToolCall | ToolCallError)]
    assert [type(c) for c in calls] == [ToolCall] and calls[0].arguments == {"q": "qwen"}
    assert _text(events).rstrip() == PROSE[0]
    # A body right after the tag makes a call mid-line too, as in the reasoning.
    events = _run(
        "Searching now <tool_call>\n<function=search>\n<parameter=q>\nx\n</parameter>\n"
        "</function>\n</tool_call>",
        size,
    )
    assert [type(e) for e in events if not isinstance(e, TextDelta)] == [ToolCall]


def test_a_tag_on_its_own_line_with_a_bad_body_is_still_reported():
    events = _run("Let me look.\n<tool_call>\nsearch for qwen\n</tool_call>", 1)
    assert [type(e) for e in events if not isinstance(e, TextDelta)] == [ToolCallError]


@pytest.mark.parametrize(
    "raw, want",
    [
        # Strings keep their spaces (Qwen's parser does too; an edit's indentation matters) ...
        ("<parameter=q> some words </parameter>", {"q": " some words "}),
        ("<parameter=q>\n  indented\n</parameter>", {"q": "  indented"}),
        # ... values read as JSON ignore them.
        ("<parameter=limit> 5 </parameter>", {"limit": 5}),
        ("<parameter=loose> [1, 2] </parameter>", {"loose": [1, 2]}),
        ("<parameter=loose> plain words </parameter>", {"loose": " plain words "}),
    ],
)
def test_padded_single_line_values(raw, want):
    events = _run(f"<tool_call>\n<function=search>\n{raw}\n</function>\n</tool_call>", 1000)
    (call,) = [e for e in events if isinstance(e, ToolCall | ToolCallError)]
    assert isinstance(call, ToolCall), call
    assert call.arguments == want
