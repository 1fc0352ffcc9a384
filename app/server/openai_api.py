"""OpenAI chat completions: request bodies to engine plans, answers and streamed chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine import ReasoningDelta, TextDelta, ToolCall, ToolCallError, Usage

from .common import data_url_image, join_text, sampling_for, strip_billing_header
from .errors import error_body, invalid
from .fields import field, number, strings
from .jobs import Finished, Job, Plan

# chat_template_kwargs the server sets itself; passing them again would clash.
_RESERVED_KWARGS = {
    "messages", "conversation", "tools", "documents", "tokenize", "add_generation_prompt",
    "chat_template", "return_dict", "continue_final_message", "tokenizer",
}  # fmt: skip


def _text_parts(content: Any, where: str) -> str:
    """Content that may only hold text: a string or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid(f"{where}.content: expected a string or an array of content parts")
    texts = []
    for i, p in enumerate(content):
        w = f"{where}.content[{i}]"
        if not isinstance(p, dict) or p.get("type") != "text":
            raise invalid(f"{w}: only text parts are allowed here")
        texts.append(field(p, "text", str, w, required=True))
    return join_text(texts)


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where}.content: expected a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        w = f"{where}.content[{i}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": field(p, "text", str, w, required=True)})
        elif kind == "image_url":
            img = p.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img
            if not isinstance(url, str):
                raise invalid(f"{w}.image_url.url: expected a data: URL string")
            parts.append(data_url_image(url, w))
        elif isinstance(kind, str):
            raise invalid(f"{w}: unsupported content part type {kind!r} (text and image_url only)")
        else:
            raise invalid(f"{w}: expected a content part with a 'type'")
    if not any(p["type"] == "image" for p in parts):
        return join_text([p["text"] for p in parts])
    return parts


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise invalid(f"{where}.tool_calls: expected an array")
    out = []
    for i, c in enumerate(calls):
        w = f"{where}.tool_calls[{i}]"
        if not isinstance(c, dict):
            raise invalid(f"{w}: expected an object")
        fn = field(c, "function", dict, w, required=True)
        name = field(fn, "name", str, f"{w}.function", required=True)
        args = field(fn, "arguments", (str, dict), f"{w}.function", default="{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise invalid(f"{w}.function.arguments: not valid JSON ({e})") from e
            if not isinstance(args, dict):
                raise invalid(f"{w}.function.arguments: must encode a JSON object")
        tid = field(c, "id", str, w, default="")
        out.append({"id": tid, "type": "function", "function": {"name": name, "arguments": args}})
    return out


def convert_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template's messages."""
    if not isinstance(raw, list) or not raw:
        raise invalid("messages: expected a non-empty array of messages", param="messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        w = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{w}: expected an object with role and content")
        role = m.get("role")
        if role in ("system", "developer"):
            text = _text_parts(m.get("content"), w)
            out.append(
                {"role": "system", "content": strip_billing_header(text) if i == 0 else text}
            )
        elif role == "user":
            out.append({"role": "user", "content": _user_content(m.get("content"), w)})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": _text_parts(m.get("content"), w)}
            reasoning = m.get("reasoning_content", m.get("reasoning"))
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    raise invalid(f"{w}.reasoning_content: expected a string")
                msg["reasoning_content"] = reasoning
            if m.get("tool_calls"):
                msg["tool_calls"] = _tool_calls(m["tool_calls"], w)
            out.append(msg)
        elif role == "tool":
            tid = field(m, "tool_call_id", str, w, default="")
            out.append(
                {"role": "tool", "tool_call_id": tid, "content": _text_parts(m.get("content"), w)}
            )
        else:
            raise invalid(
                f"{w}.role: expected system, developer, user, assistant or tool (got {role!r})"
            )
    return out


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("tools: expected an array of tool definitions")
    out = []
    for i, t in enumerate(tools):
        w = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise invalid(f"{w}: expected {{'type': 'function', 'function': {{...}}}}")
        fn = field(t, "function", dict, w, required=True)
        name = field(fn, "name", str, f"{w}.function", required=True)
        spec = {
            "name": name,
            "description": field(fn, "description", str, f"{w}.function", default=""),
            "parameters": field(
                fn, "parameters", dict, f"{w}.function", default={"type": "object"}
            ),
        }
        out.append({"type": "function", "function": spec})
    return out


def to_plan(body: dict[str, Any], *, vocab_size: int, preset: str | None, default_max: int) -> Plan:
    """A chat completions request as an engine plan; APIError(400) naming the first problem."""
    field(body, "model", str, "", required=True)
    messages = convert_messages(body.get("messages"))
    tools = convert_tools(body.get("tools"))
    if number(body, "n", "", 1, 1, integer=True) not in (None, 1):
        raise invalid("n: only 1 choice is supported", param="n")
    if field(body, "logprobs", bool, "", default=False):
        raise invalid("logprobs are not supported by this server", param="logprobs")
    fmt = field(body, "response_format", dict, "", default={"type": "text"})
    if fmt.get("type", "text") != "text":
        raise invalid(
            f"response_format {fmt.get('type')!r} is not supported: only free text; ask for JSON "
            "in the prompt instead",
            param="response_format",
        )

    kwargs = dict(field(body, "chat_template_kwargs", dict, "", default={}))
    for k in kwargs:
        if k in _RESERVED_KWARGS:
            raise invalid(f"chat_template_kwargs.{k}: set by the server; remove it")
    think = kwargs.pop("enable_thinking", None)
    kwargs.pop("preserve_thinking", None)  # always on: it keeps the prompt cache hitting
    if think is None:
        effort = field(body, "reasoning_effort", str, "", default=None)
        think = effort not in ("none", "minimal")
    elif not isinstance(think, bool):
        raise invalid("chat_template_kwargs.enable_thinking: expected a boolean")

    prefix, prefix_is_call = "", False
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        tools = []
    elif choice == "required" or isinstance(choice, dict):
        if not tools:
            raise invalid("tool_choice: forcing a tool call needs tools", param="tool_choice")
        prefix, prefix_is_call, think = "<tool_call>\n<function=", True, False
        if isinstance(choice, dict):
            fn = field(choice, "function", dict, "tool_choice", required=True)
            name = field(fn, "name", str, "tool_choice.function", required=True)
            if name not in {t["function"]["name"] for t in tools}:
                raise invalid(f"tool_choice.function.name: no tool named {name!r} in tools")
            prefix += f"{name}>\n"
    elif choice != "auto":
        raise invalid("tool_choice: expected 'none', 'auto', 'required' or a function choice")

    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("messages: the conversation needs at least one user message")
    last = messages[-1]
    if last["role"] == "assistant" and not prefix and not last.get("tool_calls"):
        # A partial answer to continue, as with Anthropic's prefill.
        messages.pop()
        prefix, think = last["content"], False

    max_tokens = number(body, "max_completion_tokens", "", 1, integer=True)
    if max_tokens is None:
        max_tokens = number(body, "max_tokens", "", 1, integer=True)
    given = {
        "temperature": number(body, "temperature", "", 0, 2),
        "top_p": number(body, "top_p", "", 0, 1),
        "top_k": number(body, "top_k", "", -1, integer=True),
        "min_p": number(body, "min_p", "", 0, 1),
        "presence_penalty": number(body, "presence_penalty", "", -2, 2),
        "frequency_penalty": number(body, "frequency_penalty", "", -2, 2),
        "repetition_penalty": number(body, "repetition_penalty", "", 0),
        "seed": number(body, "seed", "", integer=True),
    }
    if given["top_p"] == 0:
        raise invalid("top_p: must be greater than 0", param="top_p")
    if given["repetition_penalty"] == 0:
        raise invalid("repetition_penalty: must be greater than 0", param="repetition_penalty")
    user = field(body, "user", str, "", default=None)
    return Plan(
        model=body["model"],
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **given),
        max_tokens=max_tokens or default_max,
        stop=strings(body.get("stop"), "stop"),
        template_kwargs=kwargs,
        prefix=prefix,
        prefix_is_call=prefix_is_call,
        session=f"openai:{user}" if user else None,
        has_images=any(isinstance(m.get("content"), list) for m in messages),
        mtp=number(body, "mtp", "", 0, 8, integer=True),
    )


