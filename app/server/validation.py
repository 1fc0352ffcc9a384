"""What the request models of every API share: the base model, tagged unions with refusals a user
can act on, and pydantic's errors as one 400 naming the field (`messages[0].content[1].text: ...`).

The models are the one description of what the server accepts: the handlers validate with them
and /openapi.json serves their JSON schemas.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Self, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from pydantic_core import PydanticCustomError

from .errors import APIError, invalid

__all__ = [
    "MAX_STOP",
    "Arguments",
    "RequestModel",
    "StopStrings",
    "kind_of",
    "one_of",
    "stop_list",
    "str_or_list",
    "type_of",
]

MAX_STOP = 16  # stop strings per request
# Union tags start with this so error locations can drop them (field names never do).
_TAG = "="


class RequestModel(BaseModel):
    """A request body or part of one: unknown fields ignored (clients send options we do not
    use), JSON types taken strictly, a null treated as an absent field, and a whole number
    written as 4.0 taken as an integer (JSON has one number type)."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _as_json_means(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _integral(v) for k, v in data.items() if v is not None}
        return data

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        """`body` validated; APIError (400) naming the first field that is wrong."""
        try:
            return cls.model_validate(body)
        except ValidationError as e:
            raise error_from(e) from None


def _integral(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


NonEmpty = Annotated[str, Field(min_length=1)]


def kind_of(value: Any) -> str:
    """A JSON value's kind in words ("an object", "null", ...)."""
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def type_of(value: Any, default: str | None = None) -> Any:
    """The `type` of an object in a body (`default` when it has none); None for a non-object."""
    if isinstance(value, dict):
        return value.get("type", default)
    return getattr(value, "type", None)


Refusal = str | tuple[str, str]


def one_of(pick: Callable[[Any], Any], branches: dict[str, Any], refuse: Callable[[Any], Refusal]) -> Any:
    """A union whose branch `pick(value)` names (a key of `branches`); a value it names no branch
    for is refused with `refuse(value)`: a message, or (field, message) to name a field of it."""

    def reject(value: Any) -> Any:
        why = refuse(value)
        at, why = why if isinstance(why, tuple) else ("", why)
        raise PydanticCustomError("refused", "{why}", {"why": why, "at": at})

    def tag(value: Any) -> str:
        if isinstance(value, BaseModel):  # serializing: the branch is the model's own type
            mine = (k for k, t in branches.items() if isinstance(t, type) and isinstance(value, t))
            return _TAG + next(mine, "")
        key = pick(value)
        return _TAG + key if isinstance(key, str) and key in branches else _TAG

    members = [Annotated[t, Tag(_TAG + k)] for k, t in branches.items()]
    members.append(Annotated[SkipJsonSchema[Any], AfterValidator(reject), Tag(_TAG)])
    return Annotated[Union[tuple(members)], Discriminator(tag)]  # noqa: UP007


def str_or_list(value: Any) -> str | None:
    """Which side of a string-or-array union `value` is on: "str", "list" or None."""
    return "str" if isinstance(value, str) else "list" if isinstance(value, list) else None


def _stops_refused(value: Any) -> str:
    return "expected a non-empty string or an array of them"


StopStrings = one_of(
    str_or_list,
    {"str": NonEmpty, "list": Annotated[list[NonEmpty], Field(max_length=MAX_STOP)]},
    _stops_refused,
)


def stop_list(stop: str | list[str] | None) -> list[str]:
    """Stop strings as a list (a lone string is a list of one)."""
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def _json_object(value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        args = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as e:
        raise PydanticCustomError("json_invalid", "not valid JSON ({e})", {"e": str(e)}) from e
    if not isinstance(args, dict):
        raise PydanticCustomError("json_object", "must encode a JSON object")
    return args


# A tool call's arguments: a JSON-encoded object (or the object itself), read as a dict.
Arguments = Annotated[
    str | dict[str, Any],
    AfterValidator(_json_object),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"type": "object"},
                },
                {"type": "object"},
            ]
        }
    ),
]


# -- errors -------------------------------------------------------------------------------------

_WANT = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}


def error_from(e: ValidationError) -> APIError:
    """The first of pydantic's errors as a 400: `where: what is wrong`, `param` the field."""
    err = e.errors(include_url=False)[0]
    where = location(err["loc"])
    at = (err.get("ctx") or {}).get("at")
    if at:
        where = f"{where}.{at}" if where else at
    text = describe(err)
    return invalid(f"{where}: {text}" if where else text, param=where or None)


def location(loc: tuple[Any, ...]) -> str:
    """`("messages", 0, "=list", 2, "text")` as `messages[0][2].text` less union tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(_TAG):
            out += f".{part}" if out else str(part)
    return out


def _number(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def describe(err: Any) -> str:
    """One pydantic error in the words the hand-written checks used."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "refused":
        return str(ctx["why"])
    if kind == "missing":
        return "field required"
    if kind in _WANT:
        return f"expected {_WANT[kind]}, got {kind_of(value)}"
    if kind == "literal_error":
        return f"expected {ctx['expected']} (got {value!r})"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {_number(ctx[key])} (got {value!r})"
    if kind == "finite_number":
        return "expected a finite number"
    if kind == "too_short":
        return f"expected at least {ctx['min_length']} item(s), got {len(value)}"
    if kind == "too_long":
        return f"at most {ctx['max_length']} entries are supported (got {len(value)})"
    if kind == "string_too_short":
        return "must not be empty"
    return str(err["msg"])
