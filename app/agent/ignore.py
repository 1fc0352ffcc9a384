""".gitignore matching and a tree walk that respects it (no git, no extra dependency needed).

Semantics follow gitignore(5): `#` comments, `!` negation, trailing `/` for directories only,
patterns with an inner `/` anchored to their file's directory, `*`, `?`, `[...]` and `**`. The last
matching pattern wins, deeper files over shallower ones, and an ignored directory is not entered.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SKIP_DIRS", "IgnoreRules", "walk"]

# Never listed or searched unless asked for by name: VCS internals, dependency and cache trees.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".DS_Store",
        ".idea",
        ".gradle",
    }
)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool  # matched against the path from `base`; otherwise against the name


def _translate(pat: str) -> str:
    """A regex for one glob pattern, `/` never matched by `*` or `?`."""
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if pat.startswith("**", i):
                before_ok = i == 0 or pat[i - 1] == "/"
                if before_ok and pat.startswith("**/", i):
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if before_ok and i + 2 == n:
                    out.append(".*")
                    i += 2
                    continue
                out.append("[^/]*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pat[j] in "!^":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pat[i + 1 : j]
                neg = body[:1] in ("!", "^")
                body = body[1:] if neg else body
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{'^' if neg else ''}{body}]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pat[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_lines(lines: list[str]) -> list[_Pattern]:
    """Patterns of one ignore file, in order."""
    pats: list[_Pattern] = []
    for line in lines:
        line = line.rstrip("\n").rstrip("\r")
        # Trailing spaces are dropped unless escaped with a backslash.
        while line.endswith(" ") and not line.endswith("\\ "):
            line = line[:-1]
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        try:
            regex = re.compile(_translate(line) + r"\Z", re.DOTALL)
        except re.error:
            continue
        pats.append(_Pattern(regex, negate, dir_only, anchored))
    return pats


class IgnoreRules:
    """The .gitignore files that apply under a root, loaded lazily per directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._cache: dict[str, list[_Pattern]] = {}
        # The repository's own exclude file applies to the whole tree (read only, never written).
        self._global = self._read(self.root / ".git" / "info" / "exclude")

    @staticmethod
    def _read(path: Path) -> list[_Pattern]:
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
                return parse_lines(path.read_text(errors="replace").splitlines())
        except OSError:
            pass
        return []

    def _patterns(self, rel_dir: str) -> list[_Pattern]:
        if rel_dir not in self._cache:
            d = self.root / rel_dir if rel_dir else self.root
            self._cache[rel_dir] = self._read(d / ".gitignore")
        return self._cache[rel_dir]

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether `rel` (POSIX, from the root) is ignored; its parents are not checked."""
        parts = rel.split("/")
        name = parts[-1]
        result = None
        # Shallow to deep: the root's .gitignore first, the closest one last (it wins).
        levels: list[tuple[str, list[_Pattern]]] = [("", self._global)]
        for k in range(len(parts)):
            base = "/".join(parts[:k])
            levels.append((base, self._patterns(base)))
        for base, pats in levels:
            sub = rel[len(base) + 1 :] if base else rel
            for p in pats:
                if p.dir_only and not is_dir:
                    continue
                target = sub if p.anchored else name
                if p.regex.match(target):
                    result = not p.negate
        return bool(result)


@dataclass(frozen=True)
class Entry:
    rel: str
    is_dir: bool
    is_link: bool
    size: int
    depth: int


def walk(
    root: str | os.PathLike[str],
    start: str = ".",
    *,
    rules: IgnoreRules | None = None,
    max_depth: int | None = None,
    skip_dirs: frozenset[str] = SKIP_DIRS,
    too_many: int | None = None,
    collapsed: list[tuple[str, str]] | None = None,
) -> Iterator[Entry]:
    """Entries under `start` (relative to root) in sorted, depth-first order.

    Ignored paths and `skip_dirs` are left out; symlinks are reported but never followed.
    Directories with more than `too_many` entries are yielded but not entered, and recorded
    with a reason in `collapsed`.
    """
    root = Path(root)
    rules = rules or IgnoreRules(root)
    start = start.strip("/") or "."
    base = root if start == "." else root / start

    def rec(d: Path, rel_dir: str, depth: int) -> Iterator[Entry]:
        try:
            with os.scandir(d) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for e in items:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_link = stat.S_ISLNK(st.st_mode)
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and e.name in skip_dirs:
                if collapsed is not None and e.name != ".git":
                    collapsed.append((rel + "/", "skipped by default"))
                continue
            if rules.ignored(rel, is_dir):
                continue
            yield Entry(rel, is_dir, is_link, 0 if is_dir else st.st_size, depth)
            if is_dir and (max_depth is None or depth < max_depth):
                if too_many is not None:
                    try:
                        count = sum(1 for _ in os.scandir(e.path))
                    except OSError:
                        count = 0
                    if count > too_many:
                        if collapsed is not None:
                            collapsed.append((rel + "/", f"{count} entries"))
                        continue
                yield from rec(Path(e.path), rel, depth + 1)

    yield from rec(base, "" if start == "." else start, 1)
