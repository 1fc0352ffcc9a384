"""Attacks on `locus serve`, each reproduced over real sockets and shown refused or harmless:
bodies held in memory, slow bodies holding the connection table, the Responses store growing
without bound or splitting one key into many owners, control characters reaching the log."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import sqlite3
import threading
import time

import httpx
import openai
import pytest

MSG = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _head(length: int | None, path: str = "/v1/messages") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return f"{head}{size}\r\n\r\n".encode()


def _answer(s: socket.socket, timeout: float = 10.0) -> tuple[int, dict]:
    """The status and JSON body of the next response on `s`; AssertionError if none comes in time."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout} s") from None
        assert chunk, "closed before answering"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = dict(h.split(b":", 1) for h in head.split(b"\r\n")[1:])
    size = int(next(v for k, v in fields.items() if k.strip().lower() == b"content-length"))
    while len(rest) < size:
        rest += s.recv(65536)
    return int(head.split()[1]), json.loads(rest[:size])


def _silent(s: socket.socket) -> bool:
    """Whether nothing (no answer, no close) has come on `s`."""
    return not select.select([s], [], [], 0)[0]


def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- 1. request bodies: per request and all together, counted as they arrive ------------------


def test_bodies_held_together_are_bounded_before_they_are_complete(serve, scripted):
    srv = serve(scripted("ok"), max_body_bytes=1_000_000, body_budget_bytes=2_500_000)
    budget = srv.app.bodies
    raw = json.dumps(MSG).encode()
    body = raw + b" " * (1_000_000 - len(raw))  # valid JSON, 1 MB
    with (
        socket.create_connection(("127.0.0.1", srv.port)) as a,
        socket.create_connection(("127.0.0.1", srv.port)) as b,
        socket.create_connection(("127.0.0.1", srv.port)) as c,
    ):
        # Two 1 MB bodies stop 100 KB short: 1.8 MB held, waiting for the rest.
        for s in (a, b):
            s.sendall(_head(len(body)) + body[:900_000])
        _until(lambda: budget.held >= 1_800_000)
        # A third, within the per-request limit but not beside the others, is refused while
        # it is still incomplete (900 KB of 1 MB sent).
        c.sendall(_head(len(body)) + body[:900_000])
        status, err = _answer(c)
        assert status == 413 and err["error"]["type"] == "request_too_large"
        assert "already holding" in err["error"]["message"]
        assert budget.peak <= 2_500_000 and budget.refused >= 1
        # A small request still fits; the two held bodies were neither answered nor dropped.
        assert httpx.post(srv.url + "/v1/messages", json=MSG, timeout=10).status_code == 200
        assert _silent(a) and _silent(b)
        for s in (a, b):
            s.sendall(body[900_000:])
            assert _answer(s)[0] == 200
    _until(lambda: budget.held == 0)
    print(f"\nbody budget 2.5 MB: peak held {budget.peak} bytes, {budget.refused} refused")


def test_one_incomplete_body_over_its_limit_is_refused_while_it_arrives(serve, scripted):
    srv = serve(scripted("ok"), max_body_bytes=100_000)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        # Chunked (no declared length): 150 KB sent, the body never finished.
        s.sendall(_head(None, "/v1/chat/completions") + b"%x\r\n%s\r\n" % (150_000, b"x" * 150_000))
        status, err = _answer(s)
    assert status == 413 and err["error"]["code"] == "request_too_large"  # OpenAI's shape
    assert "limit of 100000 bytes" in err["error"]["message"]
    assert srv.app.bodies.peak <= 100_000
    _until(lambda: srv.app.bodies.held == 0)


# -- 2. slow bodies: a deadline, and no lock-out of new clients ----------------------------------


def _dribble(socks: list[socket.socket], stop: threading.Event, every: float) -> None:
    """Send one body byte on every socket each `every` seconds (keeps an idle timer from firing)."""
    while not stop.wait(every):
        for s in socks:
            try:
                s.send(b" ")
            except OSError:
                pass


