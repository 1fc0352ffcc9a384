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


# -- import cycles ----------------------------------------------------------------------------------
def module_imports(top: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module under `top` and the modules of `top` it imports anywhere (module level, inside
    functions, under TYPE_CHECKING): a lazy import still ties the two modules together."""
    files = {}
    for t in top:
        for path in (ROOT / t).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps |= {_known(a.name, files) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                # `from pkg import mod` imports the module pkg.mod, `from mod import name` mod itself.
                deps |= {_known(f"{base}.{a.name}", files) or _known(base, files) for a in node.names}
        graph[name] = deps - {None, name}
    return graph


def _known(name: str, files: dict) -> str | None:
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None and w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w is not None:
                if w in stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = stack[stack.index(v) :]
                    del stack[stack.index(v) :]
                    if len(group) > 1:
                        cycles.append(sorted(group))
    return cycles


def test_no_module_of_engine_or_app_imports_itself_through_others():
    cycles = import_cycles(module_imports(("engine", "app")))
    assert not cycles, f"import cycles (move what both need into a module of its own): {cycles}"


def test_the_cycle_check_finds_a_cycle_and_follows_relative_imports(tmp_path, monkeypatch):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("def f():\n    from .two import g\n")
    (pkg / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import one\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert module_imports(("pkg",))["pkg.one"] == {"pkg.two"}
    assert import_cycles(module_imports(("pkg",))) == [["pkg.one", "pkg.two"]]
