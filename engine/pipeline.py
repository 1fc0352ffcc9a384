"""One model pipelined across processes (several Macs) with MLX's own distributed layer.

mlx-lm's `pipeline()` gives each process a contiguous share of the decoder layers: the last rank
runs the first layers, rank 0 the last ones, and the final hidden state is all-gathered so every
rank computes the same logits. Rank 0 serves (a `PipelineBackend` wrapping the local Engine); the
other ranks run `serve_worker`. Each request goes from rank 0 to the workers over a side TCP
channel, and every rank then runs the same Engine code in step:

- prefill chunks and prompt-cache snapshot points are the ones rank 0 chose; the resume point is
  agreed on (each rank snapshots its own layers under the same tokens, so each looks up its own);
- each sampled token is rank 0's, shared inside the step's graph together with a cancel flag,
  so all ranks stop on the same token;
- the side channel carries heartbeats: a rank that dies or hangs ends the requests on rank 0 with
  Done("error", error_kind="unavailable") within `timeout` seconds instead of blocking forever in
  the ring backend's recv.

Vision runs on the rank that holds the first layers (the one whose input is the embeddings);
the other ranks only need the features' shape. MTP drafting is off in pipeline mode.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import secrets
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import BackendInfo, BackendStats
from .cache import PromptCache
from .engine import Engine, _Solo
from .errors import BackendUnavailableError
from .events import Done, Event, Usage
from .image import ImageSpan, PreparedImage, PromptInputs
from .request import DECODING_FIELDS, GenerationRequest, PreparedRequest, RequestHandle, SamplingParams

log = logging.getLogger("locus.engine.pipeline")

DEFAULT_TIMEOUT = 5.0  # seconds without a heartbeat before a rank counts as gone
HEARTBEAT = 0.5
_MAGIC = b"LOCUSPP1"


def launched() -> bool:
    """Whether this process was started by `mlx.launch` (or another MLX launcher)."""
    return "MLX_RANK" in os.environ


def pipeline_group() -> Any:
    """The distributed group when this process is one of several, else None."""
    if not launched():
        return None
    import mlx.core as mx

    group = mx.distributed.init()
    return group if group.size() > 1 else None


def layer_split(num_layers: int, size: int) -> list[tuple[int, int]]:
    """Each rank's decoder layers [start, end), as mlx-lm's even split gives them (the last rank
    holds the first layers)."""
    base, extra = divmod(num_layers, size)
    split = [base + (1 if r < extra else 0) for r in range(size)]
    return [(sum(split[r + 1 :]), sum(split[r + 1 :]) + split[r]) for r in range(size)]


def split_model(model: Any, group: Any) -> list[tuple[int, int]]:
    """Keep only this rank's share of `model` (before its weights are read); every rank's layers.

    The one place that knows where mlx-lm's `pipeline()` lives in Locus's model.
    """
    import mlx.core as mx

    inner = model.language_model.model  # mlx-lm's Qwen3_5TextModel (PipelineMixin)
    n = len(inner.layers)
    if n < group.size():
        raise ValueError(f"{n} decoder layers cannot be split across {group.size()} processes")
    inner.pipeline(group)
    if "mtp" in model:  # the MTP head drafts from the last hidden state: not split here
        model.pop("mtp")
    if group.rank() != group.size() - 1:
        # Only the rank with the first layers uses image features; the rest need their shape.
        hidden = model.language_model.args.hidden_size
        model.image_features = lambda image: mx.zeros((image.num_tokens, hidden), mx.bfloat16)
    return layer_split(n, group.size())


# -- the side channel -----------------------------------------------------------------------------
@dataclass
class _Job:
    """What rank 0 sends the workers for one request."""

    request: GenerationRequest
    inputs: PromptInputs
    kinds: dict[int, str]


_PIXEL_DTYPES = {"<f4", "<f2"}


# The request's fields that travel are DECODING_FIELDS: each rank decides alone, on the same tokens,
# when to stop or close the reasoning, so the ranks make the same collective calls in the same order.
# The prompt travels as its token ids; the fields that only shaped it stay at their defaults.
def _field_out(value: Any) -> Any:
    return dataclasses.asdict(value) if isinstance(value, SamplingParams) else value


def _field_in(name: str, value: Any) -> Any:
    return SamplingParams(**value) if name == "sampling" else value


def pack_job(job: _Job) -> bytes:
    """A job as bytes a worker can read without running anything: a JSON header (the request's
    fields, the prompt's ids and image spans, snapshot points), then each image's raw pixels."""
    r = job.request
    pixels = [np.ascontiguousarray(p.pixel_values) for p in job.inputs.prepared]
    head = {
        "request": {k: _field_out(getattr(r, k)) for k in DECODING_FIELDS},
        "ids": list(job.inputs.ids),
        "reasoning": job.inputs.reasoning,
        "spans": [dataclasses.asdict(sp) for sp in job.inputs.images],
        "images": [
            {
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "grid": list(p.grid),
                "hash": p.hash,
                "size": list(p.size),
                "resized": list(p.resized),
                "merge_size": p.merge_size,
            }
            for a, p in zip(pixels, job.inputs.prepared, strict=True)
        ],
        "kinds": [[int(k), v] for k, v in job.kinds.items()],
    }
    h = json.dumps(head).encode()
    return struct.pack(">I", len(h)) + h + b"".join(a.tobytes() for a in pixels)


def unpack_job(data: bytes) -> _Job:
    """The job `pack_job` wrote; ValueError for anything else (data is never executed)."""
    try:
        (n,) = struct.unpack(">I", data[:4])
        head = json.loads(data[4 : 4 + n])
        fields = {k: _field_in(k, head["request"][k]) for k in DECODING_FIELDS}
        req = GenerationRequest(prompt_ids=[int(i) for i in head["ids"]], **fields)
        spans = [
            ImageSpan(int(d["start"]), int(d["length"]), str(d["hash"]), tuple(d["grid"]))
            for d in head["spans"]
        ]
        prepared, at = [], 4 + n
        for d in head["images"]:
            if d["dtype"] not in _PIXEL_DTYPES:
                raise ValueError(f"pixel dtype {d['dtype']!r}")
            shape = tuple(int(x) for x in d["shape"])
            size = int(np.prod(shape)) * np.dtype(d["dtype"]).itemsize
            if at + size > len(data):
                raise ValueError("truncated pixels")
            a = np.frombuffer(data[at : at + size], dtype=np.dtype(d["dtype"])).reshape(shape)
            at += size
            prepared.append(
                PreparedImage(
                    a,
                    tuple(d["grid"]),
                    str(d["hash"]),
                    tuple(d["size"]),
                    tuple(d["resized"]),
                    int(d["merge_size"]),
                )
            )
        if at != len(data):
            raise ValueError("trailing bytes")
        inputs = PromptInputs([int(i) for i in head["ids"]], bool(head["reasoning"]), spans, prepared)
        return _Job(req, inputs, {int(k): str(v) for k, v in head["kinds"]})
    except (KeyError, TypeError, ValueError, struct.error) as e:
        raise ValueError(f"not a pipeline job ({type(e).__name__}: {e})") from None


def _rank0_host() -> str:
    """Rank 0's address on the ring (from mlx.launch's hostfile), where workers reach it."""
    host = os.environ.get("LOCUS_PIPELINE_HOST")
    if host:
        return host
    path = os.environ.get("MLX_HOSTFILE")
    if path:
        try:
            with open(path) as f:
                hosts = json.load(f)
            return str(hosts[0][0]).rsplit(":", 1)[0]
        except (OSError, ValueError, IndexError, TypeError):
            pass
    return "127.0.0.1"


def _recv_exact(sock: socket.socket, n: int, alive: Callable[[], None] | None = None) -> bytes:
    """`n` bytes (in linear time); `alive()` after each chunk, so a large frame (a request with
    images) still counts as a sign of life while it arrives."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if not k:
            raise ConnectionError("connection closed")
        got += k
        if alive is not None:
            alive()
    return bytes(buf)


