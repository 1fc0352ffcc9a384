"""Typed events a generation request produces, in order, on its queue."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]
# Why a request ended with finish_reason "error": the client's request, a prompt past the context,
# a model that cannot be reached (remote server, pipeline rank), or a fault of Locus's own.
ErrorKind = Literal["invalid_request", "context_length", "unavailable", "internal"]


@dataclass(frozen=True)
class PromptProgress:
    """Prefill progress: `processed` of `total` prompt tokens are in the cache."""

    processed: int
    total: int
    type: Literal["prompt_progress"] = "prompt_progress"
    # In the first event only: prompt tokens up to the client's last cache breakpoint that the
    # cache did not hold (Anthropic's cache_creation_input_tokens; 0 without breakpoints).
    cache_write: int = 0


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (the text before `</think>`)."""

    text: str
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ToolCall:
    """A complete, well-formed tool call parsed from `<tool_call>` XML."""

    id: str
    name: str
    arguments: dict[str, Any]
    raw: str
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class ToolCallError:
    """A `<tool_call>` block that could not be parsed; `raw` holds the model's exact text."""

    message: str
    raw: str
    name: str | None = None
    type: Literal["tool_call_error"] = "tool_call_error"


@dataclass(frozen=True)
class Usage:
    """Token counts and speeds of one request."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    # Prompt tokens this request wrote to new prompt-cache snapshots (beyond `cached_tokens`).
    cache_write_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    peak_memory_gb: float = 0.0
    # Speculative decoding (MTP): tokens drafted and how many of them the model accepted.
    draft_tokens: int = 0
    draft_accepted: int = 0
    # Processes the model ran on, and each one's decoder layers [start, end) (a pipeline).
    ranks: int = 1
    rank_layers: tuple[tuple[int, int], ...] = ()
    # Of completion_tokens, those spent reasoning; None when the backend did not count them.
    reasoning_tokens: int | None = None
    type: Literal["usage"] = "usage"


@dataclass(frozen=True)
class Done:
    """The last event of every request."""

    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)
    usage: Usage | None = None
    error: str | None = None
    # The stop string that ended the reply (None when it ended otherwise, e.g. at end of turn).
    stop_sequence: str | None = None
    error_kind: ErrorKind | None = None  # set when finish_reason is "error"
    type: Literal["done"] = "done"


Event = PromptProgress | ReasoningDelta | TextDelta | ToolCall | ToolCallError | Usage | Done


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict with `type` first."""
    d = asdict(event)
    return {"type": d.pop("type"), **d}
