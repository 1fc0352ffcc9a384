"""`locus agent` end to end with --replay: a real git repository, real pytest, real undo."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from .helpers import answer, call, git_state, make_project, tree_bytes

# Plugins off: the project's tests need none, and loading them costs seconds.
PYTEST = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q -p no:cacheprovider"
FIX = [
    call("list_dir", "Let me look at the layout."),
    call("search", pattern=r"def add", glob="*.py"),
    call("read_file", path="calc/__init__.py"),
    call(
        "edit_file",
        path="calc/__init__.py",
        old_string="    return a - b",
        new_string="    return a + b",
    ),
    call("write_file", path="calc/notes.txt", content="add() subtracted; fixed\n"),
    call("run_command", command="rm OLD.txt"),
    call("run_command", command=PYTEST + " tests/test_calc.py::test_add"),
    call("run_command", command=PYTEST),
    answer("Fixed add() in calc/__init__.py; the tests pass."),
]


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _locus(*args: str, data: Path, cwd: Path, real: bool = False) -> _Result:
    """`locus agent ARGS`: in this process (fast), or as a real subprocess when `real`."""
    env = {**os.environ, "LOCUS_DATA_DIR": str(data), "NO_COLOR": "1"}
    if real:
        p = subprocess.run(
            [sys.executable, "-m", "app.cli", "agent", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return _Result(p.returncode, p.stdout, p.stderr)
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("LOCUS_DATA_DIR")
    os.environ["LOCUS_DATA_DIR"] = str(data)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["agent", *args])
    finally:
        os.environ["LOCUS_DATA_DIR"] = old or ""
    return _Result(code, out.getvalue(), err.getvalue())


def test_fix_failing_test_then_diff_and_undo(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    before_files = tree_bytes(proj)
    before_git = git_state(proj)
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(o) + "\n" for o in FIX))
    data = tmp_path / "data"

    r = _locus(
        str(proj), "fix the failing test", "--replay", str(replay), "--yes", "--json", data=data, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "done"
    assert events[-1]["status"] == "answered" and events[-1]["steps"] == len(FIX)
    calls = [e["name"] for e in events if e["type"] == "tool_call"]
    assert calls == [
        "list_dir",
        "search",
        "read_file",
        "edit_file",
        "write_file",
        "run_command",
        "run_command",
        "run_command",
    ]
    results = [e for e in events if e["type"] == "tool_result"]
    assert all(e["ok"] for e in results), results
    assert "calc/__init__.py" in results[0]["content"] and "build/" not in results[0]["content"]
    assert "calc/__init__.py:4: def add(a, b):" in results[1]["content"]
    assert "1 passed" in results[-2]["content"]
    assert "2 passed" in results[-1]["content"]  # the fix works: the whole suite passes now
    diffs = [e for e in events if e["type"] == "diff"]
    assert [f["path"] for d in diffs for f in d["files"]] == ["calc/__init__.py", "calc/notes.txt", "OLD.txt"]
    assert "+    return a + b" in diffs[0]["patch"]

    # The project is fixed, and the user's own repository did not see any of it.
    assert (proj / "calc" / "notes.txt").exists() and not (proj / "OLD.txt").exists()
    assert git_state(proj) == before_git

    d = _locus(str(proj), "--diff", "--steps", "3", data=data, cwd=tmp_path)
    assert d.returncode == 0, d.stderr
    assert "-    return a - b" in d.stdout and "+add() subtracted; fixed" in d.stdout
    assert "deleted file mode" in d.stdout

    u = _locus(str(proj), "--undo", "--steps", "3", data=data, cwd=tmp_path)
    assert u.returncode == 0, u.stderr
    assert "undid step 1" in u.stdout
    assert tree_bytes(proj) == before_files  # exact bytes, created file gone, deleted one back
    assert git_state(proj) == before_git

    again = _locus(str(proj), "--undo", data=data, cwd=tmp_path)
    assert again.returncode == 1 and "nothing to undo" in again.stderr


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = _locus(str(tmp_path / "missing"), "task", "--replay", "x", data=data, cwd=tmp_path)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = _locus(str(tmp_path), "task", data=data, cwd=tmp_path)
    assert r.returncode == 1 and "--replay" in r.stderr
    r = _locus(str(tmp_path), "task", "--replay", str(tmp_path / "nope.jsonl"), data=data, cwd=tmp_path)
    assert r.returncode == 1 and "replay file" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    r = _locus(str(tmp_path), "task", "--replay", str(bad), data=data, cwd=tmp_path)
    assert r.returncode == 1 and "bad.jsonl:1" in r.stderr
    r = _locus(str(tmp_path), data=data, cwd=tmp_path)
    assert r.returncode == 1 and "give a task" in r.stderr


def test_headless_without_yes_rejects_edits_and_the_model_sees_why(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    before = tree_bytes(proj)
    replay = tmp_path / "r.jsonl"
    outs = [call("write_file", path="x.txt", content="hi"), answer("could not write")]
    replay.write_text("".join(json.dumps(o) + "\n" for o in outs))
    r = _locus(str(proj), "write x", "--replay", str(replay), "--json", data=tmp_path / "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = next(json.loads(x) for x in r.stdout.splitlines() if '"tool_result"' in x)
    assert not res["ok"] and "--yes" in res["content"]
    assert tree_bytes(proj) == before


def test_step_limit_then_resume_last_and_list_runs(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    data = tmp_path / "data"
    r1 = tmp_path / "r1.jsonl"
    r1.write_text("".join(json.dumps(o) + "\n" for o in [call("list_dir"), call("list_dir")]))
    r = _locus(str(proj), "explore", "--replay", str(r1), "--max-steps", "1", data=data, cwd=tmp_path)
    assert r.returncode == 3 and "step_limit after 1 steps" in r.stderr and "--resume" in r.stderr
    r2 = tmp_path / "r2.jsonl"
    r2.write_text(json.dumps(answer("It is a calculator.")) + "\n")
    r = _locus(
        str(proj),
        "and what is it?",
        "--resume",
        "last",
        "--replay",
        str(r2),
        "--json",
        data=data,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert events[0]["resumed"] is True and events[-1]["answer"] == "It is a calculator."
    assert events[-1]["steps"] == 2
    runs = _locus(str(proj), "--runs", "--json", data=data, cwd=tmp_path)
    rows = [json.loads(x) for x in runs.stdout.splitlines()]
    assert [(x["status"], x["steps"], x["task"]) for x in rows] == [("answered", 2, "explore")]
    r = _locus(str(proj), "--resume", "nope", "--replay", str(r2), data=data, cwd=tmp_path)
    assert r.returncode == 1 and "no agent run 'nope'" in r.stderr


def test_terminal_approval_prompt(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from app.agent import ApprovalRequest
    from app.cli_agent import _ask_terminal

    req = ApprovalRequest(
        "c1",
        "run_command",
        {"command": "python -m pytest -q"},
        "run: pytest",
        command="python -m pytest -q",
        sandboxed=False,
        unsandboxed_by_choice=True,
    )
    cases = {
        "y\n": ("approve", ""),
        "what\nn\ntoo slow\n": ("reject", "too slow"),
        "a\n": ("allow_tool", ""),
        "p\n": ("allow_prefix", ""),
        "": ("reject", None),
    }
    for typed, (action, reason) in cases.items():
        monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            d = _ask_terminal(req, threading.Event())
        assert d.action == action, typed
        if reason is not None:
            assert d.reason == reason
        assert "full permissions" in err.getvalue() and "python -m pytest" in err.getvalue()
    # A broken sandbox: only yes-once or no; "always" is not offered and is not taken.
    broken = ApprovalRequest(
        "c2", "run_command", {"command": "make"}, "run: make", command="make", sandboxed=False
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\np\ny\n"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        d = _ask_terminal(broken, threading.Event())
    assert d.action == "approve" and "always" not in err.getvalue()
