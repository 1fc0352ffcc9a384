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


# Written into the demo checkpoint: whoever loads it (window, picker, a later plain `locus`) can tell
# it holds random weights from the model itself, not from how Locus was started.
DEMO_MARKER = "locus-demo.json"


def is_demo_model(path: str | Path | None) -> bool:
    """Whether the checkpoint at `path` is Locus's demo model (random weights)."""
    if not path:
        return False
    p = Path(path)
    try:
        if (p / DEMO_MARKER).is_file():
            return True
        # Built before the marker existed: an older version's folder in the cache dir.
        return (
            p.name.startswith("demo-qwen3_5_moe-tiny-v")
            and p.parent.resolve() == default_cache_dir().resolve()
        )
    except OSError:
        return False


def _write_marker(model: Path) -> None:
    import json

    (model / DEMO_MARKER).write_text(
        json.dumps({"demo": True, "version": DEMO_VERSION, "weights": "random"}) + "\n", encoding="utf-8"
    )


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Path of the demo checkpoint, creating it on first use (atomically, so a crash leaves none)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"demo-qwen3_5_moe-tiny-v{DEMO_VERSION}"
    if (target / "config.json").exists():
        if not is_demo_model(target):  # built before the marker existed
            try:
                _write_marker(target)
            except OSError:
                pass
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        write_tiny_checkpoint(tmp / "model", "mlx", bits=4)
        _write_marker(tmp / "model")
        try:
            (tmp / "model").rename(target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
