"""`locus mcp list`: start each configured MCP server and print its tools; and the chat's servers.

Servers come from Locus's data folder (mcp.json) and any `--mcp-config FILE`; stdio servers start in
the agent's command sandbox with its environment allowlist (see app/mcp/launch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .textsafe import show_line

if TYPE_CHECKING:
    from .mcp import McpHub, ServerConfig

MCP_CONFIG_HELP = (
    'MCP servers in the common {"mcpServers": {...}} format (repeatable; added to those in '
    "Locus's data folder, mcp.json)"
)


def add_parser(sub: Any, add_model_args: Callable, add_sampling_args: Callable) -> None:
    """Register `locus mcp` on the subparsers `sub`."""
    p = sub.add_parser("mcp", help="MCP servers: start the configured ones and list their tools")
    msub = p.add_subparsers(dest="mcp_command", metavar="COMMAND", required=True)
    lp = msub.add_parser("list", help="start each configured server and print its tools")
    lp.add_argument("--mcp-config", action="append", default=[], metavar="FILE", help=MCP_CONFIG_HELP)
    lp.add_argument("--json", action="store_true", help="print the servers and their tools as JSON")
    lp.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds the servers get to start (30)"
    )
    p.set_defaults(handler=run)


def open_hub(
    servers: Mapping[str, ServerConfig], *, project: Path | None = None, start_timeout: float = 30.0
) -> McpHub:
    """A hub for `servers` where the chat, `locus mcp list`, doctor and the window run them: the
    agent's sandbox, the user's extra environment names and require_sandbox preference."""
    from .agent import AgentConfig, detect_sandbox
    from .mcp import LaunchPlace, McpHub
    from .settings import data_dir

    cfg = AgentConfig.from_settings()
    place = LaunchPlace(
        detect_sandbox("auto"),
        project,
        env_allow=cfg.env_allow,
        hidden=(str(data_dir()),),
        require_sandbox=cfg.require_sandbox,
    )
    return McpHub(servers, place, start_timeout=start_timeout)


def run(args: argparse.Namespace) -> int:
    """Entry point of `locus mcp list`: 0 when every enabled server started, else 1."""
    from .mcp import McpConfigError, default_config_path, load_servers

    try:
        servers = load_servers(args.mcp_config)
    except McpConfigError as e:
        print(f"locus mcp: error: {e}", file=sys.stderr)
        return 1
    if not servers:
        if args.json:
            print(json.dumps({"servers": []}))
        else:
            print(f"no MCP servers configured (add them to {default_config_path()} or use --mcp-config FILE)")
        return 0
    with open_hub(servers, start_timeout=args.timeout) as hub:
        statuses = [dataclasses.replace(st, tools=list(st.tools)) for st in hub.statuses()]  # as started
    if args.json:
        out = [{**st.to_dict(), "config": servers[st.name].to_dict()} for st in statuses]
        print(json.dumps({"servers": out}, indent=2, ensure_ascii=False))
    else:
        for st in statuses:
            print(show_line(st.line()))
            for t in st.tools:
                first = (t.description.splitlines() or [""])[0]
                ro = "  [read-only]" if t.read_only else ""
                print(f"  {show_line(t.name)}{ro}  {show_line(first[:80])}")
            for note in st.notes:
                print(f"  (left out: {show_line(note)})")
    return 1 if any(st.state in ("failed", "crashed") for st in statuses) else 0


def chat_hub(args: argparse.Namespace) -> McpHub | None:
    """The chat's MCP servers, started, each reported in one line on stderr; None when none."""
    from .mcp import McpConfigError, load_servers

    try:
        servers = load_servers(getattr(args, "mcp_config", None) or [])
    except McpConfigError as e:
        print(f"locus chat: MCP configuration not used: {e}", file=sys.stderr)
        return None
    if not any(not s.disabled for s in servers.values()):
        return None
    hub = open_hub(servers)
    for st in hub.start():
        if st.state != "disabled":
            print(show_line(st.line()), file=sys.stderr)
    return hub
