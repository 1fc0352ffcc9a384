"""Prompt-cache memory over a long agent session with sub-agents: Locus against `mlx_lm.server`.

Run from the repository root with the project's Python:

    python bench/cache_memory.py                  # 32K -> 64K tokens (slow on a CPU)
    python bench/cache_memory.py --scale 0.125    # 4K -> 8K tokens, blocks of 32: same ratios
    python bench/cache_memory.py --json

The model has the real Qwen3.6 KV shape per full-attention layer (2 KV heads x head_dim 256) and
few layers (3 Gated DeltaNet + 1 full attention, random 4-bit weights, float32 activations, so
its KV per token is one layer's at 4 bytes a value), with its output restricted to plain
characters so that replies render back to the very ids generated (bench/agent_session.py).

The session: a main agent whose prompt grows from 32K to 64K tokens over 10 turns (a long system
prompt + tools, then a tool result per turn), and 3 sub-agents started after turns 3, 5 and 7,
each sharing the system prompt and tools and running 3 turns of their own. Both sides get the
same OpenAI-style messages, one request at a time:

- Locus: `engine.Engine` with its `PromptCache` (default budget, from free memory; spilling to a
  temporary directory) in a child process of this script, so its RSS is its own.
- mlx-lm: `mlx_lm.server` as a subprocess, prompt cache on (its defaults).

Per request: prompt tokens, tokens new to that session, tokens each side prefilled, each process's
RSS; for Locus also the snapshot bytes in memory (blocks counted once), bytes written to disk, and
what the same snapshots would take without sharing (round 2: each copies its whole prefix). At
the end Locus flushes its snapshots to disk as it does on exit (each block written once).

Targets (issue 29): Locus's snapshot bytes added per request (memory + disk written) at most 1.2 x
the KV of its new tokens + one Gated DeltaNet state per snapshot it stored, and the same for what
the final flush writes; prefilled tokens at most 1.1 x new (round 2's target); Locus's peak RSS at
most mlx_lm.server's. `--scale` multiplies every token count and the block size (256 tokens) alike,
so the ratios the targets test stay the same. On a shared CPU the times (and so the RSS of
transient buffers) are noisy; the byte counts are exact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_session import (  # noqa: E402
    CLAUDE_CODE_SYSTEM,
    TOOLS,
    Counter,
    MlxServerSide,
    SideFailed,
    restrict_output,
    tool_output,
)

from bench.verdict import at_most, finish  # noqa: E402

MB = 1024 * 1024
MODEL_VERSION = 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss(pid: int | str = "self") -> tuple[int, int]:
    """(current, peak) resident memory of a process, bytes (Linux /proc; ps elsewhere: no peak)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        vals = {}
        for line in status.read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) * 1024
        return vals.get("VmRSS", 0), vals.get("VmHWM", 0)
    out = subprocess.run(
        ["ps", "-o", "rss=", "-p", str(os.getpid() if pid == "self" else pid)], capture_output=True
    )
    cur = int(out.stdout.strip() or 0) * 1024
    return cur, cur


# -- the model ------------------------------------------------------------------------------------


def ensure_model(cache: Path) -> tuple[Path, Path]:
    """(restricted checkpoint, its unrestricted source), written once and cached."""
    from engine.tiny import TinyConfig, write_checkpoint

    src = cache / f"kv-shape-src-v{MODEL_VERSION}"
    dst = cache / f"kv-shape-plain-v{MODEL_VERSION}"
    if not (src / "config.json").exists():
        cfg = TinyConfig(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2, head_dim=256
        )
        tmp = cache / f"kv-shape-src.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, "mlx", bits=4, cfg=cfg)
        tmp.rename(src)
    restrict_output(src, dst)
    return dst, src


# -- the Locus side: an engine in a child process ---------------------------------------------------


