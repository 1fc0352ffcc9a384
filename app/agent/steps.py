"""One step's tool calls, carried out for the agent: each call checked, approved (by a rule or the
user), applied inside the sandbox, checkpointed so it can be undone, and its result added for the
model; built-in tools and MCP servers' tools alike."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from engine import ToolCall, ToolCallError

from .approvals import READ_ONLY_TOOLS, ApprovalRequest, Decision
from .checkpoints import CheckpointError
from .tools import TOOL_NAMES, ToolError

if TYPE_CHECKING:
    from .runlog import AgentState

__all__ = ["StepRunner"]

Outcome = tuple[bool, str, dict[str, Any]]  # ok, what the model is told, details for the events


class StepRunner:
    """Runs the tool calls of the agent's steps. It works on the agent's own state (toolbox,
    sandbox, approvals, checkpoints, watcher, MCP hub) and reports through its events."""

    def __init__(self, agent: AgentState) -> None:
        self.agent = agent
        self.images: dict[str, list[str]] = {}  # call id -> images an MCP result gives the model

    def run(self, step: int, items: list[ToolCall | ToolCallError]) -> None:
        """Carry out one turn's calls in order; each result becomes a tool message."""
        a = self.agent
        for i, item in enumerate(items):
            if isinstance(item, ToolCallError):
                call_id = f"malformed_{step}_{i}"
                ok, content, details = False, f"Error: {item.message}", {"raw": item.raw}
                gone = a.mcp.why_missing(item.name or "") if a.mcp is not None else None
                if gone:  # a withdrawn MCP tool: say why it is missing
                    content += f" ({gone})"
            else:
                call_id = item.id
                if a._cancel.is_set():
                    ok, content, details = (
                        False,
                        "Error: the user stopped the run before this call ran.",
                        {},
                    )
                else:
                    ok, content, details = self.execute(step, item)
            a.log.emit(
                "tool_result",
                step=step,
                call_id=call_id,
                name=item.name,
                ok=ok,
                content=content,
                details=details,
            )
            if i == len(items) - 1:
                note = self.changed_note()
                if note:
                    content += "\n\n" + note
            images = self.images.pop(call_id, [])
            parts = [{"type": "text", "text": content}, *({"type": "image", "image": u} for u in images)]
            a.log.add_message(
                {"role": "tool", "tool_call_id": call_id, "content": parts if images else content}
            )

    def execute(self, step: int, call: ToolCall) -> Outcome:
        """One call of a built-in tool (an MCP tool goes to `execute_mcp`)."""
        a = self.agent
        name, args = call.name, dict(call.arguments)
        a.log.emit("tool_call", step=step, call_id=call.id, name=name, arguments=args)
        if a.mcp is not None and name not in TOOL_NAMES and name.startswith("mcp__"):
            return self.execute_mcp(step, call)
        if name not in TOOL_NAMES:
            names = [t["function"]["name"] for t in a.tools()]
            return False, f"Error: unknown tool {name!r}; available tools: {', '.join(names)}", {}
        try:
            if name in READ_ONLY_TOOLS:
                return True, getattr(a.toolbox, name)(args), {}
            return self._change(step, call, name, args)
        except ToolError as e:
            return False, f"Error: {e}", {}
        except OSError as e:  # the disk, not the model, failed: report it and let the run go on
            return False, f"Error: {name} failed: {e.strerror or e}", {"os_error": True}

    def _change(self, step: int, call: ToolCall, name: str, args: dict[str, Any]) -> Outcome:
        """A call that changes something: previewed, approved, applied and checkpointed."""
        a = self.agent
        plan = a.toolbox.prepare(name, args)
        if plan.command is not None and not a.sandbox.active and a.config.require_sandbox:
            return (
                False,
                (
                    "Error: commands are refused: no working sandbox ("
                    f"{a.sandbox.reason or 'none'}) and the user requires one "
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
            sandboxed=a.sandbox.active or plan.command is None,
            unsandboxed_by_choice=not a.sandbox.broken,
            sandbox_note=a.sandbox.reason,
        )
        decision = self._decide(step, req, a.approvals.rule(req))
        if not decision.approved:
            return False, rejected(name, decision), {"rejected": True}
        before = self.snapshot(plan.paths, step)
        if a.watcher is not None:
            with a.watcher.agent_busy():
                content, details = a.toolbox.apply(plan, a._cancel)
        else:
            content, details = a.toolbox.apply(plan, a._cancel)
        self.checkpoint(step, call, plan.summary, plan.paths, before)
        if name == "run_command":
            for what in details.get("git_changes") or ():
                a.log.emit("warning", step=step, message=f"a command changed a git folder; {what}")
            changed = a.tracker.changed_since_seen(a.toolbox.current)
            if changed:
                content += (
                    "\n\n[Files you had read that changed while this command ran: "
                    + ", ".join(f"{p} ({how})" for p, how in changed)
                    + ". Read them again before editing them.]"
                )
        ok = details.get("exit_code", 0) == 0 if name == "run_command" else True
        return ok, content, details

    def _decide(self, step: int, req: ApprovalRequest, decision: Decision | None) -> Decision:
        """The rule's decision, else the user's (asked through the approvals); announced."""
        a = self.agent
        if decision is None:
            a.log.emit("approval_needed", step=step, request=req.to_dict())
            decision = a.approvals.decide(req, a._cancel)
            a.log.save_progress()
        a.log.emit("approval", step=step, call_id=req.call_id, **decision.to_dict())
        return decision

    # -- MCP servers' tools ---------------------------------------------------------------------
    def mcp_rule(self, name: str, read_only: bool) -> Decision | None:
        a = self.agent
        if name in a.mcp_allowed.allowed(str(a.root.path)):
            return Decision("approve", reason="always allowed in this project", auto=True)
        if read_only and a.config.mcp_read_only:
            return Decision("approve", reason="read-only (preference)", auto=True)
        return None

    def execute_mcp(self, step: int, call: ToolCall) -> Outcome:
        """One MCP tool call: approved like an edit, run by its server, its images kept for the model."""
        a = self.agent
        assert a.mcp is not None
        name, args = call.name, dict(call.arguments)
        tool = a.mcp.tool(name)
        if tool is None:
            names = ", ".join(t["function"]["name"] for t in a.tools())
            why = a.mcp.why_missing(name) or f"unknown tool {name!r}"
            return False, f"Error: {why}. Available tools: {names}", {}
        preview = json.dumps(args, indent=2, ensure_ascii=False)
        hint = " (read-only, says the server)" if tool.read_only else ""
        summary = f"MCP {tool.server}: {tool.tool}{hint}"
        req = ApprovalRequest(call.id, name, args, summary, step, preview=preview, read_only=tool.read_only)
        decision = self._decide(step, req, self.mcp_rule(name, tool.read_only) or a.approvals.rule(req))
        if not decision.approved:
            return False, rejected(name, decision), {"rejected": True}
        if decision.action == "allow_tool":
            a.mcp_allowed.allow(str(a.root.path), name)
        before = None if tool.read_only else self.snapshot([], step)
        if a.watcher is not None:
            with a.watcher.agent_busy():
                res = a.mcp.call(name, args, cancel=a._cancel)
        else:
            res = a.mcp.call(name, args, cancel=a._cancel)
        self.checkpoint(step, call, summary, [], before)
        for what in res.details.get("git_changes") or ():
            a.log.emit("warning", step=step, message=f"an MCP tool changed a git folder; {what}")
        a.mcp_problems(step)
        if res.images:
            self.images[call.id] = res.images
        return res.ok, res.text, {"server": tool.server, **res.details}

    # -- checkpoints and changes ----------------------------------------------------------------
    def snapshot(self, paths: list[str], step: int) -> str | None:
        a = self.agent
        if a.checkpoints is None:
            return None
        try:
            return a.checkpoints.snapshot(include=paths)
        except (CheckpointError, OSError, TimeoutError) as e:
            a.log.emit("warning", step=step, message=f"checkpoint failed, this step cannot be undone: {e}")
            return None

    def checkpoint(
        self, step: int, call: ToolCall, summary: str, paths: list[str], before: str | None
    ) -> None:
        a = self.agent
        if a.checkpoints is None or before is None:
            return
        after = self.snapshot(paths, step)
        if after is None:
            return
        try:
            cp = a.checkpoints.record(a.run_id or "", step, call.name, summary, before, after)
            if cp is None:
                return
            patch = a.checkpoints.diff(before, after)
        except CheckpointError as e:
            a.log.emit("warning", step=step, message=f"checkpoint failed: {e}")
            return
        cap = 200_000
        if len(patch) > cap:
            patch = patch[:cap] + f"\n[... diff cut at {cap} characters ...]\n"
        a.log.emit("diff", step=step, call_id=call.id, checkpoint=cp.id, files=cp.files, patch=patch)

    def changed_note(self, after_restart: bool = False) -> str:
        """Tell the model which files it read changed since; report external changes as events."""
        a = self.agent
        if a.watcher is not None:
            external = sorted(p for p, own in a.watcher.drain().items() if not own)
            if external:
                a.log.emit("files_changed", step=a.steps, paths=external)
        changed = a.tracker.changed_since_seen(a.toolbox.current)
        if not changed:
            return ""
        when = "while Locus was not running" if after_restart else "outside your own edits"
        files = ", ".join(f"{p} ({how})" for p, how in changed)
        return (
            f"[Locus: files you read have changed since, {when}: {files}. Read them again "
            "before editing them.]"
        )


def rejected(name: str, d: Decision) -> str:
    """What the model is told of a call the user rejected."""
    why = f": {d.reason.strip()}" if d.reason.strip() else " (no reason given)"
    return (
        f"The user rejected this {name} call{why}. It was not carried out. Adapt your approach; "
        "do not repeat the same call unchanged."
    )
