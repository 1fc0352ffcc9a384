"""OpenAI chat completions through the official openai SDK against a real server."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
)


def client(srv, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=kw.pop("api_key", "x"), max_retries=0, **kw)


def test_plain_completion_with_the_tiny_model(serve, engine):
    srv = serve(engine)
    r = client(srv).chat.completions.create(
        model="gpt-4o",
        max_tokens=6,
        temperature=0,
        messages=[{"role": "user", "content": "Hello"}],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert r.object == "chat.completion" and r.model == "gpt-4o"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_cached_tokens_reported_on_the_next_turn(serve, tiny_dir, tmp_path):
    from engine import Engine, PromptCache

    eng = Engine.from_path(str(tiny_dir("mlx", 4)), prompt_cache=PromptCache(disk_dir=tmp_path))
    try:
        srv = serve(eng)
        c = client(srv)
        msgs = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "Hello"}]
        first = c.chat.completions.create(model="m", max_tokens=4, messages=msgs, seed=1)
        msgs += [
            {
                "role": "assistant",
                "content": first.choices[0].message.content or "",
                "reasoning_content": first.choices[0].message.reasoning_content or "",
            },
            {"role": "user", "content": "Again"},
        ]
        second = c.chat.completions.create(model="m", max_tokens=4, messages=msgs, seed=1)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    finally:
        eng.close()


def test_reasoning_content_and_tool_calls(serve, scripted):
    eng = scripted(f"Need weather.\n</think>\n\n{CALL}", "Ok.\n</think>\n\nSunny in Paris.")
    srv = serve(eng)
    c = client(srv)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.chat.completions.create(model="m", messages=msgs, tools=TOOLS, max_tokens=300)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert m.reasoning_content.strip() == "Need weather."  # an extra field the SDK keeps
    call = m.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    msgs += [
        {
            "role": "assistant",
            "content": m.content,
            "reasoning_content": m.reasoning_content,
            "tool_calls": [call.model_dump()],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    r2 = c.chat.completions.create(model="m", messages=msgs, tools=TOOLS, max_tokens=300)
    assert r2.choices[0].message.content == "Sunny in Paris."
    assert r2.choices[0].finish_reason == "stop"
    sent = eng.requests[1].messages
    assert sent[1]["reasoning_content"].strip() == "Need weather."
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_streaming_with_tool_calls_and_usage(serve, scripted):
    eng = scripted(f"Hmm.\n</think>\n\nLet me check.\n{CALL}")
    srv = serve(eng)
    chunks = list(
        client(srv).chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=TOOLS,
            max_tokens=300,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    text = "".join(d.content or "" for d in deltas)
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert reasoning.strip() == "Hmm." and text.strip() == "Let me check."
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 2}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 10


def test_forced_tool_choice(serve, scripted):
    # The prompt already opens the call; the model writes only the rest.
    eng = scripted("<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>")
    srv = serve(eng)
    r = client(srv).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert eng.prompt_text(0).endswith("<tool_call>\n<function=get_weather>\n")


def test_chat_template_kwargs_turn_thinking_off(serve, scripted):
    eng = scripted("Plain answer.")
    srv = serve(eng)
    r = client(srv).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=50,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert r.choices[0].message.content == "Plain answer."
    assert eng.requests[0].enable_thinking is False


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_images_reach_the_vision_model(serve, engine):
    srv = serve(engine)
    c = client(srv)
    text = {"type": "text", "text": "What is this?"}
    image = {"type": "image_url", "image_url": {"url": _png()}}
    kw = {
        "model": "m",
        "max_tokens": 2,
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    plain = c.chat.completions.create(messages=[{"role": "user", "content": [text]}], **kw)
    seen = c.chat.completions.create(messages=[{"role": "user", "content": [text, image]}], **kw)
    # The image's own tokens (vision start/end and its patches) are in the prompt.
    assert seen.usage.prompt_tokens >= plain.usage.prompt_tokens + 3


def test_images_on_a_text_only_model_are_a_clear_error(serve, scripted):
    eng = scripted("unused")  # the scripted model has no vision tower
    srv = serve(eng)
    content = [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": _png()}},
    ]
    with pytest.raises(openai.BadRequestError) as e:
        client(srv).chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], max_tokens=5
        )
    assert "image" in e.value.message.lower()


def test_errors_are_sdk_exceptions(serve, engine):
    srv = serve(engine, context_tokens=4096)
    c = client(srv)
    user = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=user, temperature=5)
    assert e.value.body["type"] == "invalid_request_error" and "temperature" in e.value.message
    with pytest.raises(openai.BadRequestError, match="nothing leaves this machine"):
        c.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
                }
            ],
        )
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        c.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
                    ],
                }
            ],
        )
    with pytest.raises(openai.BadRequestError, match="prompt is too long"):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 5000}])
    models = c.models.list()
    assert len(models.data) == 1 and models.data[0].owned_by == "locus"


def test_frequency_penalty_is_taken_and_counts_generated_tokens(serve, engine):
    srv = serve(engine)
    c = client(srv)
    user = [{"role": "user", "content": "count the cats"}]
    kw = {
        "model": "m",
        "messages": user,
        "max_tokens": 24,
        "temperature": 0,
        "presence_penalty": 0,
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    plain = c.chat.completions.create(**kw).choices[0].message.content
    # A negative penalty favours tokens already generated: the answer starts repeating itself.
    pen = c.chat.completions.create(frequency_penalty=-2.0, **kw).choices[0].message.content
    assert pen != plain
    with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
        c.chat.completions.create(frequency_penalty=3, **kw)
