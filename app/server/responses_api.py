"""OpenAI Responses API (`POST /v1/responses`): input items to engine plans, answers and the
streamed event sequence, and stored responses for `previous_response_id`.

Stored responses live in a small SQLite table (per API key, bounded per key and in all);
`store: false` keeps none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import ReasoningDelta, ReplyAccumulator, TextDelta, ToolCall, ToolCallError

from .common import data_url_image, join_text, sampling_for
from .errors import APIError, error_body, invalid
from .jobs import Finished, Job, Plan, reasoning_tokens
from .jsonbody import parse_body
from .openai_api import engine_format, forced_call
from .responses_models import (
    FunctionCallItem,
    FunctionCallOutputItem,
    HostedTool,
    MessageItem,
    NamespaceTool,
    ReasoningItem,
    RefusalPart,
    ResponsesFunctionTool,
    ResponsesRequest,
    TextInput,
    UserMessageItem,
)
from .security import api_key_of

KEEP_PER_KEY = 200  # stored responses kept per API key (oldest dropped first)
OWNER_BYTES = 128 * 1024 * 1024  # and their bytes per key
TOTAL_BYTES = 256 * 1024 * 1024  # and for all keys together


# -- the store ---------------------------------------------------------------------------------


def _encode(obj: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, bytes):
            return {"__bytes__": base64.b64encode(o).decode()}
        raise TypeError(f"cannot store {type(o).__name__}")

    return json.dumps(obj, default=default)


def _decode(text: str) -> Any:
    def hook(d: dict[str, Any]) -> Any:
        return base64.b64decode(d["__bytes__"]) if set(d) == {"__bytes__"} else d

    return json.loads(text, object_hook=hook)


class ResponseStore:
    """Responses kept for `previous_response_id` and GET, per API key, in SQLite (WAL).

    Bounded three ways, oldest dropped first: `keep` responses and `owner_bytes` per key, and
    `total_bytes` for all keys together (a response's size: its stored JSON text).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        keep: int = KEEP_PER_KEY,
        owner_bytes: int = OWNER_BYTES,
        total_bytes: int = TOTAL_BYTES,
    ) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self.keep, self.owner_bytes, self.total_bytes = keep, owner_bytes, total_bytes
        with self._lock, self._db:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                "created REAL NOT NULL, response TEXT NOT NULL, conversation TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS by_owner ON responses (owner, created)")
            self._db.execute("CREATE INDEX IF NOT EXISTS by_created ON responses (created)")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
            if "size" not in columns:  # a store written before sizes were kept
                self._db.execute("ALTER TABLE responses ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE responses SET size = length(response) + length(conversation)")
            self.bytes = self._db.execute("SELECT coalesce(sum(size), 0) FROM responses").fetchone()[0]
            self._trim_total()

    def put(self, owner: str, response: dict[str, Any], conversation: list[Any]) -> None:
        text, conv = json.dumps(response), _encode(conversation)
        size = len(text) + len(conv)
        with self._lock, self._recount(), self._db:
            self._drop("WHERE id = ?", (response["id"],))
            self._db.execute(
                "INSERT INTO responses (id, owner, created, response, conversation, size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (response["id"], owner, time.time(), text, conv, size),
            )
            self.bytes += size
            # Newest first, a running total: drop every row past the count or byte cap.
            rows = self._db.execute(
                "SELECT id, size FROM responses WHERE owner = ? ORDER BY created DESC, rowid DESC", (owner,)
            ).fetchall()
            kept = 0
            for n, (rid, rsize) in enumerate(rows):
                kept += rsize
                if n >= self.keep or kept > self.owner_bytes:
                    self._drop("WHERE id = ?", (rid,))
            self._trim_total()

    @contextlib.contextmanager
    def _recount(self) -> Iterator[None]:
        """Recount the bytes held when a change fails (its transaction is rolled back)."""
        try:
            yield
        except sqlite3.Error:
            self.bytes = self._db.execute("SELECT coalesce(sum(size), 0) FROM responses").fetchone()[0]
            raise

    def _trim_total(self) -> None:
        """Drop the oldest responses (any key's) until all of them fit `total_bytes`."""
        while self.bytes > self.total_bytes:
            oldest = self._db.execute("SELECT id FROM responses ORDER BY created, rowid LIMIT 64").fetchall()
            for (rid,) in oldest:
                self._drop("WHERE id = ?", (rid,))
                if self.bytes <= self.total_bytes:
                    break

    def _drop(self, where: str, args: tuple[Any, ...]) -> int:
        """Delete the rows matching `where`, keeping the byte count; how many went."""
        gone = self._db.execute(f"SELECT coalesce(sum(size), 0), count(*) FROM responses {where}", args)
        size, count = gone.fetchone()
        if count:
            self._db.execute(f"DELETE FROM responses {where}", args)
            self.bytes -= size
        return int(count)

    def get(self, owner: str, rid: str) -> tuple[dict[str, Any], list[Any]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, conversation FROM responses WHERE owner = ? AND id = ?",
                (owner, rid),
            ).fetchone()
        return (json.loads(row[0]), _decode(row[1])) if row else None

    def delete(self, owner: str, rid: str) -> bool:
        with self._lock, self._recount(), self._db:
            return self._drop("WHERE owner = ? AND id = ?", (owner, rid)) > 0


