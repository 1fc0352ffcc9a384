"""`locus agent DIR "task"`: the coding agent, headless, in a terminal or as JSON lines.

Also `locus agent DIR --undo [--steps N]`, `--diff`, `--runs` and `--resume RUN` (no model
needed for the first three). `--replay FILE` takes the model's turns from a JSONL file.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .textsafe import has_hidden, show_block, show_line, show_prose

if TYPE_CHECKING:
    from engine import Backend

    from .agent import ModelBackend

DIM, BOLD, RESET = "\033[2m", "\033[1m", "\033[0m"

# Exit codes: a script can tell an answer from a limit, a stop or a failure.
EXIT_ANSWERED, EXIT_ERROR, EXIT_LIMIT, EXIT_STOPPED = 0, 1, 3, 130


def add_parser(sub: Any, add_model_args: Callable, add_sampling_args: Callable) -> None:
    """Register `locus agent` on the subparsers `sub`."""
    p = sub.add_parser(
        "agent",
        help="let the model work inside a project folder (tools, approvals, undo)",
        description=(
            "Run the coding agent on a project directory. Reads run freely; edits and commands "
            "ask for approval (or --yes / --allow). Every change is checkpointed outside the "
            "project and can be undone with --undo."
        ),
    )
    p.add_argument("project", metavar="DIR", help="the project directory")
    p.add_argument("task", nargs="?", help="what to do (omit with --undo, --diff, --runs)")
    add_model_args(p)
    p.add_argument(
        "--replay",
        metavar="FILE",
        help="take the model's outputs from a JSONL file (one raw output per line)",
    )
    p.add_argument("--yes", "-y", action="store_true", help="approve every edit and command")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PREFIX",
        help="approve simple commands starting with PREFIX, e.g. 'pytest' (repeatable); a command "
        "that chains, pipes, redirects, substitutes or sets variables is still asked about",
    )
    p.add_argument(
        "--max-steps", type=int, default=40, metavar="N", help="model turns before stopping (default 40)"
    )
    p.add_argument("--token-budget", type=int, metavar="N", help="stop after N generated tokens")
    p.add_argument("--allow-network", action="store_true", help="let sandboxed commands use the network")
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run commands without bwrap/sandbox-exec, with your full permissions "
        "(--yes and --allow then cover them)",
    )
    p.add_argument(
        "--require-sandbox",
        action="store_true",
        help="refuse every command when no working sandbox is found (also the require_sandbox setting)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass environment variable NAME to commands (repeatable; the rest of the "
        "environment stays out except PATH, HOME, LANG, LC_*, TERM, TMPDIR, USER, "
        "LOGNAME, SHELL and toolchain locations)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.add_argument(
        "--mcp-config",
        action="append",
        default=[],
        metavar="FILE",
        help='MCP servers as tools, in the common {"mcpServers": {...}} format (repeatable; added to '
        "those in Locus's data folder, mcp.json). --allow mcp__SERVER approves all of a server's tools",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stored run ('last' for this project's newest); TASK is an "
        "optional follow-up message",
    )
    p.add_argument("--undo", action="store_true", help="undo the agent's last step(s)")
    p.add_argument("--steps", type=int, default=1, metavar="N", help="with --undo/--diff: N steps")
    p.add_argument("--diff", action="store_true", help="show the diff of the last step(s)")
    p.add_argument("--runs", action="store_true", help="list this project's stored runs")
    add_sampling_args(
        p,
        preset_help="default: coding, or instruct with --no-thinking",
        max_tokens_help="per model turn (default: a quarter of --context, 1024 to 32768)",
    )
    # None: the agent's own per-turn budget (a quarter of the context), not chat's 2048.
    p.set_defaults(handler=run, max_tokens=None)


def run(args: argparse.Namespace) -> int:
    """Entry point of `locus agent`."""
    from pathlib import Path

    from .agent import AgentError, CheckpointError

    if not Path(args.project).is_dir():
        _fail(f"project directory {args.project!r} does not exist or is not a directory")
        return EXIT_ERROR
    if args.steps < 1:
        _fail("--steps must be at least 1")
        return EXIT_ERROR
    try:
        if args.undo:
            return _undo(args)
        if args.diff:
            return _diff(args)
        if args.runs:
            return _runs(args)
        return _run_agent(args)
    except (AgentError, CheckpointError) as e:
        _fail(str(e))
        return EXIT_ERROR


def _fail(msg: str) -> None:
    print(f"locus agent: error: {msg}", file=sys.stderr)


def _checkpoints(args: argparse.Namespace):
    from .agent import Checkpoints
    from .settings import data_dir

    return Checkpoints(args.project, data_dir())


def _undo(args: argparse.Namespace) -> int:
    res = _checkpoints(args).undo(args.steps)
    if args.json:
        print(
            json.dumps(
                {
                    "type": "undo",
                    "restored": res.restored,
                    "replaced": res.replaced,
                    "files": res.files,
                    "steps": [{"id": c.id, "summary": c.summary} for c in res.steps],
                }
            )
        )
        return 0
    for c in reversed(res.steps):
        print(f"undid step {c.id}: {show_line(c.summary)}")
    for f in res.files:
        print(f"  {f['status']} {show_line(f['path'])}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    cps = _checkpoints(args)
    live = cps.list()
    if not live:
        _fail("there are no agent changes to show in this project")
        return EXIT_ERROR
    chosen = live[-args.steps :]
    if args.json:
        for c in chosen:
            print(
                json.dumps(
                    {
                        "type": "diff",
                        "checkpoint": c.id,
                        "summary": c.summary,
                        "files": c.files,
                        "patch": cps.step_diff(c),
                    }
                )
            )
        return 0
    patch = cps.diff(chosen[0].before, chosen[-1].after)
    # Escaped on a terminal; redirected to a file it stays a patch that applies.
    sys.stdout.write(show_block(patch) if sys.stdout.isatty() else patch)
    return 0


def _runs(args: argparse.Namespace) -> int:
    import os

    from .store import Store

    with Store() as store:
        runs = store.runs(os.path.realpath(args.project))
    for r in runs:
        if args.json:
            print(json.dumps({"id": r.id, "status": r.shown_status, "steps": r.steps, "task": r.task}))
        else:
            first = show_line((r.task.splitlines() or [""])[0][:60])
            print(f"{r.id}  {r.shown_status:<12} {r.steps:>3} steps  {first}")
    return 0


def _backend(args: argparse.Namespace) -> tuple[ModelBackend, Backend | None]:
    """The agent's turns (a model or a replay) and the model to close afterwards (if any)."""
    from .agent import EngineBackend, ReplayBackend, ReplayError

    if args.replay:
        try:
            return ReplayBackend(args.replay), None
        except (OSError, ReplayError) as e:
            from .agent import AgentError

            raise AgentError(f"cannot read the replay file: {e}") from None
    if not args.model and not args.demo and not args.remote:
        from .agent import AgentError

        raise AgentError("no model given: use --model PATH, --demo, --remote URL or --replay FILE")
    from .cli_common import open_backend, sampling_of

    if args.preset is None and not args.no_thinking:
        args.preset = "coding"  # Qwen3.6's card: thinking mode, precise coding
    engine = open_backend(args)
    return EngineBackend(engine, sampling=sampling_of(args), enable_thinking=not args.no_thinking), engine


