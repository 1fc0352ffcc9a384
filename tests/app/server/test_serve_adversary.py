"""Server attacks of hardening round 3 through the real `locus serve --demo` process: a thousand slow
bodies do not lock a new client out, an incomplete oversized body is refused while it arrives, and
control characters a client sends never reach the log raw."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import proctree

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[int, subprocess.Popen[str]]]:  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data")}
    proc = proctree.popen(
        [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        yield port, proc
    finally:
        proc.kill()
        proc.wait()


def _slow_body(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    head = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    s.send((head + "Content-Length: 30000000\r\n\r\n{").encode())
    return s


def test_a_thousand_slow_bodies_do_not_lock_out_a_new_client(served) -> None:  # type: ignore[no-untyped-def]
    port, _ = served
    socks = []
    try:
        for _ in range(1100):
            try:
                socks.append(_slow_body(port))
            except OSError:
                break
        for s in socks:  # one more byte each: they are "progressing", not idle
            try:
                s.send(b" ")
            except OSError:
                pass
        t0 = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=20)
        assert r.status_code == 200 and time.monotonic() - t0 < 10
    finally:
        for s in socks:
            s.close()


def test_incomplete_bodies_together_are_refused_while_they_arrive(served) -> None:  # type: ignore[no-untyped-def]
    # Each body is under the 32 MB per-request cap; together they pass the 256 MB shared budget.
    port, _ = served
    head = "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    chunk = b" " * (1 << 20)
    refused = 0
    socks = []
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            socks.append(s)
            s.sendall((head + "Content-Length: 30000000\r\n\r\n").encode())
            try:
                for _ in range(28):  # 28 MiB of the 30 MB declared: never complete
                    s.sendall(chunk)
            except OSError:
                pass  # refused and closed mid-body
        for s in socks:
            s.settimeout(1)  # a refused body is answered at once; a held one waits
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 413")
            except OSError:
                continue
    finally:
        for s in socks:
            s.close()
    assert refused >= 12 - 256 // 28  # at most what fits in the budget is held


def test_control_characters_never_reach_the_log_raw(served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port, _ = served
    httpx.post(
        f"http://127.0.0.1:{port}/v1/messages",
        headers={"User-Agent": "evil\x1b]0;pwned\x07\x1b[2K"},
        json={"model": "m\x1b[31mred", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v1/\x1b[2Kmodels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.recv(4096)
    time.sleep(0.5)
    log = (tmp_path / "serve.log").read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log
