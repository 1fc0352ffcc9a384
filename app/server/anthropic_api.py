"""Anthropic Messages API: request bodies to engine plans, answers and Anthropic's SSE events."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine import ReasoningDelta, TextDelta, ToolCall, ToolCallError, Usage

from .common import image_part, join_text, sampling_for, strip_billing_header
from .errors import APIError, invalid
from .fields import field, number, strings
from .jobs import Finished, Job, Plan, Started

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "cancelled": "end_turn"}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}.content: expected a string or an array of content blocks")
    for i, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise invalid(f"{where}.content[{i}]: expected a content block with a 'type'")
    return content


def _text(block: dict[str, Any], where: str) -> str:
    return field(block, "text", str, where, required=True)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = field(block, "source", dict, where, required=True)
    kind = src.get("type")
    if kind == "base64":
        data = field(src, "data", str, f"{where}.source", required=True)
        media = field(src, "media_type", str, f"{where}.source", required=True)
        return image_part(data, media, where)
    if kind == "url":
        raise invalid(
            f"{where}: remote image URLs are not fetched: nothing leaves this machine. Send the "
            "image inline as a base64 source instead"
        )
    raise invalid(f"{where}.source.type: expected 'base64' (got {kind!r})")


def _tool_result_content(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's text, and its images (which go to the model in a user turn after it)."""
    content = block.get("content", "")
    if content is None or isinstance(content, str):
        text, images = content or "", []
    else:
        texts: list[str] = []
        images = []
        for j, b in enumerate(_blocks(content, where)):
            w = f"{where}.content[{j}]"
            if b["type"] == "text":
                texts.append(_text(b, w))
            elif b["type"] == "image":
                images.append(_image(b, w))
            else:
                raise invalid(f"{w}: tool_result content holds text and image blocks only")
        text = join_text(texts)
    if field(block, "is_error", bool, where, default=False):
        text = f"Error: {text}" if text else "Error"
    return text, images


