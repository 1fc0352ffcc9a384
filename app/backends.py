"""Where front ends get a model: the one module outside engine/ that builds a backend.

Everything else in app/ and ui/ sees only `engine.Backend` (tests/test_layering.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def in_pipeline() -> bool:
    """Whether this process is one of several running one model (started by mlx.launch)."""
    from engine import pipeline_group

    return pipeline_group() is not None


def open_pipeline(
    path: str, *, context_tokens: int, prompt_cache: PromptCache | None = None
) -> Backend:
    """This process's share of the model pipelined across the processes mlx.launch started.

    Rank 0 gets the backend to serve from; every other rank runs the requests rank 0 sends until
    rank 0 closes the pipeline, then exits (SystemExit) without returning.
    """
    from engine import open_pipeline as open_share
    from engine import pipeline_group, serve_worker

    group = pipeline_group()
    backend = open_share(path, group=group, context_tokens=context_tokens,
                         prompt_cache=prompt_cache)  # fmt: skip
    if group.rank() > 0:
        raise SystemExit(serve_worker(backend))  # type: ignore[arg-type]
    _on_sigterm(backend)
    return backend  # type: ignore[return-value]


def _on_sigterm(backend: Any) -> None:
    """mlx.launch stops rank 0 with SIGTERM when another rank exits: end the open requests with
    that reason (not a silent exit), then exit."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        backend.fail("this process was stopped (mlx.launch stops every rank when one exits)")
        threading.Timer(3.0, os._exit, (143,)).start()

    signal.signal(signal.SIGTERM, stop)
