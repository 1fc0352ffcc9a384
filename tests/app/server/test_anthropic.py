"""The Anthropic Messages API through the official anthropic SDK against a real server."""

from __future__ import annotations

import json

import anthropic
import pytest

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
]
CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
)


def client(srv, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key=kw.pop("api_key", "x"), max_retries=0, **kw)


def test_plain_message_with_the_tiny_model(serve, engine):
    srv = serve(engine)
    msg = client(srv).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=8,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-sonnet-4-6"
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens + msg.usage.cache_creation_input_tokens > 5
    # max_tokens is reached exactly, or the reply ended earlier on its own.
    if msg.stop_reason == "max_tokens":
        assert msg.usage.output_tokens == 8
    else:
        assert 0 < msg.usage.output_tokens < 8
    assert all(b.type == "text" for b in msg.content)


def test_thinking_and_text_blocks(serve, scripted):
    eng = scripted("I should greet.\n</think>\n\nHello there!")
    srv = serve(eng)
    msg = client(srv).messages.create(
        model="m",
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 50},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking.strip() == "I should greet."
    assert msg.content[0].signature
    assert msg.content[1].text == "Hello there!"
    assert msg.stop_reason == "end_turn"
    assert eng.requests[0].enable_thinking is True


def test_thinking_disabled_renders_an_empty_think_block(serve, scripted):
    eng = scripted("Just text.")
    srv = serve(eng)
    msg = client(srv).messages.create(model="m", max_tokens=50, messages=[{"role": "user", "content": "Hi"}])
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Just text."
    assert eng.requests[0].enable_thinking is False


def test_tool_use_round_trip(serve, scripted):
    eng = scripted(f"Need weather.\n</think>\n\n{CALL}", "Done.\n</think>\n\nIt is sunny in Paris.")
    srv = serve(eng)
    c = client(srv)
    history = [{"role": "user", "content": "Weather in Paris?"}]
    first = c.messages.create(
        model="m",
        max_tokens=200,
        tools=TOOLS,
        messages=history,
        thinking={"type": "enabled", "budget_tokens": 100},
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris", "days": 2}
    assert use.id.startswith("toolu_")
    history += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 24C"}],
        },
    ]
    second = c.messages.create(
        model="m",
        max_tokens=200,
        tools=TOOLS,
        messages=history,
        thinking={"type": "enabled", "budget_tokens": 100},
    )
    assert second.stop_reason == "end_turn"
    assert second.content[-1].text == "It is sunny in Paris."
    # The thinking given back went to the template as reasoning, and the tool result as a tool turn.
    msgs = eng.requests[1].messages
    assert msgs[1]["reasoning_content"].strip() == "Need weather."
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "days": 2}
    assert msgs[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 24C"}
    # preserve_thinking keeps the first prompt a prefix of the second (what the prompt cache needs).
    p1, _ = eng.encode(eng.requests[0])
    p2, _ = eng.encode(eng.requests[1])
    assert p2[: len(p1)] == p1


def test_streaming_text_and_final_message(serve, scripted):
    eng = scripted("Plan.\n</think>\n\nHello stream!")
    srv = serve(eng)
    with client(srv).messages.stream(
        model="m",
        max_tokens=100,
        thinking={"type": "enabled", "budget_tokens": 50},
        messages=[{"role": "user", "content": "Hi"}],
    ) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(texts) == "Hello stream!"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 3 and final.usage.input_tokens > 5


def test_streaming_event_sequence_is_anthropics(serve, scripted):
    eng = scripted(f"Think.\n</think>\n\nCalling.\n{CALL}")
    srv = serve(eng)
    with client(srv).messages.stream(
        model="m",
        max_tokens=300,
        tools=TOOLS,
        thinking={"type": "enabled", "budget_tokens": 50},
        messages=[{"role": "user", "content": "Weather?"}],
    ) as s:
        events = list(s)
        final = s.get_final_message()
    kinds = [e.type for e in events]
    # The SDK also fires its own convenience events (text, thinking, signature, input_json).
    raw = [
        k
        for k in kinds
        if k
        in (
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        )
    ]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[-1] == "input_json_delta" and "signature_delta" in deltas
    assert deltas.index("signature_delta") < deltas.index("text_delta")
    assert final.stop_reason == "tool_use"
    assert final.content[2].input == {"city": "Paris", "days": 2}


def test_count_tokens_matches_the_prompt(serve, engine):
    srv = serve(engine)
    c = client(srv)
    msgs = [{"role": "user", "content": "Count these tokens please"}]
    n = c.messages.count_tokens(model="m", messages=msgs).input_tokens
    longer = c.messages.count_tokens(model="m", messages=msgs, system="Be brief.").input_tokens
    assert n > 5 and longer > n
    msg = c.messages.create(model="m", max_tokens=1, messages=msgs)
    u = msg.usage
    assert u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens == n


def test_models_lists_the_loaded_model(serve, engine):
    srv = serve(engine, model_name="qwen-tiny")
    page = client(srv).models.list()
    assert [m.id for m in page.data] == ["qwen-tiny"]
    assert client(srv).models.retrieve("claude-opus-4-1").id == "claude-opus-4-1"


def test_errors_are_sdk_exceptions(serve, engine):
    srv = serve(engine)
    c = client(srv)
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert "max_tokens" in e.value.message
    with pytest.raises(anthropic.BadRequestError, match="unknown content block type"):
        c.messages.create(
            model="m",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "video", "x": 1}]}],
        )
    with pytest.raises(anthropic.BadRequestError, match="nothing leaves this machine"):
        c.messages.create(
            model="m",
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
                    ],
                }
            ],
        )
    with pytest.raises(anthropic.NotFoundError):
        c.get("/v1/nothing", cast_to=object)


