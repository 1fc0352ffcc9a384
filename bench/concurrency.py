"""Many streaming clients at once: `locus serve` (continuous batching) against `mlx_lm.server`.

Run from the repository root with the project's Python:

    python bench/concurrency.py                                # tiny random 4-bit model
    python bench/concurrency.py --model real-width --layers 2  # Qwen3.6-35B-A3B widths, 2 layers
    python bench/concurrency.py --json                         # one JSON object on stdout

Both servers run as subprocesses on the same checkpoint (a copy whose end-of-sequence rows of the
output head are zeroed, so no greedy reply ends early and every request writes `--gen-tokens`
tokens). For each number of clients (`--clients`, default 1 2 4 8) the two servers take turns, round
by round (`--rounds`), each round sending that many streaming OpenAI chat requests at once (new
prompts each round, so no prompt cache helps either side). Reported per side and client count:
total tok/s (all tokens / wall time of the round), time to first token p50 and p95, and the
slowest first token. Then a short request is sent while a long prompt (`--long-tokens`) is being
prefilled: the short one's first token time against the long one's.

Targets (printed and in the JSON; the script exits 1 when one is missed):
- tiny: 8 clients' tok/s >= 2 x one client's, and >= 1.0 x mlx_lm.server's at 8 clients;
- real-width: the slowest first token at 8 clients <= mlx_lm.server's;
- the short request's first token <= 0.25 x the long request's (Locus).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode as _decode  # noqa: E402  (bench/decode.py: model builders shared by the benchmarks)

from bench.verdict import at_least, at_most, finish  # noqa: E402

log = _decode.log
SIDES = ("locus", "mlx_lm")
TARGET_SCALING = 2.0  # tiny: 8 clients' tok/s over one client's (Locus)
TARGET_VS_MLX = 1.0  # tiny: Locus tok/s over mlx_lm.server's at 8 clients
TARGET_SLOWEST_TTFT = 1.0  # real width: Locus's slowest first token over mlx_lm.server's at 8 clients
TARGET_SHORT = 0.25  # the short request's first token over the long one's


class SideFailed(RuntimeError):
    """A server could not start or answer: recorded, and the run exits non-zero."""


# -- the checkpoint: end-of-sequence rows zeroed -------------------------------------------------


def eos_ids(path: Path) -> set[int]:
    """Every id either server may stop at: the configs' eos ids and the tokenizer's end tokens."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        f = path / name
        if f.exists():
            cfg = json.loads(f.read_text())
            for src in (cfg, cfg.get("text_config") or {}):
                v = src.get("eos_token_id")
                ids.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    names = {"<|im_end|>", "<|endoftext|>"}
    tc = path / "tokenizer_config.json"
    if tc.exists():
        eos = json.loads(tc.read_text()).get("eos_token")
        names.add(eos.get("content") if isinstance(eos, dict) else eos)
    tj = path / "tokenizer.json"
    if tj.exists():
        for t in json.loads(tj.read_text()).get("added_tokens", []):
            if t.get("content") in names:
                ids.add(int(t["id"]))
    return ids


def without_eos(src: Path, cache: Path) -> Path:
    """A copy of `src` (other files linked) whose output-head rows for the eos ids are zero: their
    logit is exactly 0, below the largest of a random model's logits, so greedy never stops."""
    import mlx.core as mx

    dst = cache / (src.name + "-no-eos")
    if (dst / "config.json").exists():
        return dst
    ids = sorted(eos_ids(src))
    tmp = cache / f"{dst.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        (tmp / f.name).symlink_to(f.resolve())
    for shard in sorted(src.glob("*.safetensors")):
        arrays = mx.load(str(shard))
        keys = [k for k in arrays if "lm_head." in k]
        if not keys:
            continue
        rows = mx.array(ids, dtype=mx.int32)
        for k in keys:
            a = arrays[k]
            a[rows] = mx.zeros((len(ids), *a.shape[1:]), dtype=a.dtype)
            arrays[k] = a
        (tmp / shard.name).unlink()
        mx.save_safetensors(str(tmp / shard.name), arrays, metadata={"format": "mlx"})
    tmp.rename(dst)
    log(f"  eos rows {ids} zeroed in {dst}")
    return dst