def owner_of(headers: Any) -> str:
    """Whose responses these are: a hash of the API key the client sent (never the key), parsed
    as the Guard parses it, so `Bearer  KEY`, `bearer KEY` and `x-api-key: KEY` are one owner."""
    key = api_key_of(headers) or ""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- requests ----------------------------------------------------------------------------------


def _content(content: str | list[Any], where: str) -> str | list[dict[str, Any]]:
    """A message item's content as the template's content (text, or parts with images)."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        if isinstance(p, TextInput):
            parts.append({"type": "text", "text": p.text})
        elif isinstance(p, RefusalPart):
            parts.append({"type": "text", "text": p.refusal})
        else:
            parts.append(data_url_image(p.image_url, f"{where}.content[{i}]"))
    if any(p["type"] == "image" for p in parts):
        return parts
    return join_text([p["text"] for p in parts])


def _text(content: str | list[Any]) -> str:
    """Content without images (the models refuse them where this is used)."""
    text = _content(content, "")
    return text if isinstance(text, str) else ""


# Reasoning handed to a `store: false` client as encrypted_content is sealed, not secret: the
# text (the user's own model's output) with an HMAC under a key this server process holds, so a
# value it did not write is never put in the prompt as the model's reasoning.
_SEAL_KEY = secrets.token_bytes(32)
_SEAL_PREFIX = "locus1."


def seal_reasoning(text: str) -> str:
    """The opaque encrypted_content of a reasoning item (see `open_reasoning`)."""
    body = base64.urlsafe_b64encode(text.encode()).decode()
    tag = hmac.new(_SEAL_KEY, body.encode(), hashlib.sha256).digest()[:16]
    return f"{_SEAL_PREFIX}{body}.{base64.urlsafe_b64encode(tag).decode()}"


def open_reasoning(sealed: str) -> str | None:
    """The reasoning text this server sealed; None for a value it did not write (forged, altered,
    or from before a restart: the key lives with the process)."""
    if not sealed.startswith(_SEAL_PREFIX) or "." not in sealed[len(_SEAL_PREFIX) :]:
        return None
    body, _, tag = sealed[len(_SEAL_PREFIX) :].rpartition(".")
    want = base64.urlsafe_b64encode(hmac.new(_SEAL_KEY, body.encode(), hashlib.sha256).digest()[:16])
    if not hmac.compare_digest(want, tag.encode()):
        return None
    try:
        return base64.urlsafe_b64decode(body).decode()
    except (ValueError, UnicodeError):
        return None


def _reasoning_text(item: ReasoningItem, notes: list[str]) -> str:
    """The reasoning an item carries: the sealed text this server returned, else its text."""
    if item.encrypted_content:
        text = open_reasoning(item.encrypted_content)
        if text is not None:
            return text
        notes.append("reasoning with encrypted_content this server did not write was left out")
    texts = [c.text for c in item.content or []]
    if not any(texts):
        texts = [s.text for s in item.summary or []]
    return "".join(texts)


class Toolset:
    """The request's tools as the model sees them: functions, and those of namespace tools under
    their own names (qualified `namespace.name` only where two would clash); hosted tools (web
    search and the like, which OpenAI runs on its side) are left out and noted."""

    def __init__(self, tools: list[Any] | None) -> None:
        self.specs: list[dict[str, Any]] = []
        self.spaces: dict[str, tuple[str, str]] = {}  # model's name -> (namespace, function)
        self.hosted: list[str] = []
        pairs: list[tuple[str | None, ResponsesFunctionTool]] = []
        for t in tools or []:
            if isinstance(t, NamespaceTool):
                for inner in t.tools:
                    if isinstance(inner, HostedTool):
                        self.hosted.append(f"{t.name}.{inner.type}")
                    else:
                        pairs.append((t.name, inner))
            elif isinstance(t, HostedTool):
                self.hosted.append(t.type)
            else:
                pairs.append((None, t))
        counts: dict[str, int] = {}
        for _, f in pairs:
            counts[f.name] = counts.get(f.name, 0) + 1
        for space, f in pairs:
            name = f.name if space is None or counts[f.name] == 1 else f"{space}.{f.name}"
            if space is not None:
                self.spaces[name] = (space, f.name)
            spec = f.model_dump(include={"name", "description", "parameters", "strict"}, exclude_none=True)
            self.specs.append({"type": "function", "function": {**spec, "name": name}})

    def model_name(self, name: str, namespace: str | None) -> str:
        """The name the model knows a (namespaced) function by."""
        if namespace is None:
            return name
        for shown, pair in self.spaces.items():
            if pair == (namespace, name):
                return shown
        return name

    def note(self) -> str:
        if not self.hosted:
            return ""
        return "hosted tools left out (Locus cannot run them): " + ", ".join(sorted(set(self.hosted)))


class _Turns:
    """Input items gathered into the template's messages: the items of one model turn
    (reasoning, message, calls) come as consecutive items and make one assistant message."""

    def __init__(
        self, out: list[dict[str, Any]], toolset: Toolset | None = None, notes: list[str] | None = None
    ) -> None:
        self.out = out
        self.toolset = toolset or Toolset(None)
        self.notes = notes if notes is not None else []
        self.reasoning: list[str] = []
        # The assistant message items still add to (a stored history may end with one).
        self.open = out[-1] if out and out[-1]["role"] == "assistant" else None

    def assistant(self) -> dict[str, Any]:
        last = self.out[-1] if self.out else None
        if last is None or last is not self.open:
            last = {"role": "assistant", "content": ""}
            self.out.append(last)
            self.open = last
        if self.reasoning:
            last["reasoning_content"] = "\n\n".join(self.reasoning)
            self.reasoning.clear()
        return last

    def add(self, item: Any, where: str) -> None:
        if isinstance(item, UserMessageItem):
            self.out.append({"role": "user", "content": _content(item.content, where)})
        elif isinstance(item, MessageItem) and item.role != "assistant":
            self.out.append({"role": "system", "content": _text(item.content)})
        elif isinstance(item, MessageItem):
            msg = self.assistant()
            msg["content"] = join_text([msg["content"], _text(item.content)])
        elif isinstance(item, FunctionCallItem):
            fn = {"name": self.toolset.model_name(item.name, item.namespace), "arguments": item.arguments}
            call = {"id": item.call_id, "type": "function", "function": fn}
            self.assistant().setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            self.open = None  # what follows a tool result is a new model turn
            text = _text(item.output)
            self.out.append({"role": "tool", "tool_call_id": item.call_id, "content": text})
        else:
            text = _reasoning_text(item, self.notes)
            if text:
                self.reasoning.append(text)


def convert_input(
    raw: str | list[Any],
    out: list[dict[str, Any]],
    toolset: Toolset | None = None,
    notes: list[str] | None = None,
) -> None:
    """Responses input (a string or items) appended to `out` as the template's messages;
    `notes` gets what was left out."""
    if isinstance(raw, str):
        out.append({"role": "user", "content": raw})
        return
    turns = _Turns(out, toolset, notes)
    for i, item in enumerate(raw):
        turns.add(item, f"input[{i}]")


def convert_tools(tools: list[Any] | None) -> list[dict[str, Any]]:
    """Function tools (and those of namespace tools) as the chat template's function specs."""
    return Toolset(tools).specs


