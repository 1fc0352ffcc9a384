"""Anthropic Messages API: request bodies to engine plans, answers and Anthropic's SSE events."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from engine import ReasoningDelta, ReplyAccumulator, TextDelta, ToolCall, ToolCallError, Usage

from .anthropic_models import (
    AssistantMessage,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    SystemMessage,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingEnabled,
    Tool,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from .common import image_part, join_text, sampling_for, strip_billing_header
from .errors import APIError, invalid
from .jobs import Finished, Job, Plan, Started
from .validation import stop_list

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "cancelled": "end_turn"}


def _blocks(content: str | list[Any]) -> list[Any]:
    """A message's content as a list of blocks (a string is one text block)."""
    return [TextBlock(type="text", text=content)] if isinstance(content, str) else content


def _image(block: ImageBlock, where: str) -> dict[str, Any]:
    return image_part(block.source.data, block.source.media_type, where)


def _tool_result_content(block: ToolResultBlock, where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool_result's text, and its images (which go to the model in a user turn after it)."""
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, b in enumerate(_blocks(block.content)):
        if isinstance(b, ImageBlock):
            images.append(_image(b, f"{where}.content[{j}]"))
        else:
            texts.append(b.text)
    text = join_text(texts) if isinstance(block.content, list) else block.content
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return text, images


def _user(blocks: list[Any], where: str, out: list[dict[str, Any]]) -> None:
    """A user message's blocks appended to `out`: tool results as tool turns, the rest (with the
    tool results' images first) as one user turn."""
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

    for i, b in enumerate(blocks):
        w = f"{where}.content[{i}]"
        if isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            parts.append(_image(b, w))
        else:
            flush()
            text, images = _tool_result_content(b, w)
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": text})
            late_images += images
    if late_images:
        parts[:0] = late_images
    flush()


def _assistant(msg: AssistantMessage) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in _blocks(msg.content):
        if isinstance(b, TextBlock):
            texts.append(b.text)
        elif isinstance(b, ThinkingBlock):
            thinking.append(b.thinking)
        elif isinstance(b, ToolUseBlock):
            fn = {"name": b.name, "arguments": b.input}
            calls.append({"id": b.id, "type": "function", "function": fn})
        # redacted_thinking: nothing readable to give back to the model
    out: dict[str, Any] = {"role": "assistant", "content": join_text(texts)}
    if thinking:
        # Given back as reasoning_content, the template renders it exactly as it was generated,
        # so this turn's prompt extends the last one and the prompt cache hits.
        out["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def system_text(system: str | list[TextBlock] | None) -> str:
    """The system prompt from a string or text blocks, without Claude Code's billing line."""
    if system is None:
        return ""
    if isinstance(system, str):
        return strip_billing_header(system).strip("\n")
    return join_text([strip_billing_header(b.text).strip("\n") for b in system])


def reminder(text: str) -> str:
    """A system message folded into a user turn, as Claude Code writes its own reminders."""
    return f"<system-reminder>\n{text}\n</system-reminder>"


def with_reminders(blocks: list[Any], reminders: list[str]) -> list[Any]:
    """`blocks` with `reminders` as text blocks after its tool results (they must stay first)."""
    at = max((i + 1 for i, b in enumerate(blocks) if isinstance(b, ToolResultBlock)), default=0)
    extra = [TextBlock(type="text", text=r) for r in reminders]
    return [*blocks[:at], *extra, *blocks[at:]]


def convert_messages(req: CountTokensRequest) -> tuple[list[dict[str, Any]], list[int]]:
    """The system prompt and messages as the chat template's messages, and the indices of the
    messages a cache_control breakpoint ends."""
    messages: list[dict[str, Any]] = []
    marks: list[int] = []
    system = system_text(req.system)
    if system:
        messages.append({"role": "system", "content": system})
        if _marked(req.system):
            marks.append(0)
    reminders: list[str] = []  # mid-conversation system messages waiting for a user turn
    after_user = False  # the last message was the user's (a system message joins that turn)
    for i, m in enumerate(req.messages):
        if isinstance(m, SystemMessage):
            # anthropic-beta mid-conversation-system: Qwen's template takes a system turn only
            # first, so fold it into the next user turn the way Claude Code itself does.
            text = system_text(_blocks(m.content))
            if text and after_user and _plain_user(messages[-1]):
                # Right after the user's text: into that turn, as Claude Code itself merges it when
                # it resends the turn (its recovery after max_tokens), so that prompt extends this one.
                messages[-1]["content"] = join_text([messages[-1]["content"] + "\n", reminder(text)])
            elif text:
                reminders.append(reminder(text))
                after_user = False
        elif isinstance(m, UserMessage):
            _user(with_reminders(_blocks(m.content), reminders), f"messages[{i}]", messages)
            reminders = []
            after_user = True
        else:
            after_user = False
            if reminders:
                messages.append({"role": "user", "content": join_text(reminders)})
                reminders = []
            messages.append(_assistant(m))
        if _marked(m.content) and messages:
            marks.append(len(messages) - 1)
    if reminders:
        messages.append({"role": "user", "content": join_text(reminders)})
    return messages, marks


def _plain_user(message: dict[str, Any]) -> bool:
    return message["role"] == "user" and isinstance(message["content"], str) and bool(message["content"])


def _marked(content: str | list[Any] | None) -> bool:
    # A block's cache_control marks the end of its message (coarser than Anthropic's per block).
    return isinstance(content, list) and any(b.cache_control for b in content)


def convert_tools(tools: list[Tool] | None) -> list[dict[str, Any]]:
    """Anthropic tool definitions as the chat template's function specs."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema,
                **({"strict": True} if t.strict else {}),
            },
        }
        for t in tools or []
    ]


def _thinking(req: CountTokensRequest) -> tuple[bool, int | None]:
    """Whether the model thinks, and its budget of reasoning tokens (None: no limit)."""
    thinking = req.thinking
    if not isinstance(thinking, ThinkingEnabled):
        return isinstance(thinking, ThinkingAdaptive), None
    budget = thinking.budget_tokens
    max_tokens = getattr(req, "max_tokens", None)
    if max_tokens is not None and budget >= max_tokens:
        raise invalid(f"max_tokens ({max_tokens}) must be greater than thinking.budget_tokens ({budget})")
    return True, budget


def _forced_call(
    req: CountTokensRequest, tools: list[dict[str, Any]], think: bool
) -> tuple[list[dict[str, Any]], str]:
    """The tools the model sees, and the engine's tool_choice ("auto", "required" or a name)."""
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceNone):
        return [], "auto"
    if not isinstance(choice, ToolChoiceAny | ToolChoiceTool):
        return tools, "auto"
    if not tools:
        raise invalid(f"tool_choice: type {choice.type!r} needs tools")
    if think:
        raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
    if isinstance(choice, ToolChoiceAny):
        return tools, "required"
    if choice.name not in {t["function"]["name"] for t in tools}:
        raise invalid(f"tool_choice.name: no tool named {choice.name!r} in tools")
    return tools, choice.name


def _prefill(messages: list[dict[str, Any]], forced: bool) -> str | None:
    """A final assistant message's text, taken off `messages`: the answer continues it
    (Anthropic returns only the continuation). None when the last message is not the model's."""
    last = messages[-1]
    if last["role"] != "assistant":
        return None
    if last.get("tool_calls") or last.get("reasoning_content"):
        raise invalid("the final assistant message may only hold text to continue")
    if forced:
        raise invalid("a prefilled assistant message cannot be combined with a forced tool_choice")
    text = last["content"]
    if text != text.rstrip():
        raise invalid("final assistant content cannot end with trailing whitespace")
    messages.pop()
    return text


def _sampling(req: CountTokensRequest) -> dict[str, Any]:
    """The sampling values a Messages request sets (count_tokens sets none)."""
    if not isinstance(req, MessagesRequest):
        return {}
    return {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k}


def _session(req: CountTokensRequest) -> str | None:
    meta = getattr(req, "metadata", None)
    return f"anthropic:{meta.user_id}" if meta is not None and meta.user_id else None


def to_plan(req: CountTokensRequest, *, vocab_size: int, preset: str | None) -> Plan:
    """A validated Messages (or count_tokens) request as an engine plan; APIError(400) for what
    its fields cannot say alone (a budget over max_tokens, a forced tool that does not exist)."""
    messages, marks = convert_messages(req)
    think, budget = _thinking(req)
    tools, choice = _forced_call(req, convert_tools(req.tools), think)
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise invalid("messages: the conversation needs at least one user message with content")
    prefix = _prefill(messages, choice != "auto")
    if prefix is not None:
        think = False
    full = req if isinstance(req, MessagesRequest) else None
    return Plan.of(
        model=req.model,
        messages=messages,
        tools=tools or None,
        enable_thinking=think,
        sampling=sampling_for(preset, think, vocab_size, **_sampling(req)),
        max_tokens=full.max_tokens if full else None,
        stop=stop_list(full.stop_sequences) if full else [],
        prefix=prefix or "",
        tool_choice=choice,
        thinking_budget=budget,
        session=_session(req),
        cache_breakpoints=marks[-4:],
        mtp=full.mtp if full else None,
        response_format=_output_format(full),
        parallel_tool_calls=not getattr(req.tool_choice, "disable_parallel_tool_use", False),
    )


def _output_format(req: MessagesRequest | None) -> dict[str, Any] | None:
    """Structured outputs (`output_config.format`, or the beta's `output_format`) as the engine's."""
    if req is None:
        return None
    fmt = req.output_config.format if req.output_config is not None else None
    fmt = fmt or req.output_format
    return {"type": "json_schema", "schema": fmt.schema_} if fmt is not None else None


# -- answers ----------------------------------------------------------------------------------


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def tool_use_id(call: ToolCall) -> str:
    return call.id if call.id.startswith("toolu_") else "toolu_" + call.id.replace("-", "")[:24]


def signature(thinking: str) -> str:
    """An opaque signature for a thinking block (clients must send it back unchanged)."""
    return "locus-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def usage_dict(usage: Usage | None, prompt_tokens: int, creation: int = 0) -> dict[str, int]:
    """Anthropic's usage, whose three input counts add up to the prompt: read from the cache,
    `creation` (the tokens up to the client's last cache_control breakpoint that the cache did not
    hold: Job.cache_write_tokens), and the rest, after the breakpoint, as input_tokens. Where
    Locus itself snapshots is its own business (/health reports it)."""
    if usage is None:
        return {
            "input_tokens": prompt_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(creation, usage.prompt_tokens - cached)
    return {
        "input_tokens": usage.prompt_tokens - cached - written,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def start_usage(job: Job) -> dict[str, int]:
    """message_start's usage: the prompt split as message_delta's (see usage_dict)."""
    cached = min(job.cached_tokens, job.prompt_tokens)
    written = min(job.cache_write_tokens, job.prompt_tokens - cached)
    return {
        "input_tokens": job.prompt_tokens - cached - written,
        "output_tokens": 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def stop_reason(fin: Finished, used_tools: bool) -> str:
    if fin.stop_sequence is not None:
        return "stop_sequence"
    if used_tools and fin.finish_reason == "stop":
        return "tool_use"
    return STOP_REASONS.get(fin.finish_reason, "end_turn")


def message(reply: ReplyAccumulator, fin: Finished, job: Job, model: str) -> dict[str, Any]:
    """The non-streaming answer."""
    content: list[dict[str, Any]] = []

    def add_text(kind: str, text: str) -> None:
        key = "thinking" if kind == "thinking" else "text"
        if content and content[-1]["type"] == kind:
            content[-1][key] += text
        else:
            content.append({"type": kind, key: text})

    used_tools = False
    for ev in reply.parts:
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
        "usage": usage_dict(fin.usage, job.prompt_tokens, job.cache_write_tokens),
    }


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def error_event(kind: str, message: str) -> str:
    return _event("error", {"error": {"type": kind, "message": message}})


class _Blocks:
    """Anthropic's content blocks as they stream: which one is open, and its events."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.thought: list[str] = []
        self.used_tools = False

    def close(self) -> list[str]:
        out = []
        if self.kind == "thinking":
            sig = {"type": "signature_delta", "signature": signature("".join(self.thought))}
            out.append(_event("content_block_delta", {"index": self.index, "delta": sig}))
        if self.kind is not None:
            out.append(_event("content_block_stop", {"index": self.index}))
        self.kind = None
        return out

    def open(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self.close()
        self.index += 1
        self.kind = kind
        self.thought.clear()
        out.append(_event("content_block_start", {"index": self.index, "content_block": block}))
        return out

    def delta(self, delta: dict[str, Any]) -> str:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, ev: Any) -> list[str]:
        """The events for one engine event (a piece of reasoning or text, a tool call)."""
        out: list[str] = []
        if isinstance(ev, ReasoningDelta):
            if self.kind != "thinking":
                out += self.open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.thought.append(ev.text)
            out.append(self.delta({"type": "thinking_delta", "thinking": ev.text}))
        elif isinstance(ev, TextDelta | ToolCallError):
            if self.kind != "text":
                out += self.open("text", {"type": "text", "text": ""})
            text = ev.text if isinstance(ev, TextDelta) else ev.raw
            out.append(self.delta({"type": "text_delta", "text": text}))
        elif isinstance(ev, ToolCall):
            self.used_tools = True
            block = {"type": "tool_use", "id": tool_use_id(ev), "name": ev.name, "input": {}}
            out += self.open("tool_use", block)
            out.append(self.delta({"type": "input_json_delta", "partial_json": json.dumps(ev.arguments)}))
            out += self.close()
        return out


async def stream(job: Job, model: str, ping_interval: float) -> AsyncIterator[str]:
    """Anthropic's SSE sequence for one job: message_start, ping, blocks, message_delta, stop."""
    from .service import next_event

    # The engine says at once how much of the prompt it found cached: report the real split.
    first = await next_event(job, ping_interval)
    pending = None if isinstance(first, Started) else first
    start = {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**start_usage(job), "output_tokens": 1},
    }
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    blocks = _Blocks()
    while True:
        ev, pending = (pending, None) if pending is not None else (await next_event(job, ping_interval), None)
        if ev is None:  # a long prefill or a quiet spell: keep proxies from closing the stream
            yield _event("ping", {})
            continue
        if isinstance(ev, Finished):
            fin = ev
            break
        for c in blocks.feed(ev):
            yield c
    for c in blocks.close():
        yield c
    if fin.finish_reason == "error":
        status_kind = fin.error_kind if fin.error_kind in ("invalid_request_error",) else "api_error"
        yield error_event(status_kind, fin.error or "generation failed")
        return
    delta = {"stop_reason": stop_reason(fin, blocks.used_tools), "stop_sequence": fin.stop_sequence}
    usage = usage_dict(fin.usage, job.prompt_tokens, job.cache_write_tokens)
    yield _event("message_delta", {"delta": delta, "usage": usage})
    yield _event("message_stop", {})


def raise_if_error(fin: Finished) -> None:
    """A generation that failed becomes the API error it stands for."""
    if fin.finish_reason == "error":
        raise APIError(fin.error_kind, fin.error or "generation failed")
