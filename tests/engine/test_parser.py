"""The stream parser: reasoning split, prompt text streaming and Qwen3-Coder XML tool calls."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import replace

import pytest

from engine.events import ReasoningDelta, TextDelta, ToolCall, ToolCallError
from engine.parser import StreamParser, parse_tool_calls, tool_schemas

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "offset": {"type": "integer"},
                    "limit": {"type": ["integer", "null"]},
                },
                "required": ["path"],
            },
        },
    },
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
    },
    {
        "type": "function",
        "function": {
            "name": "configure",
            "parameters": {
                "type": "object",
                "properties": {
                    "count": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "enabled": {"type": "boolean"},
                    "options": {"type": "object"},
                    "items": {"type": "array"},
                    "label": {"type": "string"},
                    "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "either": {"type": ["string", "integer"]},
                },
            },
        },
    },
]


def call(name: str, **params: str) -> str:
    """A well-formed tool call block, written the way the model writes it."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def run(chunks: list[str], tools=None, reasoning: bool = True) -> list:
    parser = StreamParser(tools, reasoning=reasoning)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish()


def merged(events: list) -> list:
    """Adjacent deltas of one kind joined, tool call ids blanked, so chunkings compare equal."""
    out: list = []
    for e in events:
        if isinstance(e, ToolCall):
            e = replace(e, id="ID")
        if out and isinstance(e, TextDelta | ReasoningDelta) and type(out[-1]) is type(e):
            out[-1] = type(e)(out[-1].text + e.text)
        else:
            out.append(e)
    return out


def random_chunks(text: str, rng: random.Random, max_len: int = 12) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(1, max_len)
        chunks.append(text[i : i + n])
        i += n
    return chunks


def whole(text: str, tools=None, reasoning: bool = True) -> list:
    return merged(run([text], tools, reasoning))


def by_char(text: str, tools=None, reasoning: bool = True) -> list:
    return merged(run(list(text), tools, reasoning))


