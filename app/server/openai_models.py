"""OpenAI chat completions request bodies (`/v1/chat/completions`) as pydantic models: what the
server accepts, validated here and served as the schema in /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .validation import Arguments, RequestModel, StopStrings, one_of, str_or_list, type_of

__all__ = [
    "AssistantMessage",
    "ChatRequest",
    "ImagePart",
    "NamedToolChoice",
    "SystemMessage",
    "TextPart",
    "ToolMessage",
    "UserMessage",
]


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ImageURL(RequestModel):
    url: str = Field(description="a data:image/...;base64 URL: remote images are not fetched")


def _url_refused(value: Any) -> str:
    return "expected a data: URL string or an object with one as url"


ImageURLField = one_of(
    lambda v: "str" if isinstance(v, str) else "obj" if isinstance(v, dict) else None,
    {"str": str, "obj": ImageURL},
    _url_refused,
)


class ImagePart(RequestModel):
    type: Literal["image_url"]
    image_url: ImageURLField


def _text_only(value: Any) -> Any:
    return "only text parts are allowed here"


def _user_part_refused(value: Any) -> Any:
    kind = type_of(value)
    if not isinstance(kind, str):
        return "expected a content part with a 'type'"
    return "type", f"unsupported content part type {kind!r} (text and image_url only)"


def _content(parts: Any) -> Any:
    return one_of(
        str_or_list,
        {"str": str, "list": list[parts]},
        lambda v: "expected a string or an array of content parts",
    )


TextContent = _content(one_of(type_of, {"text": TextPart}, _text_only))
UserContent = _content(one_of(type_of, {"text": TextPart, "image_url": ImagePart}, _user_part_refused))


class FunctionCall(RequestModel):
    name: str
    arguments: Arguments = Field(default_factory=dict)


class ToolCall(RequestModel):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(RequestModel):
    role: Literal["system", "developer"]
    content: TextContent | None = None


class UserMessage(RequestModel):
    role: Literal["user"]
    content: UserContent


class AssistantMessage(RequestModel):
    role: Literal["assistant"]
    content: TextContent | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the name some clients use for reasoning_content
    tool_calls: list[ToolCall] | None = None


class ToolMessage(RequestModel):
    role: Literal["tool"]
    tool_call_id: str = ""
    content: TextContent | None = None


def _role(value: Any) -> Any:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return "system" if role == "developer" else role


def _role_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected an object with role and content"
    return "role", (f"expected system, developer, user, assistant or tool (got {value.get('role')!r})")


Message = one_of(
    _role,
    {
        "system": SystemMessage,
        "user": UserMessage,
        "assistant": AssistantMessage,
        "tool": ToolMessage,
    },
    _role_refused,
)


class FunctionSpec(RequestModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = Field(None, description="true: every call is valid by construction")


class FunctionTool(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionSpec


Tool = one_of(
    lambda v: type_of(v, "function"),
    {"function": FunctionTool},
    lambda v: "expected {'type': 'function', 'function': {...}}",
)


class ToolName(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: ToolName


def _choice_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "named"
    return "mode" if value in ("none", "auto", "required") else None


ToolChoice = one_of(
    _choice_kind,
    {"mode": Literal["none", "auto", "required"], "named": NamedToolChoice},
    lambda v: "expected 'none', 'auto', 'required' or a function choice",
)


class TextFormat(RequestModel):
    type: Literal["text"] = "text"


class JsonSchemaSpec(RequestModel):
    name: str = "response"
    description: str = ""
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class JsonObjectFormat(RequestModel):
    type: Literal["json_object"]


ResponseFormat = one_of(
    lambda v: type_of(v, "text"),
    {"text": TextFormat, "json_schema": JsonSchemaFormat, "json_object": JsonObjectFormat},
    lambda v: ("type", f"{type_of(v)!r} is not supported: text, json_schema or json_object"),
)


class StreamOptions(RequestModel):
    include_usage: bool = False


Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatRequest(RequestModel):
    """`POST /v1/chat/completions`."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1, description="only 1 choice is supported")] | None = None
    logprobs: bool = False
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    reasoning_effort: str | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, description="-1 or 0: off")] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    seed: int | None = None
    mtp: Annotated[int, Field(ge=0, le=8, description="Locus: draft tokens per step")] | None = None
    stop: StopStrings | None = None
    user: str | None = None
