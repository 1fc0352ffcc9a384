"""Where front ends get a model: the one module outside engine/ that builds a backend.

Everything else in app/ and ui/ sees only `engine.Backend` (tests/test_layering.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import Backend, PromptCache


def open_local(
    path: str,
    *,
    context_tokens: int,
    memory_check: bool = True,
    prompt_cache: PromptCache | None = None,
    mtp: int = 0,
) -> Backend:
    """Load the checkpoint at `path` into this process (raises ModelLoadError naming the problem)."""
    from engine import Engine

    return Engine.from_path(
        path, context_tokens=context_tokens, memory_check=memory_check,
        prompt_cache=prompt_cache, mtp=mtp,
    )  # fmt: skip
