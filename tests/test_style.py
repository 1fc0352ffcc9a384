"""ruff's lint and format rules (pyproject.toml) hold for the whole tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is part of the test extra"
    r = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_function_is_longer_than_80_lines():
    # Long functions hide their steps; split them into named pieces (issue 14).
    import ast

    long = []
    for top in ("engine", "app", "ui"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_the_formatter_is_never_switched_off():
    # One line length (pyproject.toml) that every statement fits; no hand-formatted exceptions.
    marker = "fmt: " + "skip"
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for top in ("engine", "app", "ui", "tests", "bench", "packaging")
        for path in sorted((ROOT / top).rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if marker in line or "fmt: " + "off" in line
    ]
    assert not found, found
