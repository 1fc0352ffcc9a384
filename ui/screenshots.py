"""`locus --screenshot DIR`: render every view with real content to PNG (offscreen works)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["demo_boxes", "edit_replay", "render_all", "wait_until"]


def wait_until(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Process Qt events until `cond()` holds (the UI stays live while workers run)."""
    from PySide6.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        QApplication.processEvents()
        time.sleep(0.01)
    return True


def _call(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def edit_replay(path: str, old: str, new: str) -> list[str]:
    """Model outputs for an agent run that reads `path`, edits it, then answers."""
    return [
        f"I should look at {path} first.\n</think>\n\n" + _call("read_file", path=path),
        "Now make the change.\n</think>\n\n" + _call("edit_file", path=path, old_string=old, new_string=new),
        "Done.\n</think>\n\nI changed the greeting in " + path + ".",
    ]


def demo_boxes(width: int, height: int) -> list[Any]:
    """Boxes for the sample image: a grounding answer read by app.localize's parser."""
    from app.localize import parse_response

    found = [("red square", (100, 180, 412, 680)), ("blue circle", (575, 320, 887, 840))]
    text = json.dumps([{"bbox_2d": list(b), "label": label} for label, b in found])
    return parse_response(f"```json\n{text}\n```", width, height)


def _sample_image(path: Path) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (800, 500), (236, 232, 222))
    d = ImageDraw.Draw(im)
    d.rectangle([80, 90, 330, 340], fill=(220, 60, 50))
    d.ellipse([460, 160, 710, 420], fill=(40, 110, 220))
    im.save(path)
    return path


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder that is also the data folder while the views render, so the sample
    project, its checkpoints and the window's settings never reach the user's; removed after."""
    work = Path(tempfile.mkdtemp(prefix="locus-shots-"))
    before = os.environ.get("LOCUS_DATA_DIR")
    os.environ["LOCUS_DATA_DIR"] = str(work / "data")
    try:
        yield work
    finally:
        if before is None:
            os.environ.pop("LOCUS_DATA_DIR", None)
        else:
            os.environ["LOCUS_DATA_DIR"] = before
        shutil.rmtree(work, ignore_errors=True)


def render_all(out_dir: Path, *, demo: bool = True, model: str | None = None) -> list[Path]:
    """Load the model, fill each view with real content, grab each to OUT_DIR/<view>.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _scratch() as work:
        return _render(out_dir, work, demo, model)


def _render(out_dir: Path, work: Path, demo: bool, model: str | None) -> list[Path]:
    from app.agent import ReplayBackend
    from app.store import Store

    from . import _app
    from .main_window import VIEWS, MainWindow
    from .theme import apply_theme

    app = _app()
    dark = apply_theme(app)
    store = Store(work / "locus.db")
    win = MainWindow(store, dark=dark, demo=demo)
    win.resize(1280, 800)
    win.show()
    if demo:
        from app.demo import demo_model_dir

        model = str(demo_model_dir())
    written: list[Path] = []
    try:
        if model:
            win.load_model(model)
            if not wait_until(lambda: win.backend is not None or win.loading_path is None, 300):
                raise RuntimeError("the model did not load within 5 minutes")
        if win.backend is not None:
            # An image in the message, and a regenerated reply (its ‹ 2/2 › versions).
            win.chat.attachments.add([(_sample_image(work / "chat-shapes.png"), "shapes.png")])
            win.chat.send("Write a Python function that reverses a string.")
            wait_until(lambda: not win.chat.busy, 120)
            win.chat.regenerate()
            wait_until(lambda: not win.chat.busy, 120)
        proj = work / "project"
        proj.mkdir()
        (proj / "hello.py").write_text('print("hello")\n')
        (proj / "README.md").write_text("# demo project\n")
        win.agent.backend_factory = lambda: ReplayBackend(
            edit_replay("hello.py", 'print("hello")', 'print("hello, Locus")')
        )
        win.open_paths([proj])
        win.agent.start_run("Make the greeting friendlier")
        wait_until(lambda: bool(win.agent.cards), 30)
        img = _sample_image(work / "shapes.png")
        win.open_paths([img])
        win.locate.query.setText("red square, blue circle")
        win.locate.set_boxes(demo_boxes(*win.locate.image_size))
        win.models.refresh()
        wait_until(lambda: win.models.list_task is not None and not win.models.list_task.running)
        for name in VIEWS:
            win.show_view(name)
            app.processEvents()
            if name == "Locate":  # fit once the canvas has its real size
                win.locate.canvas.fit()
            app.processEvents()
            path = out_dir / f"{name.lower()}.png"
            win.grab().save(str(path), "PNG")
            written.append(path)
    finally:
        win.shutdown()  # stops the agent, which rejects the pending card
        win.close()
        store.close()
    return written