def texts(events: list, kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def only_call(events: list) -> ToolCall:
    calls = [e for e in events if isinstance(e, ToolCall | ToolCallError)]
    assert len(calls) == 1, events
    assert isinstance(calls[0], ToolCall), calls[0]
    return calls[0]


def only_error(events: list) -> ToolCallError:
    calls = [e for e in events if isinstance(e, ToolCall | ToolCallError)]
    assert len(calls) == 1, events
    assert isinstance(calls[0], ToolCallError), calls[0]
    return calls[0]


# -- reasoning ---------------------------------------------------------------------------------


def test_reasoning_then_answer():
    events = whole("Let me think.\n</think>\n\nHello there.")
    assert events == [ReasoningDelta("Let me think.\n"), TextDelta("Hello there.")]


def test_think_close_split_char_by_char():
    text = "Hmm, a </th is not a tag.\n</think>\n\nAnswer"
    assert by_char(text) == whole(text)
    assert whole(text) == [ReasoningDelta("Hmm, a </th is not a tag.\n"), TextDelta("Answer")]


def test_think_close_prefix_is_held_then_resolved():
    p = StreamParser()
    assert p.feed("abc</th") == [ReasoningDelta("abc")]
    assert p.feed("ink") == []
    assert p.feed(">") == []
    assert p.feed("\n") == []
    assert p.feed("\nHi") == [TextDelta("Hi")]
    assert p.finish() == []


def test_think_close_lookalike_is_released():
    p = StreamParser()
    assert p.feed("x </thin") == [ReasoningDelta("x ")]
    assert p.feed("g> y") == [ReasoningDelta("</thing> y")]


def test_exactly_one_leading_newline_is_stripped_from_reasoning():
    assert whole("\nplan</think>ok") == [ReasoningDelta("plan"), TextDelta("ok")]
    assert whole("\n\nplan</think>ok") == [ReasoningDelta("\nplan"), TextDelta("ok")]
    assert by_char("\n\nplan</think>ok") == [ReasoningDelta("\nplan"), TextDelta("ok")]


def test_answer_leading_newlines_are_stripped_but_inner_ones_kept():
    events = whole("r</think>\n\n\nline one\n\nline two\n")
    assert events == [ReasoningDelta("r"), TextDelta("line one\n\nline two\n")]


def test_stray_think_open_is_swallowed():
    text = "<think>\nreopened</think>\n\nok"
    assert whole(text) == [ReasoningDelta("reopened"), TextDelta("ok")]
    assert by_char(text) == whole(text)


def test_think_lookalike_at_start_is_reasoning_text():
    assert whole("<thinking>x</think>y") == [ReasoningDelta("<thinking>x"), TextDelta("y")]


def test_no_think_close_means_all_reasoning():
    assert whole("still thinking when cut off") == [ReasoningDelta("still thinking when cut off")]
    # A partial `</think>` held back at the end is flushed as reasoning by finish().
    p = StreamParser()
    assert p.feed("cut </thi") == [ReasoningDelta("cut ")]
    assert p.finish() == [ReasoningDelta("</thi")]


def test_empty_reasoning_emits_no_empty_delta():
    assert whole("\n</think>\n\nhi") == [TextDelta("hi")]
    assert whole("") == []


def test_tool_call_inside_reasoning_is_a_call_and_ends_the_reasoning():
    block = call("read_file", path="a.py")
    text = f"I could use {block} here.</think>\n\nDone."
    events = whole(text, tools=TOOLS)
    assert [type(e) for e in events] == [ReasoningDelta, ToolCall, TextDelta]
    assert events[0] == ReasoningDelta("I could use ")
    assert events[1].arguments == {"path": "a.py"} and events[1].raw == block
    assert events[2] == TextDelta("here.\n\nDone.")  # the late </think> is dropped
    assert by_char(text, TOOLS) == events


def test_tool_call_tag_in_reasoning_prose_stays_reasoning():
    for prose in ("a <tool_call> here, or `<tool_call>` there", "<tool_call>{not yet} or <"):
        text = f"Maybe {prose}.</think>\n\nOk."
        assert (
            whole(text, TOOLS)
            == by_char(text, TOOLS)
            == [
                ReasoningDelta(f"Maybe {prose}."),
                TextDelta("Ok."),
            ]
        )


def test_reasoning_false_is_all_text():
    text = "\n\nHello </think> world <think> again"
    assert whole(text, reasoning=False) == [TextDelta(text)]
    assert by_char(text, reasoning=False) == [TextDelta(text)]


def test_reasoning_false_with_leading_think_block():
    text = "<think>\nplan it\n</think>\n\nThe answer."
    expected = [ReasoningDelta("plan it\n"), TextDelta("The answer.")]
    assert whole(text, reasoning=False) == expected
    assert by_char(text, reasoning=False) == expected


def test_reasoning_false_think_only_at_the_start():
    text = "a <think>b</think> c"
    assert whole(text, reasoning=False) == [TextDelta(text)]
    p = StreamParser(reasoning=False)
    assert p.feed("<thi") == []
    assert p.feed("s is text") == [TextDelta("<this is text")]


# -- streaming text ---------------------------------------------------------------------------


def test_partial_tool_call_tag_is_held_then_released():
    p = StreamParser(reasoning=False)
    assert p.feed("Hello <to") == [TextDelta("Hello ")]
    assert p.feed("ken") == [TextDelta("<token")]
    assert p.feed(" a<") == [TextDelta(" a")]
    assert p.finish() == [TextDelta("<")]


def test_partial_tool_call_tag_that_becomes_a_call():
    p = StreamParser(reasoning=False)
    assert p.feed("Hello <to") == [TextDelta("Hello ")]
    assert p.feed("ol_call>\n<function=f>\n") == []
    events = p.feed("</function>\n</tool_call>")
    assert [type(e) for e in events] == [ToolCall]
    assert events[0].name == "f" and events[0].arguments == {}


def test_text_without_angle_brackets_is_emitted_at_once():
    p = StreamParser(reasoning=False)
    assert p.feed("abc") == [TextDelta("abc")]
    assert p.feed("a<b") == [TextDelta("a<b")]  # "<b" cannot start <tool_call>


def test_deltas_are_merged_within_one_feed():
    p = StreamParser()
    assert p.feed("one two</think>\n\nthree four") == [
        ReasoningDelta("one two"),
        TextDelta("three four"),
    ]


# -- tool calls --------------------------------------------------------------------------------


def test_tool_call_fed_char_by_char_equals_whole():
    block = call("read_file", path="src/main.py", offset="10")
    text = "Reading.\n</think>\n\nLet me read it.\n" + block
    assert by_char(text, TOOLS) == whole(text, TOOLS)
    events = whole(text, TOOLS)
    assert events[:2] == [ReasoningDelta("Reading.\n"), TextDelta("Let me read it.\n")]
    tc = only_call(events)
    assert tc.name == "read_file"
    assert tc.arguments == {"path": "src/main.py", "offset": 10}
    assert tc.raw == block


def test_tool_call_id_format_and_uniqueness():
    events = run([call("read_file", path="a"), call("read_file", path="b")], TOOLS, False)
    assert [type(e) for e in events] == [ToolCall, ToolCall]
    ids = [e.id for e in events]
    assert all(re.fullmatch(r"call_[0-9a-zA-Z]{24}", i) for i in ids)
    assert ids[0] != ids[1]


def test_multiline_value_with_angle_brackets_and_lookalikes():
    code = (
        "def f(a, b):\n"
        "    if a < b and b > 0:\n"
        '        return "<div>" + "</param>"\n'
        "    # </parameter is not the closing tag, nor is </parameters>\n"
        "\n"
        "    return '<tool' + '</function'\n"
    )
    text = call("write_file", path="f.py", content=code)
    tc = only_call(whole(text, TOOLS, reasoning=False))
    assert tc.arguments == {"path": "f.py", "content": code}
    assert by_char(text, TOOLS, reasoning=False) == whole(text, TOOLS, reasoning=False)


def test_value_whitespace_strip_exactly_one_newline():
    text = (
        "<tool_call>\n<function=write_file>\n<parameter=path>\n\n  x  \n\n</parameter>\n"
        "<parameter=content>inline</parameter>\n</function>\n</tool_call>"
    )
    tc = only_call(whole(text, TOOLS, reasoning=False))
    assert tc.arguments == {"path": "\n  x  \n", "content": "inline"}


def test_json_typed_values_are_decoded_against_the_schema():
    text = call(
        "configure",
        count="42",
        ratio="0.5",
        enabled="true",
        options='{"a": [1, 2], "b": null}',
        items='["x", 2]',
        label="123",
        maybe="null",
        either="7",
    )
    tc = only_call(whole(text, TOOLS, reasoning=False))
    assert tc.arguments == {
        "count": 42,
        "ratio": 0.5,
        "enabled": True,
        "options": {"a": [1, 2], "b": None},
        "items": ["x", 2],
        "label": "123",
        "maybe": None,
        "either": 7,
    }
    assert isinstance(tc.arguments["label"], str)


def test_python_literals_are_accepted_for_typed_values():
    text = call("configure", enabled="True", options="{'k': None, 'v': (1, 2)}", items="['a']")
    tc = only_call(whole(text, TOOLS, reasoning=False))
    assert tc.arguments == {"enabled": True, "options": {"k": None, "v": [1, 2]}, "items": ["a"]}


def test_union_type_decodes_via_json():
    tc = only_call(whole(call("read_file", path="a", limit="null"), TOOLS, reasoning=False))
    assert tc.arguments == {"path": "a", "limit": None}
    tc = only_call(whole(call("read_file", path="a", limit="5"), TOOLS, reasoning=False))
    assert tc.arguments == {"path": "a", "limit": 5}


def test_string_in_union_keeps_non_matching_text():
    tc = only_call(whole(call("configure", either="seven"), TOOLS, reasoning=False))
    assert tc.arguments == {"either": "seven"}


def test_untyped_values_use_json_only_when_it_looks_like_json():
    text = call(
        "anything",
        n="42",
        flag="false",
        arr="[1, 2]",
        s="hello",
        addr="123 Main St",
        broken="{not json",
        nul="null",
    )
    tc = only_call(whole(text, reasoning=False))
    assert tc.arguments == {
        "n": 42,
        "flag": False,
        "arr": [1, 2],
        "s": "hello",
        "addr": "123 Main St",
        "broken": "{not json",
        "nul": None,
    }


def test_unknown_parameter_of_a_known_tool_is_kept():
    tc = only_call(whole(call("read_file", path="a", extra="[1]"), TOOLS, reasoning=False))
    assert tc.arguments == {"path": "a", "extra": [1]}


def test_two_consecutive_calls_without_whitespace_text():
    text = "Reading both.\n" + call("read_file", path="a.py") + "\n" + call("read_file", path="b.py") + "\n"
    events = whole(text, TOOLS, reasoning=False)
    assert [type(e) for e in events] == [TextDelta, ToolCall, ToolCall]
    assert events[0].text == "Reading both.\n"
    assert [e.arguments["path"] for e in events[1:]] == ["a.py", "b.py"]
    assert by_char(text, TOOLS, reasoning=False) == events


def test_text_before_and_after_a_call():
    text = "Before.\n" + call("read_file", path="x") + "\n\nAfter the call."
    events = whole(text, TOOLS, reasoning=False)
    assert [type(e) for e in events] == [TextDelta, ToolCall, TextDelta]
    assert events[0].text == "Before.\n"
    assert events[2].text == "After the call."


def test_tool_call_right_after_think_close():
    text = "plan</think>\n\n" + call("read_file", path="x")
    events = whole(text, TOOLS)
    assert [type(e) for e in events] == [ReasoningDelta, ToolCall]


# -- malformed calls ---------------------------------------------------------------------------

MALFORMED = {
    "missing_function": (
        "<tool_call>\n<parameter=path>\na\n</parameter>\n</tool_call>",
        "expected <function=NAME>",
    ),
    "bad_nesting": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</function>\n</parameter>\n</tool_call>",
        "</function> comes before the </parameter> of 'path'",
    ),
    "unclosed_parameter": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n<parameter=offset>\n1\n"
        "</parameter>\n<parameter=path>\nb\n</parameter>\n</function>\n</tool_call>",
        "gives parameter 'path' twice",
    ),
    "garbage_between_tags": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\ngarbage here\n"
        "</function>\n</tool_call>",
        "unexpected text 'garbage here",
    ),
    "text_after_function": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n</function>\n"
        "oops\n</tool_call>",
        "after </function>",
    ),
    "function_tag_not_closed": (
        "<tool_call>\n<function=read_file\n<parameter=path>\na\n</parameter>\n</function>\n</tool_call>",
        "expected <function=NAME>",
    ),
    "empty_function_name": (
        "<tool_call>\n<function=>\n</function>\n</tool_call>",
        "expected <function=NAME>",
    ),
    "empty_parameter_name": (
        "<tool_call>\n<function=read_file>\n<parameter=>\na\n</parameter>\n</function>\n</tool_call>",
        "expected <parameter=NAME>",
    ),
    "duplicate_parameter": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n"
        "<parameter=path>\nb\n</parameter>\n</function>\n</tool_call>",
        "gives parameter 'path' twice",
    ),
    "bad_integer": (call("read_file", path="a", offset="ten"), "parameter 'offset'"),
    "bad_boolean": (call("configure", enabled="yes"), "expected boolean"),
    "bad_object": (call("configure", options="{'a': }"), "expected object"),
    "wrong_json_type": (call("configure", items='{"a": 1}'), "expected array"),
    "unknown_tool": (call("delete_everything", path="/"), "unknown tool 'delete_everything'"),
    "missing_required": (call("write_file", path="a"), "missing required parameter 'content'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_call_is_an_error_with_the_exact_raw_text(case):
    raw, fragment = MALFORMED[case]
    text = "Let me try.\n" + raw + "\nAfter."
    for events in (whole(text, TOOLS, False), by_char(text, TOOLS, False)):
        err = only_error(events)
        assert err.raw == raw
        assert fragment in err.message, err.message
        assert events[0] == TextDelta("Let me try.\n")
        assert events[-1] == TextDelta("After.")


# Missing closing tags the parser supplies when the tool is listed and every value is complete.
REPAIRED = {
    "unclosed_parameter": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n<parameter=offset>\n1\n"
        "</parameter>\n</function>\n</tool_call>",
        {"path": "a", "offset": 1},
        "parameter 'path' is not closed with </parameter>",
    ),
    "unclosed_parameter_at_end": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</tool_call>",
        {"path": "a"},
        "parameter 'path' is not closed",
    ),
    "missing_function_close": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n</tool_call>",
        {"path": "a"},
        "missing </function>",
    ),
    "parameter_closed_by_function": (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</function>\n</tool_call>",
        {"path": "a"},
        "parameter 'path' is not closed",
    ),
}


