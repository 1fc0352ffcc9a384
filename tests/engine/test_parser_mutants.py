"""engine/parser.py: cases that kill mutants the other parser tests let live (docs/mutation.md)."""

from __future__ import annotations

import json

import pytest

from engine.events import ReasoningDelta, TextDelta, ToolCall, ToolCallError
from engine.parser import StreamParser, parse_tool_calls, tool_schemas

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
    },
    {
        "name": "setup",  # a bare tool dict: the schema under "parameters"
        "parameters": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "flag": {"type": "boolean"},
                "maybe": {"type": ["integer", "null"]},
                "pick": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "odd": "not a schema",
            },
        },
    },
]


def one(text: str, tools=TOOLS) -> ToolCall | ToolCallError:  # type: ignore[no-untyped-def]
    calls = parse_tool_calls(text, tools)
    assert len(calls) == 1, calls
    return calls[0]


def xml(name: str, body: str, close: str = "</function>\n</tool_call>") -> str:
    return f"<tool_call>\n<function={name}>\n{body}{close}"


def stream(chunks: list[str], tools=TOOLS, reasoning: bool = True) -> list:  # type: ignore[no-untyped-def]
    """The events of `chunks` fed in turn, text deltas of one kind next to each other joined."""
    p = StreamParser(tools, reasoning=reasoning)
    out: list = []
    for c in chunks:
        out += p.feed(c)
    merged: list = []
    for e in out + p.finish():
        if merged and type(e) is type(merged[-1]) and isinstance(e, TextDelta | ReasoningDelta):
            merged[-1] = type(e)(merged[-1].text + e.text)
        else:
            merged.append(e)
    return merged


# -- errors carry the tool's name and say exactly what is wrong ----------------------------------------
def test_errors_name_the_tool_and_quote_the_text() -> None:
    e = one(xml("write_file", "<parameter=path>\na\n</parameter>\nstray\n"))
    assert isinstance(e, ToolCallError) and e.name == "write_file"
    assert "unexpected text 'stray\\n</function>\\n'; expected <parameter=KEY> or </function>." in e.message
    e = one(xml("write_file", "<parameter=path\n>a</parameter>\n"))
    assert isinstance(e, ToolCallError) and e.name == "write_file"
    assert e.message.startswith(
        "malformed tool call to 'write_file': expected <parameter=NAME> with a name and a closing '>' "
        "on one line, found '<parameter=path\\n>a</parameter>\\n</functio...'."
    )
    e = one("<tool_call>\n<function=a<b>\n</function>\n</tool_call>")
    assert isinstance(e, ToolCallError) and e.name is None
    assert "malformed tool call: expected <function=NAME>" in e.message


def test_unknown_tool_lists_what_there_is() -> None:
    e = one(xml("nope", ""))
    assert isinstance(e, ToolCallError) and e.name == "nope"
    assert e.message == "unknown tool 'nope'; available tools: 'write_file', 'setup'"
    e = one(xml("nope", ""), tools=[{"type": "function"}])  # tools given, none usable
    assert isinstance(e, ToolCallError) and e.message == "unknown tool 'nope'; available tools: none"


def test_bad_values_are_reported_with_the_types_wanted() -> None:
    e = one(xml("setup", "<parameter=count>\nmany\n</parameter>\n<parameter=maybe>\nx\n</parameter>\n"))
    assert isinstance(e, ToolCallError) and e.name == "setup"
    assert e.message == (
        "tool call to 'setup' has a bad value for parameter 'count': expected integer (JSON), got 'many'; "
        "tool call to 'setup' has a bad value for parameter 'maybe': expected integer or null (JSON), got 'x'"
    )
    e = one('<tool_call>{"name": "setup", "arguments": {"count": [1, 2]}}</tool_call>')
    assert isinstance(e, ToolCallError) and e.message.endswith("expected integer (JSON), got '[1, 2]'")


