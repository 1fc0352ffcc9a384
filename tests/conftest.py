"""Shared fixtures: tiny random Qwen3.5-MoE checkpoints in every layout, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the user's own cache and data dirs out of the tests (subprocesses inherit these).
_ROOT = Path(os.environ.get("TMPDIR", "/tmp")) / f"locus-tests-{os.getpid()}"
os.environ["LOCUS_CACHE_DIR"] = str(_ROOT / "cache")
os.environ["LOCUS_DATA_DIR"] = str(_ROOT / "data")
os.environ["HF_HUB_CACHE"] = str(_ROOT / "hf-cache")  # downloads in tests never reach ~/.cache
os.environ["LOCUS_LOG_DIR"] = str(_ROOT / "logs")

LAYOUTS = ["per_expert", "fused", "mlx"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """A function (layout, bits=None) -> Path of a tiny checkpoint, cached for the session."""
    from engine.tiny import write_checkpoint

    made: dict[tuple[str, int | None], Path] = {}

    def get(layout: str = "per_expert", bits: int | None = None) -> Path:
        key = (layout, bits)
        if key not in made:
            path = tmp_path_factory.mktemp(f"tiny-{layout}-{bits or 'fp'}") / "model"
            made[key] = write_checkpoint(path, layout, bits=bits)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """The per-expert tiny checkpoint, loaded once."""
    from engine import load_model

    return load_model(tiny_dir("per_expert"))


@pytest.fixture(scope="session")
def engine(tiny_dir):
    """An Engine with the 4-bit tiny model loaded (shared; tests must not close it)."""
    from engine import Engine

    eng = Engine.from_path(str(tiny_dir("mlx", 4)))
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def _end_process_trees():
    """Every process group a test started (tests/proctree.py) ends with the test: passed,
    failed or interrupted (pytest tears fixtures down after Ctrl-C too)."""
    from tests import proctree

    since = proctree.mark()
    try:
        yield
    finally:
        proctree.end_all(since)


@pytest.fixture(scope="session", autouse=True)
def _clean_test_dirs():
    yield
    import shutil

    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture
def memory_keyring():
    """keyring backed by a dict for the test (the OS keychain is never touched); the dict."""
    import keyring
    from keyring.backend import KeyringBackend

    store: dict[tuple[str, str], str] = {}

    class MemoryKeyring(KeyringBackend):
        priority = 1

        def get_password(self, service, username):
            return store.get((service, username))

        def set_password(self, service, username, password):
            store[(service, username)] = password

        def delete_password(self, service, username):
            from keyring.errors import PasswordDeleteError

            if store.pop((service, username), None) is None:
                raise PasswordDeleteError("no such password")

    old = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    yield store
    keyring.set_keyring(old)
