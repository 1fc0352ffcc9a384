"""The one way into a model: the `Backend` protocol every front end (server, agent, CLI, window)
depends on. The local `Engine` implements it; a remote OpenAI-compatible server and a pipeline
across processes are other implementations, and tests drive the front ends with a fake one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .engine import GenerationRequest, GenerationResult
    from .events import Done, Event


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


@dataclass
class PreparedRequest:
    """A request already rendered and tokenized by `Backend.prepare`: submitting it does not do
    that work again. Its `request.max_tokens` may still be changed before it is submitted.
    `prompt_tokens` counts the whole prompt (an assistant prefix included)."""

    request: GenerationRequest
    prompt_tokens: int
    opens_reasoning: bool = False  # the output starts inside a <think> block (prefix included)
    model_id: str = ""  # the model it was prepared for; another model prepares it again
    inputs: Any = None  # backend-private (the engine's PromptInputs)
    # Of `prompt_tokens`, those of the reply's prefix (`request.prefix` and a forced call's
    # opening): a front end that reports the client's own prompt leaves them out.
    prefix_tokens: int = 0


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

    def count_tokens(self, request: GenerationRequest, *, stop_above: int | None = None) -> int:
        """The prompt tokens `request` would take (its prefix included), without generating.

        With `stop_above`, counting may stop once the prompt is known to take more than that
        many tokens; the number returned is then a lower bound above `stop_above`. A front end
        refuses huge prompts this way at little cost, without waiting for running requests."""
        ...

    def close(self) -> None:
        """Release the model; requests already queued finish first."""
        ...
