"""Turn streamed Qwen3.5/3.6 output into reasoning, answer text and tool-call events.

The model writes `reasoning</think>\\n\\nanswer`, with tool calls in the answer in Qwen3-Coder XML:

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    </function>
    </tool_call>

What real models write besides, and how it is read (README, "Tool calls"):

- a complete call inside the reasoning (`<tool_call>` then `<function=` or `{`) is a call, and the
  reasoning ends there; a later `</think>` is dropped;
- a JSON body `{"name": ..., "arguments": {...}}` (Hermes / Qwen2.5 shape; arguments may be a
  JSON string) is a call;
- a bare `<function=NAME>` block at the start of a line, without `<tool_call>`, is a call;
- missing `</parameter>`, `</function>` or (at the end) `</tool_call>` are supplied when the tool is
  in the request's tool list and every parameter is complete; a value cut by the token limit is not.

A value is everything between `<parameter=KEY>` and the `</parameter>` that is followed by
another `<parameter=`, `</function>` or the end of the call, less one leading and one trailing
newline: so values may hold markup, including `</parameter>` followed by anything else. Spaces
around a value on one line (`<parameter=q> two words </parameter>`) are kept in a string (as
Qwen's own parser keeps them: indentation in an edit's old text matters) and ignored when the
value is decoded as JSON (numbers, booleans, objects, arrays).

`<tool_call>` starts a call where a call body (`<function=` or a JSON object) follows it, in the
answer as in the reasoning, or where it opens a line of its own (then a bad body is reported):
prose that names the tag mid-sentence keeps its text.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import uuid
from typing import Any

from .events import Event, ReasoningDelta, TextDelta, ToolCall, ToolCallError

__all__ = ["StreamParser", "parse_tool_calls", "tool_schemas"]

log = logging.getLogger(__name__)

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
# `<function=NAME>` then a parameter or the close: what makes a bare block a call, not prose.
_BARE_CALL = re.compile(r"<function=[^<>\n]{1,200}>\s*(?:<parameter=|</function>)")
_JSON_START = re.compile(r'\{\s*"')  # a JSON call body, not prose in braces
_BARE_HOLD = 256  # characters held back while a bare `<function=` may still become a call


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

    Text is emitted as soon as it cannot be the start of a tag; a tool call is emitted whole, as
    ToolCall or ToolCallError, when it ends. Work per call is linear in its length.
    """

    def __init__(self, tools: list[dict[str, Any]] | None = None, *, reasoning: bool = True) -> None:
        self._schemas = tool_schemas(tools) if tools else None
        self._mode = "reasoning" if reasoning else "answer"  # or "call"
        # 2: a stray/leading <think> may follow; 1: one "\n" opening the reasoning may follow.
        self._start = 2
        self._buf = ""  # text not yet emitted
        self._trim = ""  # characters still to drop at the start of answer text
        self._line_start = True  # the answer so far ends a line (a bare <function= may start)
        self._drop: set[str] = set()  # stray closing tags to swallow once in the answer
        self._texted = False  # answer text was emitted since the last call
        self._sep = ""  # put before the next answer text
        self._parts: list[str] = []  # raw text of the open tool call, in pieces
        self._size = 0  # its length
        self._tail = ""  # its text not yet searched for a closing tag (plus a tag's length)
        self._bare = False  # the open call has no <tool_call> opener
        self._tentative = 0  # end of the first `</tool_call>` that fell inside a value, or 0
        self._out: list[Event] = []

    def feed(self, text: str) -> list[Event]:
        """Parse one delta; return the events it completes."""
        self._buf += text
        self._run(final=False)
        out, self._out = self._out, []
        return out

    def prime(self, text: str) -> None:
        """Parse text the prompt already holds (an assistant prefix) without emitting it.

        What follows is parsed together with it: a prefix may open a tool call or close the
        reasoning. Text it leaves undecided (not inside a call) counts as written, so none of
        the prefix is ever emitted later.
        """
        self.feed(text)
        if self._mode != "call" and self._buf:
            self._run(final=True)
        self._out = []

    @property
    def in_reasoning(self) -> bool:
        """The text so far ends inside the reasoning (before `</think>`)."""
        return self._mode == "reasoning"

    def finish(self, *, truncated: bool = False) -> list[Event]:
        """Flush held-back text at the end of generation; settle an open tool call.

        `truncated`: generation stopped at the token limit (or was cancelled), so an unclosed
        parameter value may be cut short and is reported instead of being completed.
        """
        while True:
            self._run(final=True)
            if self._mode != "call":
                break
            call = self._joined()
            self._parts, self._size, self._tail = [], 0, ""
            self._mode, self._trim = "answer", " \t\r\n"
            if self._tentative:
                # A `</tool_call>` inside a value that never closed: the call ended there.
                self._buf = call[self._tentative :] + self._buf
                self._out.append(_parse_call(call[: self._tentative], self._schemas, self._bare))
                self._tentative = 0
                continue
            self._out.append(_parse_call(call, self._schemas, self._bare, end=True, truncated=truncated))
        out, self._out = self._out, []
        return out

    # -- internals ----------------------------------------------------------------------------
    def _run(self, final: bool) -> None:
        if self._start and not self._opening(final):
            return
        while True:
            if self._mode == "call":
                if not self._call_step():
                    return
            elif self._mode == "reasoning":
                if not self._reasoning_step(final):
                    return
            elif not self._answer_step(final):
                return

    def _reasoning_step(self, final: bool) -> bool:
        buf = self._buf
        i, j = buf.find(THINK_CLOSE), buf.find(CALL_OPEN)
        if i >= 0 and (j < 0 or i < j):
            self._emit(ReasoningDelta, buf[:i])
            self._buf = buf[i + len(THINK_CLOSE) :]
            self._mode, self._trim = "answer", "\r\n"
            return True
        if j < 0:
            self._flush(ReasoningDelta, (THINK_CLOSE, CALL_OPEN), final)
            return False
        # `<tool_call>` inside the reasoning is a call only when a function or JSON body follows.
        k = _skip_ws(buf, j + len(CALL_OPEN))
        rest = buf[k : k + len(FUNC_OPEN)]
        if rest.startswith(FUNC_OPEN) or _JSON_START.match(buf, k):
            self._emit(ReasoningDelta, buf[:j])
            log.debug("tool call written inside the reasoning: the reasoning ends there")
            self._start_call(buf[j:], bare=False)
            self._drop.add(THINK_CLOSE)
            return True
        undecided = FUNC_OPEN.startswith(rest) or not buf[k:].rstrip("{ \t\r\n")
        if not final and undecided:  # until more arrives
            self._emit(ReasoningDelta, buf[:j])
            self._buf = buf[j:]
            return False
        self._emit(ReasoningDelta, buf[: j + len(CALL_OPEN)])
        self._buf = buf[j + len(CALL_OPEN) :]
        return True

    def _answer_step(self, final: bool) -> bool:
        if self._trim:
            self._buf = self._buf.lstrip(self._trim)
            if not self._buf:
                return False
            self._trim = ""
        buf = self._buf
        tags = (CALL_OPEN, FUNC_OPEN, *sorted(self._drop))
        hits = [(i, t) for t in tags if (i := buf.find(t)) >= 0]
        if not hits:
            self._flush(TextDelta, tags, final)
            return False
        i, tag = min(hits)
        if tag == CALL_OPEN:
            return self._answer_call_open(buf, i, final)
        if tag != FUNC_OPEN:  # the late `</think>` of a reasoning call, or a bare call's close
            self._emit(TextDelta, buf[:i])
            # Text on both sides of a dropped `</think>` stays two paragraphs.
            self._sep = "\n\n" if tag == THINK_CLOSE and self._texted else ""
            self._drop.discard(tag)
            self._buf = buf[i + len(tag) :]
            self._trim = " \t\r\n"
            return True
        line_start = buf[i - 1] == "\n" if i else self._line_start
        m = _BARE_CALL.match(buf, i)
        if line_start and m:
            self._emit(TextDelta, buf[:i])
            log.debug("tool call without <tool_call>: read as a call")
            self._start_call(buf[i:], bare=True)
            return True
        if line_start and not final and len(buf) - i < _BARE_HOLD and _bare_prefix(buf[i:]):
            self._emit(TextDelta, buf[:i])
            self._buf = buf[i:]
            return False
        self._emit(TextDelta, buf[: i + len(FUNC_OPEN)])
        self._buf = buf[i + len(FUNC_OPEN) :]
        return True

    def _answer_call_open(self, buf: str, i: int, final: bool) -> bool:
        """`<tool_call>` at `i` in the answer. A call body (`<function=` or a JSON object) makes it
        a call anywhere, as in the reasoning; a tag opening its own line is a call whatever
        follows on the next line or after it (a malformed one is reported); otherwise it is prose
        that names the tag and stays text."""
        k = _skip_ws(buf, i + len(CALL_OPEN))
        rest = buf[k : k + len(FUNC_OPEN)]
        strong = rest.startswith(FUNC_OPEN) or _JSON_START.match(buf, k) is not None
        if not strong and not final and (k == len(buf) or FUNC_OPEN.startswith(rest) or rest == "{"):
            self._emit(TextDelta, buf[:i])  # undecided until more arrives
            self._buf = buf[i:]
            return False
        line = buf[buf.rfind("\n", 0, i) + 1 : i]
        own_line = not line.strip() and (i > len(line) or self._line_start)
        after = buf[i + len(CALL_OPEN) : k]
        weak = k == len(buf) or "\n" in after or buf[k] in "<{"
        cut = final and k == len(buf)  # the output ended at the tag: a call cut off
        if strong or cut or (own_line and weak):
            self._emit(TextDelta, buf[:i])
            self._start_call(buf[i:], bare=False)
            return True
        log.debug("<tool_call> in the answer's prose (no call body follows): kept as text")
        self._emit(TextDelta, buf[: i + len(CALL_OPEN)])
        self._buf = buf[i + len(CALL_OPEN) :]
        return True

    def _start_call(self, text: str, *, bare: bool) -> None:
        self._mode, self._bare, self._buf = "call", bare, ""
        self._parts, self._size = [text], len(text)
        self._tail, self._tentative = text[0 if bare else len(CALL_OPEN) :], 0

    def _joined(self) -> str:
        call = "".join(self._parts)
        self._parts = [call]
        return call

    def _call_step(self) -> bool:
        """Look for the end of the open call; True once it ended and was emitted.

        Only new text is searched (`_tail`), and the parts are joined only when a closing tag
        is found: linear in the call's length.
        """
        if self._buf:
            self._parts.append(self._buf)
            self._size += len(self._buf)
            self._tail += self._buf
            self._buf = ""
        closes = (CALL_CLOSE, FUNC_CLOSE) if self._bare else (CALL_CLOSE,)
        body_at = 0 if self._bare else len(CALL_OPEN)
        while True:
            base, tail = self._size - len(self._tail), self._tail
            hits = [(base + i, t) for t in closes if (i := tail.find(t)) >= 0]
            if self._tentative and (i := tail.find(CALL_OPEN)) >= 0:
                hits.append((base + i, CALL_OPEN))
            if not hits:
                self._tail = tail[-(len(CALL_CLOSE) - 1) :]
                return False
            i, tag = min(hits)
            if tag == CALL_OPEN:  # a new call began: the open one ended at its `</tool_call>`
                end = self._tentative
                break
            self._tail = tail[i + 1 - base :]
            end = i + len(tag)
            call = self._joined()
            if not _inside_value(call[body_at : end if tag == FUNC_CLOSE else i]):
                break
            if tag == CALL_CLOSE and not self._tentative:
                self._tentative = end
        call = self._joined()
        raw, self._buf = call[:end], call[end:]
        self._parts, self._size, self._tail, self._tentative = [], 0, "", 0
        self._out.append(_parse_call(raw, self._schemas, self._bare))
        self._texted = False
        if self._bare and raw.endswith(FUNC_CLOSE):
            self._drop.add(CALL_CLOSE)
        self._mode, self._trim = "answer", " \t\r\n"
        return True

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

    def _flush(self, cls: type[TextDelta] | type[ReasoningDelta], tags: tuple[str, ...], final: bool) -> None:
        """Emit the buffer except a suffix that may still grow into one of `tags`."""
        keep = 0
        if not final:
            # Tags have a single "<", so only the suffix from the last "<" can be a tag prefix.
            i = self._buf.rfind("<", max(0, len(self._buf) - max(map(len, tags)) + 1))
            if i >= 0 and any(t.startswith(self._buf[i:]) for t in tags):
                keep = len(self._buf) - i
        cut = len(self._buf) - keep
        self._emit(cls, self._buf[:cut])
        self._buf = self._buf[cut:]

    def _emit(self, cls: type[TextDelta] | type[ReasoningDelta], text: str) -> None:
        if not text:
            return
        if cls is TextDelta:
            text, self._sep = self._sep + text, ""
            self._line_start, self._texted = text.endswith("\n"), True
        last = self._out[-1] if self._out else None
        if type(last) is cls:
            self._out[-1] = cls(last.text + text)  # type: ignore[union-attr]
        else:
            self._out.append(cls(text))


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None) -> list[ToolCall | ToolCallError]:
    """All tool calls in a complete answer text, in order."""
    parser = StreamParser(tools, reasoning=False)
    events = parser.feed(text) + parser.finish()
    return [e for e in events if isinstance(e, ToolCall | ToolCallError)]


