"""Command prefixes approve only simple commands, checked against what real shells do; and every
approval, diff and tool line is shown with its control characters escaped (CLI and `locus agent`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.agent import ApprovalRequest
from app.agent.approvals import Approvals, default_prefix, prefix_matches, simple_command, valid_prefix
from app.textsafe import has_hidden, show_block, show_line, show_prose

from .helpers import answer, call, make_project

REPO = Path(__file__).resolve().parents[3]

# Each would run more than `pytest` with arguments, or is not plainly one program.
NOT_SIMPLE = [
    "pytest x#;touch pwned",
    "pytest #; touch pwned",
    "# pytest",
    "pytest; touch pwned",
    "pytest ;touch pwned",
    "pytest && touch pwned",
    "pytest || touch pwned",
    "pytest & touch pwned",
    "pytest | sh",
    "pytest|sh",
    "pytest > out",
    "pytest 2>&1",
    "pytest < /etc/passwd",
    "pytest >| f",
    "pytest $(touch pwned)",
    'pytest "$(touch pwned)"',
    "pytest `touch pwned`",
    'pytest "`touch pwned`"',
    "pytest ${IFS}x",
    "pytest $IFS",
    'pytest "$HOME"',
    "pytest $((1+1))",
    "pytest\\\ntouch pwned",
    "pytest x\ntouch pwned",
    "pytest x\rtouch pwned",
    "pytest\ttouch",
    "pytest x\x1b[2K",
    "pytest \u202ex",
    "py\u200btest",
    "pytest\u00a0x",
    "FOO=1 pytest",
    "LD_PRELOAD=/tmp/evil.so pytest",
    "PATH=.:$PATH pytest",
    "'A'=1 pytest",
    "pytest <<EOF",
    "pytest <<<x",
    "(pytest)",
    "{ pytest; }",
    "! pytest",
    "if pytest",
    "time pytest",
    "pytest <(touch pwned)",
    "pytest 'unterminated",
    'pytest "unterminated',
    "pytest x\\",
    "",
    "   ",
]

# (command, the words sh gives it)
SIMPLE = [
    ("pytest", ["pytest"]),
    ("pytest -q tests/", ["pytest", "-q", "tests/"]),
    ("  pytest   -q  ", ["pytest", "-q"]),
    ("pytest x#y", ["pytest", "x#y"]),
    ("pytest ''#x", ["pytest", "#x"]),
    ("pytest '#x'", ["pytest", "#x"]),
    ("pytest \\#x", ["pytest", "#x"]),
    ("pytest 'a b' \"c d\" e\\ f", ["pytest", "a b", "c d", "e f"]),
    ("pytest 'it'\\''s'", ["pytest", "it's"]),
    ("pytest '$(touch pwned)'", ["pytest", "$(touch pwned)"]),
    ("pytest '`x`;|&<>'", ["pytest", "`x`;|&<>"]),
    ('pytest "\\$x" "\\`" "\\"" "\\\\"', ["pytest", "$x", "`", '"', "\\"]),
    ('pytest "\\a\\n"', ["pytest", "\\a\\n"]),
    ("pytest \\;touch", ["pytest", ";touch"]),
    ("pytest ''", ["pytest", ""]),
    ("pytest a=b", ["pytest", "a=b"]),
    ("pytest -k 'not slow'", ["pytest", "-k", "not slow"]),
    ("git log HEAD^ --format=%H", ["git", "log", "HEAD^", "--format=%H"]),
    ("'py'test", ["pytest"]),
    ("pytest 'é ✓'", ["pytest", "é ✓"]),
]


def test_not_simple_commands_are_refused_and_never_match() -> None:
    for cmd in NOT_SIMPLE:
        assert simple_command(cmd) is None, repr(cmd)
        assert not prefix_matches("pytest", cmd), repr(cmd)
        assert default_prefix(cmd) == "", repr(cmd)


def test_simple_commands_split_as_written() -> None:
    for cmd, words in SIMPLE:
        parsed = simple_command(cmd)
        assert parsed is not None and list(parsed.words) == words, repr(cmd)
        assert all(parsed.literal), repr(cmd)


def test_prefixes_match_whole_literal_words() -> None:
    assert prefix_matches("pytest", "pytest -q") and prefix_matches("git status", "git status -s")
    assert prefix_matches("pytest", "'pytest' x")  # the same program, quoted
    assert not prefix_matches("pytest", "pytest-evil")
    assert not prefix_matches("git status", "git stash")
    assert not prefix_matches("py*", "py* x")  # a glob prefix would run whatever it matches
    assert not prefix_matches("git s[t]atus", "git s[t]atus")
    assert not prefix_matches("'py*'", "py* x")  # quoted in the prefix, a glob in the command
    assert not prefix_matches("~/bin/t", "~/bin/t x")
    assert prefix_matches("pytest", "pytest tests/*.py")  # arguments may be globs
    assert not valid_prefix("pytest;") and not valid_prefix("py*") and valid_prefix("python -m pytest")


def test_default_prefix() -> None:
    assert default_prefix("git status -s") == "git status"
    assert default_prefix("python -m pytest -q") == "python -m pytest"
    assert default_prefix("pytest tests/") == "pytest"
    assert default_prefix("pytest 'a b'") == "pytest"
    assert default_prefix("npm test") == "npm test"
    for runner in ("bash -c 'rm -rf x'", "env X=1 pytest", "sudo make", "xargs rm", "/bin/sh x.sh"):
        assert default_prefix(runner) == "", runner
    assert default_prefix("pytest x#;touch pwned") == ""


def _shells() -> list[list[str]]:
    shells = [["/bin/sh", "-c"]]
    for name in ("dash", "bash"):
        exe = shutil.which(name)
        if exe:
            shells.append([exe, "-c"])
    if shutil.which("bash"):
        shells.append([shutil.which("bash") or "bash", "--posix", "-c"])  # macOS's /bin/sh
    return shells


def _sh_words(shell: list[str], cmd: str, cwd: Path) -> tuple[list[str], str]:
    """The argv the shell gives the words of `cmd` (globbing and bash's braces off), and stderr."""
    script = ("set -f; set +B 2>/dev/null; " if "bash" in shell[0] else "set -f; ") + "printf '%s\\0' "
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home-of-nobody"}
    p = subprocess.run([*shell, script + cmd], cwd=cwd, env=env, capture_output=True, timeout=10)
    out = p.stdout.decode("utf-8", "surrogateescape")
    return out.split("\0")[:-1], p.stderr.decode("utf-8", "replace")


def _check_against_shells(cmd: str, cwd: Path) -> None:
    parsed = simple_command(cmd)
    assert parsed is not None
    for shell in _shells():
        words, err = _sh_words(shell, cmd, cwd)
        assert not err and len(words) == len(parsed.words), (shell, cmd, words, err)
        for got, want, literal in zip(words, parsed.words, parsed.literal, strict=True):
            assert got == want or not literal, (shell, cmd, words, parsed.words)
    assert not list(cwd.iterdir()), f"{cmd!r} wrote a file"


def test_simple_commands_are_split_like_real_shells(tmp_path: Path) -> None:
    for cmd, _ in SIMPLE:
        _check_against_shells(cmd, tmp_path)


def test_random_commands_accepted_only_as_real_shells_split_them(tmp_path: Path) -> None:
    # Random strings of the characters that matter to sh; whatever is accepted must split alike.
    alphabet = [*"ab  '\"\\#=*?[]{},~!%^:/-", "a", "b", "x#", "\\\\", "'\\''", *";$|&()<>`"]
    rng = random.Random(20240611)
    accepted = 0
    for i in range(800):
        cmd = ("t " if i % 2 else "") + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        if simple_command(cmd) is not None:
            accepted += 1
            _check_against_shells(cmd, tmp_path)
    assert accepted > 150  # the check above ran on many cases


def test_a_refused_prefix_answer_is_not_remembered() -> None:
    from app.agent import Decision

    req = ApprovalRequest("c", "run_command", {}, "run: x", command="pytest x#;touch y")
    appr = Approvals(ask=lambda r, c: Decision.allow_prefix(""))
    d = appr.decide(req, threading.Event())
    assert d.action == "approve" and appr.prefixes == []  # approved once; nothing allowed for later
    appr.ask = lambda r, c: Decision.allow_prefix("pytest;")
    assert appr.decide(req, threading.Event()).action == "approve" and appr.prefixes == []


# -- end to end through `locus agent` -------------------------------------------------------------
def _locus_cli(proj: Path, outputs: list[str], tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"}
    args = ["agent", str(proj), "task", "--replay", str(replay), "--json", *flags]
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("kind", ["bwrap", "none"])
def test_allowed_prefix_does_not_cover_a_comment_trick(kind: str, tmp_path: Path) -> None:
    from app.agent.sandbox import detect_sandbox

    if kind == "bwrap" and not detect_sandbox("auto").active:
        pytest.skip("no working sandbox here")
    proj = make_project(tmp_path / "proj")
    outs = [
        call("run_command", command="pytest x#;touch pwned"),
        call("run_command", command="echo x#;touch pwned2"),
        call("run_command", command="echo allowed-ok"),
        answer("done"),
    ]
    flags = ["--allow", "pytest", "--allow", "echo"] + (["--no-sandbox"] if kind == "none" else [])
    p = _locus_cli(proj, outs, tmp_path, *flags)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e["type"] == "tool_result"]
    assert not (proj / "pwned").exists() and not (proj / "pwned2").exists()
    assert [r["ok"] for r in results] == [False, False, True]
    assert "headless" in results[0]["content"] and "allowed-ok" in results[2]["content"]


def test_allow_flag_must_be_a_plain_prefix(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    p = _locus_cli(proj, [answer("done")], tmp_path, "--allow", "pytest;")
    assert p.returncode == 1 and "--allow 'pytest;' is not a plain command prefix" in p.stderr


# -- control characters shown escaped -------------------------------------------------------------
HIDING = "echo safe\x1b[2K\r\x1b]0;title\x07\x1b[8mrm -rf ~\x1b[0m\b\b\u202eexe.txt\u200b"


def test_textsafe_escapes_what_hides_text() -> None:
    shown = show_line(HIDING)
    assert shown.isprintable()
    assert "\\x1b[2K\\r\\x1b]0;title\\x07\\x1b[8mrm -rf ~" in shown and "\\u202e" in shown
    assert show_line("a\nb\tc\x7f\x9b") == "a\\nb\\tc\\x7f\\x9b"
    assert show_block("a\nb\tc\r") == "a\nb\tc\\r" and show_block("\U000e0041") == "\\U000e0041"
    assert show_prose("👨\u200d👩 \x1b") == "👨\u200d👩 \\x1b" and show_block("\u200d") == "\\u200d"
    assert show_line("plain é ✓ text") == "plain é ✓ text"
    assert has_hidden("a\x1bb") and not has_hidden("a\nb") and has_hidden("a\nb", keep="")


def _ask(req: ApprovalRequest, typed: str, monkeypatch) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    from app.cli_agent import _ask_terminal

    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        d = _ask_terminal(req, threading.Event())
    return d.action, err.getvalue()


def test_terminal_approval_shows_control_characters_escaped(monkeypatch) -> None:  # type: ignore
    req = ApprovalRequest("c1", "run_command", {"command": HIDING}, f"run: {HIDING}", command=HIDING)
    action, err = _ask(req, "n\n\n", monkeypatch)
    assert action == "reject"
    assert "\x1b" not in err and "\r" not in err and "\u202e" not in err and "\b" not in err
    assert "\\x1b[2K\\r" in err and "\\x1b[8mrm -rf ~" in err and "\\u202e" in err
    assert "shown escaped" in err
    diff = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\x1b[8m hidden\x1b]52;c;cGF5bG9hZA==\x07\n"
    edit = ApprovalRequest("c2", "edit_file", {}, "edit x", diff=diff)
    action, err = _ask(edit, "y\n", monkeypatch)
    assert action == "approve" and "\x1b" not in err and "\x07" not in err
    assert "+b\\x1b[8m hidden\\x1b]52;c;cGF5bG9hZA==\\x07\n" in err


def test_agent_transcript_shows_control_characters_escaped(tmp_path: Path) -> None:
    # Tool calls, results and diffs on the terminal: nothing raw reaches it.
    proj = make_project(tmp_path / "proj")
    (proj / "evil.txt").write_text("fine\x1b[2K\rhidden \x1b]0;t\x07\u202e\n")
    outs = [
        call("read_file", path="evil.txt"),
        call("write_file", path="new.txt", content="a\x1b[8mb\n"),
        call("run_command", command="printf 'x\\033[2Ky\\n'"),
        answer("done \x1b[2J"),
    ]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(o) + "\n" for o in outs))
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "app.cli", "agent", str(proj), "task", "--replay", str(replay), "--yes"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    for stream in (p.stdout, p.stderr):
        assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream
    assert "fine\\x1b[2K" in p.stderr and "hidden \\x1b]0;t\\x07\\u202e" in p.stderr
    assert "+a\\x1b[8mb" in p.stderr
    assert "x\\x1b[2Ky" in p.stderr and "done \\x1b[2J" in p.stdout