def child_main(path: str, block_tokens: int, disk_dir: str) -> None:
    """Serve turns read as JSON lines on stdin; answer each with a JSON line on stdout."""
    from engine import Done, Engine, GenerationRequest, PromptCache, ReasoningDelta, SamplingParams, TextDelta

    pc = PromptCache(disk_dir=disk_dir, block_tokens=block_tokens)
    eng = Engine.from_path(path, prompt_cache=pc, context_tokens=262144, memory_check=False)
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers go to the parent
    for line in sys.stdin:
        job = json.loads(line)
        if job.get("op") == "close":
            eng.close()
            out.write(json.dumps({"budget": pc.budget(), "rss": rss()}) + "\n")
            out.flush()
            return
        req = GenerationRequest(
            messages=job["messages"],
            tools=TOOLS,
            sampling=SamplingParams(temperature=0.0),
            max_tokens=job["max_tokens"],
            session=job["session"],
        )
        t0 = time.perf_counter()
        reasoning, content, done = [], [], None
        for ev in eng.submit(req).events():
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
            elif isinstance(ev, TextDelta):
                content.append(ev.text)
            elif isinstance(ev, Done):
                done = ev
        if done is None or done.finish_reason == "error" or done.usage is None:
            out.write(json.dumps({"error": str(getattr(done, "error", done))}) + "\n")
            out.flush()
            continue
        snaps = pc.snapshots()
        state = sum(
            a.nbytes
            for s in snaps[-1:]
            for arrs, lay in zip(s.own or [], s.layout, strict=False)
            if lay == "state"
            for a in arrs
        )
        blocks = pc.budget()["blocks"]
        kv_token = pc.blocks.memory_bytes() / max(1, blocks * block_tokens)
        answer = {
            "prompt_tokens": done.usage.prompt_tokens,
            "cached": done.usage.cached_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "reasoning": "".join(reasoning),
            "content": "".join(content),
            "wall": time.perf_counter() - t0,
            "budget": pc.budget(),
            "whole_prefix_bytes": sum(s.nbytes for s in snaps),
            "state_bytes": state,
            "kv_per_token": kv_token,
            "rss": rss(),
        }
        out.write(json.dumps(answer) + "\n")
        out.flush()


class LocusChild:
    name = "Locus"

    def __init__(self, path: Path, block_tokens: int, disk_dir: Path) -> None:
        cmd = [sys.executable, __file__, "--child", str(path), str(block_tokens), str(disk_dir)]
        self.log = tempfile.NamedTemporaryFile(prefix="locus-child-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def ask(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SideFailed(f"the Locus child exited; see {self.log.name}")
        answer = json.loads(line)
        if "error" in answer:
            raise SideFailed(f"Locus: {answer['error']}")
        return answer

    def close(self) -> dict[str, Any]:
        answer = self.ask({"op": "close"})
        self.proc.wait(60)
        return answer


# -- the session --------------------------------------------------------------------------------


@dataclass
class Step:
    session: str
    turn: int
    prompt_tokens: int = 0
    new: int = 0
    prefilled: int = 0
    rss: int = 0
    peak_rss: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Script:
    """The requests of the session, in order, built from each side's own replies."""

    def __init__(self, count: Counter, scale: float, turns: int, subagents: int) -> None:
        self.count = count
        self.turns, self.subagents = turns, subagents
        sys_tokens = int(16384 * scale)
        unit = len(count.tok.encode(CLAUDE_CODE_SYSTEM, add_special_tokens=False))
        chars = int(len(CLAUDE_CODE_SYSTEM) * sys_tokens / unit)
        self.system = (CLAUDE_CODE_SYSTEM * (sys_tokens // unit + 1))[:chars]
        with_system = count.ids(
            [{"role": "system", "content": self.system}, {"role": "user", "content": "y"}]
        )
        self.first_lines = self.lines_for(0, int(32768 * scale) - len(with_system))
        # Each turn adds a reply and the call's wrapping too (about 60 tokens with 16-token replies).
        self.turn_lines = self.lines_for(1, int(32768 * scale / max(1, turns - 1)) - 60)
        self.sub_lines = self.lines_for(1, int(3072 * scale))

    def lines_for(self, k: int, tokens: int) -> int:
        """How many functions `tool_output(k, ...)` needs to take about `tokens` tokens."""
        lo, hi = 1, 1
        size = lambda n: len(self.count.tok.encode(tool_output(k, n), add_special_tokens=False))  # noqa: E731
        while size(hi) < tokens:
            lo, hi = hi, hi * 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if size(mid) < tokens else (lo, mid)
        return lo

    def order(self) -> list[tuple[str, int]]:
        """(session, turn) in the order they run: sub-agents start after main turns 3, 5, 7."""
        out = []
        starts = {3 + 2 * i: f"sub{i + 1}" for i in range(self.subagents)}
        for k in range(1, self.turns + 1):
            out.append(("main", k))
            if k in starts:
                out += [(starts[k], j) for j in range(1, 4)]
        return out

    def first_user(self, session: str) -> dict[str, Any]:
        lines = self.first_lines if session == "main" else self.sub_lines
        task = (
            "The test suite fails in src/. Find the bug and fix it."
            if session == "main"
            else (f"Sub-task {session}: review src/module_{session[-1]}.py and report problems.")
        )
        return {"role": "user", "content": task + "\n\n" + tool_output(0, lines)}

    def tool_turn(self, session: str, k: int, reply: dict[str, Any]) -> list[dict[str, Any]]:
        call = {
            "id": f"call_{session}_{k}",
            "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/module_{k}.py"})},
        }
        lines = self.turn_lines if session == "main" else self.sub_lines
        return [
            {
                "role": "assistant",
                "content": reply["content"],
                "reasoning_content": reply["reasoning"],
                "tool_calls": [call],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": tool_output(k, lines)},
        ]


def run_side(side: Any, script: Script, max_tokens: int, locus: bool) -> list[Step]:
    histories: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, int] = {}
    sessions = {name: f"bench-{name}-{secrets.token_hex(3)}" for name, _ in script.order()}
    steps = []
    for name, k in script.order():
        hist = histories.setdefault(name, [script.first_user(name)])
        messages = [{"role": "system", "content": script.system}, *hist]
        ids = script.count.ids(messages)
        if name in last:
            new = len(ids) - last[name]
        elif name == "main":
            new = len(ids)
        else:  # a sub-agent's own messages: everything after the shared system prompt + tools
            new = len(ids) - script.count.user_starts(ids)[0]
        t0 = time.perf_counter()
        if locus:
            a = side.ask({"messages": messages, "max_tokens": max_tokens, "session": sessions[name]})
            cur, peak = a["rss"]
            reply = {"content": a["content"], "reasoning": a["reasoning"]}
            step = Step(name, k, a["prompt_tokens"], new, a["prompt_tokens"] - a["cached"], cur, peak, a)
            done = a["completion_tokens"]
        else:
            t = side.turn(messages, max_tokens, sessions[name])
            cur, peak = rss(side.proc.pid)
            reply = {"content": t.content, "reasoning": t.reasoning}
            step = Step(name, k, t.prompt_tokens, new, t.prefilled, cur, peak)
            done = t.completion_tokens
        took = time.perf_counter() - t0
        log(
            f"  [{side.name}] {name} turn {k}: prompt {step.prompt_tokens}, new {new}, prefilled "
            f"{step.prefilled}, RSS {cur / MB:.0f} MB (peak {peak / MB:.0f}), {took:.1f} s"
        )
        last[name] = len(ids) + done
        hist += script.tool_turn(name, k, reply)
        steps.append(step)
    return steps