@pytest.mark.parametrize("case", sorted(REPAIRED))
def test_missing_closing_tags_are_supplied_for_a_listed_tool(case):
    raw, args, fragment = REPAIRED[case]
    text = "Let me try.\n" + raw + "\nAfter."
    for events in (whole(text, TOOLS, False), by_char(text, TOOLS, False)):
        assert only_call(events).arguments == args
        assert only_call(events).raw == raw
        assert events[0] == TextDelta("Let me try.\n") and events[-1] == TextDelta("After.")
    # Without a tool list the function is not known: nothing is supplied.
    err = only_error(whole(text, None, False))
    assert fragment in err.message and err.raw == raw


def test_malformed_call_names_the_tool_when_known():
    err = only_error(whole(MALFORMED["garbage_between_tags"][0], TOOLS, False))
    assert err.name == "read_file"
    err = only_error(whole(MALFORMED["missing_function"][0], TOOLS, False))
    assert err.name is None


def test_unknown_tool_lists_available_tools():
    err = only_error(whole(call("fly", to="moon"), TOOLS, reasoning=False))
    assert err.name == "fly"
    assert "'fly'" in err.message
    for name in ("read_file", "write_file", "configure"):
        assert name in err.message


def test_unknown_tool_is_not_checked_without_tools():
    tc = only_call(whole(call("fly", to="moon"), reasoning=False))
    assert tc.name == "fly" and tc.arguments == {"to": "moon"}


