"""The served OpenAPI schema and the handlers accept the same requests at the edges that disagreed."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from app.server import anthropic_api
from app.server.errors import APIError
from app.server.schemas import ANTHROPIC_MESSAGES


def plan(**body):
    base = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    return anthropic_api.to_plan({**base, **body}, vocab_size=1000, preset=None)


def test_temperature_bounds_agree():
    top = ANTHROPIC_MESSAGES["properties"]["temperature"]["maximum"]
    assert plan(temperature=top).sampling.temperature == top
    with pytest.raises(APIError, match="temperature"):
        plan(temperature=top + 0.01)


def test_every_role_the_schema_names_is_taken():
    roles = ANTHROPIC_MESSAGES["properties"]["messages"]["items"]["properties"]["role"]["enum"]
    for role in roles:
        msgs = [{"role": "user", "content": "a"}, {"role": role, "content": "b"},
                {"role": "user", "content": "c"}]  # fmt: skip
        plan(messages=msgs)


def test_tool_result_images_are_in_both():
    msg_schema = ANTHROPIC_MESSAGES["properties"]["messages"]["items"]
    blocks = msg_schema["properties"]["content"]["anyOf"][1]["items"]["anyOf"]
    tool_result = next(b for b in blocks if b["properties"]["type"].get("const") == "tool_result")
    items = tool_result["properties"]["content"]["anyOf"][1]["items"]["anyOf"]
    assert {i["properties"]["type"]["const"] for i in items} == {"text", "image"}
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": base64.b64encode(buf.getvalue()).decode()}}  # fmt: skip
    msgs = [{"role": "user", "content": "look"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "here"}, img]}]}]  # fmt: skip
    assert plan(messages=msgs).has_images
