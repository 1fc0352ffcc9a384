"""The one bridge from worker threads to the Qt UI thread.

Engine and app code never import Qt: they run in plain Python threads started here, and every result,
event or error crosses back to the UI thread as a queued Qt signal. Usage, in the style of Anki's `Op`:

    task = run_in_background(fn, on_done=..., on_error=..., on_event=...)
    task.cancel()  # sets task.cancelled, which `fn` may poll (it is passed the Task when it asks)
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

__all__ = [
    "Relay",
    "Task",
    "expected",
    "run_in_background",
    "stream_in_background",
    "to_ui_thread",
    "user_message",
]

# Tasks alive until they finish: a QObject without a parent would otherwise be collected.
_LIVE: set[Task] = set()


class Task(QObject):
    """A function running on a worker thread; its outcome arrives as signals on the UI thread."""

    event = Signal(object)  # items emitted while it runs (streamed events, progress)
    done = Signal(object)  # the function's return value
    failed = Signal(str)  # an actionable message (the traceback goes to stderr, not the user)
    finished = Signal()  # after done or failed

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.cancelled = threading.Event()
        self.result: Any = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()
        # Queued: slots run on the thread this object lives on (the UI thread), whoever emits.
        self.finished.connect(self._release, Qt.ConnectionType.QueuedConnection)

    def start(self) -> Task:
        _LIVE.add(self)
        self._thread = threading.Thread(target=self._run, name="locus-ui-worker", daemon=True)
        self._thread.start()
        return self

    def emit_event(self, item: Any) -> None:
        """Called from the worker: hand one item to the UI thread."""
        _emit(self.event, item)

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker function returns (tests and shutdown only)."""
        return self._ended.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    def _run(self) -> None:
        try:
            kwargs = dict(self._kwargs)
            if "task" in inspect.signature(self._fn).parameters:
                kwargs["task"] = self
            self.result = self._fn(*self._args, **kwargs)
        except BaseException as e:
            if not expected(e):  # a bug: keep the trace for the log and bug reports
                traceback.print_exc()
            self.error = user_message(e)
            self._ended.set()
            _emit(self.failed, self.error)
        else:
            self._ended.set()
            _emit(self.done, self.result)
        _emit(self.finished)

    @Slot()
    def _release(self) -> None:
        _LIVE.discard(self)


class Relay(QObject):
    """Calls a function on the UI thread with items handed to it from any thread (an app
    service's listener, e.g. the ModelManager's events)."""

    item = Signal(object)

    def __init__(self, fn: Callable[[Any], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.item.connect(fn, Qt.ConnectionType.QueuedConnection)

    def __call__(self, item: Any) -> None:
        _emit(self.item, item)


def _emit(signal: Any, *args: Any) -> None:
    """Emit from any thread; a source already deleted (the window closed while a worker ran
    on, e.g. at exit) has no one left to tell, so that is not an error."""
    try:
        signal.emit(*args)
    except RuntimeError as e:
        if "deleted" not in str(e):
            raise


def to_ui_thread(fn: Callable[[Any], None], parent: QObject | None = None) -> Relay:
    """A callable for any thread that runs `fn(item)` on the UI thread (create it there; keep
    it alive with `parent`)."""
    return Relay(fn, parent)


def expected(e: BaseException) -> bool:
    """Errors Locus raises on purpose with a message for the user (a model that does not fit, a
    file not found…): they are shown, not printed with a traceback."""
    if isinstance(e, OSError | MemoryError):
        return True
    root = type(e).__module__.split(".")[0]
    return root in ("app", "engine") and type(e).__name__.endswith("Error")


def user_message(e: BaseException) -> str:
    """A message a user can act on: the exception's own text, never a traceback."""
    text = str(e).strip()
    if isinstance(e, MemoryError):
        return "Out of memory: close other apps or choose a smaller model."
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"File not found: {e.filename}"
    return text or type(e).__name__


def run_in_background(
    fn: Callable[..., Any],
    *args: Any,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    on_event: Callable[[Any], None] | None = None,
    parent: QObject | None = None,
    **kwargs: Any,
) -> Task:
    """Run `fn(*args, **kwargs)` on a worker thread; callbacks run on the UI thread."""
    return _start(Task(fn, *args, **kwargs), on_event, on_done, on_error)


def _start(
    task: Task,
    on_event: Callable[[Any], None] | None,
    on_done: Callable[[Any], None] | None,
    on_error: Callable[[str], None] | None,
) -> Task:
    """Connect the callbacks (queued: they run on the UI thread) and start the task."""
    for signal, slot in ((task.event, on_event), (task.done, on_done), (task.failed, on_error)):
        if slot is not None:
            signal.connect(slot, Qt.ConnectionType.QueuedConnection)
    return task.start()


def stream_in_background(
    make: Callable[[], Iterable[Any]],
    *,
    on_event: Callable[[Any], None],
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> Task:
    """Iterate `make()` on a worker thread, delivering each item to `on_event` on the UI thread.

    `task.cancel()` calls `on_cancel` (on the caller's thread) so the producer can stop early,
    e.g. an engine handle's cancel(), which ends its stream with Done("cancelled").
    """

    def pump(task: Task) -> None:
        for item in make():
            task.emit_event(item)

    task = Task(pump)
    if on_cancel is not None:
        original = task.cancel

        def cancel() -> None:
            original()
            on_cancel()

        task.cancel = cancel  # type: ignore[method-assign]
    return _start(task, on_event, on_done, on_error)