def test_missing_required_parameter_message():
    err = only_error(whole(call("read_file", offset="3"), TOOLS, reasoning=False))
    assert err.message == "tool call to 'read_file' is missing required parameter 'path'"
    err = only_error(whole(call("write_file"), TOOLS, reasoning=False))
    assert "missing required parameters 'path', 'content'" in err.message


def test_several_problems_are_reported_together():
    err = only_error(whole(call("read_file", offset="soon"), TOOLS, reasoning=False))
    assert "missing required parameter 'path'" in err.message
    assert "parameter 'offset'" in err.message and "'soon'" in err.message


def test_unclosed_call_is_an_error_on_finish():
    raw = "<tool_call>\n<function=read_file>\n<parameter=path>\nsrc/"
    p = StreamParser(TOOLS)
    assert p.feed("ok</think>\n\nReading.\n") == [ReasoningDelta("ok"), TextDelta("Reading.\n")]
    assert p.feed(raw) == []
    events = p.finish()
    assert len(events) == 1 and isinstance(events[0], ToolCallError)
    assert events[0].raw == raw
    assert events[0].name == "read_file"
    assert "</tool_call>" in events[0].message


def test_unclosed_call_at_its_tag_is_an_error():
    err = only_error(run(["text <tool_call>"], reasoning=False))
    assert err.raw == "<tool_call>" and err.name is None


