"""Locus's SQLite store: conversations and agent runs, their messages, and agent events.

One file in the user data directory (WAL mode, synchronous=FULL: each message is committed in its
own transaction the moment it is finished, so a crash or power cut never loses a finished one).
The schema is versioned with `PRAGMA user_version` and migrated forward on open; a database
written by a newer Locus is refused rather than damaged.

A *thread* is one conversation: kind "chat" or "agent". Its messages are stored in order as the
JSON dicts the engine takes, as a tree (schema 2): each message names its parent, and the thread
its `head`, so an edited or regenerated message keeps its earlier versions (siblings) and the path
from the head up is the conversation shown. Images a message holds are rows of `attachments`,
named in the message by their SHA-256. An agent run is a thread plus a row in `agent_runs` (project, task,
status, totals, resumable state) and its events.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "SCHEMA_VERSION",
    "MessageNode",
    "RunRecord",
    "Store",
    "StoreError",
    "StoreWriter",
    "ThreadRecord",
    "default_data_dir",
    "new_thread_id",
    "path_to",
]

SCHEMA_VERSION = 2

# MIGRATIONS[v] turns a version v-1 database into version v. Append; never edit a shipped one.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE threads (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('chat', 'agent')),
            title TEXT NOT NULL DEFAULT '',
            model TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            body TEXT NOT NULL,
            created REAL NOT NULL,
            UNIQUE (thread_id, seq)
        )""",
        """CREATE TABLE agent_runs (
            thread_id TEXT PRIMARY KEY REFERENCES threads(id) ON DELETE CASCADE,
            project TEXT NOT NULL,
            task TEXT NOT NULL,
            status TEXT NOT NULL,
            steps INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            answer TEXT,
            error TEXT,
            settings TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL DEFAULT '{}',
            pid INTEGER,
            finished REAL
        )""",
        """CREATE TABLE agent_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            data TEXT NOT NULL,
            created REAL NOT NULL,
            UNIQUE (run_id, seq)
        )""",
        "CREATE INDEX messages_thread ON messages(thread_id, seq)",
        "CREATE INDEX agent_events_run ON agent_events(run_id, seq)",
        "CREATE INDEX agent_runs_project ON agent_runs(project)",
        "CREATE INDEX threads_kind ON threads(kind, updated)",
    ],
    # Message trees (versions and branches), images, and small app state (the last conversation).
    2: [
        "ALTER TABLE messages ADD COLUMN uid TEXT",
        "ALTER TABLE messages ADD COLUMN parent TEXT",
        "ALTER TABLE threads ADD COLUMN head TEXT",
        "UPDATE messages SET uid = lower(hex(randomblob(8)))",
        """UPDATE messages SET parent = (SELECT x.prev FROM (SELECT id, LAG(uid) OVER
            (PARTITION BY thread_id ORDER BY seq) AS prev FROM messages) x WHERE x.id = messages.id)""",
        """UPDATE threads SET head = (SELECT uid FROM messages m WHERE m.thread_id = threads.id
            ORDER BY seq DESC LIMIT 1)""",
        "CREATE UNIQUE INDEX messages_uid ON messages(uid)",
        "CREATE INDEX messages_parent ON messages(thread_id, parent)",
        """CREATE TABLE attachments (
            thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            media_type TEXT NOT NULL,
            data BLOB NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (thread_id, sha256)
        )""",
        "CREATE TABLE app_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
}


class StoreError(Exception):
    pass


def default_data_dir() -> Path:
    """Where Locus keeps its data: $LOCUS_DATA_DIR, else the platform's user data directory."""
    from .settings import data_dir

    return data_dir()


@dataclass(frozen=True)
class ThreadRecord:
    id: str
    kind: str
    title: str
    model: str | None
    created: float
    updated: float
    meta: dict[str, Any]


@dataclass(frozen=True)
class MessageNode:
    """A stored message in its thread's tree: `uid`, the `parent` it answers (None: first)."""

    uid: str
    parent: str | None
    message: dict[str, Any]
    created: float


