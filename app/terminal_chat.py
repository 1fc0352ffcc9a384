"""`locus chat`: a streaming chat in the terminal."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from engine import (
    Backend,
    Done,
    GenerationRequest,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)

HELP = "Commands: /reset (new conversation), /think on|off, /help, /quit. Ctrl-C stops a reply."


def run_chat(
    args: argparse.Namespace,
    engine: Backend,
    sampling: SamplingParams,
    *,
    stdin: Any = None,
    stdout: Any = None,
) -> int:
    """Read user lines, stream replies; returns the exit code."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    color = out.isatty() and not os.environ.get("NO_COLOR")
    dim, reset = ("\033[2m", "\033[0m") if color else ("", "")
    system = getattr(args, "system", None)
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    thinking = not getattr(args, "no_thinking", False)
    info = engine.info
    where = f" (remote, at {info.remote})" if info.remote else ""
    print(f"Chatting with {info.name}{where}. {HELP}", file=out)
    try:
        while True:
            out.write("\nyou> ")
            out.flush()
            try:
                line = stdin.readline()
            except KeyboardInterrupt:
                out.write("\n(use /quit or Ctrl-D to leave)\n")
                continue
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                cmd, _, arg = text.partition(" ")
                if cmd in ("/quit", "/exit"):
                    break
                if cmd == "/reset":
                    history = history[:1] if system else []
                    print("(conversation cleared)", file=out)
                elif cmd == "/think" and arg.strip() in ("on", "off"):
                    thinking = arg.strip() == "on"
                    print(f"(thinking {'on' if thinking else 'off'})", file=out)
                else:
                    print(HELP, file=out)
                continue
            history.append({"role": "user", "content": text})
            req = GenerationRequest(
                messages=list(history),
                enable_thinking=thinking,
                sampling=sampling,
                max_tokens=getattr(args, "max_tokens", 2048),
                stop=getattr(args, "stop", []),
            )
            reply, reasoning, calls = _stream_reply(engine, req, out, dim, reset)
            if reply is None:
                history.pop()  # a failed turn leaves the conversation as it was
                continue
            msg: dict[str, Any] = {"role": "assistant", "content": reply}
            if reasoning:
                msg["reasoning_content"] = reasoning
            if calls:
                msg["tool_calls"] = calls
            history.append(msg)
    finally:
        engine.close()
    out.write("\n")
    return 0


def _stream_reply(engine: Backend, req: GenerationRequest, out: Any, dim: str, reset: str):
    handle = engine.submit(req)
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    mode = ""
    out.write("\n")
    done: Done | None = None
    while done is None:
        try:
            for ev in handle.events():
                if isinstance(ev, ReasoningDelta):
                    if mode != "r":
                        out.write(dim + "thinking: ")
                        mode = "r"
                    reasoning.append(ev.text)
                    out.write(ev.text)
                elif isinstance(ev, TextDelta | ToolCall | ToolCallError):
                    if mode == "r":
                        out.write(reset + "\n\n")
                    mode = "t"
                    if isinstance(ev, TextDelta):
                        text.append(ev.text)
                        out.write(ev.text)
                    elif isinstance(ev, ToolCall):
                        calls.append({"function": {"name": ev.name, "arguments": ev.arguments}})
                        out.write(f"[tool call {ev.name}]")
                    else:
                        out.write(f"[malformed tool call: {ev.message}]")
                elif isinstance(ev, Usage):
                    stats = f"{ev.completion_tokens} tokens, {ev.generation_tps:.1f} tok/s"
                    if ev.draft_tokens:
                        stats += f", MTP drafts {ev.draft_accepted}/{ev.draft_tokens} accepted"
                elif isinstance(ev, Done):
                    done = ev
                out.flush()
        except KeyboardInterrupt:
            handle.cancel()  # keep reading: the request ends within one token
    if mode == "r":
        out.write(reset)
    if done.finish_reason == "error":
        out.write(f"\n[error: {done.error}]\n")
        return None, None, None
    note = {"cancelled": " — stopped", "length": " — hit max tokens"}.get(done.finish_reason, "")
    out.write(f"\n{dim}[{stats if done.usage else ''}{note}]{reset}\n")
    return "".join(text), "".join(reasoning), calls
