"""The real Claude Code CLI against Locus, offline (a loopback-only network namespace)."""

from __future__ import annotations

import itertools
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


def test_claude_codes_full_prompt_against_the_demo_model_and_a_second_session_reads_the_cache(
    isolated, tmp_path
):
    # Claude Code's default tools and system prompt (~56K tokens by the demo's tiny tokenizer)
    # reach the real engine; replies are bounded (CLAUDE_CODE_MAX_OUTPUT_TOKENS=16), so each
    # session also sends Claude Code's recovery requests after max_tokens.
    res = run_isolated("claude-full", tmp_path / "out.json", timeout=1200)
    log = res["serve_log"]
    for run in res["runs"]:
        out = json.loads(run["stdout"])
        assert out["api_error_status"] is None, out
    served = re.findall(r"POST /v1/messages (\d+) .*prompt=(\d+) \(cached (\d+).* finish=(\w+)", log)
    lines = [(status, int(prompt), int(cached), end) for status, prompt, cached, end in served]
    assert lines and all(line[0] == "200" for line in lines), log
    assert lines[0][1] > 40000 and lines[0][2] == 0  # the whole prompt, prefilled once
    assert "Context: 262,144 tokens" in log
    # Every later request reads at least 90% of its prompt from the cache (a new session: the
    # system prompt and tools; only its first user message is new) ...
    assert len(lines) >= 2
    for _, prompt, cached, _ in lines[1:]:
        assert cached / prompt >= 0.9, lines
    # ... and a recovery request after max_tokens (the same turn resent, its text extended) reads
    # all of the previous prompt but the end of that turn.
    recoveries = [(a, b) for a, b in itertools.pairwise(lines) if a[3] == "length" and b[1] > a[1]]
    for before, now in recoveries:
        assert now[2] >= before[1] - 16, lines
