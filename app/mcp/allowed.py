"""MCP tools the user chose to "always allow", remembered per project across sessions.

Kept in DATA_DIR/mcp-allowed.json as {"projects": {"/real/path": ["mcp__server__tool", ...]}}; the
chat, which has no project, files its choices under "chat".
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

__all__ = ["ToolAllowances"]

_lock = threading.Lock()


class ToolAllowances:
    """The remembered "always allow" choices in one data folder."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / "mcp-allowed.json"

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, dict):
            return {}
        return {k: [t for t in v if isinstance(t, str)] for k, v in projects.items() if isinstance(v, list)}

    def allowed(self, project: str) -> set[str]:
        """The tools always allowed in `project` (a real path, or "chat")."""
        return set(self._load().get(project, []))

    def allow(self, project: str, tool: str) -> None:
        """Remember `tool` as always allowed in `project` (written atomically)."""
        with _lock:
            data = self._load()
            tools = data.setdefault(project, [])
            if tool in tools:
                return
            tools.append(tool)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mcp-allowed-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"projects": data}, f, indent=2)
            os.replace(tmp, self.path)
