"""Git folders in the project, found from facts (lstat, never following a link) and checked after
each command: git runs hooks and config (core.fsmonitor, core.hooksPath...) from them on the user's
next `git status`, so a command must not create, replace or re-point one.

`scan` finds every entry named `.git` at any depth and the git folders that `gitdir:` files name;
the sandbox mounts them read-only. `neutralise` compares a scan taken after a command with the one
taken before and moves anything new or changed out of the project (into Locus's quarantine, which
commands cannot see), restoring a re-pointed `gitdir:` file from what it said before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GitChange", "GitRefused", "GitScan", "neutralise", "scan"]

_FILE_READ = 64 * 1024  # a `gitdir:` file is one line; more than this is not one


class GitRefused(RuntimeError):
    """The project's git folders are laid out so that the sandbox cannot protect them."""


@dataclass(frozen=True)
class Entry:
    """One `.git` entry: kind ("dir", "file", "link", "other"), identity, and for a file its bytes."""

    kind: str
    dev: int
    ino: int
    data: bytes = b""
    link: str = ""


@dataclass
class GitScan:
    """Every `.git` entry under `root` (relative posix paths) and the git folders to protect."""

    root: str
    entries: dict[str, Entry] = field(default_factory=dict)
    protect: list[str] = field(default_factory=list)  # absolute, real, verified non-link paths
    problems: list[str] = field(default_factory=list)  # why the sandbox cannot protect them
    watch: dict[str, Entry] = field(default_factory=dict)  # gitdir: targets that do not exist yet

    def refuse_if_unsafe(self) -> None:
        """Raise GitRefused naming the first layout the sandbox cannot protect."""
        if self.problems:
            raise GitRefused(self.problems[0])


@dataclass(frozen=True)
class GitChange:
    """A git entry a command created, replaced or removed, and what Locus did about it."""

    path: str  # relative to the project
    what: str  # "created", "replaced", "removed"
    action: str  # what Locus did, for the user

    def describe(self) -> str:
        return f"{self.path} was {self.what}: {self.action}"


def _same(a: Entry | None, b: Entry | None) -> bool:
    """Unchanged for git: a folder is the same folder (inode), a file the same bytes, a link the
    same target."""
    if a is None or b is None or a.kind != b.kind:
        return a is b
    if a.kind == "file":
        return a.data == b.data
    if a.kind == "link":
        return a.link == b.link
    return (a.dev, a.ino) == (b.dev, b.ino)


def _entry(path: str) -> Entry | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return Entry("link", st.st_dev, st.st_ino, link=target)
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode):
        try:
            with open(path, "rb") as f:
                data = f.read(_FILE_READ)
        except OSError:
            data = b""
        return Entry("file", st.st_dev, st.st_ino, data=data)
    return Entry("other", st.st_dev, st.st_ino)


def _walk(root: str) -> dict[str, Entry]:
    """Every entry named `.git` under root, any depth, without following links or entering .git."""
    found: dict[str, Entry] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.name == ".git":
                    got = _entry(e.path)
                    if got is not None:
                        found[os.path.relpath(e.path, root).replace(os.sep, "/")] = got
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                except OSError:
                    continue
    return found


def _no_links_below(root: str, path: str) -> bool:
    """Whether every component of `path` below `root` is a real (non-link) entry."""
    rel = os.path.relpath(path, root)
    cur = root
    for part in rel.split(os.sep):
        cur = os.path.join(cur, part)
        try:
            if stat.S_ISLNK(os.lstat(cur).st_mode):
                return False
        except OSError:
            return False
    return True


def _gitdir_target(root: str, rel: str, data: bytes) -> str | None:
    """The folder a `gitdir:` file names, normalised without resolving links; None if not one."""
    line = data.decode("utf-8", "replace").strip().splitlines()
    if not line or not line[0].startswith("gitdir:"):
        return None
    target = line[0][len("gitdir:") :].strip()
    base = os.path.dirname(os.path.join(root, rel))
    return os.path.normpath(os.path.join(base, target))