def _bare_prefix(text: str) -> bool:
    """Whether `text` (starting at `<function=`) may still grow into a bare call's opening."""
    gt = text.find(">")
    if gt < 0:
        return "\n" not in text and "<" not in text[1:]
    rest = text[gt + 1 :].lstrip()
    return not rest or PARAM_OPEN.startswith(rest[:11]) or FUNC_CLOSE.startswith(rest[:11])


def _inside_value(body: str) -> bool:
    """Whether `body` (a call's text so far) ends inside a parameter value never closed, so a
    closing tag found there is part of the value; a JSON body counts until it parses."""
    pos = _skip_ws(body, 0)
    if body.startswith("{", pos):
        tail = body.rstrip()
        if not tail.endswith("}"):
            return True
        try:
            json.loads(tail)
        except (ValueError, RecursionError):
            return True
        return False
    i = body.rfind(PARAM_OPEN)
    if i < 0:
        return False
    j = body.find(PARAM_CLOSE, i)
    while j >= 0:
        k = _skip_ws(body, j + len(PARAM_CLOSE))
        if k == len(body) or body.startswith(FUNC_CLOSE, k):
            return False
        j = body.find(PARAM_CLOSE, j + 1)
    return True


# -- one complete tool call --------------------------------------------------------------------
class _Malformed(Exception):
    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def _parse_call(
    raw: str,
    schemas: dict[str, dict[str, Any]] | None,
    bare: bool = False,
    *,
    end: bool = False,
    truncated: bool = False,
) -> ToolCall | ToolCallError:
    """A ToolCall, or a ToolCallError whose message tells the model what to fix.

    `end`: the output ended inside this call (no `</tool_call>`); `truncated`: by the token limit.
    """
    body = raw if bare else raw[len(CALL_OPEN) :]
    closed = body.endswith(CALL_CLOSE)
    if closed:
        body = body[: -len(CALL_CLOSE)]
    try:
        if body.lstrip().startswith("{"):
            name, values = _parse_json(body)
            typed = True
        else:
            name, values, supplied = _parse_xml(body, schemas, bare, end, truncated)
            typed = False
            if supplied:
                log.debug("tool call to %r: supplied missing %s", name, ", ".join(supplied))
        args = _check(name, values, schemas, typed)
    except _Malformed as e:
        return ToolCallError(message=str(e), raw=raw, name=e.name)
    return ToolCall(id="call_" + uuid.uuid4().hex[:24], name=name, arguments=args, raw=raw)