# -- servers ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One side as a subprocess: `locus serve` or `mlx_lm.server` on the same checkpoint."""

    def __init__(self, side: str, path: Path, args: argparse.Namespace, work: Path) -> None:
        self.side, self.port = side, _free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        if side == "locus":
            cmd = [sys.executable, "-m", "app.cli", "serve", "--model", str(path), "--port", str(self.port)]
            cmd += ["--parallel", str(args.parallel), "--max-queue", "256", "--log-level", "warning"]
            cmd += ["--no-memory-check"]
        else:
            cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(path), "--port", str(self.port)]
            cmd += ["--temp", "0", "--max-tokens", str(args.gen_tokens)]
        env = {**os.environ, "LOCUS_CACHE_DIR": str(work / "cache"), "LOCUS_DATA_DIR": str(work / "data")}
        self.log = open(work / f"{side}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        import httpx

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SideFailed(f"{side} exited at start; see {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SideFailed(f"{side} did not start; see {self.log.name}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def stream(url: str, text: str, max_tokens: int, t0: float) -> dict[str, Any]:
    """One streaming chat request: time to its first token and tokens received (chunks with text)."""
    import httpx

    body = {
        "model": "default_model",  # mlx_lm.server's name for the model it was started with
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 1.0,
        "presence_penalty": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, chunks, usage = None, 0, None
    with httpx.Client(timeout=3600) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SideFailed(f"HTTP {r.status_code}: {r.read()[:200]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"].get("completion_tokens")
            for ch in ev.get("choices") or []:
                d = ch.get("delta") or {}
                if d.get("content") or d.get("reasoning_content") or d.get("reasoning"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - t0
    return {"ttft": first, "tokens": usage if usage is not None else chunks, "end": time.perf_counter() - t0}


def _words(rng: random.Random, n: int) -> str:
    vocab = "river stone light garden window music paper orange silver market forest engine cloud".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def one_round(srv: Server, clients: int, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    texts = [f"Request {rng.random():.12f}: {_words(rng, args.prompt_words)}" for _ in range(clients)]
    out: list[dict[str, Any]] = [{}] * clients
    errors: list[str] = []
    t0 = time.perf_counter()

    def go(i: int) -> None:
        try:
            out[i] = stream(srv.url, texts[i], args.gen_tokens, t0)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SideFailed(errors[0])
    tokens = sum(o["tokens"] for o in out)
    return {"wall": wall, "tokens": tokens, "ttfts": [o["ttft"] for o in out if o["ttft"] is not None]}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def short_during_long(srv: Server, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """A long prompt, then (once it is being prefilled) a short one: both first-token times."""
    long_text = f"Long {rng.random():.12f}: " + _words(rng, args.long_tokens)
    short_text = f"Short {rng.random():.12f}: hi"
    res: dict[str, Any] = {}
    t0 = time.perf_counter()

    def run(name: str, text: str, start: float) -> None:
        try:
            res[name] = stream(srv.url, text, 4, start)
        except Exception as e:
            res[name] = {"error": str(e)}

    lt = threading.Thread(target=run, args=("long", long_text, t0))
    lt.start()
    time.sleep(args.short_after)
    ts = time.perf_counter()
    run("short", short_text, ts)
    lt.join()
    if "error" in res["long"] or "error" in res["short"]:
        raise SideFailed(res["long"].get("error") or res["short"].get("error"))
    return {"long_ttft": res["long"]["ttft"], "short_ttft": res["short"]["ttft"]}


def measure(path: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: dict[str, Server] = {}
    rng = random.Random(args.seed)
    rows: dict[str, dict[int, list[dict[str, Any]]]] = {s: {} for s in SIDES}
    try:
        for side in SIDES:
            servers[side] = Server(side, path, args, work / side)
        for srv in servers.values():  # warm-up: compile, first allocations
            one_round(srv, 2, argparse.Namespace(**{**vars(args), "gen_tokens": 4}), rng)
        for n in args.clients:
            for r in range(args.rounds):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for side in order:
                    res = one_round(servers[side], n, args, rng)
                    rows[side].setdefault(n, []).append(res)
                    log(
                        f"  {side:7s} {n} clients: {res['tokens'] / res['wall']:8.1f} tok/s, "
                        f"slowest first token {max(res['ttfts']):.2f} s"
                    )
        short = {side: short_during_long(servers[side], args, rng) for side in SIDES}
    finally:
        for srv in servers.values():
            srv.close()
    table: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        table[side] = {}
        for n, runs in rows[side].items():
            ttfts = [t for r in runs for t in r["ttfts"]]
            table[side][str(n)] = {
                "tok_s": statistics.median(r["tokens"] / r["wall"] for r in runs),
                "ttft_p50": _pct(ttfts, 0.5),
                "ttft_p95": _pct(ttfts, 0.95),
                "ttft_max": statistics.median(max(r["ttfts"]) for r in runs),
                "tokens_per_request": statistics.median(r["tokens"] / n for r in runs),
            }
    return {"table": table, "short_during_long": short}


def judge(kind: str, rep: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    t, fails = rep["table"], []
    loc, mlx = t["locus"], t["mlx_lm"]
    ratios: dict[str, Any] = {}
    if "8" in loc and "1" in loc:
        ratios["scaling_8_over_1"] = loc["8"]["tok_s"] / loc["1"]["tok_s"]
    if "8" in loc and "8" in mlx:
        ratios["tok_s_vs_mlx_at_8"] = loc["8"]["tok_s"] / mlx["8"]["tok_s"]
        ratios["slowest_ttft_vs_mlx_at_8"] = loc["8"]["ttft_max"] / mlx["8"]["ttft_max"]
    s = rep["short_during_long"]["locus"]
    ratios["short_over_long_ttft"] = s["short_ttft"] / s["long_ttft"]
    m = rep["short_during_long"]["mlx_lm"]
    ratios["mlx_short_over_long_ttft"] = m["short_ttft"] / m["long_ttft"]
    targets: dict[str, float] = {"short_over_long_ttft": TARGET_SHORT}
    if kind == "tiny":
        targets |= {"scaling_8_over_1": TARGET_SCALING, "tok_s_vs_mlx_at_8": TARGET_VS_MLX}
        fails += at_least(f"{kind}: 8 / 1 client tok/s", ratios.get("scaling_8_over_1"), TARGET_SCALING)
        fails += at_least(f"{kind}: tok/s vs mlx_lm.server", ratios.get("tok_s_vs_mlx_at_8"), TARGET_VS_MLX)
    else:
        targets |= {"slowest_ttft_vs_mlx_at_8": TARGET_SLOWEST_TTFT}
        fails += at_most(
            f"{kind}: slowest first token vs mlx_lm.server at 8",
            ratios.get("slowest_ttft_vs_mlx_at_8"),
            TARGET_SLOWEST_TTFT,
        )
    fails += at_most(f"{kind}: short / long first token", ratios["short_over_long_ttft"], TARGET_SHORT)
    return {"ratios": ratios, "targets": targets}, fails


def print_report(label: str, rep: dict[str, Any]) -> None:
    print(f"\n{label}")
    print(f"{'clients':>7} | {'side':7} | {'tok/s':>8} | {'TTFT p50':>8} | {'p95':>7} | {'slowest':>7}")
    for n in sorted({int(k) for k in rep["table"]["locus"]}):
        for side in SIDES:
            r = rep["table"][side].get(str(n))
            if r:
                print(
                    f"{n:>7} | {side:7} | {r['tok_s']:8.1f} | {r['ttft_p50']:8.2f} | "
                    f"{r['ttft_p95']:7.2f} | {r['ttft_max']:7.2f}"
                )
    for side in SIDES:
        s = rep["short_during_long"][side]
        print(
            f"short during long ({side}): short first token {s['short_ttft']:.2f} s, "
            f"long {s['long_ttft']:.2f} s"
        )
    for k, v in rep["ratios"].items():
        tgt = rep["targets"].get(k)
        print(f"  {k}: {v:.2f}" + (f" (target {'<=' if 'ttft' in k else '>='} {tgt})" if tgt else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, real-width, or a checkpoint directory")
    p.add_argument("--layers", type=int, default=2, help="layers of the real-width model (default 2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=2, help="rounds per side and client count")
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--long-tokens", type=int, default=6000, help="words in the long prompt (about tokens)")
    p.add_argument("--short-after", type=float, default=0.3, help="seconds from long to short request")
    p.add_argument("--parallel", type=int, default=8, help="locus serve --parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bench-models"))
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    base, label = _decode.ensure_model(argparse.Namespace(**{**vars(args), "seed": 0}))
    kind = "tiny" if args.model == "tiny" else "real-width"
    failures: list[str] = []
    report: dict[str, Any] = {"model": label, "args": vars(args)}
    work = Path(tempfile.mkdtemp(prefix="locus-concurrency-"))
    try:
        path = without_eos(base, Path(args.cache_dir).expanduser())
        rep = measure(path, args, work)
        verdict, failures = judge(kind, rep)
        report |= rep | verdict
        report["caveat"] = "CPU shared with other processes: numbers are noisy"
        if not args.json:
            print_report(label, report)
    except SideFailed as e:
        failures.append(f"a side failed: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["failures"] = failures
    if args.json:
        print(json.dumps(report, indent=2))
    return finish(failures, json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