# -- KV quantization: greedy agreement -----------------------------------------------------------


def kv_agreement(src: Path, prompts: int, tokens: int, forced: int = 1024) -> dict[str, float]:
    """8-bit against full-precision KV, same model: (1) greedy continuations of `prompts` prompts,
    the share of tokens equal position by position and how many continuations are identical;
    (2) teacher-forced over `forced` tokens fed in chunks of 128 (so attention reads earlier keys
    from the cache), how often the top-1 token agrees and the mean |logit difference|."""
    import mlx.core as mx

    from engine import Engine, GenerationRequest, PromptCache, SamplingParams, load_model

    outs: dict[Any, list[list[int]]] = {}
    logits: dict[Any, mx.array] = {}
    text = " ".join(tool_output(k, 8) for k in range(40))
    for bits in (None, 8):
        eng = Engine(prompt_cache=PromptCache(memory_bytes=0))
        eng.load(str(src), kv_bits=bits, memory_check=False, context_tokens=262144)
        outs[bits] = []
        for i in range(prompts):
            ask = tool_output(i + 1, 30 + 20 * i) + f"\nWhat does handler_{i}_3 return?"
            req = GenerationRequest(
                messages=[{"role": "user", "content": ask}],
                sampling=SamplingParams(temperature=0.0),
                max_tokens=tokens,
                use_cache=False,
            )
            outs[bits].append(eng.generate(req).token_ids)
        eng.close()
        lm = load_model(src, kv_bits=bits, memory_check=False)
        ids = mx.array([lm.tokenizer.encode(text)[:forced]])
        cache, parts = lm.model.make_cache(), []
        for a in range(0, ids.shape[1], 128):
            parts.append(lm.model(ids[:, a : a + 128], cache=cache).astype(mx.float32))
            mx.eval(parts[-1])
        logits[bits] = mx.concatenate(parts, axis=1)[0]
    same = total = identical = 0
    for a, b in zip(outs[None], outs[8], strict=True):
        n = min(len(a), len(b))
        same += sum(x == y for x, y in zip(a[:n], b[:n], strict=True))
        total += max(len(a), len(b))
        identical += a == b
    fp, q = logits[None], logits[8]
    top1 = mx.mean(mx.argmax(fp, axis=-1) == mx.argmax(q, axis=-1)).item()
    diff = mx.mean(mx.abs(fp - q)).item() / max(mx.std(fp).item(), 1e-9)
    return {
        "agreement": same / max(1, total),
        "identical": identical,
        "prompts": prompts,
        "tokens": tokens,
        "forced_tokens": int(fp.shape[0]),
        "top1_agreement": top1,
        "mean_abs_logit_diff_over_std": diff,
    }