def test_cut_off_calls_name_the_tool() -> None:
    calls = parse_tool_calls(xml("write_file", "<parameter=path>\na", close=""), TOOLS)
    assert [c.message for c in calls] == [
        "tool call to 'write_file' was cut off: generation ended before </tool_call>"
    ]
    assert calls[0].name == "write_file"
    calls = parse_tool_calls("<tool_call>\n", TOOLS)
    assert [c.message for c in calls] == ["tool call was cut off: generation ended before </tool_call>"]


def test_an_empty_call_in_the_middle_is_malformed_not_cut_off() -> None:
    e = one("<tool_call>\n\n</tool_call>")
    assert (
        isinstance(e, ToolCallError)
        and "expected <function=NAME> after <tool_call>, found nothing" in e.message
    )


# -- JSON bodies ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, args",
    [
        ('{"name": "setup", "parameters": {"count": 2}}', {"count": 2}),
        ('{"name": "setup"}', {}),
        ('{"name": "setup", "arguments": "  "}', {}),
        ('{"name": "setup", "arguments": "{\\"count\\": 3}"}', {"count": 3}),
    ],
)
def test_json_bodies_take_parameters_or_nothing(body: str, args: dict) -> None:
    c = one(f"<tool_call>\n{body}\n</tool_call>")
    assert isinstance(c, ToolCall) and c.arguments == args


def test_json_body_with_bad_arguments_names_the_tool() -> None:
    e = one('<tool_call>{"name": "setup", "arguments": "not json"}</tool_call>')
    assert isinstance(e, ToolCallError) and e.name == "setup"
    assert e.message.startswith("malformed tool call to 'setup': \"arguments\" must be a JSON object.")
    e = one('<tool_call>{"arguments": {}}</tool_call>')
    assert e.message.startswith('malformed tool call: a JSON body needs one object with a "name" string.')
    e = one("<tool_call>{oops}</tool_call>")
    assert 'give one object {"name": ..., "arguments": {...}}.' in e.message


# -- where a value ends ----------------------------------------------------------------------------------
def test_an_unclosed_value_ends_only_at_a_parameter_the_tool_has() -> None:
    # No </parameter>: `<parameter=other>` is a boundary only for a parameter in the schema.
    text = xml(
        "write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nx\n<parameter=foo>\ny\n"
    )
    c = one(text)
    assert isinstance(c, ToolCall) and c.arguments == {"path": "a", "content": "x\n<parameter=foo>\ny"}


def test_an_unclosed_value_does_not_end_at_its_own_or_a_given_name() -> None:
    for inner in ("content", "path"):
        body = f"<parameter=path>\na\n</parameter>\n<parameter=content>\nx\n<parameter={inner}>\ny\n"
        c = one(xml("write_file", body))
        assert isinstance(c, ToolCall) and c.arguments["content"] == f"x\n<parameter={inner}>\ny", inner


def test_a_stray_close_in_a_value_does_not_swallow_the_next_parameter() -> None:
    body = "<parameter=content>\na</parameter>b\n</parameter>\n<parameter=path>\np\n</parameter>\n"
    c = one(xml("write_file", body))
    assert isinstance(c, ToolCall) and c.arguments == {"content": "a</parameter>b", "path": "p"}


def test_function_close_inside_an_unclosed_value() -> None:
    body = "<parameter=path>\na\n</parameter>\n<parameter=content>\nx </function> y\n"
    c = one(xml("write_file", body))
    assert isinstance(c, ToolCall) and c.arguments["content"] == "x </function> y"


def test_a_close_followed_by_text_is_reported_at_the_first_one() -> None:
    body = "<parameter=content>\na</parameter>b</parameter>c\n"
    e = one(xml("write_file", body))
    assert isinstance(e, ToolCallError) and "unexpected text 'b</parameter>c\\n</function>\\n'" in e.message


def test_a_parameter_opened_right_before_the_close() -> None:
    c = one("<tool_call>\n<function=write_file>\n<parameter=path>\na\n<parameter=content></tool_call>")
    assert isinstance(c, ToolCall) and c.arguments == {"path": "a", "content": ""}


