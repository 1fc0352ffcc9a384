"""Speculative decoding (MTP) against plain decoding: tokens/s, acceptance, cost of verification.

Run from the repository root with the project's Python:

    python bench/mtp.py                                   # Qwen3.6 widths, 4 layers, random 4-bit
    python bench/mtp.py --model tiny                      # the tiny test model (seconds)
    python bench/mtp.py --model ~/models/Qwen3.6-35B-A3B-mtp-4bit --gen-tokens 256
    python bench/mtp.py --json

One model, one prompt of seeded random ids, greedy. Rows:

- `plain`: `engine.generate.generate_step` (what `--mtp 0` runs).
- `oracle K`: `engine.mtp.speculative_step` with drafts taken from the plain run's own greedy
  continuation, so every draft is right: what verifying K tokens in one forward costs against K
  plain steps, with no drafter cost. This is the machinery's ceiling.
- `noisy K`: the same oracle, each draft wrong with probability 1 - `--noisy` (default 0.6 right):
  adds the rollback (the recorded linear-attention state of the last accepted position, trimmed KV
  caches; no extra forward).
- `head K`: drafts from the checkpoint's MTP head (a random head where the checkpoint has none,
  so `--model real-width` measures the head's cost; its drafts are rejected). Only real weights
  show real acceptance.

Speeds are measured between round boundaries (the first round, which includes prefill, is left
out): tokens handed out / wall time. Every row's tokens are compared with the plain row's.

A second table isolates verification: the wall time of one main-model forward (with its logits) over
K + 1 positions, as verification runs it (recording the linear-attention states after every
position), against one single-token forward (a plain step), after the same prompt; the median of
`--verify-reps` runs, each rolled back before the next.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.decode import ensure_model, log  # noqa: E402


def _attach_random_head(model: Any, bits: int | None) -> None:
    """A random MTP head at the model's widths (quantized like `locus convert` would)."""
    import mlx.core as mx
    import mlx.nn as nn

    from engine.convert import _quantize_predicate
    from engine.mtp import MTPHead

    head = MTPHead(model.language_model.args)
    if bits:
        pred = _quantize_predicate(model.quant_predicate, 64, {})
        nn.quantize(head, group_size=64, bits=bits, class_predicate=pred)
    mx.eval(head.parameters())
    model["mtp"] = head


def _timed(steps: Any, n: int, rounds: Any) -> tuple[list[int], float]:
    """Consume n tokens; tokens/s between the start of round 2 and the last round start seen."""
    out: list[int] = []
    marks: list[tuple[float, int]] = []
    last = None
    for tok in steps:
        r = rounds()
        if r != last:  # a new round began with this token
            marks.append((time.perf_counter(), len(out)))
            last = r
        out.append(tok)
        if len(out) >= n:
            break
    steps.close()
    if len(marks) < 3:
        return out, 0.0
    (t0, n0), (t1, n1) = marks[1], marks[-1]
    return out, (n1 - n0) / max(t1 - t0, 1e-9)


def _oracle(truth: list[int], right: float, seed: int) -> Any:
    """Drafts the true continuation, each token right with probability `right` (else token 0)."""
    r = random.Random(seed)

    def draft(tokens: list[int], k: int) -> list[int]:
        m = len(tokens)
        return [truth[m + i] if m + i < len(truth) and r.random() < right else 0 for i in range(k)]

    return draft


