"""Ctrl-C in `locus agent` as a user presses it: a real pseudo-terminal, the key sent as ^C
while a command runs (issue 31)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import proctree

from .helpers import answer, call, make_project

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")


def _replay(tmp_path: Path) -> Path:
    path = tmp_path / "replay.jsonl"
    outs = [call("run_command", command="sleep 30", timeout=120), answer("done")]
    path.write_text("".join(json.dumps(o) + "\n" for o in outs))
    return path


def _argv(proj: Path, replay: Path, *flags: str) -> list[str]:
    base = [sys.executable, "-m", "app.cli", "agent", str(proj)]
    return [*base, "task", "--replay", str(replay), "--yes", "--no-sandbox", *flags]


def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float) -> bool:
    """Read the terminal into `seen` until `marker` shows up (False at the timeout or EOF)."""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                return False
            if not data:
                return False
            seen += data
    return marker in seen


def _runs(proj: Path, env: dict[str, str]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "agent", str(proj), "--runs", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_ctrl_c_during_a_command_stops_with_130(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"}
    argv = _argv(proj, _replay(tmp_path))
    pid, fd = pty.fork()  # the child: a new session with the pty as its controlling terminal
    if pid == 0:
        os.chdir(REPO)
        os.execve(argv[0], argv, env)
    proctree.adopt(pid)  # ended by the fixture however the test ends
    seen = bytearray()
    try:
        assert _read_until(fd, b"run_command(", seen, 60), seen.decode(errors="replace")
        time.sleep(1.0)  # the command is running
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground group
        _read_until(fd, b"\x00never", seen, 30)  # read to EOF so the child never blocks on output
        _, status = os.waitpid(pid, 0)
    finally:
        proctree.end_group(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text, text
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert [(r["status"], r["steps"]) for r in _runs(proj, env)] == [("stopped", 1)]


def test_killed_run_is_listed_with_the_step_that_ran(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data")}
    p = proctree.popen(
        _argv(proj, _replay(tmp_path), "--json"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None
    for line in p.stdout:
        if '"tool_call"' in line:
            break
    time.sleep(1.0)
    proctree.end_group(p.pid)  # a crash while the command runs
    p.wait(10)
    assert [(r["status"], r["steps"]) for r in _runs(proj, env)] == [("interrupted", 1)]
