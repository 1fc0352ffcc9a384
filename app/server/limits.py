"""Connection limits under uvicorn: a cap on open connections, a deadline for request headers,
the descriptor limit raised at start, and repeated log lines rate-limited.

h11 and httptools wait forever for headers, and uvicorn accepts connections until the process runs
out of file descriptors, after which it can accept none (not even a legitimate client's) and logs
"Too many open files" in a loop. Here a connection must deliver its headers within
`header_timeout` seconds, and when `max_connections` are open the one that has waited longest for
headers (never sent any, or idles between keep-alive requests) is closed to make room; when there
is none, the one that has been sending a request body longest (slow senders cannot hold the table).
Only connections whose request is complete (being answered) are never closed for a newcomer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger("locus.server")

# Descriptors kept free for everything besides connections (model files, logs, pipes, threads).
FD_RESERVE = 64


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the (soft, hard) now in force."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return (1 << 16, 1 << 16)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if want == resource.RLIM_INFINITY or want > 1 << 20:
        want = 1 << 20
    if sys.platform == "darwin":
        want = min(want, _macos_max_files())
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, e)
    return soft, hard


def _macos_max_files() -> int:
    # macOS refuses a soft limit above kern.maxfilesperproc (RLIM_INFINITY as hard means "any").
    try:
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "kern.maxfilesperproc"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        return int(out.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return 10240  # OPEN_MAX


def open_fds() -> int:
    """Descriptors open in this process now (0 when the platform cannot say)."""
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(d))
        except OSError:
            continue
    return 0


def connection_cap(wanted: int, backlog: int) -> int:
    """At most `wanted` connections, fewer when the descriptor limit would not hold them plus the
    descriptors already open, a few accept bursts (`backlog` each: asyncio accepts a burst before
    the previous one is counted) and a reserve."""
    soft, _ = raise_fd_limit()
    room = soft - open_fds() - 3 * backlog - FD_RESERVE
    return max(8, min(wanted, room))


class Limits:
    """Shared by every connection of one server: the cap, the header deadline, the connections
    waiting for headers and those still sending a body, each oldest first."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.waiting: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.receiving: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.evicted = 0
        self.evicted_receiving = 0
        self.timed_out = 0
        self.refused = 0

    def protocol(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """`base` (uvicorn's H11Protocol or HttpToolsProtocol) with these limits applied."""
        limits = self

        class Limited(base):  # type: ignore[valid-type, misc]
            _deadline: asyncio.TimerHandle | None = None

            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                limits._admit(self)

            def data_received(self, data: bytes) -> None:
                cycle = self.cycle
                super().data_received(data)
                if self.cycle is not cycle:  # a request's headers arrived
                    limits._started(self)
                elif self in limits.receiving and not self.cycle.more_body:
                    limits._busy(self)  # the body is complete: the request is being answered
                elif self in limits.waiting and self._deadline is None:
                    limits._arm(self)  # the next keep-alive request has begun: headers due

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if not self.transport.is_closing():
                    limits._idle(self, arm=False)  # uvicorn's keep-alive timer runs meanwhile

            def connection_lost(self, exc: Exception | None) -> None:
                limits._busy(self)
                super().connection_lost(exc)

        Limited.__name__ = Limited.__qualname__ = f"Limited{base.__name__}"
        return Limited

    # -- bookkeeping (all on the event loop) ---------------------------------------------------
    def _admit(self, conn: Any) -> None:
        self._idle(conn, arm=True)
        while len(conn.connections) > self.max_connections:
            victim = next((c for c in self.waiting if c is not conn), None)
            what = "closing the connection that waited longest for a request"
            if victim is None:
                victim = next(iter(self.receiving), None)
                what = "closing the connection that has been sending a request body longest"
                self.evicted_receiving += victim is not None
            if victim is None:  # every other connection is being answered: refuse the newcomer
                self.refused += 1
                log.warning("connection limit (%d) reached: refusing a new connection", self.max_connections)
                self._close(conn)
                return
            self.evicted += 1
            log.warning("connection limit (%d) reached: " + what, self.max_connections)
            self._close(victim)

    def _idle(self, conn: Any, arm: bool) -> None:
        self.receiving.pop(conn, None)
        self.waiting[conn] = None
        self.waiting.move_to_end(conn)
        if arm:
            self._arm(conn)

    def _started(self, conn: Any) -> None:
        self._busy(conn)
        cycle = conn.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self.receiving[conn] = None  # the body deadline is the Guard's (security.py)

    def _busy(self, conn: Any) -> None:
        self.waiting.pop(conn, None)
        self.receiving.pop(conn, None)
        if conn._deadline is not None:
            conn._deadline.cancel()
            conn._deadline = None

    def _arm(self, conn: Any) -> None:
        conn._deadline = conn.loop.call_later(self.header_timeout, self._expire, conn)

    def _expire(self, conn: Any) -> None:
        conn._deadline = None
        cycle = conn.cycle
        if conn in self.waiting and (cycle is None or cycle.response_complete):
            self.timed_out += 1
            log.info("closing a connection that sent no complete request headers in %gs", self.header_timeout)
            self._close(conn)

    def _close(self, conn: Any) -> None:
        self._busy(conn)
        conn.connections.discard(conn)  # counted out now; connection_lost follows
        if not conn.transport.is_closing():
            conn.transport.close()


class RepeatFilter(logging.Filter):
    """Lets a message through once per `window` seconds; says how many were dropped meanwhile.

    Keyed by logger, format string and exception type, so a flood of one failure (EMFILE from
    accept, invalid HTTP) takes a few lines, not megabytes.
    """

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), exc)
        now = time.monotonic()
        with self._lock:
            since, dropped = self._seen.get(key, (0.0, 0))
            if now - since < self.window:
                self._seen[key] = (since, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # forget old keys
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed in the last {self.window:g}s]"
        return True


_FILTERED = ("asyncio", "uvicorn.error", "locus.server")


def rate_limit_logs(window: float = 10.0) -> None:
    """Install one RepeatFilter on the loggers that repeat under abuse (idempotent)."""
    for name in _FILTERED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(window))
