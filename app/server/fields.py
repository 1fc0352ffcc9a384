"""Reading request bodies field by field, with errors that name the field and what it should be.

Hand-written rather than pydantic models so that every mistake is answered in the API's own error
shape with a message a user can act on, and unknown fields (new SDK options) are ignored.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import invalid
from .jsonbody import parse_body

__all__ = ["field", "number", "parse_body", "strings"]

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}
_MISSING = object()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in _TYPE_NAMES.items():
        if type(value) is t:
            return name
    return type(value).__name__


def _is(value: Any, t: type) -> bool:
    if t is float:
        return type(value) in (int, float) and math.isfinite(value)
    if t is int:
        return type(value) is int or (type(value) is float and value.is_integer())
    return type(value) is t


def field(
    obj: dict[str, Any],
    key: str,
    t: type | tuple[type, ...],
    where: str,
    *,
    required: bool = False,
    default: Any = None,
) -> Any:
    """`obj[key]` checked to be of type `t` (null counts as absent); 400 naming `where.key`."""
    value = obj.get(key, _MISSING)
    name = f"{where}.{key}" if where else key
    if value is _MISSING or value is None:
        if required:
            raise invalid(f"{name}: field required", param=name)
        return default
    types = t if isinstance(t, tuple) else (t,)
    for tt in types:
        if _is(value, tt):
            return int(value) if tt is int else value
    want = " or ".join(_TYPE_NAMES.get(tt, tt.__name__) for tt in types)
    raise invalid(f"{name}: expected {want}, got {_kind(value)}", param=name)


def number(
    obj: dict[str, Any],
    key: str,
    where: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    integer: bool = False,
    required: bool = False,
) -> Any:
    """A number field within [lo, hi] (None: absent)."""
    value = field(obj, key, int if integer else float, where, required=required)
    if value is None:
        return None
    name = f"{where}.{key}" if where else key
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise invalid(f"{name}: must be {bounds} (got {value})", param=name)
    return value


def strings(value: Any, name: str, limit: int = 16) -> list[str]:
    """A list of non-empty strings (a lone string is a list of one)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise invalid(f"{name}: expected a non-empty string or an array of them", param=name)
    if len(value) > limit:
        raise invalid(f"{name}: at most {limit} entries are supported", param=name)
    return list(value)
