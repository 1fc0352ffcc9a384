"""The real Codex CLI (`codex exec`, its default config and tools) against Locus, offline (a
loopback-only network namespace)."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import jsonschema
import pytest

from tests.realclients import FINAL, MARK, OUTPUT_SCHEMA, can_isolate, run_isolated

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("codex") is None, reason="the codex CLI is not installed"),
]


@pytest.fixture(scope="module")
def isolated():
    if not can_isolate():
        pytest.skip("cannot make a loopback-only network namespace (unshare -n needs root)")


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_codex_runs_exec_command_answers_and_its_next_turn_reads_the_cache(isolated, tmp_path):
    res = run_isolated("codex-scripted", tmp_path / "out.json", timeout=900)
    assert res["rc"] == 0, res["stdout"] + res["stderr"]
    events = _events(res["stdout"])
    done = [e["item"] for e in events if e["type"] == "item.completed"]
    ran = [i for i in done if i["type"] == "command_execution"]
    assert ran and ran[0]["exit_code"] == 0 and MARK in ran[0]["aggregated_output"]
    assert any(MARK in t for t in res["tool_results"])  # the output went back to the model
    assert [i["text"] for i in done if i["type"] == "agent_message"][-1] == FINAL
    # Codex's namespace tools reach the model; its hosted web_search is left out, and noted.
    assert "exec_command" in res["tools"] and "spawn_agent" in res["tools"]
    assert "web_search" not in res["tools"]
    reqs = res["requests"]
    assert all(r["status"] == 200 for r in reqs), reqs
    assert all("web_search" in r["note"] for r in reqs)
    assert all(r["client"].startswith("codex_exec/") for r in reqs)
    # store: false + encrypted reasoning: each prompt extends the last prompt and its reply, so
    # the cache holds all of it (the second session resumes the first: one conversation).
    assert len(reqs) >= 3, reqs
    for before, now in itertools.pairwise(reqs):
        assert now["cached"] >= before["prompt"] + before["out"] - 1, reqs
        assert now["cached"] / now["prompt"] > 0.99


def test_codex_against_the_demo_model_has_no_4xx(isolated, tmp_path):
    res = run_isolated("codex-demo", tmp_path / "out.json", timeout=900)
    log = res["serve_log"]
    assert res["rc"] == 0, res["stdout"] + res["stderr"] + log
    assert any(e["type"] == "turn.completed" for e in _events(res["stdout"])), res["stdout"]
    lines = re.findall(r"POST /v1/responses (\d+) .*prompt=(\d+)", log)
    assert lines, log
    assert all(status == "200" for status, _ in lines), log
    assert all(int(n) > 10000 for _, n in lines)  # Codex's whole prompt and tools reached the model


def test_codex_output_schema_gets_schema_valid_json_from_the_demo_model(isolated, tmp_path):
    # Codex sends the schema as Responses text.format (json_schema, strict, "codex_output_schema");
    # the random model's answer is JSON only because the constraint holds it to the schema.
    res = run_isolated("codex-schema", tmp_path / "out.json", timeout=900)
    log = res["serve_log"]
    assert res["rc"] == 0, res["stdout"] + res["stderr"] + log
    done = [e["item"] for e in _events(res["stdout"]) if e["type"] == "item.completed"]
    said = [i["text"] for i in done if i["type"] == "agent_message"]
    assert said, res["stdout"]
    jsonschema.validate(json.loads(said[-1]), OUTPUT_SCHEMA)
    statuses = re.findall(r"POST /v1/responses (\d+) ", log)
    assert statuses and all(s == "200" for s in statuses), log
