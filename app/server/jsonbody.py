"""Request bodies as JSON: strict UTF-8, no lone surrogates, bounded nesting, 400s instead of 500s.

Any endpoint reads its body with `parse_body(await request.body())`; the APIError it raises becomes
a 400 in the endpoint's own error shape (errors.flavor_of picks Anthropic's or OpenAI's by path).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import invalid

# Deeper than any real request (tool schemas nest about ten levels) and far below the recursion
# limit that the template's `tojson` and our own walks would hit.
MAX_DEPTH = 128

_BOM = b"\xef\xbb\xbf"
# Only a \uD800-\uDFFF escape can put a lone surrogate in the parsed text (strict UTF-8 rules
# out encoded ones), so bodies without one skip the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE = re.compile("[\ud800-\udfff]")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; APIError (400) for anything else, naming what is wrong."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, not {_kind(body)}")
    return body


def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON document from UTF-8 bytes; APIError (400) for invalid UTF-8, invalid JSON, NaN or
    Infinity, lone surrogate escapes and nesting deeper than `max_depth`."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(
            f"the request body is not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"
        ) from e
    if not text.strip():
        raise invalid("the request body is empty: send a JSON object")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as e:
        raise _too_deep(max_depth) from e
    except json.JSONDecodeError as e:
        raise invalid(f"the request body is not valid JSON: {e}") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise invalid(f"the request body is not acceptable JSON: {e}") from e
    if _opens(text) > max_depth and depth_exceeds(value, max_depth):
        raise _too_deep(max_depth)
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(value)
        if where is not None:
            raise invalid(
                f"{where or 'the request body'}: holds a lone UTF-16 surrogate escape (such as "
                "\\ud800), which is not a Unicode character; send valid UTF-8 text"
            )
    return value


def _no_constant(name: str) -> Any:
    raise invalid(f"the request body is not valid JSON: {name} is not a JSON value")


def _too_deep(limit: int) -> Exception:
    return invalid(f"the request body nests arrays and objects more than {limit} levels deep")


def _opens(text: str) -> int:
    return text.count("[") + text.count("{")


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests arrays and objects more than `limit` deep (level by level, each
    container once, so the cost follows what json.loads already built)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for v in level:
            items = v.values() if type(v) is dict else v if type(v) is list else ()
            below.extend(x for x in items if type(x) in _CONTAINERS)
        level = below
    return False


_CONTAINERS = (list, dict)


def _lone_surrogate(value: Any) -> str | None:
    """Where the first string holding a lone surrogate is ("messages[0].content"; "" for the
    top level), or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if _LONE.search(v):
                return where
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]") for i, x in reversed(list(enumerate(v))))
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                if _LONE.search(k):
                    return where or ""
                stack.append((x, f"{where}.{k}" if where else k))
    return None


def _kind(value: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)
