"""Where Locus keeps its files: user cache and data dirs (platformdirs), overridable by env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir, user_data_dir

PROMPT_CACHE_DISK_BYTES = 16 * 1024**3


def cache_dir() -> Path:
    """Rebuildable files (demo model, prompt-cache snapshots). LOCUS_CACHE_DIR overrides."""
    return Path(os.environ.get("LOCUS_CACHE_DIR") or user_cache_dir("locus"))


def _base_dir() -> Path:
    return Path(os.environ.get("LOCUS_DATA_DIR") or user_data_dir("locus"))


def data_dir() -> Path:
    """Files that must not be lost (conversations, agent checkpoints). LOCUS_DATA_DIR overrides,
    then the "data_folder" preference."""
    if os.environ.get("LOCUS_DATA_DIR"):
        return Path(os.environ["LOCUS_DATA_DIR"])
    chosen = load_ui_settings().get("data_folder")
    return Path(chosen).expanduser() if isinstance(chosen, str) and chosen.strip() else _base_dir()


def prompt_cache_dir() -> Path:
    return cache_dir() / "prompt-cache"


def ui_settings_path() -> Path:
    # Always in the default place: it is where a moved data folder is recorded.
    return _base_dir() / "settings.json"


def load_ui_settings() -> dict:
    """The window's remembered settings (last model, server port, …); {} when none or unreadable."""
    import json

    try:
        data = json.loads(ui_settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_ui_settings(values: dict) -> None:
    """Merge `values` into the saved settings (written atomically: a crash never leaves half a file)."""
    import json
    import tempfile

    data = {**load_ui_settings(), **values}
    path = ui_settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Preference:
    """One user default shown in the window's Preferences and stored in settings.json.

    kind: "choice" (one of `choices`), "int" (between `minimum` and `maximum`), "bool", "text" or
    "folder". Other modules append their own with `PREFERENCES.append(...)`.
    """

    key: str
    label: str
    kind: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 1 << 30


PREFERENCES: list[Preference] = [
    Preference(
        "sampling_profile",
        "Sampling profile",
        "choice",
        "thinking",
        "The model card's profile a new conversation starts with.",
        choices=("thinking", "coding", "instruct"),
    ),
    Preference(
        "context_tokens",
        "Context to load models with (tokens)",
        "int",
        32768,
        "Memory is planned (and checked) for this much context when a model loads; Models → "
        "Context sets it too. The toolbar shows the context the model itself serves.",
        minimum=1024,
        maximum=262144,
    ),
    Preference(
        "enter_sends",
        "Enter sends the message",
        "bool",
        True,
        "Off: Enter breaks the line and Ctrl+Enter sends.",
    ),
    Preference(
        "server_port",
        "Server port",
        "int",
        8723,
        "Port of the local Anthropic/OpenAI-compatible API.",
        minimum=1,
        maximum=65535,
    ),
    Preference(
        "data_folder",
        "Data folder",
        "folder",
        "",
        "Where conversations and agent checkpoints are kept (from the next start; empty: "
        "the default). LOCUS_DATA_DIR overrides it.",
    ),
    Preference(
        "require_sandbox",
        "Agent: refuse commands without a sandbox",
        "bool",
        False,
        "On: the agent runs no command at all when bwrap / sandbox-exec is missing or broken "
        "(off: each such command needs your approval).",
    ),
    Preference(
        "agent_env",
        "Agent: extra environment variables",
        "text",
        "",
        "Names (comma or space separated) the agent's commands inherit beyond PATH, HOME, "
        "LANG and the like, e.g. CARGO_HOME GOPATH. Everything else is withheld.",
    ),
    Preference(
        "mcp_read_only",
        "MCP: run tools marked read-only without asking",
        "bool",
        False,
        "On: MCP tools their server annotates as read-only run without an approval (the "
        "annotation is the server's claim). Servers are configured in mcp.json in the data folder.",
    ),
]


def preference(key: str) -> Any:
    """The saved value of a preference, or its default (also when the saved one is unusable)."""
    spec = next((p for p in PREFERENCES if p.key == key), None)
    if spec is None:
        raise KeyError(f"no preference {key!r}")
    value = load_ui_settings().get(key, spec.default)
    if spec.kind == "choice" and value not in spec.choices:
        return spec.default
    if spec.kind == "int":
        try:
            value = int(value)
        except (TypeError, ValueError):
            return spec.default
        return min(max(value, spec.minimum), spec.maximum)
    if spec.kind == "bool":
        return bool(value)
    return value if isinstance(value, str) else spec.default
