"""Run by tests/engine/test_pipeline.py, alone or on every rank under mlx.launch: a few requests
through the Backend (prompt cache across two turns, a cancelled request, one after it); rank 0
prints the results as one JSON line."""

from __future__ import annotations

import json
import os
import sys

from engine import Engine, GenerationRequest, PromptCache, SamplingParams, TextDelta
from engine.pipeline import open_pipeline, pipeline_group, serve_worker


def main(path: str) -> int:
    group = pipeline_group()
    if group is None:
        backend = Engine.from_path(path, prompt_cache=PromptCache(), memory_check=False)
    else:
        # DRIVER_STARVE_WORKER: rank 1 keeps no snapshot, so rank 0 must not resume from its own.
        starve = group.rank() > 0 and os.environ.get("DRIVER_STARVE_WORKER")
        pc = PromptCache(memory_bytes=1 if starve else 2 * 1024**3)
        backend = open_pipeline(path, group=group, context_tokens=4096, prompt_cache=pc)
        if group.rank() > 0:
            return serve_worker(backend)  # type: ignore[arg-type]
    greedy = SamplingParams(temperature=0.0)

    def run(ids: list[int], n: int, **kw: object) -> dict:
        req = (
            GenerationRequest(prompt_ids=ids, sampling=greedy, max_tokens=n)
            if ids
            else GenerationRequest(**kw)
        )
        r = backend.submit(req).result()
        return {
            "tokens": r.token_ids,
            "finish": r.finish_reason,
            "error": r.error,
            "cached": r.usage.cached_tokens if r.usage else None,
            "ranks": r.usage.ranks if r.usage else None,
        }

    first = list(range(20, 60))
    out: dict = {"first": run(first, 16)}
    # The second turn extends the first reply: it resumes from the snapshot taken at its end.
    second = first + out["first"]["tokens"] + list(range(100, 130))
    out["second"] = run(second, 16)
    # Cancel after the first text; every rank stops on the same token.
    h = backend.submit(GenerationRequest(prompt_ids=list(range(200, 240)), sampling=greedy, max_tokens=400))
    for ev in h.events():
        if isinstance(ev, TextDelta):
            h.cancel()
    assert h.done is not None
    out["cancelled"] = {"finish": h.done.finish_reason, "n": len(h.done.token_ids)}
    out["after"] = run(list(range(300, 330)), 12)  # the ranks are still in step
    # A thinking budget: every rank closes the reasoning on the same token, by itself.
    chat = [{"role": "user", "content": "Think, then say hi."}]
    out["budget"] = run([], 0, messages=chat, sampling=greedy, max_tokens=30, thinking_budget=3)
    out["after_budget"] = run(list(range(300, 330)), 12)
    info = backend.info
    out["info"] = {"ranks": info.ranks, "rank_layers": [list(r) for r in info.rank_layers]}
    print(json.dumps(out), flush=True)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
