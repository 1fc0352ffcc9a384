"""Prompt-cache reuse over long sessions: Locus's engine against `mlx_lm.server`, same model, same turns.

Run from the repository root with the project's Python:

    python bench/agent_session.py                              # tiny random 4-bit model
    python bench/agent_session.py --model real-width --layers 4  # Qwen3.6 widths, 4 layers
    python bench/agent_session.py --scenarios AC --json

Each scenario is a scripted client session replayed against both sides:

- Locus: `engine.Engine` in this process with a `PromptCache` spilling to a temporary directory
  (what `locus serve` and the app use). Claude Code's billing line is removed with the server's own
  `strip_billing_header`, as `locus serve` does before templating.
- mlx-lm: `python -m mlx_lm.server` as a subprocess on the same checkpoint, prompt cache on, fed
  the same messages through its OpenAI endpoint (streaming, `include_usage`).

A random model cannot write tool calls, so the client plays the agent harness: it sends back each
reply as the model wrote it (reasoning under `reasoning_content`, the field the Qwen template reads)
and adds the tool call and its result itself, as a harness would after a real model's call. So that
replies render back to the very token ids that were generated, the benchmark model is the chosen
checkpoint with every unembedding row zeroed except single-character tokens that never merge with
each other (letters and digits): both sides then emit `--reply-tokens` plain characters per turn and
never stop early. Its speed is the original model's; only which token wins changes.

Per turn: prompt tokens, tokens new to the conversation (prompt minus the previous prompt and the
previous reply), tokens each side actually prefilled (prompt − cached, from each side's usage) and
time to first token. Totals and ratios follow, with the issue's targets.

Scenarios: A agent tool loop (10 turns); B a new user message in the middle of the tool loop (no
template kwargs from the client); C Claude Code-style system prompt with a fresh nonce each
request; D the process restarted between turns 5 and 6; E an image in the first user turn (Locus
only: mlx_lm.server is text-only); F new sessions with the same (long) system prompt and tools;
G a retry whose last user message was edited; H realistic replies (reasoning, a sentence, two tool
calls) forced on both sides, the calls sent back with their arguments in another key order and
each reply rendered back by each side's template.

In F, G and H "new" counts what the conversation added (F: the new user turn after the system +
tools prefix; G: the edited user message; H: the tool results after each reply) with the model's
template, so it is the same for both sides. H forces the replies through the sampler on both
sides (Locus: `engine.engine.make_sampler` swapped in this process; mlx-lm:
bench/forced_mlx_server.py, which wraps `mlx_lm.server`); the model still runs every token.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
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

import decode as _decode  # noqa: E402  (bench/decode.py: model builders shared by the benchmarks)

from bench.verdict import finish  # noqa: E402

log = _decode.log


class SideFailed(RuntimeError):
    """Locus or mlx_lm.server could not serve a turn: recorded, and the run exits non-zero."""


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the project.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "relative path"}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_command",
            "description": "Run a shell command in the project root.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}},
                "required": ["command"],
            },
        },
    },
]

SYSTEM = (
    "You are a coding agent working inside the user's project. Use the tools to read files and "
    "run commands; make the smallest change that fixes the problem; explain what you did. "
    "Never invent file contents: read them first. Keep answers short."
)

CLAUDE_CODE_SYSTEM = (
    "You are Claude Code, Anthropic's official CLI for Claude. You are an interactive CLI tool "
    "that helps users with software engineering tasks. Use the instructions below and the tools "
    "available to you to assist the user. IMPORTANT: Assist with defensive security tasks only. "
    "When you reference code, include file paths and line numbers. Prefer editing existing files "
    "over creating new ones. Run the project's tests after every change and report the result. "
) * 3


def tool_output(k: int, lines: int) -> str:
    """A deterministic stand-in for a file's contents (turn k)."""
    out = [f"# src/module_{k}.py"]
    for i in range(lines):
        out.append(f"def handler_{k}_{i}(value):\n    return value * {i + k} + {i}")
    return "\n".join(out)


# -- the benchmark model ---------------------------------------------------------------------


