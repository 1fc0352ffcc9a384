"""OpenAI chat completions: request bodies to engine plans, answers and streamed chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine import ReasoningDelta, ReplyAccumulator, TextDelta, ToolCall, ToolCallError, Usage

from .common import data_url_image, join_text, sampling_for, strip_billing_header
from .errors import error_body, invalid
from .jobs import Finished, Job, Plan
from .openai_models import (
    AssistantMessage,
    ChatRequest,
    FunctionTool,
    SystemMessage,
    TextPart,
    UserMessage,
)
from .validation import stop_list

# chat_template_kwargs the server sets itself; passing them again would clash.
_RESERVED_KWARGS = {
    "messages",
    "conversation",
    "tools",
    "documents",
    "tokenize",
    "add_generation_prompt",
    "chat_template",
    "return_dict",
    "continue_final_message",
    "tokenizer",
}


def _text(content: str | list[TextPart] | None) -> str:
    """Content that may only hold text: a string or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    return join_text([p.text for p in content])


def _user_content(content: str | list[Any], where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for i, p in enumerate(content):
        if isinstance(p, TextPart):
            parts.append({"type": "text", "text": p.text})
        else:
            url = p.image_url if isinstance(p.image_url, str) else p.image_url.url
            parts.append(data_url_image(url, f"{where}.content[{i}]"))
    if not any(p["type"] == "image" for p in parts):
        return join_text([p["text"] for p in parts])
    return parts


def _assistant(m: AssistantMessage) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": _text(m.content)}
    reasoning = m.reasoning_content if m.reasoning_content is not None else m.reasoning
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if m.tool_calls:
        msg["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in m.tool_calls
        ]
    return msg


def convert_messages(raw: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template's messages."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        if isinstance(m, SystemMessage):
            text = _text(m.content)
            out.append({"role": "system", "content": strip_billing_header(text) if i == 0 else text})
        elif isinstance(m, UserMessage):
            out.append({"role": "user", "content": _user_content(m.content, f"messages[{i}]")})
        elif isinstance(m, AssistantMessage):
            out.append(_assistant(m))
        else:
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": _text(m.content)})
    return out


def convert_tools(tools: list[FunctionTool] | None) -> list[dict[str, Any]]:
    """Function tools as the chat template's function specs."""
    return [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in tools or []]


def _refuse_unsupported(req: ChatRequest) -> None:
    if req.logprobs:
        raise invalid("logprobs are not supported by this server", param="logprobs")


def _thinking_and_kwargs(req: ChatRequest) -> tuple[bool, dict[str, Any]]:
    """Whether the model thinks, and the chat_template_kwargs left for the template."""
    kwargs = dict(req.chat_template_kwargs)
    for k in kwargs:
        if k in _RESERVED_KWARGS:
            raise invalid(f"chat_template_kwargs.{k}: set by the server; remove it")
    think = kwargs.pop("enable_thinking", None)
    kwargs.pop("preserve_thinking", None)  # always on: it keeps the prompt cache hitting
    if think is None:
        return req.reasoning_effort not in ("none", "minimal"), kwargs
    if not isinstance(think, bool):
        raise invalid("chat_template_kwargs.enable_thinking: expected a boolean")
    return think, kwargs


def forced_call(choice: Any, tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The tools the model sees, and the engine's tool_choice ("auto", "required" or a tool's
    name) for OpenAI's tool_choice ("none", "auto", "required" or a function; also Responses')."""
    if choice == "none":
        return [], "auto"
    if choice == "auto":
        return tools, "auto"
    if not tools:
        raise invalid("tool_choice: forcing a tool call needs tools", param="tool_choice")
    if choice == "required":
        return tools, "required"
    name = choice.function.name if hasattr(choice, "function") else choice.name
    if name not in {t["function"]["name"] for t in tools}:
        where = "tool_choice.function.name" if hasattr(choice, "function") else "tool_choice.name"
        raise invalid(f"{where}: no tool named {name!r} in tools")
    return tools, name


def engine_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI's response_format (chat completions; Responses' flat text.format too) as the
    engine's: a JSON schema, any JSON object, or None for text. Enforced whether or not `strict`."""
    kind = getattr(fmt, "type", "text")
    if kind == "json_schema":
        return {"type": "json_schema", "schema": getattr(fmt, "json_schema", fmt).schema_}
    return {"type": "json_object"} if kind == "json_object" else None


def _sampling(req: ChatRequest) -> dict[str, Any]:
    return {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "seed": req.seed,
    }


def to_plan(req: ChatRequest, *, vocab_size: int, preset: str | None, default_max: int) -> Plan:
    """A validated chat completions request as an engine plan; APIError(400) for what its fields
    cannot say alone (a forced tool that does not exist, a conversation with no user turn)."""
    _refuse_unsupported(req)
    messages = convert_messages(req.messages)
    think, kwargs = _thinking_and_kwargs(req)
    tools, choice = forced_call(req.tool_choice, convert_tools(req.tools))
    think = think and choice == "auto"
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("messages: the conversation needs at least one user message")
    last = messages[-1]
    prefix = ""
    if last["role"] == "assistant" and choice == "auto" and not last.get("tool_calls"):
        # A partial answer to continue, as with Anthropic's prefill.
        messages.pop()
        prefix, think = last["content"], False
    return Plan.of(
        model=req.model,
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **_sampling(req)),
        max_tokens=req.max_completion_tokens or req.max_tokens or default_max,
        stop=stop_list(req.stop),
        template_kwargs=kwargs,
        prefix=prefix,
        tool_choice=choice,
        response_format=engine_format(req.response_format),
        parallel_tool_calls=req.parallel_tool_calls,
        session=f"openai:{req.user}" if req.user else None,
        mtp=req.mtp,
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


def completion(reply: ReplyAccumulator, fin: Finished, job: Job, model: str) -> dict[str, Any]:
    """The non-streaming answer (a malformed call's text stays in the content, not lost)."""
    calls = [_call_dict(c) for c in reply.tool_calls]
    msg: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.reasoning:
        msg["reasoning_content"] = reply.reasoning
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


async def stream(job: Job, model: str, ping_interval: float, include_usage: bool) -> AsyncIterator[str]:
    """Chat completion chunks as server-sent events, ending with `data: [DONE]`."""
    from .service import next_event

    cid, created = completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
            **extra,
        }
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
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