@dataclass(frozen=True)
class RunRecord:
    """An agent run as stored."""

    id: str
    project: str
    task: str
    status: str
    steps: int
    prompt_tokens: int
    completion_tokens: int
    answer: str | None
    error: str | None
    settings: dict[str, Any]
    state: dict[str, Any]
    pid: int | None
    model: str | None
    created: float
    updated: float
    finished: float | None

    @property
    def shown_status(self) -> str:
        """The status to show: a run left "running" by a process that is gone was interrupted
        (Locus crashed or was killed); it can be resumed."""
        if self.status == "running" and not self.alive:
            return "interrupted"
        return self.status

    @property
    def alive(self) -> bool:
        """Whether the process running it still exists (False for finished runs)."""
        if self.status != "running" or not self.pid:
            return False
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


_RUN_FIELDS = {
    "status",
    "steps",
    "prompt_tokens",
    "completion_tokens",
    "answer",
    "error",
    "settings",
    "state",
    "pid",
    "finished",
}


class Store:
    """A connection to the store; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        if path is None:
            path = default_data_dir() / "locus.db"
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        if self.path != ":memory:":
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot use WAL journaling for {self.path} (got {mode})")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    # -- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.ProgrammingError as e:
                raise StoreError(f"the store {self.path} is closed") from e
            try:
                yield self._db
            except sqlite3.IntegrityError as e:
                self._db.execute("ROLLBACK")
                raise StoreError(_integrity_message(e)) from e
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer Locus (schema {version}; this one knows "
                    f"{SCHEMA_VERSION}); update Locus"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[v]:
                    db.execute(sql)
                db.execute(f"PRAGMA user_version = {v}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads and messages (chat and agent) --------------------------------------------------
    def create_thread(
        self,
        kind: str,
        title: str = "",
        *,
        model: str | None = None,
        meta: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> str:
        with self._tx() as db:
            return _insert_thread(db, kind, title, model, meta, id)

    def thread(self, thread_id: str) -> ThreadRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM threads WHERE id = ?", (thread_id,)).fetchone()
        if row is None:
            raise StoreError(f"no conversation or run {thread_id!r}")
        return ThreadRecord(
            row["id"],
            row["kind"],
            row["title"],
            row["model"],
            row["created"],
            row["updated"],
            json.loads(row["meta"]),
        )

    def threads(self, kind: str | None = None, limit: int = 100) -> list[ThreadRecord]:
        """Conversations and runs, most recently updated first."""
        sql = "SELECT id FROM threads" + (" WHERE kind = ?" if kind else "")
        sql += " ORDER BY updated DESC LIMIT ?"
        with self._lock:
            ids = [r[0] for r in self._db.execute(sql, (*([kind] if kind else []), limit))]
        return [self.thread(i) for i in ids]

    def search(self, query: str, kind: str | None = None, limit: int = 50) -> list[ThreadRecord]:
        """Threads whose title or any message contains `query` (case-insensitive), newest first."""
        if not query.strip():
            return self.threads(kind, limit)
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = (
            "SELECT id FROM threads t WHERE (t.title LIKE ?1 ESCAPE '\\' OR EXISTS ("
            "SELECT 1 FROM messages m WHERE m.thread_id = t.id AND ("
            "(json_type(m.body, '$.content') = 'text' "
            "AND json_extract(m.body, '$.content') LIKE ?1 ESCAPE '\\')"
            " OR (json_type(m.body, '$.content') = 'array' AND EXISTS (SELECT 1 FROM "
            "json_each(m.body, '$.content') j WHERE json_extract(j.value, '$.text') LIKE ?1 ESCAPE '\\')))))"
        )
        params: list[Any] = [pattern]
        if kind:
            sql += " AND t.kind = ?2"
            params.append(kind)
        sql += f" ORDER BY t.updated DESC LIMIT {int(limit)}"
        with self._lock:
            ids = [r[0] for r in self._db.execute(sql, params)]
        return [self.thread(i) for i in ids]

    def rename_thread(self, thread_id: str, title: str) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE threads SET title = ?, updated = ? WHERE id = ?", (title, time.time(), thread_id)
            )
            if cur.rowcount == 0:
                raise StoreError(f"no conversation or run {thread_id!r}")

    def set_thread_meta(self, thread_id: str, meta: dict[str, Any]) -> None:
        """Replace a thread's free-form metadata (UI settings such as the system prompt)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE threads SET meta = ? WHERE id = ?", (json.dumps(meta, ensure_ascii=False), thread_id)
            )
            if cur.rowcount == 0:
                raise StoreError(f"no conversation or run {thread_id!r}")

    def pop_message(self, thread_id: str) -> dict[str, Any] | None:
        """Remove and return a thread's head message (its parent becomes the head)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT m.id, m.body, m.parent FROM messages m JOIN threads t ON t.head = m.uid "
                "WHERE t.id = ?",
                (thread_id,),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            now = time.time()
            db.execute("UPDATE threads SET updated = ?, head = ? WHERE id = ?", (now, row[2], thread_id))
        return json.loads(row[1])

    def delete_thread(self, thread_id: str) -> None:
        """Delete a conversation or run with its messages and events (no error if it is gone)."""
        with self._tx() as db:
            db.execute("DELETE FROM threads WHERE id = ?", (thread_id,))

    def add_message(
        self, thread_id: str, message: dict[str, Any], *, uid: str | None = None, parent: str | None = "head"
    ) -> int:
        """Append a finished message (committed durably before returning) as a child of `parent`
        (by default the head) and make it the head; its sequence number."""
        body = json.dumps(message, ensure_ascii=False)
        now = time.time()
        with self._tx() as db:
            if parent == "head":
                row = db.execute("SELECT head FROM threads WHERE id = ?", (thread_id,)).fetchone()
                parent = row[0] if row is not None else None
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE thread_id = ?", (thread_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO messages (thread_id, seq, role, body, created, uid, parent) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (thread_id, seq, str(message.get("role", "")), body, now, uid or new_thread_id(), parent),
            )
            db.execute(
                "UPDATE threads SET updated = ?, "
                "head = (SELECT uid FROM messages WHERE thread_id = ? AND seq = ?) WHERE id = ?",
                (now, thread_id, seq, thread_id),
            )
        return int(seq)

    def messages(self, thread_id: str) -> list[dict[str, Any]]:
        """The conversation shown: the messages from the first to the head, in order."""
        head, nodes = self.tree(thread_id)
        return [n.message for n in path_to(head, nodes)]

    def tree(self, thread_id: str) -> tuple[str | None, list[MessageNode]]:
        """A thread's head and every message of every branch, oldest first."""
        with self._lock:
            row = self._db.execute("SELECT head FROM threads WHERE id = ?", (thread_id,)).fetchone()
            rows = self._db.execute(
                "SELECT uid, parent, body, created FROM messages WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
        nodes = [MessageNode(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]
        return (row[0] if row is not None else None), nodes

    def set_head(self, thread_id: str, uid: str | None) -> None:
        """Show another branch: the conversation becomes the path up from message `uid`."""
        with self._tx() as db:
            if (
                uid is not None
                and db.execute(
                    "SELECT 1 FROM messages WHERE thread_id = ? AND uid = ?", (thread_id, uid)
                ).fetchone()
                is None
            ):
                raise StoreError(f"no message {uid!r} in conversation {thread_id!r}")
            db.execute("UPDATE threads SET head = ? WHERE id = ?", (uid, thread_id))

    def delete_message(self, thread_id: str, uid: str, head: str | None) -> None:
        """Delete message `uid` (its replies then answer its parent); `head` is the head after."""
        with self._tx() as db:
            row = db.execute(
                "SELECT parent FROM messages WHERE thread_id = ? AND uid = ?", (thread_id, uid)
            ).fetchone()
            if row is None:
                return
            # Its replies now answer its parent: the conversation goes on without it.
            db.execute(
                "UPDATE messages SET parent = ? WHERE thread_id = ? AND parent = ?", (row[0], thread_id, uid)
            )
            db.execute("DELETE FROM messages WHERE thread_id = ? AND uid = ?", (thread_id, uid))
            now = time.time()
            db.execute("UPDATE threads SET head = ?, updated = ? WHERE id = ?", (head, now, thread_id))

    # -- images -----------------------------------------------------------------------------------
    def add_attachment(self, thread_id: str, sha256: str, media_type: str, data: bytes) -> None:
        """Keep an image a message of `thread_id` names (stored once per thread)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO attachments (thread_id, sha256, media_type, data, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (thread_id, sha256, media_type, sqlite3.Binary(data), time.time()),
            )

    def attachments(self, thread_id: str) -> dict[str, tuple[str, bytes]]:
        """A thread's images: sha256 -> (media type, bytes)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, media_type, data FROM attachments WHERE thread_id = ?", (thread_id,)
            ).fetchall()
        return {r[0]: (r[1], bytes(r[2])) for r in rows}

    # -- whole threads (undo a delete) and app state -----------------------------------------------
    def dump_thread(self, thread_id: str) -> dict[str, Any]:
        """Everything stored of a thread, to put back with `restore_thread` (every branch and image)."""
        t = self.thread(thread_id)
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, role, body, created, uid, parent FROM messages WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
            head = self._db.execute("SELECT head FROM threads WHERE id = ?", (thread_id,)).fetchone()[0]
        return {
            "thread": t,
            "head": head,
            "messages": [tuple(r) for r in rows],
            "attachments": self.attachments(thread_id),
        }

    def restore_thread(self, dump: dict[str, Any]) -> str:
        """Put back a thread `dump_thread` read (same id, title, times, messages and images)."""
        t: ThreadRecord = dump["thread"]
        with self._tx() as db:
            db.execute(
                "INSERT INTO threads (id, kind, title, model, created, updated, meta, head) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (t.id, t.kind, t.title, t.model, t.created, t.updated, json.dumps(t.meta), dump["head"]),
            )
            for seq, role, body, created, uid, parent in dump["messages"]:
                db.execute(
                    "INSERT INTO messages (thread_id, seq, role, body, created, uid, parent) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (t.id, seq, role, body, created, uid, parent),
                )
            for sha, (media, data) in dump["attachments"].items():
                db.execute(
                    "INSERT INTO attachments (thread_id, sha256, media_type, data, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (t.id, sha, media, sqlite3.Binary(data), time.time()),
                )
        return t.id

    def state(self, key: str) -> str | None:
        """A small piece of app state (e.g. the conversation open at quit)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM app_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None

    def set_state(self, key: str, value: str | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM app_state WHERE key = ?", (key,))
            else:
                db.execute("INSERT OR REPLACE INTO app_state (key, value) VALUES (?, ?)", (key, value))

    # -- agent runs ----------------------------------------------------------------------------------
    def create_run(
        self, project: str, task: str, *, model: str | None = None, settings: dict[str, Any] | None = None
    ) -> str:
        """A new agent run in status "running", owned by this process."""
        title = task.strip().splitlines()[0][:120] if task.strip() else "agent run"
        with self._tx() as db:
            rid = _insert_thread(db, "agent", title, model, None, None)
            db.execute(
                "INSERT INTO agent_runs (thread_id, project, task, status, settings, pid) "
                "VALUES (?, ?, ?, 'running', ?, ?)",
                (rid, project, task, json.dumps(settings or {}), os.getpid()),
            )
        return rid

    def run(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT r.*, t.model, t.created, t.updated FROM agent_runs r "
                "JOIN threads t ON t.id = r.thread_id WHERE r.thread_id = ?",
                (run_id,),
            ).fetchone()
        if row is None:
            raise StoreError(f"no agent run {run_id!r}")
        return _run_record(row)

    def runs(self, project: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Agent runs, newest first, optionally of one project."""
        sql = (
            "SELECT r.*, t.model, t.created, t.updated FROM agent_runs r JOIN threads t ON t.id = r.thread_id"
        )
        params: list[Any] = []
        if project is not None:
            sql += " WHERE r.project = ?"
            params.append(project)
        sql += " ORDER BY t.created DESC, t.rowid DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_run_record(r) for r in rows]

    def update_run(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - _RUN_FIELDS
        if bad:
            raise StoreError(f"unknown run fields: {sorted(bad)}")
        if not fields:
            return
        vals = [json.dumps(v) if k in ("settings", "state") else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        now = time.time()
        with self._tx() as db:
            db.execute(f"UPDATE agent_runs SET {sets} WHERE thread_id = ?", (*vals, run_id))
            db.execute("UPDATE threads SET updated = ? WHERE id = ?", (now, run_id))

    def add_event(self, run_id: str, type: str, data: dict[str, Any], step: int = 0) -> int:
        """Append an event to a run; its sequence number."""
        body = json.dumps(data, ensure_ascii=False, default=str)
        with self._tx() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_events WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO agent_events (run_id, seq, type, step, data, created) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, seq, type, step, body, time.time()),
            )
        return int(seq)

    def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Events of a run after sequence number `after`: {"seq", "type", "step", "time", **data}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, type, step, data, created FROM agent_events "
                "WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after),
            ).fetchall()
        return [{"seq": r[0], "type": r[1], "step": r[2], "time": r[4], **json.loads(r[3])} for r in rows]


