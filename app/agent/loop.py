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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import PromptProgress, ReasoningDelta, ReplyAccumulator, TextDelta

from ..store import Store, default_data_dir
from .approvals import Approvals
from .backend import ModelBackend
from .checkpoints import CheckpointError, Checkpoints, UndoResult
from .context import ContextWindow
from .events import AgentEvent
from .paths import PathError, ProjectRoot
from .prompt import SYSTEM_PROMPT, system_prompt, task_message
from .runlog import AgentError, RunLog, RunResult
from .sandbox import Sandbox, detect_sandbox
from .steps import StepRunner
from .tools import TOOLS, Limits, Toolbox
from .watch import FileTracker, TreeWatcher

if TYPE_CHECKING:
    from ..mcp import McpHub, ServerConfig

__all__ = ["Agent", "AgentConfig", "AgentError", "RunResult"]

_NO_ANSWER = (
    "[Locus] Your last turn ended inside your reasoning, without an answer or a tool call. "
    "Continue: call a tool, or end your reasoning with </think> and give your final answer."
)
_NO_ANSWER_EVENT = "the model's turn had reasoning only (no answer, no tool call); asked it to go on"


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
    mcp_start_timeout: float = 30.0  # seconds the MCP servers get to start, together
    mcp_read_only: bool = False  # MCP tools a server annotates read-only run without asking

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
            "mcp_read_only": s.get("mcp_read_only") is True,
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


