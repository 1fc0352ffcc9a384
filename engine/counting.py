"""Prompt length known without the engine's worker thread: a bound from the character count, then
counting tokens in slices that stops once a limit is passed (`Engine.count_tokens`).

The engine tokenizes on its one worker thread, so a 10 MB prompt used to hold every other request
for the whole tokenization (30 s, 2 GB) before being refused as too long. Counting runs on the
caller's thread with its own copy of the Rust tokenizer: the two threads never share one object.
"""

from __future__ import annotations

import re
from typing import Any

from .literal import Prompt, plain_ids, plain_twin, vocab

# Characters per slice: small enough that a slice's encoding is a few MB, big enough that the
# per-call cost is nothing.
SLICE = 1 << 18
# A slice ends just before a space that follows a non-space character: a boundary of every
# GPT-style pre-tokenizer regex (no piece runs from a non-space across a space), so counts add
# up exactly there; elsewhere (no space in reach) a cut may change a few tokens.
_CUT = re.compile(r"(?<=\S) ")
_EXACT_SLACK = 1  # a tokenizer that prepends a marker to each piece (SentencePiece) adds one
_FORCED_SLACK = 16  # a word cut in two: BPE merges are local, so a few tokens at most
# Longest canonical decomposition (U+1FAF etc.): NFC/NFKC shrink text by at most this factor.
MAX_DECOMPOSITION = 4
_COMPOSING = {"NFC", "NFKC"}
_SAFE_NORMALIZERS = {"NFC", "NFKC", "NFD", "NFKD", "Lowercase", "Sequence"}


def _own_copy(be: Any) -> Any:
    """An independent copy of the Rust tokenizer `be`, set to encode as transformers does with no
    truncation or padding (the worker changes those settings on its own object)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(be.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


class PromptMeter:
    """Token counts of prompt text for one tokenizer, on any thread while the engine's worker uses
    that tokenizer: one Rust tokenizer used by two threads fails ("Already borrowed") or makes the
    worker wait while the other thread encodes, so the meter encodes with copies of its own."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab(tokenizer)
        # mlx-lm's TokenizerWrapper forwards it from the Hugging Face tokenizer it wraps
        shared = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = _own_copy(shared) if shared is not None else None
        self.plain = plain_twin(self.backend) if self.vocab.plain is not None else None
        self._chars_per_token: float | bool | None = False  # False: not computed yet

    # -- the cheap bound ------------------------------------------------------------------------
    def chars_per_token(self) -> float | None:
        """Most characters of input one token can stand for (None when the tokenizer gives no
        such bound: it may drop characters or map runs of unknown ones to one token)."""
        if self._chars_per_token is False:
            self._chars_per_token = self._max_chars()
        return self._chars_per_token  # type: ignore[return-value]

    def _max_chars(self) -> float | None:
        be = self.backend
        if be is None:
            return None
        pre = repr(be.pre_tokenizer)
        model = be.model
        byte_level = "ByteLevel" in pre or bool(getattr(model, "byte_fallback", False))
        if type(model).__name__ != "BPE" or not byte_level:
            return None  # only byte-level BPE covers every input character with tokens
        factor = 1
        if be.normalizer is not None:
            names = set(re.findall(r"\b([A-Za-z]\w*)\(", repr(be.normalizer)))
            if not names <= _SAFE_NORMALIZERS:
                return None
            if names & _COMPOSING:
                factor = MAX_DECOMPOSITION
        # A token's string has one character per byte (ByteLevel) or is the text itself; either
        # way no more input characters than its length. Added tokens match their content.
        longest = max((len(t) for t in be.get_vocab(with_added_tokens=True)), default=1)
        return float(longest * factor)

    def lower_bound(self, text: str) -> int:
        """Tokens `text` needs at the least (0 when the tokenizer gives no bound)."""
        per = self.chars_per_token()
        return int(len(text) // per) if per else 0

    # -- counting ------------------------------------------------------------------------------
    def count(self, text: str | Prompt, stop_above: int | None = None) -> tuple[int, int]:
        """(tokens, at_least): `text`'s tokens counted slice by slice, and a lower bound allowing
        for slices cut mid-word. Counting stops once `at_least` passes `stop_above`, so a huge
        text costs no more than the limit's worth of tokenization and memory. A Prompt's plain
        chunks (content holding added-token strings) are counted as the engine tokenizes them."""
        prompt = Prompt.of(text) if isinstance(text, str) else text
        total, slack = 0, 0
        for chunk, plain in prompt.chunks:
            encode = self._encode_plain if plain else self._encode
            total, slack = self._count_chunk(chunk, encode, total, slack, stop_above)
            if stop_above is not None and total - slack > stop_above:
                break
        return total, max(0, total - slack)

    def _count_chunk(
        self, text: str, encode: Any, total: int, slack: int, stop_above: int | None
    ) -> tuple[int, int]:
        if len(text) <= SLICE or self.backend is None:
            return total + len(encode(text)), slack
        start = 0
        while start < len(text):
            end = min(start + SLICE, len(text))
            if end < len(text):
                m = _CUT.search(text, end, end + 4096)
                end = m.start() if m is not None else end
                slack += _EXACT_SLACK if m is not None else _FORCED_SLACK
            total += len(encode(text[start:end]))
            if stop_above is not None and total - slack > stop_above:
                break
            start = end
        return total, slack

    def _encode_plain(self, text: str) -> list[int]:
        return plain_ids(self.vocab, self.plain, self._encode, text)

    def _encode(self, text: str) -> list[int]:
        be = self.backend
        if be is None:
            return self.tokenizer.encode(text, add_special_tokens=False)
        # encode_batch lets go of the GIL (encode does not), so the server's loop keeps serving.
        batch = getattr(be, "encode_batch_fast", None) or be.encode_batch
        return batch([text], add_special_tokens=False)[0].ids
