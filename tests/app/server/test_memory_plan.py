"""The memory plan (issue 29): made at load, its snapshot budget derived from free memory unless the
user sets one, shown by /health, `locus doctor` and the flags that steer it."""

from __future__ import annotations

import httpx
import pytest

from app import doctor
from app.backends import open_local
from app.cli import build_parser
from app.cli_common import memory_plan_line, prompt_cache_of
from engine import PromptCache

GB = 1024**3


def test_load_plans_memory_and_derives_the_snapshot_budget(tiny_dir, monkeypatch, serve):
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "8")  # what this machine says is free
    backend = open_local(str(tiny_dir("per_expert")), context_tokens=4096, prompt_cache=PromptCache())
    try:
        stats = backend.stats().prompt_cache
        plan = stats.memory_plan
        assert plan is not None and plan["context_tokens"] == 4096 and plan["free_bytes"] == 8 * GB
        assert plan["sequences"] >= 1  # the batch's sequences each get a live cache
        reserved = plan["live_cache_bytes"] + plan["overhead_bytes"]
        assert stats.memory_bytes == plan["snapshot_budget_bytes"] == (8 * GB - reserved) // 2
        assert plan["context_fits_tokens"] >= 4096
        health = httpx.get(serve(backend).url + "/health").json()
        assert health["memory"] == plan and health["prompt_cache"]["memory_plan"] == plan
        assert "tokens fits each sequence" in memory_plan_line(plan)
    finally:
        backend.close()


def test_a_budget_the_user_sets_is_kept(tiny_dir, monkeypatch):
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "8")
    args = build_parser().parse_args(["serve", "--demo", "--prompt-cache-gb", "0.5", "--kv-bits", "8"])
    assert args.kv_bits == 8
    pc = prompt_cache_of(args)
    assert pc.memory_bytes == GB // 2
    backend = open_local(str(tiny_dir("per_expert")), context_tokens=4096, prompt_cache=pc)
    try:
        stats = backend.stats().prompt_cache
        assert stats.memory_bytes == GB // 2 == stats.memory_plan["snapshot_budget_bytes"]
    finally:
        backend.close()
    # Without the flag the budget waits for the plan made at load.
    assert not prompt_cache_of(build_parser().parse_args(["serve", "--demo"])).budget_given


def test_kv_bits_takes_only_what_mlx_lm_quantizes():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--demo", "--kv-bits", "3"])


def test_doctor_plans_the_real_model_for_this_machine():
    roomy = doctor.check_memory_plan(free=64 * GB)
    assert roomy.status == "pass" and "Qwen3.6-35B-A3B" in roomy.detail
    assert "20 KB/token" in roomy.detail and "with --kv-bits 8" in roomy.detail
    tight = doctor.check_memory_plan(free=24 * GB)
    assert tight.status == "warn" and "--kv-bits 8" in tight.fix
    assert [name for name, _ in doctor.CHECKS].count("memory plan") == 1