# -- report -------------------------------------------------------------------------------------


def locus_growth(steps: list[Step]) -> list[dict[str, float]]:
    """Per Locus request: snapshot bytes added in memory, the disk written, and the limit."""
    rows, prev = [], {"memory_used_bytes": 0, "disk_written_bytes": 0, "snapshots": 0, "evictions": 0}
    for st in steps:
        b = st.extra["budget"]
        stored = b["snapshots"] - prev["snapshots"] + b["evictions"] - prev["evictions"]
        limit = 1.2 * st.extra["kv_per_token"] * st.new + st.extra["state_bytes"] * stored
        rows.append(
            {
                "added": b["memory_used_bytes"] - prev["memory_used_bytes"],
                "written": b["disk_written_bytes"] - prev["disk_written_bytes"],
                "stored": stored,
                "limit": limit,
            }
        )
        prev = b
    return rows


def report(
    loc: list[Step], mlx: list[Step] | None, final: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    rows = locus_growth(loc)
    head = f"{'request':>10} {'prompt':>7} {'new':>6} {'L pre':>6} {'L mem MB':>9}"
    head += f" {'added MB':>9} {'limit MB':>9}"
    head += f" {'L RSS':>6}" + (f" {'M pre':>6} {'M RSS':>6}" if mlx else "")
    print(head)
    for i, (st, g) in enumerate(zip(loc, rows, strict=True)):
        used = st.extra["budget"]["memory_used_bytes"]
        line = (
            f"{st.session + ' ' + str(st.turn):>10} {st.prompt_tokens:7d} {st.new:6d} {st.prefilled:6d} "
            f"{used / MB:9.1f} {g['added'] / MB:9.2f} {g['limit'] / MB:9.2f} {st.rss / MB:6.0f}"
        )
        if mlx:
            line += f" {mlx[i].prefilled:6d} {mlx[i].rss / MB:6.0f}"
        print(line)
    new = sum(st.new for st in loc)
    kv = loc[-1].extra["kv_per_token"]
    state = loc[-1].extra["state_bytes"]
    budget = final["budget"]
    written = budget["disk_written_bytes"]
    snaps_written = budget["disk_snapshots"]
    out = {
        "requests": len(loc),
        "new_tokens": new,
        "kv_bytes_per_token": kv,
        "state_bytes": state,
        "locus_prefilled": sum(st.prefilled for st in loc),
        "locus_memory_used_bytes": loc[-1].extra["budget"]["memory_used_bytes"],
        "locus_whole_prefix_bytes": loc[-1].extra["whole_prefix_bytes"],
        "locus_added_bytes": sum(g["added"] for g in rows),
        "locus_added_limit": sum(g["limit"] for g in rows),
        "locus_disk_written_bytes": written,
        "locus_disk_used_bytes": budget["disk_used_bytes"],
        "locus_disk_limit": 1.2 * kv * new + state * snaps_written,
        "locus_peak_rss": max(st.peak_rss for st in loc),
        "locus_final_rss": loc[-1].rss,
    }
    if mlx:
        out |= {
            "mlx_prefilled": sum(st.prefilled for st in mlx),
            "mlx_peak_rss": max(st.peak_rss for st in mlx),
            "mlx_final_rss": mlx[-1].rss,
        }
    fails = at_most(
        "Locus snapshot bytes added / limit", out["locus_added_bytes"] / out["locus_added_limit"], 1.0
    )
    fails += at_most("Locus disk written / limit", written / out["locus_disk_limit"], 1.0)
    fails += at_most("Locus prefilled / new", out["locus_prefilled"] / new, 1.1)
    if mlx:
        fails += at_most("Locus peak RSS / mlx_lm.server's", out["locus_peak_rss"] / out["mlx_peak_rss"], 1.0)
    return out, fails


def print_summary(out: dict[str, Any], agreement: dict[str, float] | None) -> None:
    n = out["requests"]
    written, disk_limit = out["locus_disk_written_bytes"], out["locus_disk_limit"]
    print(
        f"\nKV per token {out['kv_bytes_per_token'] / 1024:.1f} KB (one full-attention layer, float32), "
        f"Gated DeltaNet state {out['state_bytes'] / 1024:.1f} KB per snapshot"
    )
    print(
        f"Locus snapshots in memory: {out['locus_memory_used_bytes'] / MB:.1f} MB (blocks counted once); "
        "the same snapshots each copying their whole prefix (round 2): "
        f"{out['locus_whole_prefix_bytes'] / MB:.1f} MB"
    )
    print(
        f"Snapshot bytes added: {out['locus_added_bytes'] / MB:.1f} MB over {n} requests, limit "
        f"{out['locus_added_limit'] / MB:.1f} MB (1.2 x KV of new tokens + a state per snapshot stored): "
        f"{out['locus_added_bytes'] / out['locus_added_limit']:.2f}"
    )
    print(
        f"Disk: {written / MB:.1f} MB written in all ({written / n / MB:.2f} MB per request), "
        f"{out['locus_disk_used_bytes'] / MB:.1f} MB on disk; limit {disk_limit / MB:.1f} MB: "
        f"{written / disk_limit:.2f}"
    )
    pre = f"Prefilled: Locus {out['locus_prefilled']:,} of {out['new_tokens']:,} new tokens "
    pre += f"({out['locus_prefilled'] / out['new_tokens']:.2f} x)"
    if "mlx_prefilled" in out:
        pre += f", mlx_lm.server {out['mlx_prefilled']:,} ({out['mlx_prefilled'] / out['new_tokens']:.2f} x)"
    print(pre)
    if "mlx_peak_rss" in out:
        lp, mp = out["locus_peak_rss"], out["mlx_peak_rss"]
        print(
            f"Peak RSS: Locus {lp / MB:.0f} MB, mlx_lm.server {mp / MB:.0f} MB ({lp / mp:.2f} x); "
            f"at the end {out['locus_final_rss'] / MB:.0f} and {out['mlx_final_rss'] / MB:.0f} MB"
        )
    if agreement:
        a = agreement
        print(
            f"--kv-bits 8 against float32 KV: greedy, {a['prompts']} prompts x up to {a['tokens']} tokens: "
            f"{a['agreement']:.1%} of tokens equal, {a['identical']} of {a['prompts']} continuations "
            "identical; "
            f"teacher-forced over {a['forced_tokens']} tokens: top-1 agrees at {a['top1_agreement']:.1%} of "
            f"positions, mean |logit difference| {a['mean_abs_logit_diff_over_std']:.4f} of the logits' std"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1], int(argv[2]), argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies token counts and the block size")
    ap.add_argument("--turns", type=int, default=10, help="turns of the main session (default 10)")
    ap.add_argument("--subagents", type=int, default=3, help="sub-agent sessions (default 3)")
    ap.add_argument("--reply-tokens", type=int, default=16, help="tokens per reply (default 16)")
    ap.add_argument("--skip-mlx", action="store_true", help="Locus only (no RSS target)")
    ap.add_argument(
        "--agreement-tokens", type=int, default=48, help="greedy tokens per prompt for --kv-bits 8"
    )
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "bench-models"))
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path, src = ensure_model(cache)
    block = max(8, round(256 * args.scale))
    script = Script(Counter(path), args.scale, args.turns, args.subagents)
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="cache-memory-"))
    try:
        log(f"Locus (blocks of {block} tokens)")
        side = LocusChild(path, block, work / "prompt-cache")
        loc = run_side(side, script, args.reply_tokens, locus=True)
        final = side.close()
        mlx = None
        if not args.skip_mlx:
            log("mlx_lm.server")
            ms = MlxServerSide(path, args.reply_tokens)
            try:
                mlx = run_side(ms, script, args.reply_tokens, locus=False)
            finally:
                ms.close()
    except SideFailed as e:
        return finish([str(e)], json_mode=args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    agreement = kv_agreement(src, 8, args.agreement_tokens)
    # With --json, stdout carries the JSON only: the tables go to stderr.
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        out, failures = report(loc, mlx, final)
        out["kv_bits_8"] = agreement
        out["scale"], out["block_tokens"] = args.scale, block
        print_summary(out, agreement)
    if args.json:
        print(json.dumps({"summary": out, "locus": [asdict(s) | {"extra": {}} for s in loc]}, indent=1))
    return finish(failures, json_mode=args.json)


if __name__ == "__main__":
    sys.exit(main())
