"""Half-open connections: a real server process under a low descriptor limit keeps answering and
closes sockets that send no complete headers; repeated errors are logged a few times, not forever."""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from app.server.limits import RepeatFilter
from tests import proctree

# The server process: a 1024-descriptor limit (soft and hard, so raising it cannot help; set after
# the imports, as mlx-lm sets its own when imported) and a short header deadline; it prints its
# port once listening.
_SERVER = textwrap.dedent("""
    import resource, sys, threading, time
    from app.server import ServerConfig, create_app, make_server
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    fields = ServerConfig.__dataclass_fields__
    cfg = ServerConfig(port=0, log_level="info", **{k: v for k, v in
                       {"header_timeout": 2.0}.items() if k in fields})
    server = make_server(create_app(None, cfg), cfg)

    def announce():
        while not server.started:
            time.sleep(0.01)
        print(server.servers[0].sockets[0].getsockname()[1], flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
""")
HALF_OPEN = 2500


def _raise_own_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"this test needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def _sockets(pid: int) -> int:
    """Sockets open in process `pid` (Linux)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts the server's sockets in /proc")
def test_half_open_connections_neither_starve_nor_stay(tmp_path):
    _raise_own_limit(HALF_OPEN + 1024)
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        proc = proctree.popen(
            [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    socks: list[socket.socket] = []
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), log_path.read_text()[-2000:]
        port = int(line)
        url = f"http://127.0.0.1:{port}/health"
        assert httpx.get(url, timeout=10).status_code == 200
        idle = _sockets(proc.pid)

        # 2,500 sockets that connect and then send nothing, or half a request's headers.
        for _ in range(HALF_OPEN):
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS, errno.EAGAIN), os.strerror(err)
            socks.append(s)
        time.sleep(0.5)
        talkers = {}
        for i, s in enumerate(socks):
            if i % 2:
                try:
                    s.send(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: ")
                    talkers[s.fileno()] = s
                except OSError:
                    pass  # not connected yet (the accept queue was full): it stays silent

        # A real client still gets answers while they are all open.
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            r = httpx.get(url, timeout=10)
            times.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["status"] == "ok"
        print(f"\n/health beside {HALF_OPEN} half-open connections: {', '.join(f'{t:.3f}s' for t in times)}")

        # The server closes every connection that sent no complete headers within 2 s (those
        # that finish connecting late get their own 2 s): its descriptors fall back to the few it
        # had. (Sockets the kernel never handed to it, dropped from a full accept queue, cost
        # it nothing and are not counted.)
        peak = _sockets(proc.pid)
        deadline = time.monotonic() + 20
        while _sockets(proc.pid) > idle + 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        left = _sockets(proc.pid)
        print(f"server sockets: {idle} idle, {peak} under the flood, {left} after the deadline")
        assert left <= idle + 2, f"{left - idle} connections still open on the server after 20 s"
        # Those that sent half a request were closed (or reset) from the server's side.
        poll = select.poll()
        for fd in talkers:
            poll.register(fd, select.POLLIN)
        closed = {fd for fd, _ in poll.poll(2000) if _closed_by_peer(talkers[fd])}
        assert len(closed) == len(talkers), f"{len(talkers) - len(closed)} slow sockets left open"
        print(f"{len(talkers)} sockets sent half a request: all closed")
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=30)
    log = log_path.read_text()
    assert len(log) < 100_000, f"the log grew to {len(log)} bytes"
    assert "Too many open files" not in log


def test_repeated_log_lines_are_rate_limited():
    logger = logging.getLogger("locus.test.repeat")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    flt = RepeatFilter(window=0.2)
    logger.addFilter(flt)
    try:
        for _ in range(1000):
            logger.error("accept failed: %s", "Too many open files")
        logger.error("something else")
        time.sleep(0.25)
        logger.error("accept failed: %s", "Too many open files")
    finally:
        logger.removeFilter(flt)
        logger.removeHandler(handler)
    assert seen[:2] == ["accept failed: Too many open files", "something else"]
    assert len(seen) == 3 and "999 similar messages suppressed" in seen[2]


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before answering"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    size = int(
        next(
            v
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
            if k.strip().lower() == b"content-length"
        )
    )
    while len(rest) < size:
        rest += s.recv(65536)
    return head


def test_header_deadline_on_keep_alive_and_body_pause(serve, scripted):
    srv = serve(scripted("ok"), header_timeout=0.5, body_timeout=0.5)
    get = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        # Headers sent in pieces, each within the deadline's reach, are fine.
        s.sendall(get[:10])
        time.sleep(0.2)
        s.sendall(get[10:])
        assert b" 200 " in _read_response(s)
        # Idle after an answer: keep-alive (not the header deadline) applies...
        time.sleep(0.8)
        s.sendall(get)
        assert b" 200 " in _read_response(s)
        # ...but a next request's headers that stop halfway are cut off.
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.")
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 0.3 < time.monotonic() - t0 < 3
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        # A body that stops arriving gets a 408.
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        head = _read_response(s)
        assert b" 408 " in head
    assert srv.server.limits.timed_out >= 1
