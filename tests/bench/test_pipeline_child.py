"""`python bench/pipeline.py`'s one-process side runs to its report (issue 31: it crashed on
`'ModelArgs' object has no attribute 'vocab_size'` before timing anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_pipeline_single_process_side_reports(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    flags = ["--prompt-tokens", "8", "--gen-tokens", "2", "--runs", "1"]
    r = subprocess.run(
        [sys.executable, str(BENCH / "pipeline.py"), "--child", str(tiny_dir("mlx", 4)), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert rep["hidden"] > 0 and len(rep["runs"]) == 1
