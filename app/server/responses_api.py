"""OpenAI Responses API (`POST /v1/responses`): input items to engine plans, answers and the
streamed event sequence, and stored responses for `previous_response_id`.

Stored responses live in a small SQLite table (bounded, per API key); `store: false` keeps none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import ReasoningDelta, TextDelta, ToolCall, ToolCallError

from .common import data_url_image, join_text, sampling_for
from .errors import APIError, error_body, invalid
from .fields import field, number, parse_body
from .jobs import Finished, Job, Plan, Started

KEEP_PER_KEY = 200  # stored responses kept per API key (oldest dropped first)


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
    """Responses kept for `previous_response_id` and GET, per API key, in SQLite (WAL)."""

    def __init__(self, path: str | Path | None = None, keep: int = KEEP_PER_KEY) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self.keep = keep
        with self._lock, self._db:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                "created REAL NOT NULL, response TEXT NOT NULL, conversation TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS by_owner ON responses (owner, created)")

    def put(self, owner: str, response: dict[str, Any], conversation: list[Any]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (response["id"], owner, time.time(), json.dumps(response), _encode(conversation)),
            )
            self._db.execute(
                "DELETE FROM responses WHERE owner = ? AND id NOT IN (SELECT id FROM responses "
                "WHERE owner = ? ORDER BY created DESC, rowid DESC LIMIT ?)",
                (owner, owner, self.keep),
            )

    def get(self, owner: str, rid: str) -> tuple[dict[str, Any], list[Any]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, conversation FROM responses WHERE owner = ? AND id = ?",
                (owner, rid),
            ).fetchone()
        return (json.loads(row[0]), _decode(row[1])) if row else None

    def delete(self, owner: str, rid: str) -> bool:
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM responses WHERE owner = ? AND id = ?", (owner, rid))
        return cur.rowcount > 0


def owner_of(headers: Any) -> str:
    """Whose responses these are: a hash of the API key the client sent (never the key)."""
    key = headers.get("x-api-key") or headers.get("authorization") or ""
    key = key.removeprefix("Bearer ").strip()
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- requests ----------------------------------------------------------------------------------


def _content(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    """A message item's content as the template's content (text, or parts with images)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where}.content: expected a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        w = f"{where}.content[{i}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text"):
            parts.append({"type": "text", "text": field(p, "text", str, w, required=True)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": field(p, "refusal", str, w, required=True)})
        elif kind == "input_image":
            if role != "user":
                raise invalid(f"{w}: images are supported in user messages only")
            url = p.get("image_url")
            if not isinstance(url, str):
                raise invalid(f"{w}.image_url: file_id images are not supported; send a data: URL")
            parts.append(data_url_image(url, w))
        elif kind in ("input_file", "input_audio"):
            raise invalid(f"{w}: {kind} content is not supported; send text or input_image")
        else:
            raise invalid(f"{w}: unknown content part type {kind!r}")
    if any(p["type"] == "image" for p in parts):
        return parts
    return join_text([p["text"] for p in parts])


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise invalid(f"{where}.arguments: expected a JSON string")
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise invalid(f"{where}.arguments: not valid JSON ({e})") from e
    if not isinstance(args, dict):
        raise invalid(f"{where}.arguments: must encode a JSON object")
    return args


def convert_input(raw: Any, out: list[dict[str, Any]]) -> None:
    """Responses input (a string or items) appended to `out` as the template's messages."""
    if isinstance(raw, str):
        out.append({"role": "user", "content": raw})
        return
    if not isinstance(raw, list) or not raw:
        raise invalid("input: expected a string or a non-empty array of input items", "input")
    reasoning: list[str] = []

    def assistant() -> dict[str, Any]:
        # Items of one model turn (reasoning, message, calls) come as consecutive items.
        last = out[-1] if out else None
        if last is None or last["role"] != "assistant" or last.get("_closed"):
            last = {"role": "assistant", "content": ""}
            out.append(last)
        if reasoning:
            last["reasoning_content"] = "\n\n".join(reasoning)
            reasoning.clear()
        return last

    for i, item in enumerate(raw):
        w = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{w}: expected an input item object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role in ("system", "developer"):
                text = _content(content, w, role)
                if not isinstance(text, str):
                    raise invalid(f"{w}: system messages hold text only")
                out.append({"role": "system", "content": text})
            elif role == "user":
                out.append({"role": "user", "content": _content(content, w, role)})
            elif role == "assistant":
                text = _content(content, w, role)
                msg = assistant()
                msg["content"] = join_text([msg["content"], text if isinstance(text, str) else ""])
            else:
                raise invalid(f"{w}.role: expected user, assistant, system or developer "
                              f"(got {role!r})")  # fmt: skip
        elif kind == "function_call":
            name = field(item, "name", str, w, required=True)
            cid = field(item, "call_id", str, w, required=True)
            args = _arguments(item.get("arguments", "{}"), w)
            msg = assistant()
            msg.setdefault("tool_calls", []).append(
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            )
        elif kind == "function_call_output":
            cid = field(item, "call_id", str, w, required=True)
            output = item.get("output", "")
            text = output if isinstance(output, str) else _content(output, w, "tool")
            if not isinstance(text, str):
                raise invalid(f"{w}.output: images in tool output are not supported")
            if out and out[-1]["role"] == "assistant":
                out[-1]["_closed"] = True
            out.append({"role": "tool", "tool_call_id": cid, "content": text})
        elif kind == "reasoning":
            texts = [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
            if not any(texts):
                texts = [
                    s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)
                ]
            reasoning.append("".join(texts))
        elif kind == "item_reference":
            raise invalid(f"{w}: item_reference is not supported; use previous_response_id")
        else:
            raise invalid(f"{w}.type: input item type {kind!r} is not supported")
    for m in out:
        m.pop("_closed", None)


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("tools: expected an array of tool definitions", "tools")
    out = []
    for i, t in enumerate(tools):
        w = f"tools[{i}]"
        if not isinstance(t, dict):
            raise invalid(f"{w}: expected an object")
        if t.get("type") != "function":
            raise invalid(f"{w}.type: tool type {t.get('type')!r} is not supported (function only)")
        spec = {
            "name": field(t, "name", str, w, required=True),
            "description": field(t, "description", str, w, default=""),
            "parameters": field(t, "parameters", dict, w, default={"type": "object"}),
        }
        out.append({"type": "function", "function": spec})
    return out


def to_plan(
    body: dict[str, Any],
    *,
    vocab_size: int,
    preset: str | None,
    default_max: int,
    history: list[dict[str, Any]] | None = None,
) -> tuple[Plan, list[dict[str, Any]]]:
    """A Responses request as an engine plan, and the conversation to store with its answer
    (without `instructions`); `history` is the previous response's stored conversation."""
    model = field(body, "model", str, "", required=True)
    if field(body, "background", bool, "", default=False):
        raise invalid("background responses are not supported", "background")
    fmt = field(field(body, "text", dict, "", default={}), "format", dict, "text", default={})
    if fmt.get("type", "text") != "text":
        raise invalid(f"text.format {fmt.get('type')!r} is not supported: only free text",
                      "text.format")  # fmt: skip
    messages: list[dict[str, Any]] = [dict(m) for m in history or []]
    convert_input(body.get("input"), messages)
    instructions = field(body, "instructions", str, "", default="")
    conversation = list(messages)
    if instructions:  # not carried to the next response, as with OpenAI
        messages.insert(0, {"role": "system", "content": instructions})
    # The template takes one system turn, first: merge the others into it.
    systems = [m["content"] for m in messages if m["role"] == "system"]
    messages = [m for m in messages if m["role"] != "system"]
    if systems:
        messages.insert(0, {"role": "system", "content": join_text(systems)})
    tools = convert_tools(body.get("tools"))
    effort = field(field(body, "reasoning", dict, "", default={}), "effort", str, "reasoning",
                   default=None)  # fmt: skip
    think = effort not in ("none", "minimal")
    prefix, prefix_is_call = "", False
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        tools = []
    elif choice == "required" or isinstance(choice, dict):
        if not tools:
            raise invalid("tool_choice: forcing a tool call needs tools", "tool_choice")
        prefix, prefix_is_call, think = "<tool_call>\n<function=", True, False
        if isinstance(choice, dict):
            if choice.get("type") != "function":
                raise invalid(f"tool_choice.type {choice.get('type')!r} is not supported",
                              "tool_choice")  # fmt: skip
            name = field(choice, "name", str, "tool_choice", required=True)
            if name not in {t["function"]["name"] for t in tools}:
                raise invalid(f"tool_choice.name: no tool named {name!r} in tools")
            prefix += f"{name}>\n"
    elif choice != "auto":
        raise invalid("tool_choice: expected 'none', 'auto', 'required' or a function choice")
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("input: the conversation needs at least one user message", "input")
    given = {
        "temperature": number(body, "temperature", "", 0, 2),
        "top_p": number(body, "top_p", "", 0, 1),
    }
    if given["top_p"] == 0:
        raise invalid("top_p: must be greater than 0", param="top_p")
    plan = Plan(
        model=model,
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **given),
        max_tokens=number(body, "max_output_tokens", "", 1, integer=True) or default_max,
        prefix=prefix,
        prefix_is_call=prefix_is_call,
        has_images=any(isinstance(m.get("content"), list) for m in messages),
    )
    return plan, conversation


# -- answers -----------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_dict(fin: Finished, job: Job, reasoning_tokens: int) -> dict[str, Any]:
    u = fin.usage
    p = u.prompt_tokens if u else job.prompt_tokens
    c = u.completion_tokens if u else 0
    cached = min(u.cached_tokens, p) if u else job.cached_tokens
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, c)},
            "total_tokens": p + c}  # fmt: skip


