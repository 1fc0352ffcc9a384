"""One rank of a pipelined Locus model (run by tests/engine/test_pipeline.py under `mlx.launch`):
prefill and one decode step, logits saved per rank."""

from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np

from engine import load_model


def main(path: str, out: str, ids: list[int], nxt: int) -> None:
    group = mx.distributed.init(backend="ring", strict=True)
    lm = load_model(path, memory_check=False)
    lm.model.model.pipeline(group)  # what mlx-lm's sharded_load does
    cache = lm.model.make_cache()
    first = lm.model(mx.array([ids], dtype=mx.uint32), cache=cache)
    step = lm.model(mx.array([[nxt]], dtype=mx.uint32), cache=cache)
    logits = mx.concatenate([first[0], step[0]])
    mx.eval(logits)
    np.save(f"{out}/rank{group.rank()}.npy", np.array(logits.astype(mx.float32)))
    m = lm.model.model
    print(f"rank {group.rank()}/{group.size()}: layers {m.start_idx}..{m.end_idx}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")], int(sys.argv[4]))
