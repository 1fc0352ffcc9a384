"""The live tree: what the agent last saw of each file, and a watchdog observer on the project.

`FileTracker` keeps a hash of the bytes the agent last read or wrote per file. An edit to a file
whose bytes differ from that (changed outside, or by a command) is refused until it is read again,
and the model is told which files it has read changed since.

`TreeWatcher` is a watchdog observer: it collects the paths that change on disk, tagging those
that change while the agent's own tool runs, so the UI can refresh and the loop can tell what
changed outside the agent.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from .ignore import SKIP_DIRS

__all__ = ["FileTracker", "TreeWatcher"]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileTracker:
    """Hashes of what the agent last saw of each file (read or written), by project path."""

    def __init__(self, state: dict[str, Any] | None = None):
        self._lock = threading.Lock()
        self.seen: dict[str, str] = dict((state or {}).get("seen") or {})
        # The hash last reported to the model as "changed", so each change is reported once.
        self.reported: dict[str, str] = dict((state or {}).get("reported") or {})

    def saw(self, rel: str, data: bytes) -> None:
        with self._lock:
            self.seen[rel] = digest(data)
            self.reported.pop(rel, None)

    def forget(self, rel: str) -> None:
        with self._lock:
            self.seen.pop(rel, None)
            self.reported.pop(rel, None)

    def stale(self, rel: str, current: bytes | None) -> str | None:
        """Why an edit to `rel` must wait for a fresh read, or None if the agent's view is current."""
        with self._lock:
            h = self.seen.get(rel)
        if h is None:
            return f"{rel} has not been read yet; read it with read_file first"
        if current is None:
            return f"{rel} was deleted since you read it"
        if digest(current) != h:
            return f"{rel} changed since you last read it; read it again before editing"
        return None

    def changed_since_seen(self, read: Any) -> list[tuple[str, str]]:
        """Files the agent saw that now differ, not yet reported: [(path, "modified"|"deleted")].

        `read(rel)` returns the file's current bytes or None if it is gone.
        """
        with self._lock:
            items = list(self.seen.items())
        out = []
        for rel, h in items:
            try:
                data = read(rel)
            except Exception:
                data = None
            now = "deleted" if data is None else digest(data)
            if now != h and self.reported.get(rel) != now:
                with self._lock:
                    self.reported[rel] = now
                out.append((rel, "deleted" if data is None else "modified"))
        return out

    def to_state(self) -> dict[str, Any]:
        with self._lock:
            return {"seen": dict(self.seen), "reported": dict(self.reported)}


class TreeWatcher:
    """A watchdog observer collecting changed project paths (relative, POSIX)."""

    GRACE = 0.5  # seconds after the agent's own tool ends during which changes are its own

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.realpath(root))
        self._lock = threading.Condition()
        self._pending: dict[str, bool] = {}  # path -> changed by the agent's own tool
        self._busy = 0
        self._busy_until = 0.0
        self._observer: Any = None
        self.error: str | None = None

    def start(self) -> bool:
        """Start observing; False (with `error` set) if the platform refuses."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError as e:  # a core dependency, but stay usable without it
            self.error = f"watchdog is not available: {e}"
            return False
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")):
                    if p and not event.is_directory:
                        watcher._note(os.fsdecode(p))

        try:
            obs = Observer()
            obs.daemon = True
            obs.schedule(Handler(), str(self.root), recursive=True)
            obs.start()
        except Exception as e:  # e.g. inotify watch limits
            self.error = f"cannot watch the project for changes: {e}"
            return False
        self._observer = obs
        return True

    def stop(self) -> None:
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.stop()
            obs.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._observer is not None

    def _note(self, path: str) -> None:
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            return
        if any(part in SKIP_DIRS for part in rel.parts):
            return
        with self._lock:
            own = self._busy > 0 or time.monotonic() < self._busy_until
            key = rel.as_posix()
            self._pending[key] = self._pending.get(key, True) and own
            self._lock.notify_all()

    def agent_busy(self) -> _Busy:
        """Context manager: changes seen while it is open (and a grace after) are the agent's."""
        return _Busy(self)

    def drain(self) -> dict[str, bool]:
        """Changed paths since the last drain: {path: changed only by the agent's own tool}."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    def wait_for(self, rel: str, timeout: float = 5.0) -> bool:
        """Block until `rel` is among the pending changes (for tests and the UI)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while rel not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True


class _Busy:
    def __init__(self, w: TreeWatcher):
        self.w = w

    def __enter__(self) -> None:
        with self.w._lock:
            self.w._busy += 1

    def __exit__(self, *exc: object) -> None:
        with self.w._lock:
            self.w._busy -= 1
            self.w._busy_until = time.monotonic() + TreeWatcher.GRACE
