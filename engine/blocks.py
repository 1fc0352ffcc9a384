"""Content-addressed, reference-counted KV blocks: the part of prompt-cache snapshots they share.

Keys and values of a token prefix never change, so the KV layers of a snapshot are stored as
fixed-size blocks of positions, each keyed by a hash chained over every token (and image key) up
to its end. Every snapshot and session with that prefix holds the same blocks; memory and disk
then grow with new tokens, not with the whole prefix per snapshot. A block lives in memory while a
snapshot in memory holds it, and on disk (written once) while a snapshot on disk holds it; every
file carries a checksum of its arrays, so a damaged block is detected, dropped and never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

log = logging.getLogger("locus.engine.cache")

BLOCK_TOKENS = 256
BLOCK_FORMAT = "locus-prompt-cache-block"
BLOCK_VERSION = 1
BLOCK_SUFFIX = ".locus-block.safetensors"

Parts = list[list[mx.array]]  # per KV layer: its arrays (keys, values, or their quantized parts)


def chain_keys(
    seed: str,
    tokens: Sequence[int],
    extra: Sequence[tuple[int, str]],
    block_tokens: int,
    n_blocks: int,
) -> list[str]:
    """Key of each of the first `n_blocks` blocks: a hash of `seed`, every token up to the block's
    end and the image keys that start there, chained so each block costs only its own tokens."""
    keys, prev = [], hashlib.sha256(seed.encode()).hexdigest()
    for i in range(n_blocks):
        a, b = i * block_tokens, (i + 1) * block_tokens
        h = hashlib.sha256(prev.encode())
        h.update(np.asarray(tokens[a:b], dtype=np.int64).tobytes())
        for pos, digest in extra:
            if a <= pos < b:
                h.update(f"|{pos}:{digest}".encode())
        prev = h.hexdigest()
        keys.append(prev)
    return keys


def copy_array(a: mx.array) -> mx.array:
    """A real copy, never a view: a view would pin the live cache's whole buffer."""
    return a + 0 if a.dtype != mx.bool_ else mx.logical_or(a, False)


def checksum(groups: Sequence[Sequence[mx.array]]) -> str:
    """A hash of the arrays' shapes, types and bytes (what a file must still hold to be used)."""
    h = hashlib.blake2b(digest_size=16)
    for arrs in groups:
        h.update(b"|")
        for a in arrs:
            h.update(f"{a.shape}{a.dtype};".encode())
            h.update(memoryview(np.asarray(a.view(mx.uint8))))
    return h.hexdigest()


def nbytes(groups: Sequence[Sequence[mx.array]]) -> int:
    return sum(a.nbytes for arrs in groups for a in arrs)


