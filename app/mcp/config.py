"""MCP server configuration in the common `mcpServers` format (Claude Desktop, Claude Code, LM Studio).

    {"mcpServers": {
        "files": {"command": "node", "args": ["/opt/mcp/files.js"], "env": {"TOKEN": "${keychain:files}"},
                  "cwd": "/opt/mcp", "allowNetwork": false},
        "search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ${SEARCH_KEY}"}}}}

A stdio entry has `command` (and `args`, `env`, `cwd`); a Streamable HTTP entry has `url` (and
`headers`). Locus adds `allowNetwork` (stdio servers have no network unless it is true), `disabled`
and `timeout` (seconds per tool call). Values in `env` and `headers` may name a secret instead of
holding it: `${NAME}` takes Locus's environment variable NAME, `${keychain:KEY}` the keychain entry
(service "locus", user "mcp:KEY"); they are expanded when the server starts, never shown.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "McpConfigError",
    "ServerConfig",
    "default_config_path",
    "expand_secrets",
    "load_servers",
    "parse_config",
    "read_entries",
    "write_entries",
]

# Tool names reach the model as mcp__SERVER__TOOL: keep both parts to what every API accepts.
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
_SECRET = re.compile(r"\$\{(keychain:)?([^}:]+)(?::-([^}]*))?\}")


class McpConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ServerConfig:
    """One configured server: stdio (`command`) or Streamable HTTP (`url`)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    allow_network: bool = False
    disabled: bool = False
    timeout: float = 120.0  # seconds a tool call may take
    source: str = ""  # the file it came from, for messages

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    @property
    def key(self) -> str:
        """The server's name as it appears in tool names (mcp__KEY__tool)."""
        return safe_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        """The entry as configured, secrets still as `${...}` references (safe to print)."""
        if self.command is not None:
            out: dict[str, Any] = {"command": self.command, "args": list(self.args)}
            if self.env:
                out["env"] = {k: _mask(v) for k, v in self.env.items()}
            if self.cwd:
                out["cwd"] = self.cwd
            out["allowNetwork"] = self.allow_network
        else:
            out = {"url": self.url}
            if self.headers:
                out["headers"] = {k: _mask(v) for k, v in self.headers.items()}
        if self.disabled:
            out["disabled"] = True
        return out


def _mask(value: str) -> str:
    """A value for display: `${...}` references stay, literal values are hidden."""
    return value if _SECRET.fullmatch(value) else "***"


def safe_name(name: str) -> str:
    """`name` with every character outside [A-Za-z0-9_-] replaced by `_` (Claude Code's rule)."""
    return _NAME_OK.sub("_", name)


