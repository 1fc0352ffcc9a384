"""bench/agent_eval.py's harness: the recorded solutions pass, doing nothing fails."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from app.agent import ReplayBackend

from .helpers import answer

BENCH = Path(__file__).resolve().parents[3] / "bench" / "agent_eval.py"


@pytest.fixture(scope="module")
def agent_eval():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("agent_eval", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replayed_solutions_pass(agent_eval, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", os.environ["PATH"])  # main() prepends to it; restored after
    assert agent_eval.main(["--replay", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[-1]["type"] == "total" and rows[-1]["passed"] == rows[-1]["tasks"] >= 2
    assert all(r["steps"] >= 4 and r["status"] == "answered" for r in rows[:-1])


def test_doing_nothing_fails_the_hidden_test(agent_eval, tmp_path: Path) -> None:  # type: ignore
    for task in sorted(agent_eval.TASKS.iterdir()):
        row = agent_eval.run_task(task, lambda t: ReplayBackend([answer("no idea")]), 5, tmp_path)
        assert row["status"] == "answered" and not row["passed"], row
