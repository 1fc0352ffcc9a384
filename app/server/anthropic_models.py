"""Anthropic Messages request bodies (`/v1/messages`, `/v1/messages/count_tokens`) as pydantic
models: what the server accepts, validated here and served as the schema in /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .common import IMAGE_TYPES, NO_REMOTE
from .validation import RequestModel, StopStrings, one_of, str_or_list, type_of

__all__ = [
    "AssistantBlock",
    "AssistantMessage",
    "CountTokensRequest",
    "ImageBlock",
    "MessagesRequest",
    "RedactedThinkingBlock",
    "SystemMessage",
    "TextBlock",
    "ThinkingBlock",
    "Tool",
    "ToolResultBlock",
    "ToolUseBlock",
    "UserBlock",
    "UserMessage",
]


def _media_type(value: str) -> str:
    if value not in IMAGE_TYPES:
        why = f"unsupported image media type {value!r}; use one of {', '.join(sorted(IMAGE_TYPES))}"
        raise PydanticCustomError("media_type", "{why}", {"why": why})
    return value


MediaType = Annotated[
    str, AfterValidator(_media_type), WithJsonSchema({"type": "string", "enum": [*IMAGE_TYPES]})
]


class Block(RequestModel):
    # A block's cache_control marks the end of its message (coarser than Anthropic's per block).
    cache_control: dict[str, Any] | None = None


class TextBlock(Block):
    type: Literal["text"]
    text: str


class Base64Source(RequestModel):
    type: Literal["base64"]
    media_type: MediaType
    data: Annotated[str, WithJsonSchema({"type": "string", "contentEncoding": "base64"})]


def _source_refused(value: Any) -> tuple[str, str] | str:
    if not isinstance(value, dict):
        return "expected an image source object"
    if value.get("type") == "url":
        return "type", NO_REMOTE.replace("as base64", "as a base64 source")
    return "type", f"expected 'base64' (got {value.get('type')!r})"


ImageSource = one_of(type_of, {"base64": Base64Source}, _source_refused)


class ImageBlock(Block):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(Block):
    type: Literal["tool_use"]
    id: str = ""
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ThinkingBlock(Block):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Block):
    type: Literal["redacted_thinking"]
    data: str | None = None


def _blocks_refusal(why: dict[str, str]) -> Any:
    """A refusal for a block union: `why[type]` for known types that do not belong here."""

    def refuse(value: Any) -> Any:
        kind = type_of(value)
        if not isinstance(kind, str):
            return "expected a content block with a 'type'"
        return "type", why.get(kind, f"unknown content block type {kind!r}")

    return refuse


def _content(blocks: Any, what: str = "content blocks") -> Any:
    """A string, or an array of `blocks`."""
    return one_of(
        str_or_list,
        {"str": str, "list": list[blocks]},
        lambda v: f"expected a string or an array of {what}",
    )


_TOOL_RESULT_ONLY = "tool_result content holds text and image blocks only"
ToolResultItem = one_of(
    type_of,
    {"text": TextBlock, "image": ImageBlock},
    _blocks_refusal(
        dict.fromkeys(
            ["tool_use", "tool_result", "thinking", "redacted_thinking", "document"],
            _TOOL_RESULT_ONLY,
        )
    ),
)


ToolResultContent = _content(ToolResultItem)


class ToolResultBlock(Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: ToolResultContent = ""
    is_error: bool = False


_IN_ASSISTANT = {
    t: f"{t} blocks belong in assistant messages" for t in ("thinking", "redacted_thinking", "tool_use")
}
_IN_USER = {t: f"{t} blocks belong in user messages" for t in ("image", "tool_result", "document")}
UserBlock = one_of(
    type_of,
    {"text": TextBlock, "image": ImageBlock, "tool_result": ToolResultBlock},
    _blocks_refusal(
        {
            **_IN_ASSISTANT,
            "document": "document blocks are not supported; send the text as a text block",
        }
    ),
)
AssistantBlock = one_of(
    type_of,
    {
        "text": TextBlock,
        "thinking": ThinkingBlock,
        "redacted_thinking": RedactedThinkingBlock,
        "tool_use": ToolUseBlock,
    },
    _blocks_refusal(_IN_USER),
)
SystemBlock = one_of(type_of, {"text": TextBlock}, lambda v: "expected a text block")
UserContent = _content(UserBlock)
AssistantContent = _content(AssistantBlock)
SystemContent = _content(SystemBlock, "text blocks")


class UserMessage(RequestModel):
    role: Literal["user"]
    content: UserContent


class AssistantMessage(RequestModel):
    role: Literal["assistant"]
    content: AssistantContent


class SystemMessage(RequestModel):
    """A mid-conversation system message (anthropic-beta mid-conversation-system)."""

    role: Literal["system"]
    content: SystemContent


def _role(value: Any) -> Any:
    return value.get("role") if isinstance(value, dict) else getattr(value, "role", None)


def _role_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected an object with role and content"
    return "role", f"expected 'user', 'assistant' or 'system' (got {value.get('role')!r})"


Message = one_of(
    _role,
    {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage},
    _role_refused,
)


def _custom_tool(value: Any) -> str | None:
    # Anthropic's server tools (web search, code execution) have a type and no input_schema.
    if isinstance(value, dict) and (value.get("type") in (None, "custom") or "input_schema" in value):
        return "custom"
    return None


def _tool_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected an object"
    return (
        "type",
        f"server tool {value.get('type')!r} is not supported: it runs on Anthropic's side",
    )


class Tool(RequestModel):
    type: str | None = None  # "custom", or none (a client tool with a server tool's type is one)
    name: str
    description: str = ""
    input_schema: dict[str, Any]
    strict: bool | None = None  # true: every call is valid by construction


def _unique_names(tools: list[Tool]) -> list[Tool]:
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise PydanticCustomError("unique", "tool names must be unique")
    return tools


class ToolChoiceAuto(RequestModel):
    type: Literal["auto"] = "auto"
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(RequestModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(RequestModel):
    type: Literal["none"]


class ToolChoiceTool(RequestModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


def _choice_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected an object with a 'type'"
    return "type", f"expected auto, any, tool or none (got {value.get('type')!r})"


class ThinkingEnabled(RequestModel):
    type: Literal["enabled"]
    budget_tokens: Annotated[int, Field(ge=1)]


class ThinkingDisabled(RequestModel):
    type: Literal["disabled"] = "disabled"


class ThinkingAdaptive(RequestModel):
    type: Literal["adaptive"]


def _thinking_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected an object with a 'type'"
    return "type", f"expected 'enabled', 'disabled' or 'adaptive' (got {value.get('type')!r})"


class Metadata(RequestModel):
    user_id: str | None = None


Tools = Annotated[
    list[one_of(_custom_tool, {"custom": Tool}, _tool_refused)],
    AfterValidator(_unique_names),
]
ToolChoice = one_of(
    lambda v: type_of(v, "auto"),
    {"auto": ToolChoiceAuto, "any": ToolChoiceAny, "none": ToolChoiceNone, "tool": ToolChoiceTool},
    _choice_refused,
)
Thinking = one_of(
    lambda v: type_of(v, "disabled"),
    {"enabled": ThinkingEnabled, "disabled": ThinkingDisabled, "adaptive": ThinkingAdaptive},
    _thinking_refused,
)


class CountTokensRequest(RequestModel):
    """`POST /v1/messages/count_tokens`: the prompt of a Messages request."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: SystemContent | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class JsonOutputFormat(RequestModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(RequestModel):
    format: JsonOutputFormat | None = None


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: Annotated[int, Field(ge=1)]
    stream: bool = False
    stop_sequences: StopStrings | None = None
    # Anthropic's temperature is 0-1; Locus takes OpenAI's 0-2 on both APIs.
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    mtp: Annotated[int, Field(ge=0, le=8, description="Locus: draft tokens per step")] | None = None
    metadata: Metadata | None = None
    # Structured outputs: `output_config.format`, or the beta's `output_format`.
    output_config: OutputConfig | None = None
    output_format: JsonOutputFormat | None = None
