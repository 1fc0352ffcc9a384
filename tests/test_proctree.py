"""A process tree a test starts ends with the test, whatever ends it: a pass, a failure, Ctrl-C or
SIGTERM to pytest (issue 31: an interrupted run left `mlx.launch` spinning for 15 minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INNER = """
import os, signal, time
from tests import proctree

def test_tree():
    proctree.popen(["sh", "-c", "sleep 300 & echo $! > {pidfile}; wait"])
    while not os.path.exists("{pidfile}") or not open("{pidfile}").read().strip():
        time.sleep(0.05)
    {ending}
"""
ENDINGS = {
    "pass": "pass",
    "fail": "assert False",
    "ctrl-c": "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)",
    "sigterm": "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)",
}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie no one reaps (PID 1 in a container) is dead


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_tests_process_tree_ends_with_it(ending: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    (tmp_path / "test_inner.py").write_text(INNER.format(pidfile=pidfile, ending=ENDINGS[ending]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plugins = ["-p", "tests.conftest", "-p", "no:cacheprovider"]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = {"pass": 0, "fail": 1, "ctrl-c": 2, "sigterm": -signal.SIGTERM}[ending]
    assert r.returncode == expected, r.stdout[-2000:] + r.stderr[-2000:]
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the test's grandchild {pid} outlived a test that ended by {ending}")
