"""The agent loop: model turn → tool calls → results fed back, until an answer or a limit.

Every step emits events (see events.py) to a callback and to the store, so a run can be watched
live, reviewed later, and resumed after a restart. Mutating steps are approved, checkpointed and
diffed; the tree is watched for changes made by anyone else.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import Done, PromptProgress, ReasoningDelta, TextDelta, ToolCall, ToolCallError, Usage

from ..store import Store, StoreError, default_data_dir
from .approvals import READ_ONLY_TOOLS, ApprovalRequest, Approvals, Decision
from .backend import ModelBackend, estimate_tokens
from .checkpoints import CheckpointError, Checkpoints, UndoResult
from .events import STREAM_ONLY, AgentEvent
from .paths import PathError, ProjectRoot
from .prompt import SYSTEM_PROMPT, system_prompt, task_message
from .sandbox import Sandbox, detect_sandbox
from .tools import TOOL_NAMES, TOOLS, Limits, Toolbox, ToolError
from .watch import FileTracker, TreeWatcher

__all__ = ["Agent", "AgentConfig", "AgentError", "RunResult"]

_ELIDED = (
    "[Output of {name} ({chars} characters) removed to save context. Call the tool again if you "
    "still need it.]"
)

_NO_ANSWER = (
    "[Locus] Your last turn ended inside your reasoning, without an answer or a tool call. "
    "Continue: call a tool, or end your reasoning with </think> and give your final answer."
)
_NO_ANSWER_EVENT = "the model's turn had reasoning only (no answer, no tool call); asked it to go on"


class AgentError(Exception):
    """The run cannot start or resume (bad project, unknown run, run busy elsewhere)."""


@dataclass
class AgentConfig:
    """Limits and switches of a run."""

    max_steps: int = 40  # model turns per run (or per resume)
    max_turn_tokens: int | None = None  # default: a quarter of the context, 1024..32768
    token_budget: int | None = None  # generated tokens in all, across the run
    context_tokens: int = 32768  # prompt + output must fit; old tool outputs are dropped to fit
    allow_network: bool = False
    sandbox: str = "auto"  # "auto", "none", "bwrap", "sandbox-exec"
    require_sandbox: bool = False  # refuse every command when no working sandbox is found
    env_allow: tuple[str, ...] = ()  # environment names commands get besides the allowlist
    checkpoints: bool = True
    watch: bool = True
    use_ripgrep: bool = True
    limits: Limits = field(default_factory=Limits)
    system_prompt: str = SYSTEM_PROMPT

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None = None, **kw: Any) -> AgentConfig:
        """A config with the user's saved preferences (`require_sandbox`, `agent_env`: names
        commands may inherit) under the explicit `kw`."""
        from ..settings import load_ui_settings

        s = load_ui_settings() if settings is None else settings
        env = s.get("agent_env") or []
        env = env.replace(",", " ").split() if isinstance(env, str) else env
        env = env if isinstance(env, list) else []
        base: dict[str, Any] = {
            "require_sandbox": bool(s.get("require_sandbox", False)),
            "env_allow": tuple(str(n) for n in env if isinstance(n, str) and n.strip()),
        }
        if "env_allow" in kw:
            kw["env_allow"] = tuple(dict.fromkeys([*base["env_allow"], *kw["env_allow"]]))
        return cls(**{**base, **kw})

    @property
    def turn_tokens(self) -> int:
        if self.max_turn_tokens:
            return self.max_turn_tokens
        return max(1024, min(self.context_tokens // 4, 32768))


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


@dataclass
class _Turn:
    reasoning: str = ""
    text: str = ""
    items: list[ToolCall | ToolCallError] = field(default_factory=list)
    usage: Usage | None = None
    done: Done | None = None


class Agent:
    """Runs tasks in one project directory with one model backend.

    `on_event(AgentEvent)` is called on the agent's thread for every event. Approvals that need
    the user go to `approvals.ask` on the same thread; `stop()` may be called from any thread.
    """

    def __init__(
        self,
        project: str | os.PathLike[str],
        backend: ModelBackend,
        *,
        store: Store | None = None,
        approvals: Approvals | None = None,
        config: AgentConfig | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> None:
        try:
            self.root = ProjectRoot(project)
        except PathError as e:
            raise AgentError(str(e)) from None
        self.backend = backend
        self.config = config or AgentConfig()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self._own_store = store is None
        self.store = store or Store(self.data_dir / "locus.db")
        self.approvals = approvals or Approvals()
        self.on_event = on_event
        self.sandbox: Sandbox = detect_sandbox(self.config.sandbox)
        self.checkpoints: Checkpoints | None = None
        self._checkpoint_error: str | None = None
        if self.config.checkpoints:
            try:
                self.checkpoints = Checkpoints(self.root.path, self.data_dir)
            except (CheckpointError, OSError) as e:
                self._checkpoint_error = str(e)
        self.tracker = FileTracker()
        self.toolbox = Toolbox(
            self.root,
            self.tracker,
            self.sandbox,
            limits=self.config.limits,
            allow_network=self.config.allow_network,
            use_ripgrep=self.config.use_ripgrep,
            env_allow=tuple(self.config.env_allow),
            hidden=(str(self.data_dir),),
            quarantine=self.data_dir / "quarantine",
        )
        self.watcher: TreeWatcher | None = None
        self._cancel = threading.Event()
        self.run_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self._compacted: set[int] = set()
        self.steps = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._last_prompt = 0  # prompt tokens of the last turn, for context budgeting
        self._last_len = 0  # messages in that prompt
        self._session_steps = 0

    # -- public API ----------------------------------------------------------------------------------
    def run(self, task: str) -> RunResult:
        """Start a new run on `task` and work until it ends; the result is also stored."""
        if not task or not task.strip():
            raise AgentError("the task is empty")
        self._reset()
        settings = {
            "max_steps": self.config.max_steps,
            "token_budget": self.config.token_budget,
            "context_tokens": self.config.context_tokens,
            "sandbox": self.sandbox.kind,
            "allow_network": self.config.allow_network,
        }
        self.run_id = self.store.create_run(
            str(self.root.path), task, model=self.backend.name, settings=settings
        )
        self._start_events(task, resumed=False)
        self._add_message(
            {"role": "system", "content": system_prompt(self.root.path.name, self.config.system_prompt)}
        )
        self._add_message({"role": "user", "content": task_message(task)})
        return self._run_loop()

    def resume(self, run_id: str, message: str | None = None) -> RunResult:
        """Continue a stored run (after a restart, a stop or a limit), optionally with a new
        user message; a finished run needs one."""
        try:
            rec = self.store.run(run_id)
        except StoreError as e:
            raise AgentError(str(e)) from None
        if os.path.realpath(rec.project) != str(self.root.path):
            raise AgentError(f"run {run_id} belongs to {rec.project}, not {self.root.path}")
        if rec.alive and rec.pid != os.getpid():
            raise AgentError(f"run {run_id} is still running (process {rec.pid})")
        messages = self.store.messages(run_id)
        if not messages:
            raise AgentError(f"run {run_id} has no messages to resume from")
        if rec.status == "answered" and not (message and message.strip()):
            raise AgentError(f"run {run_id} already finished with an answer; give a follow-up message")
        self._reset()
        self.run_id = run_id
        self.messages = messages
        self.steps = rec.steps
        self.prompt_tokens, self.completion_tokens = rec.prompt_tokens, rec.completion_tokens
        self.tracker = FileTracker(rec.state.get("tracker"))
        self.toolbox.tracker = self.tracker
        self.approvals.load_state(rec.state.get("approvals") or {})
        self.store.update_run(run_id, status="running", pid=os.getpid(), finished=None, error=None)
        self._start_events(rec.task, resumed=True)
        # Calls whose results were never stored: the process died while they ran.
        for call_id, name in self._unanswered():
            self._add_message(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": (
                        f"Error: Locus stopped before this {name} call finished, so its result was lost "
                        "and its effect is unknown. Check the state before continuing."
                    ),
                }
            )
        note = self._changed_note(after_restart=True)
        parts = [p for p in (message and message.strip(), note) if p]
        if parts:
            self._add_message({"role": "user", "content": "\n\n".join(parts)})
        elif self.messages[-1].get("role") == "assistant":
            self._add_message({"role": "user", "content": "Continue."})
        return self._run_loop()

    def stop(self) -> None:
        """Stop the run: the model turn, a running command, or a pending approval (thread-safe)."""
        self._cancel.set()

    def undo(self, steps: int = 1) -> UndoResult:
        """Restore the project as it was before the last `steps` checkpointed steps."""
        if self.checkpoints is None:
            raise AgentError(self._checkpoint_error or "checkpoints are turned off")
        return self.checkpoints.undo(steps)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._cancel.clear()
        self.messages = []
        self._compacted = set()
        self.steps = self._session_steps = 0
        self.prompt_tokens = self.completion_tokens = 0
        self._last_prompt = self._last_len = 0
        self.tracker = FileTracker()
        self.toolbox.tracker = self.tracker

    def _start_events(self, task: str, resumed: bool) -> None:
        watching = False
        if self.config.watch:
            self.watcher = TreeWatcher(self.root.path)
            watching = self.watcher.start()
            if not watching:
                self._emit("warning", message=self.watcher.error or "cannot watch the project")
                self.watcher = None
        self._emit(
            "run_started",
            run_id=self.run_id,
            project=str(self.root.path),
            task=task,
            resumed=resumed,
            sandbox=self.sandbox.kind,
            sandbox_note=self.sandbox.describe(),
            checkpoints=self.checkpoints is not None,
            watching=watching,
            backend=self.backend.name,
        )
        if not self.sandbox.active:
            self._emit("warning", message=self.sandbox.describe())
        if self._checkpoint_error:
            self._emit("warning", message=f"steps cannot be undone: {self._checkpoint_error}")

    def _run_loop(self) -> RunResult:
        t0 = time.monotonic()
        cfg = self.config
        status, answer, error = "error", None, None
        nudged = False  # the model was told its last turn had neither answer nor call
        try:
            while True:
                limit = self._limit_reached()
                if limit is not None:
                    status = limit
                    break
                self.steps += 1
                self._session_steps += 1
                step = self.steps
                self._emit("step", step=step)
                turn = self._model_turn(step)
                done = turn.done
                if done is None or done.finish_reason == "error":
                    error = (done.error if done else None) or "the model stopped without a reason"
                    self._emit("error", step=step, message=f"model error: {error}")
                    status = "error"
                    break
                if done.finish_reason == "cancelled" or self._cancel.is_set():
                    status = "stopped"
                    break
                self._record_turn(step, turn)
                if not turn.items:
                    if done.finish_reason == "length":
                        self._add_message(
                            {
                                "role": "user",
                                "content": (
                                    f"[Locus] Your reply was cut off at the {cfg.turn_tokens}-token limit "
                                    "of one turn. Continue more briefly: call a tool, or give your final "
                                    "answer."
                                ),
                            }
                        )
                        continue
                    if not turn.text.strip() and not nudged:
                        # Reasoning only: say so once, rather than end with an empty answer.
                        nudged = True
                        self._emit("warning", step=step, message=_NO_ANSWER_EVENT)
                        self._add_message({"role": "user", "content": _NO_ANSWER})
                        continue
                    status, answer = "answered", turn.text.strip()
                    break
                nudged = False
                self._run_tools(step, turn.items)
                self._save_progress()
        except Exception as e:  # a bug must end the run cleanly, with the trace stored
            status, error = "error", f"internal error: {type(e).__name__}: {e}"
            self._emit("error", step=self.steps, message=error, trace=traceback.format_exc())
        finally:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
        return self._finish_run(status, answer, error, time.monotonic() - t0)

    def _limit_reached(self) -> str | None:
        """The status that ends the run before another model turn (None: go on)."""
        cfg = self.config
        if self._cancel.is_set():
            return "stopped"
        if self._session_steps >= cfg.max_steps:
            return "step_limit"
        if cfg.token_budget is not None and self.completion_tokens >= cfg.token_budget:
            return "token_budget"
        if not self._fit_context():
            return "context_full"
        return None

    def _finish_run(self, status: str, answer: str | None, error: str | None, elapsed: float) -> RunResult:
        """Store the run's outcome, announce it ("done") and return it."""
        result = RunResult(
            self.run_id or "",
            status,
            answer,
            self.steps,
            self.prompt_tokens,
            self.completion_tokens,
            elapsed,
            error,
        )
        self.store.update_run(
            self.run_id or "",
            status=status,
            answer=answer,
            error=error,
            steps=self.steps,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            state=self._state(),
            finished=time.time(),
            pid=None,
        )
        self._emit(
            "done",
            step=self.steps,
            status=status,
            answer=answer,
            steps=self.steps,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            elapsed=round(elapsed, 3),
            error=error,
        )
        return result

    def _model_turn(self, step: int) -> _Turn:
        t = _Turn()
        reasoning: list[str] = []
        text: list[str] = []
        events = self.backend.turn(
            self._view(), TOOLS, max_tokens=self.config.turn_tokens, cancel=self._cancel
        )
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
                self._emit("reasoning", step=step, text=ev.text)
            elif isinstance(ev, TextDelta):
                text.append(ev.text)
                self._emit("text", step=step, text=ev.text)
            elif isinstance(ev, ToolCall | ToolCallError):
                t.items.append(ev)
            elif isinstance(ev, Usage):
                t.usage = ev
            elif isinstance(ev, PromptProgress):
                self._emit("prompt_progress", step=step, processed=ev.processed, total=ev.total)
            elif isinstance(ev, Done):
                t.done = ev
                t.usage = t.usage or ev.usage
        t.reasoning, t.text = "".join(reasoning), "".join(text)
        if t.usage is not None:
            self.prompt_tokens += t.usage.prompt_tokens
            self.completion_tokens += t.usage.completion_tokens
            self._last_prompt = t.usage.prompt_tokens + t.usage.completion_tokens
            self._last_len = len(self.messages) + 1
        return t

    def _record_turn(self, step: int, turn: _Turn) -> None:
        calls = [c for c in turn.items if isinstance(c, ToolCall)]
        bad = [c for c in turn.items if isinstance(c, ToolCallError)]
        content = turn.text
        if bad:  # keep what the model wrote, so it can see its malformed call
            content = (content.rstrip() + "\n\n" if content.strip() else "") + "\n".join(b.raw for b in bad)
        msg: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": turn.reasoning}
        if calls:
            msg["tool_calls"] = [
                {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        self._add_message(msg)
        u = turn.usage
        self._emit(
            "assistant",
            step=step,
            reasoning=turn.reasoning,
            text=turn.text,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
            malformed=[{"message": b.message, "raw": b.raw} for b in bad],
            finish_reason=turn.done.finish_reason if turn.done else None,
            usage={
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "cached_tokens": u.cached_tokens,
            }
            if u
            else None,
        )

    def _run_tools(self, step: int, items: list[ToolCall | ToolCallError]) -> None:
        for i, item in enumerate(items):
            if isinstance(item, ToolCallError):
                call_id = f"malformed_{step}_{i}"
                ok, content, details = False, f"Error: {item.message}", {}
                self._emit(
                    "tool_result",
                    step=step,
                    call_id=call_id,
                    name=item.name,
                    ok=False,
                    content=content,
                    details={"raw": item.raw},
                )
            else:
                call_id = item.id
                if self._cancel.is_set():
                    ok, content, details = (
                        False,
                        "Error: the user stopped the run before this call ran.",
                        {},
                    )
                else:
                    ok, content, details = self._execute(step, item)
                self._emit(
                    "tool_result",
                    step=step,
                    call_id=call_id,
                    name=item.name,
                    ok=ok,
                    content=content,
                    details=details,
                )
            if i == len(items) - 1:
                note = self._changed_note()
                if note:
                    content += "\n\n" + note
            self._add_message({"role": "tool", "tool_call_id": call_id, "content": content})

    def _execute(self, step: int, call: ToolCall) -> tuple[bool, str, dict[str, Any]]:
        name, args = call.name, dict(call.arguments)
        self._emit("tool_call", step=step, call_id=call.id, name=name, arguments=args)
        if name not in TOOL_NAMES:
            return (
                False,
                f"Error: unknown tool {name!r}; available tools: {', '.join(TOOL_NAMES)}",
                {},
            )
        try:
            if name in READ_ONLY_TOOLS:
                return True, getattr(self.toolbox, name)(args), {}
            plan = self.toolbox.prepare(name, args)
            if plan.command is not None and not self.sandbox.active and self.config.require_sandbox:
                return (
                    False,
                    (
                        "Error: commands are refused: no working sandbox ("
                        f"{self.sandbox.reason or 'none'}) and the user requires one "
                        "(--require-sandbox). Do the task without running commands."
                    ),
                    {"rejected": True},
                )
            req = ApprovalRequest(
                call.id,
                name,
                args,
                plan.summary,
                step,
                plan.diff,
                plan.command,
                sandboxed=self.sandbox.active or plan.command is None,
                unsandboxed_by_choice=not self.sandbox.broken,
                sandbox_note=self.sandbox.reason,
            )
            decision = self.approvals.rule(req)
            if decision is None:
                self._emit("approval_needed", step=step, request=req.to_dict())
                decision = self.approvals.decide(req, self._cancel)
                self._save_progress()
            self._emit("approval", step=step, call_id=call.id, **decision.to_dict())
            if not decision.approved:
                return False, _rejected(name, decision), {"rejected": True}
            before = self._snapshot(plan.paths, step)
            if self.watcher is not None:
                with self.watcher.agent_busy():
                    content, details = self.toolbox.apply(plan, self._cancel)
            else:
                content, details = self.toolbox.apply(plan, self._cancel)
            self._checkpoint(step, call, plan.summary, plan.paths, before)
            if name == "run_command":
                for what in details.get("git_changes") or ():
                    self._emit("warning", step=step, message=f"a command changed a git folder; {what}")
                changed = self.tracker.changed_since_seen(self.toolbox.current)
                if changed:
                    content += (
                        "\n\n[Files you had read that changed while this command ran: "
                        + ", ".join(f"{p} ({how})" for p, how in changed)
                        + ". Read them again before editing them.]"
                    )
            ok = details.get("exit_code", 0) == 0 if name == "run_command" else True
            return ok, content, details
        except ToolError as e:
            return False, f"Error: {e}", {}
        except OSError as e:  # the disk, not the model, failed: report it and let the run go on
            return False, f"Error: {name} failed: {e.strerror or e}", {"os_error": True}

    def _snapshot(self, paths: list[str], step: int) -> str | None:
        if self.checkpoints is None:
            return None
        try:
            return self.checkpoints.snapshot(include=paths)
        except (CheckpointError, OSError, TimeoutError) as e:
            self._emit("warning", step=step, message=f"checkpoint failed, this step cannot be undone: {e}")
            return None

    def _checkpoint(
        self, step: int, call: ToolCall, summary: str, paths: list[str], before: str | None
    ) -> None:
        if self.checkpoints is None or before is None:
            return
        after = self._snapshot(paths, step)
        if after is None:
            return
        try:
            cp = self.checkpoints.record(self.run_id or "", step, call.name, summary, before, after)
            if cp is None:
                return
            patch = self.checkpoints.diff(before, after)
        except CheckpointError as e:
            self._emit("warning", step=step, message=f"checkpoint failed: {e}")
            return
        cap = 200_000
        if len(patch) > cap:
            patch = patch[:cap] + f"\n[... diff cut at {cap} characters ...]\n"
        self._emit("diff", step=step, call_id=call.id, checkpoint=cp.id, files=cp.files, patch=patch)

    def _changed_note(self, after_restart: bool = False) -> str:
        """Tell the model which files it read changed since; report external changes as events."""
        if self.watcher is not None:
            external = sorted(p for p, own in self.watcher.drain().items() if not own)
            if external:
                self._emit("files_changed", step=self.steps, paths=external)
        changed = self.tracker.changed_since_seen(self.toolbox.current)
        if not changed:
            return ""
        when = "while Locus was not running" if after_restart else "outside your own edits"
        files = ", ".join(f"{p} ({how})" for p, how in changed)
        return (
            f"[Locus: files you read have changed since, {when}: {files}. Read them again "
            "before editing them.]"
        )

    # -- context --------------------------------------------------------------------------------------
    def _view(self) -> list[dict[str, Any]]:
        """The messages as sent: stored ones, with compacted tool outputs replaced."""
        out = []
        for i, m in enumerate(self.messages):
            if i in self._compacted:
                m = {
                    **m,
                    "content": _ELIDED.format(name=self._tool_name(i), chars=len(m["content"])),
                }
            out.append(m)
        return out

    def _tool_name(self, index: int) -> str:
        call_id = self.messages[index].get("tool_call_id")
        for m in reversed(self.messages[:index]):
            for c in m.get("tool_calls") or []:
                if c.get("id") == call_id:
                    return str(c["function"]["name"])
        return "a tool"

    def _estimate(self) -> int:
        """Prompt tokens of the next turn: the last prompt plus an estimate of what was added,
        counted exactly by the backend once it gets close to the budget."""
        view = self._view()
        if self._last_prompt and self._last_len <= len(view):
            est = self._last_prompt + estimate_tokens(view[self._last_len :], None)
        else:
            est = estimate_tokens(view, TOOLS)
        if est > 0.7 * self._budget():
            est = self.backend.count_tokens(view, TOOLS)
        return est

    def _budget(self) -> int:
        cfg = self.config
        return max(cfg.context_tokens - cfg.turn_tokens, cfg.context_tokens // 2)

    def _fit_context(self) -> bool:
        """Drop old tool outputs (oldest first) until the prompt fits; False if it cannot."""
        budget = self._budget()
        before = self._estimate()
        if before <= budget:
            return True
        # Keep the newest round of tool results; older ones go first.
        last_assistant = max(
            (i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=len(self.messages)
        )
        candidates = [
            i
            for i, m in enumerate(self.messages[:last_assistant])
            if m["role"] == "tool" and i not in self._compacted and len(m.get("content") or "") > 200
        ]
        dropped = 0
        now = before
        for i in candidates:
            self._compacted.add(i)
            dropped += 1
            self._last_prompt = 0  # the prefix changed: count afresh
            now = self._estimate()
            if now <= budget:
                break
        if dropped:
            self._emit("compacted", step=self.steps, messages=dropped, tokens_before=before, tokens_after=now)
        return now <= budget

    # -- persistence --------------------------------------------------------------------------------------
    def _add_message(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        self.store.add_message(self.run_id or "", msg)

    def _state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.to_state(), "approvals": self.approvals.to_state()}

    def _save_progress(self) -> None:
        self.store.update_run(
            self.run_id or "",
            steps=self.steps,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            state=self._state(),
        )

    def _unanswered(self) -> list[tuple[str, str]]:
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        last = next((m for m in reversed(self.messages) if m.get("role") == "assistant"), None)
        if last is None:
            return []
        return [
            (c["id"], c["function"]["name"])
            for c in last.get("tool_calls") or []
            if c.get("id") not in answered
        ]

    def _emit(self, type: str, step: int | None = None, **data: Any) -> None:
        step = self.steps if step is None else step
        seq = 0
        if type not in STREAM_ONLY and self.run_id:
            seq = self.store.add_event(self.run_id, type, data, step)
        if self.on_event is not None:
            self.on_event(AgentEvent(type, step, data, self.run_id or "", seq))


def _rejected(name: str, d: Decision) -> str:
    why = f": {d.reason.strip()}" if d.reason.strip() else " (no reason given)"
    return (
        f"The user rejected this {name} call{why}. It was not carried out. Adapt your approach; "
        "do not repeat the same call unchanged."
    )
