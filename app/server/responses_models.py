"""OpenAI Responses request bodies (`POST /v1/responses`) as pydantic models: what the server
accepts, validated here and served as the schema in /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .validation import Arguments, RequestModel, one_of, str_or_list, type_of

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "HostedTool",
    "ImageInput",
    "MessageItem",
    "NamespaceTool",
    "ReasoningItem",
    "RefusalPart",
    "ResponsesFunctionTool",
    "ResponsesRequest",
    "TextInput",
    "UserMessageItem",
]

_TEXT_KINDS = ("input_text", "output_text", "text", "summary_text")


class TextInput(RequestModel):
    type: Literal["input_text", "output_text", "text", "summary_text"]
    text: str


class RefusalPart(RequestModel):
    type: Literal["refusal"]
    refusal: str


class ImageInput(RequestModel):
    type: Literal["input_image"]
    image_url: str = Field(description="a data:image/...;base64 URL: remote images are not fetched")

    @model_validator(mode="before")
    @classmethod
    def _data_url_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("image_url"), str):
            raise PydanticCustomError(
                "file_id", "file_id images are not supported; send a data: URL", {"at": "image_url"}
            )
        return data


def _part_kind(value: Any) -> Any:
    kind = type_of(value)
    return "text" if kind in _TEXT_KINDS else kind


def _parts_refusal(image: str) -> Any:
    """A refusal for a content part union; `image` says why an input_image is not taken here."""

    def refuse(value: Any) -> Any:
        kind = type_of(value)
        if kind == "input_image":
            return image
        if kind in ("input_file", "input_audio"):
            return f"{kind} content is not supported; send text or input_image"
        return f"unknown content part type {kind!r}"

    return refuse


def _content(image: str | None) -> Any:
    """A string or content parts; with images unless `image` says why not."""
    branches: dict[str, Any] = {"text": TextInput, "refusal": RefusalPart}
    if image is None:
        branches["input_image"] = ImageInput
    part = one_of(_part_kind, branches, _parts_refusal(image or ""))
    return one_of(
        str_or_list,
        {"str": str, "list": list[part]},
        lambda v: "expected a string or an array of content parts",
    )


UserContent = _content(None)
TextContent = _content("images are supported in user messages only")
ToolOutput = _content("images in tool output are not supported")


class UserMessageItem(RequestModel):
    type: Literal["message"] = "message"
    role: Literal["user"]
    content: UserContent


class MessageItem(RequestModel):
    """A system, developer or assistant message: text only."""

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "assistant"]
    content: TextContent


class FunctionCallItem(RequestModel):
    type: Literal["function_call"]
    name: str
    call_id: str
    namespace: str | None = Field(default=None, description="the namespace tool the function is in")
    arguments: Arguments = Field(default_factory=dict)


class FunctionCallOutputItem(RequestModel):
    type: Literal["function_call_output"]
    call_id: str
    output: ToolOutput = ""


class ReasoningText(RequestModel):
    text: str = ""


class ReasoningItem(RequestModel):
    type: Literal["reasoning"]
    content: list[ReasoningText] | None = None
    summary: list[ReasoningText] | None = None
    encrypted_content: str | None = Field(
        default=None, description="as this server returned it (include: reasoning.encrypted_content)"
    )


_ROLES = ("system", "developer", "assistant")


def _item_kind(value: Any) -> Any:
    kind = type_of(value, "message")
    if kind != "message":
        return kind
    role = value.get("role")
    return "user" if role == "user" else "message" if role in _ROLES else None


def _item_refused(value: Any) -> Any:
    kind = type_of(value, "message")
    if not isinstance(value, dict):
        return "expected an input item object"
    if kind == "item_reference":
        return "item_reference is not supported; use previous_response_id"
    if kind == "message":
        return "role", f"expected user, assistant, system or developer (got {value.get('role')!r})"
    return "type", f"input item type {kind!r} is not supported"


Item = one_of(
    _item_kind,
    {
        "user": UserMessageItem,
        "message": MessageItem,
        "function_call": FunctionCallItem,
        "function_call_output": FunctionCallOutputItem,
        "reasoning": ReasoningItem,
    },
    _item_refused,
)
Input = one_of(
    str_or_list,
    {"str": str, "list": Annotated[list[Item], Field(min_length=1)]},
    lambda v: "expected a string or a non-empty array of input items",
)


class ResponsesFunctionTool(RequestModel):
    type: Literal["function"]
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = Field(None, description="true: every call is valid by construction")


class HostedTool(RequestModel):
    """A tool OpenAI runs on its side (web_search, file_search, ...): Locus runs none, so it is
    left out of the prompt (and the request log says so)."""

    type: str


def _tool_kind(value: Any) -> Any:
    kind = type_of(value)
    if kind in ("function", "namespace"):
        return kind
    return "hosted" if isinstance(kind, str) and kind else None


def _tool_refused(value: Any) -> Any:
    if not isinstance(value, dict):
        return "expected a tool object with a type"
    return "type", "expected a string naming the tool's type"


InnerTool = one_of(_tool_kind, {"function": ResponsesFunctionTool, "hosted": HostedTool}, _tool_refused)


class NamespaceTool(RequestModel):
    """Functions grouped under a name (Codex's `multi_agent_v1`): offered to the model one by
    one; a call to one comes back with `namespace` set."""

    type: Literal["namespace"]
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    tools: list[InnerTool] = Field(default_factory=list)


Tool = one_of(
    _tool_kind,
    {"function": ResponsesFunctionTool, "namespace": NamespaceTool, "hosted": HostedTool},
    _tool_refused,
)


class FunctionChoice(RequestModel):
    type: Literal["function"]
    name: str


def _choice_kind(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("type")
    return "mode" if value in ("none", "auto", "required") else None


def _choice_refused(value: Any) -> Any:
    if isinstance(value, dict):
        return "type", f"tool_choice type {value.get('type')!r} is not supported"
    return "expected 'none', 'auto', 'required' or a function choice"


ToolChoice = one_of(
    _choice_kind,
    {"mode": Literal["none", "auto", "required"], "function": FunctionChoice},
    _choice_refused,
)


class Reasoning(RequestModel):
    effort: str | None = None


class TextFormat(RequestModel):
    type: Literal["text"] = "text"


class JsonSchemaTextFormat(RequestModel):
    type: Literal["json_schema"]
    name: str = "response"
    description: str = ""
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class JsonObjectTextFormat(RequestModel):
    type: Literal["json_object"]


Format = one_of(
    lambda v: type_of(v, "text"),
    {"text": TextFormat, "json_schema": JsonSchemaTextFormat, "json_object": JsonObjectTextFormat},
    lambda v: ("type", f"{type_of(v)!r} is not supported: text, json_schema or json_object"),
)


class TextOptions(RequestModel):
    format: Format | None = None


class ResponsesRequest(RequestModel):
    """`POST /v1/responses`."""

    model: str
    input: Input
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = "auto"
    reasoning: Reasoning | None = None
    text: TextOptions | None = None
    background: bool = False
    store: bool = True
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    # Codex's defaults: `include` may ask for reasoning.encrypted_content (returned so a
    # `store: false` client can send the reasoning back); the cache key keys the prompt cache.
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool = True
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    client_metadata: dict[str, Any] | None = None