# -- types -----------------------------------------------------------------------------------------------
def test_types_from_lists_oneof_and_non_schemas() -> None:
    body = "<parameter=pick>\n7\n</parameter>\n<parameter=odd>\n[1]\n</parameter>\n<parameter=maybe>\nnull\n"
    c = one(xml("setup", body + "</parameter>\n"))
    assert isinstance(c, ToolCall) and c.arguments == {"pick": 7, "odd": [1], "maybe": None}
    c = one(
        '<tool_call>{"name": "setup", "arguments": {"pick": "s", "flag": true, "count": 2.0}}</tool_call>'
    )
    assert isinstance(c, ToolCall) and c.arguments == {"pick": "s", "flag": True, "count": 2.0}


@pytest.mark.parametrize("value", ['"text"', "null", "true"])
def test_json_values_of_the_wrong_type_are_refused(value: str) -> None:
    e = one(f'<tool_call>{{"name": "setup", "arguments": {{"count": {value}}}}}</tool_call>')
    assert isinstance(e, ToolCallError), value
    e = one(f'<tool_call>{{"name": "setup", "arguments": {{"maybe": {value}}}}}</tool_call>')
    assert isinstance(e, ToolCall if value == "null" else ToolCallError), value


def test_untyped_json_strings_stay_strings() -> None:
    c = one('<tool_call>{"name": "setup", "arguments": {"extra": "12"}}</tool_call>')
    assert isinstance(c, ToolCall) and c.arguments == {"extra": "12"}


def test_a_value_that_is_no_literal_is_refused() -> None:
    e = one(xml("setup", "<parameter=count>\n1 +\n</parameter>\n"))
    assert isinstance(e, ToolCallError)


# -- streaming -------------------------------------------------------------------------------------------
def test_parse_tool_calls_reads_answer_text_not_reasoning() -> None:
    # In reasoning, a <tool_call> without a function body is prose; in an answer, a malformed call.
    assert len(parse_tool_calls("<tool_call>\nnot a call\n</tool_call>")) == 1


def test_prime_swallows_the_prefix_and_keeps_an_open_call() -> None:
    p = StreamParser(TOOLS)
    p.prime("<think>\nplan</think>\n\nSure. ")
    assert p.feed("Done.") + p.finish() == [TextDelta("Done.")]
    p = StreamParser(TOOLS)
    p.prime("<think>\nhm")
    assert p.in_reasoning and p.feed(" more</think>ok") + p.finish() == [
        ReasoningDelta(" more"),
        TextDelta("ok"),
    ]
    p = StreamParser(TOOLS)
    p.prime("<tool_call>\n<function=write_file>\n<parameter=path>\n")
    out = (
        p.feed("a\n</parameter>\n<parameter=content>\nb\n</parameter>\n</function>\n</tool_call>")
        + p.finish()
    )
    assert [type(e) for e in out] == [ToolCall] and out[0].arguments == {"path": "a", "content": "b"}


def test_reasoning_ends_at_the_first_close() -> None:
    out = stream(["<think>\na</think>b</think>c"])
    assert out == [ReasoningDelta("a"), TextDelta("b</think>c")]
    call = xml("write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n")
    out = stream([f"<think>\nx {call} y</think>z"])
    assert [type(e) for e in out] == [ReasoningDelta, ToolCall, TextDelta]
    assert out[0] == ReasoningDelta("x ") and out[2] == TextDelta("y\n\nz")


def test_a_call_opened_in_reasoning_waits_for_its_body() -> None:
    call = "<tool_call>\n<function=write_file>\n<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n"
    chunks = [
        "<think>\nlet me <tool_call>",
        "\n<func",
        "tion=write_file>",
        call[len("<tool_call>\n<function=write_file>") :],
    ]
    out = stream([*chunks, "</parameter>\n</function>\n</tool_call>"])
    assert [type(e) for e in out] == [ReasoningDelta, ToolCall] and out[0] == ReasoningDelta("let me ")
    out = stream(["<think>\nsee <tool_call>", "{ ", '"name": "setup"}</tool_call>'])
    assert [type(e) for e in out] == [ReasoningDelta, ToolCall]
    out = stream(["<think>\nthe <tool_call> tag", " is how</think>ok"])
    assert out == [ReasoningDelta("the <tool_call> tag is how"), TextDelta("ok")]