class _Peer:
    def __init__(self, rank: int, sock: socket.socket, addr: str):
        self.rank, self.sock, self.addr = rank, sock, addr
        self.lock = threading.Lock()
        self.seen = time.monotonic()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        with self.lock:
            self.sock.sendall(struct.pack(">cI", kind, len(payload)) + payload)

    def recv(self) -> tuple[bytes, bytes]:
        kind, n = struct.unpack(">cI", _recv_exact(self.sock, 5))
        return kind, _recv_exact(self.sock, n, self._alive) if n else b""

    def _alive(self) -> None:
        self.seen = time.monotonic()


class Link:
    """Rank 0's TCP connection to each worker: requests one way, errors the other, heartbeats
    both ways. `on_fail(message)` runs once when a peer is lost."""

    def __init__(self, rank: int, size: int, peers: list[_Peer], timeout: float):
        self.rank, self.size, self.peers, self.timeout = rank, size, peers, timeout
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.on_fail: Callable[[str], None] = lambda msg: None
        self.failed: str | None = None
        self._closing = False
        for p in peers:
            threading.Thread(
                target=self._read, args=(p,), daemon=True, name=f"locus-pp-read-{p.rank}"
            ).start()
        threading.Thread(target=self._beat, daemon=True, name="locus-pp-beat").start()

    @classmethod
    def open(cls, group: Any, timeout: float = DEFAULT_TIMEOUT) -> Link:
        """Connect the ranks of `group` (a collective call: every rank must make it)."""
        import mlx.core as mx

        rank, size = group.rank(), group.size()
        host = _rank0_host()
        vals = [0] * 5
        srv = None
        if rank == 0:
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host, 0))
            srv.listen(size)
            vals = [srv.getsockname()[1], *(secrets.randbits(31) for _ in range(4))]
        # The port and a one-time token reach the workers over the ring itself.
        shared = mx.distributed.all_sum(mx.array(vals, dtype=mx.int32), group=group, stream=mx.cpu)
        port, *token = shared.tolist()
        secret = struct.pack(">4i", *token)
        if rank == 0:
            assert srv is not None
            peers = cls._accept(srv, size, secret)
        else:
            sock = socket.create_connection((host, port), timeout=30)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_MAGIC + secret + struct.pack(">i", rank))
            peers = [_Peer(0, sock, host)]
        return cls(rank, size, peers, timeout)

    @staticmethod
    def _accept(srv: socket.socket, size: int, secret: bytes) -> list[_Peer]:
        peers: dict[int, _Peer] = {}
        deadline = time.monotonic() + 120
        while len(peers) < size - 1:
            srv.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock, addr = srv.accept()
            except TimeoutError:
                raise BackendUnavailableError(
                    f"only {len(peers) + 1} of {size} pipeline ranks connected within 120 s"
                ) from None
            try:
                sock.settimeout(10)
                hello = _recv_exact(sock, len(_MAGIC) + len(secret) + 4)
            except (OSError, ConnectionError):
                sock.close()
                continue
            if hello[: len(_MAGIC)] != _MAGIC or hello[len(_MAGIC) : -4] != secret:
                sock.close()  # not one of our ranks
                continue
            (r,) = struct.unpack(">i", hello[-4:])
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peers[r] = _Peer(r, sock, addr[0])
        srv.close()
        return [peers[r] for r in sorted(peers)]

    def _fail(self, message: str) -> None:
        if self.failed is not None or self._closing:
            return
        self.failed = message
        log.error("%s", message)
        if self.rank != 0:
            # Rank 0 is gone: nothing more can run here (the MLX thread may be stuck in a recv).
            print(f"locus: pipeline rank {self.rank}: {message}", file=sys.stderr, flush=True)
            os._exit(1)
        self.on_fail(message)

    def _read(self, p: _Peer) -> None:
        who = "rank 0" if self.rank else f"pipeline rank {p.rank} ({p.addr})"
        while True:
            try:
                kind, payload = p.recv()
            except (OSError, ConnectionError, struct.error):
                if not self._closing:
                    self._fail(f"{who} closed its connection: the process exited or was killed")
                return
            p.seen = time.monotonic()
            if kind == b"R":
                try:
                    self.jobs.put(unpack_job(payload))
                except ValueError as e:
                    self._fail(f"{who} sent a request this rank cannot read: {e}")
                    return
            elif kind == b"Q":
                self._closing = True
                self.jobs.put(None)
                return
            elif kind == b"E":
                self._fail(f"{who} failed: {payload.decode(errors='replace')}")

    def _beat(self) -> None:
        while not self._closing and self.failed is None:
            now = time.monotonic()
            for p in self.peers:
                try:
                    p.send(b"H")
                except OSError:
                    pass  # the reader reports a closed connection
                if now - p.seen > self.timeout:
                    who = "rank 0" if self.rank else f"pipeline rank {p.rank} ({p.addr})"
                    self._fail(
                        f"{who} has not answered for {now - p.seen:.0f} s (hung, or the "
                        "network between the processes is down)"
                    )
            time.sleep(HEARTBEAT)

    def send_job(self, job: _Job) -> None:
        data = pack_job(job)
        for p in self.peers:
            p.send(b"R", data)

    def report(self, message: str) -> None:
        """Tell rank 0 that this worker failed (it ends the requests)."""
        for p in self.peers:
            try:
                p.send(b"E", message.encode())
            except OSError:
                pass

    def close(self) -> None:
        """Tell the workers to exit (rank 0) and close the connections."""
        self._closing = True
        for p in self.peers:
            try:
                if self.rank == 0:
                    p.send(b"Q")
                p.sock.close()
            except OSError:
                pass


