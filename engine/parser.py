"""Turn streamed Qwen3.5/3.6 output into reasoning, answer text and tool-call events.

The model writes `reasoning</think>\\n\\nanswer`, with tool calls in the answer in Qwen3-Coder XML:

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    </function>
    </tool_call>

A value may hold any text except the format's own tags (`<parameter=`, `</parameter>`,
`</function>`, `</tool_call>`); those end it, as in Qwen's reference parser.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from .events import Event, ReasoningDelta, TextDelta, ToolCall, ToolCallError

__all__ = ["StreamParser", "parse_tool_calls", "tool_schemas"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FUNC_OPEN, FUNC_CLOSE = "<function=", "</function>"
PARAM_OPEN, PARAM_CLOSE = "<parameter=", "</parameter>"

_FORMAT_HINT = (
    " Write tool calls exactly as: <tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n"
    "</parameter>\\n</function>\\n</tool_call>"
)
_JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array", "null"}
# Untyped values are decoded only when they look like JSON; "123 Main St" stays a string.
_LOOKS_JSON = re.compile(r"(?:[\[{]|-?\d|(?:true|false|null)$)")


def tool_schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Tool name -> JSON schema of its parameters, from OpenAI, bare or Anthropic tool dicts."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            continue
        params = spec.get("parameters") or spec.get("input_schema") or {}
        out[name] = params if isinstance(params, dict) else {}
    return out


class StreamParser:
    """Incremental parser: feed() text deltas as they are generated, then finish() once.

    Text is emitted as soon as it cannot be the start of `</think>` or `<tool_call>`; a tool call
    is emitted whole, as ToolCall or ToolCallError, when its `</tool_call>` arrives.
    """

    def __init__(
        self, tools: list[dict[str, Any]] | None = None, *, reasoning: bool = True
    ) -> None:
        self._schemas = tool_schemas(tools) if tools else None
        self._mode = "reasoning" if reasoning else "answer"  # or "call"
        # 2: a stray/leading <think> may follow; 1: one "\n" opening the reasoning may follow.
        self._start = 2
        self._buf = ""  # text not yet emitted
        self._trim = ""  # characters still to drop at the start of answer text
        self._call = ""  # raw text of the open tool call
        self._scan = 0  # where to resume looking for </tool_call> in self._call
        self._out: list[Event] = []

    def feed(self, text: str) -> list[Event]:
        """Parse one delta; return the events it completes."""
        self._buf += text
        self._run(final=False)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Event]:
        """Flush held-back text at the end of generation; an open tool call becomes an error."""
        self._run(final=True)
        if self._mode == "call":
            raw, self._call = self._call, ""
            m = re.search(r"<function=([^<>\n]*)>", raw)
            name = m.group(1).strip() if m else None
            self._out.append(
                ToolCallError(
                    message=f"tool call{f' to {name!r}' if name else ''} was cut off: generation "
                    "ended before </tool_call>",
                    raw=raw,
                    name=name,
                )
            )
            self._mode = "answer"
        out, self._out = self._out, []
        return out

    # -- internals ----------------------------------------------------------------------------
    def _run(self, final: bool) -> None:
        if self._start and not self._opening(final):
            return
        while True:
            if self._mode == "call":
                self._call += self._buf
                self._buf = ""
                i = self._call.find(CALL_CLOSE, self._scan)
                if i < 0:
                    self._scan = max(0, len(self._call) - len(CALL_CLOSE) + 1)
                    return
                end = i + len(CALL_CLOSE)
                raw, self._buf = self._call[:end], self._call[end:]
                self._call, self._scan = "", 0
                self._out.append(_parse_call(raw, self._schemas))
                self._mode, self._trim = "answer", " \t\r\n"
            elif self._mode == "reasoning":
                i = self._buf.find(THINK_CLOSE)
                if i < 0:
                    self._flush(ReasoningDelta, THINK_CLOSE, final)
                    return
                self._emit(ReasoningDelta, self._buf[:i])
                self._buf = self._buf[i + len(THINK_CLOSE) :]
                self._mode, self._trim = "answer", "\r\n"
            else:
                if self._trim:
                    self._buf = self._buf.lstrip(self._trim)
                    if not self._buf:
                        return
                    self._trim = ""
                i = self._buf.find(CALL_OPEN)
                if i < 0:
                    self._flush(TextDelta, CALL_OPEN, final)
                    return
                self._emit(TextDelta, self._buf[:i])
                self._buf = self._buf[i:]
                self._mode = "call"

    def _opening(self, final: bool) -> bool:
        """Swallow a leading `<think>` and the one "\\n" after it; False while undecided."""
        buf = self._buf
        if self._start == 2:
            if not final and len(buf) < len(THINK_OPEN) and THINK_OPEN.startswith(buf):
                return False
            if buf.startswith(THINK_OPEN):
                buf = buf[len(THINK_OPEN) :]
                self._mode = "reasoning"
            self._start = 1 if self._mode == "reasoning" else 0
        if self._start == 1:
            if not buf and not final:
                self._buf = buf
                return False
            if buf.startswith("\n"):
                buf = buf[1:]
            self._start = 0
        self._buf = buf
        return True

    def _flush(self, cls: type[TextDelta] | type[ReasoningDelta], tag: str, final: bool) -> None:
        """Emit the buffer except a suffix that may still grow into `tag`."""
        keep = 0
        if not final:
            # Tags have a single "<", so only the suffix from the last "<" can be a tag prefix.
            i = self._buf.rfind("<", max(0, len(self._buf) - len(tag) + 1))
            if i >= 0 and tag.startswith(self._buf[i:]):
                keep = len(self._buf) - i
        cut = len(self._buf) - keep
        self._emit(cls, self._buf[:cut])
        self._buf = self._buf[cut:]

    def _emit(self, cls: type[TextDelta] | type[ReasoningDelta], text: str) -> None:
        if not text:
            return
        last = self._out[-1] if self._out else None
        if type(last) is cls:
            self._out[-1] = cls(last.text + text)  # type: ignore[union-attr]
        else:
            self._out.append(cls(text))


def parse_tool_calls(
    text: str, tools: list[dict[str, Any]] | None = None
) -> list[ToolCall | ToolCallError]:
    """All tool calls in a complete answer text, in order."""
    parser = StreamParser(tools, reasoning=False)
    events = parser.feed(text) + parser.finish()
    return [e for e in events if isinstance(e, ToolCall | ToolCallError)]


# -- one complete <tool_call> block -----------------------------------------------------------
class _Malformed(Exception):
    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def _parse_call(raw: str, schemas: dict[str, dict[str, Any]] | None) -> ToolCall | ToolCallError:
    """A ToolCall, or a ToolCallError whose message tells the model what to fix."""
    try:
        name, values = _parse_xml(raw[len(CALL_OPEN) : -len(CALL_CLOSE)])
        args = _check(name, values, schemas)
    except _Malformed as e:
        return ToolCallError(message=str(e), raw=raw, name=e.name)
    return ToolCall(id="call_" + uuid.uuid4().hex[:24], name=name, arguments=args, raw=raw)


def _parse_xml(body: str) -> tuple[str, dict[str, str]]:
    """The function name and raw parameter strings of the text between the call tags."""
    pos = _skip_ws(body, 0)
    if not body.startswith(FUNC_OPEN, pos):
        raise _Malformed(
            f"malformed tool call: expected <function=NAME> after <tool_call>, found "
            f"{_snippet(body, pos)}." + _FORMAT_HINT
        )
    name, pos = _tag_arg(body, pos + len(FUNC_OPEN), "function", None)
    values: dict[str, str] = {}
    while True:
        pos = _skip_ws(body, pos)
        if body.startswith(PARAM_OPEN, pos):
            key, pos = _tag_arg(body, pos + len(PARAM_OPEN), "parameter", name)
            end = body.find(PARAM_CLOSE, pos)
            # A structural tag before </parameter> means the value was never closed.
            nxt = [j for j in (body.find(PARAM_OPEN, pos), body.find(FUNC_CLOSE, pos)) if j >= 0]
            if end < 0 or (nxt and min(nxt) < end):
                raise _Malformed(
                    f"malformed tool call to {name!r}: parameter {key!r} is not closed with "
                    "</parameter>." + _FORMAT_HINT,
                    name,
                )
            if key in values:
                raise _Malformed(f"tool call to {name!r} gives parameter {key!r} twice", name)
            value = body[pos:end]
            value = value[1:] if value.startswith("\n") else value
            values[key] = value[:-1] if value.endswith("\n") else value
            pos = end + len(PARAM_CLOSE)
        elif body.startswith(FUNC_CLOSE, pos):
            pos = _skip_ws(body, pos + len(FUNC_CLOSE))
            if pos < len(body):
                raise _Malformed(
                    f"malformed tool call to {name!r}: unexpected text {_snippet(body, pos)} "
                    "after </function>; only </tool_call> may follow." + _FORMAT_HINT,
                    name,
                )
            return name, values
        elif pos == len(body):
            raise _Malformed(
                f"malformed tool call to {name!r}: missing </function> before </tool_call>."
                + _FORMAT_HINT,
                name,
            )
        else:
            raise _Malformed(
                f"malformed tool call to {name!r}: unexpected text {_snippet(body, pos)}; "
                "expected <parameter=KEY> or </function>." + _FORMAT_HINT,
                name,
            )


def _tag_arg(body: str, pos: int, tag: str, name: str | None) -> tuple[str, int]:
    """The NAME of `<tag=NAME>` starting at pos (just after "="), and the index after ">"."""
    end = body.find(">", pos)
    nl = body.find("\n", pos)
    arg = body[pos:end].strip() if end >= 0 and (nl < 0 or nl > end) else ""
    if not arg or "<" in arg:
        what = f"tool call to {name!r}" if name else "tool call"
        raise _Malformed(
            f"malformed {what}: expected <{tag}=NAME> with a name and a closing '>' on one line, "
            f"found {_snippet(body, pos - len(tag) - 2)}." + _FORMAT_HINT,
            name,
        )
    return arg, end + 1


def _check(
    name: str, values: dict[str, str], schemas: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """Typed arguments, checked against the tool's schema when tools were given."""
    schema: dict[str, Any] = {}
    if schemas is not None:
        if name not in schemas:
            available = ", ".join(repr(n) for n in schemas) or "none"
            raise _Malformed(f"unknown tool {name!r}; available tools: {available}", name)
        schema = schemas[name]
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    problems: list[str] = []
    required = schema.get("required")
    missing = [k for k in required if k not in values] if isinstance(required, list) else []
    if missing:
        s = "s" if len(missing) > 1 else ""
        problems.append(
            f"tool call to {name!r} is missing required parameter{s} {', '.join(map(repr, missing))}"
        )
    args: dict[str, Any] = {}
    for key, text in values.items():
        prop = props.get(key)
        types = _types(prop if isinstance(prop, dict) else None)
        ok, value = _convert(text, types)
        if ok:
            args[key] = value
        else:
            want = " or ".join(sorted(types))
            problems.append(
                f"tool call to {name!r} has a bad value for parameter {key!r}: expected {want} "
                f"(JSON), got {_snippet(text, 0)}"
            )
    if problems:
        raise _Malformed("; ".join(problems), name)
    return args