class Builder:
    """Output items of one response as events arrive (shared by the plain and streamed answers)."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.id = _id("resp")
        self.created = int(time.time())
        self.body = body
        self.model = model
        self.output: list[dict[str, Any]] = []
        self.reasoning_tokens = 0
        self.final: dict[str, Any] | None = None  # the finished response, once streamed

    def response(self, status: str, usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        b = self.body
        reasoning = b.get("reasoning") if isinstance(b.get("reasoning"), dict) else {}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "error": error, "incomplete_details": None,
            "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
            "model": self.model, "output": self.output if status != "in_progress" else [],
            "parallel_tool_calls": b.get("parallel_tool_calls", True),
            "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": b.get("store", True), "temperature": b.get("temperature"),
            "text": {"format": {"type": "text"}}, "tool_choice": b.get("tool_choice", "auto"),
            "tools": b.get("tools") or [], "top_p": b.get("top_p"), "truncation": "disabled",
            "usage": usage, "user": b.get("user"), "metadata": b.get("metadata") or {},
        }  # fmt: skip

    def conversation_tail(self) -> dict[str, Any]:
        """This response's output as the assistant message of the next request's history."""
        msg: dict[str, Any] = {"role": "assistant", "content": ""}
        for item in self.output:
            if item["type"] == "reasoning":
                msg["reasoning_content"] = item["content"][0]["text"]
            elif item["type"] == "message":
                msg["content"] = item["content"][0]["text"]
            elif item["type"] == "function_call":
                msg.setdefault("tool_calls", []).append({
                    "id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": json.loads(item["arguments"])},
                })  # fmt: skip
        return msg


def _call_item(call: ToolCall) -> dict[str, Any]:
    cid = call.id if call.id.startswith("call_") else "call_" + call.id.replace("-", "")[:24]
    return {"type": "function_call", "id": _id("fc"), "call_id": cid, "name": call.name,
            "arguments": json.dumps(call.arguments), "status": "completed"}  # fmt: skip


def _finish(b: Builder, fin: Finished, job: Job) -> dict[str, Any]:
    usage = usage_dict(fin, job, b.reasoning_tokens)
    resp = b.response("incomplete" if fin.finish_reason == "length" else "completed", usage)
    if fin.finish_reason == "length":
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    return resp


def answer(events: list[Any], fin: Finished, job: Job, b: Builder) -> dict[str, Any]:
    """The non-streaming answer."""
    reasoning, text = [], []
    calls = []
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning.append(ev.text)
        elif isinstance(ev, TextDelta):
            text.append(ev.text)
        elif isinstance(ev, ToolCallError):
            text.append(ev.raw)
        elif isinstance(ev, ToolCall):
            calls.append(_call_item(ev))
    b.reasoning_tokens = len(reasoning)
    if reasoning:
        content = [{"type": "reasoning_text", "text": "".join(reasoning)}]
        b.output.append({"type": "reasoning", "id": _id("rs"), "summary": [],
                         "status": "completed", "content": content})  # fmt: skip
    if text or not calls:
        b.output.append({"type": "message", "id": _id("msg"), "status": "completed",
                         "role": "assistant", "content": [{"type": "output_text",
                         "text": "".join(text), "annotations": [], "logprobs": []}]})  # fmt: skip
    b.output += calls
    return _finish(b, fin, job)


async def stream(job: Job, b: Builder, ping_interval: float) -> AsyncIterator[str]:
    """The documented event sequence: response.created, response.in_progress, output items with
    their parts and deltas, then response.completed (or .incomplete / .failed)."""
    from .service import next_event

    seq = 0

    def ev(kind: str, **data: Any) -> str:
        nonlocal seq
        seq += 1
        payload = json.dumps({"type": kind, "sequence_number": seq - 1, **data})
        return f"event: {kind}\ndata: {payload}\n\n"

    yield ev("response.created", response=b.response("in_progress"))
    yield ev("response.in_progress", response=b.response("in_progress"))
    open_item: dict[str, Any] | None = None
    buf: list[str] = []

    def close() -> list[str]:
        nonlocal open_item
        if open_item is None:
            return []
        item, idx, text = open_item, len(b.output) - 1, "".join(buf)
        out = []
        if item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
            out.append(ev("response.reasoning_text.done", item_id=item["id"], output_index=idx,
                          content_index=0, text=text))  # fmt: skip
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            out += [ev("response.output_text.done", item_id=item["id"], output_index=idx,
                       content_index=0, text=text, logprobs=[]),
                    ev("response.content_part.done", item_id=item["id"], output_index=idx,
                       content_index=0, part=part)]  # fmt: skip
        item["status"] = "completed"
        out.append(ev("response.output_item.done", output_index=idx, item=item))
        open_item = None
        buf.clear()
        return out

    def open_(kind: str) -> list[str]:
        nonlocal open_item
        out = close()
        if kind == "reasoning":
            item = {"type": "reasoning", "id": _id("rs"), "summary": [], "content": [],
                    "status": "in_progress"}  # fmt: skip
        else:
            item = {"type": "message", "id": _id("msg"), "status": "in_progress",
                    "role": "assistant", "content": []}  # fmt: skip
        b.output.append(item)
        open_item = item
        idx = len(b.output) - 1
        out.append(ev("response.output_item.added", output_index=idx, item=dict(item)))
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(ev("response.content_part.added", item_id=item["id"], output_index=idx,
                          content_index=0, part=part))  # fmt: skip
        return out

    while True:
        e = await next_event(job, ping_interval)
        if e is None:
            yield ": keep-alive\n\n"
            continue
        if isinstance(e, Started):
            continue
        if isinstance(e, Finished):
            fin = e
            break
        chunks: list[str] = []
        if isinstance(e, ReasoningDelta):
            b.reasoning_tokens += 1
            if open_item is None or open_item["type"] != "reasoning":
                chunks += open_("reasoning")
            buf.append(e.text)
            idx = len(b.output) - 1
            chunks.append(ev("response.reasoning_text.delta", item_id=open_item["id"],
                             output_index=idx, content_index=0, delta=e.text))  # fmt: skip
        elif isinstance(e, TextDelta | ToolCallError):
            text = e.text if isinstance(e, TextDelta) else e.raw
            if open_item is None or open_item["type"] != "message":
                chunks += open_("message")
            buf.append(text)
            chunks.append(ev("response.output_text.delta", item_id=open_item["id"],
                             output_index=len(b.output) - 1, content_index=0, delta=text,
                             logprobs=[]))  # fmt: skip
        elif isinstance(e, ToolCall):
            chunks += close()
            item = _call_item(e)
            b.output.append(item)
            idx = len(b.output) - 1
            chunks += [
                ev("response.output_item.added", output_index=idx,
                   item={**item, "arguments": "", "status": "in_progress"}),
                ev("response.function_call_arguments.delta", item_id=item["id"],
                   output_index=idx, delta=item["arguments"]),
                ev("response.function_call_arguments.done", item_id=item["id"],
                   output_index=idx, name=item["name"], arguments=item["arguments"]),
                ev("response.output_item.done", output_index=idx, item=item),
            ]  # fmt: skip
        for c in chunks:
            yield c
    for c in close():
        yield c
    if fin.finish_reason == "error":
        err = error_body("openai", fin.error_kind, fin.error or "generation failed")["error"]
        yield ev("response.failed", response=b.response("failed", error={
            "code": err["code"], "message": err["message"]}))  # fmt: skip
        return
    final = _finish(b, fin, job)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    b.final = final
    yield ev(kind, response=final)


# -- routes ------------------------------------------------------------------------------------


def add_routes(api: Any, service: Any, store: ResponseStore) -> None:
    """POST /v1/responses, GET and DELETE /v1/responses/{id} on the FastAPI app."""
    from .service import EventStream

    config = service.config

    def missing(rid: str) -> APIError:
        return APIError("not_found_error", f"no stored response with id {rid!r}",
                        param="previous_response_id")  # fmt: skip

    @api.post("/v1/responses")
    async def create(request: Request) -> Response:
        body = parse_body(await request.body())
        request.state.locus_model = body.get("model") if isinstance(body.get("model"), str) else ""
        owner = owner_of(request.headers)
        history = None
        prev = field(body, "previous_response_id", str, "", default=None)
        if prev:
            found = store.get(owner, prev)
            if found is None:
                raise missing(prev)
            history = found[1]
        plan, conversation = to_plan(body, vocab_size=service.vocab_size, preset=config.preset,
                       default_max=config.default_max_tokens, history=history)  # fmt: skip
        keep = field(body, "store", bool, "", default=True)
        b = Builder(body, plan.model)
        job = await service.start(plan, request)

        def save(resp: dict[str, Any]) -> None:
            if keep and resp["status"] in ("completed", "incomplete"):
                store.put(owner, resp, [*conversation, b.conversation_tail()])

        if field(body, "stream", bool, "", default=False):

            async def events() -> AsyncIterator[str]:
                async for chunk in stream(job, b, config.ping_interval):
                    yield chunk
                if b.final is not None:
                    save(b.final)

            return EventStream(events(), job.cancel, {})
        evs, fin = await service.collect(job, request)
        if fin.finish_reason == "error":
            raise APIError(fin.error_kind, fin.error or "generation failed")
        resp = answer(evs, fin, job, b)
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
