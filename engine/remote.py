"""A model on another machine: `RemoteBackend` speaks OpenAI chat completions (streamed, SSE) to a
server's OpenAI base URL, e.g. `http://host:8000/v1` (vLLM, SGLang, llama-server, LM Studio,
Ollama, mlx_lm.server, another `locus serve`).

Standard library only (http.client). Nothing is sent anywhere unless a user gave the URL. Each
request runs on its own thread and connection; cancelling a request closes its connection, which
is how OpenAI-compatible servers learn to stop generating.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .backend import BackendInfo, BackendStats
from .errors import ContextLengthError, EngineError, RequestError
from .events import (
    Done,
    ErrorKind,
    FinishReason,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)
from .image import ImageError, _read_source, load_image
from .parser import StreamParser
from .request import GenerationRequest, GenerationResult, PreparedRequest, RequestHandle

DEFAULT_TIMEOUT = 300.0  # seconds of silence before a request is given up (a long prefill sends none)
CONNECT_TIMEOUT = 10.0
_ACCEPTED_IMAGES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
# Finish reasons of OpenAI-compatible servers, as Locus's.
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "length": "length",
    "abort": "cancelled",
    "cancelled": "cancelled",
    "error": "error",
}

log = logging.getLogger(__name__)


# The fields that steer decoding (request.DECODING_FIELDS) which `_body` does not send, and why; each
# other one is sent or refused (tests check that every field is one or the other).
NOT_SENT = {
    "session": "the server keeps its own prompt cache",
    "use_cache": "the server keeps its own prompt cache",
    "mtp": "the server decides on speculative decoding",
    "thinking_budget": "OpenAI's API has no such field",
}


class RemoteError(EngineError):
    """A remote request failed; `kind` says whose fault (events.ErrorKind)."""

    def __init__(self, message: str, kind: ErrorKind = "unavailable", reached: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.reached = reached  # False: no connection to the server was made at all


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes


class RemoteHandle(RequestHandle):
    """A request running on a remote server; `cancel` closes its connection at once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._link: tuple[http.client.HTTPConnection, socket.socket | None] | None = None

    def cancel(self) -> None:
        """Stop the request: its connection is closed and it ends with finish_reason "cancelled"."""
        super().cancel()
        with self._lock:
            link = self._link
        if link is not None:
            _shut(*link)

    def _attach(self, conn: http.client.HTTPConnection, sock: socket.socket | None) -> bool:
        """Remember the request's connection; False when the request was already cancelled."""
        with self._lock:
            self._link = (conn, sock)
        return not self.cancelled


def _shut(conn: http.client.HTTPConnection, sock: socket.socket | None = None) -> None:
    # shutdown() wakes a thread blocked reading the socket. The socket is passed in: a response
    # read to the connection's close takes it over, and `conn.sock` is None by then.
    sock = sock or conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        conn.close()
        if sock is not None:
            sock.close()
    except Exception:  # closing a half-read response may raise anything; it is closed anyway
        pass


