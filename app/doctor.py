"""`locus doctor`: checks this machine can run Locus and says what to do when it cannot.

Each check returns `Check(name, status, detail, fix)` with status "pass", "warn" or "fail". The
probes a check uses are keyword arguments with real defaults, so tests drive every failure path
with fakes (no Metal, an old macOS, a missing metallib, Apple's git stub).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["MIN_MACOS", "Check", "format_report", "locus_version", "run_checks", "worst"]

MIN_MACOS = (14, 0)  # the MLX wheel bundled in Locus.app is built for macOS 14 (Sonoma)
GB = 1024**3
MODEL_GB = 20  # Qwen3.6-35B-A3B at 4 bits


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def locus_version() -> str:
    from app import __version__

    return __version__


def _run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return r.returncode, (r.stdout or r.stderr).strip()


def _parse_version(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


# -- checks ---------------------------------------------------------------------------------------
def check_versions(*, system: str = sys.platform, mac_ver: str | None = None) -> Check:
    """Locus, Python, mlx, mlx-lm and the OS; fails on a macOS older than MIN_MACOS."""
    import mlx.core as mx

    try:
        import mlx_lm

        mlx_lm_v = getattr(mlx_lm, "__version__", "?")
    except Exception as e:  # reported, not raised: the rest of the report still helps
        mlx_lm_v = f"not importable ({e})"
    parts = [
        f"Locus {locus_version()}",
        f"Python {platform.python_version()}",
        f"mlx {mx.__version__}",
        f"mlx-lm {mlx_lm_v}",
    ]
    if system == "darwin":
        mac = mac_ver if mac_ver is not None else platform.mac_ver()[0]
        parts.append(f"macOS {mac or '?'}")
        if mac and _parse_version(mac)[:2] < MIN_MACOS:
            need = ".".join(map(str, MIN_MACOS))
            return Check(
                "versions",
                "fail",
                ", ".join(parts) + f": macOS {need} or newer is "
                "needed (MLX's Metal build does not load on older systems)",
                f"update macOS to {need} (Sonoma) or newer",
            )
    else:
        parts.append(f"{platform.system()} {platform.release()}")
    return Check("versions", "pass", ", ".join(parts))


def find_metallib() -> Path | None:
    """mlx.metallib where MLX looks for it: beside libmlx (mlx/lib) or beside core.so."""
    import mlx.core as mx

    base = Path(mx.__file__).parent
    for cand in (base / "lib" / "mlx.metallib", base / "mlx.metallib"):
        if cand.is_file():
            return cand
    return None


def check_metal(
    *,
    system: str = sys.platform,
    metal_available: Callable[[], bool] | None = None,
    metallib: Callable[[], Path | None] = find_metallib,
) -> Check:
    """On a Mac: mlx.metallib present and Metal usable; elsewhere MLX runs on the CPU."""
    import mlx.core as mx

    available = (metal_available or mx.metal.is_available)()
    if system != "darwin":
        return Check(
            "metal",
            "pass",
            f"not a Mac: MLX runs on the CPU backend (Metal {'available' if available else 'not used'})",
        )
    lib = metallib()
    if lib is None:
        return Check(
            "metal",
            "fail",
            "mlx.metallib was not found beside libmlx: MLX cannot run its GPU kernels",
            "reinstall Locus (or `pip install --force-reinstall "
            "mlx`); a custom build must ship mlx.metallib next to libmlx.dylib",
        )
    if not available:
        return Check(
            "metal",
            "fail",
            f"Metal is not available (metallib {lib}): MLX would run "
            "on the CPU, far too slowly for a 35B model",
            "run Locus on an Apple Silicon Mac, not under Rosetta or in a VM without GPU access",
        )
    return Check("metal", "pass", f"Metal available; metallib {lib}")


def check_matmul() -> Check:
    """A float32 matmul on MLX's default device agrees with numpy."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 48), np.float32), rng.standard_normal((48, 32), np.float32)
    dev = mx.default_device()
    try:
        from engine import on_mlx_thread

        # On the one MLX thread: the window runs these checks beside a model loading there.
        got = on_mlx_thread(lambda: np.array(mx.matmul(mx.array(a), mx.array(b))))
    except Exception as e:
        return Check(
            "matmul",
            "fail",
            f"MLX failed a matmul on {dev}: {e}",
            "reinstall Locus; if it persists, report this line",
        )
    err = float(np.abs(got - a @ b).max())
    if not err < 1e-3:
        return Check(
            "matmul",
            "fail",
            f"MLX's matmul on {dev} is wrong (max error {err:.3g})",
            "update macOS and Locus; report this line if it persists",
        )
    return Check("matmul", "pass", f"64×48 @ 48×32 on {dev} matches numpy (max error {err:.1e})")


