"""Locus's PySide6 window. Only Qt code lives here; ui/bridge.py moves worker results to the UI."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["render_screenshots", "run_app"]


def _app(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    if argv and any(a in ("-style", "--style") or a.startswith("-style=") for a in argv):
        app.setProperty("locus_user_style", True)  # apply_theme keeps the style asked for
    if not hasattr(app, "file_open_filter"):
        # Before the window exists: macOS may deliver the Dock drop that launched the app first.
        from .file_open import FileOpenFilter

        app.file_open_filter = FileOpenFilter(app)
        app.installEventFilter(app.file_open_filter)
    app.setApplicationName("Locus")
    app.setOrganizationName("Locus")
    from .theme import app_icon

    app.setWindowIcon(app_icon())
    return app


def _window(
    demo: bool,
    model: str | None,
    project: str | None = None,
    *,
    remote: str | None = None,
    remote_model: str | None = None,
    remote_key: str | None = None,
):
    from .main_window import MainWindow
    from .theme import apply_theme

    app = _app()
    dark = apply_theme(app)
    try:  # follow the system when it switches between light and dark (Qt 6.5+)
        app.styleHints().colorSchemeChanged.connect(lambda *_: apply_theme(app))
    except AttributeError:
        pass
    win = MainWindow(dark=dark, demo=demo)
    app.file_open_filter.set_window(win)
    if demo:
        from app.demo import demo_model_dir

        model = str(demo_model_dir())
    from app.settings import load_ui_settings

    if not model and not demo and not remote:
        last = load_ui_settings().get("last_model")
        model = last if last and Path(last).exists() else None
    if remote:  # only when asked for: nothing leaves the machine otherwise
        if remote_key:  # List models and Use send it too
            win.models.session_key(remote, remote_key)
        win.load_remote(remote, remote_model or "", remote_key)
    elif model:
        win.load_model(model)
    elif not project:
        win.show_view("Models")
    # `locus DIR` opens that project; otherwise the last one comes back (without switching view).
    if project:  # a folder opens in Agent, an image (`locus photo.png`) in Locate
        win.open_paths([Path(project)])
    else:
        last = load_ui_settings().get("last_project")
        if isinstance(last, str) and Path(last).is_dir():
            win.agent.open_project(last)
    return win


def run_app(
    *,
    demo: bool = False,
    model: str | None = None,
    project: str | None = None,
    remote: str | None = None,
    remote_model: str | None = None,
    remote_key: str | None = None,
    qt_args: list[str] | None = None,
) -> int:
    """Open the window (on the demo model, or `model`, or the model `remote_model` of the
    OpenAI-compatible server at `remote`; on `project` in Agent) and run until it closes.
    `qt_args` are Qt's own options (-platform, -style, …) for QApplication."""
    from .doctor_dialog import maybe_run_doctor

    app = _app([sys.argv[0], *(qt_args or [])])
    win = _window(demo, model, project, remote=remote, remote_model=remote_model, remote_key=remote_key)
    win.show()
    maybe_run_doctor(win)  # first launch and after an upgrade; failures open a dialog
    return int(app.exec())


def render_screenshots(out_dir: str | Path, *, demo: bool = True, model: str | None = None) -> list[Path]:
    """Render each view to OUT_DIR/<view>.png (offscreen works; no display needed)."""
    from .screenshots import render_all

    return render_all(Path(out_dir), demo=demo, model=model)
