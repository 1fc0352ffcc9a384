"""Where front ends get a model: the one module outside engine/ that builds a backend.

Everything else in app/ and ui/ sees only `engine.Backend` (tests/test_layering.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine import Backend, PromptCache


def open_local(
    path: str,
    *,
    context_tokens: int | None = None,
    memory_check: bool = True,
    prompt_cache: PromptCache | None = None,
    mtp: int = 0,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    kv_bits: int | None = None,
    parallel: int | None = None,
) -> Backend:
    """Load the checkpoint at `path` into this process (raises ModelLoadError naming the problem).

    `should_stop` is polled between shards and layers read (LoadCancelled when it returns True);
    `progress(done, total)` reports those steps. `kv_bits` (4 or 8) quantizes the KV cache. The
    prompt cache then adopts the memory plan (engine/memplan.py) and, unless given, its budget.
    """
    from engine import Engine
    from engine.loader import DEFAULT_CONTEXT_TOKENS

    context_tokens = context_tokens or DEFAULT_CONTEXT_TOKENS

    eng = Engine(prompt_cache=prompt_cache, mtp=mtp, **({"parallel": parallel} if parallel else {}))
    try:
        eng.load(
            path,
            context_tokens=context_tokens,
            memory_check=memory_check,
            should_stop=should_stop,
            progress=progress,
            kv_bits=kv_bits,
        )
    except BaseException:
        eng.close()  # nothing half-loaded stays behind a cancelled or failed load
        raise
    _plan(eng, context_tokens)
    return eng


def _plan(eng: Any, context_tokens: int) -> None:
    from engine import available_memory
    from engine.memplan import plan_loaded

    pc = eng.prompt_cache
    if pc is None:
        return
    sched = getattr(eng, "scheduler", None)  # a batch: that many sequences' caches live at once
    sequences = int(getattr(sched, "parallel", 1) or 1)
    given = pc.memory_bytes if pc.budget_given else None
    plan = plan_loaded(
        eng.model,
        free=available_memory(),
        context_tokens=context_tokens,
        sequences=sequences,
        snapshot_budget=given,
    )
    pc.set_plan(plan)


# The OS keychain entry holding a remote server's API key: service "locus", this user name.
KEYRING_SERVICE = "locus"


def remote_key_account(url: str) -> str:
    """The keychain user name under which the API key for the server at `url` is kept."""
    return "remote:" + url.strip().rstrip("/")


def remote_key_from_keyring(url: str) -> str | None:
    """The API key stored for `url` in the OS keychain; None when there is none. Raises
    EngineError when the keychain cannot be read."""
    import keyring
    from keyring.errors import KeyringError

    from engine import EngineError

    from .secret_store import install_fallback

    install_fallback()  # no OS keychain: Locus's private file
    try:
        return keyring.get_password(KEYRING_SERVICE, remote_key_account(url)) or None
    except KeyringError as e:
        raise EngineError(f"could not read the remote server's API key from the keychain: {e}") from e


def save_remote_key(url: str, key: str | None) -> None:
    """Store (or with None, forget) the API key for the server at `url` in the OS keychain."""
    import keyring
    from keyring.errors import PasswordDeleteError

    from .secret_store import install_fallback

    install_fallback()
    if key:
        keyring.set_password(KEYRING_SERVICE, remote_key_account(url), key)
        return
    try:
        keyring.delete_password(KEYRING_SERVICE, remote_key_account(url))
    except PasswordDeleteError:
        pass


def remote_models(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """The model names the server at `url` lists in /v1/models (for a picker). Raises
    EngineError with the reason when it cannot be asked."""
    from engine.remote import RemoteBackend

    backend = RemoteBackend(url, api_key=api_key, timeout=timeout, connect_timeout=timeout)
    return [m["id"] for m in backend.models()]


def open_remote(
    url: str,
    *,
    api_key: str | None = None,
    model: str | None = None,
    timeout: float | None = None,
) -> Backend:
    """The model served at `url`, an OpenAI-compatible base URL (`http://host:8000/v1`): asks
    its /v1/models now, so a wrong address or model fails here (EngineError naming it)."""
    from engine.remote import DEFAULT_TIMEOUT, RemoteBackend

    backend = RemoteBackend(url, api_key=api_key, model=model, timeout=timeout or DEFAULT_TIMEOUT)
    backend.info  # noqa: B018 (connects: errors surface now)
    return backend


def in_pipeline() -> bool:
    """Whether this process is one of several running one model (started by mlx.launch)."""
    from engine import pipeline_group

    return pipeline_group() is not None


def open_pipeline(path: str, *, context_tokens: int, prompt_cache: PromptCache | None = None) -> Backend:
    """This process's share of the model pipelined across the processes mlx.launch started.

    Rank 0 gets the backend to serve from; every other rank runs the requests rank 0 sends until
    rank 0 closes the pipeline, then exits (SystemExit) without returning.
    """
    from engine import open_pipeline as open_share
    from engine import pipeline_group, serve_worker

    group = pipeline_group()
    backend = open_share(path, group=group, context_tokens=context_tokens, prompt_cache=prompt_cache)
    if group.rank() > 0:
        raise SystemExit(serve_worker(backend))  # type: ignore[arg-type]
    _on_sigterm(backend)
    return backend  # type: ignore[return-value]


def _on_sigterm(backend: Any) -> None:
    """mlx.launch stops rank 0 with SIGTERM when another rank exits: end the open requests with
    that reason (not a silent exit), then exit."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        backend.fail("this process was stopped (mlx.launch stops every rank when one exits)")
        threading.Timer(3.0, os._exit, (143,)).start()

    signal.signal(signal.SIGTERM, stop)
