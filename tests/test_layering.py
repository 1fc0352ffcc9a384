"""ui → app → engine, never backwards; engine and app never import Qt (import-linter contracts);
front ends see engine.Backend only (app/backends.py alone builds an Engine)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the test extra"
    r = subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_engine_public_api_is_importable_without_qt():
    code = "import sys, engine, app.cli; assert not any(m.startswith('PySide6') for m in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# What only app/backends.py may name outside engine/: the local engine and its loader.
MODEL_NAMES = {"Engine", "LoadedModel", "load_model"}
# Modules allowed to name the engine's model classes for now (none: keep it that way).
KNOWN_OFFENDERS: set[str] = set()


def engine_model_names(path: Path) -> set[str]:
    """Names of MODEL_NAMES a module takes from the engine package (imports or `engine.X`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "engine" or node.module.startswith("engine."):
                found |= {a.name for a in node.names} & MODEL_NAMES
        elif isinstance(node, ast.Attribute) and node.attr in MODEL_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id == "engine":
                found.add(node.attr)
    return found


def test_only_app_backends_names_the_engine():
    offenders = {}
    for top in ("app", "ui"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "app/backends.py" or rel in KNOWN_OFFENDERS:
                continue
            names = engine_model_names(path)
            if names:
                offenders[rel] = sorted(names)
    assert not offenders, f"front ends must use engine.Backend (see app/backends.py): {offenders}"
    # The allowlist only shrinks: an entry that no longer offends must be removed.
    stale = {f for f in KNOWN_OFFENDERS if not engine_model_names(ROOT / f)}
    assert not stale, f"remove from KNOWN_OFFENDERS: {stale}"


def test_the_layering_check_catches_an_engine_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import engine\nfrom engine import Engine, Done\nx = engine.load_model\n")
    assert engine_model_names(bad) == {"Engine", "load_model"}
