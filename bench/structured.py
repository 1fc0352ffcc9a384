"""Structured outputs: what the constraint's token mask costs, and whether its outputs are valid.

Run from the repository root with the project's Python:

    python bench/structured.py                 # demo-model validity + real-width decode, 4 layers
    python bench/structured.py --layers 1 --samples 20 --gen-tokens 24   # quicker
    python bench/structured.py --json

Three parts, in one run:

- Validity (target 100/100 each): `--samples` requests at temperature 1 to the random demo model
  (engine.tiny's checkpoint, what `locus serve` runs without --model) through `Engine.generate`:
  a JSON schema whose strings are bounded (each output must validate and end with a normal stop),
  and a forced tool call (each must come back as one well-formed ToolCall whose arguments match the
  tool's schema).
- Decode speed at real width (target: with the mask >= 0.9x without): the real-width random
  checkpoint of bench/decode.py (Qwen3.6-35B-A3B's widths, `--layers` layers, 4-bit), with a
  realistic 248,320-token byte-level vocabulary (below), the same chat prompt three ways: free text,
  a JSON schema, a forced tool call. Both constrained ones are built so the output cannot end before
  `--gen-tokens` (a string of at least 4000 characters), so each run decodes exactly as many tokens.
  Decode tok/s is the engine's Usage (n - 1 tokens over the time from the first to the last); the
  median of `--runs` runs per mode, modes interleaved. mlx-lm's `stream_generate` on the same model
  and prompt is the peer (free text; its ratio is printed, no target).
- Mask cost per token at the real vocabulary: llguidance computing the mask plus MLX applying it to a
  (1, 248320) row, timed alone over the tokens of a constrained output.

The real Qwen tokenizer is not available offline, so the vocabulary is built: 256 byte tokens, the
most frequent pieces (words with and without a leading space, numbers, punctuation runs, up to 16
characters) of the Python standard library's sources, 12,000 CJK characters and 6,000 pairs,
Qwen's special tokens at their real ids. bench/decode.py's own vocabulary (letters only) would
flatter the mask: JSON masks are cheap when few tokens hold quotes, digits or braces.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_VALID = 1.0
TARGET_DECODE = 0.9
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "owner": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999}},
                    "required": ["id"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "required": ["name", "age", "tags", "kind", "owner"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14},
                    "units": {"type": "string", "enum": ["C", "F"]},
                    "hourly": {"type": "boolean"},
                },
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
# Outputs that cannot end before --gen-tokens, so that every speed run decodes as many tokens.
LONG_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 4000}},
    "required": ["text"],
}
LONG_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "maxLength": 1}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    }
]
MESSAGES = [{"role": "user", "content": "Describe a pet as JSON."}]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the realistic vocabulary -------------------------------------------------------------------------


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE's alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _pieces(limit: int) -> list[str]:
    """The most frequent pieces of the standard library's sources (and their prefixes)."""
    counts: collections.Counter[str] = collections.Counter()
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\w+| ?\d{1,3}| ?[^\s\w]+|\s+""")
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:3000]:
        try:
            text = f.read_text("utf-8")
        except (OSError, UnicodeError):
            continue
        for m in pat.findall(text):
            for k in range(2, min(len(m), 16) + 1):
                counts[m[:k]] += 1
    return [p for p, _ in counts.most_common(limit)]


def write_wide_tokenizer(path: Path, vocab_size: int = 248320) -> None:
    """tokenizer.json (+ config files) with a realistic vocabulary of `vocab_size` ids (see top)."""
    from engine.tiny import SPECIAL_TOKENS, _special_ids, write_generation_config, write_tokenizer_config

    ids = _special_ids(vocab_size)
    n_regular = min(ids.values())
    bm = _byte_chars()
    toks = [bm[b] for b in range(256)]
    seen = set(toks)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 12000)]
    extra = cjk + [a + b for a, b in zip(cjk[::2], cjk[1::2], strict=True)]
    for piece in _pieces(n_regular):
        if len(toks) >= n_regular - len(extra):
            break
        t = "".join(bm[b] for b in piece.encode())
        if t not in seen:
            seen.add(t)
            toks.append(t)
    for piece in extra:
        t = "".join(bm[b] for b in piece.encode())
        if len(toks) < n_regular and t not in seen:
            seen.add(t)
            toks.append(t)
    while len(toks) < n_regular:
        toks.append(f"Ġpad{len(toks)}")
    added = [
        {"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": s}
        for t, s in SPECIAL_TOKENS
    ]
    top = n_regular + len(SPECIAL_TOKENS)
    added += [
        {"id": i, "content": f"<|unused_{i}|>", "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i in range(top, vocab_size)
    ]
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None}
    model |= {"end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True}
    model |= {"vocab": {t: i for i, t in enumerate(toks)}, "merges": []}
    body = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added}
    body |= {"normalizer": None, "pre_tokenizer": level, "post_processor": None, "decoder": level}
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps({**body, "model": model}))
    write_tokenizer_config(path, vocab_size, model_max_length=262144)
    write_generation_config(path, vocab_size)


def wide_model(layers: int, cache_dir: str) -> Path:
    """bench/decode.py's real-width checkpoint, seen through the realistic vocabulary (weights linked)."""
    from bench import decode

    src, _ = decode.ensure_model(
        argparse.Namespace(model="real-width", layers=layers, cache_dir=cache_dir, dtype="float32", seed=0)
    )
    dst = Path(cache_dir) / f"{src.name}-widevocab"
    if (dst / "tokenizer.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".safetensors",) or f.name in ("config.json", "model.safetensors.index.json"):
            (tmp / f.name).unlink(missing_ok=True)
            (tmp / f.name).symlink_to(f.resolve())
    log("writing the 248,320-token vocabulary")
    write_wide_tokenizer(tmp)
    tmp.rename(dst)
    return dst


# -- validity on the demo model ------------------------------------------------------------------


def validity(samples: int, cache_dir: str) -> dict[str, Any]:
    """JSON-schema and forced-call outputs of the random demo model at temperature 1."""
    import jsonschema

    from app.demo import demo_model_dir
    from engine import Engine, GenerationRequest, SamplingParams

    eng = Engine.from_path(str(demo_model_dir(cache_dir)))
    out: dict[str, Any] = {"samples": samples, "json_valid": 0, "json_stop": 0, "call_valid": 0, "bad": []}
    weather = TOOLS[0]["function"]["parameters"]
    try:
        for seed in range(samples):
            sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
            r = eng.generate(
                GenerationRequest(
                    messages=MESSAGES,
                    enable_thinking=seed % 2 == 1,
                    thinking_budget=16,
                    max_tokens=400,
                    response_format={"type": "json_schema", "schema": SCHEMA},
                    sampling=sampling,
                )
            )
            try:
                jsonschema.validate(json.loads(r.text), SCHEMA)
                out["json_valid"] += 1
            except (ValueError, jsonschema.ValidationError) as e:
                out["bad"].append(f"json seed {seed}: {e}"[:200])
            out["json_stop"] += r.finish_reason == "stop"
            r = eng.generate(
                GenerationRequest(
                    messages=MESSAGES,
                    tools=TOOLS,
                    tool_choice="required" if seed % 2 else "get_weather",
                    parallel_tool_calls=seed % 4 < 2,
                    max_tokens=400,
                    sampling=sampling,
                )
            )
            calls = r.tool_calls
            ok = bool(calls) and not r.tool_call_errors and r.finish_reason == "stop"
            ok = ok and all(c.name != "get_weather" or _valid(c.arguments, weather) for c in calls)
            ok = ok and (seed % 4 < 2 or len(calls) == 1)
            out["call_valid"] += ok
            if not ok:
                out["bad"].append(
                    f"call seed {seed}: {r.tool_calls} {r.tool_call_errors} {r.finish_reason}"[:200]
                )
    finally:
        eng.close()
    return out


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        jsonschema.validate(value, schema)
        return True
    except jsonschema.ValidationError:
        return False


# -- decode speed at real width --------------------------------------------------------------------


def _run(eng: Any, mode: str, gen: int) -> tuple[float, int, list[int]]:
    from engine import GenerationRequest, SamplingParams

    extra: dict[str, Any] = {}
    if mode == "json":
        extra = {"response_format": {"type": "json_schema", "schema": LONG_SCHEMA}}
    elif mode == "call":
        extra = {"tools": LONG_TOOLS, "tool_choice": "write_file"}
    req = GenerationRequest(
        messages=MESSAGES,
        enable_thinking=False,
        max_tokens=gen,
        sampling=SamplingParams(temperature=1.0, seed=1),
        use_cache=False,
        **extra,
    )
    r = eng.generate(req)
    if r.error or r.usage is None:
        raise RuntimeError(f"{mode}: {r.error}")
    return r.usage.generation_tps, r.usage.completion_tokens, r.token_ids


def _mlx_lm(lm: Any, prompt: list[int], gen: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    n, t_first = 0, 0.0
    for _ in stream_generate(lm.model, lm.tokenizer, mx.array(prompt), max_tokens=gen):
        n += 1
        if n == 1:
            t_first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - t_first) if n > 1 else 0.0


def mask_cost(lm: Any, eng: Any, tokens: list[int]) -> dict[str, float]:
    """Per token: llguidance's mask alone, and mask + MLX applying it to a real-width row (µs)."""
    import mlx.core as mx

    from engine import GenerationRequest
    from engine.sampling import constraint_processors

    req = GenerationRequest(messages=MESSAGES, response_format={"type": "json_schema", "schema": LONG_SCHEMA})
    vocab = eng.info.vocab_size
    (c,) = constraint_processors(
        req, lm.tokenizer, start=0, reasoning=False, vocab_size=vocab, eos_ids=sorted(lm.eos_token_ids)
    )
    row = mx.random.normal((1, vocab))
    mx.eval(row)
    fill, whole = [], []
    for i in range(len(tokens)):
        hist = tokens[:i]
        t = time.perf_counter()
        c._sync(hist)  # the matcher takes token i - 1, then the mask is computed
        c.allowed()
        fill.append(time.perf_counter() - t)
        t = time.perf_counter()
        mx.eval(c(hist, row))  # the whole processor: (nothing new to take), mask, MLX applies it
        whole.append(time.perf_counter() - t)
    return {
        "mask_us": 1e6 * statistics.mean(fill),
        "mask_and_apply_us": 1e6 * statistics.mean(whole),
        "tokens": len(tokens),
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    from engine import Engine, GenerationRequest
    from engine.loader import load_model

    path = wide_model(args.layers, args.cache_dir)
    lm = load_model(path)
    eng = Engine(lm)
    runs: dict[str, list[float]] = {"free": [], "json": [], "call": [], "mlx_lm": []}
    made: dict[str, int] = {}
    json_tokens: list[int] = []
    try:
        prompt = eng.encode(GenerationRequest(messages=MESSAGES, enable_thinking=False))[0]
        for mode in ("free", "json", "call"):  # warm-up (and llguidance's tokenizer, ~1 s once)
            _run(eng, mode, 4)
        for i in range(args.runs):
            for mode in ("free", "json", "call")[:: 1 if i % 2 == 0 else -1]:
                tps, n, ids = _run(eng, mode, args.gen_tokens)
                runs[mode].append(tps)
                made[mode] = n
                if mode == "json":
                    json_tokens = ids
                log(f"  run {i + 1} {mode}: {tps:.2f} tok/s ({n} tokens)")
            runs["mlx_lm"].append(_mlx_lm(lm, prompt, args.gen_tokens))
        cost = mask_cost(lm, eng, json_tokens)
    finally:
        eng.close()
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    return {
        "model": str(path),
        "layers": args.layers,
        "gen_tokens": args.gen_tokens,
        "produced": made,
        "decode_tps": med,
        "ratios": {
            "json_vs_free": med["json"] / med["free"],
            "call_vs_free": med["call"] / med["free"],
            "free_vs_mlx_lm": med["free"] / med["mlx_lm"] if med.get("mlx_lm") else None,
        },
        "step_ms_free": 1e3 / med["free"],
        **cost,
    }


# -- verdict -------------------------------------------------------------------------------------------


def judge(report: dict[str, Any]) -> list[str]:
    """Each missed target (validity 100%, constrained decode >= 0.9x free) as a sentence."""
    from bench.verdict import at_least

    fails: list[str] = []
    v = report.get("validity")
    if v is not None:
        n = max(v["samples"], 1)
        fails += at_least("JSON outputs valid", v["json_valid"] / n, TARGET_VALID)
        fails += at_least("JSON outputs ending with a normal stop", v["json_stop"] / n, TARGET_VALID)
        fails += at_least("forced calls valid", v["call_valid"] / n, TARGET_VALID)
    s = report.get("speed")
    if s is not None:
        fails += at_least(
            "decode with a JSON schema vs free text", s["ratios"]["json_vs_free"], TARGET_DECODE
        )
        fails += at_least(
            "decode with a forced call vs free text", s["ratios"]["call_vs_free"], TARGET_DECODE
        )
        for mode, n in s["produced"].items():
            if n != s["gen_tokens"]:
                fails.append(f"{mode} decoded {n} tokens, not {s['gen_tokens']}")
    return fails


def print_report(report: dict[str, Any]) -> None:
    v = report.get("validity")
    if v:
        n = v["samples"]
        print(f"validity on the random demo model, {n} samples at temperature 1:")
        print(f"  JSON schema: {v['json_valid']}/{n} valid, {v['json_stop']}/{n} ended with a normal stop")
        print(f"  forced tool call: {v['call_valid']}/{n} well-formed calls matching the tool's schema")
        for b in v["bad"][:5]:
            print(f"    {b}")
    s = report.get("speed")
    if s:
        d, r, t = s["decode_tps"], s["ratios"], TARGET_DECODE
        print(f"decode at real width ({s['layers']} layers, vocabulary 248,320), {s['gen_tokens']} tokens:")
        print(
            f"  free text {d['free']:.2f} tok/s ({s['step_ms_free']:.1f} ms/token); mlx-lm {d['mlx_lm']:.2f}"
        )
        print(f"  JSON schema {d['json']:.2f} tok/s = {r['json_vs_free']:.3f}x free (target >= {t})")
        print(f"  forced call {d['call']:.2f} tok/s = {r['call_vs_free']:.3f}x free (target >= {t})")
        print(f"  free text vs mlx-lm: {r['free_vs_mlx_lm']:.3f}x")
        print(
            f"  mask per token at the real vocabulary: {s['mask_us']:.0f} µs to compute (llguidance), "
            f"{s['mask_and_apply_us']:.0f} µs with MLX applying it (over {s['tokens']} tokens)"
        )


def main(argv: list[str] | None = None) -> int:
    from bench.verdict import finish

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=100, help="validity samples per kind (default 100)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the real-width model (default 4)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per mode; the median is reported")
    ap.add_argument("--skip-speed", action="store_true", help="only the validity part")
    ap.add_argument("--skip-validity", action="store_true", help="only the speed part")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "bench-models"))
    args = ap.parse_args(argv)
    report: dict[str, Any] = {}
    if not args.skip_validity:
        log(f"validity: {args.samples} samples per kind on the demo model")
        report["validity"] = validity(args.samples, args.cache_dir)
    if not args.skip_speed:
        log(f"speed: real width, {args.layers} layers")
        report["speed"] = speed(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return finish(judge(report), json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
