"""What the Codex CLI sends on the Responses API, through the official openai SDK: namespace
tools, hosted tools, `store: false` with `include: ["reasoning.encrypted_content"]`,
`prompt_cache_key`, `parallel_tool_calls` and `client_metadata` (shapes taken from Codex 0.171's
own requests)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from engine import PromptCache
from tests.scripted import ReplyEngine

EXEC = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command in a PTY.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"cmd": {"type": "string"}, "yield_time_ms": {"type": "number"}},
        "required": ["cmd"],
        "additionalProperties": False,
    },
}
AGENTS = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "description": "Spawn a sub-agent.",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
            },
        },
        {"type": "function", "name": "exec_command", "description": "clashes", "parameters": {}},
    ],
}
HOSTED = {"type": "web_search", "external_web_access": False}
CODEX = dict(
    model="qwen3.6",
    tools=[EXEC, AGENTS, HOSTED],
    tool_choice="auto",
    parallel_tool_calls=True,
    reasoning={"summary": "auto"},
    store=False,
    include=["reasoning.encrypted_content"],
    prompt_cache_key="0199-session",
    extra_body={"client_metadata": {"turn_id": "t1", "x-codex-window-id": "w:0"}},
)
RUN = (
    "I should list the files.\n</think>\n\n<tool_call>\n<function=exec_command>\n<parameter=cmd>\nls\n"
    "</parameter>\n</function>\n</tool_call>"
)
SPAWN = (
    "Delegate.\n</think>\n\n<tool_call>\n<function=spawn_agent>\n<parameter=message>\nlook around\n"
    "</parameter>\n</function>\n</tool_call>"
)
FIRST = [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is here?"}]},
]


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)


def last_record(srv, n: int):
    """The request log's last record once it holds `n` (a job's record lands just after its answer)."""
    deadline = time.monotonic() + 10
    while len(records := srv.app.service.requests.records()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return records[-1]


def _echo(item) -> dict:
    """An output item as Codex sends it back: without ids, reasoning text or status."""
    d = item.model_dump(exclude_none=True)
    if d["type"] == "reasoning":
        return {"type": "reasoning", "summary": [], "encrypted_content": d["encrypted_content"]}
    d.pop("id", None)
    d.pop("status", None)
    return d


def test_namespace_functions_are_offered_and_calls_come_back_in_their_namespace(serve, scripted):
    eng = scripted(SPAWN, RUN)
    srv = serve(eng)
    r = client(srv).responses.create(input=FIRST, **CODEX)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")
    assert json.loads(call.arguments) == {"message": "look around"}
    names = [t["function"]["name"] for t in eng.requests[-1].tools]
    # Two functions named exec_command: the namespaced one is qualified for the model.
    assert names == ["exec_command", "spawn_agent", "multi_agent_v1.exec_command"]
    r2 = client(srv).responses.create(input=FIRST, **CODEX)
    (call2,) = [o for o in r2.output if o.type == "function_call"]
    assert (call2.name, call2.namespace) == ("exec_command", None)  # the top-level one
    # Sent back, the namespaced call is shown to the model by the name it was offered under.
    back = [*FIRST, *[_echo(o) for o in r.output]]
    back.append({"type": "function_call_output", "call_id": call.call_id, "output": "agent 7 started"})
    client(srv).responses.create(input=back, **CODEX)
    msgs = eng.requests[-1].messages
    assert msgs[-2]["tool_calls"][0]["function"]["name"] == "spawn_agent"
    assert msgs[-2]["reasoning_content"].strip() == "Delegate."


def test_hosted_tools_are_left_out_and_noted_in_the_request_log(serve, scripted):
    eng = scripted("ok")
    srv = serve(eng)
    r = client(srv).responses.create(input=FIRST, **CODEX)
    assert r.status == "completed"
    assert all(t["function"]["name"] != "web_search" for t in eng.requests[-1].tools)
    rec = last_record(srv, 1)
    assert rec.status == 200 and "web_search" in rec.note and "left out" in rec.line()
    assert eng.requests[-1].session == "openai:0199-session"  # prompt_cache_key keys the cache
    # Only hosted tools: no tools at all reach the model.
    client(srv).responses.create(model="m", input="hi", tools=[HOSTED, {"type": "file_search"}])
    assert eng.requests[-1].tools is None


def test_sealed_reasoning_round_trips_and_the_prompt_extends_the_last(serve, tiny_model):
    eng = ReplyEngine(tiny_model, [RUN, "Seen.\n</think>\n\nThere is one file."], prompt_cache=PromptCache())
    srv = serve(eng)
    try:
        c = client(srv)
        r1 = c.responses.create(input=FIRST, **CODEX)
        reasoning = next(o for o in r1.output if o.type == "reasoning")
        assert reasoning.encrypted_content and "list the files" not in reasoning.encrypted_content
        (call,) = [o for o in r1.output if o.type == "function_call"]
        back = [*FIRST, *[_echo(o) for o in r1.output]]
        back.append({"type": "function_call_output", "call_id": call.call_id, "output": "README.md"})
        r2 = c.responses.create(input=back, **CODEX)
        assert r2.output_text == "There is one file."
        assert eng.requests[-1].messages[2]["reasoning_content"].strip() == "I should list the files."
        # The second prompt extends the first prompt and its reply exactly: all of it is cached.
        seen = r1.usage.input_tokens + r1.usage.output_tokens
        assert r2.usage.input_tokens_details.cached_tokens >= seen - 1, (r1.usage, r2.usage)
        # A forged seal is left out (and noted): the reasoning is not the model's.
        forged = [dict(i) for i in back]
        at = next(i for i, x in enumerate(forged) if x["type"] == "reasoning")
        forged[at]["encrypted_content"] = forged[at]["encrypted_content"][:-4] + "AAA="
        c.responses.create(input=forged, **CODEX)
        assert "reasoning_content" not in eng.requests[-1].messages[2]
        assert "did not write" in last_record(srv, 3).note
        # Without the include, no encrypted_content (the reasoning text as OpenAI gives it).
        plain = c.responses.create(model="m", input="Hi")
        assert [o.encrypted_content for o in plain.output if o.type == "reasoning"] == [None]
    finally:
        eng.close()


@pytest.mark.parametrize(
    "sealed",
    ["", "locus1.", "locus1.abc", "locus1.aGk=.AAAA", "other", "locus1.!!!.???"],
)
def test_opening_a_seal_this_server_did_not_write_gives_none(sealed):
    from app.server.responses_api import open_reasoning, seal_reasoning

    assert open_reasoning(sealed) is None
    assert open_reasoning(seal_reasoning("thought ✓")) == "thought ✓"
