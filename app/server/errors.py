"""Errors in each API's own shape: Anthropic's `{"type": "error", ...}`, OpenAI's `{"error": ...}`."""

from __future__ import annotations

from typing import Any, Literal

Flavor = Literal["anthropic", "openai"]

# Anthropic's error types and the HTTP status each one goes with.
STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_OPENAI_STATUS = {"overloaded_error": 503}
_OPENAI_TYPE = {
    "request_too_large": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


class APIError(Exception):
    """An error answered to the client: `kind` is Anthropic's error type (see STATUS)."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.param = param
        self.headers = headers or {}

    def status_for(self, flavor: Flavor) -> int:
        if self.status is not None:
            return self.status
        if flavor == "openai" and self.kind in _OPENAI_STATUS:
            return _OPENAI_STATUS[self.kind]
        return STATUS.get(self.kind, 500)

    def body(self, flavor: Flavor) -> dict[str, Any]:
        return error_body(flavor, self.kind, self.message, self.param)


def error_body(flavor: Flavor, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error in the given API's shape."""
    if flavor == "openai":
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPE.get(kind, kind),
                "param": param,
                "code": kind,
            }
        }
    return {"type": "error", "error": {"type": kind, "message": message}}


def flavor_of(path: str) -> Flavor:
    """Which API a path belongs to (shared paths such as /v1/models answer in Anthropic's shape,
    which the openai SDK also reads: both keep the message at error.message)."""
    if path.startswith(("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/responses")):
        return "openai"
    return "anthropic"


def invalid(message: str, param: str | None = None) -> APIError:
    """A 400 invalid_request_error."""
    return APIError("invalid_request_error", message, param=param)
