"""The SQLite store: conversations (chat and agent), messages, runs and events, durability."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreWriter,
    default_data_dir,
    new_thread_id,
)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "locus.db") as s:
        yield s


def test_conversation_lifecycle(store: Store) -> None:
    a = store.create_thread("chat", "Pasta recipes", model="qwen")
    time.sleep(0.01)
    b = store.create_thread("chat", "Rust lifetimes")
    assert [t.id for t in store.threads("chat")] == [b, a]  # newest first
    store.add_message(a, {"role": "user", "content": "How long to boil penne?"})
    n = store.add_message(
        a, {"role": "assistant", "content": "About 11 minutes.", "reasoning_content": "Penne: 10-12 min."}
    )
    assert n == 2
    assert [t.id for t in store.threads()] == [a, b]  # a message moves it to the top
    assert store.messages(a)[1] == {
        "role": "assistant",
        "content": "About 11 minutes.",
        "reasoning_content": "Penne: 10-12 min.",
    }
    store.rename_thread(a, "Penne")
    assert store.thread(a).title == "Penne" and store.thread(a).model == "qwen"
    store.delete_thread(a)
    assert [t.id for t in store.threads()] == [b]
    assert store.messages(a) == []
    with pytest.raises(StoreError, match="no conversation"):
        store.thread(a)
    with pytest.raises(StoreError, match="no conversation"):
        store.rename_thread(a, "x")


def test_search(store: Store) -> None:
    a = store.create_thread("chat", "Cooking")
    store.add_message(a, {"role": "user", "content": "What is 100% durum WHEAT?"})
    b = store.create_thread("chat", "Wheat fields")
    c = store.create_thread("agent", "fix wheat bug")
    store.create_thread("chat", "Unrelated")
    assert {t.id for t in store.search("wheat")} == {a, b, c}
    assert {t.id for t in store.search("wheat", kind="chat")} == {a, b}
    assert [t.id for t in store.search("100%")] == [a]
    assert store.search("1000%") == []
    assert store.search("role") == []  # message JSON keys are not content
    assert len(store.search("  ")) == 4


def test_bad_input_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="kind"):
        store.create_thread("email")
    with pytest.raises(StoreError, match="no such conversation"):
        store.add_message("missing", {"role": "user", "content": "x"})
    t = store.create_thread("chat", id="fixed")
    with pytest.raises(StoreError, match="already exists"):
        store.create_thread("chat", id=t)
    with pytest.raises(StoreError, match="unknown run fields"):
        store.update_run("x", color="red")
    with pytest.raises(StoreError, match="no agent run"):
        store.run("nope")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.create_thread("chat")


def test_runs_and_events(store: Store) -> None:
    r1 = store.create_run("/p", "fix the bug\nmore detail", model="replay", settings={"max_steps": 3})
    r2 = store.create_run("/q", "other")
    rec = store.run(r1)
    assert rec.status == "running" and rec.alive and rec.settings == {"max_steps": 3}
    assert store.thread(r1).title == "fix the bug" and store.thread(r1).kind == "agent"
    store.update_run(
        r1, status="answered", steps=4, answer="done", state={"k": [1]}, pid=None, finished=time.time()
    )
    rec = store.run(r1)
    assert (rec.status, rec.steps, rec.answer, rec.state, rec.alive) == (
        "answered",
        4,
        "done",
        {"k": [1]},
        False,
    )
    assert [r.id for r in store.runs("/p")] == [r1]
    assert {r.id for r in store.runs()} == {r1, r2}
    assert store.add_event(r1, "step", {}, 1) == 1
    assert store.add_event(r1, "tool_result", {"ok": True, "content": "ünïcode"}, 1) == 2
    ev = store.events(r1)
    assert [(e["seq"], e["type"]) for e in ev] == [(1, "step"), (2, "tool_result")]
    assert ev[1]["content"] == "ünïcode" and store.events(r1, after=1) == ev[1:]
    store.delete_thread(r1)
    assert store.events(r1) == [] and [r.id for r in store.runs()] == [r2]


def test_dead_process_run_is_not_alive(store: Store) -> None:
    pid = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    r = store.create_run("/p", "t")
    store.update_run(r, pid=pid)
    assert not store.run(r).alive


def test_wal_durability_across_connections_and_processes(tmp_path: Path) -> None:
    db = tmp_path / "locus.db"
    with Store(db) as s:
        t = s.create_thread("chat", "t")
        s.add_message(t, {"role": "user", "content": "kept"})
        # Another process sees the committed message while this connection is still open.
        code = (
            "import sys; from app.store import Store; s = Store(sys.argv[1]); "
            "print(s.messages(sys.argv[2])[0]['content'])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(db), t], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == "kept", out.stderr
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "locus.db"
    Store(db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer Locus"):
        Store(db)


def test_default_location_follows_locus_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    with Store() as s:
        assert Path(s.path) == tmp_path / "d" / "locus.db"


def test_threads_safe_to_share_between_threads(store: Store) -> None:
    import threading

    t = store.create_thread("chat")

    def add(k: int) -> None:
        for i in range(20):
            store.add_message(t, {"role": "user", "content": f"{k}-{i}"})

    workers = [threading.Thread(target=add, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    msgs = store.messages(t)
    assert len(msgs) == 80 and len({m["content"] for m in msgs}) == 80


def test_meta_and_pop_message(store: Store) -> None:
    t = store.create_thread("chat", meta={"system": "be brief"})
    assert store.thread(t).meta == {"system": "be brief"}
    store.set_thread_meta(t, {"system": "be kind", "thinking": False})
    assert store.thread(t).meta == {"system": "be kind", "thinking": False}
    with pytest.raises(StoreError, match="no conversation"):
        store.set_thread_meta("nope", {})
    assert store.pop_message(t) is None
    store.add_message(t, {"role": "user", "content": "q"})
    store.add_message(t, {"role": "assistant", "content": "a"})
    assert store.pop_message(t) == {"role": "assistant", "content": "a"}
    assert store.messages(t) == [{"role": "user", "content": "q"}]
    assert store.add_message(t, {"role": "assistant", "content": "b"}) == 2  # seq reused cleanly


def test_writer_runs_calls_in_order_off_the_callers_thread(store: Store) -> None:
    import threading

    writer = StoreWriter(store)
    threads: set[str] = set()

    def add(tid: str, msg: dict) -> int:
        threads.add(threading.current_thread().name)
        return store.add_message(tid, msg)

    tid = new_thread_id()
    writer.submit(store.create_thread, "chat", "queued", id=tid)
    futs = [writer.submit(add, tid, {"role": "user", "content": str(i)}) for i in range(50)]
    # A read through the writer sees every write queued before it.
    assert [m["content"] for m in writer.call(store.messages, tid)] == [str(i) for i in range(50)]
    assert [f.result() for f in futs] == list(range(1, 51))
    assert threads == {"locus-store"}
    bad = writer.submit(store.rename_thread, "missing", "x")
    with pytest.raises(StoreError):
        bad.result(5)
    writer.close()


def test_writer_close_commits_everything_queued(tmp_path: Path) -> None:
    s = Store(tmp_path / "w.db")
    writer = StoreWriter(s)
    tid = new_thread_id()
    writer.submit(s.create_thread, "chat", "t", id=tid)
    for i in range(200):
        writer.submit(s.add_message, tid, {"role": "user", "content": str(i)})
    writer.close()  # returns once the queue is committed
    late = writer.submit(s.add_message, tid, {"role": "user", "content": "late"})
    with pytest.raises(StoreError, match="closed"):
        late.result(5)
    s.close()
    with Store(tmp_path / "w.db") as again:
        assert len(again.messages(tid)) == 200


def _v1_database(path: Path) -> None:
    """A database as Locus wrote it before message trees (schema 1), with chats and an agent run."""
    from app.store import MIGRATIONS

    db = sqlite3.connect(path)
    for sql in MIGRATIONS[1]:
        db.execute(sql)
    db.execute("PRAGMA user_version = 1")
    rows = [("c1", "chat", "Pasta"), ("c2", "chat", "Empty"), ("r1", "agent", "fix bug")]
    for i, (tid, kind, title) in enumerate(rows):
        db.execute(
            "INSERT INTO threads (id, kind, title, model, created, updated, meta) "
            "VALUES (?, ?, ?, 'q', ?, ?, ?)",
            (tid, kind, title, 100.0 + i, 100.0 + i, '{"preset": "coding", "thinking": false}'),
        )
    bodies = [
        ("c1", {"role": "user", "content": "How long to boil penne?"}),
        ("c1", {"role": "assistant", "content": "11 min.", "meta": {"footer": "9 tok/s"}}),
        ("c1", {"role": "user", "content": "And fusilli?"}),
        ("r1", {"role": "user", "content": "fix it"}),
    ]
    for seq, (tid, body) in enumerate(bodies, start=1):
        db.execute(
            "INSERT INTO messages (thread_id, seq, role, body, created) VALUES (?, ?, ?, ?, ?)",
            (tid, seq, body["role"], json.dumps(body), 200.0 + seq),
        )
    db.commit()
    db.close()


def test_schema_1_database_migrates_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _v1_database(db)
    with Store(db) as s:
        assert s.schema_version == SCHEMA_VERSION == 2
        assert [m["content"] for m in s.messages("c1")] == [
            "How long to boil penne?",
            "11 min.",
            "And fusilli?",
        ]
        assert s.messages("c1")[1]["meta"] == {"footer": "9 tok/s"}
        assert s.messages("c2") == [] and [m["content"] for m in s.messages("r1")] == ["fix it"]
        assert (
            s.thread("c1").meta == {"preset": "coding", "thinking": False} and s.thread("c1").updated == 100.0
        )
        head, nodes = s.tree("c1")
        assert [n.parent for n in nodes] == [None, nodes[0].uid, nodes[1].uid] and head == nodes[2].uid
        # Old conversations go on as before: a new message follows the last one.
        s.add_message("c1", {"role": "assistant", "content": "12 min."})
        assert [m["content"] for m in s.messages("c1")][-2:] == ["And fusilli?", "12 min."]
        assert [t.id for t in s.search("penne", "chat")] == ["c1"]
    with Store(db) as s:  # and opening it again migrates nothing twice
        assert s.schema_version == 2 and len(s.messages("c1")) == 4


def test_versions_branches_images_and_undo(store: Store) -> None:
    t = store.create_thread("chat", "Branches")
    store.add_message(t, {"role": "user", "content": "q1"}, uid="u1", parent=None)
    store.add_message(t, {"role": "assistant", "content": "a1"}, uid="a1")
    store.add_message(t, {"role": "assistant", "content": "a1 again"}, uid="a2", parent="u1")  # regenerate
    assert [m["content"] for m in store.messages(t)] == ["q1", "a1 again"]
    store.set_head(t, "a1")  # ‹ 1/2
    assert [m["content"] for m in store.messages(t)] == ["q1", "a1"]
    with pytest.raises(StoreError, match="no message"):
        store.set_head(t, "nope")
    # Images: stored once per thread, found by hash; their bytes never match a text search.
    png = b"\x89PNG fake image bytes pasta"
    store.add_attachment(t, "abc", "image/png", png)
    store.add_attachment(t, "abc", "image/png", png)
    image_msg = {
        "role": "user",
        "content": [{"type": "image", "attachment": "abc"}, {"type": "text", "text": "see"}],
    }
    store.add_message(t, image_msg, uid="u2")
    assert store.attachments(t) == {"abc": ("image/png", png)}
    assert [x.id for x in store.search("see", "chat")] == [t] and store.search("attachment", "chat") == []
    # Delete one message: what followed it now follows its parent.
    store.delete_message(t, "a1", head="u2")
    assert [m["content"] for m in store.messages(t)] == ["q1", image_msg["content"]]
    # A whole thread comes back from its dump: every branch, image and time.
    dump = store.dump_thread(t)
    store.delete_thread(t)
    assert store.attachments(t) == {} and store.messages(t) == []
    store.restore_thread(dump)
    assert store.dump_thread(t) == dump
    assert store.pop_message(t) == image_msg and [m["content"] for m in store.messages(t)] == ["q1"]


def test_app_state(store: Store) -> None:
    assert store.state("last_chat") is None
    store.set_state("last_chat", "abc")
    store.set_state("last_chat", "def")
    assert store.state("last_chat") == "def"
    store.set_state("last_chat", None)
    assert store.state("last_chat") is None