def test_a_bare_function_line_is_held_until_it_decides() -> None:
    for cut in range(1, 40):
        text = "Calling:\n<function=write_file>\n<parameter=path>\na\n</parameter>\n"
        text += "<parameter=content>\nb\n</parameter>\n</function>\nDone."
        out = stream([text[:cut], text[cut:]], reasoning=False)
        assert [type(e) for e in out] == [TextDelta, ToolCall, TextDelta], cut
        assert out[0].text == "Calling:\n" and out[2].text == "Done.", cut


@pytest.mark.parametrize(
    "text",
    [
        "see <function=x> in the docs",
        "see\n<function=x>and more",
        "see\n<function=a\nb> no",
        "see\n<function=a<b> no",
        "see\n<function=x>  <para",
    ],
)
def test_prose_about_function_tags_stays_text(text: str) -> None:
    for cut in range(1, len(text)):
        out = stream([text[:cut], text[cut:]], reasoning=False)
        assert "".join(e.text for e in out) == text and all(isinstance(e, TextDelta) for e in out), cut


# -- text and calls come out as soon as they are decided ---------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "see\n<function=x>and more",
        "see\n<function=x> y>",
        "see\n<function=ab\ncd",
        "see\n<function=a<b",
        "<think>\nsee <tool_call>X",
        "<think>\nthe <tool_call> tag",
    ],
)
def test_text_that_cannot_become_a_call_is_not_held_back(text: str) -> None:
    out = StreamParser(TOOLS, reasoning=text.startswith("<think>")).feed(text)
    assert "".join(e.text for e in out) == text.removeprefix("<think>\n")


def test_a_call_is_emitted_by_the_feed_that_completes_it() -> None:
    call = xml("write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n")
    for prefix in ("", "<think>\nhm "):
        out = StreamParser(TOOLS).feed(prefix + call + " after")
        assert ToolCall in [type(e) for e in out], prefix


def test_a_bare_call_whose_parameter_tag_arrives_in_pieces() -> None:
    text = "Run:\n<function=write_file><param"
    rest = "eter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n</function>"
    out = stream([text, rest], reasoning=False)
    assert [type(e) for e in out] == [TextDelta, ToolCall] and out[1].arguments == {
        "path": "a",
        "content": "b",
    }


# -- calls inside values and around each other -------------------------------------------------------------
def test_a_json_value_may_hold_the_closing_tag() -> None:
    for value in ("x</tool_call>y", "a}</tool_call>b"):
        args = {"path": "a", "content": value}
        text = f'<tool_call>\n{{"name": "write_file", "arguments": {json.dumps(args)}}}\n</tool_call>'
        for chunks in ([text], list(text)):
            out = stream(chunks)
            assert [type(e) for e in out] == [ToolCall] and out[0].arguments == args, value


def _calls(*contents: str) -> list[str]:
    return [
        xml("write_file", f"<parameter=path>\np{i}\n</parameter>\n<parameter=content>\n{c}\n</parameter>\n")
        for i, c in enumerate(contents)
    ]


def test_an_unclosed_value_ends_where_the_next_call_begins() -> None:
    first = "<tool_call>\n<function=write_file>\n<parameter=path>\na\n</parameter>\n"
    first += "<parameter=content>\nx</tool_call>"
    text = first + "".join(_calls("b", "c"))
    for chunks in ([text], list(text)):
        out = [e for e in stream(chunks) if not isinstance(e, TextDelta)]
        assert [e.arguments["content"] for e in out] == ["x", "b", "c"]


