"""What the server says about a prompt too long for the context it serves."""

from __future__ import annotations


def too_long(tokens: int, limit: int, at_least: bool = False) -> str:
    """Anthropic's wording, which Claude Code recognizes (and answers by compacting)."""
    return f"prompt is too long: {tokens} tokens > {limit - 1} maximum" + (
        " (counted until the limit was passed)" if at_least else ""
    )
