"""Many clients at once against the real server and engine: `--parallel`, one batch, same texts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from app.cli import build_parser
from app.cli_serve import config_from_args
from engine.request import DEFAULT_PARALLEL

QUESTIONS = [
    "hi",
    "What is the capital of France, and why is it there?",
    "Count to five.",
    "Tell me a long story about a lighthouse keeper " * 4,
    "ok",
    "Why is the sky blue?",
]


def _args(*argv: str):
    return build_parser().parse_args(["serve", "--demo", *argv])


def test_parallel_flag_sets_the_servers_slots():
    assert config_from_args(_args()).max_active == DEFAULT_PARALLEL >= 4
    assert config_from_args(_args("--parallel", "3")).max_active == 3
    with pytest.raises(RuntimeError, match="--parallel must be >= 1"):
        config_from_args(_args("--parallel", "0"))


def _stream(url: str, text: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    out = []
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": text}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:  # the reasoning (a Locus field) and the answer, in order
            out.append(getattr(delta, "reasoning_content", None) or "")
            out.append(delta.content or "")
    return "".join(out)


def test_concurrent_streaming_clients_get_their_sequential_texts(serve, tiny_dir):
    from engine import Engine

    eng = Engine.from_path(str(tiny_dir("mlx", 4)), parallel=4)
    try:
        srv = serve(eng, max_active=4, max_queue=8)
        alone = [_stream(srv.url, q) for q in QUESTIONS]
        eng.scheduler.widest = 0
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            together = list(pool.map(lambda q: _stream(srv.url, q), QUESTIONS))
        assert eng.scheduler.widest >= 2  # they were decoded as one batch
        assert eng.scheduler.widest <= 4  # never more than --parallel
        assert all(alone) and together == alone
        h = httpx.get(srv.url + "/health").json()
        assert h["parallel"] == 4 and h["sequences"] == h["batch_size"] == 0
        assert sum(h["finished"].values()) == 2 * len(QUESTIONS) and "error" not in h["finished"]
    finally:
        eng.close()