def _user(msg: dict[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    parts: list[dict[str, Any]] = []
    late_images: list[dict[str, Any]] = []

    def flush() -> None:
        if not parts:
            return
        if any(p["type"] == "image" for p in parts):
            out.append({"role": "user", "content": list(parts)})
        else:
            out.append({"role": "user", "content": join_text([p["text"] for p in parts])})
        parts.clear()

    for i, b in enumerate(_blocks(msg.get("content"), where)):
        w = f"{where}.content[{i}]"
        t = b["type"]
        if t == "text":
            parts.append({"type": "text", "text": _text(b, w)})
        elif t == "image":
            parts.append(_image(b, w))
        elif t == "tool_result":
            flush()
            tid = field(b, "tool_use_id", str, w, required=True)
            text, images = _tool_result_content(b, w)
            out.append({"role": "tool", "tool_call_id": tid, "content": text})
            late_images += images
        elif t == "document":
            raise invalid(f"{w}: document blocks are not supported; send the text as a text block")
        elif t in ("thinking", "redacted_thinking", "tool_use"):
            raise invalid(f"{w}: {t} blocks belong in assistant messages")
        else:
            raise invalid(f"{w}: unknown content block type {t!r}")
    if late_images:
        parts[:0] = late_images
    flush()


def _assistant(msg: dict[str, Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, b in enumerate(_blocks(msg.get("content"), where)):
        w = f"{where}.content[{i}]"
        t = b["type"]
        if t == "text":
            texts.append(_text(b, w))
        elif t == "thinking":
            thinking.append(field(b, "thinking", str, w, required=True))
        elif t == "redacted_thinking":
            continue  # nothing readable to give back to the model
        elif t == "tool_use":
            name = field(b, "name", str, w, required=True)
            args = field(b, "input", dict, w, default={})
            tid = field(b, "id", str, w, default="")
            calls.append(
                {"id": tid, "type": "function", "function": {"name": name, "arguments": args}}
            )
        elif t in ("image", "tool_result", "document"):
            raise invalid(f"{w}: {t} blocks belong in user messages")
        else:
            raise invalid(f"{w}: unknown content block type {t!r}")
    out: dict[str, Any] = {"role": "assistant", "content": join_text(texts)}
    if thinking:
        # Given back as reasoning_content, the template renders it exactly as it was generated,
        # so this turn's prompt extends the last one and the prompt cache hits.
        out["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def system_text(system: Any) -> str:
    """The system prompt from a string or text blocks, without Claude Code's billing line."""
    if system is None:
        return ""
    if isinstance(system, str):
        return strip_billing_header(system).strip("\n")
    if not isinstance(system, list):
        raise invalid("system: expected a string or an array of text blocks")
    texts = []
    for i, b in enumerate(system):
        if not isinstance(b, dict) or b.get("type") != "text":
            raise invalid(f"system[{i}]: expected a text block")
        texts.append(strip_billing_header(_text(b, f"system[{i}]")))
    return join_text([t.strip("\n") for t in texts])


def reminder(text: str) -> str:
    """A system message folded into a user turn, as Claude Code writes its own reminders."""
    return f"<system-reminder>\n{text}\n</system-reminder>"


def with_reminders(msg: dict[str, Any], reminders: list[str], where: str) -> dict[str, Any]:
    """`msg` with `reminders` as text blocks after its tool results (they must stay first)."""
    if not reminders:
        return msg
    blocks = _blocks(msg.get("content"), where)
    at = max((i + 1 for i, b in enumerate(blocks) if b.get("type") == "tool_result"), default=0)
    extra = [{"type": "text", "text": r} for r in reminders]
    return {**msg, "content": [*blocks[:at], *extra, *blocks[at:]]}


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic tool definitions as the chat template's function specs."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("tools: expected an array of tool definitions")
    out = []
    for i, t in enumerate(tools):
        w = f"tools[{i}]"
        if not isinstance(t, dict):
            raise invalid(f"{w}: expected an object")
        kind = t.get("type")
        if kind not in (None, "custom") and "input_schema" not in t:
            # Anthropic's server tools (web search, code execution) run on Anthropic's side.
            raise invalid(
                f"{w}: server tool {kind!r} is not supported: it runs on Anthropic's side"
            )
        name = field(t, "name", str, w, required=True)
        schema = field(t, "input_schema", dict, w, required=True)
        desc = field(t, "description", str, w, default="")
        out.append(
            {
                "type": "function",
                "function": {"name": name, "description": desc, "parameters": schema},
            }
        )
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise invalid("tools: tool names must be unique")
    return out


def to_plan(
    body: dict[str, Any], *, vocab_size: int, preset: str | None, count_only: bool = False
) -> Plan:
    """A Messages request as an engine plan; APIError(400) naming the first problem."""
    field(body, "model", str, "", required=True)
    max_tokens = number(body, "max_tokens", "", 1, integer=True, required=not count_only)
    raw = field(body, "messages", list, "", required=True)
    if not raw:
        raise invalid("messages: at least one message is required", param="messages")
    messages: list[dict[str, Any]] = []
    marks: list[int] = []  # cache_control breakpoints: the message index they end
    system = system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
        if _marked(body.get("system")):
            marks.append(0)
    reminders: list[str] = []  # mid-conversation system messages waiting for a user turn
    for i, m in enumerate(raw):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{w}: expected an object with role and content")
        role = m.get("role")
        if "content" not in m:
            raise invalid(f"{w}.content: field required")
        if role == "system":
            # anthropic-beta mid-conversation-system: Qwen's template takes a system turn only
            # first, so fold it into the next user turn the way Claude Code itself does.
            text = system_text(m.get("content"))
            if text:
                reminders.append(reminder(text))
        elif role == "user":
            _user(with_reminders(m, reminders, w), w, messages)
            reminders = []
        elif role == "assistant":
            if reminders:
                messages.append({"role": "user", "content": join_text(reminders)})
                reminders = []
            messages.append(_assistant(m, w))
        else:
            raise invalid(f"{w}.role: expected 'user', 'assistant' or 'system' (got {role!r})")
        if _marked(m.get("content")) and messages:
            marks.append(len(messages) - 1)
    if reminders:
        messages.append({"role": "user", "content": join_text(reminders)})
    tools = convert_tools(body.get("tools"))

    thinking = field(body, "thinking", dict, "", default={})
    kind = thinking.get("type", "disabled")
    if kind not in ("enabled", "disabled", "adaptive"):
        raise invalid(f"thinking.type: expected 'enabled', 'disabled' or 'adaptive' (got {kind!r})")
    think = kind != "disabled"
    budget = None
    if kind == "enabled":
        budget = number(thinking, "budget_tokens", "thinking", 1, integer=True, required=True)
        if max_tokens is not None and budget >= max_tokens:
            raise invalid(
                f"max_tokens ({max_tokens}) must be greater than thinking.budget_tokens ({budget})"
            )

    prefix, prefix_is_call = "", False
    choice = field(body, "tool_choice", dict, "", default={"type": "auto"})
    ctype = choice.get("type", "auto")
    if ctype == "none":
        tools = []
    elif ctype in ("any", "tool"):
        if not tools:
            raise invalid(f"tool_choice: type {ctype!r} needs tools")
        if think:
            raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
        prefix, prefix_is_call = "<tool_call>\n<function=", True
        if ctype == "tool":
            name = field(choice, "name", str, "tool_choice", required=True)
            if name not in {t["function"]["name"] for t in tools}:
                raise invalid(f"tool_choice.name: no tool named {name!r} in tools")
            prefix += f"{name}>\n"
    elif ctype != "auto":
        raise invalid(f"tool_choice.type: expected auto, any, tool or none (got {ctype!r})")

    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("messages: the conversation needs at least one user message with content")
    last = messages[-1]
    if last["role"] == "assistant":
        # A prefilled answer: the model continues it (Anthropic returns only the continuation).
        if last.get("tool_calls") or last.get("reasoning_content"):
            raise invalid("the final assistant message may only hold text to continue")
        if prefix:
            raise invalid(
                "a prefilled assistant message cannot be combined with a forced tool_choice"
            )
        text = last["content"]
        if text != text.rstrip():
            raise invalid("final assistant content cannot end with trailing whitespace")
        messages.pop()
        prefix = text
        think = False

    given = {
        "temperature": number(body, "temperature", "", 0, 2),
        "top_p": number(body, "top_p", "", 0, 1),
        "top_k": number(body, "top_k", "", 0, integer=True),
    }
    if given["top_p"] == 0:
        raise invalid("top_p: must be greater than 0", param="top_p")
    stop = strings(body.get("stop_sequences"), "stop_sequences")
    meta = field(body, "metadata", dict, "", default={})
    user = meta.get("user_id")
    return Plan(
        model=body["model"],
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **given),
        max_tokens=max_tokens,
        stop=stop,
        prefix=prefix,
        prefix_is_call=prefix_is_call,
        thinking_budget=budget,
        session=f"anthropic:{user}" if isinstance(user, str) and user else None,
        has_images=any(isinstance(m.get("content"), list) for m in messages),
        cache_breakpoints=marks[-4:],
        mtp=number(body, "mtp", "", 0, 8, integer=True),
    )


def _marked(content: Any) -> bool:
    # A block's cache_control marks the end of its message (coarser than Anthropic's per block).
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("cache_control") for b in content
    )


# -- answers ----------------------------------------------------------------------------------


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def tool_use_id(call: ToolCall) -> str:
    return call.id if call.id.startswith("toolu_") else "toolu_" + call.id.replace("-", "")[:24]


def signature(thinking: str) -> str:
    """An opaque signature for a thinking block (clients must send it back unchanged)."""
    return "locus-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def usage_dict(usage: Usage | None, prompt_tokens: int) -> dict[str, int]:
    """Anthropic's usage: input_tokens counts only what was not read from the prompt cache."""
    if usage is None:
        return {"input_tokens": prompt_tokens, "output_tokens": 0,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}  # fmt: skip
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    # Anthropic's three input counts add up to the prompt: read, written to the cache, the rest.
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    return {
        "input_tokens": usage.prompt_tokens - cached - written,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def start_usage(job: Job) -> dict[str, int]:
    """message_start's usage: the prompt split into new and cache-read tokens, as message_delta."""
    cached = min(job.cached_tokens, job.prompt_tokens)
    written = min(job.cache_write_tokens, job.prompt_tokens - cached)  # planned; final in the delta
    return {"input_tokens": job.prompt_tokens - cached - written, "output_tokens": 0,
            "cache_creation_input_tokens": written, "cache_read_input_tokens": cached}  # fmt: skip


def stop_reason(fin: Finished, used_tools: bool) -> str:
    if fin.stop_sequence is not None:
        return "stop_sequence"
    if used_tools and fin.finish_reason == "stop":
        return "tool_use"
    return STOP_REASONS.get(fin.finish_reason, "end_turn")


def message(events: list[Any], fin: Finished, job: Job, model: str) -> dict[str, Any]:
    """The non-streaming answer."""
    content: list[dict[str, Any]] = []

    def add_text(kind: str, text: str) -> None:
        key = "thinking" if kind == "thinking" else "text"
        if content and content[-1]["type"] == kind:
            content[-1][key] += text
        else:
            content.append({"type": kind, key: text})

    used_tools = False
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            add_text("thinking", ev.text)
        elif isinstance(ev, TextDelta):
            add_text("text", ev.text)
        elif isinstance(ev, ToolCall):
            used_tools = True
            content.append(
                {"type": "tool_use", "id": tool_use_id(ev), "name": ev.name, "input": ev.arguments}
            )
        elif isinstance(ev, ToolCallError):
            add_text("text", ev.raw)  # what the model wrote, rather than losing it
    for b in content:
        if b["type"] == "thinking":
            b["signature"] = signature(b["thinking"])
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(fin, used_tools),
        "stop_sequence": fin.stop_sequence,
        "usage": usage_dict(fin.usage, job.prompt_tokens),
    }


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def error_event(kind: str, message: str) -> str:
    return _event("error", {"error": {"type": kind, "message": message}})


async def stream(job: Job, model: str, ping_interval: float) -> AsyncIterator[str]:
    """Anthropic's SSE sequence for one job: message_start, ping, blocks, message_delta, stop."""
    from .service import next_event

    # The engine says at once how much of the prompt it found cached: report the real split.
    first = await next_event(job, ping_interval)
    pending = None if isinstance(first, Started) else first
    start = {
        "id": message_id(), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**start_usage(job), "output_tokens": 1},
    }  # fmt: skip
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    index = -1
    open_kind: str | None = None
    thought: list[str] = []
    used_tools = False

    def close() -> list[str]:
        nonlocal open_kind
        out = []
        if open_kind == "thinking":
            sig = {"type": "signature_delta", "signature": signature("".join(thought))}
            out.append(_event("content_block_delta", {"index": index, "delta": sig}))
        if open_kind is not None:
            out.append(_event("content_block_stop", {"index": index}))
        open_kind = None
        return out

    def open_block(kind: str, block: dict[str, Any]) -> list[str]:
        nonlocal index, open_kind
        out = close()
        index += 1
        open_kind = kind
        thought.clear()
        out.append(_event("content_block_start", {"index": index, "content_block": block}))
        return out

    while True:
        ev, pending = (pending, None) if pending is not None else (
            await next_event(job, ping_interval), None)  # fmt: skip
        if isinstance(ev, Started):
            continue
        if ev is None:  # a long prefill or a quiet spell: keep proxies from closing the stream
            yield _event("ping", {})
            continue
        if isinstance(ev, Finished):
            fin = ev
            break
        chunks: list[str] = []
        if isinstance(ev, ReasoningDelta):
            if open_kind != "thinking":
                chunks += open_block(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            thought.append(ev.text)
            delta = {"type": "thinking_delta", "thinking": ev.text}
            chunks.append(_event("content_block_delta", {"index": index, "delta": delta}))
        elif isinstance(ev, TextDelta | ToolCallError):
            text = ev.text if isinstance(ev, TextDelta) else ev.raw
            if open_kind != "text":
                chunks += open_block("text", {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": text}
            chunks.append(_event("content_block_delta", {"index": index, "delta": delta}))
        elif isinstance(ev, ToolCall):
            used_tools = True
            block = {"type": "tool_use", "id": tool_use_id(ev), "name": ev.name, "input": {}}
            chunks += open_block("tool_use", block)
            delta = {"type": "input_json_delta", "partial_json": json.dumps(ev.arguments)}
            chunks.append(_event("content_block_delta", {"index": index, "delta": delta}))
            chunks += close()
        for c in chunks:
            yield c
    for c in close():
        yield c
    if fin.finish_reason == "error":
        status_kind = (
            fin.error_kind if fin.error_kind in ("invalid_request_error",) else "api_error"
        )
        yield error_event(status_kind, fin.error or "generation failed")
        return
    delta = {"stop_reason": stop_reason(fin, used_tools), "stop_sequence": fin.stop_sequence}
    yield _event(
        "message_delta", {"delta": delta, "usage": usage_dict(fin.usage, job.prompt_tokens)}
    )
    yield _event("message_stop", {})


def raise_if_error(fin: Finished) -> None:
    """A generation that failed becomes the API error it stands for."""
    if fin.finish_reason == "error":
        raise APIError(fin.error_kind, fin.error or "generation failed")
