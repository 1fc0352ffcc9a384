"""Where a double-clicked Locus writes what happened, and the login shell's PATH on macOS.

An app started from the Finder or the Dock has no terminal (stderr goes nowhere), so its logs go
to a rotating file with faulthandler and both excepthooks attached; Help → Show Log opens
`log_path()`. From a terminal, logs stay on stderr.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["apply_login_shell_path", "log_dir", "log_path", "login_shell_path", "setup_logging"]

_MARK = "__LOCUS_PATH__"
_installed: dict[str, Any] = {}


def log_dir(system: str = sys.platform) -> Path:
    """~/Library/Logs/Locus on macOS, the platform's user log dir elsewhere; LOCUS_LOG_DIR wins."""
    if os.environ.get("LOCUS_LOG_DIR"):
        return Path(os.environ["LOCUS_LOG_DIR"])
    if system == "darwin":
        return Path.home() / "Library" / "Logs" / "Locus"
    from platformdirs import user_log_dir

    return Path(user_log_dir("locus"))


def log_path() -> Path:
    """The log file Help → Show Log opens (it may not exist yet)."""
    return log_dir() / "locus.log"


def _from_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def setup_logging(*, to_file: bool | None = None, level: int = logging.INFO) -> Path | None:
    """Log to a rotating file when not started from a terminal (or when `to_file`); the path.

    Also dumps fatal signals' tracebacks there (faulthandler) and logs uncaught exceptions in the
    main and worker threads. Idempotent.
    """
    if to_file is None:
        to_file = not _from_terminal()
    if not to_file:
        return None
    path = log_path()
    if _installed.get("path") == path:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 * 1024**2, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))
    # faulthandler needs a real file descriptor that stays open for the process's life.
    fault = open(path.with_name("locus-crash.log"), "a", encoding="utf-8")
    faulthandler.enable(fault)
    if sys.stderr is None or sys.stdout is None:  # a windowed app: print() must not fail
        stream = open(path.with_name("locus-stdout.log"), "a", encoding="utf-8", buffering=1)
        sys.stdout = sys.stdout or stream
        sys.stderr = sys.stderr or stream
    log = logging.getLogger("locus")
    prev_hook, prev_thread_hook = sys.excepthook, threading.excepthook

    def excepthook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
        log.critical("uncaught exception", exc_info=(tp, value, tb))
        prev_hook(tp, value, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        log.critical(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
        prev_thread_hook(args)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    _installed.update(path=path, handler=handler, fault=fault)
    log.info("Locus started; logging to %s", path)
    return path


def login_shell_path(
    shell: str | None = None, *, timeout: float = 5.0, run: Callable[..., Any] = subprocess.run
) -> str | None:
    """PATH as the user's login shell sets it (Homebrew's /opt/homebrew/bin, …), or None."""
    shell = shell or os.environ.get("SHELL") or "/bin/zsh"
    try:
        r = run(
            [shell, "-l", "-i", "-c", f'printf "{_MARK}%s{_MARK}" "$PATH"'],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = r.stdout or ""
    # rc files may print banners: take what sits between the markers.
    parts = out.split(_MARK)
    return parts[1] if len(parts) >= 3 and parts[1] else None


def apply_login_shell_path(
    *, system: str = sys.platform, env: dict[str, str] | None = None, shell: str | None = None
) -> str | None:
    """On macOS, put the login shell's PATH first (keeping the rest) so agent commands find the
    tools a Terminal would; the new PATH, or None when nothing changed."""
    if system != "darwin":
        return None
    env = os.environ if env is None else env
    login = login_shell_path(shell)
    if not login:
        return None
    seen: list[str] = []
    for p in login.split(os.pathsep) + env.get("PATH", "").split(os.pathsep):
        if p and p not in seen:
            seen.append(p)
    new = os.pathsep.join(seen)
    if new == env.get("PATH"):
        return None
    env["PATH"] = new
    return new