def plain_tokens(tokenizer: Any) -> list[int]:
    """Ids of letters/digits that are one token each and never merge pairwise (so that any
    sequence of them re-encodes to the same ids)."""
    cands = []
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        ids = tokenizer.encode(ch, add_special_tokens=False)
        if len(ids) == 1:
            cands.append((ch, ids[0]))
    keep = []
    for ch, i in cands:
        ok = all(
            tokenizer.encode(ch + c2, add_special_tokens=False) == [i, j]
            and tokenizer.encode(c2 + ch, add_special_tokens=False) == [j, i]
            for c2, j in keep
        )
        if ok and tokenizer.encode(ch + ch, add_special_tokens=False) == [i, i]:
            keep.append((ch, i))
    return [i for _, i in keep]


def restrict_output(src: Path, dst: Path) -> int:
    """Copy checkpoint `src` to `dst` with lm_head rows zeroed except plain tokens; returns |kept|."""
    import mlx.core as mx
    import numpy as np
    from transformers import AutoTokenizer

    if (dst / "config.json").exists():
        return -1
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    # Long sessions outgrow the tiny model's 4096 positions; its rotary embedding takes more.
    cfg = json.loads((tmp / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        if "max_position_embeddings" in c:
            c["max_position_embeddings"] = max(c["max_position_embeddings"], 262144)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = AutoTokenizer.from_pretrained(str(tmp))
    keep = plain_tokens(tok)
    if len(keep) < 8:
        raise SystemExit(f"only {len(keep)} plain tokens in this tokenizer; cannot restrict output")
    index = tmp / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    done = False
    for name in files:
        arrays = mx.load(str(tmp / name))
        heads = [k for k in arrays if k.endswith("lm_head.weight")]
        if not heads:
            continue
        prefix = heads[0].removesuffix("weight")
        for suffix in ("weight", "scales", "biases"):
            k = prefix + suffix
            if k in arrays:
                a = np.array(arrays[k])
                mask = np.ones(a.shape[0], dtype=bool)
                mask[keep] = False
                a[mask] = 0
                arrays[k] = mx.array(a)
        mx.save_safetensors(str(tmp / name), arrays, metadata={"format": "mlx"})
        done = True
    if not done:
        raise SystemExit(f"{src}: no lm_head weight found (tied embeddings are not supported here)")
    tmp.rename(dst)
    return len(keep)


# -- the two sides ---------------------------------------------------------------------------


@dataclass
class Turn:
    prompt_tokens: int
    prefilled: int
    ttft_s: float
    wall_s: float
    reasoning: str
    content: str
    completion_tokens: int


class LocusSide:
    name = "Locus"

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.path, self.cache_dir = path, cache_dir
        self.engine: Any = None
        self.forced: list[int] | None = None
        self.start()

    def force(self, ids: list[int] | None) -> None:
        """Make the next replies follow `ids` (None: sample as usual)."""
        import mlx.core as mx

        import engine.engine as ee

        original = getattr(ee, "_bench_original_sampler", ee.make_sampler)
        ee._bench_original_sampler = original
        if ids is None:
            ee.make_sampler = original
            return

        def make(params: Any) -> Any:
            step = [0]

            def sampler(logprobs: Any) -> Any:
                t = ids[min(step[0], len(ids) - 1)]
                step[0] += 1
                # Tied to the logits, so each step's model compute is evaluated as it goes.
                return mx.argmax(logprobs, axis=-1) * 0 + t

            return sampler

        ee.make_sampler = make

    def start(self) -> None:
        from engine import Engine, PromptCache

        self.engine = Engine.from_path(str(self.path), prompt_cache=PromptCache(disk_dir=self.cache_dir))

    def vision_runs(self) -> int:
        """How many times the vision tower has run in this process (the model's own counter)."""
        vision = getattr(self.engine.model.model, "_vision", None)
        return int(getattr(vision, "computed", -1))

    def restart(self) -> None:
        self.engine.close()  # flushes snapshots to disk, as quitting the app does
        self.start()

    def close(self) -> None:
        self.force(None)
        self.engine.close()

    def turn(self, messages: list[dict[str, Any]], max_tokens: int, session: str) -> Turn:
        from app.server.common import strip_billing_header
        from engine import (
            Done,
            GenerationRequest,
            ReasoningDelta,
            SamplingParams,
            TextDelta,
            Usage,
        )

        msgs = [
            {**m, "content": strip_billing_header(m["content"])} if m["role"] == "system" else m
            for m in messages
        ]
        req = GenerationRequest(
            messages=msgs,
            tools=TOOLS,
            sampling=SamplingParams(temperature=0.0),
            max_tokens=max_tokens,
            session=session,
        )
        t0 = time.perf_counter()
        ttft, reasoning, content, usage, done = None, [], [], None, None
        for ev in self.engine.submit(req).events():
            if isinstance(ev, ReasoningDelta | TextDelta) and ttft is None:
                ttft = time.perf_counter() - t0
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
            elif isinstance(ev, TextDelta):
                content.append(ev.text)
            elif isinstance(ev, Usage):
                usage = ev
            elif isinstance(ev, Done):
                done = ev
        wall = time.perf_counter() - t0
        if done is None or done.finish_reason == "error" or usage is None:
            raise SideFailed(f"request ended with {getattr(done, 'error', done)}")
        return Turn(
            usage.prompt_tokens,
            usage.prompt_tokens - usage.cached_tokens,
            ttft or wall,
            wall,
            "".join(reasoning),
            "".join(content),
            usage.completion_tokens,
        )


class MlxServerSide:
    name = "mlx_lm.server"

    def __init__(self, path: Path, max_tokens: int) -> None:
        self.path, self.max_tokens = path, max_tokens
        self.proc: subprocess.Popen[bytes] | None = None
        self.script = Path(tempfile.mkdtemp(prefix="mlx-forced-")) / "script.json"
        self.start()

    def force(self, ids: list[int] | None) -> None:
        """Make the next replies follow `ids` (None: sample as usual)."""
        if ids is None:
            self.script.unlink(missing_ok=True)
        else:
            self.script.write_text(json.dumps(ids))

    def start(self) -> None:
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        wrapper = str(Path(__file__).resolve().parent / "forced_mlx_server.py")
        cmd = [sys.executable, wrapper, "--model", str(self.path)]
        cmd += ["--port", str(self.port), "--temp", "0", "--max-tokens", str(self.max_tokens)]
        self.log = tempfile.NamedTemporaryFile(prefix="mlx-lm-server-", suffix=".log", delete=False)
        env = {**os.environ, "LOCUS_BENCH_SCRIPT": str(self.script)}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SideFailed(f"mlx_lm.server exited; see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SideFailed(f"mlx_lm.server did not start; see {self.log.name}")

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def turn(self, messages: list[dict[str, Any]], max_tokens: int, session: str) -> Turn:
        import httpx

        body = {
            "model": str(self.path),
            "messages": messages,
            "tools": TOOLS,
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        ttft, reasoning, content, usage = None, [], [], None
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for ch in chunk.get("choices", []):
                    d = ch.get("delta", {})
                    r_text = d.get("reasoning") or d.get("reasoning_content") or ""
                    c_text = d.get("content") or ""
                    if (r_text or c_text) and ttft is None:
                        ttft = time.perf_counter() - t0
                    reasoning.append(r_text)
                    content.append(c_text)
        wall = time.perf_counter() - t0
        if usage is None:
            raise SideFailed("mlx_lm.server sent no usage")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
        return Turn(
            usage["prompt_tokens"],
            usage["prompt_tokens"] - cached,
            ttft or wall,
            wall,
            "".join(reasoning),
            "".join(content),
            usage.get("completion_tokens", 0),
        )


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    title: str
    turns: int = 10
    new_user_at: int | None = None  # B: a user message joins the tool result before this turn
    nonce: bool = False  # C
    restart_before: int | None = None  # D
    image: bool = False  # E
    kind: str = "loop"  # loop (A-E), sessions (F), retry (G), replies (H)
    tool_lines: int | None = None  # functions per read_file result (None: --tool-lines)


SCENARIOS = {
    "A": Scenario("A", "agent tool loop, 10 turns"),
    "B": Scenario("B", "new user message in the middle of the tool loop", new_user_at=6),
    "C": Scenario("C", "Claude Code-style system prompt with a fresh nonce", nonce=True),
    "D": Scenario("D", "process restarted between turns 5 and 6", restart_before=6),
    "E": Scenario("E", "image in the first user turn", image=True),
    "F": Scenario("F", "new sessions, same system prompt and tools", turns=4, kind="sessions"),
    "G": Scenario("G", "retry whose last user message was edited", turns=4, kind="retry"),
    # Short tool results (a small file, a test summary), where replies weigh most in the prompt.
    "H": Scenario(
        "H",
        "realistic replies: reasoning, text, two tool calls",
        turns=6,
        kind="replies",
        tool_lines=4,
    ),
}

SESSION_TASKS = [
    "The test suite fails in src/. Find the bug and fix it.",
    "Add type hints to every function in src/module_1.py and run the linter on it.",
    "Explain what src/module_2.py does, then suggest two refactorings.",
    "Write a test for handler_3_4 in src/module_3.py covering negative values.",
]


@dataclass
class SideResult:
    turns: list[Turn] = field(default_factory=list)
    vision_runs: list[int] = field(default_factory=list)  # after each turn (Locus only)
    new: list[int] = field(default_factory=list)  # F, G, H: tokens new to the conversation


class Counter:
    """Token counts of a conversation as the model's template renders it (no cache, no splicing)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.im_start = self.tok.convert_tokens_to_ids("<|im_start|>")
        self.user = self.tok.encode("user", add_special_tokens=False)[0]

    def ids(self, messages: list[dict[str, Any]], gen: bool = True) -> list[int]:
        from engine import render_prompt

        text = render_prompt(
            self.tok,
            messages,
            tools=TOOLS,
            enable_thinking=True,
            preserve_thinking=True,
            add_generation_prompt=gen,
        )
        return self.tok.encode(text, add_special_tokens=False)

    def user_starts(self, ids: list[int]) -> list[int]:
        return [i for i in range(len(ids) - 1) if ids[i] == self.im_start and ids[i + 1] == self.user]


def run_sessions(side: Any, sc: Scenario, args: argparse.Namespace, count: Counter) -> SideResult:
    """F: one turn in each of several new sessions that share the system prompt and tools."""
    res = SideResult()
    for k in range(sc.turns):
        messages = [
            {"role": "system", "content": CLAUDE_CODE_SYSTEM},
            {"role": "user", "content": SESSION_TASKS[k % len(SESSION_TASKS)]},
        ]
        res.turns.append(side.turn(messages, args.reply_tokens, f"bench-F-{secrets.token_hex(4)}"))
        ids = count.ids(messages)
        res.new.append(len(ids) - (count.user_starts(ids)[0] if k else 0))
    return res


def run_retry(side: Any, sc: Scenario, args: argparse.Namespace, count: Counter) -> SideResult:
    """G: a tool loop, a user message, then the same request with that message edited."""
    res = SideResult()
    session = f"bench-G-{secrets.token_hex(4)}"
    history: list[dict[str, Any]] = [{"role": "user", "content": SESSION_TASKS[0]}]
    ask = "Also check that the tests in tests/ still pass, and tell me which ones you ran."
    for k in range(1, sc.turns + 1):
        if k == sc.turns:  # the client retries, appending to the last user message
            history[-1] = {"role": "user", "content": ask + " Please also run the linter."}
        messages = [{"role": "system", "content": SYSTEM}, *history]
        prev = _upto_last_reply(count, messages)
        t = side.turn(messages, args.reply_tokens, session)
        res.turns.append(t)
        ids = count.ids(messages)
        res.new.append(len(ids) - (count.user_starts(ids)[-1] if k == sc.turns else prev))
        if k >= sc.turns - 1:
            continue
        call = {
            "id": f"call_{k}",
            "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/module_{k}.py"})},
        }
        history += [
            {
                "role": "assistant",
                "content": t.content,
                "reasoning_content": t.reasoning,
                "tool_calls": [call],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": tool_output(k, args.tool_lines)},
        ]
        if k == sc.turns - 2:
            history.append({"role": "user", "content": ask})
    return res


def forced_reply(k: int) -> str:
    """Turn k's reply in H: reasoning, a sentence, then two tool calls (the model's own spacing)."""
    return (
        f"The failure is probably in module {k}. I should read it before changing anything, "
        f"then run its tests to see the traceback.\n</think>\n\nLet me read src/module_{k}.py "
        "and run its tests.\n<tool_call>\n<function=read_file>\n<parameter=path>\n"
        f"src/module_{k}.py\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
        "<function=run_command>\n<parameter=command>\n"
        f"pytest -q tests/test_module_{k}.py\n</parameter>\n<parameter=timeout>\n60\n"
        "</parameter>\n</function>\n</tool_call>"
    )


NAMES = ["read_file", "run_command"]


def _upto_last_reply(count: Counter, messages: list[dict[str, Any]]) -> int:
    """Tokens of the conversation through its last assistant message (0 if none)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return len(count.ids(messages[: last + 1], gen=False)) if last >= 0 else 0


def run_replies(side: Any, sc: Scenario, args: argparse.Namespace, count: Counter) -> SideResult:
    """H: forced realistic replies, sent back as a client does (arguments re-serialised)."""
    res = SideResult()
    session = f"bench-H-{secrets.token_hex(4)}"
    end = count.tok.convert_tokens_to_ids("<|im_end|>")
    history: list[dict[str, Any]] = [{"role": "user", "content": SESSION_TASKS[0]}]
    try:
        for k in range(1, sc.turns + 1):
            messages = [{"role": "system", "content": SYSTEM}, *history]
            ids = [*count.tok.encode(forced_reply(k), add_special_tokens=False), end]
            side.force(ids)
            t = side.turn(messages, len(ids) + 8, session)
            res.turns.append(t)
            prompt = count.ids(messages)
            res.new.append(len(prompt) - _upto_last_reply(count, messages))
            args_ = [
                {"path": f"src/module_{k}.py"},
                {"timeout": 60, "command": f"pytest -q tests/test_module_{k}.py"},
            ]
            calls = [
                {
                    "id": f"call_{k}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(a)},
                }
                for i, (name, a) in enumerate(zip(NAMES, args_, strict=True))
            ]
            content = t.content.split("<tool_call>")[0].strip()
            history.append(
                {
                    "role": "assistant",
                    "content": content,
                    "reasoning_content": t.reasoning,
                    "tool_calls": calls,
                }
            )
            history.append(
                {
                    "role": "tool",
                    "tool_call_id": calls[0]["id"],
                    "content": tool_output(k, sc.tool_lines or args.tool_lines),
                }
            )
            history.append(
                {"role": "tool", "tool_call_id": calls[1]["id"], "content": f"{k + 2} passed in 0.{k}1s"}
            )
    finally:
        side.force(None)
    return res


def _system(sc: Scenario) -> str:
    if sc.nonce:
        nonce = secrets.token_hex(3)
        return (
            "x-anthropic-billing-header: cc_version=2.0.50.1a2; cc_entrypoint=cli; "
            f"cch={nonce};\n{CLAUDE_CODE_SYSTEM}"
        )
    return SYSTEM


def _image_bytes() -> bytes:
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (128, 96), "white")
    ImageDraw.Draw(img).rectangle((30, 20, 90, 70), fill="red")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def run_scenario(
    side: Any, sc: Scenario, args: argparse.Namespace, count: Counter | None = None
) -> SideResult:
    if sc.kind != "loop":
        assert count is not None
        runner = {"sessions": run_sessions, "retry": run_retry, "replies": run_replies}[sc.kind]
        return runner(side, sc, args, count)
    res = SideResult()
    session = f"bench-{sc.key}-{secrets.token_hex(4)}"
    task = "The test suite fails in src/. Find the bug and fix it."
    user: dict[str, Any] = {"role": "user", "content": task}
    if sc.image:
        user = {
            "role": "user",
            "content": [{"type": "image", "image": _image_bytes()}, {"type": "text", "text": task}],
        }
    history: list[dict[str, Any]] = [user]
    for k in range(1, sc.turns + 1):
        if sc.restart_before == k:
            log(f"  [{side.name}] restarting")
            side.restart()
        messages = [{"role": "system", "content": _system(sc)}, *history]
        t = side.turn(messages, args.reply_tokens, session)
        res.turns.append(t)
        if hasattr(side, "vision_runs"):
            res.vision_runs.append(side.vision_runs())
        call_id = f"call_{k}"
        history.append(
            {
                "role": "assistant",
                "content": t.content,
                "reasoning_content": t.reasoning,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": "read_file",
                            "arguments": json.dumps({"path": f"src/module_{k}.py"}),
                        },
                    }
                ],
            }
        )
        history.append({"role": "tool", "tool_call_id": call_id, "content": tool_output(k, args.tool_lines)})
        if sc.new_user_at == k + 1:
            history.append({"role": "user", "content": "Also check that the tests in tests/ still pass."})
    return res


