"""The mcpServers configuration: parsing, errors that name the entry, secrets, remembered approvals."""

from __future__ import annotations

import json

import pytest

from app.agent import ApprovalRequest, Approvals
from app.mcp import McpConfigError, ToolAllowances, load_servers, parse_config
from app.mcp.config import expand_secrets


def test_parses_stdio_and_http_entries():
    servers = parse_config(
        {
            "mcpServers": {
                "files": {"command": "node", "args": ["a.js"], "env": {"K": "v"}, "cwd": "/tmp"},
                "web search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}},
                "off": {"command": "x", "disabled": True, "allowNetwork": True, "timeout": 5},
            }
        }
    )
    files, web, off = servers["files"], servers["web search"], servers["off"]
    assert (files.transport, files.args, files.env, files.cwd) == ("stdio", ("a.js",), {"K": "v"}, "/tmp")
    assert not files.allow_network
    assert (web.transport, web.url, web.key) == ("http", "https://example.com/mcp", "web_search")
    assert off.disabled and off.allow_network and off.timeout == 5
    # Literal secrets are never printed; references are.
    assert web.to_dict()["headers"] == {"Authorization": "***"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"args": []}, "exactly one of `command`"),
        ({"command": "x", "url": "http://a"}, "exactly one of `command`"),
        ({"url": "ftp://a"}, "http:// or https://"),
        ({"url": "http://a", "type": "sse"}, "SSE transport is not supported"),
        ({"command": "x", "args": "a b"}, "`args` must be a list of strings"),
        ({"command": "x", "env": {"A": ["b"]}}, "`env` must be an object of strings"),
        ({"command": "x", "timeout": 0}, "`timeout` must be a positive"),
    ],
)
def test_bad_entries_name_the_file_and_server(entry, message):
    with pytest.raises(McpConfigError) as e:
        parse_config({"mcpServers": {"srv": entry}}, "my.json")
    assert "my.json: server 'srv'" in str(e.value) and message in str(e.value)


def test_not_the_format_and_clashing_names():
    with pytest.raises(McpConfigError, match="expected"):
        parse_config({"servers_typo": {}}, "f.json")
    with pytest.raises(McpConfigError, match="same tool prefix"):
        parse_config({"mcpServers": {"a b": {"command": "x"}, "a_b": {"command": "y"}}})


def test_default_file_then_given_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mcp.json").write_text(json.dumps({"mcpServers": {"a": {"command": "one"}}}))
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"mcpServers": {"a": {"command": "two"}, "b": {"url": "http://h/mcp"}}}))
    assert load_servers()["a"].command == "one"
    servers = load_servers([extra])
    assert servers["a"].command == "two" and set(servers) == {"a", "b"}
    assert load_servers([extra], include_default=False)["a"].command == "two"
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(McpConfigError, match="not valid JSON"):
        load_servers([tmp_path / "bad.json"])


def test_secrets_come_from_the_environment_or_the_keychain():
    keys = {"gh": "from-keychain"}
    out = expand_secrets(
        {"A": "${TOKEN}", "B": "Bearer ${keychain:gh}", "C": "${MISSING:-fallback}", "D": "plain"},
        environ={"TOKEN": "t0k"},
        keychain=keys.get,
    )
    assert out == {"A": "t0k", "B": "Bearer from-keychain", "C": "fallback", "D": "plain"}
    with pytest.raises(McpConfigError) as e:
        expand_secrets({"A": "${keychain:nope}"}, environ={}, keychain=keys.get)
    assert "keychain entry mcp:nope is not set" in str(e.value)


def test_always_allowed_tools_are_remembered_per_project(tmp_path):
    a = ToolAllowances(tmp_path)
    a.allow("/p1", "mcp__s__t")
    a.allow("/p1", "mcp__s__t")
    assert ToolAllowances(tmp_path).allowed("/p1") == {"mcp__s__t"}
    assert ToolAllowances(tmp_path).allowed("/p2") == set()


def test_allow_names_a_server_or_one_tool():
    req = ApprovalRequest("c1", "mcp__files__write", {}, "MCP files: write")
    assert Approvals(prefixes=["mcp__files"]).rule(req) is not None
    assert Approvals(prefixes=["mcp__files__write"]).rule(req) is not None
    assert Approvals(prefixes=["mcp__fil"]).rule(req) is None  # a name, not a string prefix
    assert Approvals().rule(req) is None  # first use asks
