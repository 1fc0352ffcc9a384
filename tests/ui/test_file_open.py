"""Files opened through macOS (Dock drops, Open With) reach the window, even before it exists;
the doctor runs on first launch and after an upgrade and shows failures in a dialog."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QFileOpenEvent
from PySide6.QtWidgets import QApplication, QWidget

from app import doctor
from app.settings import load_ui_settings
from ui.doctor_dialog import SETTING, maybe_run_doctor
from ui.file_open import FileOpenFilter


class _Window:
    def __init__(self) -> None:
        self.opened: list[list[Path]] = []

    def open_paths(self, paths: list[Path]) -> bool:
        self.opened.append(paths)
        return True


def test_file_open_events_before_and_after_the_window(qtbot, tmp_path):
    app = QApplication.instance()
    f = FileOpenFilter()
    app.installEventFilter(f)
    try:
        early, late = tmp_path / "project", tmp_path / "cat.png"
        early.mkdir()
        QApplication.sendEvent(app, QFileOpenEvent(str(early)))
        assert f.pending == [early]  # queued: no window yet
        w = _Window()
        f.set_window(w)
        assert w.opened == [[early]] and f.pending == []
        QApplication.sendEvent(app, QFileOpenEvent(str(late)))
        assert w.opened[-1] == [late]
    finally:
        app.removeEventFilter(f)


def test_the_app_installs_the_filter_before_the_window():
    import ui

    app = ui._app()
    assert isinstance(app.file_open_filter, FileOpenFilter)


def test_doctor_failure_opens_a_dialog_once_per_version(qtbot, monkeypatch):
    calls = []

    def fake_checks(skip=()):
        calls.append(1)
        return [
            doctor.Check("metal", "fail", "Metal is not available: no GPU", "use a Mac"),
            doctor.Check("git", "pass", "git 2"),
        ]

    monkeypatch.setattr(doctor, "run_checks", fake_checks)
    w = QWidget()
    qtbot.addWidget(w)
    task = maybe_run_doctor(w, force=True)
    assert task is not None
    qtbot.waitUntil(lambda: hasattr(w, "doctor_dialog"), timeout=10000)
    text = w.doctor_dialog.text()
    assert "Metal is not available: no GPU" in text and "→ use a Mac" in text and "git" not in text
    assert load_ui_settings()[SETTING] == doctor.locus_version()
    w.doctor_dialog.close()
    assert maybe_run_doctor(w) is None and calls == [1]  # same version: not run again
