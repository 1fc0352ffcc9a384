"""Run by tests/engine/test_pipeline_backend.py on every rank under mlx.launch: sampled requests
(temperature > 0, no request seed) with each rank's own RNG seed, so only rank 0's token,
shared by the pipeline, keeps the ranks in step. Each rank writes what it emitted to OUT/rankN.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx

from engine import Done, GenerationRequest, PromptCache, ReasoningDelta, SamplingParams, TextDelta
from engine.pipeline import open_pipeline, pipeline_group, serve_worker

# Shared with the test, which checks every token against the single-process model's top-k.
TOP_K = 8
REQUESTS = [
    {"prompt_ids": list(range(20, 60)), "max_tokens": 24, "temperature": 1.0},
    {"prompt_ids": list(range(20, 60)), "max_tokens": 24, "temperature": 1.0},  # same prompt, new draw
    {"prompt_ids": list(range(300, 330)), "max_tokens": 20, "temperature": 0.7},
    {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 24, "temperature": 1.2},
]


def request(spec: dict) -> GenerationRequest:
    sampling = SamplingParams(temperature=spec["temperature"], top_k=TOP_K, top_p=1.0)
    if "messages" in spec:
        return GenerationRequest(messages=spec["messages"], sampling=sampling, max_tokens=spec["max_tokens"])
    return GenerationRequest(prompt_ids=spec["prompt_ids"], sampling=sampling, max_tokens=spec["max_tokens"])


class _Tee:
    """Wraps a worker's request handle: keeps the text and tokens the worker emitted."""

    def __init__(self, handle, runs: list[dict]):
        self.handle, self.run = handle, {"text": "", "tokens": None, "finish": None, "error": None}
        runs.append(self.run)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def record(self, ev) -> None:
        if isinstance(ev, TextDelta | ReasoningDelta):
            self.run["text"] += ev.text
        elif isinstance(ev, Done):
            self.run.update(tokens=list(ev.token_ids), finish=ev.finish_reason, error=ev.error)

    def _put(self, ev) -> None:
        self.record(ev)
        self.handle._put(ev)


def main(path: str, out: str) -> int:
    group = pipeline_group()
    assert group is not None, "run under mlx.launch -n 2"
    rank = group.rank()
    mx.random.seed(1000 + 7919 * rank)  # the ranks' own draws differ for sure
    backend = open_pipeline(path, group=group, context_tokens=4096, prompt_cache=PromptCache())
    runs: list[dict] = []
    if rank > 0:
        generate = backend._generate

        def teed(req, handle, prepared=None):
            return generate(req, _Tee(handle, runs), prepared)

        backend._generate = teed  # serve_worker runs each request through it
        status = serve_worker(backend)
    else:
        for spec in REQUESTS:
            tee = _Tee(backend.submit(request(spec)), runs)
            for ev in tee.handle.events():
                tee.record(ev)
        backend.close()
        status = 0
    Path(out, f"rank{rank}.json").write_text(json.dumps(runs))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
