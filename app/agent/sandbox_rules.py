"""The command sandbox's rules as data: what a command may write, read, never see; whether it
has the network; which environment variables it gets. Rendered to bubblewrap arguments (Linux)
and a Seatbelt profile (macOS), and to text for the README and `locus doctor`.

The rules are built from the environment the process sees (HOME, PATH, LOCUS_DATA_DIR...), so a
test can point HOME at a fake home and check what a command can reach.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .gitguard import GitScan
from .gitguard import scan as scan_git

__all__ = [
    "ALWAYS_HIDDEN_HOME",
    "ENV_ALLOWLIST",
    "HOME_TOOLCHAIN_DIRS",
    "Limits",
    "SandboxRules",
    "build_rules",
    "command_env",
    "describe_rules",
    "render_bwrap",
    "render_limits",
    "render_seatbelt",
    "render_ulimit",
]

# Directories of the OS and package managers that commands read (never write).
SYSTEM_DIRS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/nix",
    "/gnu",
    "/snap",
    "/run/current-system",
)
# System files with secrets of their own, hidden even though /etc is readable.
SYSTEM_HIDDEN = (
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/ssh/ssh_host_*_key",
)
# Toolchains installed in the home folder, readable when they exist; the rest of home is hidden.
HOME_TOOLCHAIN_DIRS = (
    ".cargo",
    ".rustup",
    ".npm",
    ".pyenv",
    ".local/bin",
    ".local/lib",
    ".local/share/uv",
    ".nvm",
    ".bun",
    ".deno",
    "go",
    ".volta",
    ".rbenv",
    ".gem",
    ".sdkman",
    ".m2",
    ".gradle",
    ".elan",
    ".ghcup",
    ".cabal",
    ".opam",
    ".juliaup",
    ".conda",
    "miniconda3",
    "miniforge3",
    "anaconda3",
    ".asdf",
    ".local/share/mise",
    ".pixi",
    ".nix-profile",
)
# Credentials, keychains, browser profiles: hidden wherever they would otherwise be visible
# (inside an allowed toolchain dir, inside the project, or on macOS where home stays readable).
ALWAYS_HIDDEN_HOME = (
    ".ssh",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".gnupg",
    ".netrc",
    ".docker",
    ".kube",
    ".password-store",
    ".git-credentials",
    ".config/gh",
    ".pypirc",
    ".npmrc",
    ".yarnrc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".config/hub",
    ".terraform.d",
    "Library/Keychains",
    "Library/Cookies",
    "Library/Safari",
    "Library/Application Support/Google",
    "Library/Application Support/Firefox",
    "Library/Application Support/BraveSoftware",
    "Library/Application Support/Microsoft Edge",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/microsoft-edge",
    # Credentials kept inside the toolchain folders that are otherwise readable.
    ".cargo/config",
    ".cargo/config.toml",
    ".gradle/gradle.properties",
    ".m2/settings.xml",
    ".m2/settings-security.xml",
    ".gem/credentials",
    ".local/share/uv/credentials",
    ".npm/_authToken",
    ".conda/.condarc",
    ".cabal/config",
)
# Credential files a toolchain keeps at its top (CARGO_HOME=/opt/cargo has /opt/cargo/credentials.toml).
TOOLCHAIN_SECRETS = (
    "credentials",
    "credentials.toml",
    "config.toml",
    "gradle.properties",
    "settings.xml",
    "settings-security.xml",
    ".condarc",
    ".netrc",
    ".npmrc",
)
# Variables that carry toolchain locations; these dirs are readable when they exist.
TOOLCHAIN_ENV = (
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYENV_ROOT",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "GOPATH",
    "GOROOT",
    "NVM_DIR",
    "JAVA_HOME",
    "BUN_INSTALL",
    "DENO_DIR",
)
# The locale variables POSIX and glibc define (a `LC_*` pattern would let any LC_SECRET through).
LOCALE_ENV = (
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_ADDRESS",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_NAME",
    "LC_PAPER",
    "LC_TELEPHONE",
)
# What commands inherit from Locus's environment; everything else (tokens, URLs with passwords,
# webhooks) stays out. Users add names with `--env NAME` or the `agent_env` setting.
ENV_ALLOWLIST = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    *LOCALE_ENV,
    "TERM",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "TZ",
    "PYENV_VERSION",
    "RUSTUP_TOOLCHAIN",
    "GOBIN",
    "NVM_BIN",
    *TOOLCHAIN_ENV,
)
# Set for every command: no pagers or prompts waiting on input that never comes.
ENV_FIXED = {
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "GIT_TERMINAL_PROMPT": "0",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "PYTHONUNBUFFERED": "1",
    "LOCUS_AGENT": "1",
}


GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """What one command (and everything it starts) may use. Enforced with rlimits (prlimit on
    Linux, ulimit on macOS) and sized tmpfs mounts; 0 means no limit."""

    processes: int = 512  # more processes (threads count) than the user already runs
    memory: int = 4 * GiB  # writable memory of each process (RLIMIT_DATA)
    file_size: int = 4 * GiB  # largest file a command may write (RLIMIT_FSIZE)
    tmpfs: int = 1 * GiB  # size of each private tmpfs: /tmp, /var/tmp, home

    def describe(self, root: bool) -> list[str]:
        def size(n: int) -> str:
            return "no limit" if not n else f"{n / GiB:g} GiB"

        procs = f"{self.processes} more than the user already runs" if self.processes else "no limit"
        if root and self.processes:
            procs += " (not enforced for root: the kernel exempts uid 0)"
        return [
            f"  processes: {procs}",
            f"  memory per process: {size(self.memory)}",
            f"  file size: {size(self.file_size)}",
            f"  each private tmpfs: {size(self.tmpfs)}",
        ]


@dataclass(frozen=True)
class SandboxRules:
    """What a sandboxed command can reach. Paths are absolute and resolved."""

    project: str
    writable: tuple[str, ...]  # the project
    read_only: tuple[str, ...]  # system dirs, toolchains, the interpreter; .git inside the project
    hidden: tuple[str, ...]  # never visible (existing paths only)
    private: tuple[str, ...]  # empty and private to the command: /tmp, /var/tmp, home
    home: str
    network: bool = False
    env_allowlist: tuple[str, ...] = field(default=ENV_ALLOWLIST)
    limits: Limits = field(default_factory=Limits)


def _real(p: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(str(p)))


def _under(p: str, parent: str) -> bool:
    return p == parent or p.startswith(parent.rstrip("/") + "/")


def _home(env: Mapping[str, str]) -> str:
    return _real(env.get("HOME") or os.path.expanduser("~"))


def _locus_dirs(env: Mapping[str, str]) -> list[str]:
    from ..settings import cache_dir, data_dir

    return [_real(data_dir()), _real(cache_dir())] + [
        _real(env[k]) for k in ("LOCUS_DATA_DIR", "LOCUS_CACHE_DIR") if env.get(k)
    ]


def _tool_dirs(home: str, env: Mapping[str, str], project: str) -> list[str]:
    """Readable toolchain dirs: the home allowlist, toolchain variables, the interpreter, and the
    PATH entries (a venv's bin brings its venv), never home itself or one of its parents."""
    cands = [os.path.join(home, d) for d in HOME_TOOLCHAIN_DIRS]
    cands += [env[k] for k in TOOLCHAIN_ENV if env.get(k)]
    cands += [sys.prefix, sys.base_prefix, os.path.dirname(_real(sys.executable))]
    for p in (env.get("PATH") or "").split(os.pathsep):
        if p and os.path.isabs(p):
            parent = os.path.dirname(p.rstrip("/"))
            has_cfg = os.path.exists(os.path.join(parent, "pyvenv.cfg"))
            cands.append(parent if has_cfg else p)
    out: list[str] = []
    for c in sorted({_real(c) for c in cands}, key=len):
        if c == "/" or not os.path.isdir(c) or _under(home, c) or _under(c, project):
            continue
        if any(_under(c, o) for o in out) or any(_under(c, s) for s in SYSTEM_DIRS):
            continue
        out.append(c)
    return out


def _hidden(cands: Iterable[str], root: str) -> list[str]:
    """Existing paths to mask. A link is masked at its target (bwrap cannot mount over a link and
    Seatbelt matches resolved paths), never where it would cover the project itself."""
    out: list[str] = []
    for h in cands:
        h = os.path.abspath(h)
        if os.path.islink(h):
            h = os.path.realpath(h)
        if os.path.lexists(h) and h not in out and not _under(root, h):
            out.append(h)
    return out


def build_rules(
    project: str | os.PathLike[str],
    *,
    network: bool = False,
    extra_env: Iterable[str] = (),
    extra_hidden: Iterable[str | os.PathLike[str]] = (),
    env: Mapping[str, str] | None = None,
    git: GitScan | None = None,
    limits: Limits | None = None,
) -> SandboxRules:
    """The rules for commands run in `project`, from the environment `env` (default: this
    process's). `extra_hidden` adds paths (e.g. the agent's data dir) to hide; `git` is a scan of
    the project's git folders (taken now if not given). Raises GitRefused when the project's git
    folders are laid out so they cannot be protected (a symlinked .git)."""
    env = os.environ if env is None else env
    root = _real(project)
    home = _home(env)
    tools = _tool_dirs(home, env, root)
    git = git if git is not None else scan_git(root)
    git.refuse_if_unsafe()
    read_only = [d for d in SYSTEM_DIRS if os.path.lexists(d)] + tools + git.protect
    hidden_cands = [os.path.join(home, h) for h in ALWAYS_HIDDEN_HOME]
    hidden_cands += [os.path.join(t, h) for t in tools for h in TOOLCHAIN_SECRETS]
    hidden_cands += [g for pat in SYSTEM_HIDDEN for g in glob.glob(pat)]
    hidden_cands += _locus_dirs(env) + [_real(h) for h in extra_hidden]
    hidden_cands += [os.path.join(t, ".git") for t in tools]  # other repos' hooks and config
    hidden = _hidden(hidden_cands, root)
    return SandboxRules(
        project=root,
        writable=(root,),
        read_only=tuple(read_only),
        hidden=tuple(hidden),
        private=("/tmp", "/var/tmp", home),
        home=home,
        network=network,
        env_allowlist=tuple(dict.fromkeys([*ENV_ALLOWLIST, *extra_env])),
        limits=limits or Limits(),
    )


def command_env(allow: Iterable[str] = ENV_ALLOWLIST, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command gets: only allowlisted names (a trailing `*` is a prefix),
    then the fixed settings that turn pagers and prompts off."""
    src = os.environ if env is None else env
    names = [a for a in allow if a]
    exact = {a for a in names if not a.endswith("*")}
    prefixes = tuple(a[:-1] for a in names if a.endswith("*"))
    out = {k: v for k, v in src.items() if k in exact or (prefixes and k.startswith(prefixes))}
    out.update(ENV_FIXED)
    return out


def render_bwrap(rules: SandboxRules) -> list[str]:
    """bubblewrap arguments (before `--`) enforcing `rules`: later mounts cover earlier ones. Every
    bound path comes from the rules (lstat-checked by the git scan), and every mask is applied last,
    whatever was mounted, so nothing inside the project can widen what a command sees."""
    args = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--cap-drop",  # as root bwrap keeps every capability otherwise (umount, mount, ptrace...)
        "ALL",
    ]
    if not rules.network:
        args.append("--unshare-net")
    private = [p for p in rules.private if p != "/" and not any(_under(p, s) for s in SYSTEM_DIRS)]

    def in_private(d: str) -> bool:
        return any(_under(d, p) for p in private)

    for d in rules.read_only:
        if _under(d, rules.project) or in_private(d):
            continue  # bound later, on top of the project or of the private dir
        if os.path.islink(d) and d in SYSTEM_DIRS:
            args += ["--symlink", os.readlink(d), d]  # merged /usr: /bin -> usr/bin
        else:
            args += ["--ro-bind", d, d]
    if rules.network and os.path.isdir("/run/systemd/resolve"):  # resolv.conf may point here
        args += ["--ro-bind", "/run/systemd/resolve", "/run/systemd/resolve"]
    args += ["--dev", "/dev", "--proc", "/proc"]
    for p in private:
        args += (["--size", str(rules.limits.tmpfs)] if rules.limits.tmpfs else []) + ["--tmpfs", p]
    # Tools under a private dir (~/.cargo, a venv in /tmp) come back read-only on top of it.
    for d in rules.read_only:
        if in_private(d) and not _under(d, rules.project):
            args += ["--ro-bind", d, d]
    for w in rules.writable:
        args += ["--bind", w, w]
    for d in rules.read_only:
        if _under(d, rules.project):
            args += ["--ro-bind", d, d]
    for h in rules.hidden:
        if os.path.isdir(h):
            args += ["--tmpfs", h, "--remount-ro", h]
        else:
            args += ["--ro-bind", "/dev/null", h]
    args += ["--chdir", rules.project, "--setenv", "TMPDIR", "/tmp"]
    return args


def _user_tasks() -> int:
    """Tasks (threads) this user runs now: RLIMIT_NPROC counts them all, not only the command's."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                st = os.stat(f"/proc/{pid}/task")
                n += st.st_nlink - 2 if st.st_uid == uid else 0
            except OSError:
                continue
    return n


def render_limits(rules: SandboxRules, prlimit: str = "prlimit") -> list[str]:
    """A `prlimit` prefix (Linux) putting the rules' limits on a command and all it starts; the
    process count is not given to root, whom the kernel exempts from it."""
    lim = rules.limits
    args = [prlimit, "--core=0"]
    if lim.processes and os.getuid() != 0:
        args.append(f"--nproc={_user_tasks() + lim.processes}")
    if lim.memory:
        args.append(f"--data={lim.memory}")
    if lim.file_size:
        args.append(f"--fsize={lim.file_size}")
    return [*args, "--"]


def render_ulimit(rules: SandboxRules) -> str:
    """The same limits as `ulimit` lines for a POSIX shell (macOS, where there is no prlimit)."""
    lim = rules.limits
    out = ["ulimit -c 0"]
    if lim.file_size:
        out.append(f"ulimit -f {lim.file_size // 512}")  # 512-byte blocks in POSIX mode
    if lim.memory:
        out.append(f"ulimit -d {lim.memory // 1024}")
    return "; ".join(o + " 2>/dev/null" for o in out)


def _sb(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_seatbelt(rules: SandboxRules, temp_dirs: Iterable[str] = ()) -> str:
    """A Seatbelt (sandbox-exec) profile enforcing `rules`; in SBPL the last matching rule wins.
    Home is not private here (Seatbelt cannot remount): its contents are unreadable instead."""

    def paths(items: Iterable[str]) -> str:
        return " ".join(f"(subpath {_sb(p)})" for p in items)

    temps = sorted({_real(t) for t in ("/tmp", "/private/var/folders", *temp_dirs)})
    lines = [
        "(version 1)",
        "(allow default)",
        "(deny file-write*)",
        f"(allow file-write* {paths((*rules.writable, *temps))}"
        ' (literal "/dev/null") (literal "/dev/zero") (literal "/dev/dtracehelper")'
        ' (regex #"^/dev/tty") (regex #"^/dev/fd/"))',
    ]
    if rules.home != "/" and not any(_under(rules.home, s) for s in SYSTEM_DIRS):
        # Names along the way to the project stay visible (metadata); contents do not.
        lines.append(f"(deny file-read-data file-write* {paths([rules.home])})")
        ro = [d for d in rules.read_only if _under(d, rules.home)]
        if ro:
            lines.append(f"(allow file-read-data {paths(ro)})")
        lines.append(f"(allow file-read-data file-write* {paths(rules.writable)})")
    git = [d for d in rules.read_only if _under(d, rules.project)]
    if git:
        lines.append(f"(deny file-write* {paths(git)})")
    if rules.hidden:
        lines.append(f"(deny file-read* file-write* {paths(rules.hidden)})")
    if not rules.network:
        lines.append("(deny network*)")
    return "\n".join(lines) + "\n"


def describe_rules(rules: SandboxRules) -> str:
    """The rules as text, home shown as `~`."""

    def show(p: str) -> str:
        if rules.home != "/" and _under(p, rules.home):
            return "~" + p[len(rules.home) :]
        return p

    def block(title: str, items: Iterable[str]) -> list[str]:
        items = list(items)
        return [f"{title}:"] + [f"  {show(i)}" for i in items] if items else [f"{title}: (none)"]

    out = block("writable", rules.writable)
    out += block("read-only", rules.read_only)
    out += block("empty and private to the command", rules.private)
    out += [f"hidden: the rest of the disk, including the rest of {show(rules.home)}, and:"]
    out += [f"  {show(h)}" for h in rules.hidden]
    out.append("network: " + ("allowed" if rules.network else "off"))
    out += ["limits, per command:", *rules.limits.describe(os.getuid() == 0)]
    out.append("capabilities: none (all dropped, also when Locus runs as root)")
    out.append("environment: only " + ", ".join(rules.env_allowlist))
    return "\n".join(out)
