"""The OpenAPI document at /openapi.json: request bodies as the JSON schemas of the models that
validate them, and the errors of each path in its API's own shape."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .errors import flavor_of

# Where the models' schemas live in the document.
REF = "#/components/schemas/{model}"

# -- error responses --------------------------------------------------------------------------

_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
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
        entry: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": schema}},
        }
        if code == "405":
            entry["headers"] = {
                "Allow": {
                    "schema": {"type": "string"},
                    "description": "the methods this path takes",
                }
            }
        out[code] = entry
    return out


# -- the document -----------------------------------------------------------------------------


def request_schemas(bodies: dict[str, type[BaseModel]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body schema of each path (a $ref), and the component schemas they refer to."""
    keys = [(model, "validation") for model in bodies.values()]
    refs, defs = models_json_schema(keys, ref_template=REF)
    by_path = {path: refs[(model, "validation")] for path, model in bodies.items()}
    return by_path, defs.get("$defs", {})


def document(api: Any, bodies: dict[str, type[BaseModel]]) -> None:
    """Give the app's OpenAPI document each POST path's request body (the JSON schema of the
    model that validates it, from `bodies`) and every route's 4xx (and 503/529) responses in the
    shape of the API the path belongs to (routes added later, e.g. /v1/responses, included)."""
    base = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = base()
        by_path, components = request_schemas(bodies)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                if method == "post" and path in by_path:
                    op["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": by_path[path]}},
                    }
                for code, entry in error_responses(flavor_of(path), method).items():
                    op["responses"].setdefault(code, entry)
                op["responses"].pop("422", None)  # validation errors are 400s here
        api.openapi_schema = schema
        return schema

    api.openapi = openapi
