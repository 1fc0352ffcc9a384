"""Real MCP servers through the agent, with a scripted model: the SDK server in py_server.py and
npm's server-everything. Each run is shared by the tests that read it (servers take seconds to start)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.agent import Agent, AgentConfig, Approvals, Decision, ReplayBackend
from app.mcp import parse_config

from ..agent.helpers import answer, call
from .helpers import everything_entry, needs_everything, py_entry

pytestmark = pytest.mark.slow


class Recorder(ReplayBackend):
    """A scripted model that keeps every prompt (messages and tool names) it was given."""

    def __init__(self, outputs: list[str]) -> None:
        super().__init__(outputs)
        self.prompts: list[tuple[list[dict[str, Any]], list[str]]] = []

    def turn(self, messages, tools, **kw):
        self.prompts.append((json.loads(json.dumps(messages)), [t["function"]["name"] for t in tools]))
        return super().turn(messages, tools, **kw)


def run_agent(tmp: Path, servers: dict[str, Any], script: list[str], **kw: Any) -> dict[str, Any]:
    """Run a scripted agent with `servers`; its result, events and the prompts the model saw."""
    project = tmp / "project"
    project.mkdir(exist_ok=True)
    backend = Recorder(script)
    events: list[Any] = []
    config = AgentConfig(checkpoints=False, watch=False, **kw.pop("config", {}))
    agent = Agent(
        project,
        backend,
        approvals=kw.pop("approvals", Approvals(yes=True)),
        config=config,
        data_dir=tmp / "data",
        on_event=events.append,
        mcp_servers=parse_config({"mcpServers": servers}),
    )
    with agent:
        result = agent.run("use the tools")
    results = {e.data["call_id"]: e.data for e in events if e.type == "tool_result"}
    return {
        "result": result,
        "events": events,
        "results": list(results.values()),
        "prompts": backend.prompts,
        "project": project,
    }


def tool_message(prompt: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in reversed(prompt) if m["role"] == "tool")


def image_in(message: dict[str, Any]) -> Image.Image:
    """The image a tool message gives the model (a data: URL part after the text)."""
    assert isinstance(message["content"], list), message
    [part] = [p for p in message["content"] if p["type"] == "image"]
    head, data = part["image"].split(",", 1)
    assert head.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture(scope="module")
def py_run(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("LOCUS_TEST_SECRET", "s3cret")
    monkeypatch_module.setenv("LOCUS_TEST_PASSED", "passed-on")
    script = [
        call("mcp__py__add", a=2, b=40),
        call("mcp__py__red_square", size=8),
        call("mcp__py__env"),
        call("mcp__py__touch", path="sub/.git"),
        call("mcp__py__touch", path="made.txt"),
        call("mcp__py__touch", path="../outside.txt"),
        call("mcp__py__crash"),
        call("mcp__py__add", a=1, b=1),
        answer("finished without the py server"),
    ]
    servers = {"py": py_entry(env={"DECLARED": "yes"})}
    return run_agent(
        tmp_path_factory.mktemp("py"), servers, script, config={"env_allow": ("LOCUS_TEST_PASSED",)}
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_sdk_server_tool_returns_its_result(py_run):
    first = py_run["results"][0]
    assert first["name"] == "mcp__py__add" and first["ok"] and first["content"] == "42"
    assert "mcp__py__add" in py_run["prompts"][0][1]  # offered to the model with the built-in tools
    [servers] = [e.data["servers"] for e in py_run["events"] if e.type == "mcp_servers"]
    [add] = [t for t in servers[0]["tools"] if t["name"] == "mcp__py__add"]
    assert add["input_schema"]["properties"]["a"]["type"] == "integer"


def test_sdk_server_image_reaches_the_prompt(py_run):
    msg = tool_message(py_run["prompts"][2][0])  # the turn after red_square
    img = image_in(msg)
    assert img.size == (8, 8) and img.convert("RGB").getpixel((3, 3)) == (255, 0, 0)
    assert "[image 1: PNG 8x8" in msg["content"][0]["text"]


def test_stdio_server_sees_only_the_allowlisted_environment(py_run):
    env = dict(line.split("=", 1) for line in py_run["results"][2]["content"].splitlines() if "=" in line)
    assert "LOCUS_TEST_SECRET" not in env
    assert env["LOCUS_TEST_PASSED"] == "passed-on" and env["DECLARED"] == "yes"
    assert env["LOCUS_AGENT"] == "1" and "PATH" in env


def test_git_folders_a_tool_makes_are_undone(py_run):
    touched = py_run["results"][3]
    assert "Locus undid changes this tool made to git folders" in touched["content"]
    assert (py_run["project"] / "sub").is_dir() and not (py_run["project"] / "sub" / ".git").exists()
    assert any(
        "an MCP tool changed a git folder" in e.data["message"]
        for e in py_run["events"]
        if e.type == "warning"
    )


def test_stdio_server_writes_only_in_the_project(py_run):
    made, outside = py_run["results"][4:6]
    assert made["content"] == str((py_run["project"] / "made.txt").resolve())
    assert (py_run["project"] / "made.txt").exists()
    # Outside the project the server writes, at most, into its own private /tmp: never the real one.
    assert outside["ok"] and not (py_run["project"].parent / "outside.txt").exists()


def test_crashing_server_is_reported_and_the_run_goes_on(py_run):
    crashed = py_run["results"][6]
    assert not crashed["ok"] and "MCP server 'py' stopped" in crashed["content"]
    warnings = [e.data["message"] for e in py_run["events"] if e.type == "warning"]
    assert sum("MCP server 'py' stopped" in w for w in warnings) == 1  # one clear line
    assert not any(n.startswith("mcp__py__") for n in py_run["prompts"][7][1])  # withdrawn
    retry = py_run["results"][7]
    assert not retry["ok"] and "MCP server 'py' stopped" in retry["content"]
    assert py_run["result"].status == "answered"


@needs_everything
def test_everything_server_get_sum_image_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_TEST_SECRET", "s3cret")
    script = [
        call("mcp__everything__get-sum", a=2, b=3),
        call("mcp__everything__get-tiny-image"),
        call("mcp__everything__get-env"),
        answer("done"),
    ]
    run = run_agent(tmp_path, {"everything": everything_entry()}, script)
    total, image, env = run["results"]
    assert total["ok"] and total["content"] == "The sum of 2 and 3 is 5."
    assert image["ok"] and image_in(tool_message(run["prompts"][2][0])).size == (20, 20)
    assert "LOCUS_TEST_SECRET" not in env["content"] and '"PATH"' in env["content"]
    assert run["result"].status == "answered"


def test_servers_that_fail_or_hang_are_reported_and_the_run_goes_on(tmp_path):
    servers = {
        "missing": {"command": "no-such-mcp-server-here"},
        "refuses": py_entry("fail"),
        "hangs": {"command": "sleep", "args": ["60"]},
    }
    run = run_agent(
        tmp_path, servers, [call("mcp__missing__x"), answer("ok")], config={"mcp_start_timeout": 3.0}
    )
    warnings = [e.data["message"] for e in run["events"] if e.type == "warning"]
    assert any(
        "'missing' failed to start" in w and "no-such-mcp-server-here: not found" in w for w in warnings
    )
    assert any("'refuses' failed to start" in w and "asked to fail" in w for w in warnings)
    assert any("'hangs' failed to start: did not start within 3 s" in w for w in warnings)
    assert "failed to start" in run["results"][0]["content"]
    assert run["result"].status == "answered"


@needs_everything
def test_first_use_asks_and_always_is_remembered_for_the_project(tmp_path):
    asked: list[str] = []

    def ask(req, cancel):
        asked.append(req.tool)
        assert '"a": 1' in (req.preview or "") and req.read_only
        return Decision.allow_tool()

    servers = {"everything": everything_entry()}
    total = call("mcp__everything__get-sum", a=1, b=2)
    first = run_agent(tmp_path, servers, [total, total, answer("ok")], approvals=Approvals(ask=ask))
    assert asked == ["mcp__everything__get-sum"] and all(r["ok"] for r in first["results"])
    allowed = json.loads((tmp_path / "data" / "mcp-allowed.json").read_text())["projects"]
    assert allowed == {str((tmp_path / "project").resolve()): ["mcp__everything__get-sum"]}
    # A later headless run in the same project: remembered; another tool is still refused...
    echo = call("mcp__everything__echo", message="hi")
    again = run_agent(tmp_path, servers, [total, echo, answer("ok")], approvals=Approvals())
    assert again["results"][0]["ok"] and not again["results"][1]["ok"]
    assert "headless" in again["results"][1]["content"]
    # ...unless the preference lets tools the server marks read-only run without asking.
    toggle = call("mcp__everything__toggle-simulated-logging")
    pref = run_agent(
        tmp_path, servers, [echo, toggle, answer("ok")], approvals=Approvals(), config={"mcp_read_only": True}
    )
    assert pref["results"][0]["ok"] and "Echo: hi" in pref["results"][0]["content"]
    assert not pref["results"][1]["ok"]
