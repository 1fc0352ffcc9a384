"""Prompt cache for hybrid models: whole-cache snapshots at reusable points, LRU by bytes, disk spill.

Qwen3.5/3.6's gated-DeltaNet layers keep a recurrent state that cannot be trimmed back to a shorter
prefix, so a cache can only be reused from a snapshot taken exactly at a prefix of the new prompt.
Snapshots are taken at message boundaries while a prompt is prefilled (the end of the system +
tools prefix, points a client marks, the start of the last user message and of the generation
prompt) and at the end of the reply; a request resumes from the longest snapshot whose tokens (and
images) prefix its prompt, whichever session or API key stored it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from .mlxlm_compat import cache_class_name, is_kv_cache
from .reuse import ReplyMemo

log = logging.getLogger("locus.engine.cache")

FORMAT_VERSION = 1
_SUFFIX = ".locus-cache.safetensors"
# Snapshots of prefixes many sessions share (system prompt + tools, client-marked breakpoints)
# belong to no one session, so one session's turns never push them out of its own quota.
SHARED = "*shared*"
SHARED_KINDS = ("system", "breakpoint")


def prefix_key(model_id: str, tokens: Sequence[int], extra: Sequence[tuple[int, str]] = ()) -> str:
    """Hash of the model and a token prefix (plus content hashes of images inside it)."""
    h = hashlib.sha256(model_id.encode())
    h.update(b"\0")
    h.update(",".join(map(str, tokens)).encode())
    for pos, digest in extra:
        if pos < len(tokens):
            h.update(f"|{pos}:{digest}".encode())
    return h.hexdigest()


def _copy(a: mx.array) -> mx.array:
    # A real copy, never a view: a view would pin the live cache's buffer and force it to be
    # copied on every later in-place update.
    return a + 0 if a.dtype != mx.bool_ else mx.logical_or(a, False)


def snapshot_state(cache: list[Any]) -> tuple[list[str], list[list[mx.array]]]:
    """Class names and copied arrays of each layer's cache (KV trimmed to its length)."""
    classes, states = [], []
    for c in cache:
        name = cache_class_name(c)
        if name is None:
            raise TypeError(f"prompt cache cannot snapshot {type(c).__name__}")
        if is_kv_cache(c):
            if c.keys is None:
                arrs = []
            else:
                arrs = [_copy(c.keys[..., : c.offset, :]), _copy(c.values[..., : c.offset, :])]
        elif any(x is None for x in c.cache):
            arrs = []
        else:
            arrs = [_copy(x) for x in c.cache]
        classes.append(name)
        states.append(arrs)
    mx.eval(states)
    return classes, states


def restore_state(fresh: list[Any], classes: list[str], states: list[list[mx.array]]) -> list[Any]:
    """Fill a freshly made cache list from a snapshot (which is never written to afterwards)."""
    if [cache_class_name(c) for c in fresh] != classes:
        raise ValueError("snapshot does not match this model's cache layout")
    for c, arrs in zip(fresh, states, strict=True):
        if not arrs:
            continue
        if is_kv_cache(c):
            # Sliced to their length, so the next update concatenates into a new buffer.
            c.keys, c.values = arrs
            c.offset = arrs[0].shape[2]
        else:
            c.cache = list(arrs)
    return fresh


@dataclass
class Snapshot:
    key: str
    model_id: str
    tokens: tuple[int, ...]
    extra: tuple[tuple[int, str], ...]
    classes: list[str]
    states: list[list[mx.array]] | None  # None when only on disk
    nbytes: int
    session: str
    kind: str
    last_used: float = field(default_factory=time.monotonic)
    path: Path | None = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    evictions: int = 0
    disk_writes: int = 0
    disk_reads: int = 0
    rejected_files: int = 0


