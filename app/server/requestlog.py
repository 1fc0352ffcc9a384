"""One record per API request, kept in a small ring buffer and logged at debug level.

The Server view (or anyone holding the Service) reads `service.requests.records()` to show a
request log; `locus serve --log-level debug` prints each record as one line.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("locus.server.requests")


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request: who asked, what it cost, how it ended."""

    time: float  # when the request arrived (time.time())
    client: str  # the User-Agent header ("" when absent)
    method: str
    endpoint: str  # the path, e.g. /v1/messages
    model: str  # the model name the client asked for ("" when not known)
    status: int  # HTTP status (200 for a stream that started)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # read from the prompt cache
    ttft_s: float | None = None  # seconds from arrival to the first generated token
    output_tokens: int = 0
    finish_reason: str = ""  # stop | length | cancelled | error, or "" when nothing ran
    error: str = ""  # the message answered with a 4xx/5xx, or the generation's error
    duration_s: float = 0.0

    @property
    def new_tokens(self) -> int:
        """Prompt tokens that had to be prefilled (not read from the cache)."""
        return max(self.prompt_tokens - self.cached_tokens, 0)

    def line(self) -> str:
        """The record as one log line."""
        parts = [
            f"{self.method} {self.endpoint} {self.status}",
            f"model={self.model or '-'}",
            f"client={self.client or '-'!r}",
        ]
        if self.prompt_tokens or self.finish_reason:
            ttft = f"{self.ttft_s:.2f}s" if self.ttft_s is not None else "-"
            parts += [
                f"prompt={self.prompt_tokens} (cached {self.cached_tokens}, new {self.new_tokens})",
                f"ttft={ttft}",
                f"out={self.output_tokens}",
                f"finish={self.finish_reason or '-'}",
            ]
        parts.append(f"took={self.duration_s:.2f}s")
        if self.error:
            parts.append(f"reason={self.error!r}")
        return " ".join(parts)


class RequestLog:
    """The last `capacity` request records, safe to read from any thread."""

    def __init__(self, capacity: int = 500) -> None:
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)
        level = logging.INFO if 400 <= record.status < 500 else logging.DEBUG
        if record.status >= 500 or record.finish_reason == "error":
            level = logging.WARNING
        log.log(level, "%s", record.line())

    def records(self) -> list[RequestRecord]:
        """The kept records, oldest first."""
        with self._lock:
            return list(self._records)


def error_record(request: Any, status: int, message: str) -> RequestRecord:
    """The record of a request answered with an error before any generation ran."""
    started = getattr(request.state, "locus_arrived", None)
    return RequestRecord(
        time=time.time(),
        client=request.headers.get("user-agent", ""),
        method=request.method,
        endpoint=request.url.path,
        model=getattr(request.state, "locus_model", "") or "",
        status=status,
        error=message,
        duration_s=time.monotonic() - started if started is not None else 0.0,
    )
