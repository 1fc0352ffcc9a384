"""JSON Schemas of the request bodies, for /openapi.json (documentation and schema fuzzing).

The handlers validate bodies themselves (see fields.py); these describe what they accept.
"""

from __future__ import annotations

from typing import Any

_TEXT = {"type": "object", "required": ["type", "text"],
         "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}  # fmt: skip
_IMAGE = {
    "type": "object", "required": ["type", "source"],
    "properties": {"type": {"const": "image"}, "source": {
        "type": "object", "required": ["type", "media_type", "data"],
        "properties": {"type": {"const": "base64"},
                       "media_type": {"enum": ["image/png", "image/jpeg", "image/gif", "image/webp"]},
                       "data": {"type": "string", "contentEncoding": "base64"}}}},
}  # fmt: skip
_TOOL_USE = {"type": "object", "required": ["type", "id", "name", "input"],
             "properties": {"type": {"const": "tool_use"}, "id": {"type": "string"},
                            "name": {"type": "string"}, "input": {"type": "object"}}}  # fmt: skip
_TOOL_RESULT = {"type": "object", "required": ["type", "tool_use_id"],
                "properties": {"type": {"const": "tool_result"}, "tool_use_id": {"type": "string"},
                               "is_error": {"type": "boolean"},
                               "content": {"anyOf": [{"type": "string"},
                                                     {"type": "array", "items": {
                                                         "anyOf": [_TEXT, _IMAGE]}}]}}}  # fmt: skip
_THINKING = {"type": "object", "required": ["type", "thinking"],
             "properties": {"type": {"const": "thinking"}, "thinking": {"type": "string"},
                            "signature": {"type": "string"}}}  # fmt: skip
_BLOCKS = {"type": "array", "items": {"anyOf": [_TEXT, _IMAGE, _TOOL_USE, _TOOL_RESULT, _THINKING]}}
_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["user", "assistant", "system"]},
                           "content": {"anyOf": [{"type": "string"}, _BLOCKS]}}}  # fmt: skip
_TOOL = {"type": "object", "required": ["name", "input_schema"],
         "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                        "input_schema": {"type": "object"}}}  # fmt: skip

ANTHROPIC_COUNT: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT}]},
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": {"type": "object", "properties": {
            "type": {"enum": ["auto", "any", "tool", "none"]}, "name": {"type": "string"}}},
        "thinking": {"type": "object", "properties": {
            "type": {"enum": ["enabled", "disabled", "adaptive"]},
            "budget_tokens": {"type": "integer", "minimum": 1}}},
    },
}  # fmt: skip
ANTHROPIC_MESSAGES: dict[str, Any] = {
    **ANTHROPIC_COUNT,
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        **ANTHROPIC_COUNT["properties"],
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "stop_sequences": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},  # Anthropic's is 0-1
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "mtp": {"type": "integer", "minimum": 0, "maximum": 8},  # Locus: draft tokens
        "metadata": {"type": "object", "properties": {"user_id": {"type": "string"}}},
    },
}

_OA_PART = {"anyOf": [
    {"type": "object", "required": ["type", "text"],
     "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
    {"type": "object", "required": ["type", "image_url"],
     "properties": {"type": {"const": "image_url"}, "image_url": {
         "type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}}},
]}  # fmt: skip
_OA_CALL = {"type": "object", "required": ["id", "type", "function"],
            "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                           "function": {"type": "object", "required": ["name", "arguments"],
                                        "properties": {"name": {"type": "string"},
                                                       "arguments": {"type": "string"}}}}}  # fmt: skip
_OA_MESSAGE = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"},
                              {"type": "array", "items": _OA_PART}]},
        "reasoning_content": {"type": "string"},
        "tool_calls": {"type": "array", "items": _OA_CALL},
        "tool_call_id": {"type": "string"},
    },
}  # fmt: skip
OPENAI_CHAT: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": _OA_MESSAGE, "minItems": 1},
        "tools": {"type": "array", "items": {
            "type": "object", "required": ["type", "function"],
            "properties": {"type": {"const": "function"}, "function": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                               "parameters": {"type": "object"}}}}}},
        "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0},
        "seed": {"type": "integer"},
        "mtp": {"type": "integer", "minimum": 0, "maximum": 8},  # Locus: draft tokens
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "chat_template_kwargs": {"type": "object"},
        "reasoning_effort": {"type": "string"},
        "user": {"type": "string"},
    },
}  # fmt: skip


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra for a route taking `schema` as its JSON body."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}  # fmt: skip


# -- error responses --------------------------------------------------------------------------

_ANTHROPIC_ERROR = {
    "type": "object", "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
}  # fmt: skip
_OPENAI_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}},
}  # fmt: skip
_STATUSES = {
    "400": "Invalid request: malformed JSON, a wrong field, or a prompt longer than the context",
    "401": "Missing or wrong API key",
    "403": "Host or Origin not allowed",
    "404": "No such path or model",
    "405": "Method not allowed here (see the Allow header)",
    "413": "Request body larger than the server's limit",
    "429": "Too many requests",
    "503": "No model loaded, or (OpenAI) the queue is full",
    "529": "The queue is full (Anthropic's overloaded_error)",
}
_POST_ONLY = {"400", "413"}


def error_responses(flavor: str, method: str = "post") -> dict[str, Any]:
    """OpenAPI `responses` for the errors an endpoint of `flavor` ("anthropic" or "openai") gives."""
    schema = _OPENAI_ERROR if flavor == "openai" else _ANTHROPIC_ERROR
    out = {}
    for code, text in _STATUSES.items():
        if code in _POST_ONLY and method != "post":
            continue
        if code == "529" and flavor == "openai":
            continue
        entry: dict[str, Any] = {"description": text,
                                 "content": {"application/json": {"schema": schema}}}  # fmt: skip
        if code == "405":
            entry["headers"] = {"Allow": {"schema": {"type": "string"},
                                          "description": "the methods this path takes"}}  # fmt: skip
        out[code] = entry
    return out


def document_errors(api: Any) -> None:
    """Add every route's 4xx (and 503/529) responses to the app's OpenAPI schema, in the shape
    of the API the path belongs to (routes added later, e.g. /v1/responses, included)."""
    from .errors import flavor_of

    base = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = base()
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                if isinstance(op, dict) and "responses" in op:
                    for code, entry in error_responses(flavor_of(path), method).items():
                        op["responses"].setdefault(code, entry)
                    op["responses"].pop("422", None)  # validation errors are 400s here
        api.openapi_schema = schema
        return schema

    api.openapi = openapi
