"""The server's Plan carries the engine's own GenerationRequest, whichever API it came from."""

from __future__ import annotations

import dataclasses

from app.server import anthropic_api, openai_api, responses_api
from app.server.anthropic_models import MessagesRequest
from app.server.jobs import Plan, build_request, count_tokens
from app.server.openai_models import ChatRequest
from app.server.responses_models import ResponsesRequest
from engine import GenerationRequest
from tests.fakebackend import FakeBackend

TOOL = {"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}
FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "hi"}]


def plans() -> list[Plan]:
    kw = dict(vocab_size=1000, preset=None)
    anthropic = MessagesRequest.parse(
        {
            "model": "a",
            "max_tokens": 50,
            "messages": [*USER, {"role": "assistant", "content": "Sure"}],
            "tools": [TOOL],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u"},
        }
    )
    chat = ChatRequest.parse({"model": "o", "messages": USER, "tools": [FN], "tool_choice": "required"})
    resp = ResponsesRequest.parse({"model": "r", "input": "hi", "max_output_tokens": 30})
    return [
        anthropic_api.to_plan(anthropic, **kw),
        openai_api.to_plan(chat, default_max=8, **kw),
        responses_api.to_plan(resp, default_max=8, **kw)[0],
    ]


def test_every_api_plans_a_generation_request_and_the_job_runs_a_copy_of_it():
    for plan in plans():
        assert isinstance(plan.request, GenerationRequest) and plan.model
        plan.request.validate()
        sent = build_request(plan, 9)
        assert sent == dataclasses.replace(plan.request, max_tokens=9) and sent is not plan.request
        assert sent.preserve_thinking is True
    anthropic, chat, resp = plans()
    assert anthropic.request.prefix == "Sure" and anthropic.request.stop == ["END"]
    assert anthropic.request.session == "anthropic:u" and anthropic.max_tokens == 50
    assert chat.request.tool_choice == "required" and chat.request.enable_thinking is False
    assert resp.max_tokens == 30 and resp.request.tools is None


def test_counting_leaves_the_plan_as_it_was():
    anthropic, chat, _ = plans()
    fake = FakeBackend()
    for plan in (anthropic, chat):
        before = dataclasses.replace(plan.request)
        count_tokens(fake, plan)
        assert plan.request == before
        counted = fake.counted[-1][0]
        assert counted.prefix == "" and not counted.forces_call  # the client's own prompt


def test_the_servers_rules_apply_to_every_plan():
    plan = Plan.of(messages=USER, enable_thinking=False, thinking_budget=5, tools=[])
    assert plan.request.thinking_budget is None and plan.request.tools is None
    assert plan.request.preserve_thinking is True and not plan.has_images
    image = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert Plan.of(messages=image).has_images
