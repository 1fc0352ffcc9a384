"""Content as plain text: a message's text never becomes the template's own special tokens.

A file, a user message or a command's output may hold `<|im_end|>\\n<|im_start|>user`, `<|image_pad|>`
or `<tool_call>`. Tokenized as they stand they would be real role, image or tool tokens, and the
content could forge a turn. So each such string in content is swapped for a placeholder before the
template renders; the rendered text is cut at the added tokens left (the template's own markup), and
the pieces that held placeholders are tokenized with no added token matched: the strings become the
ordinary text tokens they spell, and decode back to themselves.

Assistant turns (the model's own replies rendered back) keep `<think>`, `<tool_call>`… as the tokens
the model wrote; only their special tokens (roles, images) are made plain. A prompt with none of these
strings in its content is tokenized exactly as before, in one call.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """Prompt text in chunks; a `plain` chunk is tokenized with no added token matched."""

    chunks: tuple[tuple[str, bool], ...]

    @classmethod
    def of(cls, text: str) -> Prompt:
        return cls(((text, False),) if text else ())

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.chunks)

    @property
    def has_plain(self) -> bool:
        return any(p for _, p in self.chunks)

    def __add__(self, other: Prompt) -> Prompt:
        return Prompt(_merged([*self.chunks, *other.chunks]))


def _merged(chunks: Iterable[tuple[str, bool]]) -> tuple[tuple[str, bool], ...]:
    # Neighbours of one kind are one chunk: regular text is tokenized as a whole, as before.
    out: list[tuple[str, bool]] = []
    for text, plain in chunks:
        if not text:
            continue
        if out and out[-1][1] == plain:
            out[-1] = (out[-1][0] + text, plain)
        else:
            out.append((text, plain))
    return tuple(out)


@dataclass(frozen=True)
class Vocab:
    """One tokenizer's added tokens, and a twin of its pipeline that matches none of them."""

    every: re.Pattern[str] | None  # every added token (non-assistant content, the markup)
    special: re.Pattern[str] | None  # those marked special (assistant content)
    ids: frozenset[int]
    plain: Any  # tokenizers.Tokenizer without added tokens; None for a tokenizer without one

    def split(self, text: str) -> list[str]:
        """`text` cut at each added token: [text, token, text, ..., text]."""
        return self.every.split(text) if self.every is not None else [text]


_VOCABS: OrderedDict[int, tuple[Any, Vocab]] = OrderedDict()
_LOCK = threading.Lock()


