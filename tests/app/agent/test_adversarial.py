"""The adversarial battery (hardening round 3): each attack a project or a model could make on the
command sandbox, through the door a user walks through (`locus agent --replay ... --yes --json`),
as root and as an unprivileged user. Real bwrap, real git, a fake home full of secrets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.agent.sandbox import detect_sandbox

from .helpers import answer, call

REPO = Path(__file__).resolve().parents[3]
NOBODY = 65534
SECRET = "leak-0d9f3b"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable  # one nobody can run


def _can_run_as_nobody() -> bool:
    if os.getuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = [*_as(NOBODY), sys.executable, "-c", "import app.agent"]
    return subprocess.run(probe, cwd=REPO, capture_output=True, timeout=60).returncode == 0


def _as(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


USERS = [
    pytest.param(
        None,
        id="root" if os.getuid() == 0 else "user",
    ),
    pytest.param(
        NOBODY,
        id="unprivileged",
        marks=pytest.mark.skipif(not _can_run_as_nobody(), reason="not root, or nobody cannot run Python"),
    ),
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap attacks: Linux"),
    pytest.mark.skipif(detect_sandbox("auto").kind != "bwrap", reason="bwrap not installed/working"),
]


@dataclass
class World:
    """A fake home with secrets, a data dir, a project, and who runs `locus`."""

    base: Path
    uid: int | None
    path_prefix: str = ""  # put before PATH (a toolchain in the fake home)

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def proj(self) -> Path:
        return self.base / "proj"

    def git(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        ident = ["-c", "user.name=T", "-c", "user.email=t@example.com", "-c", "safe.directory=*"]
        return subprocess.run(
            [*_as(self.uid), "git", *ident, *args],
            cwd=cwd or self.proj,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM")}
        return {
            **keep,
            "PATH": self.path_prefix + keep.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LOCUS_DATA_DIR": str(self.data),
            "NO_COLOR": "1",
            "LC_SECRET": SECRET,
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def agent(self, *outputs: str, flags: tuple[str, ...] = ("--yes",)) -> list[dict]:
        """Run the model outputs through the real CLI; returns its JSON events."""
        replay = self.base / "replay.jsonl"
        replay.write_text("".join(json.dumps(o) + "\n" for o in [*outputs, answer("done")]))
        self._own(replay)
        argv = [sys.executable, "-m", "app.cli", "agent", str(self.proj), "task", "--replay", str(replay)]
        p = subprocess.run(
            [*_as(self.uid), *argv, "--json", *flags],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]

    def _own(self, *paths: Path) -> None:
        if self.uid is not None:
            for p in paths:
                os.chown(p, self.uid, self.uid)

    def own_all(self) -> None:
        if self.uid is not None:
            for d, dirs, files in os.walk(self.base):
                for n in [*dirs, *files]:
                    os.lchown(os.path.join(d, n), self.uid, self.uid)
            os.chown(self.base, self.uid, self.uid)


def _results(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "tool_result"]


def _warnings(events: list[dict]) -> str:
    return "\n".join(e.get("message", "") for e in events if e["type"] == "warning")


@pytest.fixture(params=USERS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="locus-adversary-")).resolve()
    base.chmod(0o755)
    w = World(base, request.param)
    home = w.home
    for rel, text in {
        ".ssh/id_rsa": f"PRIVATE KEY {SECRET}",
        ".aws/credentials": f"aws_secret_access_key={SECRET}",
        ".cargo/config.toml": f'[registries.x]\ntoken = "{SECRET}"\n',
        ".cargo/bin/cargo-fake": "#!/bin/sh\necho cargo-ran\n",
        ".m2/settings.xml": f"<password>{SECRET}</password>",
        ".gradle/gradle.properties": f"token={SECRET}",
        ".gem/credentials": f":rubygems_api_key: {SECRET}",
        "notes.txt": f"private {SECRET}",
    }.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    (home / ".cargo" / "bin" / "cargo-fake").chmod(0o755)
    w.proj.mkdir()
    (w.proj / "app.py").write_text("print('hi')\n")
    w.own_all()
    try:
        yield w
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _init_repo(w: World) -> None:
    assert w.git("init", "-q").returncode == 0
    assert w.git("add", "-A").returncode == 0
    assert w.git("commit", "-qm", "initial").returncode == 0


# -- critical: a project steering the mounts --------------------------------------------------------
def test_symlinked_submodule_git_does_not_open_the_home_folder(world: World) -> None:
    _init_repo(world)
    up = os.path.relpath(world.home, world.proj / "sub")
    plant = (
        "printf '[submodule \"sub\"]\\n\\tpath = sub\\n\\turl = x\\n' > .gitmodules; "
        f"mkdir -p sub; ln -s {up} sub/.git; echo planted"
    )
    peek = "cat ~/.ssh/id_rsa sub/.git/.ssh/id_rsa; ls -a ~ sub/.git; echo peeked"
    events = world.agent(call("run_command", command=plant), call("run_command", command=peek))
    res = _results(events)
    assert "planted" in res[0]["content"] and "sub/.git was created" in res[0]["content"]
    assert "peeked" in res[1]["content"] and SECRET not in res[1]["content"]
    assert "notes.txt" not in res[1]["content"].splitlines()
    assert "sub/.git was created" in _warnings(events)
    assert not os.path.lexists(world.proj / "sub" / ".git")  # moved into the quarantine
    assert list((world.data / "quarantine").iterdir())


def test_symlinked_git_folders_refuse_commands_clearly(world: World) -> None:
    os.symlink(world.home, world.proj / ".git")
    events = world.agent(call("run_command", command="cat ~/.ssh/id_rsa; echo ran"))
    res = _results(events)[0]
    assert not res["ok"] and ".git is a symbolic link" in res["content"]
    assert SECRET not in res["content"] and "ran" not in res["content"]
    assert "bwrap:" not in res["content"]  # a clear refusal, not bubblewrap's failure


def test_gitdir_file_inside_the_project_keeps_its_git_folder_read_only(world: World) -> None:
    _init_repo(world)
    os.rename(world.proj / ".git", world.proj / "realgit")
    (world.proj / ".git").write_text("gitdir: realgit\n")
    world.own_all()
    hook = "realgit/hooks/post-checkout"
    plant = f"printf '#!/bin/sh\\ntouch pwned\\n' > {hook}; chmod +x {hook}; echo x"
    repoint = "echo 'gitdir: elsewhere' > .git; git config core.fsmonitor 'touch pwned'"
    events = world.agent(call("run_command", command=plant), call("run_command", command=repoint))
    assert not (world.proj / hook).exists()
    assert (world.proj / ".git").read_text() == "gitdir: realgit\n"
    assert "fsmonitor" not in world.git("config", "--list").stdout
    assert "Read-only file system" in _results(events)[0]["content"]


# -- high: git folders the sandbox did not protect ------------------------------------------------
def test_git_init_with_fsmonitor_is_undone_before_the_user_runs_git(world: World) -> None:
    cmd = "git init -q && git config core.fsmonitor 'touch ../pwned; false' && mkdir -p deep && cd deep && "
    cmd += "git init -q && git config core.hooksPath /tmp && echo made"
    events = world.agent(call("run_command", command=cmd))
    content = _results(events)[0]["content"]
    assert "made" in content and ".git was created" in content and "deep/.git was created" in content
    assert not os.path.lexists(world.proj / ".git") and not os.path.lexists(world.proj / "deep" / ".git")
    world.git("status", cwd=world.proj)  # the user's next git status, outside any sandbox
    assert not (world.base / "pwned").exists()


def test_submodule_git_renamed_away_and_replaced_is_put_back(world: World) -> None:
    _init_repo(world)
    sub = world.proj / "vendor" / "lib"
    sub.mkdir(parents=True)
    (sub / "x.txt").write_text("x\n")
    world.own_all()
    assert world.git("init", "-q", cwd=sub).returncode == 0
    (world.proj / ".gitmodules").write_text('[submodule "lib"]\n\tpath = vendor/lib\n\turl = x\n')
    world.own_all()
    original = os.lstat(sub / ".git").st_ino
    cmd = "mv vendor vendor2 && mkdir -p vendor/lib/.git/hooks"
    cmd += " && echo evil > vendor/lib/.git/hooks/post-checkout"
    events = world.agent(call("run_command", command=cmd + " && echo swapped"))
    content = _results(events)[0]["content"]
    assert "swapped" in content and "vendor/lib/.git was replaced" in content
    assert os.lstat(sub / ".git").st_ino == original  # the original is back where git looks
    assert not (sub / ".git" / "hooks" / "post-checkout").exists()
    assert not os.path.lexists(world.proj / "vendor2" / "lib" / ".git")


def test_no_capabilities_to_unmount_the_read_only_git(world: World) -> None:
    _init_repo(world)
    cmd = (
        "umount -l .git; umount .git; mount -o remount,rw .git; echo x > .git/hooks/pre-commit; "
        "grep CapEff /proc/self/status"
    )
    events = world.agent(call("run_command", command=cmd))
    content = _results(events)[0]["content"]
    assert "CapEff:\t0000000000000000" in content
    assert not (world.proj / ".git" / "hooks" / "pre-commit").exists()


# -- medium: what a command can read and use ---------------------------------------------------------
def test_toolchain_credentials_environment_proc_and_sockets_stay_out(world: World) -> None:
    cmd = (
        "cargo-fake; cat ~/.cargo/config.toml ~/.m2/settings.xml ~/.gradle/gradle.properties "
        "~/.gem/credentials; echo LC=$(env | grep -c LC_SECRET); echo PROCS=$(ls /proc | grep -c '^[0-9]'); "
        "echo INIT=$(tr '\\0' ' ' < /proc/1/cmdline); "
        "echo SOCKS=$(find / \\( -path /proc -o -path /usr \\) -prune -o -type s -print 2>/dev/null | wc -l)"
    )
    world.path_prefix = f"{world.home / '.cargo' / 'bin'}:"
    events = world.agent(call("run_command", command=cmd))
    content = _results(events)[0]["content"]
    got = dict(line.split("=", 1) for line in content.splitlines() if "=" in line and line[:1].isupper())
    assert "cargo-ran" in content  # the toolchain itself still works
    assert SECRET not in content
    assert got["LC"] == "0"
    assert int(got["PROCS"]) < 10  # only the command's own processes
    assert "bwrap" in got["INIT"] or "sh" in got["INIT"]  # not the host's init or Locus
    assert got["SOCKS"] == "0"


def test_memory_tmpfs_and_file_size_are_limited(world: World) -> None:
    cmd = (
        f"dd if=/dev/zero of=/tmp/fill bs=1M count=1200 2>&1 | grep -o 'No space left' ; "
        f"{PY} -c 'b = bytearray(6 << 30)' 2>&1 | tail -1; ls -la /tmp/fill | cut -d' ' -f5; echo end"
    )
    events = world.agent(call("run_command", command=cmd))
    content = _results(events)[0]["content"]
    assert "No space left" in content and "MemoryError" in content
    lines = content.splitlines()
    assert int(lines[lines.index("end") - 1]) <= 1 << 30  # the private /tmp holds 1 GiB at most


@pytest.mark.parametrize("world", [USERS[1]], indirect=True)
def test_process_count_is_limited_for_a_normal_user(world: World) -> None:
    cmd = "i=0; while [ $i -lt 800 ]; do sleep 3 & i=$((i+1)); done 2>&1"
    cmd += " | grep -c -i 'fork\\|resource' ; echo end"
    events = world.agent(call("run_command", command=cmd))
    lines = _results(events)[0]["content"].splitlines()
    assert int(lines[lines.index("end") - 1]) > 0  # forks past the limit failed
