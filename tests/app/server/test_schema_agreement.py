"""The schema /openapi.json serves is the schema of the models the handlers validate with, and
requests it calls valid are taken by the handlers (fuzzed from the served schema)."""

from __future__ import annotations

import base64
import io
import os
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from app.server import anthropic_api, openai_api, responses_api
from app.server.anthropic_models import MessagesRequest
from app.server.app import REQUEST_MODELS, build_fastapi
from app.server.config import ServerConfig
from app.server.errors import APIError
from app.server.service import Service

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "locus-hypothesis"))

# What a body's fields cannot say alone, checked by the handlers after validation: image data
# that does not decode, a forced tool that is not among the tools, a budget over max_tokens, ...
SEMANTIC = re.compile(
    "image|data: URL|nothing leaves this machine|budget_tokens|needs tools|no tool named|"
    "Thinking may not be enabled|at least one user message|final assistant|prefilled|"
    "trailing whitespace|logprobs are not supported|set by the server|enable_thinking|"
    "background responses"
)
# What the models check that generators from a JSON schema do not keep to: arguments as a
# JSON-encoded object (contentSchema), tool names unique (beyond uniqueItems).
NOT_IN_SCHEMA = re.compile(
    r"arguments: (not valid JSON|must encode a JSON object)|tools: tool names must be unique"
)


@pytest.fixture(scope="module")
def document():
    return build_fastapi(Service(None, ServerConfig())).openapi()


def _resolve(schema, defs, prefix):
    """`schema` with every $ref into `defs` replaced by what it names."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(prefix):
            return _resolve(defs[ref[len(prefix) :]], defs, prefix)
        return {k: _resolve(v, defs, prefix) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, defs, prefix) for v in schema]
    return schema


def served(document, path):
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    return _resolve(schema, document["components"]["schemas"], "#/components/schemas/")


def own(model):
    schema = model.model_json_schema()
    return _resolve(schema, schema.pop("$defs", {}), "#/$defs/")


@pytest.mark.parametrize("path", list(REQUEST_MODELS))
def test_the_served_schema_is_the_validating_models_schema(document, path):
    assert served(document, path) == own(REQUEST_MODELS[path])


def plan(**body):
    base = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    req = MessagesRequest.parse({**base, **body})
    return anthropic_api.to_plan(req, vocab_size=1000, preset=None)


def test_temperature_bounds_agree(document):
    schema = served(document, "/v1/messages")["properties"]["temperature"]
    top = next(s["maximum"] for s in schema["anyOf"] if "maximum" in s)
    assert top == 2
    assert plan(temperature=top).request.sampling.temperature == top
    with pytest.raises(APIError, match="temperature"):
        plan(temperature=top + 0.01)


def test_every_role_the_schema_names_is_taken(document):
    items = served(document, "/v1/messages")["properties"]["messages"]["items"]["oneOf"]
    roles = [m["properties"]["role"]["const"] for m in items]
    assert sorted(roles) == ["assistant", "system", "user"]
    for role in roles:
        msgs = [
            {"role": "user", "content": "a"},
            {"role": role, "content": "b"},
            {"role": "user", "content": "c"},
        ]
        plan(messages=msgs)


def test_tool_result_images_are_in_both(document):
    msgs = served(document, "/v1/messages")["properties"]["messages"]["items"]["oneOf"]
    user = next(m for m in msgs if m["properties"]["role"]["const"] == "user")
    blocks = user["properties"]["content"]["oneOf"][1]["items"]["oneOf"]
    tool_result = next(b for b in blocks if b["properties"]["type"].get("const") == "tool_result")
    items = tool_result["properties"]["content"]["oneOf"][1]["items"]["oneOf"]
    assert {i["properties"]["type"]["const"] for i in items} == {"text", "image"}
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    img = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(buf.getvalue()).decode(),
        },
    }
    msgs = [
        {"role": "user", "content": "look"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "here"}, img],
                }
            ],
        },
    ]
    assert plan(messages=msgs).has_images


def _to_plan(path, req):
    kw = {"vocab_size": 1000, "preset": None}
    if path.startswith("/v1/messages"):
        return anthropic_api.to_plan(req, **kw)
    if path == "/v1/chat/completions":
        return openai_api.to_plan(req, default_max=8, **kw)
    return responses_api.to_plan(req, default_max=8, **kw)


@pytest.fixture(scope="module")
def operations(document):
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document)
    ops = {op.path: op for op in (r.ok() for r in schema.get_all_operations())}
    return {path: ops[path] for path in REQUEST_MODELS}


@pytest.mark.parametrize("path", list(REQUEST_MODELS))
def test_bodies_valid_by_the_served_schema_are_taken(operations, path):
    model = REQUEST_MODELS[path]
    op = operations[path]

    @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        body = data.draw(op.as_strategy()).body
        try:
            req = model.parse(body)
        except APIError as e:  # anything else: the schema and the models disagree
            assert NOT_IN_SCHEMA.search(e.message), (body, e)
            return
        try:
            _to_plan(path, req)
        except APIError as e:
            assert e.status_for("anthropic") == 400 and SEMANTIC.search(e.message), (body, e)

    check()
