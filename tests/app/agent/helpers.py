"""Helpers for agent tests: raw model outputs as Qwen writes them, and a small buggy project."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def call(name: str, reasoning: str = "", **params: Any) -> str:
    """One raw model output: reasoning, `</think>`, then one Qwen3-Coder XML tool call."""
    body = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
        for k, v in params.items()
    )
    return f"{reasoning}\n</think>\n\n<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def answer(text: str, reasoning: str = "done") -> str:
    return f"{reasoning}\n</think>\n\n{text}"


def git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=Test", "-c", "user.email=t@example.com"]
    out = subprocess.run(["git", *env_args, *args], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout


def make_project(root: Path) -> Path:
    """A git repository with a small Python package and a failing test."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "calc").mkdir()
    (root / "calc" / "__init__.py").write_text(
        '"""Tiny calculator."""\n\n\ndef add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n'
    )
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(
        "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_mul():\n    assert mul(2, 3) == 6\n"
    )
    (root / "README.md").write_text("# calc\n")
    (root / "OLD.txt").write_text("to be deleted\n")
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root except .git and caches, with its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] == ".git" or "__pycache__" in rel.parts or ".pytest_cache" in rel.parts:
            continue
        if p.is_file() and not p.is_symlink():
            out[rel.as_posix()] = p.read_bytes()
    return out


def git_state(root: Path) -> dict[str, bytes]:
    """The bytes of every file in the user's .git (to prove it is untouched)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / ".git").rglob("*"))
        if p.is_file()
    }
