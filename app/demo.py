"""The demo model: a tiny random Qwen3.5-MoE checkpoint built once into the user cache dir."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine import write_tiny_checkpoint

from .settings import cache_dir as default_cache_dir

DEMO_VERSION = 4  # 2: the real model's 262,144-token context; 3: a complete MTP head; 4: the head fitted
DEMO_NOTICE = (
    "Demo mode: this is a tiny model with RANDOM weights, built on this machine. It runs every part "
    "of Locus for real, but its replies are gibberish. Load a real model with --model PATH."
)


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Path of the demo checkpoint, creating it on first use (atomically, so a crash leaves none)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"demo-qwen3_5_moe-tiny-v{DEMO_VERSION}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        write_tiny_checkpoint(tmp / "model", "mlx", bits=4)
        try:
            (tmp / "model").rename(target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
