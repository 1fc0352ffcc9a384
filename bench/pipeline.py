"""One model in one process against the same model pipelined across two (mlx.launch, ring backend
over loopback): time to first token, prefill and decode tokens/s, and the bytes sent between the
ranks per token.

Run from the repository root with the project's Python:

    python bench/pipeline.py                          # Qwen3.6 widths, 4 layers, random 4-bit
    python bench/pipeline.py --model tiny             # the tiny test model (seconds)
    python bench/pipeline.py --model ~/models/Qwen3.6-35B-A3B-4bit --gen-tokens 128
    python bench/pipeline.py --json

Each configuration runs in fresh processes (`--child`): the model is loaded (rank 0 and rank 1
each load only their layers), one untimed warm-up request runs, then `--runs` timed requests of
`--prompt-tokens` seeded random ids, greedy, `--gen-tokens` tokens each (end-of-sequence ids off,
so every run makes exactly that many); the median is reported. Speeds are the requests' own Usage:
prefill = prompt tokens / time to the first token, decode = (n - 1) / time after the first token.
Every run's tokens are compared between the two configurations.

Bytes between ranks are computed, not measured: mlx-lm's pipeline sends the hidden state once per
stage boundary (`send`/`recv_like`) and then all-gathers the last stage's hidden state so every
rank computes the logits (each rank sends its hidden state to the others); Locus adds one
`all_sum` of 2 int32 per decoded token (rank 0's token and the cancel flag). Prefill chunks only
`send` (the all-gathered logits of a prefill chunk are never evaluated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.decode import ensure_model, log  # noqa: E402

LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"


def bytes_per_token(hidden: int, itemsize: int, ranks: int) -> dict[str, int]:
    """Bytes all ranks send per token (computed from mlx-lm's pipeline and Locus's token share)."""
    if ranks < 2:
        return {"decode": 0, "prefill": 0, "per_hop_hidden": 0}
    h = hidden * itemsize
    hops = ranks - 1  # send/recv between consecutive stages
    gather = ranks * (ranks - 1) * h  # ring all_gather: each rank's piece reaches every other
    share = ranks * (ranks - 1) * 8  # all_sum of [token, cancel flag] (int32 x 2)
    return {"decode": hops * h + gather + share, "prefill": hops * h, "per_hop_hidden": h}


# -- child: one configuration ------------------------------------------------------------------
def child(args: argparse.Namespace) -> int:
    from engine import Engine, GenerationRequest, SamplingParams
    from engine.pipeline import open_pipeline, pipeline_group, serve_worker

    group = pipeline_group()
    if group is None:
        backend: Any = Engine.from_path(args.child, memory_check=False)
        engine: Any = backend
    else:
        backend = open_pipeline(args.child, group=group, context_tokens=args.prompt_tokens * 2 + 64)
        engine = backend if group.rank() > 0 else backend.engine
    lm = engine.model
    lm.eos_token_ids = []  # every run makes exactly --gen-tokens tokens (on every rank)
    lm.tokenizer.eos_token_ids = set()
    if group is not None and group.rank() > 0:
        return serve_worker(engine)
    vocab = lm.model.language_model.args.vocab_size
    rng = random.Random(args.seed)
    greedy = SamplingParams(temperature=0.0)

    def request(n_prompt: int, n_gen: int) -> Any:
        ids = [rng.randrange(0, min(vocab, 150_000)) for _ in range(n_prompt)]
        req = GenerationRequest(prompt_ids=ids, sampling=greedy, max_tokens=n_gen, use_cache=False)
        return backend.submit(req).result()

    request(16, 4)  # warm-up (compiles kernels)
    runs = []
    for _ in range(args.runs):
        r = request(args.prompt_tokens, args.gen_tokens)
        if r.error:
            raise SystemExit(f"request failed: {r.error}")
        u = r.usage
        runs.append(
            {
                "tokens": r.token_ids,
                "prompt_tps": u.prompt_tps,
                "ttft_s": u.prompt_tokens / max(u.prompt_tps, 1e-9),
                "decode_tps": u.generation_tps,
                "peak_memory_gb": u.peak_memory_gb,
                "ranks": u.ranks,
                "rank_layers": [list(x) for x in u.rank_layers],
            }
        )
    dtype = lm.model.language_model.model.embed_tokens.weight.dtype
    if "scales" in lm.model.language_model.model.embed_tokens:  # quantized: scales' dtype
        dtype = lm.model.language_model.model.embed_tokens.scales.dtype
    print(
        json.dumps(
            {
                "runs": runs,
                "hidden": lm.model.language_model.args.hidden_size,
                "itemsize": dtype.size,
                "dtype": str(dtype),
            }
        ),
        flush=True,
    )
    backend.close()
    return 0


# -- parent --------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    for _ in range(100):
        p = random.randint(40000, 60000)
        ok = True
        for q in (p, p + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
        if ok:
            return p
    raise RuntimeError("no free ports")


class SideFailed(Exception):
    """One configuration's processes failed: the benchmark ends with this as its verdict."""


