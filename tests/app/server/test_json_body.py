"""Malformed JSON on every POST endpoint: a 400 in that API's shape on a connection that stays open;
405 names the allowed methods; the OpenAPI schema documents the errors."""

from __future__ import annotations

import json
import socket

import pytest

from app.server.errors import flavor_of

NESTED = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
LONE_SURROGATE = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "\\ud800"}]}'
LOW_SURROGATE_KEY = b'{"model": "m", "max_tokens": 5, "messages": [], "\\udc00": 1}'
INVALID_UTF8 = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "\xff\xfe"}]}'
HUGE_INT = b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}"
BAD = {
    "nested arrays": NESTED,
    "nested objects": NESTED_OBJECTS,
    "lone surrogate": LONE_SURROGATE,
    "surrogate key": LOW_SURROGATE_KEY,
    "invalid UTF-8": INVALID_UTF8,
    "huge integer": HUGE_INT,
}


class Conn:
    """One raw HTTP/1.1 keep-alive connection, so a test can see it survive an error."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._read()
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        size = int(headers.get("content-length", 0))
        while len(self.buf) < size:
            self._read()
        content, self.buf = self.buf[:size], self.buf[size:]
        return status, headers, content

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def _post_paths(srv) -> list[str]:
    paths = [r.path for r in srv.app.app.routes if "POST" in getattr(r, "methods", ())]
    assert {"/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions"} <= set(paths)
    return paths


def _assert_shape(path: str, status: int, content: bytes) -> str:
    err = json.loads(content)
    if flavor_of(path) == "openai":
        assert set(err) == {"error"} and err["error"]["type"] == "invalid_request_error", err
        return err["error"]["message"]
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    return err["error"]["message"]


@pytest.fixture
def server(serve, scripted):
    return serve(scripted("ok"))


def _valid_bodies() -> list[bytes]:
    """Requests that must still pass: an emoji as a surrogate pair escape, a deep real schema."""
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi 😀"}]}
    plain = json.dumps(body).encode()  # ensure_ascii: the emoji as the pair \ud83d\ude00
    assert b"\\ud83d\\ude00" in plain
    deep: dict = {"type": "object", "properties": {}}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    body["tools"] = [{"name": "f", "input_schema": deep}]
    return [plain, json.dumps(body).encode()]


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_json_is_a_400_and_the_connection_stays(server, case):
    conn = Conn(server.port)
    valid = _valid_bodies()
    try:
        for path in _post_paths(server):
            status, _, content = conn.request("POST", path, BAD[case])
            assert status == 400, (path, content[:300])
            message = _assert_shape(path, status, content)
            if case.startswith("nested"):
                assert "levels deep" in message
            elif "surrogate" in case:
                assert "surrogate" in message
            elif case == "invalid UTF-8":
                assert "not valid UTF-8" in message and "0xff" in message
            # The same connection answers the next request, and valid bodies still pass.
            status, _, content = conn.request("POST", "/v1/messages/count_tokens", valid[0])
            assert status == 200 and json.loads(content)["input_tokens"] > 0, content
        status, _, content = conn.request("POST", "/v1/messages/count_tokens", valid[1])
        assert status == 200, content
    finally:
        conn.close()


def test_wrong_method_is_405_with_allow(server):
    conn = Conn(server.port)
    try:
        status, headers, content = conn.request("GET", "/v1/messages")
        assert status == 405 and headers["allow"] == "POST"
        _assert_shape("/v1/messages", 405, content)
        status, headers, content = conn.request("DELETE", "/v1/chat/completions")
        assert status == 405 and headers["allow"] == "POST"
        assert json.loads(content)["error"]["message"].startswith("DELETE /v1/chat/completions")
        status, headers, _ = conn.request("POST", "/v1/models")
        assert status == 405 and "GET" in headers["allow"]
        status, _, _ = conn.request("GET", "/health")  # still the same connection
        assert status == 200
    finally:
        conn.close()


def test_openapi_documents_the_errors(server):
    conn = Conn(server.port)
    try:
        status, _, content = conn.request("GET", "/openapi.json")
    finally:
        conn.close()
    assert status == 200
    paths = json.loads(content)["paths"]
    for path in _post_paths(server):
        responses = paths[path]["post"]["responses"]
        assert {"400", "401", "403", "405", "413"} <= set(responses), (path, sorted(responses))
        assert "422" not in responses
        schema = responses["400"]["content"]["application/json"]["schema"]
        assert schema["required"] == (["error"] if flavor_of(path) == "openai" else ["type", "error"])
        assert "Allow" in responses["405"]["headers"]
    assert "404" in paths["/v1/models/{model_id}"]["get"]["responses"]
