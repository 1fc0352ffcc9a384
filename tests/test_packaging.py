"""The packaging files are well-formed; the macOS build refuses to run off a Mac."""

import ast
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"


def test_spec_is_python_and_names_the_entry_point():
    spec = (PKG / "locus.spec").read_text()
    tree = ast.parse(spec)  # PyInstaller executes the spec as Python
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "id")}
    assert {"Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"} <= calls
    assert '"packaging" / "entry.py"' in spec
    assert (ROOT / "resources").is_dir()


def test_entry_point_runs_the_cli():
    out = subprocess.run(
        [sys.executable, str(PKG / "entry.py"), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "usage: locus" in out.stdout


@pytest.mark.skipif(platform.system() == "Darwin", reason="would start a real build on a Mac")
def test_macos_build_refuses_other_systems():
    out = subprocess.run(["bash", str(PKG / "build_macos.sh")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Apple Silicon Mac" in out.stderr


@pytest.mark.parametrize("script", ["build_macos.sh", "build_linux_smoke.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(PKG / script)]).returncode == 0
