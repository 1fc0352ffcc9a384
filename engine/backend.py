"""The one way into a model: the `Backend` protocol every front end (server, agent, CLI, window)
depends on. The local `Engine` implements it; a remote OpenAI-compatible server and a pipeline
across processes are other implementations, and tests drive the front ends with a fake one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .request import GenerationRequest, GenerationResult, PreparedRequest

if TYPE_CHECKING:
    from .events import Done, Event

__all__ = ["Backend", "BackendInfo", "BackendStats", "CacheStats", "Handle", "PreparedRequest"]


@dataclass(frozen=True)
class BackendInfo:
    """What a front end needs to know about the model behind a backend."""

    name: str  # what to show a user (a checkpoint's folder name, a remote model's id)
    context_tokens: int = 0  # longest prompt + reply the model takes (0: not known)
    vocab_size: int = 0  # token ids run from 0 to vocab_size - 1 (0: not known)
    images: bool = False  # user messages may hold images
    tools: bool = True  # the template renders tools and the model writes tool calls
    thinking: bool = True  # the model reasons in <think> blocks (enable_thinking applies)
    remote: str | None = None  # the server's base URL when the model runs elsewhere
    ranks: int = 1  # processes the model runs on (a pipeline across machines: more than 1)
    rank_layers: tuple[tuple[int, int], ...] = ()  # each rank's decoder layers [start, end)
    model_id: str = ""  # changes when the weights change (prompt-cache keys, prepared requests)
    created: int = 0  # when the weights were written (Unix time; 0: not known)


@dataclass(frozen=True)
class CacheStats:
    """A prompt cache's budget and use (the keys of /health's "prompt_cache")."""

    memory_bytes: int = 0
    memory_used_bytes: int = 0
    snapshots: int = 0
    shared_snapshots: int = 0
    disk_bytes: int = 0
    disk_used_bytes: int = 0
    disk_snapshots: int = 0
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    evictions: int = 0
    blocks: int = 0  # KV blocks in memory, each counted once however many snapshots hold it
    shared_blocks: int = 0  # of them, held by more than one snapshot
    disk_blocks: int = 0
    block_tokens: int = 0
    disk_written_bytes: int = 0  # snapshot and block files written since start
    memory_plan: dict[str, int] | None = None  # engine.memplan.MemoryPlan.to_dict(), set at load


@dataclass(frozen=True)
class BackendStats:
    """What a backend reports about its running state (the server's /health, the window)."""

    prompt_cache: CacheStats | None = None  # None: the backend keeps no prompt cache here
    ranks: int = 1  # processes the model runs on
    rank_layers: tuple[tuple[int, int], ...] = ()  # each rank's decoder layers [start, end)
    # The engine's scheduler: sequences admitted, requests waiting for a place, the batch decoding
    # now, and the most sequences it runs at once.
    running: int = 0
    queued: int = 0
    batch_size: int = 0
    parallel: int = 1


@runtime_checkable
class Handle(Protocol):
    """A submitted request: iterate its events (ending with one Done), or cancel it."""

    done: Done | None

    def cancel(self) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    def events(self, timeout: float | None = None) -> Iterator[Event]: ...

    def result(self) -> GenerationResult: ...


@runtime_checkable
class Backend(Protocol):
    """A model that takes generation requests. Thread-safe: call from any thread."""

    @property
    def info(self) -> BackendInfo: ...

    def submit(self, request: GenerationRequest | PreparedRequest) -> Handle:
        """Queue a request; its events (ending with Done) come from the handle. Never raises for
        a bad request: the handle's Done says what was wrong (finish_reason "error")."""
        ...

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Render and tokenize `request`, raising RequestError (with an `kind`) when it cannot run."""
        ...

    def stats(self) -> BackendStats:
        """The backend's running state; cheap, never raises, never waits for a request."""
        ...

    def count_tokens(self, request: GenerationRequest, *, stop_above: int | None = None) -> int:
        """The prompt tokens `request` would take (its prefix included), without generating.

        With `stop_above`, counting may stop once the prompt is known to take more than that
        many tokens; the number returned is then a lower bound above `stop_above`. A front end
        refuses huge prompts this way at little cost, without waiting for running requests."""
        ...

    def close(self) -> None:
        """Release the model; requests already queued finish first."""
        ...
