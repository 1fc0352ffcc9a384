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
