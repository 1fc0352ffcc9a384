"""One record per API request, kept in a small ring buffer and logged at debug level.

The Server view (or anyone holding the Service) reads `service.requests.records()` to show a
request log; `locus serve --log-level debug` prints each record as one line.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("locus.server.requests")

# C0, DEL and C1 control characters, line and paragraph separators, bidirectional overrides:
# what a client could use to move a terminal's cursor, recolour it or forge log lines.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_one(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str, keep: str = "") -> str:
    """`text` with control characters written as \\xNN (\\uNNNN above U+00FF), but those in `keep`."""
    if not _CONTROL.search(text):
        return text
    if keep:
        return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape_one(m), text)
    return _CONTROL.sub(_escape_one, text)


class EscapeFilter(logging.Filter):
    """Escapes control characters in a record's message (and in its traceback, newlines aside)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler's own error report
            return True
        escaped = escape_controls(message)
        if escaped is not message:
            record.msg, record.args = escaped, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(record.exc_text, keep="\n")
        return True


_ESCAPED = ("asyncio", "uvicorn.error", "uvicorn.access", "locus.server", "locus.server.requests")


def escape_logs() -> None:
    """Install one EscapeFilter on the loggers that may echo what clients send (idempotent)."""
    for name in _ESCAPED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, EscapeFilter) for f in logger.filters):
            logger.addFilter(EscapeFilter())


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
    note: str = ""  # what the server left out of the request (e.g. hosted tools it cannot run)

    @property
    def new_tokens(self) -> int:
        """Prompt tokens that had to be prefilled (not read from the cache)."""
        return max(self.prompt_tokens - self.cached_tokens, 0)

    def line(self) -> str:
        """The record as one log line."""
        parts = [
            f"{escape_controls(self.method)} {escape_controls(self.endpoint)} {self.status}",
            f"model={escape_controls(self.model) or '-'}",
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
        if self.note:
            parts.append(f"note={self.note!r}")
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