def configuration(args: argparse.Namespace, path: Path, ranks: int) -> dict[str, Any]:
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(path),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--gen-tokens",
        str(args.gen_tokens),
        "--runs",
        str(args.runs),
        "--seed",
        str(args.seed),
    ]
    if ranks > 1:
        me = [
            sys.executable,
            "-c",
            LAUNCH,
            "-n",
            str(ranks),
            "--backend",
            "ring",
            "--starting-port",
            str(_free_port()),
            "--",
            *me,
        ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log(f"{ranks} process(es): {path.name}")
    proc = subprocess.Popen(me, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SideFailed(f"the {ranks}-process configuration ran past --timeout {args.timeout:g} s") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # mlx.launch leaves its ranks when killed
        except ProcessLookupError:
            pass
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SideFailed(f"the {ranks}-process configuration failed (exit {proc.returncode})")
    rep = json.loads(lines[-1])
    runs = rep["runs"]
    med = {
        k: statistics.median(r[k] for r in runs)
        for k in ("prompt_tps", "ttft_s", "decode_tps", "peak_memory_gb")
    }
    return {
        "ranks": ranks,
        "rank_layers": runs[0]["rank_layers"],
        **med,
        "tokens": [r["tokens"] for r in runs],
        "hidden": rep["hidden"],
        "dtype": rep["dtype"],
        "itemsize": rep["itemsize"],
        "bytes_per_token": bytes_per_token(rep["hidden"], rep["itemsize"], ranks),
    }


def judge(rep: dict[str, Any]) -> list[str]:
    """Pipelining must not change the greedy tokens."""
    return [] if rep["same_tokens"] else ["1 and 2 processes gave different greedy tokens"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    path, label = ensure_model(args)
    rows = [configuration(args, path, n) for n in (1, 2)]
    same = rows[0]["tokens"] == rows[1]["tokens"]
    for r in rows:
        r.pop("tokens")
    return {
        "model": label,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "runs": args.runs,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "same_tokens": same,
        "rows": rows,
    }


def print_table(rep: dict[str, Any]) -> None:
    print(
        f"{rep['model']}: {rep['prompt_tokens']}-token prompt, {rep['gen_tokens']} tokens, "
        f"median of {rep['runs']} ({rep['machine']})"
    )
    print(
        f"{'processes':>9}  {'layers per rank':<18} {'TTFT s':>8} {'prefill tok/s':>14} "
        f"{'decode tok/s':>13} {'bytes/token decode':>19} {'prefill':>8}"
    )
    for r in rep["rows"]:
        layers = " ".join(f"{a}-{b - 1}" for a, b in r["rank_layers"]) or "all"
        b = r["bytes_per_token"]
        print(
            f"{r['ranks']:>9}  {layers:<18} {r['ttft_s']:>8.3f} {r['prompt_tps']:>14.1f} "
            f"{r['decode_tps']:>13.1f} {b['decode']:>19,} {b['prefill']:>8,}"
        )
    r = rep["rows"][-1]
    print(
        f"bytes are computed (hidden {r['hidden']} x {r['itemsize']} bytes {r['dtype']}), "
        "not measured; same greedy tokens in both: " + ("yes" if rep["same_tokens"] else "NO")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="real-width", help="tiny, real-width or a checkpoint dir")
    ap.add_argument("--layers", type=int, default=4, help="real-width layers (default 4)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bench-models"))
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    from bench.verdict import finish

    try:
        rep = run(args)
    except SideFailed as e:
        return finish([str(e)], json_mode=args.json)
    rep["failures"] = judge(rep)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_table(rep)
    return finish(rep["failures"], json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
