"""The `locus` command, above every layer: no command opens the window; a command goes to app.cli
without importing Qt (so `locus serve` runs where PySide6 cannot)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def open_window(args: Any) -> int:
    """The window for the parsed command line (or its views rendered to PNG with --screenshot)."""
    import importlib

    from engine import EngineError

    try:
        importlib.import_module("ui.main_window")  # fails here, not later, without PySide6
    except ImportError as e:
        raise EngineError(f"the desktop window needs PySide6 ({e}); try `locus chat --demo`") from None
    import ui

    if args.screenshot:
        for p in ui.render_screenshots(args.screenshot, demo=args.demo, model=args.window_model):
            print(p)
        return 0
    return int(ui.run_app(**window_options(args), qt_args=getattr(args, "qt_args", None)))


def window_options(args: Any) -> dict[str, Any]:
    """What the window opens on, from the parsed command line (`ui.run_app`'s keywords)."""
    return {
        "demo": bool(args.demo),
        "model": args.window_model,
        "project": getattr(args, "window_project", None),
        "remote": getattr(args, "window_remote", None),
        "remote_model": getattr(args, "window_remote_model", None),
        "remote_key": getattr(args, "window_remote_key", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from app.cli import main as cli_main

    return cli_main(argv, open_window=open_window)


if __name__ == "__main__":
    sys.exit(main())
