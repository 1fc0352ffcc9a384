"""bench/concurrency.py names each missed target (and so exits 1), from the figures alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_concurrency_under_test", BENCH / "concurrency.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _report(one: float, eight: float, mlx8: float, short: float, ttft8: float = 1.0) -> dict[str, Any]:
    row = lambda tok, ttft: {"tok_s": tok, "ttft_max": ttft}  # noqa: E731
    return {
        "table": {
            "locus": {"1": row(one, 0.1), "8": row(eight, ttft8)},
            "mlx_lm": {"1": row(one, 0.1), "8": row(mlx8, 1.0)},
        },
        "short_during_long": {
            "locus": {"short_ttft": short, "long_ttft": 10.0},
            "mlx_lm": {"short_ttft": 5.0, "long_ttft": 10.0},
        },
    }


def test_targets_met_and_missed() -> None:
    bench = _load()
    verdict, fails = bench.judge("tiny", _report(100, 300, 250, 1.0))
    assert fails == [] and verdict["targets"]["scaling_8_over_1"] == 2.0
    _, fails = bench.judge("tiny", _report(100, 150, 250, 4.0))
    assert len(fails) == 3  # scaling, against mlx_lm.server, short request
    assert any("8 / 1 client" in f for f in fails) and any("short / long" in f for f in fails)
    _, fails = bench.judge("real-width", _report(1, 2, 2, 1.0, ttft8=1.5))
    assert fails and "slowest first token" in fails[0]
