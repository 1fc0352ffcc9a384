"""The `locus` command, above every layer: no command opens the window; a command goes to app.cli
without importing Qt (so `locus serve` runs where PySide6 cannot)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

# What Locate opens (ui.locate_view's list; that module imports Qt, this one must not).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Window options followed by a value: that value is never the image.
_WITH_VALUE = {"--model", "--screenshot", "--remote", "--remote-model", "--remote-key-env"}


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


def split_image(argv: list[str]) -> tuple[list[str], str | None]:
    """`locus [options] photo.png`: take an image file out of the window's arguments (it opens in
    Locate); a command's arguments are left alone (`locus locate photo.png …`)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a.startswith("-"):
            i += 2 if a in _WITH_VALUE else 1
            continue
        if a.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(a):
            return argv[:i] + argv[i + 1 :], a
        return argv, None  # a command or a folder: app.cli reads it
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    from app.cli import main as cli_main

    raw, image = split_image(list(sys.argv[1:] if argv is None else argv))
    if image is None:
        return cli_main(raw, open_window=open_window)

    def open_on_image(args: Any) -> int:
        args.window_project = image  # the window opens a folder in Agent, an image in Locate
        return open_window(args)

    return cli_main(raw, open_window=open_on_image)


if __name__ == "__main__":
    sys.exit(main())
