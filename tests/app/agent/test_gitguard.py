"""The git folder scan and its undo (app/agent/gitguard.py), and the sandbox rules built from it:
fast, no sandbox needed except where marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.agent import sandbox as sandbox_mod
from app.agent.gitguard import GitRefused, neutralise, scan
from app.agent.sandbox import Sandbox, detect_sandbox
from app.agent.sandbox_rules import Limits, build_rules, command_env, render_bwrap, render_limits

REPO = Path(__file__).resolve().parents[3]


def _proj(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    (p / ".git" / "hooks").mkdir(parents=True)
    (p / "src").mkdir()
    return p


def test_scan_finds_git_entries_at_any_depth_without_following_links(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "a" / "b" / ".git").mkdir(parents=True)
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ../.git/modules/sub\n")
    (p / "wt").mkdir()
    (p / "wt" / ".git").write_text("gitdir: ../realgit\n")
    (p / "realgit").mkdir()
    outside = tmp_path / "outside"
    (outside / "deep" / ".git").mkdir(parents=True)
    os.symlink(outside, p / "link")  # a link to a folder with a .git: not entered
    s = scan(p)
    assert set(s.entries) == {".git", "a/b/.git", "sub/.git", "wt/.git"}
    assert str(p / "realgit") in s.protect and str(p / "a" / "b" / ".git") in s.protect
    assert str(p / "wt" / ".git") in s.protect  # the pointer itself
    assert not s.problems


@pytest.mark.parametrize("where", [".git", "sub/.git", "a/b/.git"])
def test_a_symlinked_git_anywhere_is_refused_with_a_clear_message(tmp_path: Path, where: str) -> None:
    p = _proj(tmp_path) if where != ".git" else tmp_path / "proj"
    p.mkdir(exist_ok=True)
    (p / where).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path, p / where)
    with pytest.raises(GitRefused, match=f"{where} is a symbolic link"):
        build_rules(p, env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin"})


def test_gitdir_through_a_link_inside_the_project_is_refused(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "real").mkdir()
    os.symlink(p / "real", p / "via")
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ../via\n")
    with pytest.raises(GitRefused, match="through a symbolic link"):
        scan(p).refuse_if_unsafe()


def test_neutralise_quarantines_new_git_folders_and_restores_pointers(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ../.git/modules/sub\n")
    (p / "wt").mkdir()
    (p / "wt" / ".git").write_text("gitdir: ../missing\n")  # names a folder not there yet
    before = scan(p)
    (p / "src" / ".git").mkdir()  # git init in a subfolder
    (p / "sub" / ".git").write_text("gitdir: /tmp/evil\n")  # re-pointed
    (p / "missing" / "hooks").mkdir(parents=True)  # the gitdir: target, created with hooks
    q = tmp_path / "quarantine"
    changes = {c.path: c for c in neutralise(before, scan(p), q)}
    assert set(changes) == {"src/.git", "sub/.git", "missing"}
    assert changes["src/.git"].what == "created" and not (p / "src" / ".git").exists()
    assert (p / "sub" / ".git").read_text() == "gitdir: ../.git/modules/sub\n"
    assert not (p / "missing").exists()
    assert len(list(q.iterdir())) == 3  # everything moved away is kept, not deleted
    assert neutralise(before, scan(p), q) == []  # nothing left to undo


def test_neutralise_puts_a_moved_original_back(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "vendor" / "lib" / ".git").mkdir(parents=True)
    ino = os.lstat(p / "vendor" / "lib" / ".git").st_ino
    before = scan(p)
    os.rename(p / "vendor", p / "vendor2")
    (p / "vendor" / "lib" / ".git" / "hooks").mkdir(parents=True)
    changes = neutralise(before, scan(p), tmp_path / "q")
    assert [c.what for c in changes] == ["replaced"]
    assert "put back" in changes[0].action
    assert os.lstat(p / "vendor" / "lib" / ".git").st_ino == ino
    assert not (p / "vendor2" / "lib" / ".git").exists()


def test_rules_mask_everything_hidden_whatever_is_mounted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".cargo").mkdir()
    (home / ".cargo" / "config.toml").write_text("token")
    secrets = tmp_path / "elsewhere"
    secrets.mkdir()
    os.symlink(secrets, home / ".aws")  # a hidden path that is a link: masked at its target
    p = _proj(tmp_path)
    rules = build_rules(p, env={"HOME": str(home), "PATH": "/usr/bin"})
    argv = render_bwrap(rules)
    masks = {argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"}
    masks |= {argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind" and argv[i + 1] == "/dev/null"}
    assert {str(home / ".ssh"), str(home / ".cargo" / "config.toml"), str(secrets)} <= masks
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--tmpfs") - 2] == "--size"
    last_bind = max(
        i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind") and argv[i + 1] != "/dev/null"
    )
    assert all(i > last_bind for i, a in enumerate(argv) if a == "--ro-bind" and argv[i + 1] == "/dev/null")


def test_locale_names_pass_other_lc_variables_do_not() -> None:
    env = command_env(env={"LC_ALL": "C.UTF-8", "LC_TIME": "C", "LC_SECRET": "x", "LC_": "y", "PATH": "/bin"})
    assert env["LC_ALL"] == "C.UTF-8" and env["LC_TIME"] == "C"
    assert "LC_SECRET" not in env and "LC_" not in env


def test_limits_render_to_prlimit_and_ulimit(tmp_path: Path) -> None:
    from app.agent.sandbox_rules import render_ulimit

    p = _proj(tmp_path)
    rules = build_rules(p, env={"HOME": str(tmp_path), "PATH": "/usr/bin"}, limits=Limits(memory=1 << 30))
    args = render_limits(rules, "prlimit")
    assert f"--data={1 << 30}" in args and "--core=0" in args and args[-1] == "--"
    assert any(a.startswith("--nproc=") for a in args) == (os.getuid() != 0)
    assert "ulimit -d 1048576" in render_ulimit(rules)
    prof = Sandbox("sandbox-exec").wrap("true", p, rules=rules)
    assert "ulimit -d 1048576" in prof[5] and prof[-1] == "true"


@pytest.mark.skipif(detect_sandbox("auto").kind != "bwrap", reason="bwrap not installed/working")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.getuid() != 0, reason="capabilities: root")
def test_self_check_fails_when_commands_keep_capabilities(monkeypatch) -> None:
    sb = detect_sandbox("auto")
    assert sandbox_mod._self_check(sb) == (True, "ok")
    real = sandbox_mod.render_bwrap

    def keep_caps(rules):  # type: ignore[no-untyped-def]
        args = real(rules)
        i = args.index("--cap-drop")
        return args[:i] + args[i + 2 :]

    monkeypatch.setattr(sandbox_mod, "render_bwrap", keep_caps)
    ok, why = sandbox_mod._self_check(sb)
    assert not ok and ("could be unmounted" in why or "capabilities" in why), why


def test_doctor_lists_limits_capabilities_and_a_refusal(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    os.symlink(tmp_path, p / "src" / ".git")
    env = {**os.environ, "LOCUS_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", "--quick", "--sandbox-rules"],
        cwd=p,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert "limits, per command:" in out and "memory per process: 4 GiB" in out
    assert "capabilities: none" in out
    assert "commands are refused in this project: src/.git is a symbolic link" in out
    js = subprocess.run(
        [sys.executable, "-m", "app.cli", "doctor", "--quick", "--sandbox-rules", "--json"],
        cwd=p,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(js.stdout)["sandbox_rules"]["limits"]["tmpfs"] == 1 << 30