def _run_agent(args: argparse.Namespace) -> int:
    import os

    from .agent import Agent, AgentConfig, AgentError

    if not args.resume and not (args.task and args.task.strip()):
        raise AgentError('give a task: locus agent DIR "what to do"')
    if args.max_steps < 1:
        raise AgentError("--max-steps must be at least 1")
    approvals = _approvals(args)
    config = AgentConfig.from_settings(
        max_steps=args.max_steps,
        token_budget=args.token_budget,
        max_turn_tokens=args.max_tokens,
        context_tokens=args.context or 32768,
        allow_network=args.allow_network,
        sandbox="none" if args.no_sandbox else "auto",
        env_allow=tuple(args.env),
    )
    if args.require_sandbox:
        config.require_sandbox = True
    servers = _mcp_servers(args)
    backend, engine = _backend(args)
    printer = _Printer(args.json)
    try:
        agent = Agent(
            args.project, backend, approvals=approvals, config=config, on_event=printer, mcp_servers=servers
        )
        with agent:
            result: list[Any] = []
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    if args.resume:
                        rid = args.resume
                        if rid == "last":
                            runs = agent.store.runs(str(agent.root.path), limit=1)
                            if not runs:
                                raise AgentError("this project has no stored runs to resume")
                            rid = runs[0].id
                        result.append(agent.resume(rid, args.task))
                    else:
                        result.append(agent.run(args.task))
                except BaseException as e:  # reported on the main thread
                    errors.append(e)
                finally:
                    finished.set()

            # The loop runs on a worker so Ctrl-C here can stop it cleanly (model, command, ask).
            # Waited on with an Event: Thread.join interrupted by Ctrl-C marks a live thread dead.
            finished = threading.Event()
            threading.Thread(target=work, name="locus-agent", daemon=True).start()
            try:
                while not finished.wait(0.2):
                    pass
            except KeyboardInterrupt:
                print("\nstopping…", file=sys.stderr)
                agent.stop()
                # A thread blocked reading an approval answer cannot be woken.
                if not finished.wait(10):
                    _fail("stopped while waiting for an approval; resume with --resume last")
                    return EXIT_STOPPED
            if errors:
                raise errors[0]
            res = result[0]
    finally:
        if engine is not None:
            engine.close()
    if not args.json:
        printer.summary(res, os.path.realpath(args.project))
    return {"answered": EXIT_ANSWERED, "stopped": EXIT_STOPPED, "error": EXIT_ERROR}.get(
        res.status, EXIT_LIMIT
    )


