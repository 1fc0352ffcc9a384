"""Attacks on the agent's commands: planting git hooks, reading secrets from the environment,
/proc and the home folder, a broken sandbox, and processes that try to outlive their step.
Real bwrap, real git, real `locus agent` subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agent import Agent, AgentConfig, Approvals, Decision, ReplayBackend
from app.agent.sandbox import (
    Sandbox,
    detect_sandbox,
    run_command,
    sandbox_rules_report,
    sandbox_self_check,
)
from app.agent.sandbox_rules import ALWAYS_HIDDEN_HOME, build_rules
from tests import proctree

from .helpers import answer, call, git, make_project

REPO = Path(__file__).resolve().parents[3]
LINUX = sys.platform.startswith("linux")
SECRETS = {
    "DATABASE_URL": "postgres://app:leak-db-pw@db.internal/app",
    "GH_PAT": "leak-ghp_0123456789",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/leak-slack",
    "SENTRY_DSN": "https://leak-sentry@o1.ingest.sentry.io/1",
    "CI_JOB_JWT": "leak-eyJhbGciOi",
    "REDIS_URL": "redis://:leak-redis-pw@cache:6379/0",
    "STRIPE_SK": "leak-sk_live_123",
    "MY_APP_CREDS": "leak-user:pass",
}


def _bwrap() -> Sandbox:
    sb = detect_sandbox("auto")
    if sb.kind != "bwrap":
        pytest.skip(f"bwrap not installed/working: {sb.reason}")
    return sb


def _sandbox(kind: str) -> Sandbox:
    return _bwrap() if kind == "bwrap" else Sandbox("none")


def _run(cmd: str, proj: Path, sb: Sandbox, timeout: float = 30, **kw):  # type: ignore[no-untyped-def]
    return run_command(cmd, proj, sandbox=sb, timeout=timeout, output_cap=200_000, **kw)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A scratch dir NOT under /tmp (the old sandbox's private /tmp hid that anyway): in the
    home folder, else beside the checkout."""
    for base in (Path.home(), REPO.parent):
        try:
            d = Path(tempfile.mkdtemp(prefix=".locus-hardening-", dir=base))
            break
        except OSError:
            continue
    else:
        pytest.skip("no writable directory outside /tmp")
    try:
        yield d.resolve()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- .git stays read-only --------------------------------------------------------------------------
def test_sandboxed_command_cannot_plant_git_hooks_or_config(tmp_path: Path) -> None:
    sb = _bwrap()
    proj = make_project(tmp_path / "proj")
    before = _tree_digest(proj / ".git")
    res = _run(
        "printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > .git/hooks/pre-commit; "
        "chmod +x .git/hooks/pre-commit; git config core.fsmonitor 'touch /tmp/pwned'; "
        "echo '[core]\\n\\tfsmonitor = evil' >> .git/config; rm -f .git/HEAD; "
        "mkdir -p .git/hooks2; echo still-running",
        proj,
        sb,
    )
    assert "still-running" in res.output
    assert _tree_digest(proj / ".git") == before
    assert "fsmonitor" not in git(proj, "config", "--list")
    # The rest of the project stays writable.
    _run("echo ok > new.txt", proj, sb)
    assert (proj / "new.txt").read_text() == "ok\n"


def test_git_dirs_outside_the_project_are_unreachable(tmp_path: Path) -> None:
    sb = _bwrap()
    outer = make_project(tmp_path / "outer")
    proj = outer / "calc"  # the agent works in a subfolder of a repository
    res = _run("cat ../.git/config; ls ../.git/hooks; echo done", proj, sb)
    assert "[core]" not in res.output and "pre-commit.sample" not in res.output
    assert "done" in res.output


# -- secrets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_environment_secrets_do_not_reach_commands(kind: str, tmp_path: Path, monkeypatch) -> None:
    sb = _sandbox(kind)
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MY_TOOL_SETTING", "kept-because-allowed")
    proj = tmp_path / "p"
    proj.mkdir()
    res = _run("env", proj, sb, env_allow=["MY_TOOL_SETTING"])
    assert "leak-" not in res.output, res.output
    assert "MY_TOOL_SETTING=kept-because-allowed" in res.output
    assert f"PATH={os.environ['PATH']}" in res.output or kind == "bwrap"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "bwrap"])
