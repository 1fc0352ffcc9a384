"""A local HTTP server standing in for the Hugging Face Hub: the model, tree and `resolve` endpoints
(HEAD with the Hub's X-Repo-Commit / X-Linked-Etag headers, GET with Range), enough for
huggingface_hub's snapshot_download and app.hub."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def commit_of(files: dict[str, bytes]) -> str:
    """The repo's commit sha: derived from its content, so a changed repo is a new commit."""
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
    return h.hexdigest()


def _lfs(name: str) -> bool:
    return name.endswith(".safetensors")  # like the Hub: weights in LFS, small files in git


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves `repos` = {repo_id: {filename: bytes}}; `delay` seconds between 64 KiB chunks.

    `corrupt` = {filename: bytes}: served instead of the real content while the listing keeps the
    real checksum (a damaged transfer)."""

    def __init__(
        self,
        repos: dict[str, dict[str, bytes]],
        *,
        delay: float = 0.0,
        token: str | None = None,
        corrupt: dict[str, bytes] | None = None,
        listing: list[dict[str, Any]] | None = None,
    ) -> None:
        self.repos = repos
        # /api/models: what a search lists (the Hub's JSON: id, tags, downloads, safetensors, config).
        self.listing = list(listing or [])
        self.delay = delay
        self.token = token  # when set, requests must carry it
        self.corrupt = dict(corrupt or {})
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.gate = threading.Event()  # cleared: downloads wait (lets tests pause mid-file)
        self.gate.set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                hub.requests.append(
                    (f"{self.command} {self.path}", {k.lower(): v for k, v in self.headers.items()})
                )
                if hub.token and self.headers.get("authorization") != f"Bearer {hub.token}":
                    return self._send(401, b'{"error": "gated"}', {"x-error-code": "GatedRepo"})
                path = self.path.split("?", 1)[0]
                if path.rstrip("/") == "/api/models":
                    return self._search()
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?/?$", path)
                if m:
                    files = hub.repos.get(m.group(1))
                    if files is None:
                        return self._send(
                            404, b'{"error": "Repository not found"}', {"x-error-code": "RepoNotFound"}
                        )
                    if m.group(2) == "tree":
                        body: Any = [self._entry(n, d) for n, d in files.items()]
                    else:
                        body = {
                            "id": m.group(1),
                            "sha": commit_of(files),
                            "siblings": [{"rfilename": n, "size": len(d)} for n, d in files.items()],
                        }
                    return self._send(200, json.dumps(body).encode())
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m and m.group(3) in hub.repos.get(m.group(1), {}):
                    files = hub.repos[m.group(1)]
                    return self._file(m.group(3), files, head)
                self._send(404, b"not found", {"x-error-code": "EntryNotFound"})

            def _search(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                q = parse_qs(urlsplit(self.path).query)
                words = (q.get("search") or [""])[0].lower()
                tags = q.get("filter") or []
                found = [
                    m
                    for m in hub.listing
                    if words in m["id"].lower() and all(t in m.get("tags", []) for t in tags)
                ]
                found.sort(key=lambda m: -int(m.get("downloads", 0)))
                limit = int((q.get("limit") or [len(found)])[0])
                self._send(200, json.dumps(found[:limit]).encode())

            def _entry(self, name: str, data: bytes) -> dict:
                e: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                if _lfs(name):
                    e["lfs"] = {
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
                return e

            def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _file(self, name: str, files: dict[str, bytes], head: bool) -> None:
                data = files[name]
                etag = hashlib.sha256(data).hexdigest() if _lfs(name) else _blob_id(data)
                served = hub.corrupt.get(name, data)
                start = 0
                rng = self.headers.get("range")
                if rng and not head:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(served):
                        return self._send(416, b"")
                    self.send_response(206)
                    self.send_header("content-range", f"bytes {start}-{len(served) - 1}/{len(served)}")
                else:
                    self.send_response(200)
                self.send_header("content-length", str(len(served) - start))
                self.send_header("etag", f'"{etag}"')
                self.send_header("x-repo-commit", commit_of(files))
                if _lfs(name):
                    self.send_header("x-linked-etag", f'"{etag}"')
                    self.send_header("x-linked-size", str(len(data)))
                self.end_headers()
                if head:
                    return
                try:
                    for i in range(start, len(served), 65536):
                        hub.gate.wait(10)
                        self.wfile.write(served[i : i + 65536])
                        self.wfile.flush()
                        if hub.delay:
                            time.sleep(hub.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def gets(self, name: str) -> int:
        """How many times `name`'s content was requested (GET on resolve)."""
        return sum(1 for r, _ in self.requests if r.startswith("GET") and r.endswith("/" + name))

    def __enter__(self) -> FakeHub:
        from huggingface_hub import constants

        # huggingface_hub reads 10 MB per progress update; tiny test files need finer steps.
        self._chunk = constants.DOWNLOAD_CHUNK_SIZE
        constants.DOWNLOAD_CHUNK_SIZE = 65536
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from huggingface_hub import constants

        constants.DOWNLOAD_CHUNK_SIZE = self._chunk
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