def test_raw_sse_matches_anthropics_wire_format(serve, scripted):
    import httpx

    eng = scripted("Hm.\n</think>\n\nHi!")
    srv = serve(eng)
    body = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
        "thinking": {"type": "enabled", "budget_tokens": 10},
    }
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e.strip()]
    names = []
    for e in events:
        event_line, data_line = e.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        names.append((name, data.get("delta", {}).get("type") or data.get("content_block", {}).get("type")))
    collapsed = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
    assert collapsed == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", "thinking"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", "text"),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]


def test_base64_images_reach_the_vision_model(serve, engine):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    srv = serve(engine)
    c = client(srv)
    text = {"type": "text", "text": "What is this?"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    plain = c.messages.count_tokens(model="m", messages=[{"role": "user", "content": [text]}])
    seen = c.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": [image, text]}])
    counted = c.messages.count_tokens(model="m", messages=[{"role": "user", "content": [image, text]}])
    u = seen.usage
    used = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens
    assert used == counted.input_tokens >= plain.input_tokens + 3
    bad = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "bm9wZQ=="},
    }
    with pytest.raises(anthropic.BadRequestError, match="could not be decoded"):
        c.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": [bad]}])
    tiff = {**image, "source": {**image["source"], "media_type": "image/tiff"}}
    with pytest.raises(anthropic.BadRequestError, match="unsupported image media type"):
        c.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": [tiff]}])


def test_cache_control_breakpoints_and_cache_usage(serve, engine):
    import httpx

    from engine import render_prompt

    srv = serve(engine)
    c = client(srv)
    mark = {"type": "ephemeral"}
    system = [{"type": "text", "text": "You are terse.", "cache_control": mark}]
    history = [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": [{"type": "text", "text": "Second?", "cache_control": mark}]},
        {"role": "assistant", "content": "Second answer."},
    ]
    ask = {"role": "user", "content": "Third?"}
    n = c.messages.count_tokens(model="m", system=system, messages=[*history, ask]).input_tokens
    one = c.messages.create(model="m", max_tokens=1, system=system, messages=[*history, ask])
    tok = engine.model.tokenizer
    upto = [
        {"role": "system", "content": "You are terse."},
        *history[:2],
        {"role": "user", "content": "Second?"},
    ]
    text = render_prompt(
        tok, upto, enable_thinking=False, preserve_thinking=True, add_generation_prompt=False
    )
    marked = len(tok.encode(text, add_special_tokens=False))
    # As Anthropic counts: written up to the last breakpoint; what follows it is input_tokens.
    u = one.usage
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == marked
    assert u.input_tokens == n - marked > 0
    # A fork after the marked message (another client, another question) reads up to its end.
    fork = [*history[:3], {"role": "assistant", "content": "Other."}, ask]
    two = c.messages.create(model="m", max_tokens=1, system=system, messages=fork)
    assert two.usage.cache_read_input_tokens == marked
    assert two.usage.cache_creation_input_tokens == 0 and two.usage.input_tokens > 0
    health = httpx.get(srv.url + "/health").json()["prompt_cache"]
    assert health["memory_bytes"] > 0 and 0 < health["memory_used_bytes"] <= health["memory_bytes"]
