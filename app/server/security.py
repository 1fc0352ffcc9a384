"""The server's front door: Host and Origin checks, API key, request body size and time limits.

A pure ASGI middleware, so it runs before FastAPI parses anything and can refuse a request
without reading its body.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .config import ServerConfig, is_loopback_host, is_wildcard_host
from .errors import error_body, flavor_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CORS_METHODS = "GET, POST, OPTIONS"
_CORS_HEADERS = (
    "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, "
    "x-stainless-os, x-stainless-lang, x-stainless-package-version, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-arch, x-stainless-retry-count, "
    "x-stainless-timeout, anthropic-dangerous-direct-browser-access"
)


def host_name(host_header: str) -> str:
    """The host part of a Host header, lowercased: "[::1]:8723" -> "::1"."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


def api_key_of(headers: Any) -> str | None:
    """The API key a request carries: `x-api-key: KEY`, else `Authorization: Bearer KEY` (the
    scheme in any case, blanks around either part ignored); None when it sends neither."""
    given = (headers.get("x-api-key") or "").strip()
    if given:
        return given
    parts = (headers.get("authorization") or "").split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip():
        return parts[1].strip()
    return None


class BodyBudget:
    """Request body bytes the server holds at once, counted as they arrive (never a declared
    length), from a body's first byte until its request is answered; all on the event loop."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self.peak = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        """Count `n` more bytes; False (nothing counted) when they would pass the total."""
        if self.held + n > self.total:
            self.refused += 1
            return False
        self.held += n
        self.peak = max(self.peak, self.held)
        return True

    def give(self, n: int) -> None:
        self.held -= n


class Guard:
    """Refuses requests that fail the server's checks, in each API's error shape."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.hosts = {host_name(h) for h in config.allowed_hosts}
        if not is_wildcard_host(config.host):
            self.hosts.add(host_name(config.host))
        # Serving every interface: a client may name this machine by any of its addresses.
        # IP literals cannot be rebound by DNS, so they stay safe to accept.
        self.any_ip = is_wildcard_host(config.host)
        self.origins = {_origin(o) for o in config.allowed_origins}
        self.key = config.api_key.encode() if config.api_key else None
        self.bodies = BodyBudget(max(config.body_budget_bytes, config.max_body_bytes))

    # -- checks -------------------------------------------------------------------------------
    def host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        h = host_name(host)
        return is_loopback_host(h) or h in self.hosts or (self.any_ip and _is_ip(h))

    def origin_ok(self, origin: str) -> bool:
        return "*" in self.origins or _origin(origin) in self.origins

    def key_ok(self, headers: dict[str, str]) -> bool:
        if self.key is None:
            return True
        given = api_key_of(headers)
        return given is not None and hmac.compare_digest(given.encode(), self.key)

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        cors = await self._gate(scope, send, headers, path)
        if cors is None:
            return
        held = [0]  # body bytes counted in self.bodies, given back once the request is answered
        try:
            await self._serve(scope, receive, send, headers, cors, held)
        finally:
            self.bodies.give(held[0])

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        cors: list[tuple[bytes, bytes]],
        held: list[int],
    ) -> None:
        got = await self._read_body(receive, send, headers, scope.get("path", ""), cors, held)
        if got is None:
            return
        body, size = got
        scope["locus.body_size"] = size  # see service.BODY_SIZE
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        answered = False

        async def send_checked(msg: Message) -> None:
            nonlocal answered
            if cors and msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = [*msg.get("headers", []), *cors]
            await send(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                answered = True

        try:
            await self.app(scope, replay, send_checked)
        except Exception:
            # Starlette re-raises a crash after sending its 500 (already logged by the app's
            # handler); swallowed here, uvicorn keeps the keep-alive connection open.
            if not answered:
                raise

    async def _gate(
        self, scope: Scope, send: Send, headers: dict[str, str], path: str
    ) -> list[tuple[bytes, bytes]] | None:
        """Check Host, Origin and the API key; the CORS headers to add, or None once answered."""
        if not self.host_ok(headers.get("host")):
            await self._refuse(
                send,
                path,
                403,
                "permission_error",
                f"Host {headers.get('host')!r} is not served here: only loopback "
                "names and the configured host are (DNS rebinding protection); "
                "add more with --allow-host",
            )
            return None
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if not self.origin_ok(origin):
                await self._refuse(
                    send,
                    path,
                    403,
                    "permission_error",
                    f"cross-origin requests from {origin!r} are refused; allow an origin with --allow-origin",
                )
                return None
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [
                            *cors,
                            (b"access-control-allow-methods", _CORS_METHODS.encode()),
                            (b"access-control-allow-headers", _CORS_HEADERS.encode()),
                            (b"access-control-max-age", b"600"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return None
        if not self.key_ok(headers):
            await self._refuse(
                send,
                path,
                401,
                "authentication_error",
                "invalid API key: send it as x-api-key or Authorization: Bearer",
                cors,
            )
            return None
        return cors

    async def _read_body(
        self,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        path: str,
        cors: list[tuple[bytes, bytes]],
        held: list[int],
    ) -> tuple[bytes, int] | None:
        """The whole body, read up front within the size and time limits (None once answered).
        It is replayed to the app; later receive() calls still reach the server, so handlers
        hear about a client that disconnects. Bytes are counted as they arrive, into `held`."""
        limit = self.config.max_body_bytes
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await self._refuse(send, path, 413, "request_too_large", self._too_large(False), cors)
            return None
        chunks: list[bytes] = []
        deadline = time.monotonic() + self.config.body_deadline
        while True:
            msg = await self._next_piece(receive, deadline)
            if isinstance(msg, str):
                await self._refuse(send, path, 408, "invalid_request_error", msg, cors)
                return None
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            over = held[0] + len(chunk) > limit
            if over or not self.bodies.take(len(chunk)):
                await self._refuse(send, path, 413, "request_too_large", self._too_large(not over), cors)
                return None
            held[0] += len(chunk)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks), held[0]

    async def _next_piece(self, receive: Receive, deadline: float) -> Message | str:
        """The next ASGI message, or why the body is cut off: it paused longer than body_timeout,
        or has taken longer than body_deadline in all."""
        left = deadline - time.monotonic()
        wait = min(self.config.body_timeout, left)
        try:
            return await asyncio.wait_for(receive(), max(wait, 0.0))
        except TimeoutError:
            if wait < self.config.body_timeout:
                return f"the request body did not arrive in full within {self.config.body_deadline:g} s"
            return f"no part of the request body arrived for {self.config.body_timeout:g} s"

    def _too_large(self, shared: bool) -> str:
        if shared:  # this body fits alone, but not beside the others being held
            return (
                f"the server is already holding {self.bodies.held} bytes of request bodies (its limit "
                f"for all requests together is {self.bodies.total} bytes); retry later or send less"
            )
        return f"request body is larger than the server's limit of {self.config.max_body_bytes} bytes"

    async def _refuse(
        self,
        send: Send,
        path: str,
        status: int,
        kind: str,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = json.dumps(error_body(flavor_of(path), kind, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(extra or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
