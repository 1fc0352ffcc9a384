"""`locus --demo --screenshot DIR` renders every view to PNG from a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_demo_screenshots(tmp_path):
    data, tmp, shots = tmp_path / "data", tmp_path / "tmp", tmp_path / "shots"
    tmp.mkdir()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LOCUS_DATA_DIR": str(data), "TMPDIR": str(tmp)}
    r = subprocess.run(
        [sys.executable, "-m", "ui.main", "--demo", "--screenshot", str(shots)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr  # the demo says what it is
    assert "Traceback" not in r.stderr and "RuntimeError" not in r.stderr, r.stderr
    # The sample project stays out of the user's settings and data folder, and is removed.
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == [], list(data.rglob("*"))
    assert list(tmp.glob("locus-shots-*")) == []
    tmp_path = shots
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["agent.png", "chat.png", "locate.png", "models.png", "server.png"]
    sizes = set()
    for p in tmp_path.glob("*.png"):
        with Image.open(p) as im:
            assert im.size[0] >= 800 and im.size[1] >= 500
            # Not a blank frame: a rendered view has many distinct colors.
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 20
            sizes.add(p.stat().st_size)
    assert len(sizes) == 5  # each view is different


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS always has a display")
def test_no_display_gives_a_hint_instead_of_a_crash():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    r = subprocess.run(
        [sys.executable, "-m", "ui.main"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 1
    assert "no display" in r.stderr and "locus --demo" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS always has a display")
def test_demo_without_display_falls_back_to_the_terminal_chat():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    r = subprocess.run(
        [sys.executable, "-m", "ui.main", "--demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        input="hello\n",
    )
    assert r.returncode == 0, r.stderr
    assert "starting the terminal chat" in r.stderr and "RANDOM weights" in r.stderr
    assert "you>" in r.stdout and "tok/s" in r.stdout
