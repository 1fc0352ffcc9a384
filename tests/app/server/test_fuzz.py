"""Malformed bodies of every kind: always the API's own error shape, never a 5xx or a traceback."""

from __future__ import annotations

import json
import os
import random
import tempfile

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches in ./.hypothesis; keep the working tree clean.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "locus-hypothesis"))

ANTHROPIC = {
    "model": "m",
    "max_tokens": 4,
    "system": "s",
    "stop_sequences": ["x"],
    "temperature": 0.5,
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}]},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 2},
    "metadata": {"user_id": "u"},
}
OPENAI = {
    "model": "m",
    "max_tokens": 4,
    "stop": "x",
    "temperature": 0.5,
    "seed": 1,
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "t",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "r"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "chat_template_kwargs": {"enable_thinking": True},
}
ENDPOINTS = [
    ("/v1/messages", ANTHROPIC),
    ("/v1/messages/count_tokens", ANTHROPIC),
    ("/v1/chat/completions", OPENAI),
]

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate(body, path, value, delete):
    body = json.loads(json.dumps(body))
    if not path:
        return value
    target = body
    for p in path[:-1]:
        target = target[p]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


def check(srv, path: str, payload: bytes) -> None:
    r = httpx.post(srv.url + path, content=payload, timeout=60, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        err = r.json()
        if path.startswith("/v1/chat"):
            assert set(err) == {"error"} and isinstance(err["error"]["message"], str)
        else:
            assert err["type"] == "error" and isinstance(err["error"]["message"], str)
            assert "Traceback" not in err["error"]["message"]


@pytest.fixture(scope="module")
def fuzz_server(tiny_model):
    from app.server import ServerConfig, ServerThread, create_app
    from tests.app.server.conftest import ReplyEngine

    eng = ReplyEngine(tiny_model, ["ok</think>\n\nfine"])
    config = ServerConfig(port=0, log_level="critical")
    with ServerThread(create_app(eng, config), config) as srv:
        yield srv


@pytest.mark.parametrize("path,base", ENDPOINTS)
def test_valid_bases_are_served(fuzz_server, path, base):
    r = httpx.post(fuzz_server.url + path, json=base, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"model": 1}', b"{}" * 3]
)
@pytest.mark.parametrize("path", [p for p, _ in ENDPOINTS])
def test_broken_json(fuzz_server, path, payload):
    check(fuzz_server, path, payload)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_bodies_never_crash(fuzz_server, data):
    path, base = data.draw(st.sampled_from(ENDPOINTS))
    where = data.draw(st.sampled_from(list(_paths(base))))
    delete = bool(where) and data.draw(st.booleans())
    value = data.draw(JUNK)
    body = _mutate(base, where, value, delete)
    check(fuzz_server, path, json.dumps(body, allow_nan=True).encode())


def test_random_bytes_never_crash(fuzz_server):
    rng = random.Random(4)
    raw = json.dumps(ANTHROPIC).encode()
    for _ in range(40):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        check(fuzz_server, "/v1/messages", bytes(b))


@pytest.mark.slow
def test_openapi_schema_fuzz_has_no_5xx(fuzz_server):
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/messages", "/v1/chat/completions", "/v1/models"}
    for op in ops:

        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.body, response.text)
            if response.status_code >= 400:
                err = response.json()
                assert isinstance((err.get("error") or {}).get("message"), str), err

        run()
