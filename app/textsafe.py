"""Text shown to a person, made safe to show: control characters become visible escapes.

A command, a file or a model's output can carry terminal escape sequences, carriage returns,
backspaces, bidi overrides or zero-width characters that hide or reorder what the person reads
before approving it. `show_line` and `show_block` turn every such character into text like
`\\x1b` or `\\u202e`; the CLI and the window both show what they display through them.
"""

from __future__ import annotations

import unicodedata

__all__ = ["has_hidden", "show_block", "show_line", "show_prose"]

# C0, DEL, C1, and the bidi, zero-width, separator and other format characters (Unicode Cf, Zl, Zp).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    n = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _show(text: str, keep: str) -> str:
    if text.isprintable():  # no control, format or separator character: the common case
        return text
    return "".join(_escape(c) if c not in keep and _hidden(c) else c for c in text)


def show_line(text: object) -> str:
    """One line of display: every control character, newline and tab included, escaped."""
    return _show(str(text), "")


def show_block(text: object) -> str:
    """Several lines (a diff, a command's output): newlines and tabs stay, the rest is escaped."""
    return _show(str(text), "\n\t")


def show_prose(text: object) -> str:
    """A model's answer or reasoning: like `show_block`, but zero-width joiners stay (emoji
    sequences and some scripts need them; they hide nothing)."""
    return _show(str(text), "\n\t\u200c\u200d")


def has_hidden(text: object, keep: str = "\n\t") -> bool:
    """Whether showing `text` escapes anything (newlines and tabs aside, unless `keep` says)."""
    return _show(str(text), keep) != str(text)
