"""Where front ends get a model: the one module outside engine/ that builds a backend.

Everything else in app/ and ui/ sees only `engine.Backend` (tests/test_layering.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
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
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Backend:
    """Load the checkpoint at `path` into this process (raises ModelLoadError naming the problem).

    `should_stop` is polled between shards and layers read (LoadCancelled when it returns True);
    `progress(done, total)` reports those steps.
    """
    from engine import Engine

    eng = Engine(prompt_cache=prompt_cache, mtp=mtp)
    try:
        eng.load(path, context_tokens=context_tokens, memory_check=memory_check,
                 should_stop=should_stop, progress=progress)  # fmt: skip
    except BaseException:
        eng.close()  # nothing half-loaded stays behind a cancelled or failed load
        raise
    return eng
