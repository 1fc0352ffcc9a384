"""The server over a fake engine.Backend (no model): what the backend reports reaches each API's
client through the official SDKs, and each API's features reach the backend as request fields.

The fake has no `model`, tokenizer or config: a server that reached past engine.Backend fails here.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from engine import BackendInfo, Usage
from tests.fakebackend import FakeBackend, Reply

TOOLS = [
    {
        "name": "lookup",
        "description": "Look up",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
]
OA_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
USER = [{"role": "user", "content": "hi"}]
INFO = BackendInfo(
    name="org/fake-model", context_tokens=4096, vocab_size=500, model_id="f1", created=1700000000
)


def ac(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


def oc(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def test_models_come_from_backend_info(serve):
    srv = serve(FakeBackend(info=INFO))
    (m,) = oc(srv).models.list().data
    assert m.id == "org/fake-model" and m.created == 1700000000
    raw = httpx.get(f"{srv.url}/v1/models/x").json()
    assert raw["context_length"] == 4096
    # A configured context below the model's is what is served.
    srv = serve(FakeBackend(info=INFO), context_tokens=1000)
    assert httpx.get(f"{srv.url}/v1/models").json()["data"][0]["context_length"] == 1000


def test_reply_events_reach_both_sdks(serve):
    reply = Reply(
        reasoning="Let me see.", text="The answer.", usage=Usage(prompt_tokens=0, completion_tokens=7)
    )
    fake = FakeBackend([reply])
    srv = serve(fake)
    msg = ac(srv).messages.create(
        model="m", max_tokens=50, messages=USER, thinking={"type": "enabled", "budget_tokens": 20}
    )
    thinking, text = msg.content
    assert (thinking.thinking, text.text, msg.stop_reason) == ("Let me see.", "The answer.", "end_turn")
    assert msg.usage.output_tokens == 7
    r = oc(srv).chat.completions.create(model="m", messages=USER, max_tokens=50)
    assert r.choices[0].message.content == "The answer." and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 7
    # The API's fields became the engine request's.
    first = fake.requests[0]
    assert first.thinking_budget == 20 and first.enable_thinking and first.max_tokens == 50


def test_raw_tool_call_is_parsed_and_streamed(serve):
    raw = (
        "ok</think>\n\n<tool_call>\n<function=lookup>\n<parameter=q>\ncats\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    srv = serve(FakeBackend([raw]))
    with ac(srv).messages.stream(model="m", max_tokens=50, messages=USER, tools=TOOLS) as s:
        final = s.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "lookup" and use.input == {"q": "cats"} and final.stop_reason == "tool_use"


def test_stop_sequence_comes_from_done(serve):
    fake = FakeBackend([Reply(text="one two ", stop_sequence="STOP")])
    srv = serve(fake)
    msg = ac(srv).messages.create(model="m", max_tokens=50, messages=USER, stop_sequences=["never", "STOP"])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"
    assert fake.requests[0].stop == ["never", "STOP"]
    r = oc(srv).chat.completions.create(model="m", messages=USER, stop=["STOP"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "one two "


@pytest.mark.parametrize(
    ("kind", "anthropic_error", "openai_error"),
    [
        ("invalid_request", anthropic.BadRequestError, openai.BadRequestError),
        ("context_length", anthropic.BadRequestError, openai.BadRequestError),
        ("internal", anthropic.InternalServerError, openai.InternalServerError),
        ("unavailable", anthropic.APIStatusError, openai.APIStatusError),
    ],
)
def test_error_kind_becomes_the_api_error(serve, kind, anthropic_error, openai_error):
    fake = FakeBackend([Reply(finish_reason="error", error=f"it failed ({kind})", error_kind=kind)])
    srv = serve(fake)
    with pytest.raises(anthropic_error) as e:
        ac(srv).messages.create(model="m", max_tokens=5, messages=USER)
    assert f"it failed ({kind})" in str(e.value)
    with pytest.raises(openai_error) as e2:
        oc(srv).chat.completions.create(model="m", messages=USER)
    if kind == "unavailable":  # retryable: overloaded (529 / 503), not a fault of the request
        assert (e.value.status_code, e2.value.status_code) == (529, 503)


def test_tool_choice_and_prefill_reach_the_request(serve):
    fake = FakeBackend(["<parameter=q>\ndogs\n</parameter>\n</function>\n</tool_call>"])
    srv = serve(fake)
    c = ac(srv)
    one = c.messages.create(
        model="m", max_tokens=50, messages=USER, tools=TOOLS, tool_choice={"type": "tool", "name": "lookup"}
    )
    assert one.content[0].name == "lookup" and one.content[0].input == {"q": "dogs"}
    assert fake.requests[-1].tool_choice == "lookup" and fake.requests[-1].prefix == ""
    fake.replies = ["lookup>\n<parameter=q>\nx\n</parameter>\n</function>\n</tool_call>"]
    c.messages.create(model="m", max_tokens=50, messages=USER, tools=TOOLS, tool_choice={"type": "any"})
    assert fake.requests[-1].tool_choice == "required"
    r = oc(srv).chat.completions.create(model="m", messages=USER, tools=OA_TOOLS, tool_choice="required")
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"q": "x"}
    assert fake.requests[-1].tool_choice == "required"
    fake.replies = ['"blue"}']
    msg = c.messages.create(
        model="m", max_tokens=50, messages=[*USER, {"role": "assistant", "content": '{"color":'}]
    )
    assert msg.content[0].text == '"blue"}' and fake.requests[-1].prefix == '{"color":'


def test_prefix_tokens_are_not_the_clients_prompt(serve):
    fake = FakeBackend(["fine"])
    srv = serve(fake)
    plain = ac(srv).messages.create(model="m", max_tokens=50, messages=USER)
    prefilled = ac(srv).messages.create(
        model="m", max_tokens=50, messages=[*USER, {"role": "assistant", "content": "Well, " * 8 + "it"}]
    )
    assert prefilled.usage.input_tokens == plain.usage.input_tokens
    counted = ac(srv).messages.count_tokens(
        model="m", messages=[*USER, {"role": "assistant", "content": "Well, " * 8 + "it"}]
    )
    assert counted.input_tokens == plain.usage.input_tokens
    req, bound = fake.counted[-1]
    assert req.prefix == "" and bound is None


def test_context_limit_from_info_refuses_long_prompts(serve):
    fake = FakeBackend(["never"], info=INFO)
    srv = serve(fake)
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        ac(srv).messages.create(model="m", max_tokens=5, messages=long)
    assert fake.requests == []  # refused before generating
    # max_tokens is settled from the room left in the context.
    oc(srv).chat.completions.create(model="m", messages=USER)
    n = fake.count(fake.requests[-1])
    assert fake.requests[-1].max_tokens <= 4096 - n


def test_no_model_is_a_503(serve):
    fake = FakeBackend()
    fake.close()
    srv = serve(fake)
    with pytest.raises(anthropic.APIStatusError) as e:
        ac(srv).messages.create(model="m", max_tokens=5, messages=USER)
    assert e.value.status_code == 503 and "no model is loaded" in str(e.value)


def test_cancel_reaches_the_backend_when_the_client_leaves(serve):
    fake = FakeBackend([Reply(text="x" * 400, chunk=1, delay=0.01)])
    srv = serve(fake)
    with ac(srv).messages.stream(model="m", max_tokens=500, messages=USER) as s:
        for _ in s.text_stream:
            break
    for _ in range(200):
        if fake.handles and fake.handles[0].done is not None:
            break
        time.sleep(0.02)
    assert fake.handles[0].cancelled and fake.handles[0].done.finish_reason == "cancelled"


class _Unreachable(FakeBackend):
    """A backend whose model cannot be reached (a remote server down, a pipeline rank lost)."""

    def prepare(self, request):  # type: ignore[no-untyped-def]
        from engine import BackendUnavailableError

        raise BackendUnavailableError("the model server at http://10.0.0.9:8000/v1 refused the connection")


def test_an_unreachable_model_is_overloaded_not_a_bad_request(serve):
    srv = serve(_Unreachable(info=INFO))
    with pytest.raises(openai.APIStatusError) as e:
        oc(srv).chat.completions.create(model="m", messages=USER, max_tokens=5)
    assert e.value.status_code == 503 and "refused the connection" in str(e.value)
    with pytest.raises(anthropic.APIStatusError) as a:
        ac(srv).messages.create(model="m", max_tokens=5, messages=USER)
    assert a.value.status_code == 529 and a.value.body["error"]["type"] == "overloaded_error"


def _words(req):  # type: ignore[no-untyped-def]
    """Counts a raw prompt by words (the reasoning the server counts), others as the fake does."""
    from tests.fakebackend import estimate_tokens

    return len(req.prompt.split()) if req.prompt is not None else estimate_tokens(req)


def test_responses_reasoning_tokens_are_tokens_not_deltas(serve):
    thought = " ".join(f"word{i}" for i in range(40))  # 40 "tokens", in about 90 deltas
    usage = Usage(prompt_tokens=3, completion_tokens=60)
    fake = FakeBackend([Reply(reasoning=thought, text="Done.", usage=usage, chunk=3)], count=_words)
    srv = serve(fake)
    r = oc(srv).responses.create(model="m", input="hi")
    assert r.usage.output_tokens_details.reasoning_tokens == 40
    with oc(srv).responses.stream(model="m", input="hi") as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.usage.output_tokens_details.reasoning_tokens == 40
    # A backend that counted them itself is believed (and capped at the completion tokens).
    reported = Usage(prompt_tokens=3, completion_tokens=60, reasoning_tokens=17)
    srv = serve(FakeBackend([Reply(reasoning=thought, text="Done.", usage=reported)], count=_words))
    assert oc(srv).responses.create(model="m", input="hi").usage.output_tokens_details.reasoning_tokens == 17


def test_scripted_call_ids_are_unique_across_requests(serve):
    # Claude Code drops a tool call whose id it has seen before and loops: ids never repeat.
    fake = FakeBackend([Reply(tool_calls=[{"name": "lookup", "arguments": {"q": "a"}}] * 2)], info=INFO)
    c = anthropic.Anthropic(base_url=serve(fake).url, api_key="x", max_retries=0)
    ids = []
    for _ in range(2):
        msg = c.messages.create(model="m", max_tokens=50, messages=USER, tools=TOOLS)
        ids += [b.id for b in msg.content if b.type == "tool_use"]
    assert len(ids) == 4 and len(set(ids)) == 4, ids
