"""Secrets without an OS keychain (issue 27): keyring falls back to a private 0600 file, only where
no keychain exists, and says so."""

from __future__ import annotations

import keyring
import pytest
from keyring.backends import fail

from app import hub, secret_store


@pytest.fixture
def no_keychain(memory_keyring):
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(fail.Keyring())  # memory_keyring puts the original back after this


def test_a_real_keychain_is_kept(memory_keyring):
    assert not secret_store.install_fallback()
    assert not secret_store.uses_file() and "system keychain" in secret_store.describe()


def test_no_keychain_means_a_private_file(no_keychain, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_DATA_DIR", str(tmp_path))
    with pytest.raises(keyring.errors.NoKeyringError):
        keyring.set_password("locus", "x", "y")  # what the issue met: nothing could be saved
    hub.set_token("hf_token")  # installs the fallback itself
    assert secret_store.uses_file() and hub.get_token() == "hf_token"
    path = tmp_path / "secrets.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "hf_token" in path.read_text()
    assert str(path) in secret_store.describe() and "mode 600" in secret_store.describe()
    hub.delete_token()
    assert hub.get_token() is None and "hf_token" not in path.read_text()
    assert not list(tmp_path.glob(".secrets-*"))  # written atomically: no temporary files left


def test_the_file_backend_is_never_chosen_on_its_own():
    # keyring registers every backend class: this one must not replace a keychain by priority.
    assert secret_store.FileKeyring not in {type(k) for k in keyring.backend.get_all_keyring()}
    assert not secret_store.FileKeyring.viable
