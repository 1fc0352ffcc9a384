"""Locus's model is mlx-lm's own Qwen3.5-MoE model: its sanitize, quant predicate, `shard` and
`model.pipeline(group)` (multi-machine pipelining) work on it."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine import load_model
from tests import proctree

IDS = [3, 77, 140, 9, 250, 31, 402, 18]
NEXT = 5
ROOT = Path(__file__).resolve().parents[2]


class _Group:
    """What mlx-lm's pipeline asks of a group: its rank and size (no communication)."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def _logits(model, cache=None) -> np.ndarray:
    cache = model.make_cache() if cache is None else cache
    first = model(mx.array([IDS], dtype=mx.uint32), cache=cache)
    step = model(mx.array([[NEXT]], dtype=mx.uint32), cache=cache)
    return np.array(mx.concatenate([first[0], step[0]]).astype(mx.float32))


def test_the_model_is_mlx_lms_class(tiny_model):
    from mlx_lm.models import qwen3_5_moe

    model = tiny_model.model
    assert isinstance(model, qwen3_5_moe.Model)
    assert model.model is model.language_model.model  # where mlx-lm's sharded_load pipelines
    assert callable(model.model.pipeline) and callable(model.shard)
    pred = model.quant_predicate
    assert pred("language_model.model.layers.0.mlp.gate", None) == {"group_size": 64, "bits": 8}


@pytest.mark.parametrize("rank", [0, 1])
def test_pipeline_splits_the_layers_between_two_ranks(tiny_dir, rank):
    lm = load_model(tiny_dir("per_expert"))
    n = len(lm.model.layers)
    lm.model.model.pipeline(_Group(rank, 2))
    m = lm.model.model
    # mlx-lm gives rank 0 the last layers
    assert (m.start_idx, m.end_idx) == ((n // 2, n) if rank == 0 else (0, n // 2))
    assert len(lm.model.layers) == n // 2
    assert all(layer is None for layer in m.layers[: m.start_idx])
    # one cache per local layer, plus the MTP head's
    assert len(lm.model.make_cache()) == n // 2 + 1


def test_pipeline_of_one_process_is_the_same_model(tiny_dir, tiny_model):
    ref = _logits(tiny_model.model)
    lm = load_model(tiny_dir("per_expert"))
    group = mx.distributed.init()
    assert group.size() == 1
    lm.model.model.pipeline(group)
    np.testing.assert_array_equal(_logits(lm.model), ref)


def test_tensor_parallel_shard_of_one_process_is_the_same_model(tiny_dir, tiny_model):
    """mlx-lm's `shard` reaches Locus's M-RoPE attention layers too (they keep its attributes)."""
    ref = _logits(tiny_model.model)
    lm = load_model(tiny_dir("per_expert"))
    lm.model.shard(mx.distributed.init())
    layer = next(layer for layer in lm.model.layers if not layer.is_linear)
    assert type(layer.self_attn.o_proj).__name__ == "ShardedToAllLinear"
    np.testing.assert_allclose(_logits(lm.model), ref, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_pipeline_matches_one_process(tiny_dir, tiny_model, tmp_path):
    """Two ranks over mlx's ring backend on this machine, each holding half the layers (and the
    MTP head's extra cache), give the single-process logits for prefill and a decode step."""
    launch = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
    if launch is None or not mx.distributed.is_available("ring"):
        pytest.skip("mlx.launch / the ring backend is not available")
    ref = _logits(tiny_model.model)
    cmd = [
        launch,
        "--backend",
        "ring",
        "-n",
        "2",
        "--starting-port",
        str(_free_port()),
        "--python",
        sys.executable,
        str(ROOT / "tests/engine/pipeline_worker.py"),
        str(tiny_dir("per_expert")),
        str(tmp_path),
        ",".join(map(str, IDS)),
        str(NEXT),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = proctree.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rank 1/2: layers 0..2" in proc.stdout and "rank 0/2: layers 2..4" in proc.stdout
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), ref, atol=1e-5)
