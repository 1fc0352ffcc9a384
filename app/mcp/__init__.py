"""MCP servers as tools for the agent and the chat, on the official `mcp` SDK.

    from app.mcp import McpHub, LaunchPlace, load_servers
    hub = McpHub(load_servers(["mcp.json"]), LaunchPlace(sandbox, project=root))
    for status in hub.start():          # every server in parallel, with a timeout
        print(status.line())
    hub.specs()                         # tool specs for the model: mcp__SERVER__TOOL
    hub.call("mcp__everything__get-sum", {"a": 2, "b": 3}).text
    hub.close()

Configuration (config.py), launching stdio servers in the command sandbox (launch.py), rendering
results for the model (render.py) and remembered approvals (allowed.py) are the package's parts.
"""

from .allowed import ToolAllowances
from .client import McpHub, McpTool, ServerStatus
from .config import (
    McpConfigError,
    ServerConfig,
    default_config_path,
    load_servers,
    parse_config,
    read_entries,
    write_entries,
)
from .launch import LaunchPlace
from .render import RenderLimits, ToolResult, render_result

__all__ = [
    "LaunchPlace",
    "McpConfigError",
    "McpHub",
    "McpTool",
    "RenderLimits",
    "ServerConfig",
    "ServerStatus",
    "ToolAllowances",
    "ToolResult",
    "default_config_path",
    "load_servers",
    "parse_config",
    "read_entries",
    "render_result",
    "write_entries",
]