def check_demo_tokens(n: int = 4) -> Check:
    """Load the tiny demo model and generate `n` tokens: the whole engine path, no download."""
    from engine import GenerationRequest, PromptCache, SamplingParams

    from .backends import open_local
    from .demo import demo_model_dir

    t0 = time.monotonic()
    try:
        path = demo_model_dir()
        eng = open_local(str(path), context_tokens=32_768, prompt_cache=PromptCache(memory_bytes=0))
        try:
            res = eng.submit(
                GenerationRequest(
                    prompt_ids=[1, 2, 3],
                    max_tokens=n,
                    sampling=SamplingParams(temperature=0.0),
                    use_cache=False,
                )
            ).result()
        finally:
            eng.close()
    except Exception as e:
        return Check(
            "demo model",
            "fail",
            f"the demo model did not run: {e}",
            "reinstall Locus; `locus generate --demo --prompt hi` shows the full error",
        )
    if res.error or len(res.token_ids) != n:
        return Check(
            "demo model",
            "fail",
            f"generated {len(res.token_ids)} of {n} tokens ({res.error or res.finish_reason})",
            "report this line",
        )
    return Check(
        "demo model", "pass", f"{n} tokens from the tiny demo model in {time.monotonic() - t0:.1f} s"
    )


def _sysctl(name: str) -> int | None:
    code, out = _run(["sysctl", "-n", name])
    try:
        return int(out) if code == 0 else None
    except ValueError:
        return None


def check_memory(
    *,
    system: str = sys.platform,
    total: int | None = None,
    recommended: int | None = None,
    wired_mb: int | None = None,
) -> Check:
    """Total memory, Metal's recommended working set and the wired limit (macOS)."""
    import mlx.core as mx

    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = _sysctl("hw.memsize") or 0
    if recommended is None:
        try:
            recommended = int(mx.device_info().get("max_recommended_working_set_size") or 0)
        except Exception:
            recommended = 0
    parts = [f"{total / GB:.1f} GB total"]
    if recommended:
        parts.append(f"recommended working set {recommended / GB:.1f} GB")
    if system == "darwin":
        if wired_mb is None:
            wired_mb = _sysctl("iogpu.wired_limit_mb")
        parts.append("wired limit " + (f"{wired_mb} MB" if wired_mb else "system default"))
    usable = recommended or total
    if usable and usable < (MODEL_GB + 2) * GB:
        return Check(
            "memory",
            "warn",
            ", ".join(parts) + f": Qwen3.6-35B-A3B needs about {MODEL_GB} GB plus its cache",
            "use a smaller model (Models → Qwen3-4B-4bit) or a Mac with 32 GB or more",
        )
    return Check("memory", "pass", ", ".join(parts))


