"""Agent mode: the model works inside a project folder with tools, a sandbox, approvals,
checkpoints that undo any step, and a live view of the tree. Headless; the UI puts a face on it.

    from app.agent import Agent, AgentConfig, Approvals, EngineBackend
    agent = Agent("~/code/proj", EngineBackend(engine), approvals=Approvals(yes=True))
    result = agent.run("fix the failing test")   # events go to on_event and the store
    agent.undo(1)
"""

from .approvals import READ_ONLY_TOOLS, ApprovalRequest, Approvals, Decision, default_prefix
from .backend import EngineBackend, ModelBackend, ReplayBackend, ReplayError, load_replay
from .checkpoints import Checkpoint, CheckpointError, Checkpoints, UndoResult
from .events import AgentEvent
from .loop import Agent, AgentConfig, AgentError, RunResult
from .paths import PathError, ProjectRoot
from .prompt import SYSTEM_PROMPT
from .sandbox import (
    Sandbox,
    detect_sandbox,
    sandbox_rules_report,
    sandbox_self_check,
    scrub_env,
)
from .sandbox_rules import SandboxRules, build_rules
from .tools import TOOLS, Limits

__all__ = [
    "READ_ONLY_TOOLS",
    "SYSTEM_PROMPT",
    "TOOLS",
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentEvent",
    "ApprovalRequest",
    "Approvals",
    "Checkpoint",
    "CheckpointError",
    "Checkpoints",
    "Decision",
    "EngineBackend",
    "Limits",
    "ModelBackend",
    "PathError",
    "ProjectRoot",
    "ReplayBackend",
    "ReplayError",
    "RunResult",
    "Sandbox",
    "SandboxRules",
    "UndoResult",
    "build_rules",
    "default_prefix",
    "detect_sandbox",
    "load_replay",
    "sandbox_rules_report",
    "sandbox_self_check",
    "scrub_env",
]
