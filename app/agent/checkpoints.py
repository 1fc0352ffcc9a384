"""Checkpoints: a shadow git repository per project, kept in the user data directory.

Every git command runs as `git --git-dir=SHADOW --work-tree=PROJECT` with the user's git config
ignored, so the project's own `.git` is never read or written (git never tracks a `.git` entry),
and attributes are overridden so bytes go in and come back exactly (no EOL or filter conversion).
Files the project's .gitignore ignores are left out, except files the agent itself writes.

A mutating step records the tree before and after it; `undo(n)` puts the tree back as it was
before the n-th last step (files created since are removed, deleted ones come back), and
remembers the tree it replaced so nothing is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Checkpoint", "CheckpointError", "Checkpoints", "UndoResult", "git_available"]

# Trees never worth snapshotting; the project's .gitignore usually covers more.
_EXCLUDE = """\
.git/
node_modules/
__pycache__/
*.pyc
.pytest_cache/
.mypy_cache/
.ruff_cache/
.tox/
.nox/
.venv/
.DS_Store
"""
_ATTRIBUTES = "* -text -filter -ident -eol -working-tree-encoding\n"
LARGE_FILE = 50 * 1024 * 1024  # untracked files bigger than this are not snapshotted


class CheckpointError(Exception):
    pass


def git_available() -> bool:
    return shutil.which("git") is not None


@dataclass
class Checkpoint:
    """One mutating step: the trees before and after it, and what changed."""

    id: int
    run_id: str
    step: int
    tool: str
    summary: str
    before: str  # commit ids in the shadow repository
    after: str
    files: list[dict[str, str]] = field(default_factory=list)  # {"status": "M", "path": ...}
    time: float = 0.0
    undone: bool = False


@dataclass
class UndoResult:
    steps: list[Checkpoint]
    restored: str  # commit the tree now matches
    replaced: str  # commit of the tree the undo replaced
    files: list[dict[str, str]]  # what the undo changed


class Checkpoints:
    """The shadow repository of one project."""

    def __init__(self, project: str | os.PathLike[str], data_dir: str | os.PathLike[str]):
        self.project = Path(os.path.realpath(project))
        key = hashlib.sha256(str(self.project).encode()).hexdigest()[:16]
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.project.name)[:40]
        self.shadow = Path(data_dir) / "checkpoints" / f"{name}-{key}"
        self._log = self.shadow / "locus-checkpoints.json"
        self._lock_path = self.shadow / "locus.lock"
        self._init()

    # -- git plumbing ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_CONFIG_NOSYSTEM="1",
            GIT_TERMINAL_PROMPT="0",
            GIT_AUTHOR_NAME="Locus",
            GIT_AUTHOR_EMAIL="locus@localhost",
            GIT_COMMITTER_NAME="Locus",
            GIT_COMMITTER_EMAIL="locus@localhost",
            LC_ALL="C",
        )
        return env

    def _git(self, *args: str, check: bool = True, errors: str = "surrogateescape") -> str:
        cmd = [
            "git",
            f"--git-dir={self.shadow}",
            f"--work-tree={self.project}",
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.safecrlf=false",
            "-c",
            "core.quotepath=off",
            "-c",
            "core.hooksPath=" + os.devnull,
            "-c",
            "core.fsmonitor=false",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "gc.auto=0",
            *args,
        ]
        r = subprocess.run(
            cmd, cwd=self.project, env=self._env(), capture_output=True, stdin=subprocess.DEVNULL, timeout=600
        )
        if check and r.returncode != 0:
            msg = r.stderr.decode(errors="replace").strip()
            raise CheckpointError(f"git {args[0]} failed: {msg}")
        return r.stdout.decode(errors=errors)

    def _init(self) -> None:
        if not git_available():
            raise CheckpointError("git is not installed, so steps cannot be checkpointed")
        if (self.shadow / "HEAD").exists():
            return
        self.shadow.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.shadow.with_name(self.shadow.name + f".init-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run(
            ["git", "init", "-q", "--bare", str(tmp)], env=self._env(), capture_output=True, timeout=60
        )
        if r.returncode != 0:
            raise CheckpointError(f"git init failed: {r.stderr.decode(errors='replace')}")
        subprocess.run(
            ["git", f"--git-dir={tmp}", "config", "core.bare", "false"],
            env=self._env(),
            check=True,
            capture_output=True,
        )
        (tmp / "info").mkdir(exist_ok=True)
        (tmp / "info" / "exclude").write_text(_EXCLUDE)
        (tmp / "info" / "attributes").write_text(_ATTRIBUTES)
        (tmp / "locus-project").write_text(str(self.project) + "\n")
        try:
            tmp.rename(self.shadow)
        except OSError:  # another process created it first
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- snapshots --------------------------------------------------------------------------------
    def snapshot(self, include: list[str] | None = None) -> str:
        """Commit the project's current tree; `include` adds paths even if they are ignored."""
        with self._locked():
            return self._snapshot(include)

    def _snapshot(self, include: list[str] | None = None) -> str:
        self._exclude_large()
        self._git("add", "-A", "--ignore-errors", check=False)
        present = [p for p in include or [] if os.path.lexists(self.project / p)]
        if present:
            self._git("add", "-f", "--ignore-errors", "--", *present, check=False)
        tree = self._git("write-tree").strip()
        commit = self._git("commit-tree", tree, "-m", "locus snapshot").strip()
        return commit

    def _exclude_large(self) -> None:
        out = self._git("ls-files", "-o", "--exclude-standard", "-z", check=False)
        big = []
        for rel in filter(None, out.split("\0")):
            try:
                st = os.lstat(self.project / rel)
            except OSError:
                continue
            if st.st_size > LARGE_FILE:
                big.append("/" + rel.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?"))
        if big:
            ex = self.shadow / "info" / "exclude"
            have = set(ex.read_text().splitlines())
            new = [b for b in big if b not in have]
            if new:
                with open(ex, "a") as f:
                    f.write("\n".join(new) + "\n")

    def tree_of(self, commit: str) -> str:
        return self._git("rev-parse", f"{commit}^{{tree}}").strip()

    def changed(self, a: str, b: str) -> list[dict[str, str]]:
        """Files that differ between two commits: [{"status": "A"|"M"|"D"|"T", "path": ...}]."""
        out = self._git("diff-tree", "-r", "-z", "--no-renames", "--name-status", a, b)
        parts = [p for p in out.split("\0") if p]
        return [{"status": parts[i][:1], "path": parts[i + 1]} for i in range(0, len(parts) - 1, 2)]

    def diff(self, a: str, b: str, paths: list[str] | None = None) -> str:
        """A unified diff between two commits (binary files summarized)."""
        args = ["diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", a, b]
        return self._git(*args, *(["--", *paths] if paths else []), errors="replace")

    # -- the step log --------------------------------------------------------------------------------
    def _load(self) -> list[Checkpoint]:
        try:
            data = json.loads(self._log.read_text())
        except (OSError, ValueError):
            return []
        return [Checkpoint(**c) for c in data.get("checkpoints", [])]

    def _save(self, cps: list[Checkpoint], undos: list[dict] | None = None) -> None:
        try:
            old = json.loads(self._log.read_text())
        except (OSError, ValueError):
            old = {}
        data = {
            "project": str(self.project),
            "checkpoints": [asdict(c) for c in cps],
            "undos": (old.get("undos") or []) + (undos or []),
        }
        tmp = self._log.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self._log)

    def record(
        self, run_id: str, step: int, tool: str, summary: str, before: str, after: str
    ) -> Checkpoint | None:
        """Log a step that changed the tree (None, and nothing logged, if it changed nothing)."""
        with self._locked():
            if self.tree_of(before) == self.tree_of(after):
                return None
            files = self.changed(before, after)
            cps = self._load()
            cp = Checkpoint(
                id=(cps[-1].id + 1) if cps else 1,
                run_id=run_id,
                step=step,
                tool=tool,
                summary=summary,
                before=before,
                after=after,
                files=files,
                time=time.time(),
            )
            for ref, sha in (("before", before), ("after", after)):
                self._git("update-ref", f"refs/locus/{cp.id}/{ref}", sha)
            cps.append(cp)
            self._save(cps)
            return cp

    def list(self, run_id: str | None = None, include_undone: bool = False) -> list[Checkpoint]:
        """Logged steps, oldest first."""
        return [
            c
            for c in self._load()
            if (include_undone or not c.undone) and (run_id is None or c.run_id == run_id)
        ]

    def step_diff(self, cp: Checkpoint | int) -> str:
        c = cp if isinstance(cp, Checkpoint) else next(x for x in self._load() if x.id == cp)
        return self.diff(c.before, c.after)

    def undo(self, steps: int = 1) -> UndoResult:
        """Put the tree back as it was before the last `steps` steps not yet undone."""
        if steps < 1:
            raise CheckpointError("steps must be at least 1")
        with self._locked():
            cps = self._load()
            live = [c for c in cps if not c.undone]
            if not live:
                raise CheckpointError("there is nothing to undo in this project")
            if steps > len(live):
                raise CheckpointError(f"only {len(live)} step{'s' if len(live) != 1 else ''} can be undone")
            chosen = live[-steps:]
            target = chosen[0].before
            current = self._snapshot()
            # Two-tree read-tree is what checkout does: index == current, so the work tree follows.
            self._git("read-tree", "-m", "-u", current, target)
            files = self.changed(current, target)
            stamp = time.time()
            self._git("update-ref", f"refs/locus/undo/{int(stamp * 1000)}", current)
            for c in chosen:
                c.undone = True
            self._save(
                cps,
                [
                    {
                        "time": stamp,
                        "replaced": current,
                        "restored": target,
                        "checkpoints": [c.id for c in chosen],
                    }
                ],
            )
            return UndoResult(chosen, target, current, files)