def check_memory_plan(*, free: int | None = None, context_tokens: int = 32_768) -> Check:
    """Where Qwen3.6-35B-A3B's memory would go here: weights, the batch's live caches, the
    prompt-cache budget, and the longest context that fits (16-bit and 8-bit KV)."""
    from engine.memplan import QWEN36_4BIT_WEIGHTS, QWEN36_CONFIG, plan_memory

    if free is None:
        from engine import available_memory

        free = available_memory()
    try:
        from engine.scheduler import DEFAULT_PARALLEL as sequences
    except ImportError:  # an engine without a batch runs one sequence at a time
        sequences = 1
    left = max(0, free - QWEN36_4BIT_WEIGHTS)

    def plan(bits: int | None, budget: int | None = None) -> Any:
        return plan_memory(
            QWEN36_CONFIG,
            hybrid=True,
            weights=QWEN36_4BIT_WEIGHTS,
            free=left,
            context_tokens=context_tokens,
            kv_bits=bits,
            sequences=sequences,
            snapshot_budget=budget,
        )

    fp = plan(None)
    q8 = plan(8, fp.snapshot_budget_bytes)  # the same budget, to compare the contexts
    detail = (
        f"Qwen3.6-35B-A3B 4-bit: {fp.summary()}; with --kv-bits 8: {q8.context_fits_tokens:,} "
        f"and {q8.context_fits_one_tokens:,}"
    )
    if fp.context_fits_tokens < context_tokens:
        fix = "use --kv-bits 8, a smaller --context or --prompt-cache-gb, or fewer parallel requests"
        return Check("memory plan", "warn", detail, fix)
    return Check("memory plan", "pass", detail)


def check_keychain(*, backend: Any = None) -> Check:
    """The OS keychain (keyring) answers: where tokens and API keys are kept."""
    import keyring
    from keyring.errors import KeyringError

    from .secret_store import FileKeyring, secrets_file

    kr = backend if backend is not None else keyring.get_keyring()
    name = f"{type(kr).__module__}.{type(kr).__name__}"
    if isinstance(kr, FileKeyring) or "fail" in type(kr).__module__ or "null" in type(kr).__module__:
        return Check(
            "keychain",
            "warn",
            f"no system keychain: Hugging Face tokens and remote API keys are kept in a private "
            f"file instead, {secrets_file()} (mode 600, only you can read it)",
            "for the system keychain, on Linux install and unlock a Secret Service keyring "
            "(gnome-keyring or KWallet)",
        )
    try:
        kr.get_password("locus", "doctor-probe")  # reading a missing item never prompts
    except KeyringError as e:
        return Check(
            "keychain",
            "warn",
            f"the keychain refused a read ({e})",
            "unlock the login keychain; on macOS store the API key with "
            "`security add-generic-password -s locus -a api-key -w`",
        )
    return Check("keychain", "pass", f"{name} answers")


def check_git(
    *,
    system: str = sys.platform,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[list[str]], tuple[int, str]] = _run,
) -> Check:
    """git for agent checkpoints; on a Mac, /usr/bin/git without the Command Line Tools is a stub
    that opens an install dialog, so xcode-select is asked first."""
    git = which("git")
    if git is None:
        return Check(
            "git",
            "warn",
            "git is not installed: the agent cannot checkpoint or undo",
            "install git (macOS: `xcode-select --install`; Linux: your package manager)",
        )
    if system == "darwin" and os.path.realpath(git) == "/usr/bin/git":
        code, out = run(["xcode-select", "-p"])
        if code != 0:
            return Check(
                "git",
                "warn",
                "/usr/bin/git is Apple's stub: the Command Line Tools are "
                "not installed, so the agent cannot checkpoint or undo",
                "run `xcode-select --install` (or install git with Homebrew)",
            )
    code, out = run([git, "--version"])
    if code != 0:
        return Check("git", "warn", f"{git} does not run: {out}", "reinstall git")
    return Check("git", "pass", f"{out} ({git})")


