"""OpenAI's Responses API (what the Codex CLI speaks) through the official openai SDK."""

from __future__ import annotations

import base64
import io

import openai
import pytest

CALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def client(srv, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)


def test_plain_response_with_instructions_and_reasoning(serve, scripted):
    eng = scripted("Thinking it over.\n</think>\n\nHello from Locus!")
    srv = serve(eng)
    r = client(srv).responses.create(
        model="qwen3.6", instructions="Be brief.", input="Hi", reasoning={"effort": "medium"}
    )
    assert r.status == "completed" and r.output_text == "Hello from Locus!"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text.strip() == "Thinking it over."
    assert r.usage.input_tokens > 5 and r.usage.output_tokens > 0
    assert r.usage.input_tokens_details.cached_tokens >= 0
    req = eng.requests[-1]
    assert req.messages[0] == {"role": "system", "content": "Be brief."} and req.enable_thinking
    # effort "none" turns thinking off
    client(srv).responses.create(model="m", input="Hi", reasoning={"effort": "none"})
    assert eng.requests[-1].enable_thinking is False


def test_streamed_events_follow_the_documented_sequence(serve, scripted):
    srv = serve(scripted("Hm.\n</think>\n\nStreamed answer."))
    kinds = []
    with client(srv).responses.stream(model="m", input="Hi") as s:
        for ev in s:
            kinds.append(ev.type)
        final = s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed[2:] == [
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Streamed answer."
    assert final.usage.output_tokens > 0


def test_forced_function_call_then_its_output_chained(serve, scripted):
    eng = scripted(CALL[len("<tool_call>\n<function=get_weather>\n") :], "It is sunny in Paris.")
    srv = serve(eng)
    c = client(srv)
    r = c.responses.create(
        model="m",
        input="Weather in Paris?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
    )
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    r2 = c.responses.create(
        model="m",
        previous_response_id=r.id,
        tools=TOOLS,
        reasoning={"effort": "none"},
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert r2.output_text == "It is sunny in Paris." and r2.previous_response_id == r.id
    msgs = eng.requests[-1].messages
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert msgs[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert c.responses.retrieve(r2.id).output_text == "It is sunny in Paris."


def test_store_false_and_other_keys_cannot_chain(serve, scripted):
    srv = serve(scripted("ok"))
    r = client(srv).responses.create(model="m", input="Hi", store=False, reasoning={"effort": "none"})
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client(srv).responses.create(model="m", input="again", previous_response_id=r.id)
    kept = client(srv).responses.create(model="m", input="Hi", reasoning={"effort": "none"})
    with pytest.raises(openai.NotFoundError):
        client(srv, key="someone-else").responses.retrieve(kept.id)
    client(srv).responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client(srv).responses.retrieve(kept.id)


def test_image_input_and_unsupported_features(serve, engine):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    srv = serve(engine)
    c = client(srv)
    r = c.responses.create(
        model="m",
        max_output_tokens=2,
        reasoning={"effort": "none"},
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is it?"},
                    {"type": "input_image", "image_url": url},
                ],
            }
        ],
    )
    assert r.status in ("completed", "incomplete") and r.usage.input_tokens > 10
    # Hosted tools are left out (tests/app/server/test_codex_shapes.py); a tool without a type is refused.
    with pytest.raises(openai.BadRequestError, match="type") as e:
        c.responses.create(model="m", input="x", tools=[{"type": 5}])
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="nothing leaves this machine"):
        c.responses.create(
            model="m",
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}],
                }
            ],
        )


def test_streamed_function_call_is_accumulated_by_the_sdk(serve, scripted):
    srv = serve(scripted("I will check.\n\n" + CALL))
    with client(srv).responses.stream(
        model="m", input="Weather?", tools=TOOLS, reasoning={"effort": "none"}
    ) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output[1].name == "get_weather"
    assert final.output[1].arguments == '{"city": "Paris"}'


def test_the_store_is_bounded_per_key_and_survives_a_restart(tmp_path):
    from app.server.responses_api import ResponseStore

    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path, keep=3)
    for i in range(5):
        store.put(
            "a", {"id": f"resp_{i}"}, [{"role": "user", "content": [{"type": "image", "image": b"\x89PNG"}]}]
        )
    store.put("b", {"id": "resp_b"}, [])
    again = ResponseStore(path, keep=3)
    assert [again.get("a", f"resp_{i}") is not None for i in range(5)] == [False, False] + [True] * 3
    assert again.get("a", "resp_4")[1][0]["content"][0]["image"] == b"\x89PNG"
    assert again.get("b", "resp_b") is not None and again.get("a", "resp_b") is None