class PromptCache:
    """Snapshots in a bounded in-memory LRU (by bytes), optionally spilled to `disk_dir`.

    A snapshot's bytes are the whole linear-attention state plus its KV prefix. Eviction spares
    the newest turn snapshot (prompt or reply) of each session while others can go, so concurrent
    sessions (an agent and its sub-agents) do not push each other out, and a boundary snapshot
    never costs another session its newest one. Prefixes shared across sessions (system prompt +
    tools, marked breakpoints) are kept apart, `shared` of them at most.
    """

    def __init__(
        self,
        memory_bytes: int = 2 * 1024**3,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_bytes: int = 8 * 1024**3,
        per_session: int = 6,
        shared: int = 8,
    ):
        self.memory_bytes = memory_bytes
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.disk_bytes = disk_bytes
        self.per_session = per_session
        self.shared = shared
        self.stats = CacheStats()
        self.replies = ReplyMemo(disk_dir=self.disk_dir)
        self._mem: dict[str, Snapshot] = {}
        self._disk: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        self._disk_scanned = False

    # -- lookup / store ------------------------------------------------------------------------
    def lookup(
        self,
        model_id: str,
        tokens: Sequence[int],
        fresh_cache: list[Any],
        extra: Sequence[tuple[int, str]] = (),
    ) -> tuple[list[Any], int]:
        """The longest usable snapshot for `tokens`: (cache to continue from, tokens it covers).

        A snapshot is usable when its tokens are a strict prefix of `tokens` (one token must stay
        to produce logits). Returns (fresh_cache, 0) on a miss.
        """
        self._scan_disk()
        n = len(tokens)
        with self._lock:
            cands = [
                s
                for s in [*self._mem.values(), *self._disk.values()]
                if s.model_id == model_id and len(s.tokens) < n
            ]
        cands.sort(key=lambda s: len(s.tokens), reverse=True)
        for s in cands:
            L = len(s.tokens)
            if tuple(tokens[:L]) != s.tokens:
                continue
            if s.extra != tuple(e for e in extra if e[0] < L):
                continue
            states = s.states if s.states is not None else self._read(s)
            if states is None:
                continue
            try:
                cache = restore_state(fresh_cache, s.classes, states)
            except ValueError as e:
                log.warning("prompt cache: ignoring snapshot %s: %s", s.key[:12], e)
                continue
            s.last_used = time.monotonic()
            self.stats.hits += 1
            self.stats.tokens_reused += L
            return cache, L
        self.stats.misses += 1
        return fresh_cache, 0

    def store(
        self,
        model_id: str,
        tokens: Sequence[int],
        cache: list[Any],
        *,
        session: str = "default",
        kind: str = "prompt",
        extra: Sequence[tuple[int, str]] = (),
    ) -> Snapshot | None:
        """Snapshot `cache`, which must hold exactly `tokens`."""
        if not tokens or self.memory_bytes <= 0:
            return None
        tokens = tuple(tokens)
        ex = tuple(e for e in extra if e[0] < len(tokens))
        key = prefix_key(model_id, tokens, ex)
        if kind in SHARED_KINDS:
            session = SHARED
        with self._lock:
            if key in self._mem:
                self._mem[key].last_used = time.monotonic()
                return self._mem[key]
        classes, states = snapshot_state(cache)
        nbytes = sum(a.nbytes for arrs in states for a in arrs)
        snap = Snapshot(key, model_id, tokens, ex, classes, states, nbytes, session, kind)
        with self._lock:
            self._mem[key] = snap
        self._evict()
        return snap

    def holds(self, model_id: str, tokens: Sequence[int], extra: Sequence[tuple[int, str]] = ()) -> bool:
        """Whether a snapshot of exactly `tokens` is in memory or on disk."""
        tokens = tuple(tokens)
        key = prefix_key(model_id, tokens, tuple(e for e in extra if e[0] < len(tokens)))
        with self._lock:
            return key in self._mem or key in self._disk

    # -- eviction ------------------------------------------------------------------------------
    def _evict(self) -> None:
        while True:
            with self._lock:
                snaps = list(self._mem.values())
                total = sum(s.nbytes for s in snaps)
                by_session: dict[str, list[Snapshot]] = {}
                for s in snaps:
                    by_session.setdefault(s.session, []).append(s)
                over_quota = []
                for name, ss in by_session.items():
                    quota = self.shared if name == SHARED else self.per_session
                    ss.sort(key=lambda x: x.last_used)
                    over_quota += ss[: max(0, len(ss) - quota)]
                if not over_quota and total <= self.memory_bytes:
                    return
                # Each session's newest turn snapshot is what its next request resumes from.
                protected = set()
                for name, ss in by_session.items():
                    turns = [s for s in ss if s.kind in ("prompt", "reply")]
                    if name != SHARED and turns:
                        protected.add(turns[-1].key)
                pool = over_quota or [s for s in snaps if s.key not in protected] or snaps
                victim = min(pool, key=lambda s: s.last_used)
                del self._mem[victim.key]
                self.stats.evictions += 1
            self._spill(victim)

    # -- disk ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every in-memory snapshot not yet on disk (call before the process exits)."""
        self.replies.save()
        for s in list(self._mem.values()):
            if s.key not in self._disk:
                self._spill(s)

    def _spill(self, s: Snapshot) -> None:
        if self.disk_dir is None or s.states is None or s.key in self._disk:
            return
        try:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            path = self.disk_dir / f"{s.key}{_SUFFIX}"
            arrays = {f"{i}.{j}": a for i, arrs in enumerate(s.states) for j, a in enumerate(arrs)}
            meta = {
                "format": "locus-prompt-cache",
                "version": str(FORMAT_VERSION),
                "model_id": s.model_id,
                "key": s.key,
                "tokens": json.dumps(list(s.tokens)),
                "extra": json.dumps([list(e) for e in s.extra]),
                "classes": json.dumps(s.classes),
                "counts": json.dumps([len(a) for a in s.states]),
                "session": s.session,
                "kind": s.kind,
            }
            tmp = path.with_name(path.name + ".tmp.safetensors")
            mx.save_safetensors(str(tmp), arrays or {"empty": mx.zeros((0,))}, metadata=meta)
            os.replace(tmp, path)
            disk_snap = Snapshot(
                s.key,
                s.model_id,
                s.tokens,
                s.extra,
                s.classes,
                None,
                path.stat().st_size,
                s.session,
                s.kind,
                s.last_used,
                path,
            )
            with self._lock:
                self._disk[s.key] = disk_snap
            self.stats.disk_writes += 1
            self._trim_disk()
        except OSError as e:
            log.warning("prompt cache: cannot write to %s: %s", self.disk_dir, e)

    def _trim_disk(self) -> None:
        with self._lock:
            snaps = sorted(self._disk.values(), key=lambda s: s.last_used)
            total = sum(s.nbytes for s in snaps)
            while snaps and total > self.disk_bytes:
                s = snaps.pop(0)
                total -= s.nbytes
                del self._disk[s.key]
                if s.path is not None:
                    s.path.unlink(missing_ok=True)

    def _scan_disk(self) -> None:
        if self._disk_scanned or self.disk_dir is None:
            return
        self._disk_scanned = True
        if not self.disk_dir.is_dir():
            return
        for path in sorted(self.disk_dir.glob(f"*{_SUFFIX}")):
            snap = self._read_header(path)
            if snap is not None:
                self._disk[snap.key] = snap
        self._trim_disk()

    def _reject(self, path: Path, why: str) -> None:
        self.stats.rejected_files += 1
        log.warning("prompt cache: ignoring %s: %s", path.name, why)

    def _read_header(self, path: Path) -> Snapshot | None:
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n < 64 * 1024**2:
                    raise ValueError("bad header length")
                header = json.loads(f.read(n))
            meta = header.get("__metadata__", {})
            if meta.get("format") != "locus-prompt-cache" or meta.get("version") != str(FORMAT_VERSION):
                raise ValueError("not a Locus prompt cache file of this version")
            tokens = tuple(int(t) for t in json.loads(meta["tokens"]))
            extra = tuple((int(p), str(d)) for p, d in json.loads(meta.get("extra", "[]")))
            key = prefix_key(meta["model_id"], tokens, extra)
            if key != meta["key"] or path.name != f"{key}{_SUFFIX}":
                raise ValueError("token hash does not match the file's name")
            return Snapshot(
                key,
                meta["model_id"],
                tokens,
                extra,
                json.loads(meta["classes"]),
                None,
                path.stat().st_size,
                meta.get("session", "default"),
                meta.get("kind", "prompt"),
                path.stat().st_mtime - time.time() + time.monotonic(),
                path,
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._reject(path, str(e) or type(e).__name__)
            return None

    def _read(self, s: Snapshot) -> list[list[mx.array]] | None:
        assert s.path is not None
        try:
            arrays, meta = mx.load(str(s.path), return_metadata=True)
            counts = json.loads(meta["counts"])
            if len(counts) != len(s.classes):
                raise ValueError("layer count mismatch")
            states = [[arrays[f"{i}.{j}"] for j in range(c)] for i, c in enumerate(counts)]
            mx.eval(states)
        except Exception as e:  # corrupt or truncated file: never trusted
            self._reject(s.path, f"unreadable ({e})")
            with self._lock:
                self._disk.pop(s.key, None)
            return None
        self.stats.disk_reads += 1
        return states

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()

    @property
    def memory_used(self) -> int:
        return sum(s.nbytes for s in self._mem.values())

    def budget(self) -> dict[str, Any]:
        """Bytes allowed and used in memory and on disk, and how many snapshots (for /health)."""
        with self._lock:
            mem, disk = list(self._mem.values()), list(self._disk.values())
        return {
            "memory_bytes": self.memory_bytes,
            "memory_used_bytes": sum(s.nbytes for s in mem),
            "snapshots": len(mem),
            "shared_snapshots": sum(s.session == SHARED for s in mem),
            "disk_bytes": self.disk_bytes if self.disk_dir else 0,
            "disk_used_bytes": sum(s.nbytes for s in disk),
            "disk_snapshots": len(disk),
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "tokens_reused": self.stats.tokens_reused,
            "evictions": self.stats.evictions,
        }

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            return sorted(self._mem.values(), key=lambda s: s.last_used)
