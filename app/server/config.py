"""Server settings and the API key: from the OS keychain, a private file or LOCUS_API_KEY."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8723
KEYRING_SERVICE = "locus"
KEYRING_USER = "api-key"
API_KEY_ENV = "LOCUS_API_KEY"
_NO_KEYCHAIN = (
    f"give the key another way: the environment variable {API_KEY_ENV}=KEY, or a file holding "
    "only the key with `--api-key-file PATH` (chmod 600 PATH)"
)


def keychain_hint(system: str | None = None) -> str:
    """A command that stores the API key without Python (the .app has no `python -m keyring`)."""
    import sys

    system = system or sys.platform
    if system == "darwin":
        return f"`security add-generic-password -s {KEYRING_SERVICE} -a {KEYRING_USER} -w`"
    # keyring's Secret Service backend looks items up by these two attributes.
    return f"`secret-tool store --label='Locus API key' service {KEYRING_SERVICE} username {KEYRING_USER}`"


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


@dataclass
class ServerConfig:
    """How the API server listens, whom it serves and how much work it queues."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Required as `x-api-key: KEY` or `Authorization: Bearer KEY` when set.
    api_key: str | None = None
    # Requests waiting for the model beyond those running; more get an "overloaded" error.
    max_queue: int = 32
    # Requests handed to the engine at once, which decodes them together as one batch (`locus serve
    # --parallel`, the window's server: the engine's own `parallel`).
    max_active: int = 1
    # Browser origins (e.g. "http://localhost:3000") allowed to call the API; "*" allows any.
    allowed_origins: tuple[str, ...] = ()
    # Extra Host header values accepted besides loopback names and the configured host.
    allowed_hosts: tuple[str, ...] = ()
    # Body bytes of one request (Anthropic's limit; a 256K-token prompt is ~1 MB of JSON) and of all
    # requests being read or answered; past either, 413 before the rest is read.
    max_body_bytes: int = 32 * 1024 * 1024
    body_budget_bytes: int = 256 * 1024 * 1024
    # Connections open at once (fewer if the open-file limit is lower); at the cap, the one idle
    # longest, else the one sending a body longest, is closed to make room.
    max_connections: int = 1000
    # Seconds a connection has to send a request's headers, the longest pause allowed between
    # pieces of a request body, and the longest a whole body may take (408 past either).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_deadline: float = 120.0
    # Longest prompt + reply served, in tokens (None: the model's own maximum).
    context_tokens: int | None = None
    # Sampling preset used when a request sets no sampling values (None: "thinking" when the
    # request thinks, "instruct" otherwise, as the model card recommends).
    preset: str | None = None
    # Name shown by /v1/models (None: the checkpoint's directory or Hugging Face repo name).
    model_name: str | None = None
    # Seconds between keep-alive pings on a quiet stream (long prefills).
    ping_interval: float = 10.0
    # Default answer budget when an OpenAI request sets no max_tokens (the model card's 32768).
    default_max_tokens: int = 32768
    log_level: str = "info"
    # SQLite file keeping Responses API answers for previous_response_id (None: in memory).
    responses_db: str | None = None
    # Bytes of stored responses kept per API key and for all keys together (oldest dropped first).
    responses_owner_bytes: int = 128 * 1024 * 1024
    responses_total_bytes: int = 256 * 1024 * 1024

    @property
    def is_loopback(self) -> bool:
        """Whether the server only listens on this machine."""
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """True for loopback names and addresses (localhost, 127.0.0.0/8, ::1)."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def is_wildcard_host(host: str) -> bool:
    """True for addresses that listen on every interface (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


def api_key_from_keyring() -> str:
    """The API key stored in the OS keychain (service "locus", user "api-key").

    Raises RuntimeError with instructions when there is none or no keychain is available.
    """
    import keyring
    from keyring.errors import KeyringError, NoKeyringError

    try:
        key = keyring.get_password(KEYRING_SERVICE, KEYRING_USER)
    except NoKeyringError as e:
        raise RuntimeError(
            "there is no OS keychain here (no keyring backend: usual on a headless Linux "
            f"machine); {_NO_KEYCHAIN}"
        ) from e
    except KeyringError as e:
        raise RuntimeError(f"could not read the API key from the OS keychain: {e}; or {_NO_KEYCHAIN}") from e
    if not key:
        raise RuntimeError(f"no API key in the OS keychain; store one first: {keychain_hint()}")
    return key


def api_key_from_file(path: str | os.PathLike[str]) -> str:
    """The API key in a file that only its owner can read (mode 600); RuntimeError otherwise."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        if os.name == "posix" and st.st_mode & 0o077:
            raise RuntimeError(
                f"{p} can be read or written by other users (mode {stat.filemode(st.st_mode)}): "
                f"an API key file must be private; run `chmod 600 {p}`"
            )
        key = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RuntimeError(f"cannot read the API key file {p}: {e}") from e
    if not key or any(c.isspace() for c in key):
        raise RuntimeError(f"{p} must hold the API key alone, on one line")
    return key


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key in LOCUS_API_KEY (None when unset); RuntimeError when it is set but blank."""
    value = (os.environ if environ is None else environ).get(API_KEY_ENV)
    if value is None:
        return None
    if not value.strip():
        raise RuntimeError(f"{API_KEY_ENV} is set but empty; unset it or give it the key")
    return value.strip()
