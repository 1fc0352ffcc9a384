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
