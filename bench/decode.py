"""Decode/prefill speed of Locus's engine against mlx-lm, and peak memory while loading.

Run from the repository root with the project's Python:

    python bench/decode.py                                  # tiny random 4-bit model (seconds)
    python bench/decode.py --model real-width --layers 4    # Qwen3.6-35B-A3B widths, 4 layers
    python bench/decode.py --model ~/models/Qwen3.6-35B-A3B-4bit --prompt-tokens 1024
    python bench/decode.py --json                           # one JSON object on stdout

What it measures, on one model loaded once with `engine.loader.load_model`:

- Locus: `Engine.submit` (the path the app and the CLI use: worker thread, detokenizer, stream
  parser, events on the request's queue), greedy, events consumed as they stream. Speeds come from
  the request's `Usage`: prefill = prompt tokens / time to the first token, decode = (n - 1) / time
  from the first token to the last.
- mlx-lm: `mlx_lm.generate.stream_generate` on the very same model object and the same prompt ids,
  timed from outside with the same formulas (mlx-lm's own `generation_tps` counts n tokens over
  n - 1 intervals; it is kept in the JSON as `reported_*`).
- `--include-raw` adds a third row: `engine.generate.generate_step` called directly, without the
  engine (no worker thread, queue, detokenizer or parser), to separate the engine's per-token
  overhead from the step loop's.

The prompt is seeded random ids below the vocabulary size. End-of-sequence ids are disabled on both
sides for the benchmark so every run produces exactly `--gen-tokens` tokens (a random model would
otherwise stop at random points); the greedy outputs of both sides are compared as a sanity check.
The order alternates run by run (Locus first, then mlx-lm first, ...) and the median is reported.

Load memory is measured in fresh subprocesses (`--measure-load PATH --loader locus|mlx-lm`):
`mx.get_peak_memory()` after loading, and the growth of the process's max RSS over its value after
imports, both divided by the checkpoint's bytes on disk.

Models: `tiny` (engine.tiny's default TinyConfig, 4-bit mlx layout), `real-width` (random 4-bit
weights at Qwen3.6-35B-A3B's real widths: hidden 2048, 16 heads / 2 KV heads of 256, linear
attention 16 key / 32 value heads of 128, 256 experts top-8 of width 512, shared expert 512,
vocabulary 248320; `--layers N`, default 4 = 3 linear + 1 full attention; tiny vision tower), or a
checkpoint directory. Generated checkpoints are cached under `--cache-dir`.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GB = 1e9
CACHE_VERSION = 1  # bump when the generated checkpoints change
TARGET_DECODE = 1.00
TARGET_PREFILL = 0.95
TARGET_LOAD = 1.15

SIDES = ("locus", "mlx_lm", "raw")
LABELS = {
    "locus": "Locus Engine.submit",
    "mlx_lm": "mlx-lm stream_generate",
    "raw": "Locus generate_step (no engine)",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- checkpoints ------------------------------------------------------------------------------


def real_width_config(layers: int) -> Any:
    """TinyConfig at Qwen3.6-35B-A3B's real text widths, with `layers` layers and a tiny vision tower."""
    from engine.tiny import QWEN36_TEXT_WIDTHS, TinyConfig

    # Every 4th layer is full attention; with fewer than 4 layers the last one is, so that each
    # kind of layer is measured (mlx-lm's qwen3_5 also needs a full-attention layer to index).
    interval = 4 if layers >= 4 else layers
    extra: dict[str, Any] = {
        "max_position_embeddings": 262144,
        "full_attention_interval": interval,
        "layer_types": [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)
        ],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000_000,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
        },
    }
    return TinyConfig(**QWEN36_TEXT_WIDTHS, num_hidden_layers=layers, extra_text_config=extra)


