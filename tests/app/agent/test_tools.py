"""The tools on a real directory: listing, reading, searching, editing, writing, commands."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from app.agent import Limits, ProjectRoot, scrub_env
from app.agent.sandbox import Sandbox, detect_sandbox, run_command
from app.agent.tools import Toolbox, ToolError
from app.agent.watch import FileTracker


def _tb(root: Path, **limits: object) -> Toolbox:
    return Toolbox(
        ProjectRoot(root), FileTracker(), Sandbox("none"), limits=Limits(**limits), use_ripgrep=False
    )


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    p = tmp_path / "p"
    (p / "src" / "pkg").mkdir(parents=True)
    (p / "src" / "pkg" / "a.py").write_text("def f():\n    return 1\n\n\ndef g():\n    return 1\n")
    (p / "src" / "b.txt").write_text("hello\nworld\n")
    (p / ".gitignore").write_text("*.log\nbuild/\n!keep.log\n")
    (p / "x.log").write_text("ignored\n")
    (p / "keep.log").write_text("kept\n")
    (p / "build").mkdir()
    (p / "build" / "gen.py").write_text("def f(): pass\n")
    (p / "node_modules" / "dep").mkdir(parents=True)
    (p / "node_modules" / "dep" / "i.js").write_text("def f\n")
    (p / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (p / "blob.dat2").write_bytes(b"\0\1\2binary")
    return p


def test_list_dir_respects_gitignore_and_skips(proj: Path) -> None:
    out = _tb(proj).list_dir({})
    assert "src/pkg/" in out and "src/b.txt" in out and "keep.log" in out
    assert "x.log" not in out and "build" not in out and "logo.png" not in out
    assert "node_modules/ not expanded" in out and "1 binary file not shown" in out
    sub = _tb(proj).list_dir({"path": "src", "depth": 1})
    assert "src/pkg/" in sub and "src/pkg/a.py" not in sub
    with pytest.raises(ToolError, match="not a directory"):
        _tb(proj).list_dir({"path": "src/b.txt"})
    with pytest.raises(ToolError, match="no such directory"):
        _tb(proj).list_dir({"path": "nope"})
    with pytest.raises(ToolError, match="integer"):
        _tb(proj).list_dir({"depth": "deep"})


def test_list_dir_caps_entries_and_big_dirs(proj: Path) -> None:
    big = proj / "many"
    big.mkdir()
    for i in range(30):
        (big / f"f{i:02}.txt").write_text("x")
    out = _tb(proj, dir_expand=20).list_dir({})
    assert "many/ not expanded (30 entries)" in out
    out = _tb(proj, list_entries=5).list_dir({"path": "many"})
    assert "more entries not shown" in out and out.count(".txt") == 5


def test_read_file_ranges_and_caps(proj: Path) -> None:
    (proj / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    tb = _tb(proj, read_lines=10)
    out = tb.read_file({"path": "long.txt"})
    assert out.startswith("[lines 1-10 of 100]") and "    10\tline 10" in out
    assert "continue with start_line=11" in out
    out = tb.read_file({"path": "long.txt", "start_line": "95", "end_line": 200})
    assert "    95\tline 95" in out and "   100\tline 100" in out and "continue" not in out
    with pytest.raises(ToolError, match="past the end"):
        tb.read_file({"path": "long.txt", "start_line": 500})
    assert "binary file" in tb.read_file({"path": "blob.dat2"})
    (proj / "empty.txt").write_text("")
    assert "is empty" in tb.read_file({"path": "empty.txt"})
    (proj / "wide.txt").write_text("y" * 5000)
    assert "3000 more characters" in _tb(proj, line_chars=2000).read_file({"path": "wide.txt"})
    with pytest.raises(ToolError, match="read limit"):
        _tb(proj, read_bytes=10).read_file({"path": "long.txt"})
    with pytest.raises(ToolError, match="no such file"):
        tb.read_file({"path": "missing.py"})
    with pytest.raises(ToolError, match="directory"):
        tb.read_file({"path": "src"})


def test_read_file_bad_encoding(proj: Path) -> None:
    (proj / "latin.txt").write_bytes("caf\xe9 ok\n".encode("latin-1"))
    tb = _tb(proj)
    out = tb.read_file({"path": "latin.txt"})
    assert "not valid UTF-8" in out and "caf\ufffd ok" in out
    with pytest.raises(ToolError, match="not valid UTF-8"):
        tb.prepare("edit_file", {"path": "latin.txt", "old_string": "ok", "new_string": "k"})


def test_search_python_fallback(proj: Path) -> None:
    tb = _tb(proj)
    out = tb.search({"pattern": r"def \w+"})
    assert "src/pkg/a.py:1: def f():" in out and "src/pkg/a.py:5: def g():" in out
    assert "build/" not in out and "node_modules" not in out
    assert "No matches" in tb.search({"pattern": "HELLO"})
    assert "src/b.txt:1: hello" in tb.search({"pattern": "HELLO", "ignore_case": True})
    assert "b.txt" not in tb.search({"pattern": "hello", "glob": "*.py"})
    assert tb.search({"pattern": "world", "path": "src/b.txt"}) == "src/b.txt:2: world"
    with pytest.raises(ToolError, match="invalid regular expression"):
        tb.search({"pattern": "(unclosed"})
    with pytest.raises(ToolError, match="pattern"):
        tb.search({})
    out = _tb(proj, search_results=1).search({"pattern": "return"})
    assert "1 more matches not shown" in out


def test_edit_file_exact_unique(proj: Path) -> None:
    tb = _tb(proj)
    args = {"path": "src/pkg/a.py", "old_string": "return 1", "new_string": "return 2"}
    with pytest.raises(ToolError, match="not been read"):
        tb.prepare("edit_file", args)
    tb.read_file({"path": "src/pkg/a.py"})
    with pytest.raises(ToolError, match=r"occurs 2 times .* lines 2, 6"):
        tb.prepare("edit_file", args)
    with pytest.raises(ToolError, match="not found"):
        tb.prepare("edit_file", {**args, "old_string": "return 3"})
    with pytest.raises(ToolError, match="ignoring whitespace"):
        tb.prepare("edit_file", {**args, "old_string": "def f():\n  return 1"})
    with pytest.raises(ToolError, match="line numbers"):
        tb.prepare("edit_file", {**args, "old_string": "     1\tdef f():"})
    with pytest.raises(ToolError, match="the same"):
        tb.prepare("edit_file", {**args, "new_string": "return 1"})
    with pytest.raises(ToolError, match="use write_file"):
        tb.prepare("edit_file", {**args, "path": "new.py"})
    g = {"old_string": "def g():\n    return 1", "new_string": "def g():\n    return 2"}
    plan = tb.prepare("edit_file", {**args, **g})
    assert "-    return 1" in (plan.diff or "") and plan.paths == ["src/pkg/a.py"]
    text, _details = tb.apply(plan)
    assert "Edited src/pkg/a.py" in text and "     6\t    return 2" in text
    assert (proj / "src/pkg/a.py").read_text().endswith("def g():\n    return 2\n")
    # replace_all, on the tracker's fresh view after our own write
    tb.apply(
        tb.prepare(
            "edit_file", {**args, "old_string": "return", "new_string": "yield", "replace_all": "true"}
        )
    )
    assert (proj / "src/pkg/a.py").read_text().count("yield") == 2


def test_edit_keeps_crlf_and_bom(proj: Path) -> None:
    (proj / "w.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")
    tb = _tb(proj)
    tb.read_file({"path": "w.txt"})
    tb.apply(tb.prepare("edit_file", {"path": "w.txt", "old_string": "one\ntwo", "new_string": "one\nTWO"}))
    assert (proj / "w.txt").read_bytes() == b"\xef\xbb\xbfone\r\nTWO\r\n"


def test_write_file(proj: Path) -> None:
    tb = _tb(proj)
    text, d = tb.apply(tb.prepare("write_file", {"path": "new/deep/n.py", "content": "a\nb\n"}))
    assert d["created"] and "Created new/deep/n.py (2 lines" in text
    assert (proj / "new/deep/n.py").read_text() == "a\nb\n"
    with pytest.raises(ToolError, match="not been read"):
        tb.prepare("write_file", {"path": "src/b.txt", "content": "x"})
    tb.read_file({"path": "src/b.txt"})
    plan = tb.prepare("write_file", {"path": "src/b.txt", "content": "x"})
    assert plan.summary == "overwrite src/b.txt"
    (proj / "src/b.txt").write_text("changed while the approval card was open\n")
    with pytest.raises(ToolError, match="changed while waiting"):
        tb.apply(plan)
    with pytest.raises(ToolError, match="directory"):
        tb.prepare("write_file", {"path": "src", "content": "x"})
    with pytest.raises(ToolError, match="limit"):
        _tb(proj, write_bytes=3).prepare("write_file", {"path": "z", "content": "four"})
    with pytest.raises(ToolError, match="must be a string"):
        tb.prepare("write_file", {"path": "z", "content": 5})


def test_run_command_exit_code_and_cwd(proj: Path) -> None:
    tb = _tb(proj)
    text, d = tb.apply(tb.prepare("run_command", {"command": "pwd; echo err >&2; exit 3"}))
    assert d["exit_code"] == 3 and text.startswith("Exit code: 3")
    assert str(proj.resolve()) in text and "err" in text
    with pytest.raises(ToolError, match="empty"):
        tb.prepare("run_command", {"command": "  "})


def test_run_command_timeout_kills_the_process_group(proj: Path) -> None:
    t0 = time.monotonic()
    res = run_command(
        "sleep 30 & echo started; wait", proj, sandbox=Sandbox("none"), timeout=1, output_cap=1000
    )
    assert res.timed_out and res.exit_code is None and "started" in res.output
    assert time.monotonic() - t0 < 10


def test_run_command_cancel(proj: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    res = run_command("sleep 30", proj, sandbox=Sandbox("none"), timeout=60, output_cap=100, cancel=cancel)
    assert res.cancelled and res.elapsed < 10


def test_run_command_output_cap_keeps_head_and_tail(proj: Path) -> None:
    cmd = f"{sys.executable} -c \"print('HEAD'); print('x' * 100000); print('TAIL')\""
    res = run_command(cmd, proj, sandbox=Sandbox("none"), timeout=30, output_cap=1000)
    assert res.truncated and res.total_chars > 100000 and len(res.output) < 1200
    assert res.output.startswith("HEAD") and res.output.rstrip().endswith("TAIL")
    assert "bytes of output omitted" in res.output


def test_environment_scrubbed(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "OPENAI_API_KEY",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "MY_PASSWORD",
        "HF_TOKEN",
        "GIT_DIR",
        "SSH_AUTH_SOCK",
    ):
        monkeypatch.setenv(k, "leak-" + k)
    monkeypatch.setenv("HARMLESS_SETTING", "fine")
    env = scrub_env()
    assert not any(v.startswith("leak-") for v in env.values())
    assert "HARMLESS_SETTING" not in env and env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["PATH"] == os.environ["PATH"]
    assert scrub_env(allow=["HARMLESS_SETTING"])["HARMLESS_SETTING"] == "fine"
    res = run_command(
        "env", proj, sandbox=Sandbox("none"), timeout=30, output_cap=100000, env_allow=["HARMLESS_SETTING"]
    )
    assert "leak-" not in res.output and "HARMLESS_SETTING=fine" in res.output


def test_sandbox_detection() -> None:
    none = detect_sandbox("none")
    assert not none.active and "needs your approval" in none.describe()
    auto = detect_sandbox("auto")
    if sys.platform.startswith("linux") and auto.kind == "none":
        assert "bwrap" in auto.reason  # says why: missing, or not working here
    argv = Sandbox("bwrap", "/usr/bin/bwrap").wrap("true", Path("/p"))
    assert "--unshare-net" in argv and argv[-3:] == ["/bin/sh", "-c", "true"]
    assert "--unshare-net" not in Sandbox("bwrap").wrap("true", Path("/p"), allow_network=True)
    prof = Sandbox("sandbox-exec").wrap("true", Path("/p"))[2]
    assert "(deny file-write*)" in prof and "(deny network*)" in prof and '"/p"' in prof


@pytest.mark.skipif(detect_sandbox("auto").kind != "bwrap", reason="bwrap not installed/working")
def test_bwrap_confines_writes(proj: Path, tmp_path: Path) -> None:
    sb = detect_sandbox("auto")
    outside = tmp_path / "outside.txt"
    run_command(f"echo hi > {outside}; echo in > inside.txt", proj, sandbox=sb, timeout=30, output_cap=10000)
    assert not outside.exists() and (proj / "inside.txt").exists()


def test_bwrap_keeps_tools_under_tmp_visible(proj: Path, monkeypatch) -> None:
    # A venv or checkout under /tmp must survive the sandbox's private /tmp (read-only).
    tools = Path(tempfile.mkdtemp(prefix="locus-tools-", dir="/tmp"))
    try:
        (tools / "hello-tool").write_text("#!/bin/sh\necho tool-ran\n")
        (tools / "hello-tool").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
        argv = Sandbox("bwrap", "/usr/bin/bwrap").wrap("true", proj)
        i = argv.index(str(tools.resolve()))
        assert argv[i - 1] == "--ro-bind" and argv.index("--tmpfs") < i < argv.index("--bind")
        if detect_sandbox("auto").kind == "bwrap":
            res = run_command(
                "hello-tool; touch /tmp/x", proj, sandbox=detect_sandbox("auto"), timeout=30, output_cap=10000
            )
            assert "tool-ran" in res.output
            assert not (tools / "x").exists()
    finally:
        shutil.rmtree(tools, ignore_errors=True)


def test_process_group_is_killed_even_when_shell_exits(proj: Path) -> None:
    marker = proj / "late.txt"
    res = run_command(
        f"(sleep 1; touch {marker}) &", proj, sandbox=Sandbox("none"), timeout=30, output_cap=100
    )
    assert res.exit_code == 0
    time.sleep(1.5)
    assert not marker.exists()  # the background child did not outlive the command
    assert os.path.isdir(proj)


@pytest.mark.skipif(shutil.which("rg") is None, reason="ripgrep not installed")
def test_search_ripgrep_agrees_with_python(proj: Path) -> None:
    rg = Toolbox(ProjectRoot(proj), FileTracker(), Sandbox("none"), use_ripgrep=True)
    assert rg.rg is not None
    for args in (
        {"pattern": r"def \w+"},
        {"pattern": "HELLO", "ignore_case": True},
        {"pattern": "return", "glob": "*.py"},
    ):
        assert sorted(rg.search(args).splitlines()) == sorted(_tb(proj).search(args).splitlines())
