"""Running the model's shell commands: in a sandbox where the OS has one, with a scrubbed
environment, a timeout that kills the whole process group, and a cap on the output kept.

Linux: `bwrap` (bubblewrap) with the filesystem read-only except the project and a private /tmp,
no network unless allowed, its own PID namespace (so a timeout kills every descendant).
macOS: `sandbox-exec` with a profile that denies writes outside the project and temp directories,
and the network unless allowed. Elsewhere, or when the tool is missing or does not work here,
commands run unsandboxed and every one of them needs the user's approval.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CommandResult", "Sandbox", "detect_sandbox", "run_command", "scrub_env"]

# Variables that carry credentials: dropped before any command runs.
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH|COOKIE"
    r"|SESSION_?ID|(^|_)KEY($|_)|^AWS_|^AZURE_|^GCP_|^GOOGLE_APPLICATION|^OPENAI_|^ANTHROPIC_"
    r"|^HF_HUB_TOKEN|^NETRC$|^SSH_|^GPG_|^KUBECONFIG$|^DOCKER_(HOST|CONFIG|CERT)",
    re.IGNORECASE,
)
# Git variables that would point the project's own git commands somewhere else.
_GIT_REDIRECT = re.compile(
    r"^GIT_(DIR|WORK_TREE|INDEX_FILE|OBJECT_DIRECTORY|ALTERNATE_OBJECT_DIRECTORIES|COMMON_DIR"
    r"|NAMESPACE|CEILING_DIRECTORIES|CONFIG.*|ASKPASS|SSH.*|EXEC_PATH)$"
)


def scrub_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment commands get: credentials removed, pagers and prompts off."""
    src = dict(os.environ if env is None else env)
    out = {
        k: v for k, v in src.items() if not _SECRET_NAME.search(k) and not _GIT_REDIRECT.match(k)
    }
    out.update(
        PAGER="cat", GIT_PAGER="cat", GIT_TERMINAL_PROMPT="0", TERM="dumb", NO_COLOR="1",
        PYTHONUNBUFFERED="1", LOCUS_AGENT="1",
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class Sandbox:
    """How commands are confined: kind is "bwrap", "sandbox-exec" or "none"."""

    kind: str
    executable: str | None = None
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "bwrap":
            return "commands run in bubblewrap: writes only inside the project and a private /tmp"
        if self.kind == "sandbox-exec":
            return "commands run in sandbox-exec: writes only inside the project and temp dirs"
        return (
            "no command sandbox is available"
            + (f" ({self.reason})" if self.reason else "")
            + ": every command runs with your full permissions and needs your approval"
        )

    def wrap(self, command: str, root: Path, *, allow_network: bool = False) -> list[str]:
        """The argv that runs `command` with /bin/sh in `root` under this sandbox."""
        shell = ["/bin/sh", "-c", command]
        if self.kind == "bwrap":
            return [self.executable or "bwrap", *_bwrap_args(root, allow_network), "--", *shell]
        if self.kind == "sandbox-exec":
            profile = _seatbelt_profile(root, allow_network)
            return [self.executable or "sandbox-exec", "-p", profile, *shell]
        return shell


def _bwrap_args(root: Path, allow_network: bool) -> list[str]:
    args = [
        "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        "--tmpfs", "/var/tmp", "--bind", str(root), str(root), "--chdir", str(root),
        "--setenv", "TMPDIR", "/tmp",
    ]  # fmt: skip
    # The private /tmp would hide interpreters and tools that live under the real one (a venv in
    # /tmp, a CI checkout): bring those back read-only, before the project's writable bind.
    for path in _visible_under_tmp(root):
        args[args.index("--bind") : args.index("--bind")] = ["--ro-bind", path, path]
    if not allow_network:
        args.insert(0, "--unshare-net")
    return args


def _visible_under_tmp(root: Path) -> list[str]:
    """Directories of the interpreter and of PATH entries that a tmpfs on /tmp or /var/tmp would
    hide, outermost first and not inside the project (which is bound writable anyway)."""
    tmps = ("/tmp", "/var/tmp")
    cands = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    cands.update(p for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    out: list[str] = []
    for c in sorted({os.path.realpath(c) for c in cands}, key=len):
        if not any(c.startswith(t + "/") for t in tmps) or not os.path.isdir(c):
            continue
        if c == str(root) or c.startswith(str(root) + "/"):
            continue
        if any(c == o or c.startswith(o + "/") for o in out):
            continue
        out.append(c)
    return out


def _sb_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seatbelt_profile(root: Path, allow_network: bool) -> str:
    temps = {os.path.realpath(p) for p in ("/tmp", "/private/var/folders", tempfile.gettempdir())}
    writable = " ".join(f"(subpath {_sb_str(p)})" for p in sorted({str(root), *temps}))
    lines = [
        "(version 1)",
        "(allow default)",
        "(deny file-write*)",
        f"(allow file-write* {writable}"
        ' (literal "/dev/null") (literal "/dev/zero") (literal "/dev/dtracehelper")'
        ' (regex #"^/dev/tty") (regex #"^/dev/fd/"))',
    ]
    if not allow_network:
        lines.append("(deny network*)")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=8)
def detect_sandbox(prefer: str = "auto") -> Sandbox:
    """The sandbox commands will run in; "none" if no working one is found.

    `prefer`: "auto", "none" (force unsandboxed), "bwrap" or "sandbox-exec".
    """
    if prefer == "none":
        return Sandbox("none", reason="turned off")
    if prefer in ("auto", "bwrap") and sys.platform.startswith("linux"):
        exe = shutil.which("bwrap")
        if exe is None:
            return Sandbox("none", reason="bwrap is not installed")
        with tempfile.TemporaryDirectory() as d:
            probe = Sandbox("bwrap", exe).wrap("true", Path(os.path.realpath(d)))
            ok, why = _probe(probe)
        return (
            Sandbox("bwrap", exe)
            if ok
            else Sandbox("none", reason=f"bwrap does not work here: {why}")
        )
    if prefer in ("auto", "sandbox-exec") and sys.platform == "darwin":
        exe = shutil.which("sandbox-exec") or "/usr/bin/sandbox-exec"
        if not os.path.exists(exe):
            return Sandbox("none", reason="sandbox-exec is missing")
        with tempfile.TemporaryDirectory() as d:
            probe = Sandbox("sandbox-exec", exe).wrap("true", Path(os.path.realpath(d)))
            ok, why = _probe(probe)
        return (
            Sandbox("sandbox-exec", exe)
            if ok
            else Sandbox("none", reason=f"sandbox-exec does not work here: {why}")
        )
    return Sandbox("none", reason=f"no sandbox for {sys.platform}")


def _probe(argv: list[str]) -> tuple[bool, str]:
    try:
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
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
    env: dict[str, str] | None = None,
) -> CommandResult:
    """Run `command` in `root`; on timeout or cancel the whole process group is killed."""
    argv = sandbox.wrap(command, root, allow_network=allow_network)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=root, env=scrub_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )  # fmt: skip
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
    reader.join(timeout=2)
    text, total = cap.text()
    code = None if (timed_out or cancelled) else proc.returncode
    if not reader.is_alive():  # else a process that left the group still holds the pipe
        stdout.close()
    return CommandResult(code, text, total, time.monotonic() - t0, timed_out, cancelled)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