class Agent:
    """Runs tasks in one project directory with one model backend.

    `on_event(AgentEvent)` is called on the agent's thread for every event. Approvals that need
    the user go to `approvals.ask` on the same thread; `stop()` may be called from any thread.
    Its parts: `context` (what the model sees, fitted to the context), `runner` (each step's
    tool calls: approvals, sandbox, checkpoints) and `log` (the run in the store).
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
        mcp_servers: Mapping[str, ServerConfig] | Iterable[ServerConfig] | None = None,
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
        self.toolbox = self._toolbox()
        self.watcher: TreeWatcher | None = None
        self._cancel = threading.Event()
        self.run_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.steps = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._session_steps = 0
        self.log = RunLog(self)
        self.runner = StepRunner(self)
        self.context = ContextWindow(
            self.config.context_tokens,
            self.config.turn_tokens,
            messages=lambda: self.messages,
            tools=self.tools,
            count=self.backend.count_tokens,
            emit=self.log.emit,
        )
        self.mcp: McpHub | None = self._mcp_hub(mcp_servers) if mcp_servers else None

    def _toolbox(self) -> Toolbox:
        cfg = self.config
        return Toolbox(
            self.root,
            self.tracker,
            self.sandbox,
            limits=cfg.limits,
            allow_network=cfg.allow_network,
            use_ripgrep=cfg.use_ripgrep,
            env_allow=tuple(cfg.env_allow),
            hidden=(str(self.data_dir),),
            quarantine=self.data_dir / "quarantine",
        )

    # -- public API ----------------------------------------------------------------------------------
    def run(self, task: str) -> RunResult:
        """Start a new run on `task` and work until it ends; the result is also stored."""
        if not task or not task.strip():
            raise AgentError("the task is empty")
        self._reset()
        self.run_id = self.log.create(task)
        self._start_events(task, resumed=False)
        self.log.add_message(
            {"role": "system", "content": system_prompt(self.root.path.name, self.config.system_prompt)}
        )
        self.log.add_message({"role": "user", "content": task_message(task)})
        return self._run_loop()

    def resume(self, run_id: str, message: str | None = None) -> RunResult:
        """Continue a stored run (after a restart, a stop or a limit), optionally with a new
        user message; a finished run needs one."""
        rec, messages = self.log.reopen(run_id, message)
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
        for call_id, name in self.log.unanswered():
            self.log.add_message(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": (
                        f"Error: Locus stopped before this {name} call finished, so its result was lost "
                        "and its effect is unknown. Check the state before continuing."
                    ),
                }
            )
        note = self.runner.changed_note(after_restart=True)
        parts = [p for p in (message and message.strip(), note) if p]
        if parts:
            self.log.add_message({"role": "user", "content": "\n\n".join(parts)})
        elif self.messages[-1].get("role") == "assistant":
            self.log.add_message({"role": "user", "content": "Continue."})
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
        if self.mcp is not None:
            self.mcp.close()
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
        self.context.reset()
        self.steps = self._session_steps = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.tracker = FileTracker()
        self.toolbox.tracker = self.tracker

    def _start_events(self, task: str, resumed: bool) -> None:
        emit = self.log.emit
        watching = False
        if self.config.watch:
            self.watcher = TreeWatcher(self.root.path)
            watching = self.watcher.start()
            if not watching:
                emit("warning", message=self.watcher.error or "cannot watch the project")
                self.watcher = None
        emit(
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
            emit("warning", message=self.sandbox.describe())
        if self._checkpoint_error:
            emit("warning", message=f"steps cannot be undone: {self._checkpoint_error}")
        if self.mcp is not None:
            self._start_mcp()

    def _run_loop(self) -> RunResult:
        t0 = time.monotonic()
        status, answer, error = "error", None, None
        nudged = False  # the model was told its last turn had neither answer nor call
        try:
            while (limit := self._limit_reached()) is None:
                self.steps += 1
                self._session_steps += 1
                step = self.steps
                self.log.emit("step", step=step)
                turn = self._model_turn(step)
                done = turn.done
                if done is None or done.finish_reason == "error":
                    error = (done.error if done else None) or "the model stopped without a reason"
                    self.log.emit("error", step=step, message=f"model error: {error}")
                    break
                if done.finish_reason == "cancelled" or self._cancel.is_set():
                    status = "stopped"
                    break
                self._record_turn(step, turn)
                self.log.save_progress()  # a crash in this step's tools still shows the step
                if not turn.calls:
                    if done.finish_reason != "length" and (turn.text.strip() or nudged):
                        status, answer = "answered", turn.text.strip()
                        break
                    nudged = nudged or done.finish_reason != "length"
                    self._go_on(step, done.finish_reason)
                    continue
                nudged = False
                self.runner.run(step, turn.calls)
                self.log.save_progress()
            else:
                status = limit
        except Exception as e:  # a bug must end the run cleanly, with the trace stored
            status, error = "error", f"internal error: {type(e).__name__}: {e}"
            self.log.emit("error", step=self.steps, message=error, trace=traceback.format_exc())
        finally:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
        return self.log.finish(status, answer, error, time.monotonic() - t0)

    def _go_on(self, step: int, finish_reason: str) -> None:
        """Ask the model to go on after a turn with neither a call nor an answer."""
        if finish_reason == "length":
            text = (
                f"[Locus] Your reply was cut off at the {self.config.turn_tokens}-token limit "
                "of one turn. Continue more briefly: call a tool, or give your final answer."
            )
        else:  # reasoning only: say so once, rather than end with an empty answer
            self.log.emit("warning", step=step, message=_NO_ANSWER_EVENT)
            text = _NO_ANSWER
        self.log.add_message({"role": "user", "content": text})

    def _limit_reached(self) -> str | None:
        """The status that ends the run before another model turn (None: go on)."""
        cfg = self.config
        if self._cancel.is_set():
            return "stopped"
        if self._session_steps >= cfg.max_steps:
            return "step_limit"
        if cfg.token_budget is not None and self.completion_tokens >= cfg.token_budget:
            return "token_budget"
        if not self.context.fit(self.steps):
            return "context_full"
        return None

    def _model_turn(self, step: int) -> ReplyAccumulator:
        turn = ReplyAccumulator()
        self.mcp_problems(step)
        events = self.backend.turn(
            self.context.view(), self.tools(), max_tokens=self.config.turn_tokens, cancel=self._cancel
        )
        for ev in events:
            turn.add(ev)
            if isinstance(ev, ReasoningDelta):
                self.log.emit("reasoning", step=step, text=ev.text)
            elif isinstance(ev, TextDelta):
                self.log.emit("text", step=step, text=ev.text)
            elif isinstance(ev, PromptProgress):
                self.log.emit("prompt_progress", step=step, processed=ev.processed, total=ev.total)
        u = turn.usage
        if u is not None:
            self.prompt_tokens += u.prompt_tokens
            self.completion_tokens += u.completion_tokens
            self.context.measured(u)
        return turn

    def _record_turn(self, step: int, turn: ReplyAccumulator) -> None:
        calls, bad = turn.tool_calls, turn.tool_call_errors
        content = turn.text
        if bad:  # keep what the model wrote, so it can see its malformed call
            content = (content.rstrip() + "\n\n" if content.strip() else "") + "\n".join(b.raw for b in bad)
        msg: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": turn.reasoning}
        if calls:
            msg["tool_calls"] = [
                {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        self.log.add_message(msg)
        u = turn.usage
        self.log.emit(
            "assistant",
            step=step,
            reasoning=turn.reasoning,
            text=turn.text,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
            malformed=[{"message": b.message, "raw": b.raw} for b in bad],
            finish_reason=turn.finish_reason,
            usage={
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "cached_tokens": u.cached_tokens,
            }
            if u
            else None,
        )

    # -- MCP servers ------------------------------------------------------------------------------------
    def _mcp_hub(self, servers: Mapping[str, ServerConfig] | Iterable[ServerConfig]) -> McpHub:
        """The session's MCP servers, to start in the same sandbox and environment as commands."""
        from ..mcp import LaunchPlace, McpHub, RenderLimits, ToolAllowances

        self.mcp_allowed = ToolAllowances(self.data_dir)
        place = LaunchPlace(
            self.sandbox,
            self.root.path,
            env_allow=tuple(self.config.env_allow),
            hidden=(str(self.data_dir),),
            quarantine=self.data_dir / "quarantine",
            require_sandbox=self.config.require_sandbox,
        )
        limits = RenderLimits(text_chars=self.config.limits.output_chars)
        return McpHub(servers, place, start_timeout=self.config.mcp_start_timeout, limits=limits)

    def _start_mcp(self) -> None:
        """Start the servers (once per session); each that fails is one warning, the run goes on."""
        assert self.mcp is not None
        fresh = not self.mcp.started
        statuses = self.mcp.start()
        if fresh:
            self.log.emit("mcp_servers", servers=[st.to_dict() for st in statuses])
            for st in statuses:
                if st.state in ("failed", "crashed"):
                    self.log.emit("warning", message=st.line())
                elif st.transport == "stdio" and st.state == "ready" and not self.sandbox.active:
                    self.log.emit("warning", message=f"MCP server {st.name!r} runs without a sandbox")

    def mcp_problems(self, step: int) -> None:
        """Report servers that stopped since the last look (their tools are already withdrawn)."""
        for line in self.mcp.take_problems() if self.mcp is not None else ():
            self.log.emit("warning", step=step, message=line)

    def tools(self) -> list[dict[str, Any]]:
        """The tools offered this turn: the built-in ones and the live MCP servers'."""
        return TOOLS + (self.mcp.specs() if self.mcp is not None else [])
