"""Model manager without a window: local models and whether they fit, the recommended list, a
search of the Hub's MLX models, downloads from the Hugging Face Hub with progress, pause/resume and
cancel, delete, and the token.

The Hugging Face token lives only in the OS keychain (keyring), or where there is none in Locus's
private 0600 file (app.secret_store); it is passed to huggingface_hub and never logged. Downloads
use `huggingface_hub.snapshot_download` (retries, Xet, the standard cache that `hf` and mlx-lm
share); Locus adds pause/cancel through the progress class, a progress report with speed, and a
SHA-256 check of every file against the Hub's listing.
"""

from __future__ import annotations

import hashlib
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
    "HubModel",
    "LocalModel",
    "RecommendedModel",
    "delete_model",
    "delete_token",
    "get_token",
    "hf_cache_dir",
    "list_local_models",
    "model_dir_for",
    "models_dir",
    "search_models",
    "set_token",
]

KEYRING_SERVICE = "locus"
KEYRING_TOKEN_USER = "huggingface-token"


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
    RecommendedModel(
        "mlx-community/Qwen3.6-35B-A3B-4bit",
        "Qwen3.6-35B-A3B, 4-bit MLX: the model Locus is built for (text, images, tools)",
        20.0,
    ),
    RecommendedModel(
        "mlx-community/Qwen3.6-35B-A3B-8bit",
        "The same model at 8 bits: closer to the original, needs a 64 GB Mac",
        37.0,
    ),
    RecommendedModel(
        "mlx-community/Qwen3-4B-4bit", "A small text-only model for Macs with 8–16 GB of memory", 2.3
    ),
]


def models_dir() -> Path:
    """Where downloaded models live (inside the user data dir)."""
    return data_dir() / "models"


def model_dir_for(repo_id: str) -> Path:
    """Where Locus's own (pre-huggingface_hub) downloads of `repo_id` were kept."""
    return models_dir() / repo_id.replace("/", "--")


def hf_cache_dir() -> Path:
    """The Hugging Face cache downloads go to (HF_HUB_CACHE / HF_HOME, read at each call)."""
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


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


def _describe(name: str, path: Path, repo_id: str | None, available: int, context_tokens: int) -> LocalModel:
    from engine import estimate_memory, inspect_checkpoint

    size = _dir_size(path)
    try:
        info = inspect_checkpoint(path)
        needed: int | None = estimate_memory(info, context_tokens).total
        error = None
    except Exception as e:  # a partial or foreign directory: list it with the reason
        needed, error = None, str(e)
    return LocalModel(name, path, size, needed, available, repo_id, error)


def list_local_models(
    extra_dirs: list[Path] | None = None,
    *,
    include_hf_cache: bool = True,
    context_tokens: int = 32768,
    in_use: int = 0,
) -> list[LocalModel]:
    """Models downloaded by Locus, in the Hugging Face cache, and in `extra_dirs`.

    `in_use`: bytes the loaded model holds; loading another unloads it first (app.models), so
    they count as available."""
    from engine import available_memory

    available = available_memory()
    available += in_use if available else 0
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

            cache = scan_cache_dir(hf_cache_dir())
        except Exception:  # no cache yet, or unreadable: nothing to add
            cache = None
        for repo in sorted(cache.repos if cache else [], key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                snap = Path(rev.snapshot_path)
                if (snap / "config.json").exists() and snap.resolve() not in seen:
                    seen.add(snap.resolve())
                    out.append(_describe(repo.repo_id, snap, repo.repo_id, available, context_tokens))
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


# -- finding models on the Hub ------------------------------------------------------------------------
@dataclass(frozen=True)
class HubModel:
    """An MLX model on the Hub: its download size, quantization and whether it fits this machine."""

    repo_id: str
    size_bytes: int | None  # the weights' bytes (None: the Hub did not say)
    quantization: str  # "4-bit", "8-bit", "bf16", … or "" when not known
    downloads: int
    needed_bytes: int | None  # the same estimate as for a local model (weights + context + margin)
    available_bytes: int

    @property
    def fits(self) -> bool | None:
        if self.needed_bytes is None or not self.available_bytes:
            return None
        return self.needed_bytes <= self.available_bytes


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}


def _weights_bytes(info: Any) -> int | None:
    st = getattr(info, "safetensors", None)
    params = getattr(st, "parameters", None)
    if params:  # the Hub counts each tensor's elements by dtype: MLX packs 4-bit weights in U32
        return int(sum(int(n) * _DTYPE_BYTES.get(str(d).upper(), 1) for d, n in params.items()))
    used = getattr(info, "used_storage", None)
    return int(used) if used else None


