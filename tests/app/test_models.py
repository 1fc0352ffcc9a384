"""ModelManager on real tiny checkpoints: unload before load, a real cancel, memory counted."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from app.backends import open_local
from app.models import (
    LoadingCancelled,
    LoadingFailed,
    LoadingProgress,
    LoadingStarted,
    ModelLoaded,
    ModelManager,
    ModelUnloaded,
    model_memory,
)
from engine import EngineError, LoadCancelled, load_model
from engine.tiny import write_checkpoint

CTX = 1024


class Recorder:
    """Events as they come (on the manager's thread), with a wait for the next terminal one."""

    def __init__(self) -> None:
        self.events: list = []
        self.cond = threading.Condition()

    def __call__(self, ev) -> None:
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait_for(self, kind, n: int = 1, timeout: float = 120):
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(isinstance(e, kind) for e in self.events) >= n, timeout)
        assert ok, f"no {kind.__name__} in {self.events}"
        return [e for e in self.events if isinstance(e, kind)][n - 1]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events if not isinstance(e, LoadingProgress)]


def released(backend) -> bool:
    """True once the backend has freed its model (an Engine's info then raises)."""
    try:
        _ = backend.info
    except EngineError:
        return True
    return False


@pytest.fixture
def manager():
    m = ModelManager()
    yield m
    m.close()


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny-4") / "model", shards=4)


def test_second_load_unloads_the_first_before_loading(tiny_dir):
    opened: list = []
    first_closed_when_second_opened: list[bool] = []

    def opener(path, **kw):
        if opened:  # the first model must be gone before the second is read
            first_closed_when_second_opened.append(released(opened[0]))
        b = open_local(path, **kw)
        opened.append(b)
        return b

    rec = Recorder()
    m = ModelManager(opener=opener)
    m.add_listener(rec)
    try:
        a, b = str(tiny_dir("per_expert")), str(tiny_dir("mlx", 4))
        m.load(a, context_tokens=CTX)
        first = rec.wait_for(ModelLoaded)
        assert first.path == a and m.backend is opened[0] and m.memory_in_use > 0
        assert first.info.context_tokens > 0 and first.info.name == "model"
        m.load(b, context_tokens=CTX)
        second = rec.wait_for(ModelLoaded, 2)
        assert second.path == b and m.backend is opened[1] and m.path == b
        assert first_closed_when_second_opened == [True]
        assert rec.kinds() == [
            "LoadingStarted",
            "ModelLoaded",
            "LoadingStarted",
            "ModelUnloaded",
            "ModelLoaded",
        ]
        unloaded = rec.events[[type(e) for e in rec.events].index(ModelUnloaded)]
        assert unloaded.path == a
        assert released(opened[0])
        assert m.backend.info.name == "model"
    finally:
        m.close()
    assert m.backend is None
    assert released(opened[1])


def test_progress_is_reported_up_to_the_total(manager, four_shards):
    rec = Recorder()
    manager.add_listener(rec)
    manager.load(str(four_shards), context_tokens=CTX)
    rec.wait_for(ModelLoaded)
    steps = [e for e in rec.events if isinstance(e, LoadingProgress)]
    assert steps and steps[-1].done == steps[-1].total and steps[-1].fraction == 1.0
    assert [s.done for s in steps] == sorted(s.done for s in steps)
    assert steps[-1].total >= 4 + 1  # four shards opened, then the layers read


@pytest.mark.parametrize("cancel_at", ["second shard", "reading layers"])
def test_cancel_stops_the_load(manager, four_shards, cancel_at):
    rec = Recorder()
    seen: list[tuple[int, int]] = []

    def on_event(ev) -> None:
        if isinstance(ev, LoadingProgress):
            seen.append((ev.done, ev.total))
            # Steps: tokenizer (0), shards (1-4), then one per layer group.
            if (cancel_at == "second shard" and ev.done == 2) or (
                cancel_at == "reading layers" and ev.done == 6
            ):
                manager.cancel()

    manager.add_listener(on_event)
    manager.add_listener(rec)
    manager.load(str(four_shards), context_tokens=CTX)
    rec.wait_for(LoadingCancelled)
    manager.wait_idle(30)
    stop = 2 if cancel_at == "second shard" else 6
    # No step ran after the cancel: the load stopped there, not at the end.
    assert seen[-1][0] == stop and seen[-1][1] > stop + 1
    assert not any(isinstance(e, ModelLoaded | LoadingFailed) for e in rec.events)
    assert manager.backend is None and manager.loading is None


def test_cancel_stops_load_model_between_shards(four_shards):
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)

    with pytest.raises(LoadCancelled):
        load_model(four_shards, context_tokens=CTX, progress=progress, should_stop=lambda: len(calls) >= 3)
    assert calls == [0, 1, 2]


def test_a_new_load_replaces_one_under_way(manager, tiny_dir, four_shards):
    rec = Recorder()
    gate = threading.Event()

    def slow(ev) -> None:
        if isinstance(ev, LoadingProgress) and ev.path == str(four_shards) and ev.done == 1:
            gate.wait(30)  # hold the first load until the second is asked for

    manager.add_listener(slow)
    manager.add_listener(rec)
    manager.load(str(four_shards), context_tokens=CTX)
    rec.wait_for(LoadingProgress)
    manager.load(str(tiny_dir("mlx", 4)), context_tokens=CTX)
    gate.set()
    loaded = rec.wait_for(ModelLoaded)
    assert loaded.path == str(tiny_dir("mlx", 4))
    assert rec.wait_for(LoadingCancelled).path == str(four_shards)
    assert manager.path == str(tiny_dir("mlx", 4))