def test_error_does_not_stop_later_calls():
    text = MALFORMED["missing_function"][0] + "\n" + call("read_file", path="ok")
    events = whole(text, TOOLS, reasoning=False)
    assert [type(e) for e in events] == [ToolCallError, ToolCall]
    assert events[1].arguments == {"path": "ok"}


# -- chunking never changes the result ---------------------------------------------------------

TRANSCRIPTS = [
    (
        "The user wants two files. I might write <tool_call> here but it is just thinking.\n"
        "a < b, </thin, </think\n</think>\n\nSure, reading both.\n"
        + call("read_file", path="src/a.py", offset="5")
        + "\n"
        + call("write_file", path="out.html", content="<div>\n  a < b </parameter\n</div>\n")
        + "\nDone: <tool or <tool_cal maybe.\n"
        + MALFORMED["garbage_between_tags"][0]
        + "\nTrailing text <",
        True,
    ),
    (
        "<think>\n\nreopened <think> block</think>\n\n\n"
        + call("configure", count="3", enabled="false", options="{'x': [1, 2]}", label="007")
        + call("unknown_tool", a="1")
        + "tail text",
        True,
    ),
    (
        "<think>\nshort plan\n</think>\n\nNo reasoning prompt. "
        + call("read_file", path="x")
        + "\n\n"
        + "<tool_call>\n<function=write_file>\n<parameter=path>\nnever closed",
        False,
    ),
    ("plain answer text with <b>html</b> and </think> and <tool_call  almost", False),
]


@pytest.mark.parametrize("index", range(len(TRANSCRIPTS)))
def test_random_chunking_never_changes_the_merged_result(index):
    text, reasoning = TRANSCRIPTS[index]
    expected = whole(text, TOOLS, reasoning)
    assert by_char(text, TOOLS, reasoning) == expected
    rng = random.Random(1234 + index)
    for _ in range(50):
        chunks = random_chunks(text, rng)
        assert merged(run(chunks, TOOLS, reasoning)) == expected, chunks


