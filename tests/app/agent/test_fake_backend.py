"""The agent loop over a fake engine.Backend (no model): EngineBackend's requests, the events it
relays, cancellation and the backend's own errors."""

from __future__ import annotations

import threading
from pathlib import Path

from app.agent import Agent, AgentConfig, AgentEvent, Approvals, EngineBackend
from engine import SamplingParams, Usage
from tests.fakebackend import FakeBackend, Reply

from .helpers import answer, call, make_project


def _agent(proj: Path, backend: EngineBackend, tmp_path: Path, events: list[AgentEvent], **cfg) -> Agent:
    config = AgentConfig(
        **{"max_steps": 4, "max_turn_tokens": 256, "context_tokens": 8192, "watch": False, **cfg}
    )
    return Agent(
        proj,
        backend,
        approvals=Approvals(),
        config=config,
        data_dir=tmp_path / "data",
        on_event=events.append,
    )


def test_tool_round_trip_over_the_fake(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    fake = FakeBackend([call("read_file", "The README first.", path="README.md"), answer("It is calc.")])
    backend = EngineBackend(fake, sampling=SamplingParams(temperature=0.0), thinking_budget=64)
    events: list[AgentEvent] = []
    with _agent(proj, backend, tmp_path, events) as agent:
        res = agent.run("what is this project?")
    assert res.status == "answered" and res.answer == "It is calc." and res.steps == 2
    results = [e.data for e in events if e.type == "tool_result"]
    assert results[0]["ok"] and "# calc" in results[0]["content"]
    turns = [e.data for e in events if e.type == "assistant"]
    assert turns[0]["reasoning"].strip() == "The README first."
    # Every turn is one engine request: the agent's tools, session and thinking budget.
    first, second = fake.requests
    assert {t["function"]["name"] for t in first.tools} >= {"read_file"}
    assert first.session == second.session == backend.session and first.preserve_thinking
    assert first.thinking_budget == 64 and first.tool_choice == "auto"
    # The second prompt holds the first reply and the tool's result.
    assert any(m.get("role") == "tool" for m in second.messages)


def test_forced_tool_choice_goes_to_every_turn(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    fake = FakeBackend(
        ["<parameter=path>\nREADME.md\n</parameter>\n</function>\n</tool_call>", answer("Done.")]
    )
    backend = EngineBackend(fake, tool_choice="read_file", enable_thinking=False)
    events: list[AgentEvent] = []
    with _agent(proj, backend, tmp_path, events, max_steps=1) as agent:
        agent.run("read the readme")
    # The engine's forced call opening is parsed together with what the model wrote.
    assert fake.requests[0].tool_choice == "read_file"
    results = [e.data for e in events if e.type == "tool_result"]
    assert results and results[0]["ok"] and "# calc" in results[0]["content"]


def test_backend_error_ends_the_run_with_its_message(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    fake = FakeBackend(
        [Reply(finish_reason="error", error="the remote model went away", error_kind="unavailable")]
    )
    events: list[AgentEvent] = []
    with _agent(proj, EngineBackend(fake), tmp_path, events) as agent:
        res = agent.run("anything")
    assert res.status == "error" and "the remote model went away" in (res.error or "")


def test_cancel_stops_the_backend_turn(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    slow = Reply(
        raw="thinking " * 400, chunk=4, delay=0.01, usage=Usage(prompt_tokens=10, completion_tokens=1)
    )
    fake = FakeBackend([slow])
    events: list[AgentEvent] = []
    agent = _agent(proj, EngineBackend(fake), tmp_path, events)
    with agent:
        threading.Timer(0.3, agent.stop).start()
        res = agent.run("think forever")
    assert res.status == "stopped"
    assert fake.handles[0].cancelled


def test_count_tokens_goes_through_the_backend(tmp_path: Path) -> None:
    fake = FakeBackend(["x"], count=lambda req: 1234)
    backend = EngineBackend(fake)
    msgs = [{"role": "user", "content": "hi"}]
    assert backend.count_tokens(msgs, []) == 1234
    (req, bound) = fake.counted[0]
    assert req.messages == msgs and bound is None