def test_a_closed_value_keeps_a_closing_tag_it_holds() -> None:
    text = "".join(_calls("x</tool_call>y", "b"))
    for chunks in ([text], list(text)):
        out = [e for e in stream(chunks) if not isinstance(e, TextDelta)]
        assert [e.arguments["content"] for e in out] == ["x</tool_call>y", "b"]


def test_calls_written_in_the_reasoning() -> None:
    a, b = _calls("1", "2")
    out = stream([f"<think>\n{a}</think>done"])
    assert [type(e) for e in out] == [ToolCall, TextDelta] and out[1].text == "done"
    out = stream([f"<think>\n{a} {b}"])
    assert [e.arguments["content"] for e in out if isinstance(e, ToolCall)] == ["1", "2"]


def test_the_answer_keeps_its_first_letters() -> None:
    assert stream(["<think>\nr</think>\n\nXmas"]) == [ReasoningDelta("r"), TextDelta("Xmas")]


def test_prime_flushes_held_back_text_as_written() -> None:
    p = StreamParser(TOOLS, reasoning=False)
    p.prime("Sure <")
    assert p.feed("b>") + p.finish() == [TextDelta("b>")]


# -- calls without tools, and schemas that are not quite schemas ------------------------------------------
def test_without_tools_errors_still_name_the_tool() -> None:
    cases = {
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>": (
            "malformed tool call to 'f': missing </function> before </tool_call>."
        ),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n": (
            "tool call to 'f' was cut off: generation ended before </tool_call>"
        ),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\n2\n</function>\n</tool_call>": (
            "malformed tool call to 'f': parameter 'a' is not closed with </parameter>."
        ),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</parameter>\n</tool_call>": (
            "malformed tool call to 'f': </function> comes before the </parameter> of 'a'."
        ),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=a>\n2\n</parameter>\n"
        "</function>\n</tool_call>": "tool call to 'f' gives parameter 'a' twice",
        "<tool_call>\n<function=f>\n</function>\nmore\n</tool_call>": (
            "malformed tool call to 'f': unexpected text 'more\\n' after </function>; "
            "only </tool_call> may follow."
        ),
    }
    for text, message in cases.items():
        calls = parse_tool_calls(text)
        assert len(calls) == 1 and calls[0].name == "f", text
        assert calls[0].message.split(" Write tool calls")[0] == message, text


def test_properties_that_are_not_a_mapping_count_as_none() -> None:
    tools = [{"name": "g", "parameters": {"properties": ["a"]}}]
    c = one("<tool_call>\n<function=g>\n<parameter=a>\n1\n<parameter=b>\n2\n</function>\n</tool_call>", tools)
    assert isinstance(c, ToolCall) and c.arguments == {"a": 1, "b": 2}


def test_union_types_read_values_as_the_union_says() -> None:
    tools = [
        {
            "name": "u",
            "parameters": {
                "properties": {
                    "pick": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    "num": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "count": {"type": "integer"},
                }
            },
        }
    ]
    body = "<parameter=pick>\n[1]\n</parameter>\n<parameter=num>\nnull\n</parameter>\n"
    c = one(xml("u", body), tools)
    assert isinstance(c, ToolCall) and c.arguments == {"pick": "[1]", "num": None}
    c = one(xml("u", '<parameter=pick>\n"q"\n</parameter>\n'), tools)
    assert isinstance(c, ToolCall) and c.arguments == {"pick": '"q"'}
    for bad in ("<parameter=num>\nx\n</parameter>\n", '<parameter=count>\n"5"\n</parameter>\n'):
        assert isinstance(one(xml("u", bad), tools), ToolCallError), bad


@pytest.mark.parametrize("n, shown", [(39, 39), (40, 40), (41, 40), (60, 40)])
def test_quoted_values_are_cut_at_40_characters(n: int, shown: int) -> None:
    value = "v" * n
    e = one(xml("setup", f"<parameter=count>\n{value}\n</parameter>\n"))
    dots = "..." if n > 40 else ""
    assert e.message.endswith(f"got '{'v' * shown}{dots}'")