def scan(root: str | os.PathLike[str]) -> GitScan:
    """Find the project's git entries and decide what the sandbox protects, from lstat alone."""
    real = os.path.realpath(root)
    out = GitScan(real, _walk(real))
    for rel, e in sorted(out.entries.items()):
        path = os.path.join(real, rel)
        if e.kind == "link":
            out.problems.append(
                f"{rel} is a symbolic link (to {e.link}): Locus cannot protect the git folder it "
                "points to, so commands are refused in this project. Replace the link with the folder "
                f"itself or a `gitdir:` file, or remove it (mv {rel} {rel}.link)"
            )
        elif e.kind == "dir":
            out.protect.append(path)
        elif e.kind == "file":
            out.protect.append(path)  # the pointer itself, so it cannot be re-pointed
            target = _gitdir_target(real, rel, e.data)
            if target is None or not (target == real or target.startswith(real + os.sep)):
                continue  # outside the project: commands cannot see it at all
            if not os.path.lexists(target):
                # A command could create it with hooks; watched like a .git, so that is undone.
                out.watch[os.path.relpath(target, real).replace(os.sep, "/")] = Entry("missing", 0, 0)
            elif not _no_links_below(real, target):
                out.problems.append(
                    f"{rel} points (gitdir:) through a symbolic link inside the project, to "
                    f"{os.path.relpath(target, real)}: commands are refused until it points at a real folder"
                )
            elif os.path.isdir(target) and target not in out.protect:
                out.protect.append(target)
    return out


def _watched(s: GitScan, rels: set[str]) -> dict[str, Entry]:
    """The state of `rels` (missing gitdir: targets) in scan `s`'s tree."""
    out = {}
    for rel in rels:
        e = _entry(os.path.join(s.root, rel))
        out[rel] = e if e is not None else Entry("missing", 0, 0)
    return out


def _quarantine(src: str, rel: str, into: Path) -> str:
    """Move `src` out of the project into `into` (unique name); returns where it went."""
    into.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = hashlib.sha256(f"{rel}{time.time_ns()}".encode()).hexdigest()[:8]
    dest = into / f"{stamp}-{name}-{rel.replace('/', '__')}"
    shutil.move(src, dest)
    return str(dest)


def _restore_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _put_back(root: str, rel: str, old: Entry, after: GitScan) -> str | None:
    """Move an original git folder a command moved elsewhere in the project back to `rel`."""
    for other, e in after.entries.items():
        if other != rel and _same(e, old):
            dest = os.path.join(root, rel)
            if os.path.lexists(dest):
                return None
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(os.path.join(root, other), dest)
            del after.entries[other]
            return other
    return None


def _undo(root: str, rel: str, old: Entry | None, now: Entry | None, after: GitScan, into: Path) -> str:
    """Quarantine what the command left at `rel`, then bring back what was there before."""
    path = os.path.join(root, rel)
    action = []
    if now is not None:
        action.append(f"moved to {_quarantine(path, rel, into)}")
    if old is not None and old.kind == "file":
        _restore_file(path, old.data)
        action.append("the original gitdir: file restored")
    elif old is not None and (moved := _put_back(root, rel, old, after)) is not None:
        action.append(f"the original, moved to {moved}, put back")
    return "; ".join(action) or "nothing to undo"


def neutralise(before: GitScan, after: GitScan, quarantine: Path) -> list[GitChange]:
    """Undo what a command did to git entries: anything new or replaced is moved into `quarantine`
    (out of the project), an original that was moved or re-pointed is put back."""
    changes: list[GitChange] = []
    root = before.root
    for rel, now in _watched(after, set(before.watch)).items():
        if now.kind != "missing":
            where = _safe_undo(root, rel, None, now, after, quarantine)
            changes.append(GitChange(rel, "created (a gitdir: target)", where))
    changed = [r for r in before.entries if not _same(after.entries.get(r), before.entries[r])]
    # Originals first, so one the command moved elsewhere goes back rather than into quarantine.
    for rel in sorted(changed):
        now = after.entries.pop(rel, None)
        what = "removed" if now is None else "replaced"
        done = _safe_undo(root, rel, before.entries[rel], now, after, quarantine)
        changes.append(GitChange(rel, what, done))
    for rel, now in sorted(after.entries.items()):
        if rel not in before.entries and rel in after.entries:  # not one put back above
            changes.append(GitChange(rel, "created", _safe_undo(root, rel, None, now, after, quarantine)))
    return changes


def _safe_undo(root: str, rel: str, old: Entry | None, now: Entry | None, after: GitScan, into: Path) -> str:
    try:
        return _undo(root, rel, old, now, after, into)
    except OSError as e:
        return f"could not be undone ({e.strerror or e}); remove {rel} before running git in this project"
