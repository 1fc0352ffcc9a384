"""Agent bug-fix benchmark: run Locus's agent on each task in bench/agent_tasks/ and grade it.

A task is a directory with `repo/` (a small project with a bug), `issue.md` (the task given to the
agent), `hidden_test.py` (copied in only after the agent is done, then run with pytest) and
`solution.jsonl` (a replay of a correct run, to check the harness without a model).

    python bench/agent_eval.py --replay              # the recorded solutions: proves the harness
    python bench/agent_eval.py --model PATH          # the real model (on a Mac: real figures)
    python bench/agent_eval.py --model PATH --tasks slugify --max-steps 30 --json

Each task runs in a fresh temporary git repository with every action approved (`--yes`). Reported
per task and in total: pass (hidden test), status, steps, prompt and generated tokens, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TASKS = ROOT / "agent_tasks"
sys.path.insert(0, str(ROOT.parent))


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def run_task(task: Path, backend_factory, max_steps: int, work: Path) -> dict:  # type: ignore[no-untyped-def]
    from app.agent import Agent, AgentConfig, Approvals

    repo = work / task.name
    shutil.copytree(task / "repo", repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "task")
    cfg = AgentConfig(max_steps=max_steps, watch=False)
    t0 = time.monotonic()
    with Agent(
        repo, backend_factory(task), approvals=Approvals(yes=True), config=cfg, data_dir=work / "data"
    ) as agent:
        res = agent.run((task / "issue.md").read_text())
    elapsed = time.monotonic() - t0
    shutil.copy(task / "hidden_test.py", repo / "hidden_test.py")
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    graded = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "hidden_test.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return {
        "task": task.name,
        "passed": graded.returncode == 0,
        "status": res.status,
        "steps": res.steps,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "seconds": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--replay", action="store_true", help="use each task's solution.jsonl")
    src.add_argument("--model", metavar="PATH", help="model directory")
    ap.add_argument("--tasks", nargs="*", help="task names (default: all)")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--json", action="store_true", help="one JSON object per task, then a total")
    args = ap.parse_args(argv)

    tasks = sorted(p for p in TASKS.iterdir() if (p / "repo").is_dir())
    if args.tasks:
        unknown = set(args.tasks) - {t.name for t in tasks}
        if unknown:
            ap.error(f"unknown tasks {sorted(unknown)}; have {[t.name for t in tasks]}")
        tasks = [t for t in tasks if t.name in args.tasks]
    # The tasks' commands say `python`: make it this interpreter.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

    engine = None
    if args.replay:
        from app.agent import ReplayBackend

        def factory(task: Path):  # type: ignore[no-untyped-def]
            return ReplayBackend(task / "solution.jsonl")
    else:
        from app.agent import EngineBackend
        from engine import Engine

        engine = Engine.from_path(args.model)

        def factory(task: Path):  # type: ignore[no-untyped-def]
            return EngineBackend(engine)

    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="locus-agent-eval-") as d:
            for task in tasks:
                row = run_task(task, factory, args.max_steps, Path(d))
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(
                        f"{row['task']:<12} {'PASS' if row['passed'] else 'FAIL'}  "
                        f"{row['status']:<11} {row['steps']:>3} steps  "
                        f"{row['prompt_tokens']:>7} prompt  {row['completion_tokens']:>6} gen  "
                        f"{row['seconds']:>7.1f}s",
                        flush=True,
                    )
    finally:
        if engine is not None:
            engine.close()
    passed = sum(r["passed"] for r in rows)
    total = {
        "type": "total",
        "tasks": len(rows),
        "passed": passed,
        "pass_rate": passed / len(rows) if rows else 0.0,
        "steps": sum(r["steps"] for r in rows),
        "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
        "seconds": round(sum(r["seconds"] for r in rows), 2),
    }
    if args.json:
        print(json.dumps(total))
    else:
        print(
            f"pass rate {passed}/{len(rows)} ({total['pass_rate']:.0%}), {total['steps']} steps, "
            f"{total['tokens']} tokens, {total['seconds']:.1f}s"
        )
    from bench.verdict import finish

    failed = [f"task {r['task']} failed its hidden test ({r['status']})" for r in rows if not r["passed"]]
    return finish(failed if rows else ["no task ran"], json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
