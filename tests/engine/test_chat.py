"""Prompts built through the model's own template equal transformers' rendering."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from engine import ChatTemplateError, render_prompt, supports_preserve_thinking
from engine.chat import opens_reasoning

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["path"],
            },
        },
    }
]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Open main.py"},
    {
        "role": "assistant",
        "content": "Reading it.",
        "reasoning_content": "Need the file.",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "read_file", "arguments": {"path": "main.py", "limit": 20}},
            }
        ],
    },
    {"role": "tool", "content": "print('hi')"},
    {"role": "assistant", "content": "It prints hi.", "reasoning_content": "Simple."},
    {"role": "user", "content": "Thanks. And <b>tags</b>?"},
]


def _with_string_args(messages):
    out = json.loads(json.dumps(messages))
    for m in out:
        for c in m.get("tool_calls", []):
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    return out


@pytest.fixture(scope="module")
def hf_tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir("per_expert"))


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("preserve_thinking", [True, False])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_render_equals_transformers(tiny_model, hf_tok, enable_thinking, preserve_thinking, tools):
    ours = render_prompt(
        tiny_model.tokenizer,
        _with_string_args(CONVERSATION),
        tools=tools,
        enable_thinking=enable_thinking,
        preserve_thinking=preserve_thinking,
    )
    ref = hf_tok.apply_chat_template(
        CONVERSATION,
        tools=tools,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
        preserve_thinking=preserve_thinking,
    )
    assert ours == ref
    assert ("Need the file." in ours) == preserve_thinking  # older reasoning kept only if asked
    assert opens_reasoning(ours) == enable_thinking


def test_preserve_thinking_makes_next_prompt_extend_the_last(tiny_model):
    tok = tiny_model.tokenizer
    turn1 = CONVERSATION[:2]
    p1 = render_prompt(tok, turn1, preserve_thinking=True)
    reply = {"role": "assistant", "content": "Done.", "reasoning_content": "Thinking hard."}
    p2 = render_prompt(tok, [*turn1, reply, {"role": "user", "content": "more"}], preserve_thinking=True)
    assert p2.startswith(p1)
    p2_lost = render_prompt(tok, [*turn1, reply, {"role": "user", "content": "more"}])
    assert not p2_lost.startswith(p1)  # without it the template drops the old think block


def test_template_features_detected(tiny_model):
    assert supports_preserve_thinking(tiny_model.tokenizer)


def test_bad_conversations_raise(tiny_model):
    tok = tiny_model.tokenizer
    with pytest.raises(ChatTemplateError, match="No user query"):
        render_prompt(tok, [{"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="not valid JSON"):
        render_prompt(
            tok,
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}],
                },
            ],
        )


def test_model_without_template(tiny_model):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_prompt(NoTemplate(), [{"role": "user", "content": "x"}])
