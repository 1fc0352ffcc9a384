"""The Streamable HTTP transport, and an MCP image in the prompt the real engine builds."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from app.agent import Agent, AgentConfig, Approvals, ReplayBackend
from app.mcp import McpHub, parse_config
from tests import proctree

from ..agent.helpers import answer, call
from .helpers import PY_SERVER, py_entry

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_server_with_a_header_from_the_environment(monkeypatch):
    port = _free_port()
    proc = proctree.popen([sys.executable, PY_SERVER, "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the HTTP server did not start"
                time.sleep(0.1)
        monkeypatch.setenv("LOCUS_TEST_TOKEN", "t0k")
        entry = {
            "url": f"http://127.0.0.1:{port}/mcp",
            "headers": {"Authorization": "Bearer ${LOCUS_TEST_TOKEN}"},
        }
        with McpHub(parse_config({"mcpServers": {"web": entry}})) as hub:
            [status] = hub.statuses()
            assert status.state == "ready" and status.transport == "http", status.line()
            assert hub.call("mcp__web__add", {"a": 20, "b": 22}).text == "42"
        missing = {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Key": "${LOCUS_TEST_UNSET}"}}
        with McpHub(parse_config({"mcpServers": {"web": missing}})) as hub:
            assert "LOCUS_TEST_UNSET is not set" in hub.statuses()[0].error
    finally:
        proc.terminate()
        proc.wait(10)


class EngineCounted(ReplayBackend):
    """Scripted turns; each prompt is also counted by the real (tiny, vision) engine."""

    def __init__(self, outputs, engine):
        super().__init__(outputs)
        self.engine, self.counts = engine, []

    def turn(self, messages, tools, **kw):
        from engine import GenerationRequest

        plain = [
            {**m, "content": [p for p in m["content"] if p["type"] == "text"]}
            if isinstance(m["content"], list)
            else m
            for m in messages
        ]
        with_images = self.engine.count_tokens(GenerationRequest(messages=messages, tools=tools))
        self.counts.append(
            with_images - self.engine.count_tokens(GenerationRequest(messages=plain, tools=tools))
        )
        return super().turn(messages, tools, **kw)


def test_mcp_image_is_in_the_engine_prompt(engine, tmp_path):
    backend = EngineCounted([call("mcp__py__red_square", size=64), answer("a red square")], engine)
    servers = parse_config({"mcpServers": {"py": py_entry()}})
    config = AgentConfig(checkpoints=False, watch=False)
    with Agent(tmp_path, backend, approvals=Approvals(yes=True), config=config, mcp_servers=servers) as agent:
        assert agent.run("show me").status == "answered"
    # The second prompt holds the image: the engine spends image tokens on it (64x64: 2x2 patches of
    # 32 px, plus the vision start and end tokens).
    assert backend.counts == [0, 6]