def test_slow_bodies_cannot_lock_out_a_new_client(serve, scripted):
    srv = serve(scripted("ok"), max_connections=20, body_timeout=1.0)
    limits = srv.server.limits
    cap = limits.max_connections
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(cap)]
    stop = threading.Event()
    dribbler = threading.Thread(target=_dribble, args=(socks, stop, 0.25), daemon=True)
    try:
        for s in socks:
            s.sendall(_head(1000) + b"{")
        _until(lambda: len(limits.receiving) == cap)
        dribbler.start()
        time.sleep(1.5)  # longer than body_timeout: the dribble keeps them all alive
        assert len(limits.receiving) == cap
        took = []
        for _ in range(3):  # each new client takes the place of the oldest slow sender...
            t0 = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
            took.append(time.monotonic() - t0)
            s = socket.create_connection(("127.0.0.1", srv.port))  # ...which comes back
            s.sendall(_head(1000) + b"{")
            socks.append(s)
            _until(lambda: len(limits.receiving) == cap)
        assert limits.evicted_receiving == 3 and limits.refused == 0
        _until(lambda: not any(_silent(s) for s in socks[:3]))
        assert all(s.recv(1) == b"" for s in socks[:3])  # the oldest were closed, not answered
        assert all(_silent(s) for s in socks[3:])  # the others still wait for their bodies
        took = ", ".join(f"{t:.3f}s" for t in took)
        print(f"\n{cap} slow bodies (a byte every 0.25 s): new clients served in {took}")
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_a_trickled_body_is_cut_at_the_deadline(serve, scripted):
    srv = serve(scripted("ok"), body_timeout=1.0, body_deadline=2.0)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(_head(1000, "/v1/chat/completions") + b"{")
        t0 = time.monotonic()
        while _silent(s) and time.monotonic() - t0 < 6:
            s.send(b" ")  # a byte every 0.25 s: never idle for body_timeout
            time.sleep(0.25)
        took = time.monotonic() - t0
        status, err = _answer(s, timeout=1)
    assert status == 408 and "did not arrive in full within 2 s" in err["error"]["message"]
    # Not before the deadline (bytes kept arriving, so not the 1 s idle timeout), and the loop ended
    # on the server's answer rather than its own 6 s cutoff; no upper bound tied to this box's speed.
    assert took > 1.5 and took < 6
    print(f"\ntrickled body cut after {took:.2f}s (deadline 2 s, idle timeout 1 s)")


# -- 3. stored Responses: bounded in bytes, owners from the parsed key ------------------------


def _row(i: int, size: int = 1000) -> dict:
    return {"id": f"resp_{i}", "pad": "x" * size}


def test_the_store_is_bounded_in_bytes_per_key_and_in_all(tmp_path):
    from app.server.responses_api import ResponseStore

    store = ResponseStore(tmp_path / "r.sqlite3", keep=100, owner_bytes=3500, total_bytes=6000)
    for i in range(5):
        store.put("a", _row(i), [])
    assert [store.get("a", f"resp_{i}") is not None for i in range(5)] == [False, False, True, True, True]
    for i in range(5, 8):
        store.put(f"owner{i}", _row(i), [])  # three more keys: the oldest of key "a" go first
    kept = [i for i in range(8) if store.get("a" if i < 5 else f"owner{i}", f"resp_{i}") is not None]
    assert kept == [3, 4, 5, 6, 7]
    assert store.bytes <= 6000
    assert store.delete("owner7", "resp_7") and not store.delete("owner7", "resp_7")
    again = ResponseStore(tmp_path / "r.sqlite3", keep=100, owner_bytes=3500, total_bytes=6000)
    assert again.bytes == store.bytes == sum(len(json.dumps(_row(i))) + 2 for i in (3, 4, 5, 6))


def test_a_store_written_before_sizes_is_sized_and_trimmed(tmp_path):
    from app.server.responses_api import ResponseStore

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
        "created REAL NOT NULL, response TEXT NOT NULL, conversation TEXT NOT NULL)"
    )
    for i in range(4):
        db.execute("INSERT INTO responses VALUES (?, 'a', ?, ?, '[]')", (f"resp_{i}", i, json.dumps(_row(i))))
    db.commit()
    db.close()
    store = ResponseStore(path, total_bytes=2500)
    assert [store.get("a", f"resp_{i}") is not None for i in range(4)] == [False, False, True, True]


