"""What the server says about a prompt too long for the context it serves."""

from __future__ import annotations


def too_long(tokens: int, limit: int, at_least: bool = False) -> str:
    """Anthropic's wording, which Claude Code recognizes (and answers by compacting). The
    maximum is a prompt's: the served context `limit` less the one token a reply needs."""
    counted = "; counted until the limit was passed" if at_least else ""
    return (
        f"prompt is too long: {tokens} tokens > {limit - 1} maximum "
        f"(the context is {limit} tokens, one kept for the reply{counted})"
    )
