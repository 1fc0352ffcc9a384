"""A hand-written OpenAI-compatible server for tests: a real HTTP server on 127.0.0.1 whose
answers each test writes on the wire (SSE chunks, errors, cut streams, silence)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Fake:
    """A real HTTP server on 127.0.0.1 (port 0) whose POST answers `respond(handler, body)` writes;
    GET /v1/models lists one model (`models="drop"`: closes the connection without an answer).
    Records each request (path, headers, JSON body)."""

    def __init__(self, respond: Callable[[Any, dict[str, Any]], None], models: Any = None):
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.models = models if models is not None else {"data": [{"id": "fake-model"}]}
        self.gone = threading.Event()  # a write to the client failed: it closed the connection
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append((self.path, dict(self.headers), None))
                if self.path.rstrip("/") == "/v1/models" and fake.models == "drop":
                    self.close_connection = True  # as mlx_lm.server 0.32 without an HF cache folder
                elif self.path.rstrip("/") == "/v1/models":
                    send_json(self, 200, fake.models)
                else:
                    send_json(self, 404, {"error": {"message": "no such path"}})

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"null")
                fake.requests.append((self.path, dict(self.headers), body))
                try:
                    fake.respond(self, body)
                except OSError:
                    fake.gone.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def posts(self, path: str = "/v1/chat/completions") -> list[Any]:
        return [b for p, _, b in self.requests if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(h: Any, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def start_sse(h: Any) -> None:
    h.send_response(200)
    h.send_header("content-type", "text/event-stream")
    h.end_headers()  # no length: the stream ends when the connection closes (HTTP/1.0)


def send_event(h: Any, obj: Any) -> None:
    h.wfile.write(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode())
    h.wfile.flush()


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def sse(*events: Any, done: bool = True) -> Callable[[Any, dict[str, Any]], None]:
    def respond(h: Any, body: dict[str, Any]) -> None:
        start_sse(h)
        for ev in events:
            send_event(h, ev)
        if done:
            send_event(h, "[DONE]")

    return respond