def _messages(
    req: ResponsesRequest, history: list[dict[str, Any]] | None, notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The template's messages, and the conversation to store (without `instructions`)."""
    messages: list[dict[str, Any]] = [dict(m) for m in history or []]
    convert_input(req.input, messages, Toolset(req.tools), notes)
    conversation = list(messages)
    if req.instructions:  # not carried to the next response, as with OpenAI
        messages.insert(0, {"role": "system", "content": req.instructions})
    # The template takes one system turn, first: merge the others into it.
    systems = [m["content"] for m in messages if m["role"] == "system"]
    messages = [m for m in messages if m["role"] != "system"]
    if systems:
        messages.insert(0, {"role": "system", "content": join_text(systems)})
    return messages, conversation


def to_plan(
    req: ResponsesRequest,
    *,
    vocab_size: int,
    preset: str | None,
    default_max: int,
    history: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
) -> tuple[Plan, list[dict[str, Any]]]:
    """A validated Responses request as an engine plan, and the conversation to store with its
    answer (without `instructions`); `history` is the previous response's stored conversation,
    `notes` gets what the plan leaves out (for the request log)."""
    if req.background:
        raise invalid("background responses are not supported", "background")
    if "message.output_text.logprobs" in (req.include or []) or req.top_logprobs:
        raise invalid("logprobs are not supported by this server", "include")
    messages, conversation = _messages(req, history, notes)
    think = (req.reasoning.effort if req.reasoning else None) not in ("none", "minimal")
    tools, choice = forced_call(req.tool_choice, convert_tools(req.tools))
    think = think and choice == "auto"
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("input: the conversation needs at least one user message", "input")
    given = {"temperature": req.temperature, "top_p": req.top_p}
    plan = Plan.of(
        model=req.model,
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **given),
        max_tokens=req.max_output_tokens or default_max,
        tool_choice=choice,
        response_format=engine_format(req.text.format if req.text else None),
        parallel_tool_calls=req.parallel_tool_calls,
        # Codex keys its requests by session: one conversation, one line in the prompt cache.
        session=f"openai:{req.prompt_cache_key}" if req.prompt_cache_key else None,
    )
    return plan, conversation


