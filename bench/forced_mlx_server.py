"""`mlx_lm.server` whose sampler can be made to follow a script (bench/agent_session.py, scenario H).

Run as `python bench/forced_mlx_server.py <mlx_lm.server arguments>`. When the file named by
LOCUS_BENCH_SCRIPT holds a JSON list of token ids, each request's sampler emits those ids in order
(the model still runs and fills its cache); otherwise the server samples as usual.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm.server as server

_original = server._make_sampler


def _make_sampler(args: Any, tokenizer: Any) -> Any:
    path = os.environ.get("LOCUS_BENCH_SCRIPT")
    ids = json.loads(Path(path).read_text()) if path and Path(path).is_file() else None
    if not ids:
        return _original(args, tokenizer)
    step = [0]

    def sampler(logprobs: mx.array) -> mx.array:
        t = ids[min(step[0], len(ids) - 1)]
        step[0] += 1
        # Tied to the logits, so each step's model compute is evaluated as it goes.
        return mx.argmax(logprobs, axis=-1) * 0 + t

    return sampler


server._make_sampler = _make_sampler

if __name__ == "__main__":
    sys.argv[0] = "mlx_lm.server"
    server.main()