def test_stored_responses_of_many_keys_stay_within_the_total(serve, scripted):
    srv = serve(scripted("ok"), responses_total_bytes=20_000)
    store = srv.app.app.state.responses
    ids = []
    for i in range(40):  # without a server key, every key is a new owner
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key=f"key-{i}", max_retries=0)
        ids.append(c.responses.create(model="m", input="x" * 400, reasoning={"effort": "none"}).id)
    assert 0 < store.bytes <= 20_000
    first = openai.OpenAI(base_url=srv.url + "/v1", api_key="key-0", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(ids[0])  # the oldest went first
    last = openai.OpenAI(base_url=srv.url + "/v1", api_key="key-39", max_retries=0)
    assert last.responses.retrieve(ids[-1]).id == ids[-1]
    print(f"\n40 keys, a 20,000-byte total: {store.bytes} bytes kept")


def test_the_same_key_is_the_same_owner_however_it_is_sent(serve, scripted):
    srv = serve(scripted("ok"))
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k1", max_retries=0)
    rid = c.responses.create(model="m", input="Hi", reasoning={"effort": "none"}).id
    url = f"{srv.url}/v1/responses/{rid}"
    same = [
        {"authorization": "bearer    k1"},
        {"authorization": "BEARER\tk1"},
        {"authorization": "Bearer k1", "x-api-key": ""},
        {"x-api-key": "k1"},
    ]
    for headers in same:
        assert httpx.get(url, headers=headers).status_code == 200, headers
    for headers in ({"authorization": "Bearer k2"}, {"authorization": "k1"}, {}):
        assert httpx.get(url, headers=headers).status_code == 404, headers


def test_the_key_check_parses_the_header_the_same_way(serve, scripted):
    srv = serve(scripted("ok"), api_key="sk-1")
    for auth in ("Bearer sk-1", "bearer  sk-1", "BEARER\tsk-1"):
        assert httpx.get(srv.url + "/v1/models", headers={"authorization": auth}).status_code == 200
    for auth in ("Bearer sk-2", "Basic sk-1", "sk-1", "Bearer"):
        assert httpx.get(srv.url + "/v1/models", headers={"authorization": auth}).status_code == 401


# -- 4. control characters in the log -----------------------------------------------------------


def _raw_get(port: int, target: bytes, agent: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: %s\r\n\r\n" % (target, agent))
        return _answer(s)[0]


def test_control_characters_from_clients_are_escaped_in_the_log(serve, scripted, caplog):
    from app.server.requestlog import EscapeFilter

    srv = serve(scripted("ok"))
    for name in ("locus.server", "locus.server.requests", "uvicorn.error"):
        assert any(isinstance(f, EscapeFilter) for f in logging.getLogger(name).filters), name
    with caplog.at_level("DEBUG", logger="locus.server"):
        # A path with ESC and BEL (percent-encoded), a User-Agent with a C1 CSI byte, and a
        # model name with an OSC sequence that would retitle the terminal.
        assert _raw_get(srv.port, b"/v1/%1b[31mred%07", b"curl \x9b2J") == 404
        body = {"model": "\x1b]0;owned\x07", "messages": []}
        assert httpx.post(srv.url + "/v1/messages", json=body).status_code == 400
    records = srv.app.service.requests.records()
    lines = [r.line() for r in records]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("locus.server")]
    assert records[0].endpoint.startswith("/v1/\x1b[31m")  # kept as sent, escaped when written
    for text in (*lines, *logged):
        assert not CONTROL.search(text), text
    assert "/v1/\\x1b[31mred\\x07" in lines[0] and "\\x9b2J" in lines[0]
    assert "model=\\x1b]0;owned\\x07" in lines[1]
    assert len(logged) == 2


def test_the_escape_filter_covers_messages_and_tracebacks():
    from app.server.requestlog import EscapeFilter, escape_controls

    assert escape_controls("a\x1b[2Jb\x7f\x85\u202e\n") == "a\\x1b[2Jb\\x7f\\x85\\u202e\\x0a"
    assert escape_controls("plain ünïcode") == "plain ünïcode"
    logger = logging.getLogger("locus.test.escape")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Keep()
    logger.addHandler(handler)
    flt = EscapeFilter()
    logger.addFilter(flt)
    try:
        logger.warning("client said %s", "\x1b]0;x\x07")
        try:
            raise ValueError("bad model \x1b[2J")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeFilter(flt)
        logger.removeHandler(handler)
    assert seen[0] == "client said \\x1b]0;x\\x07"
    assert "bad model \\x1b[2J" in seen[1] and "Traceback" in seen[1]
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", seen[1])  # newlines kept, nothing else