# -- lockstep ---------------------------------------------------------------------------------------
class _Lockstep(_Solo):
    """One request on one rank: rank 0's choices reach the others, and the ranks agree."""

    def __init__(self, engine: PipelineEngine, req: GenerationRequest, inputs: PromptInputs, handle: Any):
        import mlx.core as mx

        super().__init__(handle)
        self.engine, self.req, self.inputs = engine, req, inputs
        self.group = engine.group
        self.root = engine.rank == 0
        self.begun = False
        self._flags: list[Any] = []
        self._read = 0
        self._keep = mx.array(1 if self.root else 0, dtype=mx.int32)

    def begin(self, cache, cached, kinds, relookup):  # type: ignore[no-untyped-def]
        import mlx.core as mx

        eng = self.engine
        if self.root:  # the request's DECODING_FIELDS travel, and the prompt as token ids
            eng.link.send_job(_Job(self.req, self.inputs, dict(kinds)))
        else:
            kinds = dict(eng.job.kinds) if eng.job is not None else {}
        self.begun = True
        # Each rank holds its own snapshots: resume from the longest prefix all of them hold.
        while True:
            v = mx.array([cached, -cached], dtype=mx.int32)
            lo, neg_hi = mx.distributed.all_min(v, group=self.group, stream=mx.cpu).tolist()
            if lo == -neg_hi:
                return cache, cached, kinds
            if cached > lo and relookup is not None:
                cache, cached = relookup(lo)

    def prefill_cancelled(self) -> bool:
        import mlx.core as mx

        flag = 1 if self.root and self.handle.cancelled else 0
        v = mx.distributed.all_max(mx.array([flag]), group=self.group, stream=mx.cpu)
        return bool(v.item())

    def share(self, y: Any) -> Any:  # type: ignore[override]
        """Rank 0's token and cancel flag, summed across ranks inside the step's graph."""
        import mlx.core as mx

        flag = mx.array([1 if self.root and self.handle.cancelled else 0], dtype=mx.int32)
        packed = mx.concatenate([y.astype(mx.int32).reshape(-1) * self._keep, flag])
        out = mx.distributed.all_sum(packed, group=self.group)
        self._flags.append(out[-1])
        return out[:-1].astype(mx.uint32)

    def token_cancelled(self) -> bool:
        flag = self._flags[self._read]
        self._flags[self._read] = None
        self._read += 1
        return bool(flag.item())


