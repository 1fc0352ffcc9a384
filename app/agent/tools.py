"""The agent's tools: list_dir, read_file, search, edit_file, write_file, run_command.

Each returns text for the model. Problems the model can fix (a bad path, no match, a stale file)
raise ToolError with a message written for it. Mutating tools are split in two: `prepare_*`
checks everything and previews the change (for the approval card), `apply` performs it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ignore import SKIP_DIRS, IgnoreRules, walk
from .paths import PathError, ProjectRoot, Resolved
from .sandbox import CommandResult, GitRefused, Sandbox, run_command
from .watch import FileTracker

__all__ = ["TOOLS", "TOOL_NAMES", "Limits", "ToolError", "ToolPlan", "Toolbox"]


def _fn(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


TOOLS: list[dict[str, Any]] = [
    _fn(
        "list_dir",
        "List files and directories under a project directory (paths relative to the project "
        "root; directories end with '/'). Respects .gitignore; skips binary files and "
        "dependency/cache trees.",
        {
            "path": {
                "type": "string",
                "description": "Directory, relative to the project root. Default: the root.",
            },
            "depth": {"type": "integer", "description": "How many levels to descend (1-6, default 2)."},
        },
        [],
    ),
    _fn(
        "read_file",
        "Read a text file. Lines are numbered (number, then a tab, then the line). Read large files "
        "in ranges.",
        {
            "path": {"type": "string", "description": "File, relative to the project root."},
            "start_line": {"type": "integer", "description": "First line to show (1-based, default 1)."},
            "end_line": {"type": "integer", "description": "Last line to show (inclusive)."},
        },
        ["path"],
    ),
    _fn(
        "search",
        "Search file contents with a regular expression. Returns matching lines as "
        "path:line: text. Respects .gitignore.",
        {
            "pattern": {"type": "string", "description": "Regular expression."},
            "path": {
                "type": "string",
                "description": "Directory or file to search. Default: the whole project.",
            },
            "glob": {
                "type": "string",
                "description": "Only files whose name matches this glob, e.g. '*.py'.",
            },
            "ignore_case": {"type": "boolean", "description": "Case-insensitive match."},
        },
        ["pattern"],
    ),
    _fn(
        "edit_file",
        "Replace an exact, unique piece of a file's text. old_string must match the file exactly "
        "(whitespace and indentation included) and occur exactly once, unless replace_all is true. "
        "Read the file first.",
        {
            "path": {"type": "string", "description": "File, relative to the project root."},
            "old_string": {"type": "string", "description": "The exact text to replace."},
            "new_string": {"type": "string", "description": "The text to put in its place."},
            "replace_all": {"type": "boolean", "description": "Replace every occurrence."},
        },
        ["path", "old_string", "new_string"],
    ),
    _fn(
        "write_file",
        "Create a file, or overwrite one you have read, with the given content. Parent "
        "directories are created.",
        {
            "path": {"type": "string", "description": "File, relative to the project root."},
            "content": {"type": "string", "description": "The complete new content."},
        },
        ["path", "content"],
    ),
    _fn(
        "run_command",
        "Run a shell command (/bin/sh) in the project root and return its exit code and output "
        "(stdout and stderr together). No input is available; interactive programs fail.",
        {
            "command": {"type": "string", "description": "The command line."},
            "timeout": {"type": "integer", "description": "Seconds before it is killed (default 120)."},
        },
        ["command"],
    ),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]

_BINARY_EXT = frozenset(
    ".png .jpg .jpeg .gif .bmp .ico .icns .webp .tiff .psd .pdf .zip .gz .tgz .bz2 .xz .zst .7z "
    ".rar .jar .war .whl .egg .so .dylib .dll .a .o .obj .lib .exe .bin .dat .class .pyc .pyo "
    ".pyd .wasm .mp3 .mp4 .mov .avi .mkv .wav .flac .ogg .ttf .otf .woff .woff2 .eot .sqlite "
    ".db .npy .npz .pt .pth .ckpt .safetensors .gguf .onnx .h5 .pkl .parquet .DS_Store".split()
)


class ToolError(Exception):
    """A problem the model can fix; the message is its tool result."""


@dataclass
class Limits:
    """Caps on what a tool reads, returns or runs."""

    list_entries: int = 400
    dir_expand: int = 1000  # a directory with more entries is shown but not expanded
    read_bytes: int = 20 * 1024 * 1024  # larger files are refused
    read_lines: int = 2000
    read_chars: int = 100_000
    line_chars: int = 2000
    search_results: int = 200
    search_line_chars: int = 300
    search_file_bytes: int = 10 * 1024 * 1024
    write_bytes: int = 5 * 1024 * 1024
    command_timeout: float = 120.0
    max_command_timeout: float = 600.0
    output_chars: int = 30_000


@dataclass
class ToolPlan:
    """A checked, previewed change waiting for approval."""

    tool: str
    summary: str
    paths: list[str] = field(default_factory=list)
    diff: str | None = None
    command: str | None = None
    timeout: float = 0.0
    target: Resolved | None = None
    old: bytes | None = None
    new: bytes | None = None


def is_binary(data: bytes) -> bool:
    """NUL bytes, or mostly undecodable, in the first 8 KB."""
    head = data[:8192]
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 4:  # a multi-byte character cut at the sample's end
            return False
    bad = sum(1 for b in head if b < 9 or 13 < b < 32)
    return bad > len(head) // 10


def _decode(data: bytes) -> tuple[str, str | None]:
    """Text of a file and a note when it is not clean UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), (
            "the file is not valid UTF-8; undecodable bytes are shown as U+FFFD and edit_file "
            "cannot change it"
        )


