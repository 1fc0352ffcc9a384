"""The agent's run in the store: created or reopened, every message and event as it happens, the
progress after each step and the outcome at the end, so a run can be watched live, reviewed later
and resumed after a restart."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..store import RunRecord, Store, StoreError
from .events import STREAM_ONLY, AgentEvent

if TYPE_CHECKING:
    from ..mcp import McpHub, ToolAllowances
    from .approvals import Approvals
    from .backend import ModelBackend
    from .checkpoints import Checkpoints
    from .paths import ProjectRoot
    from .sandbox import Sandbox
    from .tools import Toolbox
    from .watch import FileTracker, TreeWatcher

__all__ = ["AgentError", "AgentState", "RunLog", "RunResult"]


class AgentError(Exception):
    """The run cannot start or resume (bad project, unknown run, run busy elsewhere)."""


@dataclass
class RunResult:
    run_id: str
    status: str
    answer: str | None
    steps: int
    prompt_tokens: int
    completion_tokens: int
    elapsed: float
    error: str | None = None


class AgentState(Protocol):
    """What the agent's parts (its run log, its step runner) read and write of the agent."""

    root: ProjectRoot
    config: Any  # AgentConfig
    backend: ModelBackend
    store: Store
    sandbox: Sandbox
    toolbox: Toolbox
    tracker: FileTracker
    approvals: Approvals
    checkpoints: Checkpoints | None
    watcher: TreeWatcher | None
    mcp: McpHub | None
    mcp_allowed: ToolAllowances
    on_event: Callable[[AgentEvent], None] | None
    run_id: str | None
    messages: list[dict[str, Any]]
    steps: int
    prompt_tokens: int
    completion_tokens: int
    log: RunLog
    _cancel: threading.Event

    def tools(self) -> list[dict[str, Any]]: ...

    def mcp_problems(self, step: int) -> None: ...


class RunLog:
    """Stores the agent's run as it goes (the agent's `store`, `run_id` and counters)."""

    def __init__(self, agent: AgentState) -> None:
        self.agent = agent

    def create(self, task: str) -> str:
        """A new run of `task` in the store; its id."""
        a = self.agent
        settings = {
            "max_steps": a.config.max_steps,
            "token_budget": a.config.token_budget,
            "context_tokens": a.config.context_tokens,
            "sandbox": a.sandbox.kind,
            "allow_network": a.config.allow_network,
        }
        return a.store.create_run(str(a.root.path), task, model=a.backend.name, settings=settings)

    def reopen(self, run_id: str, message: str | None) -> tuple[RunRecord, list[dict[str, Any]]]:
        """A stored run of this project that may go on (its record and messages), marked running;
        AgentError when it cannot."""
        a = self.agent
        try:
            rec = a.store.run(run_id)
        except StoreError as e:
            raise AgentError(str(e)) from None
        if os.path.realpath(rec.project) != str(a.root.path):
            raise AgentError(f"run {run_id} belongs to {rec.project}, not {a.root.path}")
        if rec.alive and rec.pid != os.getpid():
            raise AgentError(f"run {run_id} is still running (process {rec.pid})")
        messages = a.store.messages(run_id)
        if not messages:
            raise AgentError(f"run {run_id} has no messages to resume from")
        if rec.status == "answered" and not (message and message.strip()):
            raise AgentError(f"run {run_id} already finished with an answer; give a follow-up message")
        return rec, messages

    def add_message(self, msg: dict[str, Any]) -> None:
        a = self.agent
        a.messages.append(msg)
        a.store.add_message(a.run_id or "", msg)

    def emit(self, type: str, step: int | None = None, **data: Any) -> None:
        """Store an event (unless it is only for live watchers) and hand it to `on_event`."""
        a = self.agent
        step = a.steps if step is None else step
        seq = 0
        if type not in STREAM_ONLY and a.run_id:
            seq = a.store.add_event(a.run_id, type, data, step)
        if a.on_event is not None:
            a.on_event(AgentEvent(type, step, data, a.run_id or "", seq))

    def state(self) -> dict[str, Any]:
        """What a resumed run needs besides its messages: files read, approvals given."""
        a = self.agent
        return {"tracker": a.tracker.to_state(), "approvals": a.approvals.to_state()}

    def save_progress(self) -> None:
        a = self.agent
        a.store.update_run(
            a.run_id or "",
            steps=a.steps,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            state=self.state(),
        )

    def finish(self, status: str, answer: str | None, error: str | None, elapsed: float) -> RunResult:
        """Store the run's outcome, announce it ("done") and return it."""
        a = self.agent
        result = RunResult(
            a.run_id or "", status, answer, a.steps, a.prompt_tokens, a.completion_tokens, elapsed, error
        )
        a.store.update_run(
            a.run_id or "",
            status=status,
            answer=answer,
            error=error,
            steps=a.steps,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            state=self.state(),
            finished=time.time(),
            pid=None,
        )
        self.emit(
            "done",
            step=a.steps,
            status=status,
            answer=answer,
            steps=a.steps,
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            elapsed=round(elapsed, 3),
            error=error,
        )
        return result

    def unanswered(self) -> list[tuple[str, str]]:
        """Calls of the last model turn whose results were never stored (id, tool name)."""
        messages = self.agent.messages
        answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
        last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
        if last is None:
            return []
        return [
            (c["id"], c["function"]["name"])
            for c in last.get("tool_calls") or []
            if c.get("id") not in answered
        ]
