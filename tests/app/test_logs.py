"""Logs of an app started without a terminal go to a rotating file with crash and exception hooks;
macOS picks up the login shell's PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app import logs

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, log_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCUS_LOG_DIR": str(log_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_without_a_terminal_uncaught_errors_land_in_the_log(tmp_path):
    code = (
        "import threading\n"
        "from app.logs import setup_logging\n"
        "print(setup_logging())\n"  # stderr is a pipe here, as for a double-clicked app
        "t = threading.Thread(target=lambda: 1 / 0, name='worker-1'); t.start(); t.join()\n"
        "raise ValueError('boom in main')\n"
    )
    out = _run(code, tmp_path)
    assert out.returncode == 1
    assert out.stdout.strip() == str(tmp_path / "locus.log")
    text = (tmp_path / "locus.log").read_text()
    assert "uncaught exception in thread worker-1" in text and "ZeroDivisionError" in text
    assert "ValueError: boom in main" in text


def test_a_hard_crash_leaves_a_traceback(tmp_path):
    out = _run(
        "import faulthandler\nfrom app.logs import setup_logging\n"
        "setup_logging(to_file=True)\nfaulthandler._sigsegv()\n",
        tmp_path,
    )
    assert out.returncode != 0
    assert "Fatal Python error" in (tmp_path / "locus-crash.log").read_text()


def test_from_a_terminal_nothing_is_redirected(monkeypatch):
    assert logs.setup_logging(to_file=False) is None


def test_log_dir_per_platform(monkeypatch):
    monkeypatch.delenv("LOCUS_LOG_DIR", raising=False)
    assert logs.log_dir("darwin") == Path.home() / "Library" / "Logs" / "Locus"
    assert "locus" in str(logs.log_dir("linux")).lower()
    monkeypatch.setenv("LOCUS_LOG_DIR", "/x/y")
    assert logs.log_path() == Path("/x/y/locus.log")


def test_login_shell_path_goes_first_on_macos(tmp_path):
    shell = tmp_path / "fakesh"
    # rc files may print banners around the value: only what sits between the markers counts.
    shell.write_text(
        "#!/bin/sh\necho 'Welcome!'\nprintf '__LOCUS_PATH__/opt/homebrew/bin:/usr/bin__LOCUS_PATH__'\n"
    )
    shell.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin"}
    new = logs.apply_login_shell_path(system="darwin", env=env, shell=str(shell))
    assert new == env["PATH"] == "/opt/homebrew/bin:/usr/bin:/bin"
    assert logs.apply_login_shell_path(system="linux", env=env, shell=str(shell)) is None
    assert logs.login_shell_path(str(tmp_path / "missing")) is None


def test_a_real_login_shell_answers():
    path = logs.login_shell_path("/bin/sh")
    assert path and ("/usr/bin" in path or "/bin" in path)