_KIND_NAMES: dict[Any, str] = {
    int: "an integer",
    str: "a string",
    bool: "true or false",
    (int, float): "a number",
}


def _arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    v = args.get(key, default)
    if v is None:
        return default
    if kind is int and isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if kind is bool and isinstance(v, str) and v.lower() in ("true", "false"):
        v = v.lower() == "true"
    if isinstance(v, bool) and kind is int:
        raise ToolError(f"parameter {key!r} must be an integer")
    if not isinstance(v, kind):
        want = _KIND_NAMES.get(kind, "value")
        raise ToolError(f"parameter {key!r} must be {want} (got {type(v).__name__} {v!r:.40})")
    return v


class Toolbox:
    """The tools, bound to one project root, file tracker and sandbox."""

    def __init__(
        self,
        root: ProjectRoot,
        tracker: FileTracker,
        sandbox: Sandbox,
        *,
        limits: Limits | None = None,
        allow_network: bool = False,
        use_ripgrep: bool = True,
        env_allow: tuple[str, ...] = (),
        hidden: tuple[str, ...] = (),
        quarantine: Path | None = None,
    ) -> None:
        self.root = root
        self.quarantine = quarantine  # where git folders a command made are moved (not visible to it)
        self.env_allow = env_allow  # extra environment names commands get
        self.hidden = hidden  # extra paths the sandbox hides (the agent's data dir)
        self.tracker = tracker
        self.sandbox = sandbox
        self.limits = limits or Limits()
        self.allow_network = allow_network
        self.rg = shutil.which("rg") if use_ripgrep else None

    def _resolve(self, path: Any, default: str | None = None) -> Resolved:
        try:
            return self.root.resolve(path, default=default)
        except PathError as e:
            raise ToolError(str(e)) from None

    def _read(self, r: Resolved, limit: int | None = None) -> bytes:
        try:
            return self.root.read_bytes(r, limit)
        except PathError as e:
            raise ToolError(str(e)) from None
        except OSError as e:
            raise ToolError(f"{r.rel}: {e.strerror or e}") from None

    def current(self, rel: str) -> bytes | None:
        """A file's bytes now, or None if it is gone or not readable (for staleness checks)."""
        try:
            r = self.root.resolve(rel)
            if not os.path.lexists(r.real):
                return None
            return self.root.read_bytes(r, self.limits.read_bytes)
        except (PathError, OSError):
            return None

    # -- read-only ---------------------------------------------------------------------------------
    def list_dir(self, args: dict[str, Any]) -> str:
        r = self._resolve(args.get("path"), default=".")
        depth = max(1, min(_arg(args, "depth", int, 2), 6))
        if not os.path.isdir(r.real):
            raise ToolError(f"{r.rel} is not a directory" if r.exists() else f"{r.rel}: no such directory")
        rules = IgnoreRules(self.root.path)
        collapsed: list[tuple[str, str]] = []
        lines: list[str] = []
        binary = 0
        more = 0
        lim = self.limits
        for e in walk(
            self.root.path, r.rel, rules=rules, max_depth=depth, too_many=lim.dir_expand, collapsed=collapsed
        ):
            if not e.is_dir and Path(e.rel).suffix.lower() in _BINARY_EXT:
                binary += 1
                continue
            if len(lines) >= lim.list_entries:
                more += 1
                continue
            if e.is_link:
                try:
                    target = os.readlink(self.root.path / e.rel)
                except OSError:
                    target = "?"
                lines.append(f"{show_name(e.rel)} -> {show_name(target)}")
            elif e.is_dir:
                lines.append(show_name(e.rel) + "/")
            else:
                lines.append(f"{show_name(e.rel)}  ({_size(e.size)})")
        head = f"{r.rel}/ (depth {depth})" if r.rel != "." else f"project root (depth {depth})"
        notes = []
        if more:
            notes.append(f"{more} more entries not shown; list a subdirectory")
        if binary:
            notes.append(f"{binary} binary file{'s' if binary > 1 else ''} not shown")
        for rel, why in collapsed[:20]:
            notes.append(f"{rel} not expanded ({why})")
        body = "\n".join(lines) if lines else "(empty)"
        return head + ":\n" + body + ("\n[" + "; ".join(notes) + "]" if notes else "")

    def read_file(self, args: dict[str, Any]) -> str:
        r = self._resolve(args.get("path"))
        try:
            st = self.root.check_file(r)
        except PathError as e:
            raise ToolError(str(e)) from None
        assert st is not None
        lim = self.limits
        if st.st_size > lim.read_bytes:
            raise ToolError(
                f"{r.rel} is {_size(st.st_size)}, over the {_size(lim.read_bytes)} read limit; "
                "use search, or run_command with head/sed for parts of it"
            )
        data = self._read(r)
        if is_binary(data):
            self.tracker.saw(r.rel, data)
            return f"{r.rel} is a binary file ({_size(len(data))}); its contents are not shown."
        text, note = _decode(data)
        self.tracker.saw(r.rel, data)
        lines = text.splitlines()
        n = len(lines)
        start = _arg(args, "start_line", int, 1)
        end = _arg(args, "end_line", int, None)
        if start < 1:
            start = 1
        if n == 0:
            return f"{r.rel} is empty."
        if start > n:
            raise ToolError(f"{r.rel} has {n} lines; start_line {start} is past the end")
        last = n if end is None else max(start, min(end, n))
        last = min(last, start + lim.read_lines - 1)
        out: list[str] = []
        used = 0
        shown_to = start - 1
        for i in range(start, last + 1):
            line = lines[i - 1]
            if len(line) > lim.line_chars:
                line = line[: lim.line_chars] + f" [... {len(line) - lim.line_chars} more characters]"
            row = f"{i:>6}\t{line}"
            if used + len(row) > lim.read_chars and out:
                break
            out.append(row)
            used += len(row) + 1
            shown_to = i
        header = []
        if note:
            header.append(f"[note: {note}]")
        if start > 1 or shown_to < n:
            header.append(f"[lines {start}-{shown_to} of {n}]")
        footer = ""
        if shown_to < n and (end is None or shown_to < min(end, n)):
            footer = f"\n[... more lines; continue with start_line={shown_to + 1}]"
        return "\n".join([*header, *out]) + footer

    def search(self, args: dict[str, Any]) -> str:
        pattern = _arg(args, "pattern", str)
        if not pattern:
            raise ToolError("pattern is required")
        r = self._resolve(args.get("path"), default=".")
        if not r.exists():
            raise ToolError(f"{r.rel}: no such file or directory")
        glob = _arg(args, "glob", str, None)
        icase = _arg(args, "ignore_case", bool, False)
        if self.rg:
            hits, total = self._search_rg(pattern, r, glob, icase)
        else:
            try:
                rx = re.compile(pattern, re.IGNORECASE if icase else 0)
            except re.error as e:
                raise ToolError(f"invalid regular expression {pattern!r}: {e}") from None
            hits, total = self._search_py(rx, r, glob)
        if not hits:
            return f"No matches for {pattern!r}" + (f" in {r.rel}" if r.rel != "." else "") + "."
        lim = self.limits
        rows = []
        for path, ln, text in hits[: lim.search_results]:
            text = text.rstrip("\r\n")
            if len(text) > lim.search_line_chars:
                text = text[: lim.search_line_chars] + " [...]"
            rows.append(f"{show_name(path)}:{ln}: {text}")
        if total > len(rows):
            rows.append(f"[{total - len(rows)} more matches not shown; narrow the search]")
        return "\n".join(rows)

    def _search_rg(
        self, pattern: str, r: Resolved, glob: str | None, icase: bool
    ) -> tuple[list[tuple[str, int, str]], int]:
        cmd = [
            self.rg or "rg",
            "--json",
            "--no-config",
            "--no-require-git",
            "--hidden",
            "--max-filesize",
            str(self.limits.search_file_bytes),
            "--max-columns",
            "2000",
        ]
        if glob:
            cmd += ["-g", glob]
        for d in sorted(SKIP_DIRS):  # later globs win: these exclusions override the filter
            cmd += ["-g", f"!{d}/"]
        if icase:
            cmd.append("-i")
        cmd += ["-e", pattern, "--", r.rel]
        try:
            p = subprocess.run(
                cmd,
                cwd=self.root.path,
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "RIPGREP_CONFIG_PATH": ""},
            )
        except subprocess.TimeoutExpired:
            raise ToolError("search took over 60 seconds; narrow it with path or glob") from None
        if p.returncode not in (0, 1):
            msg = p.stderr.decode(errors="replace").strip().splitlines()
            raise ToolError("search failed: " + (" ".join(msg[-3:]) or f"exit {p.returncode}"))
        hits: list[tuple[str, int, str]] = []
        total = 0
        checked: dict[str, bool] = {}
        for line in p.stdout.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") != "match":
                continue
            d = ev["data"]
            path = d["path"].get("text")
            if path is None:
                continue
            path = path[2:] if path.startswith("./") else path
            if path not in checked:  # hard links may be shared with files outside
                checked[path] = self._searchable(path)
            if not checked[path]:
                continue
            total += 1
            if len(hits) < self.limits.search_results:
                text = d["lines"].get("text") or ""
                hits.append((path, int(d["line_number"]), text))
        return hits, total

    def _searchable(self, rel: str) -> bool:
        try:
            r = self.root.resolve(rel)
            self.root.check_file(r)
            return True
        except PathError:
            return False

    def _search_py(
        self, rx: re.Pattern[str], r: Resolved, glob: str | None
    ) -> tuple[list[tuple[str, int, str]], int]:
        import fnmatch

        if os.path.isdir(r.real):
            files = [e.rel for e in walk(self.root.path, r.rel) if not e.is_dir and not e.is_link]
        else:
            files = [r.rel]
        hits: list[tuple[str, int, str]] = []
        total = 0
        for rel in files:
            if glob and not (fnmatch.fnmatch(Path(rel).name, glob) or fnmatch.fnmatch(rel, glob)):
                continue
            try:
                fr = self.root.resolve(rel)
                st = self.root.check_file(fr)
                if st is None or st.st_size > self.limits.search_file_bytes:
                    continue
                data = self.root.read_bytes(fr)
            except (PathError, OSError):
                continue
            if is_binary(data):
                continue
            text = data.decode("utf-8", errors="replace")
            for i, line in enumerate(text.splitlines(), 1):
                if rx.search(line):
                    total += 1
                    if len(hits) < self.limits.search_results:
                        hits.append((rel, i, line))
        return hits, total

    # -- mutating: prepare, then apply ----------------------------------------------------------------
    def prepare(self, name: str, args: dict[str, Any]) -> ToolPlan:
        if name == "edit_file":
            return self._prepare_edit(args)
        if name == "write_file":
            return self._prepare_write(args)
        if name == "run_command":
            return self._prepare_command(args)
        raise ToolError(f"{name} is not a mutating tool")

    def _fresh(self, r: Resolved) -> bytes | None:
        """Current bytes of an existing file the agent has read and that has not changed since."""
        try:
            st = self.root.check_file(r, must_exist=False)
        except PathError as e:
            raise ToolError(str(e)) from None
        if st is None:
            return None
        if st.st_size > self.limits.read_bytes:
            raise ToolError(f"{r.rel} is too large to edit here; use run_command")
        data = self._read(r)
        why = self.tracker.stale(r.rel, data)
        if why:
            raise ToolError(why)
        return data

    def _prepare_edit(self, args: dict[str, Any]) -> ToolPlan:
        r = self._resolve(args.get("path"))
        old_s = _arg(args, "old_string", str)
        new_s = _arg(args, "new_string", str)
        replace_all = _arg(args, "replace_all", bool, False)
        if old_s is None or new_s is None:
            raise ToolError("edit_file needs old_string and new_string")
        if old_s == "":
            raise ToolError("old_string is empty; use write_file to create or replace a whole file")
        if old_s == new_s:
            raise ToolError("old_string and new_string are the same; nothing to change")
        if not r.exists():
            raise ToolError(f"{r.rel}: no such file; use write_file to create it")
        data = self._fresh(r)
        assert data is not None
        if is_binary(data):
            raise ToolError(f"{r.rel} is a binary file; edit_file only changes text")
        bom = data.startswith(b"\xef\xbb\xbf")
        try:
            text = data[3 if bom else 0 :].decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(
                f"{r.rel} is not valid UTF-8, so edit_file cannot change it exactly; "
                "use write_file or run_command"
            ) from None
        o, n = old_s, new_s
        count = text.count(o)
        if count == 0 and "\r\n" in text and "\r\n" not in o:
            # The file uses CRLF; the model writes LF.
            o2, n2 = o.replace("\n", "\r\n"), n.replace("\n", "\r\n")
            if text.count(o2):
                o, n, count = o2, n2, text.count(o2)
        if count == 0:
            raise ToolError(_no_match(r.rel, text, old_s))
        if count > 1 and not replace_all:
            lines = _match_lines(text, o)
            where = ", ".join(map(str, lines[:10])) + (" …" if len(lines) > 10 else "")
            raise ToolError(
                f"old_string occurs {count} times in {r.rel} (at lines {where}); include more "
                "surrounding lines so it matches exactly once, or set replace_all to true"
            )
        new_text = text.replace(o, n) if replace_all else text.replace(o, n, 1)
        new = (b"\xef\xbb\xbf" if bom else b"") + new_text.encode("utf-8")
        first = text[: text.find(o)].count("\n") + 1
        times = f"{count} occurrences" if replace_all and count > 1 else f"line {first}"
        return ToolPlan(
            "edit_file",
            f"edit {r.rel} ({times})",
            [r.rel],
            diff=_unified(r.rel, data, new),
            target=r,
            old=data,
            new=new,
        )

    def _prepare_write(self, args: dict[str, Any]) -> ToolPlan:
        r = self._resolve(args.get("path"))
        content = _arg(args, "content", str)
        if content is None:
            raise ToolError("write_file needs content")
        new = content.encode("utf-8")
        if len(new) > self.limits.write_bytes:
            raise ToolError(f"content is {_size(len(new))}; the limit is {_size(self.limits.write_bytes)}")
        if os.path.isdir(r.real):
            raise ToolError(f"{r.rel} is a directory")
        old = self._fresh(r)
        verb = "create" if old is None else "overwrite"
        return ToolPlan(
            "write_file",
            f"{verb} {r.rel}",
            [r.rel],
            diff=_unified(r.rel, old, new),
            target=r,
            old=old,
            new=new,
        )

    def _prepare_command(self, args: dict[str, Any]) -> ToolPlan:
        cmd = _arg(args, "command", str)
        if not cmd or not cmd.strip():
            raise ToolError("command is empty")
        lim = self.limits
        t = _arg(args, "timeout", (int, float), lim.command_timeout)
        t = float(max(1, min(t, lim.max_command_timeout)))
        return ToolPlan("run_command", f"run: {cmd}", command=cmd, timeout=t)

    def apply(self, plan: ToolPlan, cancel: threading.Event | None = None) -> tuple[str, dict[str, Any]]:
        """Perform a prepared change; returns the result text and structured details."""
        if plan.tool == "run_command":
            assert plan.command is not None
            try:
                res = run_command(
                    plan.command,
                    self.root.path,
                    sandbox=self.sandbox,
                    timeout=plan.timeout,
                    output_cap=self.limits.output_chars,
                    allow_network=self.allow_network,
                    cancel=cancel,
                    env_allow=self.env_allow,
                    hidden=self.hidden,
                    quarantine=self.quarantine,
                )
            except GitRefused as e:
                raise ToolError(str(e)) from None
            return _command_text(res, plan.timeout), {
                "exit_code": res.exit_code,
                "timed_out": res.timed_out,
                "cancelled": res.cancelled,
                "elapsed": round(res.elapsed, 3),
                "output_chars": res.total_chars,
                "git_changes": [g.describe() for g in res.git_changes],
            }
        r = plan.target
        assert r is not None and plan.new is not None
        # The user may have edited the file while the approval card was open.
        now = self.current(r.rel) if r.exists() else None
        if now != plan.old:
            raise ToolError(f"{r.rel} changed while waiting for approval; read it again")
        try:
            created = self.root.write_bytes(r, plan.new)
        except PathError as e:
            raise ToolError(str(e)) from None
        except OSError as e:
            raise ToolError(f"{r.rel}: {e.strerror or e}") from None
        self.tracker.saw(r.rel, plan.new)
        if plan.tool == "edit_file":
            return f"Edited {r.rel}.\n" + _snippet(plan.old or b"", plan.new), {"path": r.rel}
        n = plan.new.count(b"\n") + (0 if plan.new.endswith(b"\n") or not plan.new else 1)
        verb = "Created" if created else "Overwrote"
        return f"{verb} {r.rel} ({n} lines, {_size(len(plan.new))}).", {
            "path": r.rel,
            "created": created,
        }


