"""How a stdio MCP server is started: inside the agent's command sandbox, with its environment.

The server gets what a command gets (sandbox_rules.build_rules): the project (or, with no project,
the server's `cwd` or an empty scratch folder) writable, system and toolchain folders read-only,
home and secrets hidden, no network unless its entry says `"allowNetwork": true`, and only the
allowlisted environment plus the variables its entry declares. Its `cwd` and the absolute paths
its entry names (a script, a folder) are readable, since the user listed them; secrets stay hidden.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..agent.gitguard import GitChange, GitScan, neutralise
from ..agent.gitguard import scan as scan_git
from ..agent.sandbox import Sandbox
from ..agent.sandbox_rules import ENV_ALLOWLIST, build_rules, command_env
from .config import McpConfigError, ServerConfig, expand_secrets

__all__ = ["GitWatch", "Launch", "LaunchPlace", "stdio_launch"]


@dataclass(frozen=True)
class LaunchPlace:
    """Where the session's stdio servers run: the sandbox, the project (None: no project), what
    else their environment may carry and what the sandbox must also hide."""

    sandbox: Sandbox
    project: Path | None = None
    env_allow: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    quarantine: Path | None = None  # where git folders a server made are moved
    environ: Mapping[str, str] | None = None  # Locus's environment (default: os.environ)
    keychain: Callable[[str], str | None] | None = None
    require_sandbox: bool = False  # refuse to start stdio servers when there is no working sandbox


@dataclass(frozen=True)
class Launch:
    """The process to start for one stdio server, and the folder the git guard watches."""

    argv: list[str]
    env: dict[str, str]
    root: str
    sandboxed: bool


def _readable(cfg: ServerConfig, root: str, home: str) -> list[str]:
    """The folders and files the entry names (cwd, an absolute command or argument) that exist
    outside the writable root, never `/`, the home folder or one of its parents."""
    cands = [cfg.cwd or "", cfg.command or ""] + [a for a in cfg.args if a.startswith("/")]
    out: list[str] = []
    for c in cands:
        if not c.startswith("/") or not os.path.exists(c):
            continue
        real = os.path.realpath(c)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            continue  # already writable; a read-only mount over it would take that away
        if real == "/" or (home + "/").startswith(real.rstrip("/") + "/"):
            continue  # exposing these would undo the sandbox's hiding of home
        if real not in out:
            out.append(real)
    return out


def stdio_launch(cfg: ServerConfig, place: LaunchPlace, scratch: Path) -> Launch:
    """The argv and environment that start `cfg` in the sandbox; raises McpConfigError when its
    `cwd` is missing or a secret it names is unset. `scratch` is used when there is no project."""
    assert cfg.command is not None
    if place.require_sandbox and not place.sandbox.active:
        raise McpConfigError(
            f"not started: no working sandbox ({place.sandbox.reason or 'none'}) and one is required"
        )
    declared = expand_secrets(cfg.env, environ=dict(place.environ or os.environ), keychain=place.keychain)
    cwd = cfg.cwd
    if cwd and not os.path.isdir(cwd):
        raise McpConfigError(f"server {cfg.name!r}: cwd {cwd} is not a folder")
    root = str(place.project or cwd or scratch)
    root = os.path.realpath(root)
    cwd = os.path.realpath(cwd) if cwd else root
    sb = place.sandbox
    git = scan_git(root) if sb.active else GitScan(root)
    env_names = (*place.env_allow, *declared)
    rules = build_rules(
        root,
        network=cfg.allow_network,
        extra_env=env_names,
        extra_hidden=place.hidden,
        git=git,
        env=place.environ,
    )
    if sb.active:
        extra = [p for p in _readable(cfg, root, rules.home) if p not in rules.read_only]
        rules = dataclasses.replace(rules, read_only=(*rules.read_only, *extra))
    program = shlex.join([cfg.command, *cfg.args])
    script = f"exec {program}" if cwd == root else f"cd {shlex.quote(cwd)} && exec {program}"
    argv = sb.wrap(script, Path(root), allow_network=cfg.allow_network, rules=rules)
    env = command_env((*ENV_ALLOWLIST, *place.env_allow), place.environ)
    env.update(declared)
    return Launch(argv, env, root, sb.active)


class GitWatch:
    """The git guard around one tool call: what the project's git folders were before, undone
    after (a server must not plant hooks or config any more than a command may)."""

    def __init__(self, root: str, quarantine: Path | None) -> None:
        self.root = root
        self.quarantine = quarantine

    def before(self) -> GitScan:
        return scan_git(self.root)

    def undo(self, before: GitScan) -> list[GitChange]:
        if self.quarantine is None:
            from ..settings import data_dir

            self.quarantine = Path(data_dir()) / "quarantine"
        return neutralise(before, scan_git(self.root), self.quarantine)
