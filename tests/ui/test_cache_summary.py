"""The Server view's prompt-cache line: shared blocks and the memory plan made at load (issue 29)."""

from __future__ import annotations

from engine import CacheStats
from engine.memplan import QWEN36_4BIT_WEIGHTS, QWEN36_CONFIG, plan_memory
from ui.server_view import cache_summary


def test_summary_shows_blocks_and_the_memory_plan():
    plan = plan_memory(
        QWEN36_CONFIG,
        hybrid=True,
        weights=QWEN36_4BIT_WEIGHTS,
        free=40 * 1024**3,
        context_tokens=32768,
        sequences=4,
    )
    b = CacheStats(memory_bytes=2 * 1024**3, blocks=12, shared_blocks=5, memory_plan=plan.to_dict())
    text = cache_summary(b)
    assert "12 KV blocks, 5 shared" in text
    assert "Memory: weights 20.0 GB" in text and "4 x 32,768 tokens, 16-bit KV" in text
    assert f"{plan.context_fits_tokens:,} tokens fits each sequence" in text
    assert "Memory:" not in cache_summary(CacheStats())  # no plan (a remote model): no line
    assert cache_summary(None) == "Prompt cache: off."
