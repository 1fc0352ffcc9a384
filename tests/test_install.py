"""Every third-party package the code imports is a declared dependency, and a plain install (no
extras, fresh venv) imports every module of engine/app/ui and every package they import."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "app", "ui")
OURS = {*PACKAGES, "resources"}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def third_party_imports() -> dict[str, list[str]]:
    """Top-level modules imported anywhere in engine/app/ui (lazy imports inside functions too)."""
    found: dict[str, list[str]] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS:
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0]) for d in deps}


def _modules() -> list[str]:
    out = []
    for path in _sources():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join(parts))
    return out


def test_every_imported_package_is_a_declared_dependency():
    dists = packages_distributions()
    missing = {}
    for mod, where in third_party_imports().items():
        names = {_norm(d) for d in dists.get(mod, [])}
        # mlx's own wheel ("mlx") is what `import mlx` needs; mlx-cpu/-metal are its backends.
        if not names & declared():
            missing[mod] = (sorted(names), where[:3])
    assert not missing, f"imported but not in [project] dependencies: {missing}"


@pytest.mark.slow
def test_plain_install_imports_everything(tmp_path):
    # Copy the tracked tree so the build leaves no build/ or egg-info in the checkout.
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    # pip's own cache (~/.cache/pip) keeps the wheels between runs; no extras: the user's install.
    out = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True, timeout=1500
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"\nplain install: {time.monotonic() - t0:.0f} s")
    mods = _modules() + sorted(third_party_imports())
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        f"for m in {mods!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": ""}
    # Run outside the checkout so the installed copy, not the source tree, is imported.
    out = subprocess.run(
        [str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    # The console script is installed and runs without any extra.
    out = subprocess.run(
        [str(venv / "bin" / "locus"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0 and "usage: locus" in out.stdout, out.stderr