def _pattern(strings: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first: at one position the longest added token wins, as in the tokenizer.
    alts = sorted({s for s in strings if s}, key=lambda s: (-len(s), s))
    return re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None


def plain_twin(be: Any) -> Any:
    """The Rust tokenizer `be`'s own normalizer, pre-tokenizer and model (shared, not copied) with
    no added tokens: it spells `<|im_end|>` with the tokens any other text would get."""
    if be is None:
        return None
    try:
        from tokenizers import Tokenizer

        twin = Tokenizer(be.model)
        if be.normalizer is not None:
            twin.normalizer = be.normalizer
        if be.pre_tokenizer is not None:
            twin.pre_tokenizer = be.pre_tokenizer
        return twin
    except Exception:  # an unusual backend: fall back to cutting the strings (encode_plain)
        return None


def vocab(tokenizer: Any) -> Vocab:
    """The tokenizer's Vocab, built once per tokenizer (the last few are kept)."""
    key = id(tokenizer)
    with _LOCK:
        hit = _VOCABS.get(key)
        if hit is not None and hit[0] is tokenizer:
            _VOCABS.move_to_end(key)
            return hit[1]
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = {str(getattr(t, "content", t)): bool(getattr(t, "special", False)) for t in added.values()}
    v = Vocab(
        every=_pattern(tokens),
        special=_pattern(s for s, special in tokens.items() if special),
        ids=frozenset(int(i) for i in added),
        plain=plain_twin(getattr(tokenizer, "backend_tokenizer", None)) if tokens else None,
    )
    with _LOCK:
        _VOCABS[key] = (tokenizer, v)  # the tokenizer is held, so its id is not reused meanwhile
        while len(_VOCABS) > 8:
            _VOCABS.popitem(last=False)
    return v


class Shield:
    """Hides added-token strings in content behind placeholders for one rendering, then turns the
    rendered text into a Prompt whose placeholder pieces are plain."""

    def __init__(self, tokenizer: Any) -> None:
        self.vocab = vocab(tokenizer)
        # Random per rendering: content cannot spell a placeholder it cannot know in advance.
        self.mark = f"LocusLiteral{secrets.token_hex(8)}n"
        self.table: list[str] = []

    def _hide(self, m: re.Match[str]) -> str:
        self.table.append(m.group(0))
        return f"{self.mark}{len(self.table) - 1}z"

    def walk(self, obj: Any, special_only: bool = False) -> Any:
        """`obj` (strings, dicts, lists) with its added-token strings hidden; unchanged parts are
        the same objects."""
        pat = self.vocab.special if special_only else self.vocab.every
        if pat is None:
            return obj
        if isinstance(obj, str):
            return pat.sub(self._hide, obj) if pat.search(obj) else obj
        if isinstance(obj, dict):
            pairs = [(self.walk(k, special_only), self.walk(v, special_only)) for k, v in obj.items()]
            same = all(a is k and b is v for (a, b), (k, v) in zip(pairs, obj.items(), strict=True))
            return obj if same else dict(pairs)
        if isinstance(obj, list | tuple):
            items = [self.walk(x, special_only) for x in obj]
            return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)
        return obj

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every added token hidden in user, tool and system messages; the special ones only in
        assistant turns (the template splits their reasoning at `</think>`)."""
        return [self.walk(m, special_only=m.get("role") == "assistant") for m in messages]

    def prompt(self, text: str) -> Prompt:
        """The rendered `text` with the hidden strings back, in chunks: each piece between two of
        the template's added tokens that held one is plain."""
        if not self.table:
            return Prompt.of(text)
        ph = re.compile(re.escape(self.mark) + r"(\d+)z")
        chunks = []
        for i, piece in enumerate(self.vocab.split(text)):
            held = i % 2 == 0 and self.mark in piece
            chunks.append((ph.sub(lambda m: self.table[int(m.group(1))], piece) if held else piece, held))
        return Prompt(_merged(chunks))


def assistant_text(tokenizer: Any, text: str) -> Prompt:
    """Text the reply starts with (a client's prefill): its special tokens plain, the rest as is."""
    shield = Shield(tokenizer)
    return shield.prompt(shield.walk(text, special_only=True))


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """`text`'s tokens with no added token matched, decoding back to `text`."""
    v = vocab(tokenizer)
    return plain_ids(v, v.plain, lambda piece: tokenizer.encode(piece, add_special_tokens=False), text)


def plain_ids(v: Vocab, plain: Any, encode: Callable[[str], list[int]], text: str) -> list[int]:
    """`encode_plain` with a given plain twin and encoder (a token counter brings its own copies)."""
    if plain is not None:
        # encode_batch lets go of the GIL (encode does not), so other threads keep running.
        ids = plain.encode_batch([text], add_special_tokens=False)[0].ids
        if v.ids.isdisjoint(ids):  # a vocabulary may also hold an added token as a regular entry
            return ids
    out: list[int] = []
    for piece in _cut(text, v.every):
        out += encode(piece)
    return out


def _cut(text: str, pat: re.Pattern[str] | None) -> list[str]:
    """`text` in pieces that hold no added token whole: each is cut after its first character."""
    pieces = []
    while pat is not None and (m := pat.search(text)) is not None:
        pieces.append(text[: m.start() + 1])
        text = text[m.start() + 1 :]
    return [*pieces, text]


def encode(tokenizer: Any, prompt: Prompt | str) -> list[int]:
    """A Prompt's token ids: regular chunks as the tokenizer reads them, plain ones plain."""
    if isinstance(prompt, str):
        prompt = Prompt.of(prompt)
    ids: list[int] = []
    for text, plain in prompt.chunks:
        ids += encode_plain(tokenizer, text) if plain else tokenizer.encode(text, add_special_tokens=False)
    return ids
