"""`locus mcp list`, `locus agent --mcp-config`, `locus chat` with MCP tools, and `locus doctor`'s check."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from app import doctor
from app.cli import main

from ...fakebackend import FakeBackend
from ..agent.helpers import answer, call
from .helpers import everything_entry, needs_everything, py_entry


def locus(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def config(tmp: Path, servers: dict) -> str:
    path = tmp / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.slow
def test_mcp_list_json_starts_each_server(tmp_path):
    path = config(tmp_path, {"py": py_entry(), "gone": {"command": "no-such-mcp-server-here"}})
    code, out, _ = locus("mcp", "list", "--mcp-config", path, "--json")
    servers = {s["name"]: s for s in json.loads(out)["servers"]}
    assert code == 1  # one server failed
    assert servers["py"]["state"] == "ready" and servers["py"]["config"]["command"]
    add = next(t for t in servers["py"]["tools"] if t["name"] == "mcp__py__add")
    assert add["tool"] == "add" and add["input_schema"]["required"] == ["a", "b"]
    assert servers["gone"]["state"] == "failed" and "not found" in servers["gone"]["error"]


def test_mcp_list_text_and_nothing_configured(tmp_path):
    code, out, _ = locus("mcp", "list")
    assert code == 0 and "no MCP servers configured" in out
    code, out, _ = locus("mcp", "list", "--mcp-config", config(tmp_path, {"gone": {"command": "no-such-x"}}))
    assert code == 1 and "MCP server 'gone' failed to start" in out
    (tmp_path / "bad.json").write_text('{"mcpServers": {"x": {}}}')
    code, _, err = locus("mcp", "list", "--mcp-config", str(tmp_path / "bad.json"))
    assert code == 1 and "server 'x': needs exactly one of" in err


@needs_everything
@pytest.mark.slow
def test_agent_command_uses_the_servers_of_mcp_config(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    replay = tmp_path / "replay.jsonl"
    script = [call("mcp__everything__get-sum", a=2, b=3), answer("2 + 3 = 5")]
    replay.write_text("".join(json.dumps(s) + "\n" for s in script))
    path = config(tmp_path, {"everything": everything_entry()})
    code, out, _ = locus(
        "agent", str(project), "add", "--replay", str(replay), "--mcp-config", path, "--yes", "--json"
    )
    events = [json.loads(line) for line in out.splitlines()]
    [result] = [e for e in events if e["type"] == "tool_result"]
    assert code == 0 and result["ok"] and result["content"] == "The sum of 2 and 3 is 5."
    assert any(e["type"] == "mcp_servers" for e in events)


@needs_everything
@pytest.mark.slow
def test_chat_calls_mcp_tools_after_asking(tmp_path):
    from app.cli_mcp import open_hub
    from app.mcp import parse_config
    from app.terminal_chat import run_chat
    from engine import SamplingParams

    fake = FakeBackend([call("mcp__everything__get-sum", a=2, b=3), answer("It is 5.")])
    args = type("Args", (), {"system": None, "no_thinking": False, "max_tokens": 256, "stop": []})()
    out = io.StringIO()
    with open_hub(parse_config({"mcpServers": {"everything": everything_entry()}})) as hub:
        run_chat(args, fake, SamplingParams(), stdin=io.StringIO("add 2 and 3\ny\n"), stdout=out, mcp=hub)
    first, second = fake.requests
    assert "mcp__everything__get-sum" in [t["function"]["name"] for t in first.tools]
    tool_msg = second.messages[-1]
    assert tool_msg["role"] == "tool" and tool_msg["content"] == "The sum of 2 and 3 is 5."
    assert "allow MCP everything: get-sum?" in out.getvalue() and "It is 5." in out.getvalue()


def test_doctor_checks_that_configured_servers_start(data_dir):
    assert doctor.check_mcp().status == "pass"  # none configured
    data_dir.mkdir()
    (data_dir / "mcp.json").write_text("{broken")
    assert doctor.check_mcp().status == "warn"
    (data_dir / "mcp.json").write_text(
        json.dumps({"mcpServers": {"a": {"command": "x"}, "b": {"command": "y"}}})
    )

    class St:
        def __init__(self, name, state):
            self.name, self.state = name, state

        def line(self):
            return f"{self.name} {self.state}"

    check = doctor.check_mcp(start=lambda servers: [St("a", "ready"), St("b", "failed")])
    assert check.status == "warn" and "b failed" in check.detail and "locus mcp list" in check.fix
    assert doctor.check_mcp(start=lambda servers: [St("a", "ready"), St("b", "ready")]).status == "pass"
