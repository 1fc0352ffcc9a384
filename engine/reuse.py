"""Where to snapshot a ChatML prompt, and replies rendered back with the tokens generated for them.

Message boundaries (token positions) come from the ids themselves: `<|im_start|>` opens every
message, so the end of the system + tools prefix, the start of the last user message and the start
of the generation prompt need no second rendering. Positions a client marks (Anthropic's
`cache_control`) are found by rendering the conversation up to the marked message.

A template re-renders a returned reply in its own way (`\\n\\n<tool_call>` where the model wrote
`\\n<tool_call>`, arguments in the client's key order), so the prompt would stop extending the
cached one inside that reply. `ReplyMemo` remembers each generated assistant turn by a canonical
form of its text (whitespace dropped, tool-call parameters sorted) and puts the generated ids back
in place of the template's rendering when the two are the same turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("locus.engine.cache")

# Boundaries closer than this to where a request resumed are not snapshotted (tokens).
MIN_GAP = 32

_WS = re.compile(r"\s+")
_FUNCTION = re.compile(r"<function=([^>]*)>(.*?)</function>", re.S)
_PARAM = re.compile(r"<parameter=[^>]*>.*?</parameter>", re.S)


@dataclass(frozen=True)
class ChatTokens:
    """The ids of a ChatML template's markers (None when the tokenizer has no `<|im_start|>`)."""

    im_start: int
    im_end: int
    roles: dict[int, str]  # first token after <|im_start|> -> role

    @classmethod
    def of(cls, tokenizer: Any) -> ChatTokens | None:
        ids = []
        for t in ("<|im_start|>", "<|im_end|>"):
            i = tokenizer.convert_tokens_to_ids(t)
            if not isinstance(i, int) or tokenizer.convert_ids_to_tokens(i) != t:
                return None
            ids.append(i)
        roles = {}
        for role in ("system", "user", "assistant"):
            enc = tokenizer.encode(role, add_special_tokens=False)
            if enc:
                roles[enc[0]] = role
        return cls(ids[0], ids[1], roles)

    def role_at(self, ids: Sequence[int], i: int) -> str | None:
        return self.roles.get(ids[i + 1]) if i + 1 < len(ids) else None


def boundaries(ct: ChatTokens, ids: Sequence[int]) -> dict[int, str]:
    """Message boundaries worth a snapshot: position -> kind.

    "system": where the first non-system message starts (the system prompt and tools end there,
    shared by every session of one agent); "user": where the last user message starts (a retry
    that edits it resumes there); "generation": where the generation prompt starts.
    """
    starts = [i for i, t in enumerate(ids) if t == ct.im_start]
    out: dict[int, str] = {}
    if not starts:
        return out
    first = next((i for i in starts if ct.role_at(ids, i) != "system"), None)
    if first is not None and first > 0:
        out[first] = "system"
    users = [i for i in starts[:-1] if ct.role_at(ids, i) == "user"]
    if users:
        out.setdefault(users[-1], "user")
    out[starts[-1]] = "generation"
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def canonical(text: str) -> str:
    """An assistant turn's text up to what templates change: whitespace, and the order of a tool
    call's parameters (clients re-serialise arguments in their own key order)."""

    def sort_params(m: re.Match[str]) -> str:
        params = sorted(_PARAM.findall(m.group(2)))
        return f"<function={m.group(1)}>{''.join(params)}</function>"

    return _FUNCTION.sub(sort_params, _WS.sub("", text))


def assistant_spans(ct: ChatTokens, ids: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each finished assistant turn: from its `<|im_start|>` through `<|im_end|>`."""
    spans = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == ct.im_start and ct.role_at(ids, i) == "assistant":
            j = i + 1
            while j < n and ids[j] != ct.im_end and ids[j] != ct.im_start:
                j += 1
            if j < n and ids[j] == ct.im_end:
                spans.append((i, j + 1))
                i = j + 1
                continue
        i += 1
    return spans


class ReplyMemo:
    """Generated assistant turns (`<|im_start|>assistant...<|im_end|>` ids) by canonical text.

    Bounded by count (turns are small next to snapshots); saved beside the disk cache so a
    restarted process still renders old replies as they were generated.
    """

    FILE = "locus-replies.json"

    def __init__(self, max_entries: int = 1024, disk_dir: Path | None = None):
        self.max_entries = max_entries
        self.disk_dir = disk_dir
        self._turns: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loaded = False
        self.spliced = 0  # turns put back as generated (for tests and stats)

    @staticmethod
    def _key(model_id: str, text: str) -> str:
        return hashlib.sha256(f"{model_id}\0{canonical(text)}".encode()).hexdigest()

    def remember(self, model_id: str, tokenizer: Any, turn: Sequence[int]) -> None:
        if not turn or self.max_entries <= 0:
            return
        self._load()
        key = self._key(model_id, tokenizer.decode(list(turn)))
        with self._lock:
            self._turns[key] = list(turn)
            self._turns.move_to_end(key)
            while len(self._turns) > self.max_entries:
                self._turns.popitem(last=False)

    def splice(self, model_id: str, tokenizer: Any, ct: ChatTokens, ids: list[int]) -> list[int]:
        """`ids` with each assistant turn the template rendered replaced by the ids generated for
        it, when their canonical texts agree."""
        if not self._turns and (self.disk_dir is None or self._loaded):
            return ids
        self._load()
        out, last = [], 0
        for a, b in assistant_spans(ct, ids):
            key = self._key(model_id, tokenizer.decode(ids[a:b]))
            with self._lock:
                gen = self._turns.get(key)
                if gen is not None:
                    self._turns.move_to_end(key)
            if gen is None or gen == ids[a:b]:
                continue
            out += ids[last:a] + gen
            last = b
            self.spliced += 1
        return out + ids[last:] if last else ids

    def save(self) -> None:
        if self.disk_dir is None or not self._turns:
            return
        try:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            path = self.disk_dir / self.FILE
            tmp = path.with_name(path.name + ".tmp")
            with self._lock:
                data = {"version": 1, "turns": list(self._turns.items())}
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("prompt cache: cannot write %s: %s", self.disk_dir, e)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.disk_dir is None:
            return
        path = self.disk_dir / self.FILE
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            if data.get("version") != 1:
                raise ValueError("unknown version")
            turns = [(str(k), [int(t) for t in v]) for k, v in data["turns"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("prompt cache: ignoring %s: %s", path.name, e)
            return
        with self._lock:
            for k, v in turns:
                self._turns.setdefault(k, v)
            while len(self._turns) > self.max_entries:
                self._turns.popitem(last=False)


def marked_positions(
    render: Any, messages: list[dict[str, Any]], marks: Sequence[int], prompt: Sequence[int]
) -> list[int]:
    """Token positions in `prompt` where `messages[i]` ends, for each marked `i`.

    `render(messages)` gives the ids of a conversation without a generation prompt; the position
    is how far those ids agree with `prompt`, so a template that renders a prefix differently
    (merged tool results, reasoning it drops) still yields a true prefix of the prompt.
    """
    out = []
    for i in sorted({m for m in marks if 0 <= m < len(messages)})[-4:]:  # as Anthropic: at most 4
        try:
            ids = render(messages[: i + 1])
        except Exception as e:  # a template may refuse a prefix (e.g. no user message yet)
            log.debug("prompt cache: cannot render up to message %d: %s", i, e)
            continue
        out.append(common_prefix(ids, prompt))
    return out