def _approvals(args: argparse.Namespace) -> Any:
    """The run's approvals from --yes and --allow (each prefix checked)."""
    from .agent import AgentError, Approvals
    from .agent.approvals import valid_prefix

    for p in args.allow:
        if not valid_prefix(p):
            raise AgentError(f"--allow '{show_line(p)}' is not a plain command prefix (e.g. 'pytest')")
    # A terminal is asked even with --yes: commands without a working sandbox need a person.
    return Approvals(
        ask=_ask_terminal if sys.stdin.isatty() else None, yes=args.yes, prefixes=list(args.allow)
    )


def _mcp_servers(args: argparse.Namespace) -> dict[str, Any]:
    """The MCP servers of the data folder's mcp.json and --mcp-config (AgentError when unusable)."""
    from .agent import AgentError
    from .mcp import McpConfigError, load_servers

    try:
        return load_servers(args.mcp_config)
    except McpConfigError as e:
        raise AgentError(str(e)) from None


def _ask_terminal(req: Any, cancel: threading.Event) -> Any:
    """Ask on the terminal: approve, reject with a reason, allow the tool or a command prefix."""
    from .agent import Decision
    from .agent.approvals import default_prefix

    bold, reset = (BOLD, RESET) if sys.stderr.isatty() else ("", "")
    # All of it escaped: a control character in a command or diff must not hide what is approved.
    summary, command = show_line(req.summary), show_line(req.command or "")
    print(f"\n{bold}approval needed:{reset} {summary}", file=sys.stderr)
    if req.diff or req.preview:
        print(show_block(req.diff or req.preview), file=sys.stderr)
    if req.command is not None and (req.needs_own_approval or command not in summary):
        print(f"  command: {command}", file=sys.stderr)
    if has_hidden(req.summary + (req.command or ""), keep="") or has_hidden(req.diff or ""):
        print("  (control characters are shown escaped, like \\x1b)", file=sys.stderr)
    if req.command is not None and not req.sandboxed:
        print("  (no sandbox: this command runs with your full permissions)", file=sys.stderr)
    where = " in this project" if req.tool.startswith("mcp__") else ""  # MCP choices are remembered
    opts = f"[y]es  [n]o  [a]lways allow this tool{where}"
    prefix = default_prefix(req.command) if req.command is not None else ""
    if req.needs_own_approval:
        opts = "[y]es, run it unconfined this once  [n]o"  # fail closed: nothing sticks
    elif prefix:
        opts += f"  [p]refix {prefix}"
    while not cancel.is_set():
        try:
            ans = _input(f"{opts} > ").strip().lower()
        except EOFError:
            return Decision.reject("no answer (input closed)")
        if ans in ("y", "yes"):
            return Decision.approve()
        if ans in ("n", "no"):
            try:
                reason = _input("reason for the model (optional) > ")
            except EOFError:
                reason = ""
            return Decision.reject(reason)
        if ans in ("a", "always") and not req.needs_own_approval:
            return Decision.allow_tool()
        if ans in ("p", "prefix") and prefix and not req.needs_own_approval:
            return Decision.allow_prefix("")
    return Decision.reject("the run was stopped")


