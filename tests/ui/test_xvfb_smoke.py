"""The real window on a real X server (Xvfb): typed input and key presses with xdotool, screenshots
of each view, no traceback. Slow (starts the app); CI installs xvfb and xdotool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import proctree

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (sys.platform.startswith("linux") and shutil.which("Xvfb") and shutil.which("xdotool")),
        reason="needs Xvfb and xdotool (Linux)",
    ),
]


def _xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on a free display: it picks the number and writes it to a pipe (-displayfd)."""
    r, w = os.pipe()
    proc = proctree.popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start"
    return proc, f":{number}"


def _xdo(display: str, *args: str) -> str:
    out = subprocess.run(
        ["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=60
    )
    return out.stdout.strip()


def _grab(display: str, path: Path):
    from PIL import ImageGrab

    im = ImageGrab.grab(xdisplay=display)
    im.save(path)
    return im


def _messages(db: Path) -> list[dict]:
    from app.store import Store

    if not db.exists():
        return []
    with Store(db) as s:
        return [m for t in s.threads("chat") for m in s.messages(t.id)]


def _wait_window(display: str, name: str, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = _xdo(display, "search", "--onlyvisible", "--name", name).split("\n")[0]
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {name!r} window appeared")


def _focus(display: str, wid: str) -> None:
    """Give the window the keyboard (with no window manager, a closed dialog leaves it nowhere)."""
    _xdo(display, "windowactivate", "--sync", wid)
    _xdo(display, "windowfocus", "--sync", wid)
    time.sleep(0.5)


def _in_dialog(display: str, title: str, path: Path) -> None:
    """Type a full path into Qt's file dialog (its name field has the focus) and accept it."""
    dlg = _wait_window(display, title)
    _focus(display, dlg)
    _xdo(display, "key", "--window", dlg, "ctrl+a")
    _xdo(display, "type", "--delay", "10", str(path))
    time.sleep(0.5)
    for _ in range(4):  # a first Return may only close the name field's completion list
        _xdo(display, "key", "--window", dlg, "Return")
        time.sleep(1)
        if not _xdo(display, "search", "--onlyvisible", "--name", title):
            return
    raise AssertionError(f"the {title!r} dialog did not take {path}")


def _image_into_chat_and_export(display: str, wid: str, db: Path, tmp_path: Path, err: Path) -> None:
    """Attach an image (Ctrl+Shift+A, the file dialog), send it, then export the conversation."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (80, 60), (30, 120, 220)).save(photo)
    _focus(display, wid)
    _xdo(display, "type", "--delay", "20", "what is in it")  # the composer kept the focus
    _xdo(display, "key", "ctrl+shift+a")
    _in_dialog(display, "Attach images", photo)
    _focus(display, wid)
    end = time.monotonic() + 120
    with_image: list[dict] = []
    while time.monotonic() < end and not with_image:
        _xdo(display, "key", "Return")
        time.sleep(2)
        msgs = _messages(db)
        with_image = [m for m in msgs if isinstance(m.get("content"), list)]
    assert with_image, err.read_text()[-2000:]
    parts = with_image[0]["content"]
    assert parts[0]["type"] == "image" and parts[0]["name"] == "photo.png"
    assert parts[-1] == {"type": "text", "text": "what is in it"}
    # Export as Markdown through File > Export Conversation (Ctrl+Shift+S).
    out = tmp_path / "exported.md"
    end = time.monotonic() + 60
    while time.monotonic() < end and not out.exists():
        _focus(display, wid)
        _xdo(display, "key", "ctrl+shift+s")
        _in_dialog(display, "Export Conversation", out)
        time.sleep(1.5)
    _focus(display, wid)
    md = out.read_text()
    assert "## You" in md and "what is in it" in md and "](data:image/png;base64," in md


def test_window_under_xvfb(tmp_path):
    xvfb, display = _xvfb()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "DISPLAY": display,
        "QT_QPA_PLATFORM": "xcb",
        "LOCUS_DATA_DIR": str(data),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    err = tmp_path / "stderr.txt"
    with open(err, "w") as errf:
        app = proctree.popen(
            [sys.executable, "-m", "ui.main", "--demo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errf,
        )
    try:
        wid = ""
        end = time.monotonic() + 120
        while not wid and time.monotonic() < end and app.poll() is None:
            wid = _xdo(display, "search", "--onlyvisible", "--name", "Locus").split("\n")[0]
            time.sleep(0.5)
        assert wid, f"no window appeared: {err.read_text()[-2000:]}"
        _xdo(display, "windowactivate", "--sync", wid)
        _xdo(display, "windowfocus", "--sync", wid)
        # New Conversation focuses the composer; Enter sends once the demo model has loaded.
        _xdo(display, "key", "--window", wid, "ctrl+n")
        _xdo(display, "type", "--delay", "20", "hello from xdotool")
        db = data / "locus.db"
        end = time.monotonic() + 120
        while time.monotonic() < end:
            _xdo(display, "key", "Return")
            time.sleep(2)
            if any(m.get("role") == "assistant" for m in _messages(db)):
                break
        msgs = _messages(db)
        assert msgs and msgs[0]["content"] == "hello from xdotool", err.read_text()[-2000:]
        assert any(m.get("role") == "assistant" for m in msgs)
        _image_into_chat_and_export(display, wid, db, tmp_path, err)
        shots = []
        for i, name in enumerate(["chat", "agent", "locate", "models", "server"], start=1):
            _xdo(display, "key", "--window", wid, f"ctrl+{i}")
            time.sleep(0.8)
            im = _grab(display, tmp_path / f"{name}.png")
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 50, f"{name} looks empty"
            shots.append(im.tobytes())
        assert len(set(shots)) == len(shots)  # each view shows something different
        _xdo(display, "key", "--window", wid, "ctrl+q")
        t = time.monotonic()
        rc = app.wait(timeout=30)
        quit_s = time.monotonic() - t
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        xvfb.terminate()
        xvfb.wait()
    stderr = err.read_text()
    assert rc == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    print(f"quit took {quit_s:.2f} s")
    assert quit_s < 10
