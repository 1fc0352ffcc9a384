"""The sandbox's git guard and rules: cases that kill mutants the other tests let live (docs/mutation.md)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from app.agent import gitguard, sandbox_rules
from app.agent import sandbox as sandbox_mod
from app.agent.gitguard import GitRefused, neutralise, scan
from app.agent.sandbox import Sandbox
from app.agent.sandbox_rules import (
    ENV_FIXED,
    GiB,
    Limits,
    SandboxRules,
    build_rules,
    command_env,
    describe_rules,
    render_bwrap,
    render_limits,
    render_seatbelt,
    render_ulimit,
)


def _proj(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    (p / ".git" / "hooks").mkdir(parents=True)
    (p / "src").mkdir()
    return p


# -- what counts as a change -----------------------------------------------------------------------------
def test_a_git_folder_replaced_by_an_empty_file_is_a_change(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "src" / ".git").mkdir()
    before = scan(p)
    (p / "src" / ".git").rmdir()
    (p / "src" / ".git").write_bytes(b"")  # a file with the same (empty) bytes a folder has
    changes = neutralise(before, scan(p), tmp_path / "q")
    assert [(c.path, c.what) for c in changes] == [("src/.git", "replaced")]


def test_a_removed_git_folder_is_reported(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "src" / ".git").mkdir()
    before = scan(p)
    (p / "src" / ".git").rmdir()
    changes = neutralise(before, scan(p), tmp_path / "q")
    assert [(c.path, c.what, c.action) for c in changes] == [("src/.git", "removed", "nothing to undo")]
    assert changes[0].describe() == "src/.git was removed: nothing to undo"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_git_entry_that_is_neither_file_folder_nor_link(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    os.mkfifo(p / "src" / ".git")
    before = scan(p)
    assert before.entries["src/.git"].kind == "other"
    os.mkfifo(p / "src" / "new")  # another one, made while the first exists: a new inode
    os.replace(p / "src" / "new", p / "src" / ".git")
    changes = neutralise(before, scan(p), tmp_path / "q")
    assert [(c.path, c.what) for c in changes] == [("src/.git", "replaced")]


# -- the scan --------------------------------------------------------------------------------------------
def test_a_symlinked_git_is_refused_naming_its_target(tmp_path: Path) -> None:
    p = tmp_path / "proj"
    p.mkdir()
    os.symlink(tmp_path / "elsewhere", p / ".git")
    with pytest.raises(GitRefused) as e:
        scan(p).refuse_if_unsafe()
    assert str(e.value) == (
        f".git is a symbolic link (to {tmp_path / 'elsewhere'}): Locus cannot protect the git folder it "
        "points to, so commands are refused in this project. Replace the link with the folder itself or a "
        "`gitdir:` file, or remove it (mv .git .git.link)"
    )


def test_gitdir_through_a_link_deeper_inside_is_refused(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "real" / "wt").mkdir(parents=True)
    os.symlink(p / "real", p / "via")
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ../via/wt\n")
    s = scan(p)
    assert s.problems == [
        "sub/.git points (gitdir:) through a symbolic link inside the project, to via/wt: commands are "
        "refused until it points at a real folder"
    ]


def test_git_files_that_are_no_pointers_or_point_outside(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    for name, text in {"a": "junk: ../x\n", "b": "gitdir: ../../outside\n", "c": b"\xff\xfe gitdir"}.items():
        (p / name).mkdir()
        path = p / name / ".git"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    (p / "d").mkdir()
    (p / "d" / ".git").write_text("gitdir: ../gitdirs/wt\n")  # inside, missing, nested
    s = scan(p)
    assert s.watch.keys() == {"gitdirs/wt"} and not s.problems
    assert sorted(s.protect) == sorted(str(p / x / ".git") for x in ("", "a", "b", "c", "d"))


def test_pointers_to_the_same_folder_protect_it_once(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "gd").mkdir()
    (p / "gd" / "file").write_text("x")
    for name, target in {"a": "../gd", "b": "../gd", "c": "../gd/file"}.items():
        (p / name).mkdir()
        (p / name / ".git").write_text(f"gitdir: {target}\n")
    s = scan(p)
    assert s.protect.count(str(p / "gd")) == 1 and str(p / "gd" / "file") not in s.protect


def test_a_pointer_at_the_project_itself_protects_it(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ..\n")
    assert str(p) in scan(p).protect


def test_an_unreadable_folder_does_not_stop_the_walk(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    p = _proj(tmp_path)
    (p / "a").mkdir()
    (p / "z" / "deep" / ".git").mkdir(parents=True)
    real = os.scandir

    def scandir(d):  # type: ignore[no-untyped-def]
        if os.path.basename(d) == "a":
            raise PermissionError(13, "Permission denied")
        return real(d)

    monkeypatch.setattr(gitguard.os, "scandir", scandir)
    assert "z/deep/.git" in scan(p).entries


# -- the undo --------------------------------------------------------------------------------------------
def test_a_created_gitdir_target_is_quarantined_and_named(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "wt").mkdir()
    (p / "wt" / ".git").write_text("gitdir: ../gitdirs/wt\n")
    before = scan(p)
    (p / "gitdirs" / "wt" / "hooks").mkdir(parents=True)
    q = tmp_path / "deep" / "er" / "quarantine"  # its parents do not exist yet
    [c] = neutralise(before, scan(p), q)
    assert (c.path, c.what) == ("gitdirs/wt", "created (a gitdir: target)")
    where = c.action.removeprefix("moved to ")
    assert (
        Path(where).parent == q and (Path(where) / "hooks").is_dir() and not (p / "gitdirs" / "wt").exists()
    )
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}-gitdirs__wt", Path(where).name), where


def test_a_repointed_file_is_restored_and_said_so(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    (p / "sub").mkdir()
    (p / "sub" / ".git").write_text("gitdir: ../.git/modules/sub\n")
    before = scan(p)
    (p / "sub" / ".git").write_text("gitdir: /tmp/evil\n")
    [c] = neutralise(before, scan(p), tmp_path / "q")
    assert re.fullmatch(r"moved to .+; the original gitdir: file restored", c.action), c.action


def test_an_undo_that_fails_says_why_and_what_to_do(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    before = scan(p)
    (p / "src" / ".git").mkdir()
    q = tmp_path / "q"
    q.write_text("a file where the quarantine folder should be")
    [c] = neutralise(before, scan(p), q)
    assert c.action == "could not be undone (File exists); remove src/.git before running git in this project"


# -- the rules, rendered --------------------------------------------------------------------------------
def _rules(**kw) -> SandboxRules:  # type: ignore[no-untyped-def]
    base = {
        "project": "/work/proj",
        "writable": ("/work/proj",),
        "read_only": ("/usr", "/home/u/.cargo", "/work/proj/.git"),
        "hidden": ("/home/u/.ssh", "/etc/shadow"),
        "private": ("/tmp", "/var/tmp", "/home/u"),
        "home": "/home/u",
        "env_allowlist": ("PATH", "HOME"),
        "limits": Limits(processes=64, memory=2 * GiB, file_size=GiB // 2, tmpfs=GiB),
    }
    return SandboxRules(**{**base, **kw})


def test_rules_are_described_as_the_readme_shows_them() -> None:
    root = os.getuid() == 0
    procs = "64 more than the user already runs" + (
        " (not enforced for root: the kernel exempts uid 0)" * root
    )
    assert describe_rules(_rules()) == "\n".join(
        [
            "writable:",
            "  /work/proj",
            "read-only:",
            "  /usr",
            "  ~/.cargo",
            "  /work/proj/.git",
            "empty and private to the command:",
            "  /tmp",
            "  /var/tmp",
            "  ~",
            "hidden: the rest of the disk, including the rest of ~, and:",
            "  ~/.ssh",
            "  /etc/shadow",
            "network: off",
            "limits, per command:",
            f"  processes: {procs}",
            "  memory per process: 2 GiB",
            "  file size: 0.5 GiB",
            "  each private tmpfs: 1 GiB",
            "capabilities: none (all dropped, also when Locus runs as root)",
            "environment: only PATH, HOME",
        ]
    )
    text = describe_rules(_rules(home="/", writable=(), network=True, limits=Limits(0, 0, 0, 0)))
    assert "writable: (none)" in text and "  /usr" in text and "network: allowed" in text
    assert "  memory per process: no limit" in text.splitlines() and "the rest of /, and:" in text
    assert "  processes: no limit" in text.splitlines()


def test_limits_say_when_root_is_exempt() -> None:
    lim = Limits(processes=8)
    assert (
        lim.describe(True)[0]
        == "  processes: 8 more than the user already runs (not enforced for root: the kernel exempts uid 0)"
    )
    assert lim.describe(False)[0] == "  processes: 8 more than the user already runs"
    assert Limits(processes=0).describe(True)[0] == "  processes: no limit"


def test_seatbelt_profile_text() -> None:
    prof = render_seatbelt(_rules(hidden=('/home/u/we"ird\\x',)), temp_dirs=["/var/t"])
    temps = " ".join(
        f'(subpath "{t}")'
        for t in sorted({os.path.realpath(t) for t in ("/tmp", "/private/var/folders", "/var/t")})
    )
    lines = [
        "(version 1)",
        "(allow default)",
        "(deny file-write*)",
        f'(allow file-write* (subpath "/work/proj") {temps} (literal "/dev/null") (literal "/dev/zero") '
        '(literal "/dev/dtracehelper") (regex #"^/dev/tty") (regex #"^/dev/fd/"))',
        '(deny file-read-data file-write* (subpath "/home/u"))',
        '(allow file-read-data (subpath "/home/u/.cargo"))',
        '(allow file-read-data file-write* (subpath "/work/proj"))',
        '(deny file-write* (subpath "/work/proj/.git"))',
        '(deny file-read* file-write* (subpath "/home/u/we\\"ird\\\\x"))',
        "(deny network*)",
    ]
    assert prof == "\n".join(lines) + "\n"
    assert "(deny file-read-data" not in render_seatbelt(_rules(home="/"))
    assert "(deny file-read-data" not in render_seatbelt(_rules(home="/usr/home"))


def test_ulimit_and_prlimit_lines() -> None:
    assert render_ulimit(_rules()) == (
        "ulimit -c 0 2>/dev/null; ulimit -f 1048576 2>/dev/null; ulimit -d 2097152 2>/dev/null"
    )
    assert render_ulimit(_rules(limits=Limits(0, 0, 0, 0))) == "ulimit -c 0 2>/dev/null"
    assert render_limits(_rules(limits=Limits(0, 0, 0, 0))) == ["prlimit", "--core=0", "--"]


def test_prlimit_counts_the_users_tasks_for_a_normal_user(monkeypatch) -> None:  # type: ignore
    monkeypatch.setattr(sandbox_rules.os, "getuid", lambda: 1000)
    monkeypatch.setattr(sandbox_rules, "_user_tasks", lambda: 7)
    args = render_limits(_rules(), "/usr/bin/prlimit")
    assert args == [
        "/usr/bin/prlimit",
        "--core=0",
        "--nproc=71",
        f"--data={2 * GiB}",
        f"--fsize={GiB // 2}",
        "--",
    ]


def test_user_tasks_counts_threads_of_this_users_processes(monkeypatch) -> None:  # type: ignore
    me = str(os.getpid())
    mine = len(os.listdir(f"/proc/{me}/task"))
    monkeypatch.setattr(
        sandbox_rules.os, "listdir", lambda d: ["999999999", "not-a-pid", me, me] if d == "/proc" else []
    )
    assert sandbox_rules._user_tasks() == 2 * mine
    uid = os.getuid()
    monkeypatch.setattr(sandbox_rules.os, "getuid", lambda: uid + 1)
    assert sandbox_rules._user_tasks() == 0


def test_command_env_takes_prefixes_only_where_asked() -> None:
    src = {"PATH": "/bin", "MY_A": "1", "MYB": "2", "M": "3", "X*": "4", "SECRET": "5"}
    assert command_env(["PATH", "MY_*", ""], env=src) == {"PATH": "/bin", "MY_A": "1", **ENV_FIXED}
    assert command_env(["X*"], env=src) == {"X*": "4", **ENV_FIXED}  # a name ending in * is a prefix
    assert command_env(["PATH"], env=src) == {"PATH": "/bin", **ENV_FIXED}


def test_bwrap_argv_order_and_extras(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    rules = _rules(
        read_only=("/usr", "/tmp/venv", "/opt/tool", "/work/proj/.git"),
        private=("/tmp", "/", "/usr/home"),
        network=True,
        limits=Limits(tmpfs=0),
    )
    real_isdir = os.path.isdir
    monkeypatch.setattr(
        sandbox_rules.os.path, "isdir", lambda p: p == "/run/systemd/resolve" or real_isdir(p)
    )
    argv = render_bwrap(rules)
    pairs = [argv[i : i + 3] for i in range(len(argv) - 2)]
    assert ["--ro-bind", "/opt/tool", "/opt/tool"] in pairs
    assert ["--ro-bind", "/run/systemd/resolve", "/run/systemd/resolve"] in pairs
    assert "--size" not in argv and "--unshare-net" not in argv
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/" not in tmpfs and "/usr/home" not in tmpfs and "/tmp" in tmpfs
    assert argv[-5:] == ["--chdir", "/work/proj", "--setenv", "TMPDIR", "/tmp"]
    assert "/run/systemd/resolve" not in render_bwrap(_rules())
    if os.path.islink("/bin"):  # merged /usr: a system link is recreated, not bound
        real = build_rules(_proj(tmp_path), env={"HOME": "/nonexistent", "PATH": "/bin"})
        argv = render_bwrap(real)
        assert ["--symlink", os.readlink("/bin"), "/bin"] == argv[
            argv.index("/bin") - 2 : argv.index("/bin") + 1
        ]


def test_locus_folders_are_hidden(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    from app.settings import cache_dir, data_dir

    for d in (data_dir(), cache_dir()):
        d.mkdir(parents=True, exist_ok=True)
    other = tmp_path / "other-data"
    other.mkdir()
    p = _proj(tmp_path)
    rules = build_rules(
        p, env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin", "LOCUS_DATA_DIR": str(other)}
    )
    for d in (data_dir(), cache_dir(), other):
        assert os.path.realpath(d) in rules.hidden, d


# -- what the rules are built from ------------------------------------------------------------------------
def test_under_is_a_path_prefix_test() -> None:
    under = sandbox_rules._under
    assert under("/a/BOX/c", "/a/BOX") and under("/a/b", "/a/") and under("/a", "/") and under("/a", "/a")
    assert not under("/a/BOXc", "/a/BOX") and not under("/ab", "/a")


def test_toolchains_come_from_home_variables_and_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    cwd = tmp_path / "cwd"
    (cwd / "relbin").mkdir(parents=True)
    monkeypatch.chdir(cwd)  # relative names must not resolve against the working folder
    home = tmp_path / "home"
    (home / ".cargo").mkdir(parents=True)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    plain = tmp_path / "tools" / "bin"
    plain.mkdir(parents=True)
    slashed = tmp_path / "venv2"
    (slashed / "bin").mkdir(parents=True)
    (slashed / "pyvenv.cfg").write_text("")
    p = _proj(tmp_path)
    (p / "bin").mkdir()
    path = [f"{venv}/bin", str(plain), f"{slashed}/bin/", "relbin", "/usr/bin", str(tmp_path), str(p / "bin")]
    rules = build_rules(p, env={"HOME": str(home), "PATH": os.pathsep.join(path)})
    ro = set(rules.read_only)
    assert {str(home / ".cargo"), str(venv), str(plain), str(slashed)} <= ro
    assert not ro & {
        str(tmp_path),
        str(cwd),
        str(cwd / "relbin"),
        str(plain.parent),
        str(p / "bin"),
        "/usr/bin",
    }
    assert str(venv / "bin") not in ro  # inside the venv, which is listed
    assert len(rules.read_only) == len(ro)


def test_toolchain_secrets_and_repositories_are_hidden(tmp_path: Path) -> None:
    cargo = tmp_path / "cargo"
    (cargo / ".git").mkdir(parents=True)
    (cargo / "credentials.toml").write_text("token")
    extra = tmp_path / "agent-data"
    extra.mkdir()
    p = _proj(tmp_path)
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin", "CARGO_HOME": str(cargo)}
    rules = build_rules(p, env=env, extra_hidden=[extra], extra_env=["FOO"], network=True)
    assert str(cargo) in rules.read_only
    assert {str(cargo / ".git"), str(cargo / "credentials.toml"), str(extra)} <= set(rules.hidden)
    assert rules.network is True and rules.env_allowlist[-1] == "FOO" and "PATH" in rules.env_allowlist
    assert rules.private == ("/tmp", "/var/tmp", str(tmp_path / "home"))


def test_home_defaults_to_the_users_and_a_given_scan_is_used(tmp_path: Path) -> None:
    p = _proj(tmp_path)
    rules = build_rules(p, env={"PATH": "/usr/bin"})
    assert rules.home == os.path.realpath(os.path.expanduser("~"))
    given = scan(p)
    given.protect.append(str(tmp_path / "given"))
    assert str(tmp_path / "given") in build_rules(p, env={"PATH": "/usr/bin"}, git=given).read_only


def test_the_cache_folder_named_by_the_environment_is_hidden(tmp_path: Path) -> None:
    other = tmp_path / "other-cache"
    other.mkdir()
    p = _proj(tmp_path)
    rules = build_rules(
        p, env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin", "LOCUS_CACHE_DIR": str(other)}
    )
    assert str(other) in rules.hidden


# -- the sandbox's self-check, its description and the rules report ---------------------------------------
class _FakeSandbox:
    """Runs the self-check's probe unconfined, after `edit` rewrote it: a sandbox that lets through
    exactly what the test says."""

    def __init__(self, kind: str, edit) -> None:  # type: ignore[no-untyped-def]
        self.kind, self.edit = kind, edit

    def wrap(self, script: str, proj: Path) -> list[str]:
        return ["/bin/sh", "-c", f"cd {shlex.quote(str(proj))} && {self.edit(script)}"]


def _no_git_no_outside(caps: str):  # type: ignore[no-untyped-def]
    def edit(script: str) -> str:
        script = re.sub(r"echo x > \.git/planted; echo x > \S+; ", "", script)
        return script.replace("grep '^CapEff:' /proc/self/status", f"echo 'CapEff: {caps}'")

    return edit


@pytest.mark.parametrize(
    "kind, edit, verdict",
    [
        ("bwrap", lambda s: "true", (False, "the project is not writable inside the sandbox")),
        (
            "bwrap",
            lambda s: s,
            (False, "the project's .git is writable inside the sandbox (or could be unmounted)"),
        ),
        (
            "bwrap",
            lambda s: s.replace("echo x > .git/planted; ", ""),
            (False, "a file outside the project is writable inside the sandbox"),
        ),
        ("sandbox-exec", lambda s: s.replace("echo x > .git/planted; ", ""), (True, "ok")),
        (
            "bwrap",
            _no_git_no_outside("0000003fffffffff"),
            (False, "commands keep capabilities inside the sandbox (CapEff: 0000003fffffffff)"),
        ),
        ("bwrap", _no_git_no_outside("0000000000000000"), (True, "ok")),
        (
            "bwrap",
            lambda s: "echo ok > inside.txt",
            (False, "commands keep capabilities inside the sandbox (unknown)"),
        ),
        ("bwrap", lambda s: "echo boom >&2; exit 3", (False, "boom")),
    ],
)
def test_the_self_check_names_what_leaks(kind: str, edit, verdict) -> None:  # type: ignore[no-untyped-def]
    assert sandbox_mod._self_check(_FakeSandbox(kind, edit)) == verdict


def test_sandbox_descriptions() -> None:
    assert Sandbox("bwrap").describe() == (
        "commands run in bubblewrap: writes only inside the project (not its .git), home folder and secrets "
        "hidden, own process namespace"
    )
    assert Sandbox("sandbox-exec").describe() == (
        "commands run in sandbox-exec: writes only inside the project (not its .git) and temp dirs, home "
        "folder and secrets hidden"
    )
    tail = ": every command runs with your full permissions and needs your approval"
    assert (
        Sandbox("none", reason="bwrap missing").describe()
        == f"no command sandbox is available (bwrap missing){tail}"
    )
    assert Sandbox("none").describe() == f"no command sandbox is available{tail}"


def test_the_rules_report_heads_with_the_sandbox_and_any_refusal(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    p = _proj(tmp_path)
    monkeypatch.chdir(tmp_path)
    rules, text = sandbox_mod.sandbox_rules_report(p)
    sb = sandbox_mod.detect_sandbox("auto")
    assert (
        rules.project == str(p)
        and not rules.network
        and text.startswith(f"sandbox: {sb.kind} — {sb.describe()}\n")
    )
    assert "refused" not in text
    for where in ("a", "b"):
        (p / where).mkdir()
        os.symlink(tmp_path, p / where / ".git")
    rules, text = sandbox_mod.sandbox_rules_report(p, network=True, extra_env=["FOO"])
    assert rules.network and "FOO" in rules.env_allowlist and text.startswith("sandbox: ")
    line = text.splitlines()[1]
    assert (
        line.startswith("commands are refused in this project: a/.git is a symbolic link")
        and "; b/.git is a" in line
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux choices")
def test_detect_sandbox_choices_on_linux() -> None:
    assert sandbox_mod.detect_sandbox("none") == Sandbox("none", reason="turned off")
    assert sandbox_mod.detect_sandbox("sandbox-exec") == Sandbox(
        "none", reason=f"no sandbox for {sys.platform}", broken=True
    )
    sb = sandbox_mod.detect_sandbox("auto")
    assert sandbox_mod.detect_sandbox() == sb and sandbox_mod.detect_sandbox("bwrap") == sb
    assert sandbox_mod.sandbox_self_check() == (sb.active, sb.describe())


def test_a_probe_that_cannot_start_fails_the_check() -> None:
    class Missing(_FakeSandbox):
        def wrap(self, script: str, proj: Path) -> list[str]:
            return [str(proj / "no-such-sandbox")]

    ok, why = sandbox_mod._self_check(Missing("bwrap", None))
    assert not ok and "No such file or directory" in why


def test_output_capture_fills_the_head_to_the_byte() -> None:
    cap = sandbox_mod._Capture(8)  # 4 bytes of head, 4 of tail
    cap.add(b"abc")
    cap.add(b"d")
    cap.add(b"efghij")
    assert bytes(cap.head) == b"abcd" and bytes(cap.tail) == b"ghij" and cap.total == 10
