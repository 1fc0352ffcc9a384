"""The frozen app (PyInstaller, the same spec as Locus.app) starts and works: `doctor`, a demo
generation, 5 window screenshots, `serve` answering /health and `locate` (build_linux_smoke.sh)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_frozen_linux_bundle_runs(tmp_path):
    pytest.importorskip("PyInstaller")  # in the test extra: always there in CI
    before = {p.name for p in ROOT.iterdir()}
    t0 = time.monotonic()
    # The test venv already has Locus's dependencies and PyInstaller: no second install.
    out = subprocess.run(
        [
            "bash",
            str(ROOT / "packaging" / "build_linux_smoke.sh"),
            "--python",
            sys.executable,
            str(tmp_path / "build"),
        ],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "Linux smoke bundle OK" in out.stdout
    assert re.search(r"^PASS  demo model ", out.stdout, re.M)  # doctor ran inside the bundle
    assert '"status"' in out.stdout and "ok" in out.stdout.lower()  # /health answered
    assert len(list((tmp_path / "build" / "shots").glob("*.png"))) == 5
    size = re.search(r"^bundle: (\d+) MB", out.stdout, re.M)
    print(f"\nfrozen build + smoke: {time.monotonic() - t0:.0f} s; bundle {size.group(1)} MB")
    assert {p.name for p in ROOT.iterdir()} <= before  # nothing written into the checkout
