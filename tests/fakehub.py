"""A local HTTP server standing in for the Hugging Face Hub: the model API and `resolve` downloads
(with Range requests), enough for huggingface-hub clients and app.hub."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    """Serves `repos` = {repo_id: {filename: bytes}}; `delay` seconds between 64 KiB chunks."""

    def __init__(self, repos: dict[str, dict[str, bytes]], *, delay: float = 0.0,
                 token: str | None = None) -> None:  # fmt: skip
        self.repos = repos
        self.delay = delay
        self.token = token  # when set, requests must carry it
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.gate = threading.Event()  # cleared: downloads wait (lets tests pause mid-file)
        self.gate.set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if hub.token and self.headers.get("authorization") != f"Bearer {hub.token}":
                    return self._send(401, b'{"error": "unauthorized"}')
                path = self.path.split("?", 1)[0]
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
                if m:
                    files = hub.repos.get(m.group(1))
                    if files is None:
                        return self._send(404, b'{"error": "Repository not found"}')
                    body = {"id": m.group(1), "sha": "0" * 40, "siblings": [
                        {"rfilename": n, "size": len(d)} for n, d in files.items()]}  # fmt: skip
                    return self._send(200, json.dumps(body).encode())
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m and m.group(3) in hub.repos.get(m.group(1), {}):
                    return self._file(hub.repos[m.group(1)][m.group(3)])
                self._send(404, b"not found")

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, data: bytes) -> None:
                start = 0
                rng = self.headers.get("range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"")
                    self.send_response(206)
                    self.send_header("content-range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("content-length", str(len(data) - start))
                self.send_header("etag", '"abc"')
                self.end_headers()
                import time

                try:
                    for i in range(start, len(data), 65536):
                        hub.gate.wait(10)
                        self.wfile.write(data[i : i + 65536])
                        self.wfile.flush()
                        if hub.delay:
                            time.sleep(hub.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
