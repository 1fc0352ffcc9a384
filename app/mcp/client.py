"""The MCP client: a session's servers, started together and stopped together, their tools offered to
the model as `mcp__SERVER__TOOL`.

The official SDK is asyncio; the agent and the chat are synchronous threads. `McpHub` owns one event
loop on its own thread, every server's connection lives in one task there (so the SDK's cancel
scopes open and close in the same task), and `call` bridges a synchronous caller to it, polling the
caller's stop flag. A server that fails to start, crashes or times out becomes a one-line status;
its tools are withdrawn and the session goes on.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..textsafe import show_block, show_line
from .config import McpConfigError, ServerConfig, expand_secrets, safe_name
from .launch import GitWatch, Launch, LaunchPlace, stdio_launch
from .render import RenderLimits, ToolResult, render_result

__all__ = ["McpHub", "McpTool", "ServerStatus"]

_DESCRIPTION_CHARS = 2000
_SCHEMA_CHARS = 32_000
_NAME_CHARS = 64  # what the OpenAI and Anthropic APIs accept as a tool name
_CONNECTION_CLOSED = -32000  # the SDK's error code for a request whose connection ended


@dataclass(frozen=True)
class McpTool:
    """One server tool as the model sees it."""

    name: str  # mcp__SERVER__TOOL
    server: str
    tool: str  # the server's own name for it
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False  # annotated readOnlyHint by the server (a hint, not a promise)

    def spec(self) -> dict[str, Any]:
        """The tool in the OpenAI function format the chat template takes."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.input_schema},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tool": self.tool,
            "description": self.description,
            "read_only": self.read_only,
            "input_schema": self.input_schema,
        }


@dataclass
class ServerStatus:
    """Where one server stands: state is "starting", "ready", "failed", "crashed", "disabled" or
    "stopped"; `error` says why in one line."""

    name: str
    transport: str
    state: str = "starting"
    error: str = ""
    tools: list[McpTool] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # tools skipped, and why

    def line(self) -> str:
        """One line for a person: what happened to the server."""
        if self.state == "ready":
            return f"MCP server {self.name!r}: {len(self.tools)} tools ({self.seconds:.1f} s)"
        what = {"failed": "failed to start", "crashed": "stopped", "disabled": "is disabled"}
        return f"MCP server {self.name!r} {what.get(self.state, self.state)}" + (
            f": {self.error}; its tools are withdrawn" if self.error else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.transport,
            "state": self.state,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "tools": [t.to_dict() for t in self.tools],
            "notes": list(self.notes),
        }


def _inner(e: BaseException) -> BaseException:
    """The meaningful error inside the groups anyio wraps errors in."""
    while isinstance(e, BaseExceptionGroup):
        inner = [x for x in e.exceptions if not isinstance(x, asyncio.CancelledError)]
        e = (inner or list(e.exceptions))[0]
    return e


def _closed(e: BaseException) -> bool:
    """Whether the error is the SDK's "connection closed" (the server went away)."""
    e = _inner(e)
    return getattr(e, "code", None) == _CONNECTION_CLOSED or isinstance(e, ConnectionError)


