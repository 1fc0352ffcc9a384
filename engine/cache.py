"""Prompt cache for hybrid models: snapshots at reusable points whose KV prefix is shared blocks.

Qwen3.5/3.6's gated-DeltaNet layers keep a recurrent state that cannot be trimmed back to a shorter
prefix, so a cache can only be reused from a snapshot taken exactly at a prefix of the new prompt.
Snapshots are taken at message boundaries while a prompt is prefilled (the end of the system +
tools prefix, points a client marks, the start of the last user message and of the generation
prompt) and at the end of the reply; a request resumes from the longest snapshot whose tokens (and
images) prefix its prompt, whichever session or API key stored it.

A snapshot is its linear-attention state plus a list of content-addressed KV blocks
(engine/blocks.py) and the few positions past the last whole block: every snapshot and session
with the same prefix holds the same blocks, so memory and disk grow with new tokens only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlx.core as mx

from .blocks import BLOCK_TOKENS, BlockStore, Parts, chain_keys, copy_array, load_arrays, nbytes, save_arrays
from .memplan import MemoryPlan, default_snapshot_budget
from .mlxlm_compat import cache_class_name, is_kv_cache, kv_parts, set_kv_parts
from .reuse import ReplyMemo

log = logging.getLogger("locus.engine.cache")

FORMAT_VERSION = 2  # 2: KV in shared blocks (version 1 files, whole prefixes, are removed)
_SUFFIX = ".locus-cache.safetensors"
# Snapshots of prefixes many sessions share (system prompt + tools, client-marked breakpoints)
# belong to no one session, so one session's turns never push them out of its own quota.
SHARED = "*shared*"
SHARED_KINDS = ("system", "breakpoint")
# How a snapshot keeps each layer: KV in blocks + its tail, KV whole (a cache at another length,
# e.g. the MTP head's), or a recurrent state.
KV, WHOLE, STATE = "kv", "whole", "state"


def prefix_key(model_id: str, tokens: Sequence[int], extra: Sequence[tuple[int, str]] = ()) -> str:
    """Hash of the model and a token prefix (plus content hashes of images inside it)."""
    h = hashlib.sha256(model_id.encode())
    h.update(b"\0")
    h.update(",".join(map(str, tokens)).encode())
    for pos, digest in extra:
        if pos < len(tokens):
            h.update(f"|{pos}:{digest}".encode())
    return h.hexdigest()


def _layout(cache: list[Any], n: int) -> tuple[list[str], list[str]]:
    classes, layout = [], []
    for c in cache:
        name = cache_class_name(c)
        if name is None:
            raise TypeError(f"prompt cache cannot snapshot {type(c).__name__}")
        classes.append(name)
        if not is_kv_cache(c):
            layout.append(STATE)
        else:
            layout.append(KV if c.offset == n and c.keys is not None else WHOLE)
    return classes, layout


def _seed(model_id: str, classes: Sequence[str], layout: Sequence[str]) -> str:
    # Blocks hold the KV layers in this order and kind (16-bit or quantized): part of their key.
    kv = [f"{i}:{c}" for i, (c, lay) in enumerate(zip(classes, layout, strict=True)) if lay == KV]
    return f"{model_id}\0{','.join(kv)}"


@dataclass
class Snapshot:
    key: str
    model_id: str
    tokens: tuple[int, ...]
    extra: tuple[tuple[int, str], ...]
    classes: list[str]
    layout: list[str]
    blocks: tuple[str, ...]  # keys of the whole KV blocks of its prefix, in order
    own: list[list[mx.array]] | None  # per layer: KV tail, whole KV or state; None when on disk
    own_bytes: int  # what only this snapshot holds (its file's size when on disk)
    nbytes: int  # own + its blocks: what it would take alone
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
    disk_written_bytes: int = 0  # snapshot and block files written, in all


class PromptCache:
    """Snapshots in a bounded in-memory LRU (by bytes, blocks counted once), spilled to `disk_dir`.

    Eviction spares the newest turn snapshot (prompt or reply) of each session while others can go,
    so concurrent sessions (an agent and its sub-agents) do not push each other out, and a boundary
    snapshot never costs another session its newest one; a block goes only when no snapshot in
    memory holds it. Prefixes shared across sessions (system prompt + tools, marked breakpoints)
    are kept apart, `shared` of them at most. `memory_bytes` None: derived from free memory.
    """

    def __init__(
        self,
        memory_bytes: int | None = None,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_bytes: int = 8 * 1024**3,
        per_session: int = 6,
        shared: int = 8,
        block_tokens: int = BLOCK_TOKENS,
    ):
        self._memory_bytes = memory_bytes
        self._given = memory_bytes is not None
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.disk_bytes = disk_bytes
        self.per_session = per_session
        self.shared = shared
        self.block_tokens = block_tokens
        self.plan: MemoryPlan | None = None
        self.stats = CacheStats()
        self.replies = ReplyMemo(disk_dir=self.disk_dir)
        self.blocks = BlockStore(self.disk_dir)
        self._mem: dict[str, Snapshot] = {}
        self._disk: dict[str, Snapshot] = {}
        self._lock = threading.RLock()
        self._disk_scanned = False

    @property
    def memory_bytes(self) -> int:
        """The byte budget in memory (derived from free memory unless it was given)."""
        if self._memory_bytes is None:
            from .loader import available_memory  # what is free now, the model loaded or not

            self._memory_bytes = default_snapshot_budget(available_memory())
        return self._memory_bytes

    @memory_bytes.setter
    def memory_bytes(self, value: int) -> None:
        self._memory_bytes, self._given = value, True
        self._evict()  # a lowered budget applies at once

    @property
    def budget_given(self) -> bool:
        """Whether the byte budget was set by the user rather than derived from free memory."""
        return self._given

    def set_plan(self, plan: MemoryPlan) -> None:
        """Adopt a memory plan (at load), and its snapshot budget unless one was given."""
        self.plan = plan
        if not self._given:
            self._memory_bytes = plan.snapshot_budget_bytes
        self._evict()

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
        cands.sort(key=lambda s: (len(s.tokens), s.own is not None), reverse=True)
        for s in cands:
            L = len(s.tokens)
            if tuple(tokens[:L]) != s.tokens:
                continue
            if s.extra != tuple(e for e in extra if e[0] < L):
                continue
            try:
                cache = self._restore(s, fresh_cache)
            except ValueError as e:
                log.warning("prompt cache: ignoring snapshot %s: %s", s.key[:12], e)
                continue
            if cache is None:
                continue
            s.last_used = time.monotonic()
            self.stats.hits += 1
            self.stats.tokens_reused += L
            return cache, L
        self.stats.misses += 1
        return fresh_cache, 0

    def _restore(self, s: Snapshot, fresh: list[Any]) -> list[Any] | None:
        """Fill a freshly made cache list from `s` (its arrays are never written to afterwards)."""
        if [cache_class_name(c) for c in fresh] != s.classes:
            raise ValueError("snapshot does not match this model's cache layout")
        own = s.own if s.own is not None else self._read_own(s)
        if own is None:
            return None
        n_kv = s.layout.count(KV)
        blocks = []
        for k in s.blocks:
            parts = self.blocks.parts(k)
            if parts is None or len(parts) != n_kv:
                self._drop_disk(s, f"block {k[:12]} is missing or damaged")
                return None
            blocks.append(parts)
        j, L = 0, len(s.tokens)
        for c, lay, arrs in zip(fresh, s.layout, own, strict=True):
            if lay == STATE:
                if arrs:
                    c.cache = list(arrs)
            elif lay == WHOLE:
                set_kv_parts(c, arrs, arrs[0].shape[2] if arrs else 0)
            else:
                pieces = [b[j] for b in blocks] + ([arrs] if arrs else [])
                parts = [
                    pieces[0][i] if len(pieces) == 1 else mx.concatenate([p[i] for p in pieces], axis=2)
                    for i in range(len(pieces[0]))
                ]
                set_kv_parts(c, parts, L)
                j += 1
        return fresh

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
        snap = self._snapshot(key, model_id, tokens, ex, cache, session, kind)
        with self._lock:
            self._mem[key] = snap
        self._evict()
        return snap

    def _snapshot(
        self,
        key: str,
        model_id: str,
        tokens: tuple[int, ...],
        ex: tuple[tuple[int, str], ...],
        cache: list[Any],
        session: str,
        kind: str,
    ) -> Snapshot:
        """Copy the state and the KV tail; hold the prefix's blocks, copying only new ones."""
        n, B = len(tokens), self.block_tokens
        classes, layout = _layout(cache, n)
        n_blocks = n // B if KV in layout else 0
        keys = chain_keys(_seed(model_id, classes, layout), tokens, ex, B, n_blocks)
        kv_caches = [c for c, lay in zip(cache, layout, strict=True) if lay == KV]
        own: list[list[mx.array]] = []
        for c, lay in zip(cache, layout, strict=True):
            if lay == STATE:
                own.append([] if any(x is None for x in c.cache) else [copy_array(x) for x in c.cache])
            elif lay == WHOLE:
                own.append([copy_array(x) for x in kv_parts(c, 0, c.offset)])
            else:
                own.append([copy_array(x) for x in kv_parts(c, n_blocks * B, n)] if n % B else [])
        made: list[Parts] = []

        def make(i: int) -> Parts:
            parts = [[copy_array(x) for x in kv_parts(c, i * B, (i + 1) * B)] for c in kv_caches]
            made.append(parts)
            return parts

        held = [self.blocks.hold(k, lambda i=i: make(i)) for i, k in enumerate(keys)]
        mx.eval(own, made)
        own_bytes = nbytes(own)
        total = own_bytes + sum(b.nbytes for b in held)
        return Snapshot(
            key, model_id, tokens, ex, classes, layout, tuple(keys), own, own_bytes, total, session, kind
        )

    def holds(self, model_id: str, tokens: Sequence[int], extra: Sequence[tuple[int, str]] = ()) -> bool:
        """Whether a snapshot of exactly `tokens` is in memory or on disk."""
        tokens = tuple(tokens)
        key = prefix_key(model_id, tokens, tuple(e for e in extra if e[0] < len(tokens)))
        with self._lock:
            return key in self._mem or key in self._disk

    # -- eviction ------------------------------------------------------------------------------
    def _victim(self) -> Snapshot | None:
        """The snapshot to evict next, or None when all fit (caller holds the lock)."""
        snaps = list(self._mem.values())
        total = sum(s.own_bytes for s in snaps) + self.blocks.memory_bytes()
        by_session: dict[str, list[Snapshot]] = {}
        for s in snaps:
            by_session.setdefault(s.session, []).append(s)
        over_quota = []
        for name, ss in by_session.items():
            quota = self.shared if name == SHARED else self.per_session
            ss.sort(key=lambda x: x.last_used)
            over_quota += ss[: max(0, len(ss) - quota)]
        if not over_quota and total <= self.memory_bytes:
            return None
        # Each session's newest turn snapshot is what its next request resumes from.
        protected = set()
        for name, ss in by_session.items():
            turns = [s for s in ss if s.kind in ("prompt", "reply")]
            if name != SHARED and turns:
                protected.add(turns[-1].key)
        pool = over_quota or [s for s in snaps if s.key not in protected] or snaps
        return min(pool, key=lambda s: s.last_used)

    def _evict(self) -> None:
        while True:
            with self._lock:
                victim = self._victim()
                if victim is None:
                    return
                del self._mem[victim.key]
                self.stats.evictions += 1
            self._spill(victim)
            for k in victim.blocks:  # blocks no other snapshot in memory holds go with it
                self.blocks.release(k)

    # -- disk ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every in-memory snapshot not yet on disk (call before the process exits)."""
        self.replies.save()
        for s in list(self._mem.values()):
            if s.key not in self._disk:
                self._spill(s)

    def _spill(self, s: Snapshot) -> None:
        if self.disk_dir is None or s.own is None or s.key in self._disk:
            return
        try:
            written = sum(self.blocks.write(k) for k in s.blocks)
            path = self.disk_dir / f"{s.key}{_SUFFIX}"
            meta = {
                "format": "locus-prompt-cache",
                "version": str(FORMAT_VERSION),
                "model_id": s.model_id,
                "key": s.key,
                "tokens": json.dumps(list(s.tokens)),
                "extra": json.dumps([list(e) for e in s.extra]),
                "classes": json.dumps(s.classes),
                "layout": json.dumps(s.layout),
                "blocks": json.dumps(list(s.blocks)),
                "session": s.session,
                "kind": s.kind,
            }
            size = save_arrays(path, s.own, meta)
        except OSError as e:
            log.warning("prompt cache: cannot write to %s: %s", self.disk_dir, e)
            return
        for k in s.blocks:
            self.blocks.disk_hold(k)
        with self._lock:
            self._disk[s.key] = replace(s, own=None, own_bytes=size, path=path)
            self.stats.disk_writes += 1
            self.stats.disk_written_bytes += written + size
        self._trim_disk()

    def _drop_disk(self, s: Snapshot, why: str) -> None:
        """Forget a snapshot on disk that cannot be restored (its file and its hold on blocks)."""
        with self._lock:
            gone = self._disk.pop(s.key, None)
        if gone is None:
            return
        self.stats.rejected_files += 1
        log.warning("prompt cache: ignoring snapshot %s: %s", s.key[:12], why)
        if gone.path is not None:
            gone.path.unlink(missing_ok=True)
        for k in gone.blocks:
            self.blocks.disk_release(k)

    def _trim_disk(self) -> None:
        while True:
            with self._lock:
                snaps = sorted(self._disk.values(), key=lambda s: s.last_used)
                total = sum(s.own_bytes for s in snaps) + self.blocks.disk_bytes()
                if not snaps or total <= self.disk_bytes:
                    return
                s = snaps[0]
                del self._disk[s.key]
            if s.path is not None:
                s.path.unlink(missing_ok=True)
            for k in s.blocks:
                self.blocks.disk_release(k)

    def _scan_disk(self) -> None:
        if self._disk_scanned or self.disk_dir is None:
            return
        self._disk_scanned = True
        if not self.disk_dir.is_dir():
            return
        self.blocks.scan()
        for path in sorted(self.disk_dir.glob(f"*{_SUFFIX}")):
            snap = self._read_header(path)
            if snap is None:
                continue
            if not all(self.blocks.has(k) for k in snap.blocks):
                self._reject(path, "a block it needs is missing")
                continue
            for k in snap.blocks:
                self.blocks.disk_hold(k)
            self._disk[snap.key] = snap
        self.blocks.remove_orphans()
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
            version = str(meta.get("version", ""))
            if (
                meta.get("format") == "locus-prompt-cache"
                and version.isdigit()
                and int(version) < FORMAT_VERSION
            ):
                path.unlink(missing_ok=True)  # a whole-prefix snapshot of round 2: never read again
                raise ValueError(f"an older format (version {version}); removed")
            if meta.get("format") != "locus-prompt-cache" or version != str(FORMAT_VERSION):
                raise ValueError("not a Locus prompt cache file of this version")
            tokens = tuple(int(t) for t in json.loads(meta["tokens"]))
            extra = tuple((int(p), str(d)) for p, d in json.loads(meta.get("extra", "[]")))
            key = prefix_key(meta["model_id"], tokens, extra)
            if key != meta["key"] or path.name != f"{key}{_SUFFIX}":
                raise ValueError("token hash does not match the file's name")
            classes, layout = json.loads(meta["classes"]), json.loads(meta["layout"])
            blocks = tuple(str(k) for k in json.loads(meta["blocks"]))
            if len(layout) != len(classes):
                raise ValueError("layer count mismatch")
            size = path.stat().st_size
            seen = path.stat().st_mtime - time.time() + time.monotonic()
            session, kind = meta.get("session", "default"), meta.get("kind", "prompt")
            mid = meta["model_id"]
            return Snapshot(
                key, mid, tokens, extra, classes, layout, blocks, None, size, size, session, kind, seen, path
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._reject(path, str(e) or type(e).__name__)
            return None

    def _read_own(self, s: Snapshot) -> list[list[mx.array]] | None:
        assert s.path is not None
        try:
            own, _ = load_arrays(s.path)
            if len(own) != len(s.classes):
                raise ValueError("layer count mismatch")
        except (OSError, ValueError) as e:  # corrupt or truncated file: never trusted
            self._drop_disk(s, f"{s.path.name} unreadable ({e})")
            return None
        self.stats.disk_reads += 1
        return own

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            self.blocks.clear_memory()

    @property
    def memory_used(self) -> int:
        with self._lock:
            return sum(s.own_bytes for s in self._mem.values()) + self.blocks.memory_bytes()

    def budget(self) -> dict[str, Any]:
        """Bytes allowed and used in memory and on disk, snapshots and blocks (for /health)."""
        with self._lock:
            mem, disk = list(self._mem.values()), list(self._disk.values())
            blocks, shared_blocks, disk_blocks = self.blocks.counts()
            used = sum(s.own_bytes for s in mem) + self.blocks.memory_bytes()
            disk_used = sum(s.own_bytes for s in disk) + self.blocks.disk_bytes()
        return {
            "memory_bytes": self.memory_bytes,
            "memory_used_bytes": used,
            "snapshots": len(mem),
            "shared_snapshots": sum(s.session == SHARED for s in mem),
            "disk_bytes": self.disk_bytes if self.disk_dir else 0,
            "disk_used_bytes": disk_used,
            "disk_snapshots": len(disk),
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "tokens_reused": self.stats.tokens_reused,
            "evictions": self.stats.evictions,
            "blocks": blocks,
            "shared_blocks": shared_blocks,
            "disk_blocks": disk_blocks,
            "block_tokens": self.block_tokens,
            "disk_written_bytes": self.stats.disk_written_bytes,
            "memory_plan": self.plan.to_dict() if self.plan is not None else None,
        }

    def snapshots(self) -> list[Snapshot]:
        """The snapshots in memory, least recently used first."""
        with self._lock:
            return sorted(self._mem.values(), key=lambda s: s.last_used)

    def disk_snapshots(self) -> list[Snapshot]:
        """The snapshots on disk (their arrays not in memory), least recently used first."""
        self._scan_disk()
        with self._lock:
            return sorted(self._disk.values(), key=lambda s: s.last_used)
