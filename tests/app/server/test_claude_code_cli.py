"""The real Claude Code CLI against Locus, offline (a loopback-only network namespace)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.realclients import MARK, can_isolate, run_isolated

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("claude") is None, reason="the claude CLI is not installed"),
]


@pytest.fixture(scope="module")
def isolated():
    if not can_isolate():
        pytest.skip("cannot make a loopback-only network namespace (unshare -n needs root)")


def test_claude_code_runs_a_tool_and_finishes(isolated, tmp_path):
    res = run_isolated("scripted", tmp_path / "out.json")
    assert res["rc"] == 0, res["stdout"] + res["stderr"]
    out = json.loads(res["stdout"])
    assert out["is_error"] is False and out["num_turns"] >= 2
    assert out["result"] == "The command ran and printed the mark. Done."
    assert res["proof"] == MARK + "\n"  # Claude Code ran the Bash call the model made
    assert any(MARK in t for t in res["tool_results"])  # and sent its output back
    assert all(r["status"] == 200 for r in res["requests"]), res["requests"]
    assert all(r["client"].startswith("claude-cli/") for r in res["requests"])


def test_claude_code_against_the_demo_model_has_no_api_error(isolated, tmp_path):
    res = run_isolated("demo", tmp_path / "out.json")
    out = json.loads(res["stdout"])
    log = res["serve_log"]
    assert out["api_error_status"] is None, out
    # The random model's answer is gibberish and may run past the output budget; every request
    # Claude Code made must still have been served.
    lines = re.findall(r"POST /v1/messages (\d+) model=(\S+) .*prompt=(\d+)", log)
    assert lines, log
    assert all(status == "200" for status, _, _ in lines), log
    assert "Context: 262,144 tokens" in log  # room for Claude Code's full prompt too
