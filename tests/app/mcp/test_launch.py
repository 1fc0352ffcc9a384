"""How stdio servers are started: in the command sandbox, with only the allowlisted environment."""

from __future__ import annotations

import os

import pytest

from app.agent import Sandbox, detect_sandbox
from app.mcp import LaunchPlace, McpConfigError, parse_config
from app.mcp.launch import stdio_launch


def _cfg(**entry):
    return parse_config({"mcpServers": {"s": {"command": "node", **entry}}})["s"]


def test_environment_is_the_allowlist_plus_the_declared_env(tmp_path):
    environ = {"PATH": "/usr/bin", "HOME": str(tmp_path), "AWS_SECRET_ACCESS_KEY": "leak", "GOPATH": "/go"}
    place = LaunchPlace(Sandbox("none", reason="off"), tmp_path, env_allow=("EXTRA",), environ=environ)
    launch = stdio_launch(_cfg(env={"MODE": "fast"}), place, tmp_path)
    assert "AWS_SECRET_ACCESS_KEY" not in launch.env and launch.env["MODE"] == "fast"
    assert launch.env["GOPATH"] == "/go" and launch.env["PATH"] == "/usr/bin"
    with pytest.raises(McpConfigError, match="environment variable EXTRA is not set"):
        stdio_launch(_cfg(env={"API_KEY": "${EXTRA}"}), place, tmp_path)  # not in this environment
    environ["EXTRA"] = "k"
    launch = stdio_launch(_cfg(env={"API_KEY": "${EXTRA}"}), place, tmp_path)
    assert launch.env["API_KEY"] == "k" and launch.env["EXTRA"] == "k"


def test_sandboxed_without_network_unless_allowed(tmp_path):
    sb = detect_sandbox("auto")
    if sb.kind != "bwrap":
        pytest.skip(f"needs a working bwrap ({sb.describe()})")
    script = tmp_path / "tools" / "server.js"
    script.parent.mkdir()
    script.write_text("")
    place = LaunchPlace(sb, tmp_path / "proj")
    (tmp_path / "proj").mkdir()
    argv = stdio_launch(_cfg(args=[str(script)]), place, tmp_path).argv
    assert "bwrap" in " ".join(argv) and "--unshare-net" in argv
    assert argv[argv.index(str(script)) - 1] == "--ro-bind"  # the script the entry names is readable
    assert argv[-1].endswith(f"exec node {script}")
    argv = stdio_launch(_cfg(allowNetwork=True), place, tmp_path).argv
    assert "--unshare-net" not in argv


def test_home_is_never_exposed_and_required_sandbox_refuses(tmp_path):
    sb = detect_sandbox("auto")
    if sb.active:
        home = os.path.realpath(os.path.expanduser("~"))
        argv = stdio_launch(_cfg(args=[home, "/"]), LaunchPlace(sb, tmp_path), tmp_path).argv
        binds = {tuple(argv[i : i + 3]) for i, a in enumerate(argv) if a == "--ro-bind"}
        assert ("--ro-bind", home, home) not in binds and ("--ro-bind", "/", "/") not in binds
    broken = Sandbox("none", reason="bwrap is not installed", broken=True)
    with pytest.raises(McpConfigError, match="no working sandbox"):
        stdio_launch(_cfg(), LaunchPlace(broken, tmp_path, require_sandbox=True), tmp_path)
    with pytest.raises(McpConfigError, match="is not a folder"):
        stdio_launch(_cfg(cwd=str(tmp_path / "missing")), LaunchPlace(broken, tmp_path), tmp_path)
