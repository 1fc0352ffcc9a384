"""Approvals: read-only tools run freely; edits and commands ask the user first.

The user can approve once, reject with a reason the model sees, allow a tool for the rest of the
session, or allow commands starting with a prefix. Headless runs use `--yes` (approve everything)
and `--allow PREFIX`. Fail closed: when the sandbox is missing or broken (not turned off by the
user), every command is asked about, one at a time; `--yes`, prefixes and "always" do not cover
it, and a run with nobody to ask refuses it. With the sandbox turned off on purpose
(`--no-sandbox`), `--yes` and prefixes apply but "always allow run_command" still does not.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "READ_ONLY_TOOLS",
    "ApprovalRequest",
    "Approvals",
    "Decision",
    "command_words",
    "prefix_matches",
]

READ_ONLY_TOOLS = frozenset({"list_dir", "read_file", "search"})

Action = Literal["approve", "reject", "allow_tool", "allow_prefix"]


@dataclass(frozen=True)
class ApprovalRequest:
    """What the agent wants to do, for the user to decide on."""

    call_id: str
    tool: str
    arguments: dict[str, Any]
    summary: str  # one line, e.g. "edit src/app.py" or "run: pytest -q"
    step: int = 0
    diff: str | None = None  # for edits: the unified diff the edit would make
    command: str | None = None
    sandboxed: bool = True  # False: a command would run with the user's full permissions
    unsandboxed_by_choice: bool = False  # the user turned the sandbox off (--no-sandbox)
    sandbox_note: str = ""  # why there is no sandbox, for the prompt and the refusal

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "tool": self.tool,
            "arguments": self.arguments,
            "summary": self.summary,
            "step": self.step,
            "diff": self.diff,
            "command": self.command,
            "sandboxed": self.sandboxed,
            "unsandboxed_by_choice": self.unsandboxed_by_choice,
            "sandbox_note": self.sandbox_note,
        }

    @property
    def needs_own_approval(self) -> bool:
        """A command that would run unconfined because the sandbox is missing or broken."""
        return self.command is not None and not self.sandboxed and not self.unsandboxed_by_choice


@dataclass(frozen=True)
class Decision:
    """The user's answer. `reason` goes to the model on reject; `prefix` for allow_prefix."""

    action: Action
    reason: str = ""
    prefix: str = ""
    auto: bool = False  # decided by a session rule or flag, not asked

    @property
    def approved(self) -> bool:
        return self.action != "reject"

    @classmethod
    def approve(cls) -> Decision:
        return cls("approve")

    @classmethod
    def reject(cls, reason: str = "") -> Decision:
        return cls("reject", reason=reason)

    @classmethod
    def allow_tool(cls) -> Decision:
        return cls("allow_tool")

    @classmethod
    def allow_prefix(cls, prefix: str) -> Decision:
        return cls("allow_prefix", prefix=prefix)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "prefix": self.prefix, "auto": self.auto}


_OPERATORS = set(";&|<>()\n`")


def command_words(command: str) -> list[str] | None:
    """The words of a simple command, or None if it chains, pipes, redirects or substitutes."""
    if any(c in command for c in "`\n\r") or "$(" in command:
        return None
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=";&|<>()")
        lex.whitespace_split = True
        words = list(lex)
    except ValueError:
        return None
    if not words or any(w and set(w) <= _OPERATORS for w in words):
        return None
    return words


def prefix_matches(prefix: str, command: str) -> bool:
    """Whether a simple command starts with the words of `prefix`."""
    want = command_words(prefix)
    have = command_words(command)
    return bool(want and have and have[: len(want)] == want)


@dataclass
class Approvals:
    """The session's approval rules, and how to ask the user when they do not decide.

    `ask` is called on the agent's thread and may block (a UI waits for a click there); it gets
    the request and a threading.Event set when the run is being stopped.
    """

    ask: Callable[[ApprovalRequest, threading.Event], Decision] | None = None
    yes: bool = False
    tools: set[str] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)

    def rule(self, req: ApprovalRequest) -> Decision | None:
        """The decision a session rule or flag makes, or None when the user must be asked."""
        if req.tool in READ_ONLY_TOOLS:
            return Decision("approve", auto=True)
        if req.needs_own_approval:
            return None  # fail closed: no flag or rule approves an unconfined command
        if self.yes:
            return Decision("approve", reason="--yes", auto=True)
        if req.command is not None:
            for p in self.prefixes:
                if prefix_matches(p, req.command):
                    return Decision("approve", reason=f"prefix {p!r} allowed", auto=True)
            if not req.sandboxed:
                return None  # without a sandbox, allowing the tool as a whole does not apply
        if req.tool in self.tools:
            return Decision("approve", reason=f"{req.tool} allowed for this session", auto=True)
        return None

    def decide(self, req: ApprovalRequest, cancel: threading.Event) -> Decision:
        """Apply the rules, else ask; remember allow-tool and allow-prefix answers."""
        auto = self.rule(req)
        if auto is not None:
            return auto
        if self.ask is None and req.needs_own_approval:
            return Decision.reject(
                "commands cannot run: there is no working sandbox"
                + (f" ({req.sandbox_note})" if req.sandbox_note else "")
                + ", so each command needs the user's own approval, and this run has nobody to "
                "ask. Do the task without running commands, or tell the user to fix the sandbox "
                "(locus doctor) or rerun with --no-sandbox"
            )
        if self.ask is None:
            return Decision.reject(
                "this action needs the user's approval and the run is headless; rerun with "
                "--yes, or --allow a command prefix"
            )
        d = self.ask(req, cancel)
        if cancel.is_set() and not d.approved:
            return d
        if req.needs_own_approval and d.approved:
            return Decision("approve", d.reason)  # once: nothing is remembered for the next one
        if d.action == "allow_tool":
            self.tools.add(req.tool)
        elif d.action == "allow_prefix":
            prefix = d.prefix.strip() or default_prefix(req.command or "")
            if prefix and command_words(prefix):
                self.prefixes.append(prefix)
                d = Decision("allow_prefix", d.reason, prefix)
        return d

    def to_state(self) -> dict[str, Any]:
        return {"tools": sorted(self.tools), "prefixes": list(self.prefixes)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tools |= set(state.get("tools") or [])
        for p in state.get("prefixes") or []:
            if p not in self.prefixes:
                self.prefixes.append(p)


def default_prefix(command: str) -> str:
    """The prefix "allow commands like this" means: the first word, and a subcommand if any
    (`git status`, `python -m pytest`, `npm test`)."""
    words = command_words(command) or []
    if not words:
        return ""
    take = 1
    if len(words) > 1 and words[0].rsplit("/", 1)[-1].startswith("python") and words[1] == "-m":
        take = 3
    elif len(words) > 1 and re.fullmatch(r"[a-z][a-z0-9_-]*", words[1]):
        take = 2  # a subcommand word; a file name or path (a.txt, src/) is not one
    return shlex.join(words[:take])
