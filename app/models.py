"""The model the app has loaded, and switching to another: Qt-free, on its own thread, with events.

    manager = ModelManager()
    manager.add_listener(print)          # LoadingStarted, LoadingProgress, ModelLoaded, ...
    manager.load("~/models/Qwen3.6-35B-A3B-4bit", context_tokens=32768)
    manager.cancel()                     # stops the load between shards / layers read
    manager.load_remote("http://host:8000/v1", api_key=None, model=None)  # a model served elsewhere
    manager.close()

One model at a time: the loaded one is unloaded *before* the next is read, so switching between
two 20 GB models never needs 40 GB. Whether the next one fits is checked first, counting the
memory the loaded one will free; a model that cannot fit (or a path that is not a model) leaves
the loaded one in place. A remote model (an OpenAI-compatible server) takes no local memory: the
server is asked first, and only once it answers is the loaded model unloaded. Listeners are
called on the manager's thread, in order; a load waits for each progress event to be delivered,
so a listener's cancel lands before the next step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine import Backend, BackendInfo, PromptCache

__all__ = [
    "LoadingCancelled",
    "LoadingFailed",
    "LoadingProgress",
    "LoadingStarted",
    "ModelEvent",
    "ModelLoaded",
    "ModelManager",
    "ModelUnloaded",
    "model_memory",
    "remote_model_path",
]


@dataclass(frozen=True)
class LoadingStarted:
    path: str
    name: str


@dataclass(frozen=True)
class LoadingProgress:
    """`done` of `total` steps (shards opened, layers read)."""

    path: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass(frozen=True)
class ModelLoaded:
    path: str
    name: str
    info: BackendInfo
    memory: int  # bytes the model is expected to use (weights, context budget, margin)


@dataclass(frozen=True)
class LoadingFailed:
    path: str
    message: str  # for the user; the model loaded before (if any) is still loaded
    error: BaseException


@dataclass(frozen=True)
class LoadingCancelled:
    path: str


@dataclass(frozen=True)
class ModelUnloaded:
    path: str
    name: str


ModelEvent = LoadingStarted | LoadingProgress | ModelLoaded | LoadingFailed | LoadingCancelled | ModelUnloaded
Opener = Callable[..., "Backend"]


def model_memory(path: str, context_tokens: int) -> int:
    """Bytes the checkpoint at `path` needs with a `context_tokens` budget (ModelLoadError when it
    is not a model Locus can read)."""
    from engine import estimate_memory, inspect_checkpoint

    return estimate_memory(inspect_checkpoint(path), context_tokens).total


def _default_opener(path: str, **kwargs: Any) -> Backend:
    from .backends import open_local

    return open_local(path, **kwargs)


def _default_remote_opener(url: str, **kwargs: Any) -> Backend:
    from .backends import open_remote

    return open_remote(url, **kwargs)


def remote_model_path(url: str, model: str | None = None) -> str:
    """What a remote model's events carry as their `path`: "remote:URL" or "remote:URL#MODEL"."""
    return "remote:" + url.strip().rstrip("/") + (f"#{model}" if model else "")


def _available() -> int:
    from engine import available_memory

    return available_memory()


@dataclass
class _Load:
    path: str
    context_tokens: int
    memory_check: bool
    stop: threading.Event


@dataclass
class _RemoteLoad(_Load):
    url: str = ""
    api_key: str | None = None
    model: str | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"_RemoteLoad({self.path!r})"


