"""The agent's context window: the messages as the model gets them, and the budgeting that elides
old tool outputs (oldest first) so the next prompt still fits. The stored messages never change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import Usage

from .backend import estimate_tokens

__all__ = ["ContextWindow", "content_chars"]

_ELIDED = (
    "[Output of {name} ({chars} characters) removed to save context. Call the tool again if you "
    "still need it.]"
)

Messages = list[dict[str, Any]]


class ContextWindow:
    """Keeps the next prompt within `budget` tokens: the context less one turn's output, and at
    least half the context.

    `messages()` gives the run's messages, `tools()` the tools offered, `count(messages, tools)`
    counts exactly (the backend), `emit("compacted", ...)` reports elisions."""

    def __init__(
        self,
        context_tokens: int,
        turn_tokens: int,
        *,
        messages: Callable[[], Messages],
        tools: Callable[[], Messages],
        count: Callable[[Messages, Messages], int],
        emit: Callable[..., None],
    ) -> None:
        self.budget = max(context_tokens - turn_tokens, context_tokens // 2)
        self._messages, self._tools, self._count, self._emit = messages, tools, count, emit
        self.compacted: set[int] = set()
        self.last_prompt = 0  # prompt + output tokens of the last turn
        self.last_len = 0  # messages in that prompt, with its reply

    def reset(self) -> None:
        """A new run (or a resumed one): nothing elided, nothing measured."""
        self.compacted = set()
        self.last_prompt = self.last_len = 0

    def measured(self, usage: Usage) -> None:
        """A turn's usage: the prompt it had, and the reply about to be added, are counted exactly."""
        self.last_prompt = usage.prompt_tokens + usage.completion_tokens
        self.last_len = len(self._messages()) + 1

    def view(self) -> Messages:
        """The messages as sent: stored ones, with compacted tool outputs replaced."""
        out = []
        for i, m in enumerate(self._messages()):
            if i in self.compacted:
                m = {
                    **m,
                    "content": _ELIDED.format(name=self._tool_name(i), chars=content_chars(m["content"])),
                }
            out.append(m)
        return out

    def _tool_name(self, index: int) -> str:
        messages = self._messages()
        call_id = messages[index].get("tool_call_id")
        for m in reversed(messages[:index]):
            for c in m.get("tool_calls") or []:
                if c.get("id") == call_id:
                    return str(c["function"]["name"])
        return "a tool"

    def estimate(self) -> int:
        """Prompt tokens of the next turn: the last prompt plus an estimate of what was added,
        counted exactly by the backend once it gets close to the budget."""
        view = self.view()
        if self.last_prompt and self.last_len <= len(view):
            est = self.last_prompt + estimate_tokens(view[self.last_len :], None)
        else:
            est = estimate_tokens(view, self._tools())
        if est > 0.7 * self.budget:
            est = self._count(view, self._tools())
        return est

    def fit(self, step: int) -> bool:
        """Drop old tool outputs (oldest first) until the prompt fits; False if it cannot."""
        before = self.estimate()
        if before <= self.budget:
            return True
        messages = self._messages()
        # Keep the newest round of tool results; older ones go first.
        last_assistant = max(
            (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages)
        )
        candidates = [
            i
            for i, m in enumerate(messages[:last_assistant])
            if m["role"] == "tool" and i not in self.compacted and content_chars(m.get("content")) > 200
        ]
        dropped = 0
        now = before
        for i in candidates:
            self.compacted.add(i)
            dropped += 1
            self.last_prompt = 0  # the prefix changed: count afresh
            now = self.estimate()
            if now <= self.budget:
                break
        if dropped:
            self._emit("compacted", step=step, messages=dropped, tokens_before=before, tokens_after=now)
        return now <= self.budget


def content_chars(content: Any) -> int:
    """Characters of a message's content (text parts of a list; an image counts as 4000)."""
    if isinstance(content, list):
        return sum(len(str(p.get("text", ""))) if p.get("type") == "text" else 4000 for p in content)
    return len(content or "")