def _quantization(repo_id: str, config: dict[str, Any] | None, tags: list[str]) -> str:
    import re

    q = (config or {}).get("quantization") or (config or {}).get("quantization_config")
    if isinstance(q, dict) and q.get("bits"):
        return f"{q['bits']}-bit"
    text = " ".join([repo_id, *tags]).lower()
    m = re.search(r"(\d+)[-_ ]?bits?\b", text)
    if m:
        return f"{m.group(1)}-bit"
    for name in ("mxfp4", "nvfp4", "bf16", "fp16", "dwq"):
        if name in text:
            return name
    return ""


def _hub_fit(size: int | None, config: dict[str, Any] | None, context_tokens: int) -> int | None:
    """The fit check of a local model (engine.estimate_memory) on what the Hub tells of one."""
    from types import SimpleNamespace

    from engine import estimate_memory

    if not size:
        return None
    cfg = config if isinstance(config, dict) else {}
    info = SimpleNamespace(config=cfg, is_qwen_moe=cfg.get("model_type") == "qwen3_5_moe", weight_bytes=size)
    try:
        return estimate_memory(info, context_tokens).total  # type: ignore[arg-type]
    except Exception:  # a config the estimate cannot read: the weights and margin alone
        return size + max(512 * 1024**2, size // 20)


def search_models(
    query: str,
    *,
    limit: int = 30,
    endpoint: str | None = None,
    token: str | None = None,
    context_tokens: int = 32768,
    available: int | None = None,
) -> list[HubModel]:
    """MLX conversions on the Hub whose name matches `query`, most downloaded first. HubError with
    a reason for a person when the Hub cannot be asked."""
    from huggingface_hub import HfApi

    from engine import available_memory

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    avail = available_memory() if available is None else available
    try:
        tok = token if token is not None else get_token()
        api = HfApi(endpoint=endpoint, token=tok or False)  # False: never another stored token
        found = list(
            api.list_models(
                search=query.strip() or None,
                filter="mlx",
                sort="downloads",
                limit=limit,
                expand=["safetensors", "tags", "downloads", "config", "usedStorage"],
            )
        )
    except Exception as e:
        raise _search_error(endpoint, e) from None
    out = []
    for m in found:
        size = _weights_bytes(m)
        config = m.config if isinstance(getattr(m, "config", None), dict) else None
        tags = list(getattr(m, "tags", None) or [])
        out.append(
            HubModel(
                m.id,
                size,
                _quantization(m.id, config, tags),
                int(getattr(m, "downloads", 0) or 0),
                _hub_fit(size, config, context_tokens),
                avail,
            )
        )
    return out


def _search_error(endpoint: str, e: Exception) -> HubError:
    host = endpoint.split("://", 1)[-1]
    if _unreachable(e):
        return HubError(f"Cannot reach {host} to search for models: check the internet connection.")
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        code = e.response.status_code if e.response is not None else "an error"
        return HubError(f"{host} answered {code} to the search; try again later.")
    return HubError(f"The search on {host} failed ({type(e).__name__}); try again later.")


# -- the token ----------------------------------------------------------------------------------------
def get_token() -> str | None:
    """The Hugging Face token from the OS keychain (or Locus's private file without one), or None."""
    import keyring
    from keyring.errors import KeyringError

    from .secret_store import install_fallback

    install_fallback()
    try:
        return keyring.get_password(KEYRING_SERVICE, KEYRING_TOKEN_USER) or None
    except KeyringError:
        return None


def set_token(token: str) -> None:
    """Store the token in the OS keychain (or, where there is none, Locus's private 0600 file)."""
    import keyring
    from keyring.errors import KeyringError

    from .secret_store import install_fallback

    install_fallback()
    token = token.strip()
    if not token:
        raise HubError("the token is empty")
    try:
        keyring.set_password(KEYRING_SERVICE, KEYRING_TOKEN_USER, token)
    except KeyringError as e:
        raise HubError(
            f"the system keychain refused the token ({e}); "
            "on Linux install and unlock a Secret Service keyring"
        ) from None


def delete_token() -> None:
    import keyring
    from keyring.errors import KeyringError, PasswordDeleteError

    from .secret_store import install_fallback

    install_fallback()
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
    state: str = "starting"  # starting, downloading, verifying, paused, cancelled, done

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


ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py")


class Downloader:
    """Downloads one repo into the Hugging Face cache; `pause()` and `cancel()` may be called from
    any thread. The endpoint is HF_ENDPOINT when set (a local server can stand in for the Hub).

    Resume: finished files stay in the cache and are skipped next time; huggingface_hub restarts
    a file that was interrupted half-way (Xet downloads reuse their chunk cache).
    """

    def __init__(
        self,
        repo_id: str,
        *,
        revision: str = "main",
        cache_dir: Path | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        allow_patterns: tuple[str, ...] = ALLOW_PATTERNS,
        max_workers: int = 8,
    ) -> None:
        if repo_id.count("/") != 1 or any(not p for p in repo_id.split("/")):
            raise HubError(f"{repo_id!r} is not a Hugging Face repo id (owner/name)")
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._token = token
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.allow_patterns = allow_patterns
        self.max_workers = max_workers
        self._pause = threading.Event()
        self._cancel = threading.Event()
        self._sha: str | None = None
        self.progress = DownloadProgress(repo_id)

    def pause(self) -> None:
        self._pause.set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def repo_cache(self) -> Path:
        """This repo's folder in the Hugging Face cache (models--owner--name)."""
        return (self.cache_dir or hf_cache_dir()) / ("models--" + self.repo_id.replace("/", "--"))

    def _interrupt(self) -> None:
        # Called from huggingface_hub's worker threads on every chunk: raising stops the download.
        if self._cancel.is_set():
            raise DownloadCancelled(f"download of {self.repo_id} cancelled")
        if self._pause.is_set():
            raise DownloadPaused(f"download of {self.repo_id} paused")

    def _listing(self, api: Any) -> tuple[str, dict[str, Any]]:
        """(commit sha, {path: RepoFile}) of the files to fetch."""
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import filter_repo_objects

        sha = api.repo_info(self.repo_id, revision=self.revision).sha
        tree = {
            f.path: f
            for f in api.list_repo_tree(self.repo_id, recursive=True, revision=sha)
            if isinstance(f, RepoFile)
        }
        wanted = set(filter_repo_objects(list(tree), allow_patterns=list(self.allow_patterns)))
        files = {k: v for k, v in tree.items() if k in wanted}
        if not files:
            raise HubError(f"{self.repo_id} has no model files Locus can use")
        return sha, files

    def download(
        self, on_progress: Callable[[DownloadProgress], None] | None = None, interval: float = 0.2
    ) -> Path:
        """Fetch every file not already in the cache, verify checksums; the snapshot directory.

        Raises DownloadPaused after `pause()` (finished files kept), DownloadCancelled after
        `cancel()` (this download's files removed), HubError on network, access or checksum errors.
        """
        from huggingface_hub import HfApi, snapshot_download, try_to_load_from_cache

        self._pause.clear()
        p = self.progress
        speed = _Speed()
        lock = threading.Lock()
        last = [0.0]

        def report(force: bool = False) -> None:
            now = time.monotonic()
            with lock:
                p.speed = speed.add(now, p.done_bytes)
                due = force or now - last[0] >= interval
                if due:
                    last[0] = now
            if on_progress is not None and due:
                on_progress(p)

        token = self._token if self._token is not None else get_token()
        cache = str(self.cache_dir) if self.cache_dir else str(hf_cache_dir())
        bar = _progress_class(self, p, report)
        try:
            api = HfApi(endpoint=self.endpoint, token=token or None)
            sha, files = self._listing(api)
            self._sha = sha
            p.files_total = len(files)
            p.total_bytes = sum(_size(f) for f in files.values())
            have = [
                n
                for n in files
                if isinstance(try_to_load_from_cache(self.repo_id, n, cache_dir=cache, revision=sha), str)
            ]
            p.done_bytes = sum(_size(files[n]) for n in have)
            p.files_done = len(have)
            p.state = "downloading"
            report(True)
            self._interrupt()
            snapshot = Path(
                snapshot_download(
                    self.repo_id,
                    revision=sha,
                    cache_dir=cache,
                    token=token or None,
                    allow_patterns=list(self.allow_patterns),
                    max_workers=self.max_workers,
                    tqdm_class=bar,
                    endpoint=self.endpoint,
                )
            )
            p.state, p.file = "verifying", ""
            report(True)
            self._verify(snapshot, files)
            if self.revision != sha:  # as huggingface_hub does for a branch: refs/main → commit
                ref = self.repo_cache / "refs" / self.revision
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(sha)
        except DownloadPaused:
            p.state = "paused"
            report(True)
            raise
        except DownloadCancelled:
            p.state = "cancelled"
            self._remove_partial()
            report(True)
            raise
        except HubError:
            raise
        except Exception as e:
            raise _hub_error(self.repo_id, self.endpoint, e) from None
        p.state, p.done_bytes, p.files_done = "done", p.total_bytes, p.files_total
        report(True)
        return snapshot

    def _verify(self, snapshot: Path, files: dict[str, Any]) -> None:
        """Hash each file against the Hub's listing; a mismatch is deleted, never kept."""
        bad = []
        for name, f in files.items():
            self._interrupt()
            self.progress.file = name
            path = snapshot / name
            if f.lfs is not None:
                ok = _sha256(path) == f.lfs.sha256
            else:  # a git blob id: sha1 over "blob <size>\0" + content
                ok = _git_blob_id(path) == f.blob_id
            if not ok:
                bad.append(name)
                blob = path.resolve()
                path.unlink(missing_ok=True)
                if blob != path:
                    blob.unlink(missing_ok=True)
        if bad:
            raise HubError(
                f"{', '.join(bad)} arrived damaged (checksum mismatch) and "
                f"{'was' if len(bad) == 1 else 'were'} deleted; press Resume to fetch "
                "again, and check your network or proxy if it repeats"
            )

    def discard(self) -> None:
        """Remove what a stopped (failed or paused) download left behind; call it only when the
        download is not running."""
        self._remove_partial()
        self.progress = DownloadProgress(self.repo_id)

    def _remove_partial(self) -> None:
        # The repo folder holds only this download unless another revision was downloaded before.
        root = self.repo_cache
        snaps = root / "snapshots"
        others = [d for d in snaps.iterdir() if d.name != self._sha] if snaps.is_dir() else []
        if not others:
            shutil.rmtree(root, ignore_errors=True)
        elif self._sha:
            shutil.rmtree(snaps / self._sha, ignore_errors=True)


def _size(f: Any) -> int:
    return int(f.lfs.size if f.lfs is not None else f.size or 0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _git_blob_id(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _progress_class(d: Downloader, p: DownloadProgress, report: Callable[..., None]) -> type:
    """A tqdm class for snapshot_download that feeds `p` and raises on pause/cancel."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bar(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._bytes = kwargs.get("name") == "huggingface_hub.snapshot_download"
            self._files = kwargs.get("unit", "it") == "it"
            kwargs["disable"] = True  # Locus shows its own progress
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            d._interrupt()
            if self._bytes and n:
                p.done_bytes += int(n)
                report()
            elif self._files and n:  # one step per file, cached ones included
                self.files_seen = getattr(self, "files_seen", 0) + int(n)
                p.files_done = max(p.files_done, self.files_seen)
                report()
            return super().update(n)

    return Bar


def _hub_error(repo_id: str, endpoint: str, e: Exception) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return HubError(
            f"{repo_id} needs a Hugging Face token with access: add one in Models → "
            "Token, and accept the model's terms on its page"
        )
    if isinstance(e, RepositoryNotFoundError | RevisionNotFoundError):
        return HubError(
            f"{repo_id} was not found on {endpoint} (check the name; a private repo "
            "needs a token in Models → Token)"
        )
    if isinstance(e, HfHubHTTPError):
        code = e.response.status_code if e.response is not None else "an error"
        if code in (401, 403):
            return HubError(f"{repo_id} needs a Hugging Face token with access: add one in Models → Token")
        return HubError(f"the Hub answered {code} for {repo_id}; try again later")
    if _unreachable(e):
        host = endpoint.split("://", 1)[-1]
        return HubError(
            f"Cannot reach {host} to download {repo_id}: check the internet connection (or set "
            "HF_ENDPOINT to a mirror), then try again; files already downloaded are kept"
        )
    if isinstance(e, OSError) and "Consistency check" not in str(e):
        return HubError(f"cannot write the model to {hf_cache_dir()}: {e} (is the disk full?)")
    return HubError(
        f"download of {repo_id} failed ({e}); check your connection and press "
        "Resume to continue where it stopped"
    )


def _unreachable(e: BaseException) -> bool:
    """Whether `e` (or what caused it) says the Hub could not be reached: DNS, refused, offline."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    cur: BaseException | None = e
    for _ in range(8):  # a bounded walk: exception chains can loop
        if cur is None:
            break
        if isinstance(cur, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return True
        if type(cur).__name__ in _CONNECT_ERRORS:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# httpx's and requests' names for "no connection" (huggingface-hub has used both).
_CONNECT_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NameResolutionError",
    "NewConnectionError",
    "gaierror",  # socket's "[Errno -2] Name or service not known"
    "ConnectionRefusedError",
}