def verify_costs(model: Any, prompt: list[int], ks: list[int], reps: int) -> list[dict[str, Any]]:
    """Median wall times (logits included), from the same cache after `prompt`: one single-token
    forward (a plain step), and per K one (K+1)-position forward recording the per-position states
    (verification) and one without (a plain block). Each rep times them all in turn, so load that
    drifts over the run (a shared machine) hits every column alike."""
    import statistics

    import mlx.core as mx

    from engine.mtp import _restore, _save

    cache = model.make_cache()
    cache = cache[:-1] if model.mtp_head is not None else cache
    model(mx.array(prompt)[None], cache=cache, hidden=True)
    mx.eval([c.state for c in cache])
    saved = _save(cache)
    ids = [(prompt[i % len(prompt)] + 1) % 1000 for i in range(max(ks) + 1)]

    def once(n: int, record: bool) -> float:
        t = time.perf_counter()
        if record:
            with model.recording():
                h = model(mx.array(ids[:n])[None], cache=cache, hidden=True)
        else:
            h = model(mx.array(ids[:n])[None], cache=cache, hidden=True)
        mx.eval(model.logits(h), [c.state for c in cache])
        _restore(cache, saved)
        return time.perf_counter() - t

    times: dict[Any, list[float]] = {}
    for _ in range(reps):
        times.setdefault("step", []).append(once(1, record=False))
        for k in ks:
            times.setdefault(("verify", k), []).append(once(k + 1, record=True))
            times.setdefault(("block", k), []).append(once(k + 1, record=False))
    step = statistics.median(times["step"])
    rows = []
    for k in ks:
        verify = statistics.median(times[("verify", k)])
        block = statistics.median(times[("block", k)])
        rows.append({"k": k, "step_s": step, "verify_s": verify, "block_s": block, "steps": verify / step})
    return rows


def decode_rows(
    model: Any, prompt: list[int], args: argparse.Namespace, label: str, head_note: str
) -> list[dict[str, Any]]:
    """The plain row, then the oracle, noisy-oracle and head rows, each checked against plain."""
    import mlx.core as mx

    from engine.generate import generate_step
    from engine.mtp import DraftStats, speculative_step
    from engine.sampling import SamplingParams

    n = args.gen_tokens
    counter = {"n": 0}

    def plain_steps() -> Any:
        counter["n"] = 0
        g = generate_step(model, prompt, model.make_cache(), sampler=lambda lp: mx.argmax(lp, -1))
        for t in g:
            counter["n"] += 1
            yield t

    log(f"{label}: plain decode, {n} tokens")
    ref, tps = _timed(plain_steps(), n + 8, lambda: counter["n"])
    log(f"  {tps:.2f} tok/s")
    rows = [{"row": "plain", "k": 0, "tps": tps, "acceptance": None, "same": True}]
    truth = prompt + ref
    plan = [(f"oracle {k}", k, _oracle(truth, 1.0, 0)) for k in args.k]
    plan += [(f"noisy {k}", k, _oracle(truth, args.noisy, k)) for k in args.noisy_k]
    head_k = args.head_k
    if head_k is None:  # a real head: every K, to recommend one; a random one: its cost at K=1
        head_k = [1, 2, 3, 4] if head_note == "checkpoint's head" else [1]
    plan += [(f"head {k}", k, None) for k in head_k]
    for name, k, drafter in plan:
        log(f"{label}: {name}")
        stats = DraftStats()
        steps = speculative_step(
            model,
            prompt,
            model.make_cache(),
            draft_tokens=k,
            stats=stats,
            params=SamplingParams(temperature=0),
            drafter=drafter,
        )
        out, tps = _timed(steps, n, lambda s=stats: s.rounds)
        log(f"  {tps:.2f} tok/s, {stats.accepted}/{stats.drafted} drafts accepted")
        rows.append(
            {
                "row": name,
                "k": k,
                "tps": tps,
                "acceptance": stats.accepted / max(stats.drafted, 1),
                "tokens_per_forward": len(out) / max(stats.rounds, 1),
                "same": out == ref[: len(out)],
            }
        )
    for r in rows:
        r["speedup"] = r["tps"] / (rows[0]["tps"] or 1e-9)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx

    from engine.loader import load_model

    path, label = ensure_model(args)
    lm = load_model(path, memory_check=False)
    model = lm.model
    head_note = "checkpoint's head"
    if model.mtp_head is None:
        q = lm.info.quantization
        _attach_random_head(model, int(q["bits"]) if q else None)
        head_note = "random head (the checkpoint has none)"
    vocab = model.language_model.args.vocab_size
    rng = random.Random(args.seed)
    prompt = [rng.randrange(0, min(vocab, 150_000)) for _ in range(args.prompt_tokens)]
    rows = [] if args.verify_only else decode_rows(model, prompt, args, label, head_note)
    log(f"{label}: verification forwards vs single-token forwards")
    verify = verify_costs(model, prompt, sorted(set(args.k)), args.verify_reps)
    for v in verify:
        log(f"  K={v['k']}: {v['verify_s']:.3f} s = {v['steps']:.2f} plain steps")
    # Recommend the head's best K when it beats plain decoding by 5% (else keep --mtp 0).
    heads = [r for r in rows if r["row"].startswith("head") and r["same"]]
    best = max(heads, key=lambda r: r["speedup"], default=None)
    recommended = best["k"] if best is not None and best["speedup"] > 1.05 else 0
    return {
        "recommended_mtp": recommended,
        "model": label,
        "head": head_note,
        "prompt_tokens": len(prompt),
        "gen_tokens": args.gen_tokens,
        "machine": f"{platform.machine()} {platform.system()}, MLX {mx.__version__}, {mx.default_device()}",
        "rows": rows,
        "verify": verify,
    }