def _describe(e: BaseException) -> str:
    """One line for an error."""
    e = _inner(e)
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: not found"
    text = show_line(str(e).strip()) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class _Loop:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="locus-mcp", daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def _tools_of(server: ServerConfig, raw: list[dict[str, Any]], notes: list[str]) -> list[McpTool]:
    """The server's tools as the model sees them; unusable ones are left out with a note."""
    out: list[McpTool] = []
    seen: set[str] = set()
    for t in raw:
        name = f"mcp__{server.key}__{safe_name(str(t.get('name', '')))}"[:_NAME_CHARS]
        schema = t.get("inputSchema")
        schema = {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else {}
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        if len(repr(schema)) > _SCHEMA_CHARS:
            notes.append(
                f"{show_line(t.get('name'))}: input schema over {_SCHEMA_CHARS} characters, left out"
            )
            continue
        if name in seen:
            notes.append(f"{show_line(t.get('name'))}: its name clashes with another tool's, left out")
            continue
        seen.add(name)
        desc = show_block(t.get("description") or t.get("title") or "")[:_DESCRIPTION_CHARS]
        hints = t.get("annotations") if isinstance(t.get("annotations"), dict) else {}
        out.append(
            McpTool(name, server.name, str(t["name"]), desc, schema, hints.get("readOnlyHint") is True)
        )
    return out


class _Server:
    """One server's connection, living in one task on the hub's loop."""

    def __init__(self, cfg: ServerConfig, hub: McpHub) -> None:
        self.cfg = cfg
        self.hub = hub
        self.status = ServerStatus(cfg.name, cfg.transport)
        self.session: Any = None
        self.launch: Launch | None = None
        self.headers: dict[str, str] = {}
        self.stderr_path: str | None = None
        self._stderr: Any = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[list[dict[str, Any]]] | None = None
        self._stopping = False

    def stderr_tail(self) -> str:
        """The server's last line on stderr, for a one-line error."""
        if not self.stderr_path:
            return ""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.stderr_path) - 4096))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        last = next((x.strip() for x in reversed(lines) if x.strip()), "")
        return show_line(last[:300])

    def _fail(self, state: str, why: str) -> None:
        tail = self.stderr_tail()
        self.status.state = state
        self.status.error = why + (f" (stderr: {tail})" if tail and tail not in why else "")
        self.status.tools = []

    async def start(self, timeout: float) -> None:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready = loop.create_future()
        self._task = loop.create_task(self._lifetime(self._ready))
        try:
            raw = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.halt()
            self._fail("failed", f"did not start within {timeout:g} s")
        except Exception as e:
            await self.halt()
            self._fail("failed", "the server exited during the handshake" if _closed(e) else _describe(e))
        else:
            self.status.tools = _tools_of(self.cfg, raw, self.status.notes)
            self.status.state = "ready"
        self.status.seconds = time.monotonic() - t0

    def _transport(self) -> Any:
        if self.launch is not None:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=self.launch.argv[0],
                args=self.launch.argv[1:],
                env=self.launch.env,
                cwd=self.launch.root,
            )
            return stdio_client(params, errlog=self._stderr)
        return _http_transport(str(self.cfg.url), self.headers)

    async def _lifetime(self, ready: asyncio.Future[list[dict[str, Any]]]) -> None:
        import anyio
        from mcp import ClientSession
        from mcp.types import Implementation

        from app import __version__

        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # the pump ends before its task group exits
                send, recv = anyio.create_memory_object_stream[Any](0)
                tg.start_soon(self._pump, read, send)
                info = Implementation(name="locus", version=__version__)
                session = await stack.enter_async_context(ClientSession(recv, write, client_info=info))
                await session.initialize()
                tools = await _list_tools(session)
                self.session = session
                ready.set_result(tools)
                assert self._stop is not None
                await self._stop.wait()
        except BaseException as e:  # reported as the server's state, never raised past its task
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError("the start was stopped"))
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.session = None

    async def _pump(self, read: Any, send: Any) -> None:
        """Pass the server's messages to the session; when they end, the server has gone."""
        import anyio

        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            async with send:
                async for item in read:
                    await send.send(item)
        if not self._stopping and self.status.state == "ready":
            self._fail("crashed", "the server exited or closed its connection")
            self.hub._report(self.status.line())
            assert self._stop is not None
            self._stop.set()

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
        session = self.session
        if session is None:
            raise ConnectionError("the server is not running")
        result = await asyncio.wait_for(session.call_tool(tool, arguments), timeout)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def halt(self) -> None:
        """Stop the connection (and the process) and wait for it, a few seconds at most."""
        self._stopping = True
        if self._stop is not None:
            self._stop.set()
        if self._task is not None and not self._task.done():
            if self.session is None:  # still starting: nothing waits on the stop event yet
                self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 8)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
                with suppress(BaseException):
                    await asyncio.wait_for(self._task, 5)
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved: a failed start was reported as the status
        if self.status.state == "ready":
            self.status.state = "stopped"


async def _list_tools(session: Any) -> list[dict[str, Any]]:
    from mcp.types import PaginatedRequestParams

    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):  # a server that pages forever is cut off
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        out += [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools]
        cursor = getattr(page, "next_cursor", None)
        if not cursor:
            break
    return out


def _http_transport(url: str, headers: dict[str, str]) -> Any:
    """The SDK's Streamable HTTP transport with the entry's headers on every request."""
    from contextlib import asynccontextmanager

    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    @asynccontextmanager
    async def connect() -> Any:
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as client:
            async with streamable_http_client(url, http_client=client) as streams:
                yield streams[0], streams[1]

    return connect()