def default_config_path() -> Path:
    """The configuration the window edits and every session reads: DATA_DIR/mcp.json."""
    from ..settings import data_dir

    return data_dir() / "mcp.json"


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def _mapping(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str | int | float) for v in value.values()):
        raise ValueError(f"{what} must be an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _server(name: str, raw: Any) -> ServerConfig:
    if not isinstance(raw, dict):
        raise ValueError("must be an object with `command` or `url`")
    kind = str(raw.get("type") or raw.get("transport") or "").lower()
    if kind == "sse":
        raise ValueError("the SSE transport is not supported; use the server's Streamable HTTP URL")
    command, url = raw.get("command"), raw.get("url")
    if (command is None) == (url is None):
        raise ValueError("needs exactly one of `command` (stdio) or `url` (Streamable HTTP)")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ValueError("`command` must be a non-empty string")
    if url is not None and (not isinstance(url, str) or not re.match(r"https?://", url)):
        raise ValueError("`url` must be an http:// or https:// URL")
    timeout = raw.get("timeout", 120)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError("`timeout` must be a positive number of seconds")
    cwd = raw.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("`cwd` must be a string")
    return ServerConfig(
        name=name,
        command=command,
        args=_strings(raw.get("args", []), "`args`"),
        env=_mapping(raw.get("env", {}), "`env`"),
        cwd=os.path.expanduser(cwd) if cwd else None,
        url=url,
        headers=_mapping(raw.get("headers", {}), "`headers`"),
        allow_network=raw.get("allowNetwork") is True,
        disabled=raw.get("disabled") is True,
        timeout=float(timeout),
    )


def parse_config(data: Any, source: str = "") -> dict[str, ServerConfig]:
    """The servers of a parsed configuration (`{"mcpServers": {...}}`), in file order."""
    where = source or "MCP configuration"
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if servers is None and isinstance(data, dict) and "servers" in data:
        servers = data["servers"]  # VS Code's spelling of the same thing
    if not isinstance(servers, dict):
        raise McpConfigError(f'{where}: expected {{"mcpServers": {{NAME: {{...}}}}}}')
    out: dict[str, ServerConfig] = {}
    keys: dict[str, str] = {}
    for name, raw in servers.items():
        if not name or len(name) > 64:
            raise McpConfigError(f"{where}: server name {name!r} must be 1 to 64 characters")
        try:
            cfg = _server(name, raw)
        except ValueError as e:
            raise McpConfigError(f"{where}: server {name!r}: {e}") from None
        if cfg.key in keys:
            raise McpConfigError(f"{where}: servers {keys[cfg.key]!r} and {name!r} have the same tool prefix")
        keys[cfg.key] = name
        out[name] = ServerConfig(**{**cfg.__dict__, "source": where})
    return out


def _read(path: Path) -> dict[str, ServerConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise McpConfigError(f"{path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if text.strip() else {"mcpServers": {}}
    except ValueError as e:
        raise McpConfigError(f"{path}: not valid JSON ({e})") from None
    return parse_config(data, str(path))


def load_servers(
    files: Iterable[str | os.PathLike[str]] = (), *, include_default: bool = True
) -> dict[str, ServerConfig]:
    """The configured servers: the default file's (when it exists), then each of `files` (a name
    given again replaces the earlier entry). Disabled entries are kept; the caller skips them."""
    out: dict[str, ServerConfig] = {}
    default = default_config_path()
    if include_default and default.is_file():
        out.update(_read(default))
    for f in files:
        out.update(_read(Path(f).expanduser()))
    return out


def expand_secrets(
    values: dict[str, str],
    *,
    environ: dict[str, str] | None = None,
    keychain: Callable[[str], str | None] | None = None,
) -> dict[str, str]:
    """`values` with `${NAME}`, `${NAME:-default}` and `${keychain:KEY}` filled in; raises
    McpConfigError naming the reference that has no value (never the value itself)."""
    env = os.environ if environ is None else environ
    get_key = keychain or _keychain

    def one(m: re.Match[str]) -> str:
        from_keychain, name, default = m.group(1), m.group(2), m.group(3)
        value = get_key(name) if from_keychain else env.get(name)
        if value is None:
            value = default
        if value is None:
            where = f"keychain entry mcp:{name}" if from_keychain else f"environment variable {name}"
            raise McpConfigError(f"{m.group(0)}: the {where} is not set")
        return value

    return {k: _SECRET.sub(one, v) for k, v in values.items()}


def _keychain(key: str) -> str | None:
    try:
        import keyring

        return keyring.get_password("locus", f"mcp:{key}")
    except Exception:  # no usable keychain: the reference is reported as unset
        return None


def read_entries(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """The raw `mcpServers` entries of a file (default: the data folder's mcp.json), for editing;
    {} when it does not exist."""
    p = Path(path) if path is not None else default_config_path()
    if not p.exists():
        return {}
    _read(p)  # raises McpConfigError naming what is wrong
    data = json.loads(p.read_text(encoding="utf-8") or "{}")
    return dict(data.get("mcpServers") or data.get("servers") or {})


def write_entries(entries: dict[str, dict[str, Any]], path: str | os.PathLike[str] | None = None) -> Path:
    """Check `entries` and save them as the file's `mcpServers` (other keys kept; written
    atomically); raises McpConfigError when an entry is not usable."""
    import tempfile

    p = Path(path) if path is not None else default_config_path()
    parse_config({"mcpServers": entries}, str(p))
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except ValueError:
        data = {}
    data = {**(data if isinstance(data, dict) else {}), "mcpServers": entries}
    data.pop("servers", None)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mcp-", dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    os.replace(tmp, p)
    return p
