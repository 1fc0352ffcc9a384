"""Structured outputs through the official SDKs against a real server on the tiny random model:
JSON schemas (chat completions `response_format`, Responses `text.format`, Anthropic
`output_format`) and forced tool calls valid by construction, at temperature 1."""

from __future__ import annotations

import json
from typing import Literal

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "days": {"type": "integer", "minimum": 1, "maximum": 9},
                    "units": {"type": "string", "enum": ["C", "F"]},
                },
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
WEATHER = TOOLS[0]["function"]["parameters"]
MSGS = [{"role": "user", "content": "Describe a pet as JSON."}]
SEEDS = range(4)


class Pet(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    kind: Literal["cat", "dog"]


class LoosePet(BaseModel):
    """Anthropic's SDK drops maxLength/minimum from the schema it sends, then checks them itself."""

    name: str
    age: int
    kind: Literal["cat", "dog"]


def oai(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def ant(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


# -- chat completions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("think", [False, True])
def test_parse_returns_a_pydantic_object(serve, engine, think):
    c = oai(serve(engine))
    for seed in SEEDS:
        r = c.chat.completions.parse(
            model="m",
            messages=MSGS,
            response_format=Pet,
            temperature=1,
            seed=seed,
            max_tokens=400,
            extra_body={"chat_template_kwargs": {"enable_thinking": think}},
        )
        msg = r.choices[0].message
        assert isinstance(msg.parsed, Pet), msg.content
        assert r.choices[0].finish_reason == "stop"


def test_json_schema_and_json_object_are_valid_json(serve, engine):
    c = oai(serve(engine))
    for seed in SEEDS:
        r = c.chat.completions.create(
            model="m",
            messages=MSGS,
            temperature=1,
            seed=seed,
            max_tokens=300,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True},
            },
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        r = c.chat.completions.create(
            model="m",
            messages=MSGS,
            temperature=1,
            seed=seed,
            max_tokens=300,
            response_format={"type": "json_object"},
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        if r.choices[0].finish_reason == "stop":  # an open object may run to max_tokens
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:
            assert r.choices[0].message.content.startswith("{")


def test_a_schema_feature_the_engine_cannot_enforce_is_a_400_naming_it(serve, engine):
    c = oai(serve(engine))
    bad = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="m",
            messages=MSGS,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
        )
    assert "not" in str(e.value) and "cannot enforce" in str(e.value)


def _check_call(name, arguments):
    assert name in ("get_weather", "get_time")
    if name == "get_weather":
        jsonschema.validate(arguments, WEATHER)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_call_is_always_a_valid_function_call(serve, engine, choice):
    c = oai(serve(engine))
    for seed in SEEDS:
        r = c.chat.completions.create(
            model="m",
            messages=MSGS,
            tools=TOOLS,
            tool_choice=choice,
            temperature=1,
            seed=seed,
            max_tokens=300,
        )
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch.message
        assert ch.message.tool_calls, ch.message
        for call in ch.message.tool_calls:
            _check_call(call.function.name, json.loads(call.function.arguments))
        if isinstance(choice, dict):
            assert ch.message.tool_calls[0].function.name == "get_weather"


TWO_CALLS = (
    "<tool_call>\n<function=get_time>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
    "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
)
STRICT = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]


@pytest.mark.parametrize("parallel", [True, False])
def test_a_model_writing_two_calls_gets_one_without_parallel_calls(serve, scripted, parallel):
    """A scripted model writes two calls: all three APIs keep both, or only the first when the
    client asks for one call (the mask ends the reply after it)."""
    srv = serve(scripted(TWO_CALLS))
    want = ["get_time", "get_weather"] if parallel else ["get_time"]
    r = oai(srv).chat.completions.create(
        model="m",
        messages=MSGS,
        tools=STRICT,
        parallel_tool_calls=parallel,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert [c.function.name for c in r.choices[0].message.tool_calls] == want
    r = oai(srv).responses.create(
        model="m",
        input="x",
        tools=[{"type": "function", **t["function"]} for t in STRICT],
        parallel_tool_calls=parallel,
        reasoning={"effort": "none"},
    )
    assert [o.name for o in r.output if o.type == "function_call"] == want
    r = ant(srv).messages.create(
        model="m",
        max_tokens=300,
        messages=MSGS,
        tools=[
            {"name": t["function"]["name"], "input_schema": t["function"]["parameters"], "strict": True}
            for t in TOOLS
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": not parallel},
    )
    assert [b.name for b in r.content if b.type == "tool_use"] == want


def test_parallel_tool_calls_false_gives_one_call(serve, engine):
    c = oai(serve(engine))
    counts = set()
    for seed in range(8):
        r = c.chat.completions.create(
            model="m",
            messages=MSGS,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1,
            seed=seed,
            max_tokens=300,
        )
        counts.add(len(r.choices[0].message.tool_calls or []))
    assert counts == {1}


def test_strict_tool_with_auto_choice_makes_calls_valid(serve, engine):
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    c = oai(serve(engine))
    for seed in SEEDS:
        r = c.chat.completions.create(
            model="m",
            messages=MSGS,
            tools=strict,
            temperature=1,
            seed=seed,
            max_tokens=200,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        for call in r.choices[0].message.tool_calls or []:
            _check_call(call.function.name, json.loads(call.function.arguments))


def test_logprobs_are_refused_not_silently_empty(serve, engine):
    c = oai(serve(engine))
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        c.chat.completions.create(model="m", messages=MSGS, logprobs=True, top_logprobs=2)


# -- Responses ----------------------------------------------------------------------------------------

RESP_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]


def test_responses_parse_with_text_format(serve, engine):
    c = oai(serve(engine))
    for _seed in SEEDS:
        r = c.responses.parse(
            model="m", input="Describe a pet.", text_format=Pet, temperature=1, max_output_tokens=600
        )
        assert isinstance(r.output_parsed, Pet), r.output_text
        assert r.text.format.type == "json_schema"
    raw = c.responses.create(
        model="m",
        input="Describe a pet.",
        reasoning={"effort": "none"},
        text={"format": {"type": "json_schema", "name": "pet", "schema": SCHEMA, "strict": True}},
        max_output_tokens=300,
    )
    jsonschema.validate(json.loads(raw.output_text), SCHEMA)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_responses_forced_call_is_always_a_function_call(serve, engine, choice):
    c = oai(serve(engine))
    for _seed in SEEDS:
        r = c.responses.create(
            model="m",
            input="Weather?",
            tools=RESP_TOOLS,
            tool_choice=choice,
            temperature=1,
            parallel_tool_calls=False,
            max_output_tokens=300,
        )
        calls = [o for o in r.output if o.type == "function_call"]
        assert len(calls) == 1, r.output
        assert r.parallel_tool_calls is False
        _check_call(calls[0].name, json.loads(calls[0].arguments))


def test_responses_logprobs_are_refused_not_silently_empty(serve, engine):
    c = oai(serve(engine))
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        c.responses.create(model="m", input="x", include=["message.output_text.logprobs"], top_logprobs=2)


# -- Anthropic ----------------------------------------------------------------------------------------

ANT_TOOLS = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS]


def test_anthropic_parse_with_output_config_and_the_beta_output_format(serve, engine):
    c = ant(serve(engine))
    for _seed in SEEDS:
        r = c.messages.parse(
            model="m", max_tokens=1500, messages=MSGS, output_format=LoosePet, extra_body={"temperature": 1}
        )
        assert isinstance(r.parsed_output, LoosePet), r.content
        assert r.stop_reason == "end_turn"
    beta = c.beta.messages.create(
        model="m",
        max_tokens=300,
        messages=MSGS,
        betas=["structured-outputs-2025-11-13"],
        extra_body={"output_format": {"type": "json_schema", "schema": SCHEMA}},  # the beta's field
    )
    jsonschema.validate(json.loads(beta.content[-1].text), SCHEMA)


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_anthropic_forced_tool_use_is_always_valid(serve, engine, choice):
    c = ant(serve(engine))
    for _seed in SEEDS:
        r = c.messages.create(
            model="m",
            max_tokens=300,
            messages=MSGS,
            tools=ANT_TOOLS,
            extra_body={"temperature": 1},
            tool_choice={**choice, "disable_parallel_tool_use": True},
        )
        uses = [b for b in r.content if b.type == "tool_use"]
        assert r.stop_reason == "tool_use" and len(uses) == 1, r.content
        _check_call(uses[0].name, uses[0].input)


def test_anthropic_prefill_with_output_format_is_refused(serve, engine):
    c = ant(serve(engine))
    with pytest.raises(anthropic.BadRequestError, match="prefilled"):
        c.messages.create(
            model="m",
            max_tokens=50,
            messages=[*MSGS, {"role": "assistant", "content": "{"}],
            output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
        )