def test_transcript_events_are_as_expected():
    text, reasoning = TRANSCRIPTS[0]
    events = whole(text, TOOLS, reasoning)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "ReasoningDelta",
        "TextDelta",
        "ToolCall",
        "ToolCall",
        "TextDelta",
        "ToolCallError",
        "TextDelta",
    ]
    assert events[0].text.endswith("</thin, </think\n")
    assert events[3].arguments["content"] == "<div>\n  a < b </parameter\n</div>\n"
    assert events[4].text == "Done: <tool or <tool_cal maybe.\n"
    assert events[6].text == "Trailing text <"


def test_nothing_is_lost():
    """Reasoning, text and raw call text together contain every non-whitespace character."""
    for text, reasoning in TRANSCRIPTS:
        events = whole(text, TOOLS, reasoning)
        parts = [e.raw if isinstance(e, ToolCall | ToolCallError) else e.text for e in events]
        squash = re.sub(r"\s|<think>|</think>", "", text)
        assert re.sub(r"\s|<think>|</think>", "", "".join(parts)) == squash


# -- helpers -----------------------------------------------------------------------------------


def test_parse_tool_calls_on_a_whole_string():
    text = "Intro\n" + call("read_file", path="a") + "\n" + call("nope") + "\nend"
    calls = parse_tool_calls(text, TOOLS)
    assert [type(c) for c in calls] == [ToolCall, ToolCallError]
    assert calls[0].arguments == {"path": "a"}
    assert parse_tool_calls("no calls here") == []


def test_tool_schemas_accepts_three_shapes():
    params = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    tools = [
        {"type": "function", "function": {"name": "openai", "parameters": params}},
        {"name": "bare", "parameters": params},
        {"name": "anthropic", "description": "d", "input_schema": params},
        {"name": "no_params"},
    ]
    assert tool_schemas(tools) == {
        "openai": params,
        "bare": params,
        "anthropic": params,
        "no_params": {},
    }
    assert tool_schemas(None) == {}
    err = only_error(whole(call("anthropic"), tools, reasoning=False))
    assert "missing required parameter 'q'" in err.message
    tc = only_call(whole(call("bare", q="42"), tools, reasoning=False))
    assert tc.arguments == {"q": "42"}


# -- other shapes real models write (issue 19) -------------------------------------------------


def test_json_body_is_a_call_typed_by_the_schema():
    text = '<tool_call>\n{"name": "configure", "arguments": {"count": "3", "enabled": true}}\n</tool_call>'
    tc = only_call(whole(text, TOOLS, reasoning=False))
    assert tc.name == "configure" and tc.arguments == {"count": 3, "enabled": True}
    text = '<tool_call>{"name": "read_file", "arguments": "{\\"path\\": \\"a.py\\"}"}</tool_call>'
    assert only_call(by_char(text, TOOLS, reasoning=False)).arguments == {"path": "a.py"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"name": "read_file", "arguments": {"path": "a"}', "does not parse"),
        ('{"arguments": {"path": "a"}}', '"name" string'),
        ('{"name": "read_file", "arguments": [1]}', '"arguments" must be a JSON object'),
        ('{"name": "read_file", "arguments": {"path": 5}}', "expected string"),
        ('{"name": "nope", "arguments": {}}', "unknown tool 'nope'"),
    ],
)
def test_bad_json_bodies_are_errors(body, fragment):
    raw = f"<tool_call>\n{body}\n</tool_call>"
    for events in (whole(raw + "\nnext", TOOLS, False), by_char(raw + "\nnext", TOOLS, False)):
        err = only_error(events)
        assert fragment in err.message and err.raw == raw
        assert events[-1] == TextDelta("next")


def test_json_body_may_hold_the_closing_tag_in_a_string():
    content = "a </tool_call> b"
    raw = (
        "<tool_call>"
        + json.dumps({"name": "write_file", "arguments": {"path": "x", "content": content}})
        + "</tool_call>"
    )
    assert only_call(by_char(raw, TOOLS, False)).arguments["content"] == content


