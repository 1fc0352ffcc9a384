"""Qt tests run offscreen with real widgets, a real SQLite store and real engines on tiny models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def store(tmp_path):
    from app.store import Store

    s = Store(tmp_path / "locus.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def loaded(engine):
    """The tiny model the shared engine holds (for scripted engines over the real tokenizer)."""
    return engine.model


@pytest.fixture(autouse=True)
def _no_os_keychain(memory_keyring):
    """Views read the Hugging Face token at start: never from the real keychain in tests."""
    return memory_keyring


class DialogAnswerer:
    """Answers modal dialogs as they open (a 20 ms timer): clicks the first button whose text
    starts with the next queued answer, or cancels when none is queued; records their texts."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.seen: list[str] = []

    def answer(self, *prefixes: str) -> None:
        self.answers.extend(prefixes)

    def tick(self) -> None:
        from PySide6.QtWidgets import QAbstractButton, QApplication

        w = QApplication.activeModalWidget()
        if w is None or not w.isVisible():
            return
        self.seen.append(w.text() if hasattr(w, "text") else w.windowTitle())
        want = self.answers.pop(0) if self.answers else None
        for b in w.findChildren(QAbstractButton):
            if want is not None and b.text().replace("&", "").startswith(want):
                b.click()
                return
        w.reject()


@pytest.fixture
def dialogs(qtbot):
    from PySide6.QtCore import QTimer

    a = DialogAnswerer()
    timer = QTimer(interval=20)
    timer.timeout.connect(a.tick)
    timer.start()
    yield a
    timer.stop()
