"""Mutation testing with mutmut: each module against its own tests, killed/survived counts per module.

Run from the repository root with the project's Python (`pip install -e ".[mutation]"` first):

    python bench/mutation.py                          # every module, 20 minutes each at most
    python bench/mutation.py parser gitguard          # some modules (names below)
    python bench/mutation.py parser --minutes 60 --jobs 2 --show   # --show: the survivors' diffs
    python bench/mutation.py parser --resume          # go on where a stopped run left off
    python bench/mutation.py parser --recheck         # last run's survivors against *_mutants.py now
    python bench/mutation.py --list

Each module runs in its own snapshot of the tree (tracked and untracked files, not .venv) under
`--workdir`, so edits made while it runs change nothing, with a generated `setup.cfg` that tells
mutmut the one file to mutate and the test files to run. A run past `--minutes` is stopped; the
mutants it had not reached count as "not run". A mutant is killed when a test fails with it,
survived when every selected test passes; "timeout" means the tests ran far longer than usual
(counted as caught, as mutmut does). The survivors of the last recorded run, and why each is
equivalent or which test kills it, are in docs/mutation.md. Not part of the test suite (minutes to
hours on a laptop); exits 1 when a module could not be run at all, not when mutants survive.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

E, A = "tests/engine/", "tests/app/agent/"
# name: (file to mutate, its own test files; *_mutants.py kill survivors). Most valuable first.
MODULES: dict[str, tuple[str, list[str]]] = {
    "parser": (
        "engine/parser.py",
        [E + "test_parser.py", E + "test_parser_corpus.py", E + "test_parser_mutants.py"],
    ),
    "sandbox_rules": (
        "app/agent/sandbox_rules.py",
        [A + "test_hardening.py", A + "test_gitguard.py", A + "test_sandbox_mutants.py"],
    ),
    "gitguard": ("app/agent/gitguard.py", [A + "test_gitguard.py", A + "test_sandbox_mutants.py"]),
    "sandbox": (
        "app/agent/sandbox.py",
        [A + "test_tools.py", A + "test_hardening.py", A + "test_sandbox_mutants.py"],
    ),
    "reuse": ("engine/reuse.py", [E + "test_cache.py", E + "test_cache_mutants.py"]),
    "cache": ("engine/cache.py", [E + "test_cache.py", E + "test_cache_mutants.py"]),
    "mtp": ("engine/mtp.py", [E + "test_mtp.py", E + "test_mtp_states.py", E + "test_mtp_mutants.py"]),
}
# Their tests run MLX, whose worker threads do not survive mutmut's fork of a warmed-up process: each
# mutant's tests start from a fresh fork server that has imported nothing (slower, but they finish).
FRESH_PROCESS = {"reuse", "cache", "mtp"}
STATUSES = ("killed", "survived", "timeout", "suspicious", "no tests", "skipped", "not checked")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def snapshot(dest: Path) -> None:
    """Copy the working tree as git sees it (tracked + untracked, not ignored) to `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in files:
        rel = raw.decode()
        src = REPO / rel
        if not rel or rel.startswith((".venv/", "mutants/")) or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def write_config(work: Path, source: str, tests: list[str], fresh: bool) -> None:
    tests = [t for t in tests if (work / t).exists()]
    # Everything at the top of the snapshot: tests read README.md, resources/, packaging/...
    also = sorted(e.name + ("/" if e.is_dir() else "") for e in work.iterdir() if e.name != "setup.cfg")
    lines = [
        "[mutmut]",
        f"source_paths = {source}",
        "also_copy =\n" + "".join(f"    {d}\n" for d in also),
        "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in tests),
        # -x: the first failing test kills the mutant; no cache dir in the snapshot.
        "pytest_add_cli_args =\n    -x\n    -q\n    -p\n    no:cacheprovider\n",
    ]
    if fresh:
        lines += ["process_isolation = forkserver", "forkserver_warmup = none"]
    (work / "setup.cfg").write_text("\n".join(lines))


def mutmut(work: Path, *args: str, timeout: float | None = None) -> tuple[int | None, str]:
    """Run `mutmut ARGS` in `work` at low priority; (None, output) when it ran past `timeout`."""
    exe = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    log_path = work / f"mutmut-{args[0]}.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "10", exe, *args],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # mutmut's forked children are in its session
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            try:  # mutant workers ignore SIGTERM and outlive mutmut: end them too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            rc = None
    return rc, log_path.read_text(errors="replace")


def results(work: Path) -> dict[str, str]:
    """Every mutant mutmut generated and its status (those a stopped run never reached: not checked)."""
    _, out = mutmut(work, "results", "--all", "true", timeout=600)
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


# Runs in the snapshot's mutants/ dir: each survivor switched on in turn, the new *_mutants.py tests run.
RECHECK = r"""
import json, os, signal, sys
import pytest

class Failed:
    def __init__(self):
        self.first = None

    def pytest_runtest_logreport(self, report):
        if report.failed and self.first is None:
            self.first = report.nodeid.split("::")[-1]

def _timeout(signum, frame):
    raise TimeoutError("mutant ran past its time")

signal.signal(signal.SIGALRM, _timeout)
names, tests = json.loads(sys.argv[1]), sys.argv[2:]
verdict = {}
for name in names:
    os.environ["MUTANT_UNDER_TEST"] = name
    failed = Failed()
    signal.alarm(60)
    rc = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider"], plugins=[failed])
    signal.alarm(0)
    verdict[name] = f"killed by {failed.first}" if rc not in (0, 5) else "survived"
print("RECHECK " + json.dumps(verdict), flush=True)
"""


def recheck(name: str, args: argparse.Namespace) -> dict[str, str]:
    """The last run's survivors of one module against the current *_mutants.py test files."""
    source, tests = MODULES[name]
    work = Path(args.workdir) / name
    new = [t for t in tests if t.endswith("_mutants.py") and (REPO / t).exists()]
    survivors = sorted(k for k, v in results(work).items() if v in ("survived", "no tests"))
    if not new or not survivors:
        return {}
    for t in new:  # the tests as they are now, next to the mutated source
        shutil.copy2(REPO / t, work / "mutants" / t)
    exe = [sys.executable, "-c", RECHECK, json.dumps(survivors), *new]
    out = subprocess.run(["nice", "-n", "10", *exe], cwd=work / "mutants", capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RECHECK ")]
    if not lines:
        raise SystemExit(f"recheck of {source} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RECHECK ") :])


def run_module(name: str, args: argparse.Namespace) -> dict:
    source, tests = MODULES[name]
    work = Path(args.workdir) / name
    if not (args.resume and (work / "setup.cfg").exists()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        snapshot(work)
        write_config(work, source, tests, name in FRESH_PROCESS)
    log(f"{name}: mutmut run on {source} (at most {args.minutes:g} min) in {work}")
    t0 = time.monotonic()
    rc, out = mutmut(work, "run", "--max-children", str(args.jobs), timeout=args.minutes * 60)
    elapsed = time.monotonic() - t0
    statuses = results(work)
    counts = collections.Counter(statuses.values())
    row = {
        "module": source,
        "tests": [t for t in tests if (work / t).exists()],
        "minutes": round(elapsed / 60, 1),
        "stopped_at_cap": rc is None,
        "generated": len(statuses),
        **{s: counts.get(s, 0) for s in STATUSES},
        "survivors": sorted(k for k, v in statuses.items() if v in ("survived", "no tests")),
    }
    if not statuses:
        row["error"] = f"mutmut produced no results (exit {rc}); see {work}/mutmut-run.log: " + out[-500:]
    if args.show:
        for k in row["survivors"]:
            print(mutmut(work, "show", k, timeout=120)[1], flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    ap.add_argument("--minutes", type=float, default=20, help="cap per module (default 20)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (default 1)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "locus-mutation"))
    ap.add_argument("--show", action="store_true", help="print each survivor's diff")
    ap.add_argument("--resume", action="store_true", help="go on with the last run's snapshot and results")
    ap.add_argument("--json", metavar="FILE", help="also write the counts as JSON")
    ap.add_argument("--list", action="store_true", help="list the modules and their tests")
    ap.add_argument(
        "--recheck",
        action="store_true",
        help="no new run: switch on each survivor of the last run in turn and run the *_mutants.py tests",
    )
    args = ap.parse_args(argv)
    if args.list:
        for name, (source, tests) in MODULES.items():
            print(f"{name:<14} {source:<28} {' '.join(tests)}")
        return 0
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        ap.error(f"unknown modules {sorted(unknown)}; have {list(MODULES)}")
    if args.recheck:
        return print_recheck({name: recheck(name, args) for name in args.modules or MODULES})
    rows = [run_module(name, args) for name in args.modules or MODULES]
    head = (
        f"{'module':<28}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'timeout':>8}{'not run':>8}"
    )
    print(head + f"{'min':>6}")
    for r in rows:
        rest = r["generated"] - r["killed"] - r["survived"] - r["no tests"] - r["timeout"]
        cap = "*" if r["stopped_at_cap"] else ""
        print(
            f"{r['module']:<28}{r['generated']:>8}{r['killed']:>8}{r['survived']:>9}{r['no tests']:>9}"
            f"{r['timeout']:>8}{rest:>8}{r['minutes']:>5.1f}{cap}"
        )
        for k in r["survivors"]:
            print(f"    survived: {k}")
    if any(r["stopped_at_cap"] for r in rows):
        print("* stopped at --minutes: 'not run' mutants were never tested")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.path.insert(0, str(REPO))
    from bench.verdict import finish

    return finish([f"{r['module']}: {r['error']}" for r in rows if "error" in r], ok="every module ran")


def print_recheck(verdicts: dict[str, dict[str, str]]) -> int:
    for name, v in verdicts.items():
        killed = sorted(k for k, s in v.items() if s.startswith("killed"))
        print(f"{MODULES[name][0]}: {len(killed)} of {len(v)} survivors now killed by the *_mutants.py tests")
        for k in sorted(v):
            print(f"    {k}: {v[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