def test_locus_environment_is_not_readable_from_proc(kind: str, tmp_path: Path) -> None:
    """A real `locus agent` started with secrets in its environment: its commands read
    /proc/$PPID/environ, /proc/1/environ and every environ they can see."""
    if kind == "bwrap":
        _bwrap()
    elif not LINUX:
        pytest.skip("/proc is Linux's")
    proj = make_project(tmp_path / "proj")
    cmd = (
        "tr '\\0' '\\n' < /proc/$PPID/environ; tr '\\0' '\\n' < /proc/1/environ; "
        "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; env; echo scanned"
    )
    extra = {**SECRETS, "LOCUS_DATA_DIR": str(tmp_path / "data")}
    r = _locus_cli(
        proj,
        [call("run_command", command=cmd), answer("done")],
        tmp_path,
        "--yes",
        *(["--no-sandbox"] if kind == "none" else []),
        env=extra,
    )
    out = _results(r.stdout)
    assert out and "scanned" in out[0]["content"], r.stdout + r.stderr
    assert "leak-" not in out[0]["content"]


def test_fake_home_secrets_are_hidden(outside_tmp: Path, tmp_path: Path, monkeypatch) -> None:
    sb = _bwrap()
    home = outside_tmp / "home"
    for rel, text in {
        ".ssh/id_rsa": "leak-ssh-key",
        ".aws/credentials": "leak-aws",
        ".config/gcloud/creds.json": "leak-gcloud",
        ".netrc": "leak-netrc",
        "notes/private.txt": "leak-notes",
        ".cargo/credentials.toml": "leak-cargo-token",
        ".cargo/bin/mytool": "#!/bin/sh\necho toolchain-ok\n",
        ".local/share/locus/locus.db": "leak-conversations",
    }.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    (home / ".cargo/bin/mytool").chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LOCUS_DATA_DIR", str(home / ".local/share/locus"))
    monkeypatch.setenv("PATH", f"{home / '.cargo/bin'}{os.pathsep}{os.environ['PATH']}")
    proj = tmp_path / "p"
    proj.mkdir()
    res = _run(
        f"cd {home}; cat .ssh/id_rsa .aws/credentials .config/gcloud/creds.json .netrc "
        "notes/private.txt .cargo/credentials.toml .local/share/locus/locus.db; ls -la; mytool",
        proj,
        sb,
    )
    assert "leak-" not in res.output, res.output
    assert "toolchain-ok" in res.output  # allowlisted toolchain dirs stay usable
    rules, text = sandbox_rules_report(proj)
    assert rules.home == str(home) and str(home / ".ssh") in rules.hidden
    assert "~/.ssh" in text and "~/.cargo" in text


def test_data_dir_inside_the_project_is_hidden(tmp_path: Path, monkeypatch) -> None:
    sb = _bwrap()
    proj = tmp_path / "p"
    (proj / "state").mkdir(parents=True)
    (proj / "state" / "locus.db").write_text("leak-other-conversations")
    monkeypatch.setenv("LOCUS_DATA_DIR", str(proj / "state"))
    res = _run("cat state/locus.db; echo done", proj, sb)
    assert "leak-" not in res.output and "done" in res.output


# -- a broken sandbox fails closed ----------------------------------------------------------------
@pytest.fixture
def broken_bwrap(tmp_path: Path, monkeypatch) -> Path:
    """A `bwrap` first on PATH that fails like one without user namespaces."""
    if not LINUX:
        pytest.skip("bwrap is Linux's")
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "bwrap").write_text(
        "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"
    )
    (bindir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def test_broken_sandbox_is_detected(broken_bwrap: Path) -> None:
    sb = detect_sandbox("auto")
    assert sb.kind == "none" and sb.broken and "uid map" in sb.reason
    ok, msg = sandbox_self_check()
    assert not ok and "uid map" in msg
    assert detect_sandbox("none").broken is False


def _locus_in_process(proj: Path, outputs: list[str], tmp_path: Path, *flags: str):  # type: ignore
    """`locus agent ... --json` in this process (stdin is not a terminal under pytest)."""
    import contextlib
    import io

    from app.cli import main

    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["agent", str(proj), "task", "--replay", str(replay), "--json", *flags])
    return code, out.getvalue()


def _locus_cli(
    proj: Path, outputs: list[str], tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(o) + "\n" for o in outputs))
    full = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "agent",
            str(proj),
            "task",
            "--replay",
            str(replay),
            "--json",
            *flags,
        ],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _results(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["type"] == "tool_result"]


def test_broken_sandbox_yes_does_not_run_commands_headless(
    broken_bwrap: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path / "data"))
    assert not sys.stdin.isatty()
    proj = make_project(tmp_path / "proj")
    outs = [
        call("run_command", command="touch ran.txt; cat ../secret.txt"),
        call("write_file", path="edited.txt", content="fine\n"),
        answer("done"),
    ]
    code, out = _locus_in_process(proj, outs, tmp_path, "--yes")
    assert code == 0
    res = _results(out)
    assert not (proj / "ran.txt").exists()
    assert not res[0]["ok"] and "no working sandbox" in res[0]["content"]
    assert "uid map" in res[0]["content"]
    assert (proj / "edited.txt").exists()  # --yes still covers edits
    # The user's explicit --no-sandbox is what lets --yes run commands unconfined.
    code, out = _locus_in_process(proj, outs[:1] + outs[2:], tmp_path, "--yes", "--no-sandbox")
    assert code == 0 and (proj / "ran.txt").exists(), out
    # --require-sandbox refuses them even then.
    (proj / "ran.txt").unlink()
    code, out = _locus_in_process(
        proj, outs[:1] + outs[2:], tmp_path, "--yes", "--no-sandbox", "--require-sandbox"
    )
    assert not (proj / "ran.txt").exists() and "require" in _results(out)[0]["content"]