class _Relay:
    """The handle as `_generate` sees it on rank 0: adds the ranks to Usage, and notes an error
    that left the ranks out of step."""

    def __init__(self, handle: RequestHandle, engine: PipelineEngine):
        self.handle, self.engine = handle, engine
        self.sync: _Lockstep | None = None

    @property
    def cancelled(self) -> bool:
        return self.handle.cancelled

    def _put(self, ev: Event) -> None:
        eng = self.engine
        if isinstance(ev, Usage):
            ev = dataclasses.replace(ev, ranks=eng.size, rank_layers=tuple(eng.rank_layers))
        if isinstance(ev, Done) and ev.usage is not None:
            usage = dataclasses.replace(ev.usage, ranks=eng.size, rank_layers=tuple(eng.rank_layers))
            ev = dataclasses.replace(ev, usage=usage)
        if isinstance(ev, Done) and ev.finish_reason == "error" and self.sync is not None:
            if self.sync.begun and eng.on_desync is not None:
                eng.on_desync(f"rank {eng.rank} failed mid-request: {ev.error}")
        self.handle._put(ev)


class PipelineEngine(Engine):
    """An Engine holding one rank's share of the model; requests run in step on every rank."""

    def __init__(self, group: Any, link: Link | None, prompt_cache: PromptCache | None = None):
        super().__init__(prompt_cache=prompt_cache, mtp=0)
        self.group, self.link = group, link
        self.rank, self.size = group.rank(), group.size()
        self.rank_layers: list[tuple[int, int]] = []
        self.job: _Job | None = None  # workers: the request being run
        self.on_desync: Callable[[str], None] | None = None
        self.broken: str | None = None  # why the pipeline is down (set by PipelineBackend)

    def load_share(self, path: str, context_tokens: int) -> None:
        """Load only this rank's layers of the checkpoint at `path`."""

        def split(model: Any) -> str:
            self.rank_layers = split_model(model, self.group)
            a, b = self.rank_layers[self.rank]
            return f"-pp{self.rank}of{self.size}:{a}-{b}"

        self.load(path, context_tokens=context_tokens, memory_check=False, split=split)

    def _wait(self, fut: Future[Any]) -> Any:
        """Once the pipeline is down (the MLX thread may be stuck in a recv for good) raise
        BackendUnavailableError instead of waiting forever."""
        while True:
            if self.broken is not None:
                raise BackendUnavailableError(self.broken)
            try:
                return fut.result(timeout=0.25)
            except FutureTimeout:
                pass

    def _lockstep(self, req: GenerationRequest, inputs: PromptInputs, handle: Any) -> _Solo:
        sync = _Lockstep(self, req, inputs, handle)
        if isinstance(handle, _Relay):
            handle.sync = sync
        return sync

    def _generate(self, req: GenerationRequest, handle: Any, prepared: Any = None) -> None:
        relay = _Relay(handle, self) if self.rank == 0 else handle
        super()._generate(req, relay, prepared)


