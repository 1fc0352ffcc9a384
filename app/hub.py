"""Model manager without a window: local models and whether they fit, the recommended list,
downloads from the Hugging Face Hub with progress, pause/resume and cancel, delete, and the token.

The Hugging Face token lives only in the OS keychain (keyring); it is sent as a header and never
logged or written to disk by Locus. Downloads go to `models_dir()/OWNER--NAME`, one `.part` file per
file while it downloads, so a paused or interrupted download resumes with HTTP Range requests.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import data_dir

__all__ = [
    "RECOMMENDED",
    "DownloadCancelled",
    "DownloadPaused",
    "DownloadProgress",
    "Downloader",
    "HubError",
    "LocalModel",
    "RecommendedModel",
    "delete_model",
    "delete_token",
    "get_token",
    "list_local_models",
    "model_dir_for",
    "models_dir",
    "set_token",
]

KEYRING_SERVICE = "locus"
KEYRING_TOKEN_USER = "huggingface-token"
_CHUNK = 256 * 1024  # bytes between pause/cancel checks and progress reports


class HubError(Exception):
    """A download or model-management failure, with a message the user can act on."""


class DownloadPaused(HubError):
    """The download was paused; calling `download` again resumes it."""


class DownloadCancelled(HubError):
    """The download was cancelled and its partial files removed."""


@dataclass(frozen=True)
class RecommendedModel:
    repo_id: str
    description: str
    approx_gb: float


RECOMMENDED: list[RecommendedModel] = [
    RecommendedModel("mlx-community/Qwen3.6-35B-A3B-4bit",
                     "Qwen3.6-35B-A3B, 4-bit MLX: the model Locus is built for (text, images, tools)",
                     20.0),
    RecommendedModel("mlx-community/Qwen3.6-35B-A3B-8bit",
                     "The same model at 8 bits: closer to the original, needs a 64 GB Mac", 37.0),
    RecommendedModel("mlx-community/Qwen3-4B-4bit",
                     "A small text-only model for Macs with 8–16 GB of memory", 2.3),
]  # fmt: skip


def models_dir() -> Path:
    """Where downloaded models live (inside the user data dir)."""
    return data_dir() / "models"


def model_dir_for(repo_id: str) -> Path:
    return models_dir() / repo_id.replace("/", "--")


# -- local models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalModel:
    """A model on disk: its size and whether its estimated memory fits in this machine."""

    name: str
    path: Path
    size_bytes: int
    needed_bytes: int | None  # weights + cache + margin; None if it could not be estimated
    available_bytes: int
    repo_id: str | None = None
    error: str | None = None  # why it cannot be inspected (a broken or partial download)

    @property
    def fits(self) -> bool | None:
        if self.needed_bytes is None:
            return None
        return self.needed_bytes <= self.available_bytes


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def _describe(name: str, path: Path, repo_id: str | None, available: int,
              context_tokens: int) -> LocalModel:  # fmt: skip
    from engine import estimate_memory, inspect_checkpoint

    size = _dir_size(path)
    try:
        info = inspect_checkpoint(path)
        needed: int | None = estimate_memory(info, context_tokens).total
        error = None
    except Exception as e:  # a partial or foreign directory: list it with the reason
        needed, error = None, str(e)
    return LocalModel(name, path, size, needed, available, repo_id, error)


def list_local_models(extra_dirs: list[Path] | None = None, *, include_hf_cache: bool = True,
                      context_tokens: int = 32768) -> list[LocalModel]:  # fmt: skip
    """Models downloaded by Locus, in the Hugging Face cache, and in `extra_dirs`."""
    from engine.loader import available_memory  # not in engine.__all__; a plain helper

    available = available_memory()
    out: list[LocalModel] = []
    seen: set[Path] = set()
    roots = [models_dir(), *(extra_dirs or [])]
    for root in roots:
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "config.json").exists() and d.resolve() not in seen:
                seen.add(d.resolve())
                repo = d.name.replace("--", "/", 1) if "--" in d.name else None
                out.append(_describe(repo or d.name, d, repo, available, context_tokens))
    if include_hf_cache:
        try:
            from huggingface_hub import scan_cache_dir

            cache = scan_cache_dir()
        except Exception:  # no cache yet, or unreadable: nothing to add
            cache = None
        for repo in sorted(cache.repos if cache else [], key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                snap = Path(rev.snapshot_path)
                if (snap / "config.json").exists() and snap.resolve() not in seen:
                    seen.add(snap.resolve())
                    out.append(_describe(repo.repo_id, snap, repo.repo_id, available,
                                         context_tokens))  # fmt: skip
                    break
    return out


def delete_model(model: LocalModel | Path) -> None:
    """Delete a model's files. Only directories holding a config.json, in Locus's models dir or a
    Hugging Face cache repo, are removed (whole repo in the cache)."""
    path = Path(model.path if isinstance(model, LocalModel) else model).resolve()
    if not (path / "config.json").exists():
        raise HubError(f"{path} does not look like a model directory; nothing deleted")
    target = path
    # HF cache: .../models--owner--name/snapshots/<rev> → delete the whole models--owner--name.
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        target = path.parent.parent
    try:
        shutil.rmtree(target)
    except OSError as e:
        raise HubError(f"could not delete {target}: {e}") from None


# -- the token ----------------------------------------------------------------------------------------
def get_token() -> str | None:
    """The Hugging Face token from the OS keychain, or None."""
    import keyring
    from keyring.errors import KeyringError

    try:
        return keyring.get_password(KEYRING_SERVICE, KEYRING_TOKEN_USER) or None
    except KeyringError:
        return None


def set_token(token: str) -> None:
    """Store the token in the OS keychain (the only place Locus keeps it)."""
    import keyring
    from keyring.errors import KeyringError

    token = token.strip()
    if not token:
        raise HubError("the token is empty")
    try:
        keyring.set_password(KEYRING_SERVICE, KEYRING_TOKEN_USER, token)
    except KeyringError as e:
        raise HubError(f"the system keychain refused the token ({e}); "
                       "on Linux install and unlock a Secret Service keyring") from None  # fmt: skip


def delete_token() -> None:
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, KEYRING_TOKEN_USER)
    except PasswordDeleteError:
        pass
    except KeyringError as e:
        raise HubError(f"could not remove the token from the keychain: {e}") from None


# -- downloads ------------------------------------------------------------------------------------------
@dataclass
class DownloadProgress:
    """Where a download stands; `speed` is bytes per second over the last few seconds."""

    repo_id: str
    done_bytes: int = 0
    total_bytes: int = 0
    speed: float = 0.0
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    state: str = "starting"  # starting, downloading, paused, cancelled, done

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass
class _Speed:
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, t: float, n: int) -> float:
        self.samples.append((t, n))
        while len(self.samples) > 2 and t - self.samples[0][0] > 3.0:
            self.samples.pop(0)
        (t0, n0) = self.samples[0]
        return (n - n0) / (t - t0) if t > t0 else 0.0


class Downloader:
    """Downloads one repo; `pause()` and `cancel()` may be called from any thread.

    The endpoint is read from HF_ENDPOINT when the download starts (default huggingface.co), so a
    local server can stand in for the Hub.
    """

    def __init__(self, repo_id: str, *, revision: str = "main", dest: Path | None = None,
                 token: str | None = None, endpoint: str | None = None,
                 allow_patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.jinja",
                                                    "*.txt", "*.model", "*.tiktoken", "*.py"),
                 ) -> None:  # fmt: skip
        if repo_id.count("/") != 1 or any(not p for p in repo_id.split("/")):
            raise HubError(f"{repo_id!r} is not a Hugging Face repo id (owner/name)")
        self.repo_id = repo_id
        self.revision = revision
        self.dest = Path(dest) if dest else model_dir_for(repo_id)
        self._token = token
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT")
                         or "https://huggingface.co").rstrip("/")  # fmt: skip
        self.allow_patterns = allow_patterns
        self._pause = threading.Event()
        self._cancel = threading.Event()
        self.progress = DownloadProgress(repo_id)

    def pause(self) -> None:
        self._pause.set()

    def cancel(self) -> None:
        self._cancel.set()

    def _headers(self) -> dict[str, str]:
        token = self._token if self._token is not None else get_token()
        h = {"user-agent": "locus"}
        if token:
            h["authorization"] = f"Bearer {token}"
        return h

    def files(self, client: Any) -> list[tuple[str, int]]:
        """(filename, size) of the files to fetch, from the Hub's model API."""
        import fnmatch

        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{self.revision}"
        r = client.get(url, params={"blobs": True}, headers=self._headers())
        if r.status_code in (401, 403):
            raise HubError(f"{self.repo_id} needs a Hugging Face token with access: add one in "
                           "Models → Token, and accept the model's terms on its page")  # fmt: skip
        if r.status_code == 404:
            raise HubError(f"{self.repo_id} was not found on {self.endpoint} (check the name)")
        if r.status_code >= 400:
            raise HubError(f"the Hub answered {r.status_code} for {self.repo_id}; try again later")
        siblings = r.json().get("siblings") or []
        out = []
        for s in siblings:
            name = s.get("rfilename", "")
            if any(fnmatch.fnmatch(name, p) for p in self.allow_patterns):
                out.append((name, int(s.get("size") or 0)))
        if not out:
            raise HubError(f"{self.repo_id} has no model files Locus can use")
        return out

    def download(self, on_progress: Callable[[DownloadProgress], None] | None = None,
                 interval: float = 0.2) -> Path:  # fmt: skip
        """Fetch every file (resuming partial ones); the model directory.

        Raises DownloadPaused after `pause()` (partial files kept), DownloadCancelled after
        `cancel()` (partial files removed), HubError on network or access errors.
        """
        import httpx

        self._pause.clear()
        p = self.progress
        speed = _Speed()
        last = 0.0

        def report(force: bool = False) -> None:
            nonlocal last
            now = time.monotonic()
            p.speed = speed.add(now, p.done_bytes)
            if on_progress is not None and (force or now - last >= interval):
                last = now
                on_progress(p)

        try:
            with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=60.0)) as c:
                files = self.files(c)
                p.files_total = len(files)
                p.total_bytes = sum(s for _, s in files)
                self.dest.mkdir(parents=True, exist_ok=True)
                p.done_bytes = sum(self._have(name, size) for name, size in files)
                p.state = "downloading"
                report(True)
                for name, size in files:
                    p.file = name
                    self._fetch(c, name, size, p, report)
                    p.files_done += 1
        except (DownloadPaused, DownloadCancelled):
            raise
        except httpx.HTTPError as e:
            raise HubError(f"download of {self.repo_id} failed ({e}); check your connection "
                           "and press Resume to continue where it stopped") from None  # fmt: skip
        except OSError as e:
            raise HubError(f"cannot write {self.dest}: {e} (is the disk full?)") from None
        p.state = "done"
        report(True)
        return self.dest

    def _have(self, name: str, size: int) -> int:
        final = self.dest / name
        if final.exists() and (not size or final.stat().st_size == size):
            return final.stat().st_size
        part = self.dest / (name + ".part")
        return part.stat().st_size if part.exists() else 0

    def _check(self, p: DownloadProgress, report: Callable[[bool], None]) -> None:
        if self._cancel.is_set():
            p.state = "cancelled"
            shutil.rmtree(self.dest, ignore_errors=True)
            report(True)
            raise DownloadCancelled(f"download of {self.repo_id} cancelled")
        if self._pause.is_set():
            p.state = "paused"
            report(True)
            raise DownloadPaused(f"download of {self.repo_id} paused")

    def _fetch(self, c: Any, name: str, size: int, p: DownloadProgress,
               report: Callable[..., None]) -> None:  # fmt: skip
        final = self.dest / name
        if final.exists() and (not size or final.stat().st_size == size):
            return
        part = self.dest / (name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        headers = self._headers()
        if have:
            headers["range"] = f"bytes={have}-"
        url = f"{self.endpoint}/{self.repo_id}/resolve/{self.revision}/{name}"
        self._check(p, report)
        with c.stream("GET", url, headers=headers) as r:
            if r.status_code == 416:  # already complete
                pass
            elif r.status_code >= 400:
                raise HubError(f"the Hub answered {r.status_code} for {name}")
            else:
                if have and r.status_code != 206:  # server ignored Range: start the file over
                    p.done_bytes -= have
                    have = 0
                with open(part, "ab" if have else "wb") as f:
                    for chunk in r.iter_bytes(_CHUNK):
                        f.write(chunk)
                        p.done_bytes += len(chunk)
                        report()
                        self._check(p, report)
        if size and part.stat().st_size != size:
            raise HubError(f"{name} arrived with {part.stat().st_size} of {size} bytes; "
                           "press Resume to try again")  # fmt: skip
        part.replace(final)