# -- report ----------------------------------------------------------------------------------


def _new_tokens(turns: list[Turn]) -> list[int]:
    out, prev = [], 0
    for t in turns:
        out.append(t.prompt_tokens - prev)
        prev = t.prompt_tokens + t.completion_tokens
    return out


def report(sc: Scenario, results: dict[str, SideResult]) -> dict[str, Any]:
    loc = results["Locus"].turns
    mlx = results.get("mlx_lm.server")
    new = results["Locus"].new or _new_tokens(loc)
    print(f"\nScenario {sc.key}: {sc.title}")
    head = f"{'turn':>4} {'prompt':>7} {'new':>6} {'Locus pre':>10} {'Locus TTFT':>11}"
    if mlx:
        head += f" {'mlx prompt':>11} {'mlx pre':>8} {'mlx TTFT':>9}"
    print(head)
    for i, t in enumerate(loc):
        row = f"{i + 1:>4} {t.prompt_tokens:>7} {new[i]:>6} {t.prefilled:>10} {t.ttft_s:>10.3f}s"
        if mlx:
            m = mlx.turns[i]
            row += f" {m.prompt_tokens:>11} {m.prefilled:>8} {m.ttft_s:>8.3f}s"
        print(row)
    out: dict[str, Any] = {
        "scenario": sc.key,
        "title": sc.title,
        "tool_lines": sc.tool_lines,
        "new_tokens": new,
        "locus": [asdict(t) | {"reasoning": None, "content": None} for t in loc],
    }
    tot_new, tot_loc = sum(new), sum(t.prefilled for t in loc)
    wall_loc = sum(t.wall_s for t in loc)
    print(
        f"total: new {tot_new}, Locus prefilled {tot_loc} ({tot_loc / tot_new:.2f} × new), "
        f"wall {wall_loc:.2f} s"
    )
    out.update(total_new=tot_new, locus_prefilled=tot_loc, locus_wall_s=wall_loc)
    if mlx:
        tot_mlx = sum(t.prefilled for t in mlx.turns)
        wall_mlx = sum(t.wall_s for t in mlx.turns)
        print(
            f"       mlx_lm.server prefilled {tot_mlx} ({tot_mlx / tot_new:.2f} × new), wall {wall_mlx:.2f} s"
        )
        print(
            f"ratio Locus / mlx_lm.server: prefilled {tot_loc / max(tot_mlx, 1):.3f}, "
            f"wall {wall_loc / wall_mlx:.3f}"
        )
        out.update(
            mlx=[asdict(t) | {"reasoning": None, "content": None} for t in mlx.turns],
            mlx_prefilled=tot_mlx,
            mlx_wall_s=wall_mlx,
            ratio_prefilled=tot_loc / max(tot_mlx, 1),
            ratio_wall=wall_loc / wall_mlx,
        )
    # The targets, each checked against this run's numbers.
    checks: list[tuple[str, bool]] = []
    if sc.key == "A":
        checks.append(("Locus prefilled <= 1.1 x new", tot_loc <= 1.1 * tot_new))
        if mlx:
            checks.append(("prefilled <= 0.6 x mlx_lm.server", out["ratio_prefilled"] <= 0.6))
            checks.append(("wall <= 0.7 x mlx_lm.server", out["ratio_wall"] <= 0.7))
    if sc.key == "B" and sc.new_user_at:
        i = sc.new_user_at - 1
        checks.append((f"turn {i + 1} prefills only the new tokens", loc[i].prefilled <= new[i]))
    if sc.key == "C" and mlx:
        checks.append(("5 x fewer prefilled than mlx_lm.server", 5 * tot_loc <= out["mlx_prefilled"]))
    if sc.key == "D" and sc.restart_before:
        i = sc.restart_before - 1
        checks.append((f"turn {i + 1} after restart prefills only new", loc[i].prefilled <= new[i]))
    if sc.key == "E":
        runs = results["Locus"].vision_runs
        print(f"vision tower runs after each turn: {runs}")
        out["vision_runs"] = runs
        checks.append(("vision tower ran once", bool(runs) and runs[-1] == runs[0] == 1))
        later = loc[1:]
        checks.append(
            (
                "later turns prefill only new",
                all(t.prefilled <= n for t, n in zip(later, new[1:], strict=True)),
            )
        )
    if sc.key == "F":
        for i in range(1, len(loc)):
            checks.append(
                (
                    f"turn {i + 1} (new session) prefilled <= 1.1 x new user turn",
                    loc[i].prefilled <= 1.1 * new[i],
                )
            )
        if mlx:
            out["mlx_new_sessions_prefilled"] = [t.prefilled for t in mlx.turns[1:]]
    if sc.key == "G":
        i = len(loc) - 1
        checks.append(
            (f"turn {i + 1} (retry) prefilled <= 1.1 x edited message", loc[i].prefilled <= 1.1 * new[i])
        )
    if sc.key == "H":
        # Turns 2.. each follow a reply the client sent back; turn 1 is the same cold prompt.
        later_new, later_loc = sum(new[1:]), sum(t.prefilled for t in loc[1:])
        out.update(later_new=later_new, later_locus_prefilled=later_loc)
        checks.append(("turns 2.. Locus prefilled <= 1.1 x new", later_loc <= 1.1 * later_new))
        if mlx:
            later_mlx = sum(t.prefilled for t in mlx.turns[1:])
            out["later_mlx_prefilled"] = later_mlx
            print(
                f"turns 2..: new {later_new}, Locus prefilled {later_loc}, "
                f"mlx_lm.server prefilled {later_mlx}"
            )
            checks.append(("turns 2.. prefilled <= 0.6 x mlx_lm.server", later_loc <= 0.6 * later_mlx))
    for name, ok in checks:
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    out["targets"] = {name: ok for name, ok in checks}
    return out