class PipelineBackend:
    """engine.Backend on rank 0 of a pipeline: the local Engine, plus failure of the other ranks
    turned into errors (a lost rank leaves the model unusable until the pipeline restarts)."""

    def __init__(self, engine: PipelineEngine):
        self.engine = engine
        self._open: weakref.WeakSet[RequestHandle] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.broken: str | None = None
        engine.on_desync = self.fail
        if engine.link is not None:
            engine.link.on_fail = self.fail

    def fail(self, message: str) -> None:
        """End every open request with `message` and refuse new ones (the pipeline is down)."""
        with self._lock:
            if self.broken is None:
                self.broken = (
                    f"the model's pipeline is down: {message}. Restart it "
                    "(locus serve --hosts / mlx.launch) to use the model again"
                )
                self.engine.broken = self.broken
            handles, self._open = list(self._open), weakref.WeakSet()
        for h in handles:
            h._put(Done("error", error=self.broken, error_kind="unavailable"))

    @property
    def info(self) -> BackendInfo:
        e = self.engine
        return dataclasses.replace(e.info, ranks=e.size, rank_layers=tuple(e.rank_layers))

    def stats(self) -> BackendStats:
        e = self.engine
        return dataclasses.replace(e.stats(), ranks=e.size, rank_layers=tuple(e.rank_layers))

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        if self.broken:
            raise BackendUnavailableError(self.broken)
        return self.engine.prepare(request)

    def count_tokens(self, request: GenerationRequest, *, stop_above: int | None = None) -> int:
        return self.engine.count_tokens(request, stop_above=stop_above)

    def submit(self, request: GenerationRequest | PreparedRequest) -> RequestHandle:
        with self._lock:
            if self.broken is None:
                handle = self.engine.submit(request)
                self._open.add(handle)
                return handle
        handle = RequestHandle()
        handle._put(Done("error", error=self.broken, error_kind="unavailable"))
        return handle

    def generate(self, request: GenerationRequest) -> Any:
        return self.submit(request).result()

    def close(self) -> None:
        """Finish queued requests, then tell the workers to exit."""
        if self.broken is None:
            self.engine.close()
        if self.engine.link is not None:
            self.engine.link.close()