def _types(prop: dict[str, Any] | None) -> set[str]:
    """The JSON types a parameter schema allows (`type`, a type list, or anyOf/oneOf)."""
    if not prop:
        return set()
    found: set[str] = set()
    t = prop.get("type")
    found.update([t] if isinstance(t, str) else t if isinstance(t, list) else [])
    for combo in ("anyOf", "oneOf"):
        alts = prop.get(combo)
        for alt in alts if isinstance(alts, list) else []:
            if isinstance(alt, dict):
                found |= _types(alt)
    return {t for t in found if t in _JSON_TYPES}


def _convert(text: str, types: set[str]) -> tuple[bool, Any]:
    """(ok, value): the raw string decoded as the schema's types ask."""
    if not types:
        if _LOOKS_JSON.match(text.strip()):
            try:
                return True, json.loads(text)
            except (ValueError, RecursionError):
                pass
        return True, text
    if types == {"string"}:
        return True, text
    ok, value = _decode(text)
    if ok and _matches(value, types - {"string"}):
        return True, value
    return "string" in types, text


def _decode(text: str) -> tuple[bool, Any]:
    """JSON, else a Python literal (True, None, single quotes) made JSON-compatible."""
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        # Round-trip through JSON: tuples become lists, sets and bytes are rejected.
        return True, json.loads(json.dumps(ast.literal_eval(text.strip())))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _matches(value: Any, types: set[str]) -> bool:
    """Whether a decoded value is one of the JSON schema types."""
    for t in types:
        if (
            (t == "null" and value is None)
            or (t == "boolean" and isinstance(value, bool))
            or (t == "object" and isinstance(value, dict))
            or (t == "array" and isinstance(value, list))
            or (t == "number" and isinstance(value, int | float) and not isinstance(value, bool))
            or (
                t == "integer"
                and not isinstance(value, bool)
                and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
            )
        ):
            return True
    return False


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _snippet(text: str, pos: int, size: int = 40) -> str:
    """A short quoted excerpt for error messages."""
    part = text[max(pos, 0) : max(pos, 0) + size]
    if not part:
        return "nothing"
    return repr(part + ("..." if len(text) > max(pos, 0) + size else ""))