# -- answers ----------------------------------------------------------------------------------


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def call_id(call: ToolCall) -> str:
    return call.id if call.id.startswith("call_") else "call_" + call.id.replace("-", "")[:24]


def usage_dict(usage: Usage | None, prompt_tokens: int) -> dict[str, Any]:
    p = usage.prompt_tokens if usage else prompt_tokens
    c = usage.completion_tokens if usage else 0
    cached = min(usage.cached_tokens, p) if usage else 0
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def finish_reason(fin: Finished, used_tools: bool) -> str:
    if fin.finish_reason == "length":
        return "length"
    return "tool_calls" if used_tools else "stop"


def _call_dict(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": call_id(call),
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }
    return d if index is None else {"index": index, **d}


def completion(events: list[Any], fin: Finished, job: Job, model: str) -> dict[str, Any]:
    """The non-streaming answer."""
    text, reasoning, calls = [], [], []
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning.append(ev.text)
        elif isinstance(ev, TextDelta):
            text.append(ev.text)
        elif isinstance(ev, ToolCallError):
            text.append(ev.raw)  # what the model wrote, rather than losing it
        elif isinstance(ev, ToolCall):
            calls.append(_call_dict(ev))
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": msg,
                "logprobs": None,
                "finish_reason": finish_reason(fin, bool(calls)),
            }
        ],
        "usage": usage_dict(fin.usage, job.prompt_tokens),
    }


async def stream(
    job: Job, model: str, ping_interval: float, include_usage: bool
) -> AsyncIterator[str]:
    """Chat completion chunks as server-sent events, ending with `data: [DONE]`."""
    from .service import next_event

    cid, created = completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [choice], **extra}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    calls = 0
    while True:
        ev = await next_event(job, ping_interval)
        if ev is None:
            yield ": keep-alive\n\n"
            continue
        if isinstance(ev, Finished):
            fin = ev
            break
        if isinstance(ev, ReasoningDelta):
            yield chunk({"reasoning_content": ev.text})
        elif isinstance(ev, TextDelta):
            yield chunk({"content": ev.text})
        elif isinstance(ev, ToolCallError):
            yield chunk({"content": ev.raw})
        elif isinstance(ev, ToolCall):
            yield chunk({"tool_calls": [_call_dict(ev, calls)]})
            calls += 1
    if fin.finish_reason == "error":
        body = error_body("openai", fin.error_kind, fin.error or "generation failed")
        yield f"data: {json.dumps(body)}\n\n"
        return
    yield chunk({}, finish_reason(fin, calls > 0))
    if include_usage:
        usage = usage_dict(fin.usage, job.prompt_tokens)
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [], "usage": usage}  # fmt: skip
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