# -- tool lists, trimming, dropped tags and bare calls ------------------------------------------------------
def test_tool_lists_skip_what_is_not_a_tool_and_keep_the_rest() -> None:
    good = {"name": "ok", "parameters": "not a schema"}
    assert tool_schemas(["junk", {"function": {}}, {"name": 5}, good]) == {"ok": {}}
    c = one(xml("ok", "<parameter=a>\n1\n</parameter>\n"), tools=["junk", {"function": {}}, good])
    assert isinstance(c, ToolCall) and c.arguments == {"a": 1}


def test_answer_text_keeps_its_indentation_and_letters() -> None:
    assert stream(["<think>\nr</think>\n  code"]) == [ReasoningDelta("r"), TextDelta("  code")]
    assert stream(["<think>\nr</think>\nA", "Xmas"]) == [ReasoningDelta("r"), TextDelta("AXmas")]
    call = xml("write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n")
    out = stream([f"<think>\n{call}</think>Xyz"])
    assert out[-1] == TextDelta("Xyz")
    out = stream([f"{call}\nXyz"], reasoning=False)
    assert out[-1] == TextDelta("Xyz")


def test_a_late_think_close_is_dropped_once() -> None:
    call = xml("write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n")
    out = stream([f"<think>\n{call} a</think>b</think>c"])
    assert out[-1] == TextDelta("a\n\nb</think>c")


def test_text_after_a_call_comes_out_with_it() -> None:
    call = xml("write_file", "<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n")
    out = StreamParser(TOOLS).feed(f"<think>\n{call}</think>done")
    assert [type(e) for e in out] == [ToolCall, TextDelta] and out[1].text == "done"
    bare = "Calling:\n<function=write_file>\n<parameter=path>\na\n</parameter>\n"
    out = StreamParser(TOOLS, reasoning=False).feed(
        bare + "<parameter=content>\nb\n</parameter>\n</function>\nDone."
    )
    assert [type(e) for e in out] == [TextDelta, ToolCall, TextDelta]
    first = "<tool_call>\n<function=write_file>\n<parameter=path>\na\n</parameter>\n"
    out = StreamParser(TOOLS).feed(first + "<parameter=content>\nx</tool_call><tool_call>\n<function=wri")
    assert [type(e) for e in out] == [ToolCall] and out[0].arguments["content"] == "x"


def test_long_bare_calls_after_long_text() -> None:
    content = "y" * 300
    body = f"<parameter=path>\na\n</parameter>\n<parameter=content>\n{content}\n</parameter>\n</function>"
    out = stream([f"Calling:\n<function=write_file>\n{body}"], reasoning=False)
    assert [type(e) for e in out] == [TextDelta, ToolCall]
    out = stream(["x" * 300 + "\n<function=write_file>", f"\n{body}"], reasoning=False)
    assert [type(e) for e in out] == [TextDelta, ToolCall] and out[1].arguments["content"] == content


def test_a_bare_call_closed_by_tool_call_close_drops_nothing_later() -> None:
    text = "<function=write_file>\n<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n"
    out = stream([text + "</tool_call>\nThe tag </tool_call> closes calls."], reasoning=False)
    assert [type(e) for e in out] == [ToolCall, TextDelta] and out[
        1
    ].text == "The tag </tool_call> closes calls."


def test_bare_calls_settled_at_the_end() -> None:
    text = "<function=write_file>\n<parameter=path>\na\n</parameter>\n<parameter=content>\nb\n</parameter>\n"
    out = stream([text], reasoning=False)
    assert [type(e) for e in out] == [ToolCall] and out[0].arguments == {"path": "a", "content": "b"}
    text = "<function=write_file>\n<parameter=path>\na\n</parameter>\n<parameter=content>\nx</tool_call>Xyz"
    out = stream([text], reasoning=False)
    assert [type(e) for e in out] == [ToolCall, TextDelta] and out[0].arguments["content"] == "x"
    assert out[1].text == "Xyz"
