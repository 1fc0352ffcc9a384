"""Running the model's shell commands: in a sandbox where the OS has one, with an allowlisted
environment, a timeout, the whole process tree killed when the command ends, and a cap on the
output kept.

The rules (sandbox_rules.py) say what a command can reach: the project writable except its .git,
system and toolchain dirs read-only, home, secrets and Locus's own data hidden. Linux enforces them
with `bwrap` (own PID namespace, no network unless allowed), macOS with `sandbox-exec`. When the
sandbox is missing or fails its self-check, `Sandbox.broken` is set and every command needs the
user's own approval (see approvals.py).
"""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .gitguard import GitChange, GitRefused, GitScan, neutralise
from .gitguard import scan as scan_git
from .sandbox_rules import (
    ENV_ALLOWLIST,
    SandboxRules,
    build_rules,
    command_env,
    describe_rules,
    render_bwrap,
    render_limits,
    render_seatbelt,
    render_ulimit,
)

__all__ = [
    "CommandResult",
    "GitRefused",
    "Sandbox",
    "detect_sandbox",
    "run_command",
    "sandbox_rules_report",
    "sandbox_self_check",
    "scrub_env",
]


def scrub_env(env: Mapping[str, str] | None = None, allow: Iterable[str] = ()) -> dict[str, str]:
    """The environment commands get: an allowlist (PATH, HOME, LANG, LC_*, ... plus `allow`),
    pagers and prompts off. Everything else, secrets of any name included, stays out."""
    return command_env((*ENV_ALLOWLIST, *allow), env)


@dataclass(frozen=True)
class Sandbox:
    """How commands are confined: kind is "bwrap", "sandbox-exec" or "none". `broken` says a
    sandbox was wanted but is missing or failed its self-check (not turned off by the user)."""

    kind: str
    executable: str | None = None
    reason: str = ""
    broken: bool = False

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "bwrap":
            return (
                "commands run in bubblewrap: writes only inside the project (not its .git), "
                "home folder and secrets hidden, own process namespace"
            )
        if self.kind == "sandbox-exec":
            return (
                "commands run in sandbox-exec: writes only inside the project (not its .git) and "
                "temp dirs, home folder and secrets hidden"
            )
        return (
            "no command sandbox is available"
            + (f" ({self.reason})" if self.reason else "")
            + ": every command runs with your full permissions and needs your approval"
        )

    def wrap(
        self,
        command: str,
        root: Path,
        *,
        allow_network: bool = False,
        rules: SandboxRules | None = None,
    ) -> list[str]:
        """The argv that runs `command` with /bin/sh in `root` under this sandbox, with the rules'
        per-command limits (prlimit on Linux, ulimit on macOS)."""
        if rules is None:  # unconfined: nothing is mounted, so the git layout cannot refuse it
            nothing = GitScan(os.path.realpath(root)) if self.kind == "none" else None
            rules = build_rules(root, network=allow_network, git=nothing)
        shell = ["/bin/sh", "-c", command]
        if self.kind == "none":
            return [*_limits_prefix(rules), *_tree_guard(), *shell]
        if self.kind == "bwrap":
            return [*_limits_prefix(rules), self.executable or "bwrap", *render_bwrap(rules), "--", *shell]
        profile = render_seatbelt(rules, (tempfile.gettempdir(),))
        limited = ["/bin/sh", "-c", render_ulimit(rules) + '; exec /bin/sh -c "$1"', "locus-limits", command]
        return [self.executable or "sandbox-exec", "-p", profile, *limited]


def _limits_prefix(rules: SandboxRules) -> list[str]:
    """prlimit's argv prefix on Linux, or nothing where it is missing (doctor says so)."""
    exe = shutil.which("prlimit") if sys.platform.startswith("linux") else None
    return render_limits(rules, exe) if exe else []