class McpHub:
    """The MCP servers of one session (an agent, a chat, `locus mcp list`).

    `start()` starts every enabled server in parallel and waits up to `start_timeout` seconds;
    `tools()`/`specs()` list the live servers' tools; `call()` runs one; `take_problems()` returns
    one-line reports of servers that stopped since it was last asked; `close()` stops them all.
    """

    def __init__(
        self,
        servers: Mapping[str, ServerConfig] | Iterable[ServerConfig],
        place: LaunchPlace | None = None,
        *,
        start_timeout: float = 30.0,
        limits: RenderLimits | None = None,
    ) -> None:
        configs = list(servers.values()) if isinstance(servers, Mapping) else list(servers)
        self.place = place
        self.start_timeout = start_timeout
        self.limits = limits or RenderLimits()
        self._servers = [_Server(c, self) for c in configs]
        self._loop: _Loop | None = None
        self._problems: list[str] = []
        self._lock = threading.Lock()
        self._scratch: str | None = None
        self.started = False
        for s in self._servers:
            if s.cfg.disabled:
                s.status.state = "disabled"

    def _report(self, line: str) -> None:
        with self._lock:
            self._problems.append(line)

    def take_problems(self) -> list[str]:
        """Lines about servers that stopped since the last call (each reported once)."""
        with self._lock:
            out, self._problems = self._problems, []
        return out

    def statuses(self) -> list[ServerStatus]:
        return [s.status for s in self._servers]

    def _prepare(self, s: _Server) -> bool:
        """Build the launch (stdio) or headers (HTTP); False with a failed status if impossible."""
        try:
            if s.cfg.command is None:
                s.headers = expand_secrets(s.cfg.headers)
                return True
            place = self.place
            if place is None:
                from ..agent.sandbox import detect_sandbox

                place = self.place = LaunchPlace(detect_sandbox("auto"))
            if place.project is None and not s.cfg.cwd and self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="locus-mcp-")
            s.launch = stdio_launch(s.cfg, place, Path(self._scratch or "."))
            fd, s.stderr_path = tempfile.mkstemp(prefix=f"locus-mcp-{s.cfg.key}-", suffix=".log")
            os.close(fd)
            s._stderr = open(s.stderr_path, "a", encoding="utf-8")
            return True
        except (McpConfigError, OSError, RuntimeError) as e:
            s._fail("failed", _describe(e))
            return False

    def start(self) -> list[ServerStatus]:
        """Start every enabled server (in parallel) and return their statuses; never raises for a
        server's failure. Calling it again does nothing."""
        if self.started:
            return self.statuses()
        self.started = True
        todo = [s for s in self._servers if s.status.state == "starting" and self._prepare(s)]
        if not todo:
            return self.statuses()
        self._loop = _Loop()
        atexit.register(self.close)

        async def start_all() -> None:
            await asyncio.gather(*(s.start(self.start_timeout) for s in todo))

        self._loop.submit(start_all()).result(timeout=self.start_timeout + 30)
        return self.statuses()

    def tools(self) -> list[McpTool]:
        """The tools of the servers that are running now."""
        return [t for s in self._servers if s.status.state == "ready" for t in s.status.tools]

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools()]

    def _find(self, name: str) -> tuple[_Server, McpTool] | None:
        for s in self._servers:
            if s.status.state == "ready":
                for t in s.status.tools:
                    if t.name == name:
                        return s, t
        return None

    def tool(self, name: str) -> McpTool | None:
        """A live tool by its model-facing name."""
        found = self._find(name)
        return found[1] if found else None

    def why_missing(self, name: str) -> str | None:
        """For a name of a server that is not running: its status line (else None)."""
        for s in self._servers:
            if name.startswith(f"mcp__{s.cfg.key}__") and s.status.state != "ready":
                return s.status.line()
        return None

    def call(
        self, name: str, arguments: dict[str, Any], *, cancel: threading.Event | None = None
    ) -> ToolResult:
        """Run one tool and render its result; failures come back as a ToolResult with ok False."""
        found = self._find(name)
        if found is None or self._loop is None:
            why = self.why_missing(name) or f"no MCP tool is named {name!r}"
            return ToolResult(False, f"Error: {why}.")
        s, tool = found
        git = GitWatch(s.launch.root, self.place.quarantine if self.place else None) if s.launch else None
        before = git.before() if git else None
        fut = self._loop.submit(s.call(tool.tool, arguments, s.cfg.timeout))
        result = self._wait(fut, s, tool, cancel)
        if git is not None and before is not None:
            changes = git.undo(before)
            if changes:
                result.details["git_changes"] = [c.describe() for c in changes]
                result.text += (
                    "\n\n[Locus undid changes this tool made to git folders: "
                    + "; ".join(result.details["git_changes"])
                    + "]"
                )
        return result

    def _wait(
        self, fut: concurrent.futures.Future[Any], s: _Server, tool: McpTool, cancel: threading.Event | None
    ) -> ToolResult:
        while not concurrent.futures.wait([fut], timeout=0.05).done:
            if cancel is not None and cancel.is_set():
                fut.cancel()
                return ToolResult(False, "Error: the user stopped the run before the MCP server answered.")
        try:
            return render_result(fut.result(), self.limits)
        except TimeoutError:
            return ToolResult(False, f"Error: {tool.name} did not answer within {s.cfg.timeout:g} s.")
        except Exception as e:
            if _closed(e):
                deadline = time.monotonic() + 2.0  # the pump notices a dead server a moment later
                while s.status.state == "ready" and time.monotonic() < deadline:
                    time.sleep(0.02)
            if s.status.state == "crashed":
                return ToolResult(
                    False, f"Error: {s.status.line()}. Go on without them.", details={"crashed": 1}
                )
            return ToolResult(False, f"Error: the MCP server {s.cfg.name!r} refused the call: {_describe(e)}")

    def close(self) -> None:
        """Stop every server (closing stdio servers' input, then killing what is left)."""
        atexit.unregister(self.close)
        if self._loop is not None:

            async def stop_all() -> None:
                await asyncio.gather(*(s.halt() for s in self._servers if s._task is not None))

            with suppress(Exception):
                self._loop.submit(stop_all()).result(timeout=20)
            self._loop.close()
            self._loop = None
        for s in self._servers:
            if s._stderr is not None:
                s._stderr.close()
                s._stderr = None
            if s.stderr_path:
                with suppress(OSError):
                    os.unlink(s.stderr_path)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> McpHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
