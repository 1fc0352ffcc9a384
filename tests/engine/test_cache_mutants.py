"""engine/reuse.py and engine/cache.py: cases killing mutants the cache tests let live (docs/mutation.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.cache import PromptCache
from engine.reuse import ReplyMemo, common_prefix, marked_positions


def test_common_prefix_compares_from_the_first_id() -> None:
    assert common_prefix([1, 2, 3], [9, 2, 3]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([1], [1, 2]) == 1
    assert common_prefix([], [1]) == 0


def test_marked_positions_take_the_last_four_valid_marks() -> None:
    messages = [{"role": "user", "content": str(i)} for i in range(6)]
    prompt = list(range(100))

    def render(msgs):  # type: ignore[no-untyped-def]
        if len(msgs) == 2:
            raise ValueError("this template refuses a prefix")
        return [*range(10 * len(msgs)), -1]

    # Mark 0 counts, marks past the end do not, a refused prefix is skipped, at most the last 4 remain.
    assert marked_positions(render, messages, [0, 6, 7], prompt) == [10]
    assert marked_positions(render, messages, [1, 2, 3], prompt) == [30, 40]
    every = lambda msgs: [*range(10 * len(msgs)), -1]  # noqa: E731
    assert marked_positions(every, messages, [0, 1, 2, 3, 4, 5], prompt) == [30, 40, 50, 60]


class _Tok:
    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def test_an_empty_turn_is_not_remembered(tmp_path: Path) -> None:
    memo = ReplyMemo(max_entries=4, disk_dir=tmp_path)
    memo.remember("m", _Tok(), [])
    memo.save()
    assert not (tmp_path / ReplyMemo.FILE).exists()
    memo.remember("m", _Tok(), [1, 2])
    memo.save()
    assert (tmp_path / ReplyMemo.FILE).exists()


def test_budget_reports_every_figure_under_its_name(tmp_path: Path) -> None:
    assert PromptCache(memory_bytes=100, disk_bytes=50).budget() == {
        "memory_bytes": 100,
        "memory_used_bytes": 0,
        "snapshots": 0,
        "shared_snapshots": 0,
        "disk_bytes": 0,
        "disk_used_bytes": 0,
        "disk_snapshots": 0,
        "hits": 0,
        "misses": 0,
        "tokens_reused": 0,
        "evictions": 0,
        "blocks": 0,
        "shared_blocks": 0,
        "disk_blocks": 0,
        "block_tokens": 256,
        "disk_written_bytes": 0,
        "memory_plan": None,
    }
    assert PromptCache(disk_dir=tmp_path, disk_bytes=50).budget()["disk_bytes"] == 50


def test_unreadable_cache_files_are_counted_and_named(tmp_path: Path, caplog) -> None:  # type: ignore
    for name in ("a", "b"):
        (tmp_path / f"{name}.locus-cache.safetensors").write_bytes(b"not a snapshot")
    pc = PromptCache(disk_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="engine.cache"):
        assert pc.lookup("m", [1, 2, 3], []) == ([], 0)
    assert pc.stats.rejected_files == 2
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("prompt cache: ignoring a.locus-cache.safetensors: ") for m in warned), warned
    assert all(not m.endswith(": None") for m in warned)  # each says why