def write_large_tokenizer(path: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer covering all `vocab_size` ids, with Qwen's special tokens.

    engine.tiny.write_tokenizer pads the vocabulary one `add_tokens` call at a time, which is
    quadratic (8192 ids take ~40 s here; 248320 would take hours). This builds the regular
    vocabulary directly (byte alphabet + synthetic words, no merges: ids are what the benchmark
    feeds, text only comes out of the detokenizer) and fills the ids above the special tokens,
    so that any id a random model emits can be detokenized.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from engine.tiny import (
        SPECIAL_TOKENS,
        _special_ids,
        write_generation_config,
        write_tokenizer_config,
    )

    ids = _special_ids(vocab_size)
    n_regular = min(ids.values())
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ("".join(w) for n in itertools.count(1) for w in itertools.product(letters, repeat=n))
    while len(vocab) < n_regular:
        vocab["Ġ" + next(words)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    top = n_regular + len(SPECIAL_TOKENS)
    tok.add_tokens(
        [AddedToken(f"<|unused_{i}|>", special=True, normalized=False) for i in range(top, vocab_size)]
    )
    for text, want in ids.items():
        if tok.token_to_id(text) != want:
            raise RuntimeError(f"tokenizer: {text} got id {tok.token_to_id(text)}, expected {want}")
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    write_tokenizer_config(path, vocab_size, model_max_length=262144)
    write_generation_config(path, vocab_size)


def write_real_width(path: Path, layers: int, dtype: str = "float32", seed: int = 0) -> None:
    """A random 4-bit mlx-layout checkpoint at real widths, written one layer (shard) at a time.

    engine.tiny.write_checkpoint cannot build this size (see write_large_tokenizer, and its numpy
    float32 weights need ~3.2 GB per layer plus ~4 GB for embeddings/head, then a second copy as
    mx arrays). Here the model is built lazily with MLX's random init, quantized lazily with the
    recipe `locus convert` uses (4 bits, group 64; router and shared-expert gate at 8 bits), and
    each shard is evaluated and saved on its own, so peak memory stays near one layer's float32
    experts (~3 GB).
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from engine.convert import _quantize_predicate
    from engine.model import Model
    from engine.tiny import TinyConfig, make_config, make_weights

    cfg = real_width_config(layers)
    config = make_config(cfg)
    mx.random.seed(seed)
    model = Model(config)
    lm = model.language_model
    if dtype == "bfloat16":
        lm.set_dtype(mx.bfloat16)
        for layer in lm.layers:  # the recurrent decay stays in float32, as in real conversions
            if getattr(layer, "is_linear", False):
                layer.linear_attn.A_log = layer.linear_attn.A_log.astype(mx.float32)
        config["torch_dtype"] = "bfloat16"
    quant: dict[str, Any] = {"group_size": 64, "bits": 4, "mode": "affine"}

    per_layer: dict[str, Any] = {}
    predicate = _quantize_predicate(model.quant_predicate, 64, per_layer)
    nn.quantize(lm, group_size=64, bits=4, class_predicate=predicate)
    quant.update({"language_model." + p: spec for p, spec in per_layer.items()})
    shards: dict[str, dict[str, Any]] = {}
    for k, v in tree_flatten(lm.parameters()):
        m = re.match(r"model\.layers\.(\d+)\.", k)
        shards.setdefault(f"layer{int(m.group(1)):03d}" if m else "base", {})["language_model." + k] = v
    del model, lm
    # The vision tower at engine.tiny's small sizes, projecting into the real hidden width.
    small = TinyConfig(hidden_size=cfg.hidden_size, num_hidden_layers=0, vocab_size=64)
    target = mx.bfloat16 if dtype == "bfloat16" else mx.float32
    for k, v in make_weights(small, seed).items():
        if k.startswith("model.visual."):
            a = mx.array(v)
            if k.endswith("patch_embed.proj.weight"):
                a = a.transpose(0, 2, 3, 4, 1)  # MLX convolutions are channels-last
            shards["base"]["vision_tower." + k.removeprefix("model.visual.")] = a.astype(target)
    names = sorted(shards)
    files = {n: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, n in enumerate(names)}
    weight_map: dict[str, str] = {}
    total = 0
    path.mkdir(parents=True, exist_ok=True)
    for n in names:
        part = shards.pop(n)
        t = time.perf_counter()
        mx.eval(part)
        mx.save_safetensors(str(path / files[n]), part, metadata={"format": "mlx"})
        size = sum(v.nbytes for v in part.values())
        total += size
        weight_map.update(dict.fromkeys(part, files[n]))
        log(f"  wrote {files[n]} ({n}, {size / GB:.2f} GB) in {time.perf_counter() - t:.1f} s")
        del part
        mx.clear_cache()
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config["quantization"] = quant
    config["quantization_config"] = quant
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_large_tokenizer(path, cfg.vocab_size)


def ensure_model(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint directory to benchmark (generated and cached when needed) and a label."""
    if args.model not in ("tiny", "real-width"):
        p = Path(args.model).expanduser()
        if not p.is_dir():
            sys.exit(f"--model: {p} is not a directory (use tiny, real-width, or a checkpoint dir)")
        return p, str(p)
    cache = Path(args.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from engine.tiny import TinyConfig

        digest = hashlib.sha256(json.dumps(asdict(TinyConfig()), sort_keys=True).encode()).hexdigest()
        name, label = f"tiny-mlx-q4-v{CACHE_VERSION}-{digest[:10]}", "tiny (TinyConfig(), 4-bit)"
    else:
        name = f"real-width-L{args.layers}-q4-{args.dtype}-v{CACHE_VERSION}"
        label = f"real-width, {args.layers} layers, 4-bit, {args.dtype}"
    final = cache / name
    if (final / "config.json").exists():
        return final, label
    partial = cache / f"{name}.partial-{os.getpid()}"
    log(f"writing {label} checkpoint to {final} (cached for later runs)")
    t = time.perf_counter()
    if args.model == "tiny":
        from engine.tiny import write_checkpoint

        write_checkpoint(partial, "mlx", bits=4)
    else:
        write_real_width(partial, args.layers, args.dtype, seed=args.seed)
    partial.rename(final)
    log(f"  checkpoint written in {time.perf_counter() - t:.1f} s")
    return final, label


# -- load memory (fresh subprocess) -----------------------------------------------------------


def _max_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def measure_load_child(path: str, loader: str) -> dict[str, Any]:
    """Runs in a fresh process: load the checkpoint once and report peak memory."""
    import mlx.core as mx

    from engine.loader import inspect_checkpoint

    info = inspect_checkpoint(path)
    if loader == "locus":
        from engine.loader import load_model

        def load() -> Any:
            return load_model(path)
    else:
        from mlx_lm.utils import load as mlx_lm_load

        def load() -> Any:
            return mlx_lm_load(path)

    out: dict[str, Any] = {
        "loader": loader,
        "layout": info.layout,
        "file_bytes": info.file_bytes,
        "weight_bytes": info.weight_bytes,
    }
    gc.collect()
    rss0 = _max_rss_bytes()
    mx.reset_peak_memory()
    t = time.perf_counter()
    try:
        loaded = load()
    except Exception as e:  # reported, not raised: e.g. mlx-lm rejects the per-expert layout
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        return out
    out["load_s"] = time.perf_counter() - t
    out["mx_peak_bytes"] = mx.get_peak_memory()
    out["mx_active_bytes"] = mx.get_active_memory()
    out["max_rss_bytes"] = _max_rss_bytes()
    out["rss_before_bytes"] = rss0
    out["rss_growth_bytes"] = out["max_rss_bytes"] - rss0
    out["peak_ratio"] = out["mx_peak_bytes"] / info.file_bytes
    out["rss_ratio"] = out["rss_growth_bytes"] / info.file_bytes
    del loaded
    return out


def measure_load(path: Path, loader: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-load",
        str(path),
        "--loader",
        loader,
    ]
    log(f"measuring {loader} load in a fresh process")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"loader": loader, "error": f"subprocess exited {proc.returncode}: {tail}"[:300]}
    return json.loads(lines[-1])


# -- generation -------------------------------------------------------------------------------


@dataclass
class Run:
    side: str
    position: int  # 0: ran first in its round, 1: second, ...
    prompt_tokens: int
    gen_tokens: int
    prefill_tps: float
    decode_tps: float
    ttft_s: float
    wall_s: float
    peak_memory_gb: float
    tokens: list[int] = field(repr=False)
    reported_prefill_tps: float | None = None
    reported_decode_tps: float | None = None
    events: int = 0


class Bench:
    """One loaded model, an Engine around it, and one runner per side."""

    def __init__(self, path: Path) -> None:
        from engine.engine import Engine
        from engine.loader import load_model

        t = time.perf_counter()
        self.lm = load_model(path)
        log(f"loaded {path} in {time.perf_counter() - t:.1f} s")
        # Benchmark runs always produce exactly max_tokens tokens; see the module docstring.
        self.lm.eos_token_ids = []
        self.lm.tokenizer.eos_token_ids = set()
        self.engine = Engine(self.lm)

    @property
    def vocab_size(self) -> int:
        tc = self.lm.config.get("text_config", self.lm.config)
        return int(tc.get("vocab_size") or self.lm.tokenizer.vocab_size)

    def close(self) -> None:
        self.engine.close()

    def settle(self) -> None:
        """Let work queued after the last token (the pipelined next step) finish; free buffers."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        for s in (getattr(self.engine, "_stream", None), generation_stream):
            if s is not None:
                try:
                    mx.synchronize(s)
                except Exception:  # a stream of another thread; best effort
                    pass
        gc.collect()
        mx.clear_cache()

    def run(self, side: str, prompt: list[int], gen: int, position: int = 0) -> Run:
        r = {"locus": self._locus, "mlx_lm": self._mlx_lm, "raw": self._raw}[side](prompt, gen)
        r.position = position
        self.settle()
        return r

    def _locus(self, prompt: list[int], gen: int) -> Run:
        from engine.engine import GenerationRequest
        from engine.events import Done, Usage
        from engine.sampling import SamplingParams

        req = GenerationRequest(prompt_ids=prompt, max_tokens=gen, sampling=SamplingParams(temperature=0))
        usage: Usage | None = None
        done: Done | None = None
        n_events = 0
        t0 = time.perf_counter()
        handle = self.engine.submit(req)
        for ev in handle.events():  # streamed, as a client reads them
            n_events += 1
            if isinstance(ev, Usage):
                usage = ev
            elif isinstance(ev, Done):
                done = ev
        wall = time.perf_counter() - t0
        if done is None or done.error or usage is None:
            raise RuntimeError(f"Locus request failed: {done.error if done else 'no Done event'}")
        return Run(
            "locus",
            0,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.prompt_tps,
            usage.generation_tps,
            usage.prompt_tokens / usage.prompt_tps,
            wall,
            usage.peak_memory_gb,
            list(done.token_ids),
            events=n_events,
        )

    def _mlx_lm(self, prompt: list[int], gen: int) -> Run:
        import mlx.core as mx
        from mlx_lm.generate import stream_generate

        tokens: list[int] = []
        last: Any = None
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        t_first = t0
        prompt_arr = mx.array(prompt)
        for resp in stream_generate(self.lm.model, self.lm.tokenizer, prompt_arr, max_tokens=gen):
            if not tokens:
                t_first = time.perf_counter()
            tokens.append(int(resp.token))
            last = resp
        t_end = time.perf_counter()
        n = len(tokens)
        return Run(
            "mlx_lm",
            0,
            len(prompt),
            n,
            len(prompt) / (t_first - t0),
            (n - 1) / (t_end - t_first) if n > 1 else 0.0,
            t_first - t0,
            t_end - t0,
            mx.get_peak_memory() / GB,
            tokens,
            reported_prefill_tps=last.prompt_tps,
            reported_decode_tps=last.generation_tps,
            events=n,
        )

    def _raw(self, prompt: list[int], gen: int) -> Run:
        import mlx.core as mx

        from engine.generate import generate_step
        from engine.sampling import SamplingParams, make_sampler

        cache = self.lm.model.make_cache()
        sampler = make_sampler(SamplingParams(temperature=0))
        tokens: list[int] = []
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        t_first = t0
        steps = generate_step(self.lm.model, prompt, cache, sampler=sampler)
        for tok in steps:
            if not tokens:
                t_first = time.perf_counter()
            tokens.append(tok)
            if len(tokens) >= gen:
                break
        steps.close()
        t_end = time.perf_counter()
        n = len(tokens)
        return Run(
            "raw",
            0,
            len(prompt),
            n,
            len(prompt) / (t_first - t0),
            (n - 1) / (t_end - t_first) if n > 1 else 0.0,
            t_first - t0,
            t_end - t0,
            mx.get_peak_memory() / GB,
            tokens,
            events=n,
        )


def _median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import mlx.core as mx
    import mlx_lm

    path, label = ensure_model(args)
    from engine.loader import inspect_checkpoint

    info = inspect_checkpoint(path)
    tc = info.config.get("text_config", info.config)
    report: dict[str, Any] = {
        "model": label,
        "path": str(path),
        "layout": info.layout,
        "quantization": {k: v for k, v in (info.quantization or {}).items() if not isinstance(v, dict)},
        "config": {
            k: tc.get(k)
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                "vocab_size",
            )
        },
        "checkpoint_bytes": info.file_bytes,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "runs": args.runs,
        "warmup": args.warmup,
        "platform": {
            "system": f"{platform.system()} {platform.machine()}",
            "cpus": os.cpu_count(),
            "device": str(mx.default_device()),
            "python": platform.python_version(),
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        },
    }
    if not args.no_load:
        report["load"] = {name: measure_load(path, name) for name in ("locus", "mlx-lm")}

    bench = Bench(path)
    try:
        rng = random.Random(args.seed)
        prompt = [rng.randrange(bench.vocab_size) for _ in range(args.prompt_tokens)]
        sides = ["locus", "mlx_lm"] + (["raw"] if args.include_raw else [])
        if args.warmup:
            log("warmup")
            for side in sides:
                bench.run(side, prompt, min(8, args.gen_tokens))
        runs: dict[str, list[Run]] = {s: [] for s in sides}
        for i in range(args.runs):
            order = sides if i % 2 == 0 else sides[::-1]
            for pos, side in enumerate(order):
                r = bench.run(side, prompt, args.gen_tokens, pos)
                runs[side].append(r)
                log(
                    f"run {i + 1}/{args.runs} {LABELS[side]:<32} prefill {r.prefill_tps:9.1f} "
                    f"tok/s  decode {r.decode_tps:8.2f} tok/s  wall {r.wall_s:6.2f} s"
                )
    finally:
        bench.close()

    summary: dict[str, Any] = {}
    for side, rs in runs.items():
        summary[side] = {
            "prefill_tps": _median(rs, "prefill_tps"),
            "decode_tps": _median(rs, "decode_tps"),
            "ttft_s": _median(rs, "ttft_s"),
            "wall_s": _median(rs, "wall_s"),
            "peak_memory_gb": max(r.peak_memory_gb for r in rs),
            "runs": [{k: v for k, v in asdict(r).items() if k != "tokens"} for r in rs],
        }
    report["results"] = summary
    ref = runs["locus"][0].tokens
    report["outputs_identical"] = {
        side: _first_divergence(ref, rs[0].tokens) is None for side, rs in runs.items() if side != "locus"
    }
    report["first_divergence"] = {
        side: _first_divergence(ref, rs[0].tokens) for side, rs in runs.items() if side != "locus"
    }
    report["gen_tokens_produced"] = {side: rs[0].gen_tokens for side, rs in runs.items()}
    ratios: dict[str, float | None] = {
        "decode": summary["locus"]["decode_tps"] / summary["mlx_lm"]["decode_tps"],
        "prefill": summary["locus"]["prefill_tps"] / summary["mlx_lm"]["prefill_tps"],
        "load_peak": None,
    }
    locus_load = report.get("load", {}).get("locus", {})
    if "peak_ratio" in locus_load:
        ratios["load_peak"] = locus_load["peak_ratio"]
    report["ratios"] = ratios
    report["targets"] = {
        "decode": args.target_decode,
        "prefill": args.target_prefill,
        "load_peak": args.target_load,
    }
    return report


def judge(report: dict[str, Any]) -> list[str]:
    """Every missed target and every failed side of one report, as short sentences."""
    from bench.verdict import at_least, at_most

    r, t = report["ratios"], report["targets"]
    fails = at_least("decode locus/mlx-lm", r["decode"], t["decode"])
    fails += at_least("prefill locus/mlx-lm", r["prefill"], t["prefill"])
    load = report.get("load")
    if load is not None:
        for name, d in load.items():
            if "error" in d:
                fails.append(f"{name} could not load the checkpoint: {d['error']}")
        if "error" not in load.get("locus", {}):
            fails += at_most("load peak / checkpoint bytes", r["load_peak"], t["load_peak"])
    for side, same in report["outputs_identical"].items():
        if not same:
            div = report["first_divergence"][side]
            fails.append(f"greedy tokens of {LABELS[side]} differ from Locus's from token {div}")
    for side, n in report["gen_tokens_produced"].items():
        if n != report["gen_tokens"]:
            fails.append(f"{LABELS[side]} made {n} tokens, not {report['gen_tokens']}")
    return fails


# -- output -----------------------------------------------------------------------------------


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def final_lines(report: dict[str, Any]) -> list[str]:
    r, t = report["ratios"], report["targets"]
    return [
        f"ratio decode locus/mlx-lm = {_fmt_ratio(r['decode'])} (target >= {t['decode']:.2f})",
        f"ratio prefill locus/mlx-lm = {_fmt_ratio(r['prefill'])} (target >= {t['prefill']:.2f})",
        f"load peak / checkpoint bytes = {_fmt_ratio(r['load_peak'])} (target <= {t['load_peak']:.2f})",
    ]


def print_table(report: dict[str, Any]) -> None:
    p = report["platform"]
    c = report["config"]
    print(f"model       {report['model']}")
    print(f"            {report['path']}")
    print(
        f"            layout {report['layout']}, quantization {report['quantization'] or 'none'}, "
        f"checkpoint {report['checkpoint_bytes'] / GB:.3f} GB"
    )
    print("            " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print(
        f"platform    {p['system']}, {p['cpus']} CPUs, {p['device']}, python {p['python']}, "
        f"mlx {p['mlx']}, mlx-lm {p['mlx_lm']}"
    )
    print(
        f"workload    prompt {report['prompt_tokens']} tokens (random ids), generate "
        f"{report['gen_tokens']} tokens greedy, {report['runs']} runs (median), "
        f"warmup {'on' if report['warmup'] else 'off'}, order alternating"
    )
    print()
    res = report["results"]
    head = f"{'':34}{'prefill tok/s':>14}{'decode tok/s':>14}{'TTFT s':>9}{'wall s':>9}{'peak GB':>9}"
    print(head)
    print("-" * len(head))
    for side, s in res.items():
        print(
            f"{LABELS[side]:34}{s['prefill_tps']:14.1f}{s['decode_tps']:14.2f}"
            f"{s['ttft_s']:9.3f}{s['wall_s']:9.2f}{s['peak_memory_gb']:9.3f}"
        )
    r = report["ratios"]
    print(f"{'ratio Locus / mlx-lm':34}{_fmt_ratio(r['prefill']):>14}{_fmt_ratio(r['decode']):>14}")
    if "raw" in res:
        raw = res["raw"]
        print(
            f"{'ratio Locus engine / generate_step':34}"
            f"{res['locus']['prefill_tps'] / raw['prefill_tps']:14.2f}"
            f"{res['locus']['decode_tps'] / raw['decode_tps']:14.2f}"
        )
    m = res["mlx_lm"]
    if m["runs"] and m["runs"][0].get("reported_decode_tps"):
        rep_dec = statistics.median(x["reported_decode_tps"] for x in m["runs"])
        rep_pre = statistics.median(x["reported_prefill_tps"] for x in m["runs"])
        print(
            f"(mlx-lm's own numbers: prefill {rep_pre:.1f} tok/s, decode {rep_dec:.2f} tok/s; "
            "its decode divides n tokens by n - 1 intervals)"
        )
    for side, same in report["outputs_identical"].items():
        div = report["first_divergence"][side]
        print(
            f"greedy tokens {LABELS[side]} vs Locus: "
            + ("identical" if same else f"differ from token {div}")
            + f" ({report['gen_tokens_produced'][side]} tokens)"
        )
    if "load" in report:
        print()
        head = (
            f"{'load (fresh process)':34}{'load s':>9}{'mx peak GB':>12}{'RSS +GB':>10}"
            f"{'peak/ckpt':>11}{'RSS/ckpt':>10}"
        )
        print(head)
        print("-" * len(head))
        for name, d in report["load"].items():
            label = "Locus load_model" if name == "locus" else "mlx_lm.utils.load"
            if "error" in d:
                print(f"{label:34}cannot load this checkpoint: {d['error']}")
                continue
            print(
                f"{label:34}{d['load_s']:9.2f}{d['mx_peak_bytes'] / GB:12.3f}"
                f"{d['rss_growth_bytes'] / GB:10.3f}{d['peak_ratio']:11.2f}{d['rss_ratio']:10.2f}"
            )
        print(
            f"(checkpoint {report['checkpoint_bytes'] / GB:.3f} GB on disk; RSS +GB is the growth "
            "of the process's max RSS during the load)"
        )
    print()
    for line in final_lines(report):
        print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, real-width, or a checkpoint directory")
    ap.add_argument("--layers", type=int, default=4, help="layers of the real-width model (default 4)")
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="unquantized weights and scales of the real-width model",
    )
    ap.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "bench-models"),
        help="where generated checkpoints are kept (default: %(default)s)",
    )
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per side; the median is reported")
    ap.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one short untimed run per side first (default: on)",
    )
    ap.add_argument(
        "--include-raw",
        action="store_true",
        help="also time engine.generate.generate_step directly (no engine)",
    )
    ap.add_argument("--no-load", action="store_true", help="skip the load-memory measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-decode", type=float, default=TARGET_DECODE, help="min decode ratio")
    ap.add_argument("--target-prefill", type=float, default=TARGET_PREFILL, help="min prefill ratio")
    ap.add_argument("--target-load", type=float, default=TARGET_LOAD, help="max load peak / checkpoint")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--measure-load", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--loader", choices=["locus", "mlx-lm"], default="locus", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure_load:
        print(json.dumps(measure_load_child(args.measure_load, args.loader)), flush=True)
        return 0
    if args.prompt_tokens < 2 or args.gen_tokens < 2 or args.runs < 1 or args.layers < 1:
        ap.error("--prompt-tokens and --gen-tokens must be >= 2, --runs and --layers >= 1")
    from bench.verdict import finish

    report = benchmark(args)
    report["failures"] = judge(report)
    if args.json:
        report["summary_lines"] = final_lines(report)
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return finish(report["failures"], json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
