"""bench/structured.py names each missed target and exits 1 (its figures are not tested here)."""

from __future__ import annotations

from typing import Any

from tests.bench.test_exit_codes import _load


def _report(valid: int = 100, stop: int = 100, calls: int = 100, json_ratio: float = 0.97) -> dict[str, Any]:
    return {
        "validity": {"samples": 100, "json_valid": valid, "json_stop": stop, "call_valid": calls, "bad": []},
        "speed": {
            "gen_tokens": 16,
            "produced": {"free": 16, "json": 16, "call": 16},
            "ratios": {"json_vs_free": json_ratio, "call_vs_free": 0.95},
        },
    }


def test_structured_judges_validity_and_speed() -> None:
    bench = _load("structured")
    assert bench.judge(_report()) == []
    (miss,) = bench.judge(_report(valid=99))
    assert miss.startswith("JSON outputs valid 0.99")
    assert bench.judge(_report(stop=98))[0].startswith("JSON outputs ending with a normal stop")
    assert bench.judge(_report(calls=0))[0].startswith("forced calls valid")
    assert bench.judge(_report(json_ratio=0.85))[0].startswith("decode with a JSON schema")
    short = _report()
    short["speed"]["produced"]["call"] = 3
    assert bench.judge(short) == ["call decoded 3 tokens, not 16"]
