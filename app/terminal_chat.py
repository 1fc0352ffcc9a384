"""`locus chat`: a streaming chat in the terminal, driving an app.chat_session.ChatSession."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from engine import Backend, ReasoningDelta, SamplingParams, TextDelta, ToolCall, ToolCallError

from .chat_session import ChatSession, ChatSettings, ReplyEnd, ReplyUpdate
from .textsafe import show_block, show_line

if TYPE_CHECKING:
    from .mcp import McpHub

HELP = "Commands: /reset (new conversation), /think on|off, /help, /quit. Ctrl-C stops a reply."


def run_chat(
    args: argparse.Namespace,
    backend: Backend,
    sampling: SamplingParams,
    *,
    stdin: Any = None,
    stdout: Any = None,
    mcp: McpHub | None = None,
) -> int:
    """Read user lines, stream replies; returns the exit code. With `mcp`, the model may call the
    servers' tools, each call approved on the terminal."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    tools = _ChatTools(mcp, stdin, out) if mcp is not None else None
    settings = ChatSettings(
        thinking=not getattr(args, "no_thinking", False),
        max_tokens=getattr(args, "max_tokens", 2048),
        sampling=sampling,
        stop=tuple(getattr(args, "stop", None) or ()),
    )
    system = getattr(args, "system", None)
    session = ChatSession(settings=settings, system=system, tools=tools.specs if tools else None)
    info = backend.info
    session.set_backend(backend, info.name)
    _Printer(session, out)
    where = f" (remote, at {info.remote})" if info.remote else ""
    print(f"Chatting with {info.name}{where}. {HELP}", file=out)
    try:
        while (text := _read_line(stdin, out)) is not None:
            if not text:
                continue
            if text.startswith("/"):
                if _command(session, text, out):
                    break
                continue
            mark = len(session.history)
            session.add_user(text)
            for _ in range(_TOOL_ROUNDS):
                end = _reply(session, backend)
                if end.finish_reason == "error":
                    session.truncate(mark)  # a failed turn leaves the conversation as it was
                    break
                calls = (end.message or {}).get("tool_calls") or []
                if not (calls and tools):
                    break
                session.add_tool_results([tools.run(c) for c in calls])  # the model goes on with them
    finally:
        backend.close()
    out.write("\n")
    return 0


def _read_line(stdin: Any, out: Any) -> str | None:
    """The user's next line, stripped ("" after Ctrl-C); None at the end of input."""
    out.write("\nyou> ")
    out.flush()
    try:
        line = stdin.readline()
    except KeyboardInterrupt:
        out.write("\n(use /quit or Ctrl-D to leave)\n")
        return ""
    return line.strip() if line else None


def _command(session: ChatSession, text: str, out: Any) -> bool:
    """Carry out a /command; True to leave."""
    cmd, _, arg = text.partition(" ")
    if cmd in ("/quit", "/exit"):
        return True
    if cmd == "/reset":
        session.new_conversation()
        print("(conversation cleared)", file=out)
    elif cmd == "/think" and arg.strip() in ("on", "off"):
        session.update_settings(thinking=arg.strip() == "on")
        print(f"(thinking {arg.strip()})", file=out)
    else:
        print(HELP, file=out)
    return False


def _reply(session: ChatSession, backend: Backend) -> ReplyEnd:
    """One reply, its events folded by the session (which the printer shows); Ctrl-C stops it."""
    ended: list[ReplyEnd] = []
    session.events.reply_finished.connect(ended.append)
    try:
        handle = backend.submit(session.start_reply())
        while not ended:
            try:
                for ev in handle.events():
                    session.add_event(ev)
                if not ended:  # events always end with Done; never wait for one that will not come
                    session.fail("the reply ended without a reason")
            except KeyboardInterrupt:
                handle.cancel()  # keep reading: the request ends within one token
    finally:
        session.events.reply_finished.disconnect(ended.append)
    return ended[-1]