def _integrity_message(e: sqlite3.IntegrityError) -> str:
    msg = str(e)
    if "FOREIGN KEY" in msg:
        return "no such conversation or run (it may have been deleted)"
    if "CHECK" in msg:
        return "invalid value (a thread's kind is 'chat' or 'agent')"
    if "UNIQUE" in msg or "PRIMARY KEY" in msg:
        return "a conversation or run with that id already exists"
    return f"the store refused the change: {msg}"


def path_to(head: str | None, nodes: list[MessageNode]) -> list[MessageNode]:
    """The messages from the first to `head`, following parents."""
    by_uid = {n.uid: n for n in nodes}
    out: list[MessageNode] = []
    while head is not None and head in by_uid and len(out) <= len(nodes):
        out.append(by_uid[head])
        head = by_uid[head].parent
    return out[::-1]


def new_thread_id() -> str:
    """An id for a thread not stored yet (so a caller can use it before the write lands)."""
    return uuid.uuid4().hex[:16]


class StoreWriter:
    """Runs a store's calls on one thread, in the order given, so a UI thread never waits on
    SQLite: `submit` returns at once; `call` waits for the result (after every earlier write);
    `flush` / `close` wait until everything submitted is committed."""

    def __init__(self, store: Store):
        self.store = store
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="locus-store", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `fn(*args, **kwargs)` (e.g. `store.add_message`); its Future."""
        fut: Future[T] = Future()
        if self._closed:
            fut.set_exception(StoreError(f"the store {self.store.path} is closed"))
            return fut
        self._jobs.put((lambda: fn(*args, **kwargs), fut))
        return fut

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` after every earlier write and return its result (for a worker thread)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has run; False on timeout."""
        if self._closed and not self._thread.is_alive():
            return True
        done: Future[None] = Future()
        self._jobs.put((lambda: None, done))
        try:
            done.result(timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, then stop the thread (the store stays open)."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                fut.set_result(fn())
            except BaseException as e:  # the caller's Future carries it
                fut.set_exception(e)


def _insert_thread(
    db: sqlite3.Connection,
    kind: str,
    title: str,
    model: str | None,
    meta: dict[str, Any] | None,
    tid: str | None,
) -> str:
    tid = tid or new_thread_id()
    now = time.time()
    db.execute(
        "INSERT INTO threads (id, kind, title, model, created, updated, meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (tid, kind, title, model, now, now, json.dumps(meta or {})),
    )
    return tid


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["thread_id"],
        project=row["project"],
        task=row["task"],
        status=row["status"],
        steps=row["steps"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        answer=row["answer"],
        error=row["error"],
        settings=json.loads(row["settings"]),
        state=json.loads(row["state"]),
        pid=row["pid"],
        model=row["model"],
        created=row["created"],
        updated=row["updated"],
        finished=row["finished"],
    )
