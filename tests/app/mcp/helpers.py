"""Configurations of the real MCP servers the tests drive: the SDK server in py_server.py and
`@modelcontextprotocol/server-everything` from npm (installed by .ci/run)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

PY_SERVER = str(Path(__file__).with_name("py_server.py"))
EVERYTHING = shutil.which("mcp-server-everything")

needs_everything = pytest.mark.skipif(
    EVERYTHING is None,
    reason="mcp-server-everything is not installed (npm install -g @modelcontextprotocol/server-everything; "
    ".ci/run does it)",
)


def py_entry(*args: str, **extra: Any) -> dict[str, Any]:
    """The SDK test server as an mcpServers entry."""
    return {"command": sys.executable, "args": [PY_SERVER, *args], **extra}


def everything_entry(**extra: Any) -> dict[str, Any]:
    return {"command": "mcp-server-everything", "args": ["stdio"], **extra}
