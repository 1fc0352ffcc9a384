"""Where Locus keeps its files: user cache and data dirs (platformdirs), overridable by env."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

PROMPT_CACHE_DISK_BYTES = 16 * 1024**3


def cache_dir() -> Path:
    """Rebuildable files (demo model, prompt-cache snapshots). LOCUS_CACHE_DIR overrides."""
    return Path(os.environ.get("LOCUS_CACHE_DIR") or user_cache_dir("locus"))


def data_dir() -> Path:
    """Files that must not be lost (conversations, agent checkpoints). LOCUS_DATA_DIR overrides."""
    return Path(os.environ.get("LOCUS_DATA_DIR") or user_data_dir("locus"))


def prompt_cache_dir() -> Path:
    return cache_dir() / "prompt-cache"


def ui_settings_path() -> Path:
    return data_dir() / "settings.json"


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
