"""Process trees that tests start: each in its own process group, so the whole tree can be ended
(`mlx.launch` leaves its ranks behind when only it is killed, and a stopped rank ignores SIGTERM).

`popen` and `run` stand in for subprocess's; tests/conftest.py ends every group a test started
when the test ends, however it ends (groups a wider fixture started live on until exit), and at
exit or on SIGTERM/SIGHUP an interrupted run ends the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
from typing import Any

__all__ = ["adopt", "end_all", "end_group", "mark", "popen", "run"]

_GROUPS: dict[int, int] = {}  # process group id -> when it started (a serial number)
_LOCK = threading.Lock()
_SERIAL = [0]


def popen(cmd: Any, **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen in a new session (its own process group), remembered until ended."""
    kwargs["start_new_session"] = True
    proc = subprocess.Popen(cmd, **kwargs)
    adopt(proc.pid)
    return proc


def adopt(pgid: int) -> None:
    """Remember a group started otherwise (e.g. by pty.fork, whose child leads a new session)."""
    with _LOCK:
        _SERIAL[0] += 1
        _GROUPS[pgid] = _SERIAL[0]


def mark() -> int:
    """A point in time for `end_all(since=...)`."""
    with _LOCK:
        return _SERIAL[0]


def run(
    cmd: Any, *, input: Any = None, timeout: float | None = None, check: bool = False, **kwargs: Any
) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group; the whole group is ended when it returns, times
    out or is interrupted (subprocess.run itself kills only the first process)."""
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with popen(cmd, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        finally:
            end_group(proc.pid)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def end_group(pgid: int) -> None:
    """SIGCONT (a stopped process would not die until resumed) then SIGKILL to the group."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    with _LOCK:
        _GROUPS.pop(pgid, None)


def end_all(since: int = 0) -> None:
    """End every group started after `since` (a `mark()`) and not yet ended."""
    with _LOCK:
        groups = [g for g, n in _GROUPS.items() if n > since]
    for pgid in groups:
        end_group(pgid)


def _on_signal(signum: int, frame: Any) -> None:
    end_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(end_all)
if threading.current_thread() is threading.main_thread():
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) is signal.SIG_DFL:  # a killed test run ends its trees too
            signal.signal(_sig, _on_signal)
