"""Request bodies are validated by each API's pydantic models: errors in the API's own shape that
name the field, unknown fields ignored, JSON's loose ends (null, 4.0) read as clients mean them."""

from __future__ import annotations

import httpx
import pytest

USER = [{"role": "user", "content": "hi"}]
ANTHROPIC = {"model": "m", "max_tokens": 4, "messages": USER}
OPENAI = {"model": "m", "max_tokens": 4, "messages": USER}
RESPONSES = {"model": "m", "input": "hi", "max_output_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_model):
    from app.server import ServerConfig, ServerThread, create_app
    from tests.scripted import ReplyEngine

    config = ServerConfig(port=0, log_level="critical")
    eng = ReplyEngine(tiny_model, ["ok</think>\n\nfine"])
    with ServerThread(create_app(eng, config), config) as srv:
        yield srv


def post(srv, path, body):
    return httpx.post(srv.url + path, json=body, timeout=60)


# (path, body changes, the field named, words of the message)
BAD = [
    ("/v1/messages", {"max_tokens": 0}, "max_tokens", "at least 1"),
    ("/v1/messages", {"messages": []}, "messages", "at least 1"),
    ("/v1/messages", {"temperature": 2.5}, "temperature", "at most 2"),
    ("/v1/messages", {"top_p": 0}, "top_p", "greater than 0"),
    ("/v1/messages", {"stop_sequences": ["a", ""]}, "stop_sequences[1]", "empty"),
    (
        "/v1/messages",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
        "expected a string, got an integer",
    ),
    (
        "/v1/messages",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                }
            ]
        },
        "messages[0].content[0].type",
        "belong in assistant messages",
    ),
    ("/v1/messages", {"tool_choice": {"type": "tool"}}, "tool_choice.name", "field required"),
    ("/v1/messages", {"thinking": {"type": "enabled"}}, "thinking.budget_tokens", "required"),
    ("/v1/messages/count_tokens", {"system": [{"type": "image"}]}, "system[0]", "text block"),
    ("/v1/chat/completions", {"temperature": "hot"}, "temperature", "expected a number"),
    ("/v1/chat/completions", {"stop": 5}, "stop", "non-empty string or an array"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
        "expected system, developer, user, assistant or tool",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                },
                *USER,
            ]
        },
        "messages[0].content[0]",
        "only text parts",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "JSON object",
    ),
    (
        "/v1/chat/completions",
        {"response_format": {"type": "yaml"}},
        "response_format.type",
        "text, json_schema or json_object",
    ),
    ("/v1/responses", {"input": []}, "input", "at least 1"),
    (
        "/v1/responses",
        {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
        "input[0].content[0].image_url",
        "file_id images are not supported",
    ),
    (
        "/v1/responses",
        {
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_image", "image_url": "data:,"}],
                }
            ]
        },
        "input[0].output[0]",
        "images in tool output are not supported",
    ),
]
BASES = {
    "/v1/messages": ANTHROPIC,
    "/v1/messages/count_tokens": ANTHROPIC,
    "/v1/chat/completions": OPENAI,
    "/v1/responses": RESPONSES,
}


@pytest.mark.parametrize("path,change,field,words", BAD)
def test_a_wrong_field_is_named_in_the_apis_error_shape(server, path, change, field, words):
    r = post(server, path, {**BASES[path], **change})
    assert r.status_code == 400, r.text
    err = r.json()
    if path.startswith("/v1/messages"):
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    else:
        assert set(err) == {"error"} and err["error"]["type"] == "invalid_request_error"
        assert err["error"]["param"] == field
    message = err["error"]["message"]
    assert message.startswith(f"{field}: ") and words in message, message


@pytest.mark.parametrize("path", list(BASES))
def test_unknown_fields_nulls_and_whole_floats_are_taken(server, path):
    body = {**BASES[path], "some_future_option": {"x": 1}, "temperature": None, "top_p": 1.0}
    if path == "/v1/responses":
        body["input"] = [{"role": "user", "content": "hi", "id": "msg_1", "status": "completed"}]
        body["max_output_tokens"] = 4.0
    else:
        body["messages"] = [{"role": "user", "content": "hi", "name": "someone"}]
        body["max_tokens"] = 4.0
    r = post(server, path, body)
    assert r.status_code == 200, r.text


def test_a_fraction_is_not_an_integer(server):
    r = post(server, "/v1/messages", {**ANTHROPIC, "max_tokens": 4.5})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "max_tokens: expected an integer, got a number"


@pytest.mark.parametrize("temperature", [5e-324, 1.0])
def test_values_too_small_for_float32_still_sample(server, temperature):
    # 5e-324 is 0 in the sampler's float32: it must mean greedy / the top token, not NaN logits
    # that pick token 0 until max_tokens (which the schema fuzzing found).
    body = {**ANTHROPIC, "max_tokens": 2**40, "temperature": temperature, "top_p": 5e-324}
    r = httpx.post(server.url + "/v1/messages", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["stop_reason"] == "end_turn", r.text
    assert r.json()["content"][-1]["text"].endswith("fine")