# -- answers -----------------------------------------------------------------------------------


def _format(body: dict[str, Any]) -> dict[str, Any]:
    """The request's text.format as the response echoes it."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    return fmt if isinstance(fmt, dict) else {"type": "text"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_dict(fin: Finished, job: Job, reasoning_tokens: int) -> dict[str, Any]:
    u = fin.usage
    p = u.prompt_tokens if u else job.prompt_tokens
    c = u.completion_tokens if u else 0
    cached = min(u.cached_tokens, p) if u else job.cached_tokens
    return {
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, c)},
        "total_tokens": p + c,
    }


class Builder:
    """Output items of one response as events arrive (shared by the plain and streamed answers)."""

    def __init__(self, body: dict[str, Any], model: str, toolset: Toolset | None = None) -> None:
        self.id = _id("resp")
        self.created = int(time.time())
        self.body = body
        self.model = model
        self.toolset = toolset or Toolset(None)
        include = body.get("include")
        # Reasoning comes back sealed in encrypted_content when asked (Codex with store: false).
        self.seal = isinstance(include, list) and "reasoning.encrypted_content" in include
        self.output: list[dict[str, Any]] = []
        self.reasoning_tokens = 0  # set from the finished reply (jobs.reasoning_tokens)
        self.final: dict[str, Any] | None = None  # the finished response, once streamed

    def response(
        self, status: str, usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        b = self.body
        reasoning = b.get("reasoning") if isinstance(b.get("reasoning"), dict) else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": error,
            "incomplete_details": None,
            "instructions": b.get("instructions"),
            "max_output_tokens": b.get("max_output_tokens"),
            "model": self.model,
            "output": self.output if status != "in_progress" else [],
            "parallel_tool_calls": b.get("parallel_tool_calls", True),
            "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": b.get("store", True),
            "temperature": b.get("temperature"),
            "text": {"format": _format(b)},
            "tool_choice": b.get("tool_choice", "auto"),
            "tools": b.get("tools") or [],
            "top_p": b.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "user": b.get("user"),
            "metadata": b.get("metadata") or {},
        }

    def conversation_tail(self) -> dict[str, Any]:
        """This response's output as the assistant message of the next request's history."""
        msg: dict[str, Any] = {"role": "assistant", "content": ""}
        for item in self.output:
            if item["type"] == "reasoning":
                msg["reasoning_content"] = item["content"][0]["text"]
            elif item["type"] == "message":
                msg["content"] = item["content"][0]["text"]
            elif item["type"] == "function_call":
                name = self.toolset.model_name(item["name"], item.get("namespace"))
                msg.setdefault("tool_calls", []).append(
                    {
                        "id": item["call_id"],
                        "type": "function",
                        "function": {"name": name, "arguments": json.loads(item["arguments"])},
                    }
                )
        return msg

    def reasoning_item(self, text: str, status: str = "completed") -> dict[str, Any]:
        item: dict[str, Any] = {"type": "reasoning", "id": _id("rs"), "summary": [], "status": status}
        item["content"] = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
        if self.seal and status == "completed":
            item["encrypted_content"] = seal_reasoning(text)
        return item


def _call_item(call: ToolCall, toolset: Toolset | None = None) -> dict[str, Any]:
    cid = call.id if call.id.startswith("call_") else "call_" + call.id.replace("-", "")[:24]
    item = {
        "type": "function_call",
        "id": _id("fc"),
        "call_id": cid,
        "name": call.name,
        "arguments": json.dumps(call.arguments),
        "status": "completed",
    }
    space = toolset.spaces.get(call.name) if toolset else None
    if space is not None:  # a function of a namespace tool: named as the client defined it
        item["namespace"], item["name"] = space
    return item


def _finish(b: Builder, fin: Finished, job: Job) -> dict[str, Any]:
    usage = usage_dict(fin, job, b.reasoning_tokens)
    resp = b.response("incomplete" if fin.finish_reason == "length" else "completed", usage)
    if fin.finish_reason == "length":
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    return resp


def answer(reply: ReplyAccumulator, fin: Finished, job: Job, b: Builder) -> dict[str, Any]:
    """The non-streaming answer (`b.reasoning_tokens` already counted)."""
    calls = [_call_item(c, b.toolset) for c in reply.tool_calls]
    text = reply.content  # a malformed call's text stays in the message
    if reply.reasoning:
        b.output.append(b.reasoning_item(reply.reasoning))
    if text or not calls:
        b.output.append(
            {
                "type": "message",
                "id": _id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )
    b.output += calls
    return _finish(b, fin, job)


class _Items:
    """The Responses API's streamed output items: numbered events, and which item is open."""

    def __init__(self, b: Builder) -> None:
        self.b = b
        self.seq = 0
        self.open_item: dict[str, Any] | None = None
        self.buf: list[str] = []

    def ev(self, kind: str, **data: Any) -> str:
        payload = json.dumps({"type": kind, "sequence_number": self.seq, **data})
        self.seq += 1
        return f"event: {kind}\ndata: {payload}\n\n"

    @property
    def index(self) -> int:
        return len(self.b.output) - 1

    def close(self) -> list[str]:
        item, ev = self.open_item, self.ev
        if item is None:
            return []
        idx, text = self.index, "".join(self.buf)
        out = []
        if item["type"] == "reasoning":
            item.update(self.b.reasoning_item(text), id=item["id"])
            out.append(
                ev(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    text=text,
                )
            )
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            out += [
                ev(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                ev(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=idx,
                    content_index=0,
                    part=part,
                ),
            ]
        item["status"] = "completed"
        out.append(ev("response.output_item.done", output_index=idx, item=item))
        self.open_item = None
        self.buf.clear()
        return out

    def open(self, kind: str) -> list[str]:
        if self.open_item is not None and self.open_item["type"] == kind:
            return []
        out = self.close()
        if kind == "reasoning":
            item = self.b.reasoning_item("", status="in_progress")
        else:
            item = {
                "type": "message",
                "id": _id("msg"),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        self.b.output.append(item)
        self.open_item = item
        out.append(self.ev("response.output_item.added", output_index=self.index, item=dict(item)))
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self.ev(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.index,
                    content_index=0,
                    part=part,
                )
            )
        return out

    def delta(self, kind: str, text: str) -> list[str]:
        """A piece of reasoning or of the answer, in the item of its kind (opened if need be)."""
        out = self.open(kind)
        self.buf.append(text)
        assert self.open_item is not None
        where = dict(item_id=self.open_item["id"], output_index=self.index, content_index=0)
        if kind == "reasoning":
            return [*out, self.ev("response.reasoning_text.delta", **where, delta=text)]
        return [*out, self.ev("response.output_text.delta", **where, delta=text, logprobs=[])]

    def call(self, e: ToolCall) -> list[str]:
        out = self.close()
        item = _call_item(e, self.b.toolset)
        self.b.output.append(item)
        idx, ev = self.index, self.ev
        return [
            *out,
            ev(
                "response.output_item.added",
                output_index=idx,
                item={**item, "arguments": "", "status": "in_progress"},
            ),
            ev(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=idx,
                delta=item["arguments"],
            ),
            ev(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=idx,
                name=item["name"],
                arguments=item["arguments"],
            ),
            ev("response.output_item.done", output_index=idx, item=item),
        ]


async def stream(job: Job, b: Builder, ping_interval: float) -> AsyncIterator[str]:
    """The documented event sequence: response.created, response.in_progress, output items with
    their parts and deltas, then response.completed (or .incomplete / .failed)."""
    from .service import next_event

    items = _Items(b)
    yield items.ev("response.created", response=b.response("in_progress"))
    yield items.ev("response.in_progress", response=b.response("in_progress"))
    while True:
        e = await next_event(job, ping_interval)
        if e is None:
            yield ": keep-alive\n\n"
            continue
        if isinstance(e, Finished):
            fin = e
            break
        chunks: list[str] = []
        if isinstance(e, ReasoningDelta):
            chunks = items.delta("reasoning", e.text)
        elif isinstance(e, TextDelta | ToolCallError):
            chunks = items.delta("message", e.text if isinstance(e, TextDelta) else e.raw)
        elif isinstance(e, ToolCall):
            chunks = items.call(e)
        for c in chunks:
            yield c
    for c in items.close():
        yield c
    if fin.finish_reason == "error":
        err = error_body("openai", fin.error_kind, fin.error or "generation failed")["error"]
        yield items.ev(
            "response.failed",
            response=b.response("failed", error={"code": err["code"], "message": err["message"]}),
        )
        return
    b.reasoning_tokens = await asyncio.to_thread(reasoning_tokens, job.backend, job.reply)
    final = _finish(b, fin, job)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    b.final = final
    yield items.ev(kind, response=final)


# -- routes ------------------------------------------------------------------------------------


def add_routes(api: Any, service: Any, store: ResponseStore) -> None:
    """POST /v1/responses, GET and DELETE /v1/responses/{id} on the FastAPI app."""
    from .service import EventStream

    config = service.config

    def missing(rid: str) -> APIError:
        return APIError(
            "not_found_error", f"no stored response with id {rid!r}", param="previous_response_id"
        )

    @api.post("/v1/responses")
    async def create(request: Request) -> Response:
        body = parse_body(await request.body())
        request.state.locus_model = body.get("model") if isinstance(body.get("model"), str) else ""
        req = ResponsesRequest.parse(body)
        owner = owner_of(request.headers)
        toolset = Toolset(req.tools)
        notes = [toolset.note()] if toolset.hosted else []
        history = None
        if req.previous_response_id:
            found = store.get(owner, req.previous_response_id)
            if found is None:
                raise missing(req.previous_response_id)
            history = found[1]
        plan, conversation = to_plan(
            req,
            vocab_size=service.vocab_size,
            preset=config.preset,
            default_max=config.default_max_tokens,
            history=history,
            notes=notes,
        )
        request.state.locus_note = "; ".join(dict.fromkeys(notes))
        b = Builder(body, plan.model, toolset)
        job = await service.start(plan, request)

        def save(resp: dict[str, Any]) -> None:
            if req.store and resp["status"] in ("completed", "incomplete"):
                store.put(owner, resp, [*conversation, b.conversation_tail()])

        if req.stream:

            async def events() -> AsyncIterator[str]:
                async for chunk in stream(job, b, config.ping_interval):
                    yield chunk
                if b.final is not None:
                    save(b.final)

            return EventStream(events(), job.cancel, {})
        reply, fin = await service.collect(job, request)
        if fin.finish_reason == "error":
            raise APIError(fin.error_kind, fin.error or "generation failed")
        b.reasoning_tokens = await asyncio.to_thread(reasoning_tokens, job.backend, reply)
        resp = answer(reply, fin, job, b)
        save(resp)
        return JSONResponse(resp)

    @api.get("/v1/responses/{rid}")
    async def retrieve(rid: str, request: Request) -> Response:
        found = store.get(owner_of(request.headers), rid)
        if found is None:
            raise missing(rid)
        return JSONResponse(found[0])

    @api.delete("/v1/responses/{rid}")
    async def delete(rid: str, request: Request) -> Response:
        if not store.delete(owner_of(request.headers), rid):
            raise missing(rid)
        return JSONResponse({"id": rid, "object": "response", "deleted": True})
