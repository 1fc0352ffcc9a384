"""The agent on the real engine: the tiny random model through the real chat template, tool
parser and prompt cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.agent import Agent, AgentConfig, AgentEvent, Approvals, EngineBackend
from engine import PromptCache, SamplingParams
from tests.scripted import forced_engine

from .helpers import answer, call, make_project


def test_random_tiny_model_garbage_ends_cleanly(engine: Any, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    before = {p: p.read_bytes() for p in proj.rglob("*") if p.is_file() and ".git" not in p.parts}
    events: list[AgentEvent] = []
    backend = EngineBackend(engine, sampling=SamplingParams(temperature=1.0, seed=7))
    cfg = AgentConfig(max_steps=3, max_turn_tokens=12, context_tokens=4096, watch=False)
    with Agent(
        proj, backend, approvals=Approvals(), config=cfg, data_dir=tmp_path / "data", on_event=events.append
    ) as agent:
        res = agent.run("fix the failing test")
    assert res.status in ("answered", "step_limit"), res
    assert res.error is None and not [e for e in events if e.type == "error"]
    turns = [e.data for e in events if e.type == "assistant"]
    assert turns and all(t["usage"]["prompt_tokens"] > 100 for t in turns)
    assert res.completion_tokens > 0 and events[-1].type == "done"
    # Headless without --yes: whatever garbage it produced changed nothing.
    assert {p: p.read_bytes() for p in before} == before


def test_tool_round_trip_through_template_parser_and_prompt_cache(tiny_model: Any, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    eng, script = forced_engine(tiny_model, prompt_cache=PromptCache())
    outputs = [call("read_file", "The README first.", path="README.md"), answer("It is calc.")]
    prompt_lens: list[int] = []

    class Forced(EngineBackend):
        """The real model with its choices forced to the scripted outputs, turn by turn."""

        def turn(self, messages, tools, *, max_tokens, cancel):  # type: ignore[no-untyped-def]
            req = self._request(messages, tools, max_tokens)
            script(outputs[len(prompt_lens)], req)
            prompt_lens.append(len(eng.encode(req)[0]))
            yield from super().turn(messages, tools, max_tokens=max_tokens, cancel=cancel)

    events: list[AgentEvent] = []
    backend = Forced(eng, sampling=SamplingParams(temperature=0.0))
    try:
        cfg = AgentConfig(max_steps=4, max_turn_tokens=256, context_tokens=8192, watch=False)
        with Agent(proj, backend, config=cfg, data_dir=tmp_path / "data", on_event=events.append) as agent:
            res = agent.run("what is this project?")
    finally:
        eng.close()
    assert res.status == "answered" and res.answer == "It is calc." and res.steps == 2
    results = [e.data for e in events if e.type == "tool_result"]
    assert results[0]["ok"] and "# calc" in results[0]["content"]
    turns = [e.data for e in events if e.type == "assistant"]
    assert turns[0]["reasoning"].strip() == "The README first."
    assert turns[0]["tool_calls"][0]["arguments"] == {"path": "README.md"}
    # preserve_thinking + one session: the second turn reuses the first prompt and the reply.
    assert turns[1]["usage"]["cached_tokens"] > prompt_lens[0]
    assert backend.session.startswith("agent-")