def run_sides(
    sc: Scenario, args: argparse.Namespace, count: Counter, path: Path, cache_dir: Path, failures: list[str]
) -> dict[str, SideResult]:
    """One scenario on Locus, then on mlx_lm.server; a side that fails is added to `failures`."""
    results: dict[str, SideResult] = {}
    try:
        loc = LocusSide(path, cache_dir)
        try:
            results["Locus"] = run_scenario(loc, sc, args, count)
        finally:
            loc.close()
    except Exception as e:  # go on with the other scenarios; the run still exits non-zero
        log(f"scenario {sc.key}: Locus failed: {e}")
        failures.append(f"scenario {sc.key}: Locus failed: {e}")
        return results
    if not args.no_mlx and not sc.image:
        try:
            srv = MlxServerSide(path, args.reply_tokens)
            try:
                results["mlx_lm.server"] = run_scenario(srv, sc, args, count)
            finally:
                srv.close()
        except Exception as e:
            log(f"scenario {sc.key}: mlx_lm.server failed: {e}")
            failures.append(f"scenario {sc.key}: mlx_lm.server failed: {e}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, real-width, or a checkpoint directory")
    ap.add_argument("--layers", type=int, default=4, help="layers of the real-width model")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "bench-models"))
    ap.add_argument("--scenarios", default="ABCDEFGH", help="letters of the scenarios to run")
    ap.add_argument("--reply-tokens", type=int, default=32, help="tokens per reply (default 32)")
    ap.add_argument("--tool-lines", type=int, default=12, help="functions per tool result")
    ap.add_argument("--no-mlx", action="store_true", help="measure Locus only")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    base, label = _decode.ensure_model(args)
    path = base.with_name(base.name + "-plain-out")
    kept = restrict_output(base, path)
    log(f"model {label}: {path}" + (f" (output restricted to {kept} tokens)" if kept > 0 else ""))

    all_out, failures = [], []
    count = Counter(path)
    work = Path(tempfile.mkdtemp(prefix="locus-bench-cache-"))
    try:
        for key in args.scenarios.upper():
            sc = SCENARIOS[key]
            results = run_sides(sc, args, count, path, work / key, failures)
            if "Locus" in results:
                out = report(sc, results)
                missed = [name for name, ok in out["targets"].items() if not ok]
                failures += [f"scenario {key}: {name} NOT met" for name in missed]
                all_out.append(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        doc = {"model": label, "scenarios": all_out, "failures": failures}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return finish(failures)


if __name__ == "__main__":
    sys.exit(main())