# -- helpers ---------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def show_name(name: str) -> str:
    """A path as one line of tool output: a name with a newline or another control character is
    shown quoted and escaped ("a\\nb"), so it cannot fake lines of the listing."""
    return json.dumps(name, ensure_ascii=False) if _CONTROL.search(name) else name


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _match_lines(text: str, s: str) -> list[int]:
    out, i = [], text.find(s)
    while i >= 0:
        out.append(text.count("\n", 0, i) + 1)
        i = text.find(s, i + 1)
    return out


def _no_match(rel: str, text: str, old: str) -> str:
    msg = (
        f"old_string was not found in {rel}. It must match the file exactly, including "
        "whitespace and indentation; read the file again and copy the text without line numbers"
    )
    squash = re.sub(r"\s+", " ", old).strip()
    if squash:
        flat = re.sub(r"\s+", " ", text)
        if squash in flat:
            msg += " (a match ignoring whitespace exists: check spaces, tabs and line breaks)"
    if re.match(r"\s*\d+\t", old):
        msg += " (old_string seems to include read_file's line numbers; leave them out)"
    return msg


def _unified(rel: str, old: bytes | None, new: bytes) -> str:
    a = (old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    b = new.decode("utf-8", errors="replace").splitlines(keepends=True)
    fa = f"a/{rel}" if old is not None else "/dev/null"
    lines = difflib.unified_diff(a, b, fa, f"b/{rel}", n=3)
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n" for x in lines)


def _snippet(old: bytes, new: bytes, context: int = 3) -> str:
    """The changed region of the new text with line numbers, so the model sees the result."""
    a = old.decode("utf-8", errors="replace").splitlines()
    b = new.decode("utf-8", errors="replace").splitlines()
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    ops = [op for op in sm.get_opcodes() if op[0] != "equal"]
    if not ops:
        return ""
    lo = max(0, ops[0][3] - context)
    hi = min(len(b), ops[-1][4] + context)
    if hi - lo > 60:
        hi = lo + 60
    rows = [f"{i + 1:>6}\t{b[i]}" for i in range(lo, hi)]
    return "\n".join(rows)


def _command_text(res: CommandResult, timeout: float) -> str:
    if res.timed_out:
        head = f"Timed out after {timeout:g}s; the command and everything it started were killed."
    elif res.cancelled:
        head = "Stopped by the user; the command and everything it started were killed."
    else:
        head = f"Exit code: {res.exit_code}"
    out = res.output if res.output.strip() else "(no output)"
    if res.truncated:
        head += f" (output was {res.total_chars} bytes; the middle was cut)"
    if res.git_changes:
        out += (
            "\n\n[Locus undid changes to git folders: git runs hooks and config from them, so commands "
            "may not create, replace or re-point one. "
            + "; ".join(g.describe() for g in res.git_changes)
            + ". Ask the user to run git init or git clone themselves if the task needs it.]"
        )
    return head + "\n" + out


def file_kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "special"
