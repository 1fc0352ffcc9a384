"""Approvals: read-only tools run freely; edits and commands ask the user first.

The user can approve once, reject with a reason the model sees, allow a tool for the rest of the
session, or allow commands starting with a prefix: a prefix covers only a simple command (one
program and its arguments, nothing the shell would chain, redirect or substitute). Headless runs
use `--yes` (approve everything) and `--allow PREFIX`. Fail closed: when the sandbox is missing
or broken (not turned off by the user), every command is asked about, one at a time; `--yes`,
prefixes and "always" do not cover it, and a run with nobody to ask refuses it. With the sandbox
turned off on purpose (`--no-sandbox`), `--yes` and prefixes apply but "always allow
run_command" still does not.
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
    "SimpleCommand",
    "command_words",
    "default_prefix",
    "prefix_matches",
    "simple_command",
    "valid_prefix",
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
    preview: str | None = None  # for an MCP tool: the arguments it would send, as JSON
    read_only: bool = False  # an MCP tool its server annotates as read-only (a hint)

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
            "preview": self.preview,
            "read_only": self.read_only,
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


# Outside quotes these make a command more than one plain program with its arguments:
# lists, pipes, redirections, subshells, substitutions and parameter expansion.
_UNSAFE = frozenset(";&|<>()`$")
# Unquoted, these expand to other words: globs, bash's braces, the home folder.
_EXPANDS = frozenset("*?[{~")
# A first word that is one of these is shell syntax, not a program.
_RESERVED = frozenset(
    "! { } [[ ]] case coproc do done elif else esac fi for function if in select then time until "
    "while".split()
)


@dataclass(frozen=True)
class SimpleCommand:
    """A command that /bin/sh runs as one program with these words as its argv."""

    words: tuple[str, ...]
    literal: tuple[bool, ...]  # per word: False when the shell would expand it (glob, brace, ~)


def _double_quoted(command: str, i: int, out: list[str]) -> int | None:
    """Read a "..." string starting after its quote; the index past its end, or None if it
    substitutes (`$`, backquote) or never ends."""
    n = len(command)
    while i < n:
        c = command[i]
        if c == '"':
            return i + 1
        if c in "$`":
            return None
        if c == "\\" and i + 1 < n and command[i + 1] in '$`"\\':
            out.append(command[i + 1])  # sh's only escapes inside double quotes
            i += 2
            continue
        out.append(c)
        i += 1
    return None


def _read_word(command: str, i: int) -> tuple[str, bool, int] | None:
    """One word starting at `i`: its value after quote removal, whether it is literal, and the
    index where it ends; None when it is not plain (an operator, a substitution, bad quoting)."""
    out: list[str] = []
    literal, n = True, len(command)
    while i < n and command[i] != " ":
        c = command[i]
        if c == "'":
            end = command.find("'", i + 1)
            if end < 0:
                return None
            out.append(command[i + 1 : end])
            i = end + 1
        elif c == '"':
            after = _double_quoted(command, i + 1, out)
            if after is None:
                return None
            i = after
        elif c == "\\":
            if i + 1 >= n:
                return None
            out.append(command[i + 1])
            i += 2
        elif c in _UNSAFE:
            return None
        else:
            literal = literal and c not in _EXPANDS
            out.append(c)
            i += 1
    return "".join(out), literal, i


def simple_command(command: str) -> SimpleCommand | None:
    """The words of `command` if /bin/sh would run it as one plain program, else None.

    Conservative: no operators, redirections, substitutions, `$`, comments, control characters
    (newlines and tabs included), leading `NAME=value` assignments or reserved words.
    """
    if not command or any(c != " " and not c.isprintable() for c in command):
        return None
    words: list[str] = []
    literal: list[bool] = []
    i = 0
    while i < len(command):
        if command[i] == " ":
            i += 1
            continue
        if command[i] == "#":
            return None  # a comment: sh ignores the rest of the line
        word = _read_word(command, i)
        if word is None:
            return None
        words.append(word[0])
        literal.append(word[1])
        i = word[2]
    if not words or "=" in words[0] or words[0] in _RESERVED:
        return None
    return SimpleCommand(tuple(words), tuple(literal))


def command_words(command: str) -> list[str] | None:
    """The words of a simple command (see `simple_command`), or None."""
    parsed = simple_command(command)
    return list(parsed.words) if parsed else None


def valid_prefix(prefix: str) -> bool:
    """Whether `prefix` can be allowed: a simple command whose words the shell does not expand."""
    parsed = simple_command(prefix)
    return parsed is not None and all(parsed.literal)


def prefix_matches(prefix: str, command: str) -> bool:
    """Whether `command` is a simple command whose first words are exactly those of `prefix`."""
    want, have = simple_command(prefix), simple_command(command)
    if want is None or have is None or not all(want.literal):
        return False
    k = len(want.words)
    return have.words[:k] == want.words and all(have.literal[:k])


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
        if req.tool.startswith("mcp__"):  # --allow mcp__SERVER (all its tools) or one tool's name
            for p in self.prefixes:
                if req.tool == p or req.tool.startswith(p + "__"):
                    return Decision("approve", reason=f"{p} allowed", auto=True)
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
            if valid_prefix(prefix):
                self.prefixes.append(prefix)
                d = Decision("allow_prefix", d.reason, prefix)
            else:
                d = Decision("approve", d.reason)  # this once: no simple prefix to remember
        return d

    def to_state(self) -> dict[str, Any]:
        return {"tools": sorted(self.tools), "prefixes": list(self.prefixes)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tools |= set(state.get("tools") or [])
        for p in state.get("prefixes") or []:
            if p not in self.prefixes:
                self.prefixes.append(p)


# Programs that run whatever command their arguments name: allowing one by name allows anything.
_RUNNERS = frozenset(
    "sh bash dash zsh ksh fish env sudo doas su eval exec command builtin xargs nohup nice timeout "
    "setsid stdbuf chroot unshare nsenter watch".split()
)


def default_prefix(command: str) -> str:
    """The prefix "allow commands like this" means: the first word, and a subcommand if any
    (`git status`, `python -m pytest`, `npm test`); "" when there is none worth offering."""
    parsed = simple_command(command)
    if parsed is None or parsed.words[0].rsplit("/", 1)[-1] in _RUNNERS:
        return ""
    words = parsed.words
    take = 1
    if len(words) > 2 and words[0].rsplit("/", 1)[-1].startswith("python") and words[1] == "-m":
        take = 3
    elif len(words) > 1 and re.fullmatch(r"[a-z][a-z0-9_-]*", words[1]):
        take = 2  # a subcommand word; a file name or path (a.txt, src/) is not one
    if not all(parsed.literal[:take]):
        return ""
    return shlex.join(words[:take])
