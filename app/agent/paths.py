"""Every path a tool touches is resolved here, inside the project root, or refused.

Refused: `..` components, absolute paths outside the root, symlinks whose target lies outside,
hard-linked files (their other name may lie outside), anything under a `.git` directory (in any
case or spelling a case-insensitive or Unicode-folding disk treats as `.git`), and device files,
FIFOs and sockets. Files are opened without following a final symlink and the opened descriptor
is checked again, so a path swapped between check and use is caught.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["PathError", "ProjectRoot", "Resolved"]

# Code points HFS+/APFS ignore in names, so ".g\u200cit" is ".git" there (git's CVE-2014-9390).
_IGNORABLE = dict.fromkeys(
    [0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0xFEFF, *range(0x202A, 0x202F), *range(0x206A, 0x2070)]
)


class PathError(Exception):
    """A path the agent may not use; the message is written for the model."""


def is_git_name(name: str) -> bool:
    """Whether a path component names a `.git` directory on some disk (case, Unicode, 8.3 tricks)."""
    n = unicodedata.normalize("NFC", name.translate(_IGNORABLE)).casefold().rstrip(" .")
    return n in (".git", "git~1")


@dataclass(frozen=True)
class Resolved:
    """A path inside the project: `rel` (POSIX, from the root; "." for the root) and `real`."""

    rel: str
    real: Path

    def exists(self) -> bool:
        return os.path.lexists(self.real)


class ProjectRoot:
    """The directory the agent works in; resolves and opens paths inside it only."""

    def __init__(self, root: str | os.PathLike[str]):
        real = Path(os.path.realpath(root))
        if not real.is_dir():
            raise PathError(f"project directory {str(root)!r} does not exist or is not a directory")
        self.path = real
        st = real.stat()
        self._id = (st.st_dev, st.st_ino)
        self.case_insensitive = _case_insensitive(real)

    # -- resolution -------------------------------------------------------------------------
    def resolve(self, path: object, *, default: str | None = None) -> Resolved:
        """The project path `path` names, or PathError saying why it is refused."""
        if path is None or path == "":
            if default is None:
                raise PathError("a path is required")
            path = default
        if not isinstance(path, str):
            raise PathError(f"path must be a string (got {type(path).__name__})")
        if "\0" in path:
            raise PathError("path contains a NUL character")
        p = PurePosixPath(path)
        if p.is_absolute():
            inside = self._lexical_rel(p)
            if inside is None:
                raise PathError(f"{path!r} is outside the project; use a path relative to the project root")
            parts = list(inside)
        else:
            parts = list(p.parts)
        if ".." in parts:
            raise PathError(f"{path!r}: '..' is not allowed; use a path inside the project root")
        parts = [x for x in parts if x not in (".", "")]
        for x in parts:
            if is_git_name(x):
                raise PathError(f"{path!r}: the .git directory is off limits")
        if self.case_insensitive:
            parts = self._on_disk_case(parts)
        full = self.path.joinpath(*parts)
        real = Path(os.path.realpath(full))
        rel_parts = self._inside(real)
        if rel_parts is None:
            raise PathError(f"{path!r} resolves outside the project (through a symlink)")
        for x in rel_parts:
            if is_git_name(x):
                raise PathError(f"{path!r} resolves into the .git directory, which is off limits")
        rel = "/".join(rel_parts) or "."
        return Resolved(rel, real)

    def _lexical_rel(self, p: PurePosixPath) -> tuple[str, ...] | None:
        """The parts of absolute `p` below the root (also via its realpath), else None."""
        try:
            return p.relative_to(PurePosixPath(self.path)).parts
        except ValueError:
            pass
        # e.g. /tmp/proj/x when the root's real path is /private/tmp/proj, or another case
        return self._inside(Path(os.path.realpath(p)))

    def _inside(self, real: Path) -> tuple[str, ...] | None:
        """The parts of a real path below the root, comparing directories by identity too."""
        try:
            return real.relative_to(self.path).parts
        except ValueError:
            pass
        # On case-insensitive disks the same directory can be spelled differently.
        parts: list[str] = []
        cur = real
        while True:
            try:
                st = cur.stat()
                if (st.st_dev, st.st_ino) == self._id:
                    return tuple(reversed(parts))
            except OSError:
                pass
            if cur.parent == cur:
                return None
            parts.append(cur.name)
            cur = cur.parent

    def _on_disk_case(self, parts: list[str]) -> list[str]:
        """Rewrite components to their on-disk spelling so one file has one name."""
        out: list[str] = []
        cur = self.path
        for i, x in enumerate(parts):
            try:
                names = os.listdir(cur)
            except OSError:
                return out + parts[i:]
            if x not in names:
                fold = unicodedata.normalize("NFC", x).casefold()
                match = [n for n in names if unicodedata.normalize("NFC", n).casefold() == fold]
                if len(match) == 1:
                    x = match[0]
            out.append(x)
            cur = cur / x
        return out

    def rel(self, real: str | os.PathLike[str]) -> str:
        """The POSIX path of `real` relative to the root."""
        r = Path(real).relative_to(self.path).as_posix()
        return r or "."

    # -- checked access -----------------------------------------------------------------------
    def check_file(self, r: Resolved, *, must_exist: bool = True) -> os.stat_result | None:
        """lstat of a file the tools may read or replace; PathError for anything else."""
        try:
            st = os.lstat(r.real)
        except FileNotFoundError:
            if must_exist:
                raise PathError(f"{r.rel}: no such file") from None
            return None
        except OSError as e:
            raise PathError(f"{r.rel}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise PathError(f"{r.rel} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{r.rel} is not a regular file (device, FIFO or socket); refused")
        if st.st_nlink > 1:
            raise PathError(
                f"{r.rel} is hard-linked ({st.st_nlink} names); another name may lie outside "
                "the project, so it is refused"
            )
        return st

    def read_bytes(self, r: Resolved, limit: int | None = None) -> bytes:
        """The file's bytes (at most `limit`), opened safely."""
        self.check_file(r)
        fd = self._open(r, os.O_RDONLY)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read() if limit is None else f.read(limit)
        finally:
            os.close(fd)

    def write_bytes(self, r: Resolved, data: bytes) -> bool:
        """Create or overwrite the file with `data`; True when it was created."""
        st = self.check_file(r, must_exist=False)
        if st is None:
            parent = r.real.parent
            self._make_dirs(parent, r.rel)
            try:
                fd = self._open(r, os.O_WRONLY | os.O_CREAT | os.O_EXCL, created=True)
            except FileExistsError:
                raise PathError(f"{r.rel} appeared while writing; try again") from None
            created = True
        else:
            fd = self._open(r, os.O_WRONLY)
            created = False
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        return created

    def _make_dirs(self, parent: Path, rel: str) -> None:
        missing: list[Path] = []
        cur = parent
        while not os.path.lexists(cur):
            missing.append(cur)
            cur = cur.parent
        if not cur.is_dir() or os.path.islink(cur):
            raise PathError(f"{rel}: a parent path is not a directory")
        for d in reversed(missing):
            if self._inside(Path(os.path.realpath(d.parent))) is None:
                raise PathError(f"{rel} resolves outside the project")
            os.mkdir(d)

    def _open(self, r: Resolved, flags: int, created: bool = False) -> int:
        flags |= os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(r.real, flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathError(f"{r.rel} became a symlink; refused") from None
            raise PathError(f"{r.rel}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            where = _fd_path(fd)
            ok = stat.S_ISREG(st.st_mode) and st.st_nlink <= 1
            if ok and where is not None:
                ok = self._inside(Path(where)) is not None
            if not ok:
                raise PathError(f"{r.rel} changed while it was being opened; refused")
        except BaseException:
            os.close(fd)
            if created:
                try:
                    os.unlink(r.real)
                except OSError:
                    pass
            raise
        return fd


def _fd_path(fd: int) -> str | None:
    """The path an open descriptor refers to (Linux /proc, macOS F_GETPATH), or None."""
    if sys.platform.startswith("linux"):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
    if sys.platform == "darwin":
        import fcntl

        try:
            buf = fcntl.fcntl(fd, 50, b"\0" * 1024)  # F_GETPATH
            return buf.split(b"\0", 1)[0].decode(errors="surrogateescape")
        except OSError:
            return None
    return None


def _case_insensitive(path: Path) -> bool:
    """Whether names differing only in case refer to one entry on this disk."""
    name = path.name
    swapped = name.swapcase()
    if swapped == name:
        return sys.platform == "darwin"  # macOS disks are case-insensitive unless formatted otherwise
    try:
        return os.path.samefile(path, path.with_name(swapped))
    except OSError:
        return False