class RemoteBackend:
    """An `engine.Backend` whose model runs on an OpenAI-compatible server.

    `url` is the server's OpenAI base URL (`http://host:8000/v1`; a bare `http://host:8000` means
    `/v1`). `api_key` is sent as `Authorization: Bearer`. `model` picks one of the server's
    `/v1/models` (default: the first). `timeout` is how long a request may go without a byte
    from the server (connecting has `connect_timeout`). Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(
                f"remote URL {url!r}: expected http(s)://HOST[:PORT]/v1, e.g. http://127.0.0.1:8000/v1"
            )
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/") or "/v1"
        self.url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{self._base}"
        # The server's root, where vLLM and llama-server keep /tokenize.
        self._root = self._base[: -len("/v1")] if self._base.endswith("/v1") else self._base
        self._api_key = api_key or None
        self._model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._info: BackendInfo | None = None
        self._info_lock = threading.Lock()
        self._tokenize: bool | None = None  # whether the server has vLLM's /tokenize (None: untried)
        self._closed = False

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteBackend({self.url!r}, model={self._model!r})"

    # -- HTTP ---------------------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, body: bool) -> dict[str, str]:
        h = {"Accept": "application/json, text/event-stream", "User-Agent": "locus"}
        if body:
            h["Content-Type"] = "application/json"
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _open(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        handle: RemoteHandle | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; (connection, response) with the status read. Raises RemoteError."""
        conn = self._connection(self.connect_timeout)
        if handle is not None and not handle._attach(conn, None):
            raise _Cancelled
        try:
            conn.connect()
            sock = conn.sock
            if sock is not None:
                sock.settimeout(self.timeout)
            if handle is not None and not handle._attach(conn, sock):
                raise _Cancelled
            data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
            conn.request(method, path, body=data, headers=self._headers(data is not None))
            return conn, conn.getresponse()
        except BaseException as e:
            _shut(conn)
            if isinstance(e, _Cancelled) or (handle is not None and handle.cancelled):
                raise _Cancelled from None
            raise self._network_error(e) from None

    def _network_error(self, e: BaseException) -> RemoteError:
        where = f"the model server at {self.url}"
        if isinstance(e, RemoteError):
            return e
        if isinstance(e, ConnectionRefusedError):
            return RemoteError(
                f"cannot reach {where}: connection refused (is the server running?)", reached=False
            )
        if isinstance(e, TimeoutError | socket.timeout):
            return RemoteError(f"{where} did not answer within {self.timeout:g} s (timed out)")
        if isinstance(e, socket.gaierror):
            return RemoteError(f"cannot reach {where}: unknown host {self._host!r}", reached=False)
        if isinstance(e, ssl.SSLError):
            return RemoteError(f"cannot reach {where}: TLS failed ({e})")
        if isinstance(e, http.client.IncompleteRead | http.client.RemoteDisconnected):
            return RemoteError(f"{where} closed the connection before the answer was complete")
        if isinstance(e, OSError | http.client.HTTPException):
            return RemoteError(f"cannot reach {where}: {type(e).__name__}: {e}")
        return RemoteError(f"request to {where} failed: {type(e).__name__}: {e}", "internal")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> _Response:
        """A whole (non-streamed) request."""
        conn, resp = self._open(method, path, body)
        try:
            return _Response(resp.status, resp.read())
        except BaseException as e:
            raise self._network_error(e) from None
        finally:
            resp.close()
            _shut(conn)

    def _status_error(self, status: int, body: bytes) -> RemoteError:
        msg = _error_message(body) or http.client.responses.get(status, "")
        if status in (408, 429) or status >= 500:
            return RemoteError(f"the model server at {self.url} failed (HTTP {status}): {msg}")
        if status in (401, 403):  # Locus's configuration (the API key), not the client's request
            return RemoteError(
                f"the model server at {self.url} refused Locus's API key (HTTP {status}): {msg}"
            )
        low = msg.lower()
        if "context length" in low or "maximum context" in low or "context window" in low:
            return RemoteError(f"the model server refused the request: {msg}", "context_length")
        return RemoteError(f"the model server refused the request (HTTP {status}): {msg}", "invalid_request")

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._call(method, path, body)
        if r.status >= 400:
            raise self._status_error(r.status, r.body)
        try:
            return json.loads(r.body)
        except ValueError:
            raise RemoteError(
                f"{self.url}{path[len(self._base) :]}: the answer is not JSON ({r.body[:120]!r})"
            ) from None

    # -- the model ----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """The server's `/v1/models` entries (each has at least an "id"). Raises RemoteError."""
        data = self._json("GET", f"{self._base}/models")
        items = data.get("data") if isinstance(data, dict) else None
        return [m for m in items or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]

    @property
    def model_name(self) -> str:
        """The model name sent with each request."""
        return self.info.name

    @property
    def info(self) -> BackendInfo:
        """The served model (from `/v1/models`, asked once). Raises RemoteError when the server
        cannot be reached or does not serve the model asked for."""
        with self._info_lock:
            if self._info is None:
                self._info = self._fetch_info()
            return self._info

    def _fetch_info(self) -> BackendInfo:
        try:
            models = self.models()
        except RemoteError as e:
            # A server without /v1/models still serves chat completions; one whose /v1/models
            # fails (mlx_lm.server 0.32 drops the connection without an HF cache folder) serves
            # the model named on the command line.
            named = self._model is not None and e.reached and "refused Locus's API key" not in str(e)
            if e.kind != "invalid_request" and not named:
                raise
            if named:
                log.warning("%s/models failed (%s): using the model named, %r", self.url, e, self._model)
            models = []
        entry: dict[str, Any] = {}
        if self._model is not None:
            entry = next((m for m in models if m["id"] == self._model), {})
            if models and not entry:
                names = ", ".join(m["id"] for m in models[:10])
                raise RemoteError(
                    f"the server at {self.url} does not serve {self._model!r} (it serves: {names})",
                    "invalid_request",
                )
        elif models:
            entry = models[0]
        # mlx_lm.server and others take "default_model" for the one they loaded.
        name = self._model or entry.get("id") or "default_model"
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        ctx = 0
        for v in (
            entry.get("max_model_len"),
            entry.get("context_length"),
            entry.get("context_window"),
            meta.get("n_ctx_train"),
        ):
            if isinstance(v, int) and v > 0:
                ctx = v
                break
        return BackendInfo(
            name=name,
            context_tokens=ctx,
            images=True,
            tools=True,
            thinking=True,
            remote=self.url,
            model_id=f"remote:{self.url}#{name}",
        )

    # -- requests -----------------------------------------------------------------------------
    def _body(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of a request: chat completions for messages, completions for a raw
        prompt or raw token ids. Raises RequestError (ImageError) for what cannot be sent."""
        s = req.sampling
        body: dict[str, Any] = {
            "model": self.model_name,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": req.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k if s.top_k > 0 else -1,
            "min_p": s.min_p,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "repetition_penalty": s.repetition_penalty,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if req.stop:
            body["stop"] = list(req.stop)
        if not req.skip_special_tokens:
            body["skip_special_tokens"] = False  # vLLM's and SGLang's extension
        if req.messages is None:
            if req.response_format is not None or not req.parallel_tool_calls:
                raise RequestError("a response_format needs messages with a remote model")
            if req.reply_prefix:  # a raw prompt carries its continuation itself
                raise RequestError("a prefix or a forced tool_choice needs messages with a remote model")
            body["prompt"] = req.prompt if req.prompt is not None else list(req.prompt_ids or [])
            return f"{self._base}/completions", body
        if req.prefix:
            raise RequestError(
                "an assistant prefill needs the model's chat template, which the remote server "
                "keeps to itself; send the conversation without a prefilled reply"
            )
        body["messages"] = [_message(m) for m in req.messages]
        if req.tools:
            body["tools"] = [_tool(t) for t in req.tools]
            if req.tool_choice != "auto":  # the server forces (or forbids) the call itself
                mode = req.tool_choice in ("none", "required")
                body["tool_choice"] = (
                    req.tool_choice if mode else {"type": "function", "function": {"name": req.tool_choice}}
                )
            if not req.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        if req.response_format is not None:
            body["response_format"] = _response_format(req.response_format)
        # A thinking budget is not sent (NOT_SENT).
        think = req.enable_thinking and not req.forces_call
        kwargs = {**req.template_kwargs, "enable_thinking": think}
        if req.preserve_thinking is not None:
            kwargs["preserve_thinking"] = req.preserve_thinking
        body["chat_template_kwargs"] = kwargs
        return f"{self._base}/chat/completions", body

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """The request checked and turned into its HTTP body (images read and encoded). Raises
        RequestError naming the problem. `prompt_tokens` is exact where the server has vLLM's
        `/tokenize`; elsewhere it is 0 (not known before the server answers)."""
        request.validate()
        path, body = self._body(request)
        n = 0
        if request.messages is not None and self._tokenize is not False:
            n = self._tokenize_count(body) or 0
        limit = self.info.context_tokens
        if limit and n >= limit:
            raise ContextLengthError(f"the prompt has {n} tokens; this model's context is {limit}")
        return PreparedRequest(
            request,
            n,
            request.messages is not None and request.enable_thinking,
            self.info.model_id,
            (path, body),
        )

    def count_tokens(self, request: GenerationRequest, *, stop_above: int | None = None) -> int:
        """The prompt's tokens: exact from the server's `/tokenize` (vLLM, SGLang), otherwise
        exact from the usage of a one-token generation (the prompt is prefilled on the server,
        which a server with a prompt cache reuses for the request that follows). A quick check
        (`stop_above` given) never generates: without `/tokenize` it answers 0, a lower bound,
        and the server itself refuses a prompt past its context."""
        request.validate()
        path, body = self._body(request)
        if request.messages is not None and self._tokenize is not False:
            n = self._tokenize_count(body)
            if n is not None:
                return n
        if stop_above is not None:
            return 0
        one = {**body, "max_tokens": 1, "stream": False}
        one.pop("stream_options", None)
        data = self._json("POST", path, one)
        usage = data.get("usage") if isinstance(data, dict) else None
        if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
            raise RemoteError(f"the model server at {self.url} reports no token usage")
        return int(usage["prompt_tokens"])

    def _tokenize_count(self, body: dict[str, Any]) -> int | None:
        """vLLM's `POST /tokenize` with the chat; None when the server has none."""
        keys = ("model", "messages", "tools", "chat_template_kwargs")
        ask = {k: body[k] for k in keys if k in body}
        try:
            r = self._call("POST", f"{self._root}/tokenize", {**ask, "add_generation_prompt": True})
        except RemoteError:
            return None
        count = None
        if r.status == 200:
            try:
                count = json.loads(r.body).get("count")
            except (ValueError, AttributeError):
                count = None
        if r.status in (404, 405) or (r.status == 200 and not isinstance(count, int)):
            self._tokenize = False  # e.g. llama-server's /tokenize takes raw text, not a chat
            return None
        if isinstance(count, int):
            self._tokenize = True
            return count
        return None

    def submit(self, request: GenerationRequest | PreparedRequest) -> RemoteHandle:
        """Send the request on a thread of its own; its events come from the handle."""
        handle = RemoteHandle()
        try:
            if self._closed:
                raise RequestError("this remote backend is closed")
            if isinstance(request, PreparedRequest) and isinstance(request.inputs, tuple):
                req, (path, body) = request.request, request.inputs
                req.validate()
                body = {**body, "max_tokens": req.max_tokens}  # a front end may settle it late
            else:
                req = request.request if isinstance(request, PreparedRequest) else request
                req.validate()
                path, body = self._body(req)
        except EngineError as e:
            handle._put(Done("error", error=str(e), error_kind=e.kind))  # type: ignore[arg-type]
            return handle
        threading.Thread(
            target=self._run, args=(handle, req, path, body), name="locus-remote", daemon=True
        ).start()
        return handle

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run a request to the end and return everything it produced."""
        return self.submit(request).result()

    def stats(self) -> BackendStats:
        """Nothing runs here: the server keeps its own prompt cache (engine.Backend)."""
        return BackendStats()

    def close(self) -> None:
        """Refuse new requests (those running finish); the server keeps its model."""
        self._closed = True

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one streamed request (its own thread) --------------------------------------------------
    def _run(self, handle: RemoteHandle, req: GenerationRequest, path: str, body: dict[str, Any]) -> None:
        stream = _Stream(req, chat=req.messages is not None)
        t0 = time.perf_counter()
        reason: FinishReason = "stop"
        error: str | None = None
        kind: ErrorKind | None = None
        try:
            _, resp = self._open("POST", path, body, handle)
            if resp.status >= 400:
                raise self._status_error(resp.status, resp.read())
            handle._put(PromptProgress(0, 0))
            ctype = (resp.getheader("content-type") or "").lower()
            chunks = _sse(resp) if "json" not in ctype else _whole(resp.read())
            for obj in chunks:
                for ev in stream.feed(obj):
                    handle._put(ev)
                if stream.finished:
                    break
            if not stream.finished and not stream.saw_finish:
                raise RemoteError(f"the stream from the model server at {self.url} ended midway")
            reason = stream.reason
        except _Cancelled:
            reason = "cancelled"
        except BaseException as e:
            if handle.cancelled:
                reason = "cancelled"
            else:
                err = self._network_error(e)
                reason, error, kind = "error", str(err), err.kind  # type: ignore[assignment]
        finally:
            if handle._link is not None:
                _shut(*handle._link)
        if handle.cancelled and reason != "error":
            reason = "cancelled"
        usage, stop = None, None
        try:
            for ev in stream.finish(truncated=reason != "stop"):
                handle._put(ev)
            usage = stream.usage(t0, time.perf_counter())
            if usage is not None:
                handle._put(usage)
            stop = stream.stop_sequence if reason == "stop" else None
        except Exception as e:  # whatever the server sent, the request still ends with Done
            reason, error, kind = "error", f"the model server's answer cannot be read: {e!r:.300}", "internal"
        handle._put(Done(reason, [], usage, error, stop, kind))


class _Cancelled(Exception):
    pass


def _error_message(body: bytes) -> str:
    """The message in an error body (OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if isinstance(msg, str):
                return msg
            if isinstance(err.get("detail"), list | dict):
                return json.dumps(err["detail"])[:500]
        if isinstance(err, str):
            return err
    return json.dumps(data)[:500]


def _sse(resp: http.client.HTTPResponse) -> Any:
    """The JSON objects of a server-sent event stream, through `data: [DONE]` (yields None)."""
    data: list[str] = []
    while True:
        raw = resp.readline()
        if not raw:
            if data:
                yield from _sse_data(data)
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield from _sse_data(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def _whole(body: bytes) -> Any:
    """A server that ignored `stream` answered with one JSON completion: it, as chunks."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise RemoteError(f"the model server's answer is not JSON: {body[:120]!r}") from None
    if isinstance(obj, dict):
        for c in obj.get("choices") or []:
            if isinstance(c, dict) and isinstance(c.get("message"), dict):
                msg = dict(c["message"])
                calls = msg.get("tool_calls") or []
                msg["tool_calls"] = [{**t, "index": i} for i, t in enumerate(calls) if isinstance(t, dict)]
                c["delta"] = msg
        yield obj
    yield None


def _sse_data(lines: list[str]) -> Any:
    text = "\n".join(lines)
    if text.strip() == "[DONE]":
        yield None
        return
    try:
        obj = json.loads(text)
    except ValueError:
        raise RemoteError(f"the model server sent an event that is not JSON: {text[:120]!r}") from None
    if isinstance(obj, dict):
        yield obj


class _Stream:
    """Chunks of a streamed (chat) completion as Locus's events."""

    def __init__(self, req: GenerationRequest, chat: bool) -> None:
        self.req = req
        self.chat = chat
        # Text goes through Locus's own parser when tool calls may be in it: a server that does
        # not parse Qwen's tool calls (or a raw prompt) leaves them there as XML.
        self.parser = StreamParser(req.tools, reasoning=False) if (req.tools or not chat) else None
        self.calls: dict[int, dict[str, Any]] = {}
        self.finished = False  # [DONE] came
        self.saw_finish = False  # a finish_reason came
        self.reason: FinishReason = "stop"
        self.stop_sequence: str | None = None
        self.server_usage: dict[str, Any] | None = None
        self.chunks = 0
        self.t_first: float | None = None

    def feed(self, obj: dict[str, Any] | None) -> list[Any]:
        if obj is None:
            self.finished = True
            return []
        if isinstance(obj.get("error"), dict | str) and not obj.get("choices"):
            body = json.dumps(obj).encode()
            kind: ErrorKind = "unavailable"
            err = obj["error"]
            etype = str(err.get("type", "") if isinstance(err, dict) else "")
            if "invalid_request" in etype:
                kind = "invalid_request"
            raise RemoteError(f"the model server failed: {_error_message(body)}", kind)
        if isinstance(obj.get("usage"), dict):
            self.server_usage = obj["usage"]
        out: list[Any] = []
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if self.chat:
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                text = delta.get("content")
                for tc in delta.get("tool_calls") or []:
                    self._call_delta(tc)
                    self._seen()
            else:
                thought, text = None, choice.get("text")
            if isinstance(thought, str) and thought:
                self._seen()
                out.append(ReasoningDelta(thought))
            if isinstance(text, str) and text:
                self._seen()
                out.extend(self.parser.feed(text) if self.parser else [TextDelta(text)])
            fr = choice.get("finish_reason")
            if isinstance(fr, str) and fr:
                self.saw_finish = True
                self.reason = _FINISH.get(fr, "stop")
                sr = choice.get("stop_reason")  # vLLM: the stop string that matched
                if isinstance(sr, str) and sr in self.req.stop:
                    self.stop_sequence = sr
        return out

    def _seen(self) -> None:
        self.chunks += 1
        if self.t_first is None:
            self.t_first = time.perf_counter()

    def _call_delta(self, tc: Any) -> None:
        if not isinstance(tc, dict):
            return
        i = tc.get("index", len(self.calls))
        call = self.calls.setdefault(
            i if isinstance(i, int) else len(self.calls), {"id": "", "name": "", "arguments": ""}
        )
        if isinstance(tc.get("id"), str) and tc["id"]:
            call["id"] = tc["id"]
        fn = tc.get("function") or {}
        if isinstance(fn.get("name"), str):
            call["name"] += fn["name"] if call["name"] != fn["name"] else ""
        args = fn.get("arguments")
        if isinstance(args, str):
            call["arguments"] += args
        elif isinstance(args, dict):  # a few servers send the object itself
            call["arguments"] = json.dumps(args)

    def finish(self, truncated: bool) -> list[Any]:
        out: list[Any] = []
        if self.parser is not None:
            out.extend(self.parser.finish(truncated=truncated))
        for i in sorted(self.calls):
            out.append(_tool_call(self.calls[i]))
        return out

    def usage(self, t0: float, t_end: float) -> Usage | None:
        u = self.server_usage
        if u is None and not self.chunks:
            return None
        u = u or {}
        prompt = int(u.get("prompt_tokens") or 0)
        completion = int(u.get("completion_tokens") or self.chunks)
        details = u.get("prompt_tokens_details") if isinstance(u.get("prompt_tokens_details"), dict) else {}
        cached = int(details.get("cached_tokens") or 0)
        out = u.get("completion_tokens_details")
        thought = out.get("reasoning_tokens") if isinstance(out, dict) else None
        t_first = self.t_first or t_end
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=min(cached, prompt),
            prompt_tps=(prompt - cached) / max(t_first - t0, 1e-9) if completion else 0.0,
            generation_tps=(completion - 1) / max(t_end - t_first, 1e-9) if completion > 1 else 0.0,
            reasoning_tokens=thought if isinstance(thought, int) and not isinstance(thought, bool) else None,
        )


def _tool_call(call: dict[str, Any]) -> ToolCall | ToolCallError:
    name, raw_args = call["name"], call["arguments"]
    raw = json.dumps({"name": name, "arguments": raw_args}, ensure_ascii=False)
    if not name:
        return ToolCallError("the model server sent a tool call without a function name", raw)
    try:
        args = json.loads(raw_args) if raw_args.strip() else {}
    except ValueError as e:
        return ToolCallError(f"tool call {name!r}: its arguments are not valid JSON ({e})", raw, name)
    if not isinstance(args, dict):
        return ToolCallError(f"tool call {name!r}: its arguments are not a JSON object", raw, name)
    cid = call["id"] or f"call_{uuid.uuid4().hex[:24]}"
    return ToolCall(cid, name, args, raw)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool from an OpenAI, bare or Anthropic tool definition."""
    if isinstance(tool.get("function"), dict):
        return {"type": "function", "function": tool["function"]}
    spec = {
        "name": tool.get("name"),
        "description": tool.get("description", ""),
        "parameters": tool.get("parameters") or tool.get("input_schema") or {"type": "object"},
    }
    return {"type": "function", "function": spec}


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """A chat-template message as an OpenAI chat message (tool-call arguments as JSON strings,
    images as data: URLs)."""
    out = dict(m)
    content = m.get("content")
    if isinstance(content, list):
        out["content"] = [_part(p) for p in content]
    if m.get("tool_calls"):
        calls = []
        for i, c in enumerate(m["tool_calls"]):
            fn = c.get("function") if isinstance(c.get("function"), dict) else c
            args = fn.get("arguments", {})
            calls.append(
                {
                    "id": c.get("id") or f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": fn.get("name"),
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
            )
        out["tool_calls"] = calls
    return out


def _part(p: Any) -> Any:
    if not isinstance(p, dict):
        return {"type": "text", "text": str(p)}
    kind = p.get("type")
    if kind == "image" or "image" in p:
        return {"type": "image_url", "image_url": {"url": image_data_url(p.get("image"))}}
    if kind == "image_url" or "image_url" in p:
        url = p.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "image_url", "image_url": {"url": image_data_url(url)}}
    if kind in ("video", "video_url") or "video" in p:
        raise ImageError("video input is not supported; give still images")
    return p


def image_data_url(source: Any) -> str:
    """An image (bytes, a path, a data: URL or a PIL image) as a `data:` URL a server takes.

    JPEG, PNG, WebP and GIF files go as they are (upright ones); anything else, a rotated photo
    or a PIL image is sent as PNG (JPEG at quality 95 past two megapixels). Raises ImageError."""
    if source is None:
        raise ImageError("an image part has no image (use {'type': 'image', 'image': …})")
    data, _img, _name = _read_source(source)
    loaded = load_image(data if data is not None else source)
    mime = _ACCEPTED_IMAGES.get(loaded.format or "")
    if data is not None and mime and loaded.orientation == 1 and loaded.frames == 1:
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    buf = io.BytesIO()
    big = loaded.width * loaded.height > 2_000_000
    loaded.image.save(buf, format="JPEG" if big else "PNG", **({"quality": 95} if big else {}))
    return f"data:image/{'jpeg' if big else 'png'};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """The engine's response_format in OpenAI's chat-completions shape (the server enforces it)."""
    if fmt.get("type") == "json_schema":
        spec = {"name": "response", "schema": fmt.get("schema"), "strict": True}
        return {"type": "json_schema", "json_schema": spec}
    return {"type": fmt.get("type", "text")}