def test_memory_check_counts_the_loaded_model(manager, tiny_dir, monkeypatch):
    a, b = str(tiny_dir("per_expert")), str(tiny_dir("mlx", 4))
    need_b = model_memory(b, CTX)
    rec = Recorder()
    manager.add_listener(rec)
    # Free memory less than the new model needs: alone, it does not fit.
    free = need_b // 2
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", str(free / 1024**3))
    manager.load(b, context_tokens=CTX)
    failed = rec.wait_for(LoadingFailed)
    assert "not enough memory" in failed.message and manager.backend is None

    monkeypatch.delenv("LOCUS_MEMORY_LIMIT_GB")
    manager.load(a, context_tokens=CTX)
    rec.wait_for(ModelLoaded)
    in_use = manager.memory_in_use
    assert in_use == model_memory(a, CTX)
    # The same free memory, now with a model loaded that will be unloaded first: it fits.
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", str(free / 1024**3))
    assert free < need_b <= free + in_use
    manager.load(b, context_tokens=CTX)
    assert rec.wait_for(ModelLoaded, 2).path == b

    # More than free + what the loaded model frees: refused, and the loaded model stays.
    # (--context is capped at the model's maximum, so shrink the free memory rather than grow it.)
    need_a = model_memory(a, CTX)
    assert need_a > manager.memory_in_use  # fp32 a needs more than the 4-bit b frees
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", str((need_a - manager.memory_in_use) / 2 / 1024**3))
    manager.load(a, context_tokens=CTX)
    failed = rec.wait_for(LoadingFailed, 2)
    assert "not enough memory" in failed.message and "loaded model frees" in failed.message
    assert manager.path == b and manager.backend.info.name == "model"
    assert rec.kinds()[-2:] == ["LoadingStarted", "LoadingFailed"]  # nothing was unloaded


def test_a_path_that_is_not_a_model_keeps_the_loaded_one(manager, tiny_dir, tmp_path):
    rec = Recorder()
    manager.add_listener(rec)
    manager.load(str(tiny_dir("mlx", 4)), context_tokens=CTX)
    rec.wait_for(ModelLoaded)
    manager.load(str(tmp_path / "nope"), context_tokens=CTX)
    failed = rec.wait_for(LoadingFailed)
    assert "not found" in failed.message and "Traceback" not in failed.message
    assert manager.backend is not None and manager.loading is None


def test_unload_and_adopt(manager, tiny_dir):
    rec = Recorder()
    manager.add_listener(rec)
    manager.load(str(tiny_dir("mlx", 4)), context_tokens=CTX)
    rec.wait_for(ModelLoaded)
    first = manager.backend
    other = open_local(str(tiny_dir("mlx", 4)), context_tokens=CTX)
    manager.adopt(other, "tiny")
    assert manager.backend is other and manager.name == "tiny"
    assert released(first)
    manager.unload()
    assert manager.backend is None and isinstance(rec.events[-1], ModelUnloaded)
    assert rec.events[-1].name == "tiny"
    assert released(other)
    assert not manager.cancel()
    assert isinstance(rec.events[0], LoadingStarted)


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def test_load_remote_keeps_the_local_model_until_the_server_answers(manager, tiny_dir):
    from tests.fakeopenai import Fake, chunk, sse

    fake = Fake(
        sse(chunk({"content": "Hi from afar."}), chunk(finish="stop")),
        models={"data": [{"id": "first"}, {"id": "big", "max_model_len": 65536}]},
    )
    rec = Recorder()
    manager.add_listener(rec)
    try:
        manager.load(str(tiny_dir("mlx", 4)), context_tokens=CTX)
        rec.wait_for(ModelLoaded)
        local = manager.backend

        # A server that refuses the connection: the local model stays, the message says why.
        refused = _refused_url()
        path = manager.load_remote(refused)
        failed = rec.wait_for(LoadingFailed)
        assert failed.path == path == f"remote:{refused}"
        assert "connection refused" in failed.message and refused in failed.message
        assert manager.backend is local and not released(local) and manager.loading is None

        # A server that connects but never answers: a cancel does not wait for its timeout.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
            manager.load_remote(url, model="big")
            rec.wait_for(LoadingStarted, 3)
            t0 = time.monotonic()
            assert manager.cancel()
            assert rec.wait_for(LoadingCancelled).path == f"remote:{url}#big"
            assert time.monotonic() - t0 < 5
        assert manager.backend is local and not released(local)

        # The real server: asked first, then the local model is unloaded and the remote one used.
        path = manager.load_remote(fake.url, api_key="sk-test", model="big")
        loaded = rec.wait_for(ModelLoaded, 2)
        assert loaded.path == path == f"remote:{fake.url}#big" and loaded.name == "big"
        assert loaded.info.remote == fake.url and loaded.info.context_tokens == 65536
        assert loaded.memory == 0 and manager.memory_in_use == 0 and manager.name == "big"
        assert released(local)
        kinds = rec.kinds()
        assert kinds[-3:] == ["LoadingStarted", "ModelUnloaded", "ModelLoaded"]
        remote = manager.backend
        from engine import GenerationRequest

        result = remote.generate(
            GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=20)
        )
        assert result.text == "Hi from afar."
        sent = fake.posts()[-1]
        assert sent["model"] == "big"
        auth = [h.get("Authorization") for p, h, _ in fake.requests if p.endswith("/completions")]
        assert auth == ["Bearer sk-test"]
    finally:
        manager.close()
        fake.close()
