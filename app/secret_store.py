"""Where secrets (the Hugging Face token, remote servers' API keys) are kept: the OS keychain
through keyring, or, where there is none (Linux without a Secret Service), a private file.

    install_fallback()   # once at start: keyring then works everywhere, with either store
    describe()           # "the system keychain (SecretService Keyring)" or "a private file …"

The file is `secrets.json` in the data folder, mode 600 (only this user can read it), written
atomically; it is a clearly labelled second choice, said so in the window and in `locus doctor`.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from keyring.backend import KeyringBackend, properties
from keyring.errors import PasswordDeleteError

from .settings import data_dir

__all__ = ["FileKeyring", "describe", "install_fallback", "secrets_file", "uses_file"]

_lock = threading.Lock()


def secrets_file() -> Path:
    """The private file used when there is no OS keychain."""
    return data_dir() / "secrets.json"


class FileKeyring(KeyringBackend):
    """keyring's interface over a JSON file readable only by its owner (mode 600)."""

    @properties.classproperty
    def priority(cls) -> float:
        # Never chosen by keyring on its own: install_fallback() picks it, only where nothing else is.
        raise RuntimeError("used only when Locus finds no OS keychain")

    def __str__(self) -> str:
        return f"Locus private file {self._path()}"

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path

    def _path(self) -> Path:
        return self.path or secrets_file()

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secrets-", dir=path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_password(self, service: str, username: str) -> str | None:
        with _lock:
            value = self._read().get(service, {}).get(username)
        return value if isinstance(value, str) else None

    def set_password(self, service: str, username: str, password: str) -> None:
        with _lock:
            data = self._read()
            data.setdefault(service, {})[username] = password
            self._write(data)

    def delete_password(self, service: str, username: str) -> None:
        with _lock:
            data = self._read()
            if username not in data.get(service, {}):
                raise PasswordDeleteError("no such secret")
            del data[service][username]
            self._write(data)


def _no_keychain(backend: object) -> bool:
    """Whether keyring's backend is the one that fails every call (no OS keychain found)."""
    from keyring.backends import chainer, fail

    if isinstance(backend, fail.Keyring):
        return True
    return isinstance(backend, chainer.ChainerBackend) and not backend.backends


def install_fallback() -> bool:
    """Use the private file where keyring found no OS keychain; True when the file is in use."""
    import keyring

    backend = keyring.get_keyring()
    if isinstance(backend, FileKeyring):
        return True
    if _no_keychain(backend):
        keyring.set_keyring(FileKeyring())
        return True
    return False


def uses_file() -> bool:
    """Whether secrets go to the private file (after install_fallback) rather than a keychain."""
    import keyring

    return isinstance(keyring.get_keyring(), FileKeyring)


def describe() -> str:
    """Where secrets are kept, in words for the window and `locus doctor`."""
    import keyring

    backend = keyring.get_keyring()
    if isinstance(backend, FileKeyring):
        return (
            f"a private file, {backend._path()} (mode 600: only you can read it), because this "
            "system has no keychain (on Linux: no Secret Service such as gnome-keyring or KWallet)"
        )
    if _no_keychain(backend):
        return "nowhere yet: no system keychain was found"
    name = getattr(backend, "name", type(backend).__name__)
    return f"the system keychain ({name})"