class _Printer:
    """Shows a session's replies on the terminal as they stream: reasoning dimmed, then the
    answer, then a line of stats."""

    def __init__(self, session: ChatSession, out: Any) -> None:
        self.session, self.out = session, out
        color = out.isatty() and not os.environ.get("NO_COLOR")
        self.dim, self.reset = ("\033[2m", "\033[0m") if color else ("", "")
        self.mode = ""
        session.events.reply_started.connect(self.started)
        session.events.reply_changed.connect(self.changed)
        session.events.reply_finished.connect(self.finished)

    def started(self, _reply: Any) -> None:
        self.mode = ""
        self.out.write("\n")

    def changed(self, u: ReplyUpdate) -> None:
        ev, write = u.event, self.out.write
        if isinstance(ev, ReasoningDelta):
            if self.mode != "r":
                write(self.dim + "thinking: ")
                self.mode = "r"
            write(ev.text)
        elif isinstance(ev, TextDelta | ToolCall | ToolCallError):
            if self.mode == "r":
                write(self.reset + "\n\n")
            self.mode = "t"
            if isinstance(ev, TextDelta):
                write(ev.text)
            elif isinstance(ev, ToolCall):
                write(f"[tool call {ev.name}]")
            else:
                write(f"[malformed tool call: {ev.message}]")
        self.out.flush()

    def finished(self, end: ReplyEnd) -> None:
        write = self.out.write
        if self.mode == "r":
            write(self.reset)
        if end.finish_reason == "error":
            write(f"\n[error: {end.error}]\n")
            return
        u = self.session.reply.usage if self.session.reply is not None else None
        stats = ""
        if u is not None:
            stats = f"{u.completion_tokens} tokens, {u.generation_tps:.1f} tok/s"
            if u.draft_tokens:
                stats += f", MTP drafts {u.draft_accepted}/{u.draft_tokens} accepted"
        note = {"cancelled": " — stopped", "length": " — hit max tokens"}.get(end.finish_reason, "")
        write(f"\n{self.dim}[{stats}{note}]{self.reset}\n")


_TOOL_ROUNDS = 10  # model turns per user message when it calls tools


class _ChatTools:
    """The MCP servers' tools in the chat: each call approved on the terminal ("always" is
    remembered for the chat), then run; the result goes back to the model as a tool message."""

    def __init__(self, hub: McpHub, stdin: Any, out: Any) -> None:
        from .mcp import ToolAllowances
        from .settings import data_dir, load_ui_settings

        self.hub, self.stdin, self.out = hub, stdin, out
        self.allowances = ToolAllowances(data_dir())
        self.read_only_ok = load_ui_settings().get("mcp_read_only") is True

    def specs(self) -> list[dict[str, Any]]:
        for line in self.hub.take_problems():
            print(f"[{show_line(line)}]", file=self.out)
        return self.hub.specs()

    def _approved(self, name: str, args: dict[str, Any]) -> str | None:
        """None when the call may run, else the reason the model is told."""
        tool = self.hub.tool(name)
        if tool is None:
            return None  # the hub answers with why it is missing
        if name in self.allowances.allowed("chat") or (tool.read_only and self.read_only_ok):
            return None
        print(f"\nallow MCP {show_line(tool.server)}: {show_line(tool.tool)}?", file=self.out)
        print(show_block(json.dumps(args, indent=2, ensure_ascii=False)), file=self.out)
        self.out.write("[y]es  [n]o  [a]lways allow this tool > ")
        self.out.flush()
        ans = (self.stdin.readline() or "n").strip().lower()
        if ans in ("a", "always"):
            self.allowances.allow("chat", name)
        elif ans not in ("y", "yes"):
            return "The user rejected this call. It was not carried out."
        return None

    def run(self, call: dict[str, Any]) -> dict[str, Any]:
        fn = call["function"]
        name, args = fn["name"], dict(fn.get("arguments") or {})
        refused = self._approved(name, args)
        if refused is not None:
            return {"role": "tool", "tool_call_id": call["id"], "content": refused}
        res = self.hub.call(name, args)
        head = "\n".join(res.text.splitlines()[:6])
        print(f"[{show_line(name)}: {'ok' if res.ok else 'failed'}]\n{head}", file=self.out)
        return {"role": "tool", "tool_call_id": call["id"], "content": res.content()}
