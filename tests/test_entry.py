"""The `locus` entry point sits above ui, app and engine: commands never import Qt."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_is_the_top_layer_entry():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["locus"] == "ui.main:main"


def test_commands_through_the_entry_point_do_not_import_qt():
    code = (
        "import sys, contextlib, io\nfrom ui.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['doctor', '--quick', '--json'])\n"
        "print(rc, sorted(m for m in sys.modules if m.startswith('PySide6')))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(maxsplit=1)[1].strip() == "[]"


def test_app_cli_alone_says_where_the_window_is(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "--demo", "--screenshot", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "python -m ui.main" in r.stderr