class ModelManager:
    """Owns the loaded model (an `engine.Backend`) and loads, replaces and unloads it on a thread.

    `opener(path, context_tokens=, memory_check=, should_stop=, progress=, **open_kwargs)` builds
    the backend (default: `app.backends.open_local`); `measure(path, context_tokens)` says what a
    checkpoint needs and `available()` what memory is free now (defaults: the engine's estimates);
    `remote_opener(url, api_key=, model=)` connects to a model server (default:
    `app.backends.open_remote`).
    """

    def __init__(
        self,
        *,
        opener: Opener | None = None,
        measure: Callable[[str, int], int] | None = None,
        available: Callable[[], int] | None = None,
        prompt_cache: PromptCache | None = None,
        mtp: int = 0,
        remote_opener: Opener | None = None,
    ) -> None:
        self._opener = opener or _default_opener
        self._remote_opener = remote_opener or _default_remote_opener
        self._measure = measure or model_memory
        self._available = available or _available
        self._open_kwargs: dict[str, Any] = {"mtp": mtp}
        if prompt_cache is not None:
            self._open_kwargs["prompt_cache"] = prompt_cache
        self._listeners: list[Callable[[ModelEvent], None]] = []
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._backend: Backend | None = None
        self._path = ""
        self._name = ""
        self._memory = 0
        self._loading: _Load | None = None  # the load running or queued last
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="locus-models", daemon=True)
        self._thread.start()

    # -- state (any thread) -----------------------------------------------------------------------
    @property
    def backend(self) -> Backend | None:
        """The loaded model, or None."""
        return self._backend

    @property
    def path(self) -> str:
        return self._path

    @property
    def name(self) -> str:
        return self._name

    @property
    def memory_in_use(self) -> int:
        """Bytes the loaded model is expected to use (0 when none, or not known)."""
        return self._memory

    @property
    def loading(self) -> str | None:
        """The path being loaded (or queued to load), None when no load is pending."""
        with self._lock:
            return self._loading.path if self._loading is not None else None

    def add_listener(self, fn: Callable[[ModelEvent], None]) -> None:
        """Call `fn(event)` for every event, on the manager's thread."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ModelEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    # -- commands (any thread; they run in order on the manager's thread) --------------------------
    def load(self, path: str, *, context_tokens: int, memory_check: bool = True) -> None:
        """Load `path` in place of the loaded model; a load already under way is cancelled."""
        job = _Load(str(path), context_tokens, memory_check, threading.Event())
        with self._lock:
            if self._closed:
                raise RuntimeError("the model manager is closed")
            if self._loading is not None:
                self._loading.stop.set()
            self._loading = job
        self._jobs.put(lambda: self._do_load(job))

    def load_remote(self, url: str, *, api_key: str | None = None, model: str | None = None) -> str:
        """Use the model served at `url` (an OpenAI-compatible base URL) in place of the loaded one;
        `model` picks one of its /v1/models (default: the first). The server is asked first: when
        it cannot be reached the loaded model stays (LoadingFailed says why). Returns the `path`
        its events carry (`remote_model_path`)."""
        path = remote_model_path(url, model)
        job = _RemoteLoad(
            path, 0, False, threading.Event(), url=url.strip(), api_key=api_key, model=model or None
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the model manager is closed")
            if self._loading is not None:
                self._loading.stop.set()
            self._loading = job
        self._jobs.put(lambda: self._do_load_remote(job))
        return path

    def cancel(self) -> bool:
        """Stop the load under way (between shards or layers read); False when none was."""
        with self._lock:
            job, self._loading = self._loading, None
        if job is None:
            return False
        job.stop.set()
        return True

    def unload(self, *, wait: bool = True) -> None:
        """Unload the model (cancelling any load); with `wait`, return once its memory is freed."""
        self.cancel()
        self._call(self._do_unload, wait)

    def adopt(self, backend: Backend | None, name: str = "", path: str = "") -> None:
        """Make an already open `backend` the loaded model (the one before is unloaded first);
        returns once it is in place."""
        self.cancel()
        self._call(lambda: self._do_adopt(backend, name, path), True)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every command given so far has run (tests and shutdown)."""
        done = threading.Event()
        self._jobs.put(done.set)
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Cancel any load, unload the model and stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.cancel()
        self._jobs.put(self._do_unload)
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the manager's thread ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], None], wait: bool) -> None:
        if self._closed and threading.current_thread() is not self._thread:
            self._thread.join()  # its last commands run first
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            fn()  # on its own thread, or closed: nothing else runs commands any more
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def job() -> None:
            try:
                fn()
            except BaseException as e:  # handed back to the caller
                errors.append(e)
            finally:
                done.set()

        self._jobs.put(job)
        if wait:
            done.wait()
            if errors:
                raise errors[0]

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a listener's bug must not stop the manager
                import logging

                logging.getLogger("locus.models").exception("model manager job failed")

    def _emit(self, event: ModelEvent) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:
                import logging

                logging.getLogger("locus.models").exception("model event listener failed")

    def _do_unload(self) -> None:
        backend, path, name = self._backend, self._path, self._name
        if backend is None:
            return
        self._backend, self._path, self._name, self._memory = None, "", "", 0
        backend.close()  # the engine frees the weights before this returns
        self._emit(ModelUnloaded(path, name))

    def _do_adopt(self, backend: Backend | None, name: str, path: str) -> None:
        if backend is self._backend:
            return
        self._do_unload()
        if backend is None:
            return
        self._backend, self._name, self._path, self._memory = backend, name, path, 0
        self._emit(ModelLoaded(path, name, backend.info, 0))

    def _finish(self, job: _Load) -> bool:
        """Forget `job` as the pending load; False when a newer load or a cancel replaced it."""
        with self._lock:
            if self._loading is job:
                self._loading = None
                return True
            return False

    def _do_load(self, job: _Load) -> None:
        from engine import InsufficientMemoryError, LoadCancelled

        name = Path(job.path).name
        if job.stop.is_set():
            self._finish(job)
            self._emit(LoadingCancelled(job.path))
            return
        self._emit(LoadingStarted(job.path, name))
        try:
            try:
                need = self._measure(job.path, job.context_tokens)
            except Exception:
                if job.memory_check:
                    raise  # not a model Locus can read: say so before unloading anything
                need = 0
            if job.memory_check:
                free = self._available()
                # The loaded model is unloaded first: its memory counts as free for the new one.
                room = free + self._memory
                if free and need > room:
                    raise InsufficientMemoryError(
                        need,
                        room,
                        f"counting the {self._memory / 1024**3:.1f} GB the loaded model frees"
                        if self._memory
                        else "",
                    )
            if job.stop.is_set():
                raise LoadCancelled("loading the model was cancelled")
            self._do_unload()
            backend = self._open(job)
        except LoadCancelled:
            self._finish(job)
            self._emit(LoadingCancelled(job.path))
            return
        except Exception as e:
            self._finish(job)
            self._emit(LoadingFailed(job.path, _message(e), e))
            return
        if job.stop.is_set():  # cancelled after the last check: do not keep it
            backend.close()
            self._finish(job)
            self._emit(LoadingCancelled(job.path))
            return
        self._backend, self._path, self._name, self._memory = backend, job.path, name, need
        self._finish(job)
        self._emit(ModelLoaded(job.path, name, backend.info, need))

    def _do_load_remote(self, job: _RemoteLoad) -> None:
        if job.stop.is_set():
            self._finish(job)
            self._emit(LoadingCancelled(job.path))
            return
        self._emit(LoadingStarted(job.path, job.model or job.url))
        out: dict[str, Any] = {}
        opened = threading.Event()
        hand_over = threading.Lock()  # the backend goes to the manager, or is closed: never both

        def run() -> None:
            try:
                backend = self._remote_opener(job.url, api_key=job.api_key, model=job.model)
            except BaseException as e:  # raised again on the manager's thread
                out["error"] = e
            else:
                with hand_over:
                    if out.get("abandoned"):  # given up on while connecting: nobody will use it
                        backend.close()
                    else:
                        out["backend"] = backend
            finally:
                opened.set()

        # Connecting may take the server's whole timeout: a cancel must not wait for it.
        threading.Thread(target=run, name="locus-models-remote", daemon=True).start()
        while not opened.wait(0.05) and not job.stop.is_set():
            pass
        if job.stop.is_set():
            with hand_over:
                out["abandoned"] = True
                late = out.pop("backend", None)
            if late is not None:
                late.close()
            self._finish(job)
            self._emit(LoadingCancelled(job.path))
            return
        if "error" in out:
            self._finish(job)
            self._emit(LoadingFailed(job.path, _message(out["error"]), out["error"]))
            return
        backend = out["backend"]
        try:
            info = backend.info
        except Exception as e:  # an opener that connects lazily: the loaded model stays
            backend.close()
            self._finish(job)
            self._emit(LoadingFailed(job.path, _message(e), e))
            return
        self._do_unload()
        self._backend, self._path, self._name, self._memory = backend, job.path, info.name, 0
        self._finish(job)
        self._emit(ModelLoaded(job.path, info.name, info, 0))

    def _open(self, job: _Load) -> Backend:
        """Run the opener on a helper thread and deliver its progress from this one, each step
        waiting until its listeners have had it (so a listener's cancel lands before the next)."""
        steps: queue.Queue[tuple[LoadingProgress, threading.Event] | None] = queue.Queue()
        out: dict[str, Any] = {}

        def progress(done: int, total: int) -> None:
            delivered = threading.Event()
            steps.put((LoadingProgress(job.path, done, total), delivered))
            delivered.wait()

        def run() -> None:
            try:
                out["backend"] = self._opener(
                    job.path,
                    context_tokens=job.context_tokens,
                    memory_check=False,
                    should_stop=job.stop.is_set,
                    progress=progress,
                    **self._open_kwargs,
                )
            except BaseException as e:  # raised again on the manager's thread
                out["error"] = e
            finally:
                steps.put(None)

        threading.Thread(target=run, name="locus-models-open", daemon=True).start()
        while (item := steps.get()) is not None:
            try:
                self._emit(item[0])
            finally:
                item[1].set()
        if "error" in out:
            raise out["error"]
        return out["backend"]


def _message(e: BaseException) -> str:
    """The error's own words for the user, never a traceback."""
    if isinstance(e, MemoryError):
        return "Out of memory: close other apps or choose a smaller model."
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"File not found: {e.filename}"
    return str(e).strip() or type(e).__name__