def judge(rep: dict[str, Any]) -> list[str]:
    """Speculative decoding must hand out plain decoding's greedy tokens in every row."""
    return [f"row {r['row']}: tokens differ from plain decoding" for r in rep["rows"] if not r["same"]]


def print_table(rep: dict[str, Any]) -> None:
    print(f"# {rep['model']} — {rep['machine']}")
    print(
        f"# prompt {rep['prompt_tokens']} tokens, {rep['gen_tokens']} generated, "
        f"greedy; head row: {rep['head']}"
    )
    print(f"{'row':<10} {'tok/s':>8} {'x plain':>8} {'accept':>7} {'tok/fwd':>8} {'same':>5}")
    for r in rep["rows"]:
        acc = "" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        tpf = f"{r.get('tokens_per_forward', 1.0):.2f}"
        print(
            f"{r['row']:<10} {r['tps']:8.2f} {r['speedup']:8.2f} {acc:>7} {tpf:>8} "
            f"{'yes' if r['same'] else 'NO':>5}"
        )
    print("# one verification forward over K+1 positions vs one plain (single-token) step")
    print(
        f"{'K':>3} {'step s':>8} {'verify s':>9} {'no-record s':>12} {'= steps':>8} "
        f"{'/ K steps':>10} {'/ K+1 steps':>12}"
    )
    for v in rep["verify"]:
        print(
            f"{v['k']:>3} {v['step_s']:8.3f} {v['verify_s']:9.3f} {v['block_s']:12.3f} "
            f"{v['steps']:8.2f} {v['steps'] / v['k']:10.2f} "
            f"{v['steps'] / (v['k'] + 1):12.2f}"
        )
    print(f"recommended for this model on this machine: --mtp {rep['recommended_mtp']}")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="real-width", help="tiny, real-width or a checkpoint dir")
    ap.add_argument("--layers", type=int, default=4, help="real-width layers (default 4)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bench-models"))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--k", type=int, nargs="*", default=[1, 2, 3, 4], help="oracle rows")
    ap.add_argument("--noisy-k", type=int, nargs="*", default=[2, 4], help="noisy-oracle rows")
    ap.add_argument("--noisy", type=float, default=0.6, help="noisy oracle: P(draft right)")
    ap.add_argument(
        "--head-k",
        type=int,
        nargs="*",
        default=None,
        help="MTP-head rows (default 1-4 with a real head, 1 with a random one)",
    )
    ap.add_argument("--verify-reps", type=int, default=3, help="runs per verification timing")
    ap.add_argument("--verify-only", action="store_true", help="only the verification table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from bench.verdict import finish

    rep = run(args)
    rep["failures"] = judge(rep)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_table(rep)
    return finish(rep["failures"], json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