@functools.lru_cache(maxsize=1)
def _tree_guard() -> tuple[str, ...]:
    """A prefix that keeps an unsandboxed command's whole process tree killable: on Linux a PID
    namespace (`unshare`), so when the shell ends every process it left behind (setsid, double
    fork) ends too, and a parent-death signal so it all ends when Locus dies. () elsewhere, and
    then the process group and the environment tag (run_command) are what is left."""
    if not sys.platform.startswith("linux"):
        return ()
    prefix: list[str] = []
    setpriv = shutil.which("setpriv")
    if setpriv and _probe([setpriv, "--pdeathsig", "KILL", "--", "/bin/true"])[0]:
        prefix = [setpriv, "--pdeathsig", "KILL", "--"]
    unshare = shutil.which("unshare")
    if unshare:
        # A fresh /proc too, so the command cannot read Locus's environment from it.
        ns = ["--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
        for flags in ([], ["--user", "--map-current-user"]):
            argv = [unshare, *flags, *ns, "--"]
            if _probe([*argv, "/bin/true"])[0]:
                return (*prefix, *argv)
    return tuple(prefix)


def detect_sandbox(prefer: str = "auto") -> Sandbox:
    """The sandbox commands will run in; "none" if no working one is found (then `broken` unless
    `prefer` was "none").

    `prefer`: "auto", "none" (force unsandboxed), "bwrap" or "sandbox-exec". The tool found on
    PATH now is probed once and the answer cached.
    """
    if prefer == "none":
        return Sandbox("none", reason="turned off")
    if prefer in ("auto", "bwrap") and sys.platform.startswith("linux"):
        return _detect("bwrap", shutil.which("bwrap"))
    if prefer in ("auto", "sandbox-exec") and sys.platform == "darwin":
        exe = shutil.which("sandbox-exec") or "/usr/bin/sandbox-exec"
        return _detect("sandbox-exec", exe if os.path.exists(exe) else None)
    return Sandbox("none", reason=f"no sandbox for {sys.platform}", broken=True)


@functools.lru_cache(maxsize=8)
def _detect(kind: str, exe: str | None) -> Sandbox:
    if exe is None:
        what = "bwrap is not installed" if kind == "bwrap" else f"{kind} is missing"
        return Sandbox("none", reason=what, broken=True)
    ok, why = _self_check(Sandbox(kind, exe))
    if ok:
        return Sandbox(kind, exe)
    return Sandbox("none", reason=f"{kind} does not work here: {why}", broken=True)


def _self_check(sb: Sandbox) -> tuple[bool, str]:
    """Run a probe in `sb` on a scratch project: it must write there, not into its .git (not even
    after trying to unmount it), not (bwrap) outside it, and hold no capabilities."""
    with tempfile.TemporaryDirectory(prefix="locus-sandbox-check-") as d:
        base = Path(os.path.realpath(d))
        proj, outside = base / "project", base / "outside.txt"
        (proj / ".git").mkdir(parents=True)
        outside.write_text("untouched")
        script = (
            "echo ok > inside.txt; umount -l .git 2>/dev/null; umount .git 2>/dev/null; "
            f"echo x > .git/planted; echo x > {shlex.quote(str(outside))}; "
            "grep '^CapEff:' /proc/self/status > caps.txt 2>/dev/null; exit 0"
        )
        ok, why = _probe(sb.wrap(script, proj))
        if not ok:
            return False, why
        if not (proj / "inside.txt").exists():
            return False, "the project is not writable inside the sandbox"
        if (proj / ".git" / "planted").exists():
            return False, "the project's .git is writable inside the sandbox (or could be unmounted)"
        if sb.kind == "bwrap" and outside.read_text() != "untouched":
            return False, "a file outside the project is writable inside the sandbox"
        caps = (proj / "caps.txt").read_text().split() if (proj / "caps.txt").exists() else []
        if sb.kind == "bwrap" and (len(caps) != 2 or int(caps[1], 16) != 0):
            return False, f"commands keep capabilities inside the sandbox ({' '.join(caps) or 'unknown'})"
    return True, "ok"


def sandbox_rules_report(
    project: str | os.PathLike[str] | None = None,
    *,
    network: bool = False,
    extra_env: Iterable[str] = (),
) -> tuple[SandboxRules, str]:
    """The sandbox rules for `project` (default: the current directory) and a readable
    rendering of them, headed by which sandbox enforces them here."""
    root = project or os.getcwd()
    git = scan_git(root)
    refusal = "; ".join(git.problems)
    git.problems.clear()  # show the rules anyway, and say commands would be refused
    rules = build_rules(root, network=network, extra_env=extra_env, git=git)
    sb = detect_sandbox("auto")
    head = f"sandbox: {sb.kind} — {sb.describe()}\n"
    if refusal:
        head += f"commands are refused in this project: {refusal}\n"
    return rules, head + describe_rules(rules)


def sandbox_self_check() -> tuple[bool, str]:
    """For `locus doctor`: (True, what confines commands) or (False, why commands would run
    unconfined). Probes afresh, so a sandbox fixed (or broken) since is seen."""
    _detect.cache_clear()
    sb = detect_sandbox("auto")
    if sb.active:
        return True, sb.describe()
    return False, sb.describe()


def _probe(argv: list[str]) -> tuple[bool, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]


@dataclass
class CommandResult:
    exit_code: int | None  # None when killed by the timeout or a stop
    output: str  # stdout and stderr interleaved, capped
    total_chars: int  # how much output there was before the cap
    elapsed: float
    timed_out: bool = False
    cancelled: bool = False
    git_changes: list[GitChange] = field(default_factory=list)  # git folders undone after it ran

    @property
    def truncated(self) -> bool:
        return self.total_chars > len(self.output)


class _Capture:
    """Keeps the head and the tail of a stream, counting what was dropped between them."""

    def __init__(self, cap: int):
        self.head_cap = cap // 2
        self.tail_cap = cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def text(self) -> tuple[str, int]:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped > 0:
            mid = f"\n[... {dropped} bytes of output omitted ...]\n"
            return head + mid + tail, self.total
        return head + tail, self.total


def run_command(
    command: str,
    root: Path,
    *,
    sandbox: Sandbox,
    timeout: float,
    output_cap: int,
    allow_network: bool = False,
    cancel: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
    env_allow: Iterable[str] = (),
    hidden: Iterable[str | os.PathLike[str]] = (),
    quarantine: Path | None = None,
) -> CommandResult:
    """Run `command` in `root`; at the timeout or a cancel, and when the shell ends, every
    process it started is killed (process group, PID namespace, and a tag in the environment
    that setsid and double forks keep). `hidden` adds paths the sandbox must hide.

    Git folders the command created, replaced or re-pointed are undone before this returns (moved
    into `quarantine`, default Locus's data dir) and listed in `git_changes`. Raises GitRefused
    when the project's git layout cannot be protected (a symlinked .git)."""
    before = scan_git(root)
    git = before if sandbox.active else GitScan(before.root)
    rules = build_rules(root, network=allow_network, extra_env=env_allow, extra_hidden=hidden, git=git)
    argv = sandbox.wrap(command, root, allow_network=allow_network, rules=rules)
    tag = f"{_SESSION}-{secrets.token_hex(6)}"
    if not sandbox.active:
        _start_watchdog()
    cmd_env = scrub_env(env, env_allow)
    cmd_env[_TAG] = tag
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=root,
        env=cmd_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    _LIVE[proc.pid] = tag
    try:
        result = _supervise(proc, tag, t0, timeout, output_cap, cancel)
    finally:
        _LIVE.pop(proc.pid, None)
        _kill_tree(proc.pid, tag)
    result.git_changes = neutralise(before, scan_git(root), quarantine or _default_quarantine())
    return result


def _default_quarantine() -> Path:
    from ..settings import data_dir

    return Path(data_dir()) / "quarantine"


def _supervise(
    proc: subprocess.Popen[bytes],
    tag: str,
    t0: float,
    timeout: float,
    output_cap: int,
    cancel: threading.Event | None,
) -> CommandResult:
    cap = _Capture(output_cap)
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        while True:
            chunk = stdout.read1(65536)
            if not chunk:
                return
            cap.add(chunk)

    reader = threading.Thread(target=pump, name="locus-command-output", daemon=True)
    reader.start()
    timed_out = cancelled = False
    deadline = t0 + timeout
    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            cancelled = True
        elif time.monotonic() >= deadline:
            timed_out = True
        if timed_out or cancelled:
            break
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    if timed_out or cancelled:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
    elif _signal_group(pgid, signal.SIGTERM):
        # The shell is done but something it started lingers in its group: end it too.
        reader.join(timeout=0.5)
        _signal_group(pgid, signal.SIGKILL)
    _kill_tagged(tag)  # setsid/double-fork survivors that still hold the output pipe
    reader.join(timeout=2)
    text, total = cap.text()
    code = None if (timed_out or cancelled) else proc.returncode
    if not reader.is_alive():  # else a process that left the group still holds the pipe
        stdout.close()
    return CommandResult(code, text, total, time.monotonic() - t0, timed_out, cancelled)


_TAG = "LOCUS_COMMAND_TAG"
_SESSION = secrets.token_hex(6)  # this Locus process's prefix of every command tag
_LIVE: dict[int, str] = {}  # pid of a running command's leader -> its tag
_watchdog: subprocess.Popen[bytes] | None = None
# Waits for EOF on stdin (this Locus process is gone, even by SIGKILL), then kills every process
# whose environment carries one of its command tags. For Linux without a usable PID namespace.
_WATCHDOG = (
    "read _; for _ in 1 2 3; do for f in /proc/[0-9]*/environ; do "
    'if grep -qz "^$1=$2-" "$f" 2>/dev/null; then p=${f#/proc/}; kill -9 "${p%/environ}"; fi; '
    "done; done 2>/dev/null"
)


_watchdog_lock = threading.Lock()


def _start_watchdog() -> None:
    with _watchdog_lock:
        _start_watchdog_locked()


def _start_watchdog_locked() -> None:
    global _watchdog
    if _watchdog is not None or not sys.platform.startswith("linux") or not shutil.which("grep"):
        return
    try:
        _watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "locus-watchdog", _TAG, _SESSION],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except OSError:
        _watchdog = None


def _kill_tree(pgid: int, tag: str) -> None:
    _signal_group(pgid, signal.SIGKILL)
    _kill_tagged(tag)


def _kill_tagged(tag: str) -> int:
    """SIGKILL every process whose environment carries this command's tag (Linux /proc); a
    process that left the session and process group still has it. Returns how many."""
    if not sys.platform.startswith("linux"):
        return 0
    needle = f"{_TAG}={tag}".encode()
    killed = 0
    for _ in range(3):  # a fork during the sweep is caught by the next pass
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle not in f.read().split(b"\0"):
                        continue
                os.kill(int(pid), signal.SIGKILL)
                found += 1
            except OSError:
                continue
        killed += found
        if not found:
            break
    return killed


@atexit.register
def _kill_live_commands() -> None:
    """When Locus exits, commands still running (and all they started) end with it."""
    for pid, tag in list(_LIVE.items()):
        _kill_tree(pid, tag)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
