"""Anthropic request features where the exact output matters: budgets, tool_choice, prefill, stops."""

from __future__ import annotations

import anthropic
import pytest

from app.server.jobs import BUDGET_NOTE

TOOLS = [
    {
        "name": "lookup",
        "description": "Look up",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
]
USER = [{"role": "user", "content": "hi"}]


def client(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


def test_thinking_budget_closes_the_reasoning_and_answers(serve, scripted):
    # The reply never leaves its reasoning; after the budget the engine closes it and the model
    # (once it reads `</think>`) answers.
    eng = scripted("hmm " * 200, then="The answer.")
    srv = serve(eng)
    msg = client(srv).messages.create(
        model="m", max_tokens=400, messages=USER, thinking={"type": "enabled", "budget_tokens": 20}
    )
    thinking, text = msg.content
    assert thinking.type == "thinking" and thinking.thinking.endswith(BUDGET_NOTE)
    assert text.text == "The answer." and msg.stop_reason == "end_turn"
    reply = eng.model.tokenizer.decode(eng.handles[0].done.token_ids)
    assert BUDGET_NOTE + "\n</think>\n\nThe answer." in reply
    # About the budget plus the answer, far below the 800 characters of reasoning scripted.
    assert 20 <= msg.usage.output_tokens < 60


def test_tool_choice_any_and_tool_force_a_call(serve, scripted):
    eng = scripted(
        "lookup>\n<parameter=q>\ncats\n</parameter>\n</function>\n</tool_call>",
        "<parameter=q>\ndogs\n</parameter>\n</function>\n</tool_call>",
    )
    srv = serve(eng)
    c = client(srv)
    any_ = c.messages.create(
        model="m", max_tokens=100, messages=USER, tools=TOOLS, tool_choice={"type": "any"}
    )
    assert any_.stop_reason == "tool_use" and any_.content[0].input == {"q": "cats"}
    one = c.messages.create(
        model="m", max_tokens=100, messages=USER, tools=TOOLS, tool_choice={"type": "tool", "name": "lookup"}
    )
    assert one.content[0].name == "lookup" and one.content[0].input == {"q": "dogs"}
    with pytest.raises(anthropic.BadRequestError, match="Thinking may not be enabled"):
        c.messages.create(
            model="m",
            max_tokens=100,
            messages=USER,
            tools=TOOLS,
            tool_choice={"type": "any"},
            thinking={"type": "enabled", "budget_tokens": 10},
        )
    with pytest.raises(anthropic.BadRequestError, match="no tool named 'nope'"):
        c.messages.create(
            model="m",
            max_tokens=100,
            messages=USER,
            tools=TOOLS,
            tool_choice={"type": "tool", "name": "nope"},
        )


def test_tool_choice_none_hides_the_tools(serve, scripted):
    eng = scripted("No tools.")
    srv = serve(eng)
    client(srv).messages.create(
        model="m", max_tokens=50, messages=USER, tools=TOOLS, tool_choice={"type": "none"}
    )
    assert eng.requests[0].tools is None


def test_prefill_continues_the_assistant_message(serve, scripted):
    eng = scripted('"blue"}')
    srv = serve(eng)
    msg = client(srv).messages.create(
        model="m", max_tokens=50, messages=[*USER, {"role": "assistant", "content": '{"color":'}]
    )
    assert msg.content[0].text == '"blue"}'
    assert eng.prompt_text(0).endswith('{"color":')


def test_stop_sequences(serve, scripted):
    eng = scripted("one two STOP three")
    srv = serve(eng)
    msg = client(srv).messages.create(
        model="m", max_tokens=50, messages=USER, stop_sequences=["STOP", "never"]
    )
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"
    assert msg.content[0].text == "one two "


def test_streaming_error_after_start_is_an_error_event(serve, tiny_model):
    # The scripted model cannot take images: the engine fails after the stream has begun only if
    # preparation passed, so use a request whose failure comes from the engine itself.
    from tests.app.server.conftest import ReplyEngine

    eng = ReplyEngine(tiny_model, ["x"])
    srv = serve(eng)
    eng.submit = lambda req: (_ for _ in ()).throw(RuntimeError("engine exploded"))
    with pytest.raises(anthropic.APIStatusError) as e:
        with client(srv).messages.stream(model="m", max_tokens=5, messages=USER) as s:
            list(s)
    assert "engine exploded" in str(e.value)


def test_prefill_and_thinking_budget_with_an_image(serve, engine):
    # Both used to be refused or skipped with images; the engine now does them for any prompt.
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    ask = {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}
    c = client(serve(engine))
    counted = c.messages.count_tokens(model="m", messages=[ask]).input_tokens
    msg = c.messages.create(
        model="m",
        max_tokens=3,
        extra_body={"temperature": 0},
        messages=[ask, {"role": "assistant", "content": "It is"}],
    )
    u = msg.usage
    # The prefill is the reply's start, not the client's prompt.
    assert u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens == counted
    assert not msg.content or not msg.content[0].text.startswith("It is")
    msg = c.messages.create(
        model="m",
        max_tokens=12,
        messages=[ask],
        extra_body={"temperature": 0},
        thinking={"type": "enabled", "budget_tokens": 2},
    )
    assert msg.content[0].type == "thinking" and msg.content[0].thinking.endswith(BUDGET_NOTE)
    assert msg.usage.output_tokens <= 12