def save_arrays(path: Path, groups: Sequence[Sequence[mx.array]], meta: dict[str, str]) -> int:
    """Write `groups` (with their checksum and counts) atomically; returns the file's size."""
    arrays = {f"{i}.{j}": a for i, arrs in enumerate(groups) for j, a in enumerate(arrs)}
    meta = {**meta, "counts": json.dumps([len(a) for a in groups]), "checksum": checksum(groups)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.safetensors")
    mx.save_safetensors(str(tmp), arrays or {"empty": mx.zeros((0,))}, metadata=meta)
    os.replace(tmp, path)
    return path.stat().st_size


def load_arrays(path: Path) -> tuple[list[list[mx.array]], dict[str, str]]:
    """The groups a `save_arrays` file holds; ValueError when it is damaged in any way."""
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        counts = json.loads(meta["counts"])
        groups = [[arrays[f"{i}.{j}"] for j in range(int(c))] for i, c in enumerate(counts)]
        mx.eval(groups)
    except Exception as e:  # truncated, not safetensors, missing arrays: never trusted
        raise ValueError(f"unreadable ({e})") from e
    if checksum(groups) != meta.get("checksum"):
        raise ValueError("checksum mismatch (the file was damaged)")
    return groups, meta


@dataclass
class Block:
    key: str
    parts: Parts | None  # None when only on disk
    nbytes: int
    refs: int = 0  # snapshots in memory holding it
    disk_refs: int = 0  # snapshots on disk holding it
    path: Path | None = None  # its file, once written
    disk_size: int = 0
    verified: bool = True  # False for a file a previous process left, until it is read back whole


@dataclass
class BlockStats:
    written_bytes: int = 0  # bytes of block files written (each block once)
    rejected: int = 0  # damaged block files dropped


class BlockStore:
    """Blocks by key, counted by the snapshots holding them in memory and on disk."""

    def __init__(self, disk_dir: Path | None = None):
        self.dir = disk_dir / "blocks" if disk_dir is not None else None
        self.stats = BlockStats()
        self._blocks: dict[str, Block] = {}
        self._lock = threading.RLock()

    # -- memory --------------------------------------------------------------------------------
    def hold(self, key: str, make: Callable[[], Parts]) -> Block:
        """Count one more snapshot in memory holding `key`, making its arrays when not in memory."""
        with self._lock:
            b = self._blocks.get(key)
            if b is None:
                b = self._blocks[key] = Block(key, None, 0)
            if b.parts is None:
                b.parts = make()
                b.nbytes = nbytes(b.parts)
            b.refs += 1
            return b

    def release(self, key: str) -> None:
        """One snapshot in memory lets go of `key`; its arrays go when no one in memory holds them."""
        with self._lock:
            b = self._blocks.get(key)
            if b is None:
                return
            b.refs = max(0, b.refs - 1)
            if b.refs == 0:
                b.parts = None
                self._forget_if_unused(b)

    def parts(self, key: str) -> Parts | None:
        """A block's arrays, from memory or (checksum verified) from disk; None when lost."""
        with self._lock:
            b = self._blocks.get(key)
            if b is None:
                return None
            if b.parts is not None:
                return b.parts
            path = b.path
        if path is None:
            return None
        try:
            groups = self._verify(key, path)
        except ValueError as e:
            self.drop(key, f"ignoring block {path.name}: {e}")
            return None
        return groups

    def _verify(self, key: str, path: Path) -> Parts:
        groups, meta = load_arrays(path)
        if meta.get("key") != key or meta.get("format") != BLOCK_FORMAT:
            raise ValueError("not the block its name says")
        with self._lock:
            b = self._blocks.get(key)
            if b is not None and b.path == path:
                b.verified = True
        return groups

    def drop(self, key: str, why: str) -> None:
        """Forget a damaged or missing block everywhere (snapshots needing it then miss)."""
        log.warning("prompt cache: %s", why)
        with self._lock:
            b = self._blocks.pop(key, None)
            self.stats.rejected += 1
        if b is not None and b.path is not None:
            b.path.unlink(missing_ok=True)

    def has(self, key: str) -> bool:
        with self._lock:
            b = self._blocks.get(key)
            return b is not None and (b.parts is not None or b.path is not None)

    # -- disk ----------------------------------------------------------------------------------
    def write(self, key: str) -> int:
        """Put a block in memory on disk unless it is there; bytes written. Raises OSError."""
        with self._lock:
            b = self._blocks.get(key)
            if b is None or (b.path is not None and b.verified) or b.parts is None or self.dir is None:
                return 0
            parts, old = b.parts, b.path
        if old is not None:  # a file from before a restart: kept only if it reads back whole
            try:
                self._verify(key, old)
                return 0
            except ValueError as e:
                log.warning("prompt cache: rewriting block %s: %s", old.name, e)
                self.stats.rejected += 1
        path = self.dir / f"{key}{BLOCK_SUFFIX}"
        size = save_arrays(path, parts, {"format": BLOCK_FORMAT, "version": str(BLOCK_VERSION), "key": key})
        with self._lock:
            b.path, b.disk_size, b.verified = path, size, True
            self.stats.written_bytes += size
        return size

    def disk_hold(self, key: str) -> bool:
        """Count a snapshot on disk holding `key`; False when the block is not on disk."""
        with self._lock:
            b = self._blocks.get(key)
            if b is None or b.path is None:
                return False
            b.disk_refs += 1
            return True

    def disk_release(self, key: str) -> None:
        with self._lock:
            b = self._blocks.get(key)
            if b is None:
                return
            b.disk_refs = max(0, b.disk_refs - 1)
            if b.disk_refs == 0 and b.path is not None:
                b.path.unlink(missing_ok=True)
                b.path = None
                self._forget_if_unused(b)

    def _forget_if_unused(self, b: Block) -> None:
        if b.parts is None and b.path is None and b.refs == 0:
            self._blocks.pop(b.key, None)

    def scan(self) -> None:
        """Know the block files a previous process left (read and verified only when used)."""
        if self.dir is None or not self.dir.is_dir():
            return
        for path in self.dir.glob(f"*{BLOCK_SUFFIX}"):
            key = path.name[: -len(BLOCK_SUFFIX)]
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                continue
            with self._lock:
                b = self._blocks.setdefault(key, Block(key, None, 0))
                b.path, b.disk_size, b.verified = path, path.stat().st_size, False

    def remove_orphans(self) -> None:
        """Delete block files no snapshot on disk holds (after a restart's scan)."""
        with self._lock:
            orphans = [b for b in self._blocks.values() if b.path is not None and b.disk_refs == 0]
        for b in orphans:
            b.path.unlink(missing_ok=True)  # type: ignore[union-attr]
            with self._lock:
                b.path = None
                self._forget_if_unused(b)

    # -- accounting ----------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._blocks.values() if b.parts is not None)

    def disk_bytes(self) -> int:
        with self._lock:
            return sum(b.disk_size for b in self._blocks.values() if b.path is not None)

    def counts(self) -> tuple[int, int, int]:
        """(blocks in memory, of them held by more than one snapshot, blocks on disk)."""
        with self._lock:
            mem = [b for b in self._blocks.values() if b.parts is not None]
            return (
                len(mem),
                sum(b.refs > 1 for b in mem),
                sum(b.path is not None for b in self._blocks.values()),
            )

    def clear_memory(self) -> None:
        with self._lock:
            for b in list(self._blocks.values()):
                b.refs, b.parts = 0, None
                self._forget_if_unused(b)