def test_bare_function_block_is_a_call_only_at_a_line_start():
    block = "<function=read_file>\n<parameter=path>\na.py\n</parameter>\n</function>"
    text = f"Reading.\n{block}\n</tool_call>\nThen more."
    events = whole(text, TOOLS, reasoning=False)
    assert by_char(text, TOOLS, reasoning=False) == events
    assert [type(e) for e in events] == [TextDelta, ToolCall, TextDelta]
    assert events[0].text == "Reading.\n" and events[2].text == "Then more."
    assert events[1].raw == block
    for prose in ("Use `<function=NAME>` to call.", "<function=x> is a tag", "<function=\n"):
        assert whole(prose, TOOLS, False) == by_char(prose, TOOLS, False) == [TextDelta(prose)]


def test_tag_split_by_chunk_boundaries_never_leaks():
    text = (
        "Sure.\n" + call("read_file", path="a") + "\n<function=read_file>\n<parameter=path>\nb\n"
        "</parameter>\n</function>"
    )
    for size in (1, 2, 3, 5, 7, 11):
        events = merged(run([text[i : i + size] for i in range(0, len(text), size)], TOOLS, False))
        assert texts(events, TextDelta) == "Sure.\n"
        assert [e.arguments for e in events if isinstance(e, ToolCall)] == [
            {"path": "a"},
            {"path": "b"},
        ]


def test_json_call_inside_reasoning():
    text = 'Need the file.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}\n</tool_call>'
    events = whole(text, TOOLS)
    assert events[0] == ReasoningDelta("Need the file.\n") and len(events) == 2
    assert only_call(events).arguments == {"path": "a"}
    assert by_char(text, TOOLS) == events


def test_truncated_output_never_completes_an_open_value():
    raw = (
        "<tool_call>\n<function=write_file>\n<parameter=path>\na\n</parameter>\n"
        "<parameter=content>\nline one\n"
    )
    p = StreamParser(TOOLS, reasoning=False)
    assert p.feed(raw) == []
    err = p.finish(truncated=True)
    assert len(err) == 1 and isinstance(err[0], ToolCallError) and "cut off" in err[0].message
    p = StreamParser(TOOLS, reasoning=False)
    p.feed(raw)
    assert only_call(p.finish()).arguments == {"path": "a", "content": "line one"}
    # A value whose line did not end is cut off even when the model stopped.
    p = StreamParser(TOOLS, reasoning=False)
    p.feed(raw.rstrip("\n"))
    assert "cut off" in only_error(p.finish()).message
    # A complete function with only </tool_call> missing is a call even at the token limit.
    p = StreamParser(TOOLS, reasoning=False)
    p.feed(call("read_file", path="a")[: -len("</tool_call>")])
    assert only_call(p.finish(truncated=True)).arguments == {"path": "a"}


def test_parameter_close_inside_a_value_and_code_newlines():
    content = "\n\ndef f():\n    return '</parameter>'  # not the end\n</parameter> still the file\n\n"
    text = call("write_file", path="x.py", content=content)
    for events in (whole(text, TOOLS, False), by_char(text, TOOLS, False)):
        assert only_call(events).arguments["content"] == content


def test_long_value_streams_in_linear_time():
    """A 400 KB write_file value fed token-sized: the cost per character stays flat."""

    def seconds(size: int) -> float:
        body = ("<p>row &lt; </parameter> x</p>\n" * (size // 32 + 1))[:size]
        text = call("write_file", path="big.html", content=body)
        t = time.perf_counter()
        events = run([text[i : i + 4] for i in range(0, len(text), 4)], TOOLS, False)
        elapsed = time.perf_counter() - t
        assert only_call(events).arguments["content"] == body
        return elapsed

    seconds(10_000)  # warm up
    small, big = seconds(100_000), seconds(400_000)
    assert big < 8 * small + 0.05, (small, big)  # 4x the text: about 4x the time, never 16x


def test_call_inside_reasoning_is_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="engine.parser"):
        whole("plan\n" + call("read_file", path="a"), TOOLS)
    assert "inside the reasoning" in caplog.text


def test_markup_value_with_closings_missing_at_the_end_of_generation():
    html = "<html>\n<p>a </parameter> b</p>\n</html>\n"
    raw = (
        f"<tool_call>\n<function=write_file>\n<parameter=path>\np.html\n</parameter>\n"
        f"<parameter=content>\n{html}\n"
    )
    for events in (whole(raw, TOOLS, False), by_char(raw, TOOLS, False)):
        assert only_call(events).arguments == {"path": "p.html", "content": html}
