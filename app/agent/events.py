"""Events an agent run emits, in order; all but the streaming deltas are also stored.

| type | data |
|---|---|
| run_started | run_id, project, task, resumed, sandbox, sandbox_note, checkpoints, watching, backend |
| warning | message |
| mcp_servers | servers [ServerStatus.to_dict()]: the MCP servers as they started (once per session) |
| step | (a model turn begins; `step` is its number) |
| prompt_progress | processed, total (not stored) |
| reasoning | text: a piece of the model's reasoning (not stored) |
| text | text: a piece of the answer (not stored) |
| assistant | reasoning, text, tool_calls [{id, name, arguments}], malformed [{message, raw}], |
|           | finish_reason, usage |
| tool_call | call_id, name, arguments |
| approval_needed | request: ApprovalRequest.to_dict() |
| approval | call_id, action, reason, prefix, auto |
| tool_result | call_id, name, ok, content, details |
| diff | call_id, checkpoint, files [{status, path}], patch |
| files_changed | paths: changed on disk by something other than the agent's own tools |
| compacted | messages, tokens_before, tokens_after |
| error | message |
| done | status, answer, steps, prompt_tokens, completion_tokens, elapsed, error |

`done.status`: "answered", "step_limit", "token_budget", "context_full", "stopped" or "error".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["STREAM_ONLY", "AgentEvent"]

STREAM_ONLY = frozenset({"reasoning", "text", "prompt_progress"})


@dataclass(frozen=True)
class AgentEvent:
    """One event of a run. `seq` is its number in the store (0 for streaming deltas)."""

    type: str
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, `type` first."""
        return {"type": self.type, "step": self.step, **self.data}
