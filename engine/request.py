"""The request types every backend shares: `GenerationRequest` and its `SamplingParams`, the handle
a request's events come from, `ReplyAccumulator` (the one fold of those events every front end
uses) and the result it makes, and a request already prepared.

No MLX import (nor mlx-lm, nor transformers): `engine.remote` and front ends that only build
requests load this module alone. `DECODING_FIELDS` is the one list of the fields that steer
decoding: the pipeline's wire format sends exactly these, and the remote backend sends, refuses or
names (remote.NOT_SENT) each one (tests/engine/test_seams.py).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import EngineError, RequestError
from .events import (
    Done,
    Event,
    FinishReason,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)
from .parser import tool_schemas

# Temperatures below this choose greedily (logits / t would overflow float32 to inf - inf).
GREEDY_BELOW = 1e-5
# Most tokens the MTP head drafts per step (engine/mtp.py).
MAX_DRAFT = 8
# Scheduling classes, first served first (engine/scheduler.py).
PRIORITIES = ("interactive", "background")
# Sequences an engine decodes together by default (`locus serve --parallel`; bench/concurrency.py).
DEFAULT_PARALLEL = 8
# A forced tool_choice starts the reply with the opening of a call (then the tool's name).
CALL_PREFIX = "<tool_call>\n<function="
# tool_choice values that do not name a tool.
_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy; top_k 0 and top_p 1 disable them."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> SamplingParams:
        """Raise RequestError naming the first out-of-range value."""
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p})"),
            (self.top_k >= 0, f"top_k must be >= 0 (got {self.top_k})"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1] (got {self.min_p})"),
            (
                -2 <= self.presence_penalty <= 2,
                f"presence_penalty must be in [-2, 2] (got {self.presence_penalty})",
            ),
            (
                -2 <= self.frequency_penalty <= 2,
                f"frequency_penalty must be in [-2, 2] (got {self.frequency_penalty})",
            ),
            (
                self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**64),
                f"seed must be an integer in [0, 2**64) (got {self.seed!r})",
            ),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (got {self.repetition_penalty})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RequestError(msg)
        return self

    @property
    def greedy(self) -> bool:
        """Whether the choice is the most likely token: temperature 0, or one so small that
        dividing by it overflows float32 (vLLM treats temperatures below 1e-5 the same way)."""
        return self.temperature < GREEDY_BELOW

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with the given fields changed; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The three profiles of Qwen3.6's model card.
PRESETS: dict[str, SamplingParams] = {
    "thinking": SamplingParams(temperature=1.0, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=1.5),
    "coding": SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0),
    "instruct": SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, presence_penalty=1.5),
}


def preset(name: str) -> SamplingParams:
    """A named preset: thinking (general), coding (precise coding) or instruct (no thinking)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RequestError(f"unknown sampling preset {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass
class GenerationRequest:
    """One generation: a conversation (rendered with the model's template), raw text, or raw ids.

    A user message's content may be a list of parts; `{"type": "image", "image": X}` (X: bytes, a
    file path, a `data:` URL or a PIL image) or OpenAI's `{"type": "image_url", ...}` puts an image
    in the prompt (Qwen3.5/3.6 checkpoints with their vision tower).
    """

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool = True
    # None: on when the template supports it, so each prompt extends the last exactly.
    preserve_thinking: bool | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 4096
    stop: list[str] = field(default_factory=list)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Prompt-cache session (a conversation, an agent, a sub-agent): eviction spares each one's
    # newest snapshot. `use_cache=False` neither reads nor writes the cache.
    session: str | None = None
    use_cache: bool = True
    # Indices into `messages` whose end is worth a snapshot shared by later requests (Anthropic's
    # `cache_control` breakpoints); at most 4 are used.
    cache_breakpoints: list[int] = field(default_factory=list)
    # Special tokens (<|box_start|>, <|vision_end|>, ...) are left out of the text; the parser's
    # own tags (<think>, <tool_call>) are not special in Qwen's tokenizer and always stay.
    skip_special_tokens: bool = True
    # Speculative decoding: tokens the model's MTP head drafts per step (0 off; None: the
    # engine's default). Output is the same as without; a model without the head ignores it.
    mtp: int | None = None
    # Text the reply must start with (an assistant prefill), put after the generation prompt. It
    # is not emitted but parsed with the reply, so it may open a tool call or close the reasoning.
    prefix: str = ""
    # "auto"; "none" (the tools are not rendered); "required" (the reply is a tool call) or a
    # tool's name (a call of that tool). A forced call starts the reply, so thinking is off.
    tool_choice: str = "auto"
    # Reasoning tokens allowed before the engine ends the reasoning (BUDGET_NOTE, `</think>`) and
    # the model answers, on the same cache (None: no limit). The engine's tokens are not counted
    # as completion tokens.
    thinking_budget: int | None = None
    # Who the engine's scheduler serves first: "interactive" (the window, the CLI) before
    # "background" (the API server's requests); within one, the shortest prompt first.
    priority: str = "interactive"
    # What the answer must be (engine/constrain.py): {"type": "json_schema", "schema": {...}} or
    # {"type": "json_object"} (None or {"type": "text"}: free). The reasoning stays free.
    response_format: dict[str, Any] | None = None
    # False: at most one tool call (a constrained call is then exactly one).
    parallel_tool_calls: bool = True

    def validate(self) -> None:
        given = [x is not None for x in (self.messages, self.prompt, self.prompt_ids)]
        if sum(given) != 1:
            raise RequestError("give exactly one of messages, prompt or prompt_ids")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1 (got {self.max_tokens})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop strings must be non-empty strings")
        if not isinstance(self.prefix, str):
            raise RequestError(
                f"prefix must be a string, the text the reply starts with (got {type(self.prefix).__name__})"
            )
        _check_tool_choice(self.tool_choice, self.tools)
        b = self.thinking_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise RequestError(
                f"thinking_budget must be a positive number of reasoning tokens, or None for no "
                f"limit (got {b!r})"
            )
        check_mtp(self.mtp)
        if self.priority not in PRIORITIES:
            raise RequestError(f"priority must be one of {', '.join(PRIORITIES)} (got {self.priority!r})")
        self.sampling.validate()
        from .constrain import check_request  # llguidance loads only when a request has a constraint

        check_request(self)

    @property
    def forces_call(self) -> bool:
        """tool_choice makes the reply a tool call."""
        return self.tool_choice not in ("auto", "none")

    @property
    def reply_prefix(self) -> str:
        """What the reply starts with: `prefix`, then a forced call's opening."""
        if not self.forces_call:
            return self.prefix
        name = "" if self.tool_choice == "required" else f"{self.tool_choice}>\n"
        return self.prefix + CALL_PREFIX + name

    @property
    def rendered_tools(self) -> list[dict[str, Any]] | None:
        """The tools the template shows the model (none for tool_choice "none")."""
        return None if self.tool_choice == "none" else self.tools


# Fields that only shape the prompt: once it is rendered to token ids (what a pipeline's ranks get)
# they change nothing. Every other field is in DECODING_FIELDS.
PROMPT_FIELDS = (
    "messages",
    "prompt",
    "prompt_ids",
    "enable_thinking",
    "preserve_thinking",
    "template_kwargs",
    "cache_breakpoints",
    "priority",  # not the prompt, but no token either: only which request is served first
)
# Fields that steer decoding: when to stop, what the parser reads, when the reasoning closes, which
# cache is used. A pipeline's ranks decide each alone, so every rank needs all of them.
DECODING_FIELDS = (
    "tools",
    "sampling",
    "max_tokens",
    "stop",
    "session",
    "use_cache",
    "skip_special_tokens",
    "mtp",
    "prefix",
    "tool_choice",
    "thinking_budget",
    "response_format",
    "parallel_tool_calls",
)


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> None:
    if choice in ("auto", "none"):
        return
    if not isinstance(choice, str) or not choice:
        raise RequestError(
            f"tool_choice must be 'auto', 'none', 'required' or a tool's name (got {choice!r})"
        )
    names = tool_schemas(tools)
    if not names:
        raise RequestError(f"tool_choice {choice!r} forces a tool call, but the request has no tools")
    if choice not in _CHOICES and choice not in names:
        raise RequestError(f"tool_choice {choice!r}: no tool of that name (the tools are {', '.join(names)})")


def check_mtp(k: int | None) -> None:
    """Raise RequestError unless `k` is None or a number of draft tokens in 0..MAX_DRAFT."""
    if k is not None and (not isinstance(k, int) or not 0 <= k <= MAX_DRAFT):
        raise RequestError(f"mtp (draft tokens) must be an integer in 0..{MAX_DRAFT} (got {k!r})")


@dataclass
class GenerationResult:
    """Everything one request produced (what `Engine.generate` returns)."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    tool_call_errors: list[ToolCallError]
    finish_reason: FinishReason
    token_ids: list[int]
    usage: Usage | None
    error: str | None = None

    @classmethod
    def of(cls, events: Iterable[Event]) -> GenerationResult:
        """The result of a request's whole event stream (which ends with Done)."""
        reply = ReplyAccumulator()
        for ev in events:
            reply.add(ev)
        return reply.result()


# A reply's pieces in the order written: merged reasoning or answer text, or one (malformed) call.
Part = ReasoningDelta | TextDelta | ToolCall | ToolCallError


class ReplyAccumulator:
    """A request's events folded as they arrive: answer, reasoning, tool calls (well formed or
    not), usage and the final Done. Every front end folds through this one class; a streaming one
    still forwards each delta as it comes, and reads the folded state here."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._content: list[str] = []  # the answer with each malformed call's raw text in place
        self._parts: list[list[Any]] = []  # [kind, pieces or the call]
        self._items: list[ToolCall | ToolCallError] = []
        self._usage: Usage | None = None
        self._done: Done | None = None
        self._progress: PromptProgress | None = None
        self._deltas = 0

    def add(self, ev: Event) -> Event:
        """Fold one event in; returns it (so a loop can fold and forward in one line)."""
        if isinstance(ev, TextDelta):
            self._text.append(ev.text)
            self._content.append(ev.text)
            self._piece("text", ev.text)
        elif isinstance(ev, ReasoningDelta):
            self._reasoning.append(ev.text)
            self._piece("reasoning", ev.text)
        elif isinstance(ev, ToolCall | ToolCallError):
            self._items.append(ev)
            self._parts.append(["call", ev])
            if isinstance(ev, ToolCallError):
                self._content.append(ev.raw)
        elif isinstance(ev, Usage):
            self._usage = ev
        elif isinstance(ev, PromptProgress):
            self._progress = ev
        elif isinstance(ev, Done):
            self._done = ev
        return ev

    def _piece(self, kind: str, text: str) -> None:
        self._deltas += 1
        if self._parts and self._parts[-1][0] == kind:
            self._parts[-1][1].append(text)
        else:
            self._parts.append([kind, [text]])

    @property
    def text(self) -> str:
        """The answer (tool calls and malformed calls left out)."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def content(self) -> str:
        """The answer as the model wrote it: a malformed call's raw text kept where it came."""
        return "".join(self._content)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for c in self._items if isinstance(c, ToolCall)]

    @property
    def tool_call_errors(self) -> list[ToolCallError]:
        return [c for c in self._items if isinstance(c, ToolCallError)]

    @property
    def calls(self) -> list[ToolCall | ToolCallError]:
        """Tool calls and malformed calls, in order."""
        return list(self._items)

    @property
    def parts(self) -> list[Part]:
        """The reply in order: runs of reasoning or answer text merged into one delta each, and
        each call where it came."""
        out: list[Part] = []
        for kind, x in self._parts:
            if kind == "call":
                out.append(x)
            else:
                out.append(ReasoningDelta("".join(x)) if kind == "reasoning" else TextDelta("".join(x)))
        return out

    @property
    def deltas(self) -> int:
        """Reasoning and answer deltas seen (not tokens: a backend may send several per delta)."""
        return self._deltas

    @property
    def usage(self) -> Usage | None:
        """Done's usage, else the last Usage event."""
        if self._done is not None and self._done.usage is not None:
            return self._done.usage
        return self._usage

    @property
    def progress(self) -> PromptProgress | None:
        """The last prefill progress."""
        return self._progress

    @property
    def done(self) -> Done | None:
        return self._done

    @property
    def finish_reason(self) -> FinishReason | None:
        """None until Done has come."""
        return self._done.finish_reason if self._done is not None else None

    def result(self) -> GenerationResult:
        """The whole reply as a GenerationResult; EngineError if Done has not come."""
        done = self._done
        if done is None:
            raise EngineError("the request's events ended without Done")
        return GenerationResult(
            self.text,
            self.reasoning,
            self.tool_calls,
            self.tool_call_errors,
            done.finish_reason,
            done.token_ids,
            self.usage,
            done.error,
        )


class RequestHandle:
    """A submitted request: iterate its events (ending with Done), or cancel it."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self._ids)
        self._queue: queue.Queue[Event] = queue.Queue()
        self._cancel = threading.Event()
        self._put_lock = threading.Lock()
        self._ended = False  # a Done was queued
        self.done: Done | None = None

    def cancel(self) -> None:
        """Stop the request; it ends within one token with finish_reason "cancelled"."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def ended(self) -> bool:
        """Whether the request's Done has been queued (its reader may not have seen it yet)."""
        return self._ended

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they arrive, through the final Done."""
        while True:
            ev = self._queue.get(timeout=timeout)
            if isinstance(ev, Done):  # set first: a reader may stop at Done without resuming
                self.done = ev
            yield ev
            if isinstance(ev, Done):
                return

    def result(self) -> GenerationResult:
        """Wait for the request to finish and collect its events."""
        return GenerationResult.of(self.events())

    def _put(self, ev: Event) -> None:
        with self._put_lock:
            if self._ended:  # one Done ends a request: whatever comes after has no reader
                return
            self._ended = isinstance(ev, Done)
            self._queue.put(ev)


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
