"""What Claude Code 2.x sends and expects: mid-conversation system messages, message_start usage on
cache hits, and one request-log record per request."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest

from app.server.anthropic_api import to_plan
from app.server.anthropic_models import MessagesRequest


def _plan(messages, **kw):
    body = {"model": "m", "max_tokens": 10, "messages": messages, **kw}
    return to_plan(MessagesRequest.parse(body), vocab_size=1000, preset=None)


def test_mid_conversation_system_messages_fold_into_the_next_user_turn():
    plan = _plan(
        [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
                ],
            },
            {"role": "system", "content": "The date changed."},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"},
                    {"type": "text", "text": "go on"},
                ],
            },
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        ],
        system="You are Claude Code.",
    )
    roles = [m["role"] for m in plan.request.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    # After the tool result (which must follow the call), before the user's own text; one right
    # after the user's text joins that turn, as Claude Code merges it when it resends the turn.
    assert plan.request.messages[4]["content"] == (
        "<system-reminder>\nThe date changed.\n</system-reminder>\n\ngo on\n\n\n"
        "<system-reminder>\nBe brief.\n</system-reminder>"
    )
    # The same history renders the same way every time, so the next turn's prompt extends it.
    again = _plan(
        [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "x"},
            {"role": "user", "content": "y"},
        ]
    )
    assert (
        again.request.messages
        == _plan(
            [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "x"},
                {"role": "user", "content": "y"},
            ]
        ).request.messages
    )
    with pytest.raises(Exception, match="expected 'user', 'assistant' or 'system'"):
        _plan([{"role": "tool", "content": "x"}])


def test_the_recovery_after_max_tokens_extends_the_turn_it_resends():
    # Claude Code 2.1.197's shapes: a first request, then (its reply cut by max_tokens) the same
    # turn resent as one user message, its system message merged in and the recovery appended.
    env = "<system-reminder>\nAs you answer, use this context.\n</system-reminder>"
    agents = "Available agent types for the Agent tool: claude."
    first = _plan(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": env}, {"type": "text", "text": "Say hello."}],
            },
            {"role": "system", "content": agents},
        ]
    ).request.messages
    recovery = [
        {"type": "text", "text": env},
        {"type": "text", "text": "Say hello.\n"},
        {"type": "text", "text": f"<system-reminder>\n{agents}\n</system-reminder>\n"},
        {"type": "text", "text": "Output token limit hit. Resume directly."},
    ]
    again = _plan([{"role": "user", "content": recovery}]).request.messages
    assert len(first) == len(again) == 1
    assert again[0]["content"].startswith(first[0]["content"])
    # A normal next turn keeps the system message where it was: the first turn renders the same.
    turn = _plan(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": env}, {"type": "text", "text": "Say hello."}],
            },
            {"role": "system", "content": agents},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Again."},
        ]
    ).request.messages
    assert turn[0] == first[0]


def test_claude_codes_first_request_shape_is_answered(serve, engine):
    # The real template refuses a system turn after the first; Claude Code sends one anyway
    # (anthropic-beta: mid-conversation-system-2026-04-07).
    srv = serve(engine)
    body = {
        "model": "qwen3.6",
        "max_tokens": 4,
        "system": [{"type": "text", "text": "Be Claude."}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "<env>cwd: /tmp</env>"},
        ],
    }
    r = httpx.post(
        srv.url + "/v1/messages",
        json=body,
        timeout=60,
        headers={"anthropic-beta": "mid-conversation-system-2026-04-07"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"


def test_message_start_reports_the_cache_split_like_message_delta(serve, engine):
    srv = serve(engine)
    c = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "A long enough question about the cat on the mat " * 4}]
    c.messages.create(model="m", max_tokens=2, messages=msgs)  # fills the cache
    starts, deltas = [], []
    with c.messages.stream(model="m", max_tokens=2, messages=msgs) as s:
        for ev in s:
            if ev.type == "message_start":
                starts.append(ev.message.usage)
            elif ev.type == "message_delta":
                deltas.append(ev.usage)
    (start,), (delta,) = starts, deltas
    assert start.cache_read_input_tokens > 0
    split = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    assert [getattr(start, k) for k in split] == [getattr(delta, k) for k in split]


def test_each_request_leaves_one_record(serve, scripted, caplog):
    srv = serve(scripted("Hello!"))
    service = srv.app.service
    c = anthropic.Anthropic(
        base_url=srv.url,
        api_key="x",
        max_retries=0,
        default_headers={"user-agent": "claude-cli/2.1.197 (external, cli)"},
    )
    with caplog.at_level("DEBUG", logger="locus.server.requests"):
        c.messages.create(model="qwen3.6", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.BadRequestError):
            c.messages.create(model="qwen3.6", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    ok, bad = service.requests.records()
    assert (ok.endpoint, ok.model, ok.status, ok.finish_reason) == (
        "/v1/messages",
        "qwen3.6",
        200,
        "stop",
    )
    assert ok.client.startswith("claude-cli/2.1") and ok.prompt_tokens > 0
    assert ok.output_tokens > 0 and ok.ttft_s is not None and ok.ttft_s >= 0
    assert ok.new_tokens + ok.cached_tokens == ok.prompt_tokens
    assert bad.status == 400 and "max_tokens" in bad.error and bad.model == "qwen3.6"
    lines = [r.getMessage() for r in caplog.records if r.name == "locus.server.requests"]
    assert len(lines) == 2 and "prompt=" in lines[0] and "reason=" in lines[1]
    assert json.dumps(lines)  # plain strings


def test_models_created_is_stable_and_context_is_the_served_one(serve, engine):
    a = httpx.get(serve(engine, context_tokens=65536).url + "/v1/models").json()["data"][0]
    time.sleep(1.1)  # a later start must not change it
    b = httpx.get(serve(engine).url + "/v1/models").json()["data"][0]
    assert a["created"] == b["created"]  # not the server's start time
    assert (a["context_length"], b["context_length"]) == (65536, 262144)