def _cut_off(name: str | None) -> str:
    return f"tool call{f' to {name!r}' if name else ''} was cut off: generation ended before </tool_call>"


def _parse_json(body: str) -> tuple[str, dict[str, Any]]:
    """Name and arguments of a `{"name": ..., "arguments": {...}}` body."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _Malformed(
            f"malformed tool call: the JSON body does not parse ({e}); give one object "
            '{"name": ..., "arguments": {...}}.' + _FORMAT_HINT
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise _Malformed(
            'malformed tool call: a JSON body needs one object with a "name" string.' + _FORMAT_HINT
        )
    name = obj["name"]
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            args = None
    if not isinstance(args, dict):
        raise _Malformed(
            f'malformed tool call to {name!r}: "arguments" must be a JSON object.' + _FORMAT_HINT,
            name,
        )
    return name, args


def _parse_xml(
    body: str, schemas: dict[str, dict[str, Any]] | None, bare: bool, end: bool, truncated: bool
) -> tuple[str, dict[str, str], list[str]]:
    """The function name, raw parameter strings and closing tags that had to be supplied."""
    pos = _skip_ws(body, 0)
    if not body.startswith(FUNC_OPEN, pos):
        if end and not body.strip():
            raise _Malformed(_cut_off(None))
        raise _Malformed(
            f"malformed tool call: expected <function=NAME> after <tool_call>, found "
            f"{_snippet(body, pos)}." + _FORMAT_HINT
        )
    name, pos = _tag_arg(body, pos + len(FUNC_OPEN), "function", None)
    schema = schemas.get(name) if schemas is not None else None
    props = schema.get("properties") if isinstance(schema, dict) else None
    props = props if isinstance(props, dict) else {}
    known = schema is not None  # only a listed tool gets missing closing tags supplied
    values: dict[str, str] = {}
    supplied: list[str] = []
    while True:
        pos = _skip_ws(body, pos)
        if body.startswith(PARAM_OPEN, pos):
            key, pos = _tag_arg(body, pos + len(PARAM_OPEN), "parameter", name)
            if key in values:
                raise _Malformed(f"tool call to {name!r} gives parameter {key!r} twice", name)
            value, pos, closed = _param_value(body, pos, props, values, key, name, known, end, truncated)
            values[key] = value
            if not closed:
                supplied.append(f"</parameter> after {key!r}")
        elif body.startswith(FUNC_CLOSE, pos):
            pos = _skip_ws(body, pos + len(FUNC_CLOSE))
            if pos < len(body):
                raise _Malformed(
                    f"malformed tool call to {name!r}: unexpected text {_snippet(body, pos)} "
                    "after </function>; only </tool_call> may follow." + _FORMAT_HINT,
                    name,
                )
            break
        elif pos == len(body):
            if not known:
                if end:
                    raise _Malformed(_cut_off(name), name)
                raise _Malformed(
                    f"malformed tool call to {name!r}: missing </function> before </tool_call>."
                    + _FORMAT_HINT,
                    name,
                )
            supplied.append("</function>")
            break
        else:
            raise _Malformed(
                f"malformed tool call to {name!r}: unexpected text {_snippet(body, pos)}; "
                "expected <parameter=KEY> or </function>." + _FORMAT_HINT,
                name,
            )
    if end and not bare:
        supplied.append("</tool_call>")
    return name, values, supplied


def _param_value(
    body: str,
    pos: int,
    props: dict[str, Any],
    values: dict[str, str],
    key: str,
    name: str,
    known: bool,
    end: bool,
    truncated: bool,
) -> tuple[str, int, bool]:
    """A parameter's value starting at `pos`, where parsing goes on, and whether the model
    closed it with </parameter> (a listed tool's value may end at the next tag instead)."""
    stop, nxt = _value_end(body, pos, props, values, key)
    value = body[pos:stop]
    closed = nxt >= 0
    if not closed:  # no </parameter>: the value ends at the next tag or the end
        # At the end of the output a value is complete only if its line was ended.
        cut = end and stop == len(body) and (truncated or not value.endswith("\n"))
        odd = re.search(r"</parameter[^>\n]*>?\s*$", value)
        if odd:  # a misspelt close (`</parameter/>`): not guessed at
            raise _Malformed(
                f"malformed tool call to {name!r}: parameter {key!r} ends with "
                f"{odd.group().strip()!r} instead of </parameter>." + _FORMAT_HINT,
                name,
            )
        if not known or cut:
            if end:
                raise _Malformed(_cut_off(name), name)
            raise _Malformed(
                f"malformed tool call to {name!r}: parameter {key!r} is not closed with "
                "</parameter>." + _FORMAT_HINT,
                name,
            )
        nxt = stop
    elif value.rstrip().endswith(FUNC_CLOSE) and _skip_ws(body, nxt) == len(body):
        raise _Malformed(
            f"malformed tool call to {name!r}: </function> comes before the "
            f"</parameter> of {key!r}." + _FORMAT_HINT,
            name,
        )
    value = value[1:] if value.startswith("\n") else value
    return (value[:-1] if value.endswith("\n") else value), nxt, closed


def _value_end(
    body: str, pos: int, props: dict[str, Any], given: dict[str, str], key: str
) -> tuple[int, int]:
    """(end of the value, index after its `</parameter>`), or (end, -1) when it has none.

    A `</parameter>` closes only when another `<parameter=`, `</function>` or the end follows.
    Without one, the value ends at a line starting `<parameter=` of a parameter the tool has
    (any, when its schema lists none) and the call did not give yet, at `</function>` before
    the end, or at the end.
    """
    j = body.find(PARAM_CLOSE, pos)
    while j >= 0:
        k = _skip_ws(body, j + len(PARAM_CLOSE))
        if k == len(body) or body.startswith(PARAM_OPEN, k) or body.startswith(FUNC_CLOSE, k):
            break
        j = body.find(PARAM_CLOSE, j + 1)
    close = j
    f = body.rfind(FUNC_CLOSE, pos)
    func_end = f >= 0 and _skip_ws(body, f + len(FUNC_CLOSE)) == len(body)
    if close < 0 and func_end:  # `</parameter>`, stray text, `</function>`: reported, not read
        j = body.find(PARAM_CLOSE, pos)
        if j >= 0:
            return j, j + len(PARAM_CLOSE)
    # A dropped </parameter>: the next parameter's line, before any valid close.
    limit = close if close >= 0 else len(body)
    for m in re.finditer(r"\n<parameter=([^<>\n]+)>", body[pos:limit]):
        other = m.group(1).strip()
        if other != key and other not in given and (not props or other in props):
            return pos + m.start() + 1, -1
    if close >= 0:
        return close, close + len(PARAM_CLOSE)
    return (f if func_end else len(body)), -1


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
    name: str, values: dict[str, Any], schemas: dict[str, dict[str, Any]] | None, typed: bool
) -> dict[str, Any]:
    """Typed arguments, checked against the tool's schema when tools were given.

    `typed`: values came decoded from JSON; strings among them are still converted when the
    schema asks for another type.
    """
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
        if typed and not isinstance(text, str):
            ok, value = not types or _matches(text, types), text
        elif typed and not types:
            ok, value = True, text
        else:
            ok, value = _convert(text, types)
        if ok:
            args[key] = value
        else:
            want = " or ".join(sorted(types))
            got = text if isinstance(text, str) else json.dumps(text)
            problems.append(
                f"tool call to {name!r} has a bad value for parameter {key!r}: expected {want} "
                f"(JSON), got {_snippet(got, 0)}"
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
            (t == "string" and isinstance(value, str))
            or (t == "null" and value is None)
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