def test_broken_sandbox_asks_for_every_command_despite_yes(broken_bwrap: Path, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    asked: list = []

    def ask(req, cancel):  # type: ignore[no-untyped-def]
        asked.append(req)
        return Decision.allow_tool()  # "always" must not stick for unconfined commands

    outs = [
        call("run_command", command="touch one.txt"),
        call("run_command", command="touch two.txt"),
        answer("done"),
    ]
    with Agent(
        proj,
        ReplayBackend(outs),
        approvals=Approvals(ask=ask, yes=True),
        config=AgentConfig(watch=False),
        data_dir=tmp_path / "data",
    ) as agent:
        assert agent.sandbox.broken
        agent.run("task")
    assert [r.command for r in asked] == ["touch one.txt", "touch two.txt"]
    assert asked[0].needs_own_approval and "uid map" in asked[0].sandbox_note
    assert (proj / "one.txt").exists() and (proj / "two.txt").exists()


# -- nothing outlives its step ----------------------------------------------------------------------
FORKERS = (
    "setsid sh -c 'sleep 2; touch late-setsid' >/dev/null 2>&1 < /dev/null & "
    "( ( sleep 2; touch late-double ) & ) ; "
    "nohup sh -c 'sleep 2; touch late-nohup' >/dev/null 2>&1 & echo started"
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "none-without-namespace", "bwrap"])
def test_forked_survivors_die_with_the_command(kind: str, tmp_path: Path, monkeypatch) -> None:
    import app.agent.sandbox as sandbox_mod

    if kind == "none-without-namespace":  # no unshare: the process group and the tag sweep
        monkeypatch.setattr(sandbox_mod, "_tree_guard", lambda: ())
        kind = "none"
    sb = _sandbox(kind)
    proj = tmp_path / "p"
    proj.mkdir()
    res = _run(FORKERS, proj, sb)
    assert res.exit_code == 0 and "started" in res.output
    res = _run("setsid sh -c 'sleep 2; touch late-timeout' >/dev/null 2>&1 & sleep 30", proj, sb, timeout=1)
    assert res.timed_out and res.elapsed < 10
    time.sleep(3)
    assert sorted(p.name for p in proj.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "none-without-namespace", "bwrap"])