def _input(prompt: str) -> str:
    """input() with the prompt on stderr, so stdout stays the answer (or JSON lines)."""
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


class _Printer:
    """Prints events: JSON lines, or a readable transcript (answer on stdout, the rest dim)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.color = sys.stderr.isatty()
        self._in_reasoning = False

    def _err(self, text: str, dim: bool = True) -> None:
        text = show_block(text)  # escaped before our own colour codes are added
        if self.color and dim:
            text = DIM + text + RESET
        print(text, file=sys.stderr, flush=True)

    def __call__(self, ev: Any) -> None:
        if self.as_json:
            print(json.dumps(ev.to_dict(), ensure_ascii=False, default=str), flush=True)
            return
        d, t = ev.data, ev.type
        if t == "reasoning":
            text = show_prose(d["text"])
            sys.stderr.write((DIM if self.color else "") + text + (RESET if self.color else ""))
            sys.stderr.flush()
            self._in_reasoning = True
            return
        if self._in_reasoning and t != "reasoning":
            sys.stderr.write("\n")
            self._in_reasoning = False
        if t == "text":
            sys.stdout.write(show_prose(d["text"]))
            sys.stdout.flush()
        elif t == "run_started":
            self._err(f"run {d['run_id']} in {d['project']} ({d['backend']})")
        elif t == "mcp_servers":
            for st in d["servers"]:
                if st["state"] == "ready":
                    self._err(f"MCP server {st['name']!r}: {len(st['tools'])} tools ({st['seconds']:.1f} s)")
        elif t == "warning":
            self._err(f"warning: {d['message']}", dim=False)
        elif t == "step":
            self._err(f"── step {ev.step}")
        elif t == "tool_call":
            args = ", ".join(f"{k}={_short(v)}" for k, v in d["arguments"].items())
            self._err(f"→ {d['name']}({args})", dim=False)
        elif t == "approval" and d.get("auto") is False:
            self._err(f"  {d['action']}" + (f": {d['reason']}" if d.get("reason") else ""))
        elif t == "tool_result":
            lines = show_block(d["content"]).splitlines()
            head = "\n".join("  " + x for x in lines[:8])
            more = f"\n  … {len(lines) - 8} more lines" if len(lines) > 8 else ""
            self._err(("" if d["ok"] else "  ✗\n") + head + more)
        elif t == "diff":
            self._err(d["patch"].rstrip())
        elif t == "files_changed":
            self._err("changed outside the agent: " + ", ".join(d["paths"]))
        elif t == "compacted":
            self._err(f"(dropped {d['messages']} old tool outputs to fit the context)")
        elif t == "error":
            self._err(f"error: {d['message']}", dim=False)

    def summary(self, res: Any, project: str) -> None:
        print(file=sys.stdout)
        tokens = f"{res.prompt_tokens} prompt + {res.completion_tokens} generated tokens"
        self._err(f"{res.status} after {res.steps} steps, {tokens}, {res.elapsed:.1f}s")
        if res.error:
            self._err(f"error: {res.error}", dim=False)
        if res.status != "answered":
            self._err(f"resume with: locus agent {project} --resume {res.run_id}")
        self._err(f"review with: locus agent {project} --diff   undo with: --undo [--steps N]")


def _short(v: Any, n: int = 60) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    s = s.replace("\n", "⏎")
    return repr(s[:n] + "…") if len(s) > n else repr(s)