def serve_worker(engine: PipelineEngine) -> int:
    """Run rank 0's requests on this rank until rank 0 closes the pipeline; the exit status."""
    link = engine.link
    assert link is not None and engine.rank > 0
    while True:
        job = link.jobs.get()
        if job is None:
            break
        engine.job = job
        handle = RequestHandle()
        prepared = PreparedRequest(
            job.request, len(job.inputs.ids), job.inputs.reasoning, engine.model.model_id, job.inputs
        )
        engine._call(lambda j=job, h=handle, p=prepared: engine._generate(j.request, h, p))
        done = None
        while not handle._queue.empty():
            ev = handle._queue.get_nowait()
            if isinstance(ev, Done):
                done = ev
        if done is not None and done.finish_reason == "error":
            link.report(f"{done.error}")
    engine.close()
    return 0


def open_pipeline(
    path: str,
    *,
    group: Any,
    context_tokens: int,
    prompt_cache: PromptCache | None = None,
    timeout: float | None = None,
) -> PipelineBackend | PipelineEngine:
    """Load this rank's share of the checkpoint and connect the ranks: rank 0 gets the
    PipelineBackend to serve from; another rank gets its engine, to hand to `serve_worker`."""
    rank = group.rank()
    pc = prompt_cache
    if rank > 0 and pc is not None:
        # Workers keep their snapshots in memory only (one disk folder per machine is rank 0's).
        pc = PromptCache(memory_bytes=pc.memory_bytes, per_session=pc.per_session, shared=pc.shared)
    engine = PipelineEngine(group, None, pc)
    engine.load_share(path, context_tokens)
    t = timeout if timeout is not None else float(os.environ.get("LOCUS_PIPELINE_TIMEOUT") or DEFAULT_TIMEOUT)
    engine.link = Link.open(group, t)
    a, b = engine.rank_layers[rank]
    print(
        f"Pipeline rank {rank} of {group.size()} (pid {os.getpid()}): layers {a}-{b - 1}",
        file=sys.stderr,
        flush=True,
    )
    if rank > 0:
        return engine
    return PipelineBackend(engine)