def test_command_tree_dies_with_locus(kind: str, tmp_path: Path) -> None:
    if kind == "bwrap":
        _bwrap()
    elif not LINUX:
        pytest.skip("the parent-death signal is Linux's")
    proj = tmp_path / "p"
    proj.mkdir()
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data")}
    if kind == "none-without-namespace":  # an `unshare` that fails: the watchdog must do it
        fake = tmp_path / "fakebin"
        fake.mkdir()
        (fake / "unshare").write_text("#!/bin/sh\nexit 1\n")
        (fake / "unshare").chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
        kind = "none"
    # The marker proves the command really ran (a Locus that exits at once must fail, not pass).
    cmd = "setsid sh -c 'sleep 3; touch late-after-exit' >/dev/null 2>&1 & touch started; sleep 60"
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps(call("run_command", command=cmd, timeout=120)) + "\n")
    flags = ["--yes"] + (["--no-sandbox"] if kind == "none" else [])
    log = tmp_path / "agent.out"
    argv = [sys.executable, "-m", "app.cli", "agent", str(proj), "task", "--replay", str(replay), "--json"]
    with log.open("w") as out:
        p = proctree.popen(
            [*argv, *flags], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 90
        while not (proj / "started").exists():
            assert p.poll() is None, f"locus agent exited ({p.returncode}) first:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the command never started:\n{log.read_text()[-2000:]}"
            time.sleep(0.05)
        started = time.monotonic()
        assert p.poll() is None, "Locus must still be running the command when it is killed"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        # A surviving `sleep 3; touch` would have written its file by now, with margin for a busy machine.
        time.sleep(max(0.0, started + 6.0 - time.monotonic()))
        assert not (proj / "late-after-exit").exists()
    finally:
        p.kill()


# -- the rules as data, and the README -------------------------------------------------------------
def test_rules_render_to_bwrap_and_seatbelt(tmp_path: Path) -> None:
    from app.agent.sandbox_rules import render_bwrap, render_seatbelt

    proj = make_project(tmp_path / "proj")
    rules = build_rules(proj, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    argv = render_bwrap(rules)
    assert ["--ro-bind", str(proj / ".git"), str(proj / ".git")] == argv[
        argv.index(str(proj / ".git")) - 1 : argv.index(str(proj / ".git")) + 2
    ]
    assert argv.index("--bind") < argv.index(str(proj / ".git"))  # .git on top of the project
    assert "--unshare-pid" in argv and "--die-with-parent" in argv and "--unshare-net" in argv
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    assert "/" not in binds and str(tmp_path) not in binds  # not the whole disk, nor home
    prof = render_seatbelt(rules)
    assert f'(deny file-write* (subpath "{proj / ".git"}"))' in prof
    assert "(deny network*)" in prof and f'(subpath "{tmp_path}")' in prof


def test_readme_lists_the_sandbox_rules() -> None:
    text = (REPO / "README.md").read_text()
    for rel in ALWAYS_HIDDEN_HOME:
        assert f"~/{rel}" in text, f"README does not list ~/{rel} as hidden"
    for name in ("--require-sandbox", "--env NAME", "--no-sandbox", "locus doctor"):
        assert name in text


# -- small leaks of truth -------------------------------------------------------------------------
def test_file_name_with_newline_cannot_fake_listing_lines(tmp_path: Path) -> None:
    from app.agent import Limits, ProjectRoot
    from app.agent.tools import Toolbox
    from app.agent.watch import FileTracker

    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "real.txt").write_text("x")
    (proj / "a\nfake.py  (9 B)\nrm -rf.txt").write_text("y")
    out = Toolbox(ProjectRoot(proj), FileTracker(), Sandbox("none"), limits=Limits()).list_dir({})
    lines = out.splitlines()
    assert not any(line.startswith(("fake.py", "rm -rf")) for line in lines), out
    assert '"a\\nfake.py  (9 B)\\nrm -rf.txt"  (1 B)' in lines and "real.txt  (1 B)" in lines


def test_crashed_run_is_listed_as_interrupted(tmp_path: Path, monkeypatch) -> None:
    import contextlib
    import io

    from app.cli import main
    from app.store import Store

    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path / "data"))
    proj = tmp_path / "p"
    proj.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Store(tmp_path / "data" / "locus.db") as store:
        rid = store.create_run(str(proj.resolve()), "fix it")
        store.update_run(rid, pid=dead.pid)  # the process that ran it is gone (a crash)
        live = store.create_run(str(proj.resolve()), "still going")  # this process: alive
    for flags, want in (([], "interrupted"), (["--json"], '"status": "interrupted"')):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["agent", str(proj), "--runs", *flags]) == 0
        row = next(line for line in out.getvalue().splitlines() if rid in line)
        assert want in row
        assert "running" in next(line for line in out.getvalue().splitlines() if live in line)


def test_submodule_git_link_is_read_only(tmp_path: Path) -> None:
    sb = _bwrap()
    proj = make_project(tmp_path / "proj")
    (proj / "vendor" / "lib").mkdir(parents=True)
    (proj / "vendor" / "lib" / ".git").write_text("gitdir: ../../.git/modules/lib\n")
    (proj / ".gitmodules").write_text('[submodule "lib"]\n\tpath = vendor/lib\n\turl = x\n')
    res = _run("echo 'gitdir: /tmp/evil' > vendor/lib/.git; echo done", proj, sb)
    assert "done" in res.output
    assert (proj / "vendor" / "lib" / ".git").read_text() == "gitdir: ../../.git/modules/lib\n"


def test_settings_require_sandbox_and_add_env_names(broken_bwrap: Path, tmp_path: Path) -> None:
    cfg = AgentConfig.from_settings(
        {"require_sandbox": True, "agent_env": ["MY_TOOL_HOME"]}, env_allow=("OTHER",), watch=False
    )
    assert cfg.require_sandbox and cfg.env_allow == ("MY_TOOL_HOME", "OTHER")
    assert AgentConfig.from_settings({"agent_env": "ONE"}).env_allow == ("ONE",)
    # the Preferences dialog saves the names as one line of text
    two = AgentConfig.from_settings({"agent_env": "CARGO_HOME, GOPATH"}).env_allow
    assert two == ("CARGO_HOME", "GOPATH")
    from app.settings import PREFERENCES

    assert {"require_sandbox", "agent_env"} <= {p.key for p in PREFERENCES}
    proj = make_project(tmp_path / "proj")
    outs = [call("run_command", command="touch ran.txt"), answer("done")]
    asked: list = []
    approvals = Approvals(ask=lambda req, cancel: asked.append(req) or Decision.approve())
    with Agent(
        proj, ReplayBackend(outs), approvals=approvals, config=cfg, data_dir=tmp_path / "data"
    ) as agent:
        agent.run("task")
    assert not asked and not (proj / "ran.txt").exists()  # refused before anyone is asked