def check_sandbox(*, detect: Callable[[], Any] | None = None) -> Check:
    """The agent's command sandbox (bwrap on Linux, sandbox-exec on macOS) works here."""
    from .agent.sandbox import detect_sandbox, sandbox_self_check

    if detect is None:
        sandbox_self_check()  # probe afresh: a sandbox fixed or broken since is seen
    sb = (detect or detect_sandbox)()
    if sb.active:
        return Check("sandbox", "pass", f"{sb.kind} ({sb.executable}) works: {sb.describe()}")
    fix = (
        "install bubblewrap (`apt install bubblewrap`) and allow user namespaces"
        if sys.platform.startswith("linux")
        else "sandbox-exec ships with macOS; check that /usr/bin/sandbox-exec exists"
    )
    return Check("sandbox", "warn", sb.describe(), fix)


def _free(path: Path) -> tuple[Path, int]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return path, shutil.disk_usage(p).free


def check_disk(
    *, dirs: dict[str, Path] | None = None, free: Callable[[Path], tuple[Path, int]] = _free
) -> Check:
    """Free space where Locus writes: data (conversations), cache, and the model cache."""
    from .hub import hf_cache_dir
    from .settings import cache_dir, data_dir

    dirs = dirs or {"data": data_dir(), "cache": cache_dir(), "models": hf_cache_dir()}
    parts, status, fix = [], "pass", ""
    for label, d in dirs.items():
        _, n = free(Path(d))
        parts.append(f"{label} {d}: {n / GB:.1f} GB free")
        if n < GB:
            status, fix = "fail", f"free some space on the disk holding {d}"
        elif label == "models" and n < (MODEL_GB + 5) * GB and status == "pass":
            status, fix = (
                "warn",
                (f"a {MODEL_GB} GB model will not fit: free space or set HF_HUB_CACHE to a bigger disk"),
            )
    return Check("disk", status, "; ".join(parts), fix)


def check_mcp(*, start: Callable[[Any], list[Any]] | None = None) -> Check:
    """The MCP servers configured in the data folder's mcp.json start (each within 20 s)."""
    from .mcp import McpConfigError, default_config_path, load_servers

    path = default_config_path()
    try:
        servers = {k: v for k, v in load_servers().items() if not v.disabled}
    except McpConfigError as e:
        return Check("mcp", "warn", str(e), f"fix {path}")
    if not servers:
        return Check("mcp", "pass", f"no MCP servers configured ({path})")
    if start is None:
        from .cli_mcp import open_hub

        def start(servers: Any) -> list[Any]:
            with open_hub(servers, start_timeout=20) as hub:
                return hub.statuses()

    statuses = start(servers)
    bad = [st for st in statuses if st.state != "ready"]
    detail = "; ".join(st.line() for st in statuses)
    if bad:
        names = ", ".join(st.name for st in bad)
        fix = f'`locus mcp list` shows why; fix {names} or set "disabled": true in {path}'
        return Check("mcp", "warn", detail, fix)
    return Check("mcp", "pass", detail)


CHECKS: list[tuple[str, Callable[[], Check]]] = [
    ("versions", check_versions),
    ("metal", check_metal),
    ("matmul", check_matmul),
    ("demo model", check_demo_tokens),
    ("memory", check_memory),
    ("memory plan", check_memory_plan),
    ("keychain", check_keychain),
    ("git", check_git),
    ("sandbox", check_sandbox),
    ("disk", check_disk),
    ("mcp", check_mcp),
]


def run_checks(*, skip: tuple[str, ...] = ()) -> list[Check]:
    """Every check in order; a check that crashes is reported as a failure, never raised."""
    out = []
    for name, fn in CHECKS:
        if name in skip:
            continue
        try:
            out.append(fn())
        except Exception as e:
            out.append(Check(name, "fail", f"the check crashed: {type(e).__name__}: {e}", "report this line"))
    return out


def worst(checks: list[Check]) -> str:
    order = {"pass": 0, "warn": 1, "fail": 2}
    return max((c.status for c in checks), key=order.__getitem__, default="pass")


def format_report(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():4}  {c.name:<10}  {c.detail}")
        if c.fix and c.status != "pass":
            lines.append(f"{'':16}→ {c.fix}")
    return "\n".join(lines)
