"""`locus` command line: the window, generate, chat, convert; serve/agent/locate live in cli_*.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine import (
    PRESETS,
    Done,
    EngineError,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
    event_to_dict,
)

from .cli_common import open_backend, sampling_of

if TYPE_CHECKING:
    from engine import GenerationRequest

DIM, RESET = "\033[2m", "\033[0m"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="PATH", help="model directory or cached Hugging Face repo id")
    g.add_argument("--demo", action="store_true", help="use the tiny random demo model")
    g.add_argument(
        "--remote",
        metavar="URL",
        help="use the model of an OpenAI-compatible server instead of loading one "
        "here: its base URL, e.g. http://host:8000/v1 (vLLM, SGLang, llama-server, "
        "LM Studio, mlx_lm.server, another `locus serve`); prompts go to that server",
    )
    p.add_argument(
        "--remote-model",
        metavar="NAME",
        help="with --remote: which of the server's /v1/models to use (default: the first)",
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--remote-key-env",
        metavar="NAME",
        help="with --remote: send the API key held in environment variable NAME (as Authorization: Bearer)",
    )
    keys.add_argument(
        "--remote-key-from-keyring",
        action="store_true",
        help="with --remote: send the API key stored in the OS keychain (service 'locus', user 'remote:URL')",
    )
    p.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="N",
        help="longest conversation in tokens, reserved by the memory check (default "
        "32768; with --demo the model's whole 262144)",
    )
    p.add_argument(
        "--no-memory-check", action="store_true", help="load even if the memory estimate says it will not fit"
    )
    p.add_argument(
        "--no-prompt-cache", action="store_true", help="neither reuse nor save prompt-cache snapshots"
    )
    p.add_argument(
        "--prompt-cache-gb",
        type=float,
        metavar="GB",
        help="memory for prompt-cache snapshots (default: half of what stays free once the "
        "model and its context are loaded)",
    )
    p.add_argument(
        "--kv-bits",
        type=int,
        choices=[4, 8],
        help="keep the full-attention layers' keys and values quantized to this many bits "
        "(8: about half the KV memory; greedy output may differ slightly from 16-bit)",
    )
    p.add_argument(
        "--mtp",
        type=int,
        default=0,
        metavar="K",
        help="speculative decoding: draft K tokens (1-8) per step with the model's "
        "MTP head; same output, faster when drafts are accepted (default 0: off; a request "
        "with --seed and temperature > 0 does not draft)",
    )


def _add_sampling_args(
    p: argparse.ArgumentParser,
    *,
    preset_help: str = "default: thinking, or instruct with --no-thinking",
    max_tokens_help: str = "default 2048",
    thinking: bool = True,
) -> None:
    """Sampling options; commands with other defaults say so through the help arguments."""
    p.add_argument("--preset", choices=sorted(PRESETS), help=f"model-card sampling profile ({preset_help})")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--top-k", type=int, metavar="K", help="0 disables")
    p.add_argument("--min-p", type=float, metavar="P")
    p.add_argument("--presence-penalty", type=float, metavar="X")
    p.add_argument("--frequency-penalty", type=float, metavar="X")
    p.add_argument("--repetition-penalty", type=float, metavar="X")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--max-tokens", type=int, default=2048, metavar="N", help=max_tokens_help)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    if thinking:
        p.add_argument("--no-thinking", action="store_true", help="answer without a reasoning block")
    else:  # accepted, so generate's options all work here, but this command never thinks
        p.add_argument("--no-thinking", action="store_true", default=True, help="the default: no reasoning")


# Qt's standard options (QApplication/QGuiApplication): passed through to the window.
_QT_VALUE_OPTIONS = {
    "-platform",
    "-platformpluginpath",
    "-platformtheme",
    "-plugin",
    "-style",
    "-stylesheet",
    "-session",
    "-qwindowgeometry",
    "-qwindowicon",
    "-qwindowtitle",
    "-display",
    "-geometry",
    "-title",
    "-name",
    "-widgetcount",
}
_QT_FLAG_OPTIONS = {"-reverse", "-nograb", "-dograb", "-sync", "-testability"}


def split_qt_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Locus's arguments, Qt's standard ones such as `-platform xcb` or `-style=fusion`)."""
    ours: list[str] = []
    qt: list[str] = []
    it = iter(argv)
    for a in it:
        name = a.split("=", 1)[0]
        if name in _QT_VALUE_OPTIONS or name in {"-" + o for o in _QT_VALUE_OPTIONS}:
            qt.append(a)
            if "=" not in a:
                nxt = next(it, None)
                if nxt is not None:
                    qt.append(nxt)
        elif a in _QT_FLAG_OPTIONS:
            qt.append(a)
        else:
            ours.append(a)
    return ours, qt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locus",
        usage="locus [-h] [--demo | --model PATH | --remote URL] [--screenshot DIR] [DIR | COMMAND ...]",
        description="Run Qwen3.6-35B-A3B (and other MLX models) locally. With no command, open "
        "the window; `locus DIR` opens it on that project folder in the Agent view. Qt's own "
        "options (-platform NAME, -style NAME, …) are passed to the window.",
        epilog="Run `locus COMMAND --help` for a command's options.",
    )
    _add_window_args(parser)
    from . import cli_agent, cli_locate, cli_mcp, cli_serve

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate_parser(sub)
    c = sub.add_parser("chat", help="chat in the terminal (Ctrl-C stops a reply, /reset, /think on|off)")
    _add_model_args(c)
    c.add_argument("--system", metavar="TEXT", help="system prompt")
    c.add_argument("--mcp-config", action="append", default=[], metavar="FILE", help=cli_mcp.MCP_CONFIG_HELP)
    _add_sampling_args(c)
    _add_tool_parsers(sub)
    # Commands with their own modules: each adds its parser and sets `handler`, importing heavy
    # dependencies (FastAPI, Qt) only when run.
    for mod in (cli_serve, cli_agent, cli_locate, cli_mcp):
        mod.add_parser(sub, _add_model_args, _add_sampling_args)
    return parser


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    """The options of `locus` with no command (the window)."""
    parser.add_argument(
        "--demo",
        action="store_true",
        help="open the window on the tiny random demo model (no download needed)",
    )
    parser.add_argument(
        "--model", dest="window_model", metavar="PATH", help="open the window with this model loaded"
    )
    parser.add_argument(
        "--remote",
        dest="window_remote",
        metavar="URL",
        help="open the window on the model of this OpenAI-compatible server (its "
        "base URL, e.g. http://host:8000/v1); prompts go to that server. The API "
        "key is the one saved for URL in the keychain (Models → Remote server)",
    )
    parser.add_argument(
        "--remote-model",
        dest="window_remote_model",
        metavar="NAME",
        help="with --remote: which of the server's /v1/models to use (default: the first)",
    )
    parser.add_argument(
        "--remote-key-env",
        dest="window_remote_key_env",
        metavar="NAME",
        help="with --remote: send the API key held in environment variable NAME instead of the keychain's",
    )
    parser.add_argument(
        "--screenshot", metavar="DIR", help="render each view of the window to DIR/<view>.png and exit"
    )


def _add_generate_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="generate from a prompt and stream the output")
    _add_model_args(g)
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--prompt",
        metavar="TEXT",
        help="the user message (or raw text with --no-chat-template); '-' reads stdin",
    )
    src.add_argument("--prompt-ids", metavar="IDS", help="raw token ids, comma-separated; skips the template")
    g.add_argument("--system", metavar="TEXT", help="system prompt")
    g.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an image before the prompt text (repeatable; needs a vision checkpoint)",
    )
    g.add_argument("--no-chat-template", action="store_true", help="feed --prompt as raw text")
    g.add_argument("--json", action="store_true", help="one JSON object per event per line")
    g.add_argument(
        "--json-schema",
        metavar="FILE",
        help="the answer is JSON valid against this JSON schema file (the reasoning stays free)",
    )
    _add_sampling_args(g)


def _add_tool_parsers(sub: Any) -> None:
    """`locus convert` and `locus doctor`."""
    v = sub.add_parser("convert", help="convert an HF Qwen3.5/3.6-MoE checkpoint to MLX (quantized)")
    v.add_argument("src", help="HF checkpoint directory (or cached repo id)")
    v.add_argument("dst", help="new output directory")
    v.add_argument(
        "--bits",
        type=int,
        default=4,
        choices=(4, 8),
        help="4 (default) or 8; router and shared gate stay 8-bit",
    )
    v.add_argument("--group-size", type=int, default=64)
    v.add_argument("--no-quantize", action="store_true", help="keep the weights' precision")

    d = sub.add_parser("doctor", help="check this machine (Metal, memory, git, sandbox, disk)")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.add_argument("--quick", action="store_true", help="skip running the demo model")
    d.add_argument(
        "--sandbox-rules",
        action="store_true",
        help="also print what the agent's commands may read and write (for this folder)",
    )


def _schema_format(path: str | None) -> dict[str, Any] | None:
    """`--json-schema FILE` as the request's response_format."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except OSError as e:
        raise EngineError(f"--json-schema {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise EngineError(f"--json-schema {path}: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise EngineError(f"--json-schema {path}: a JSON schema is an object, not {type(schema).__name__}")
    return {"type": "json_schema", "schema": schema}


def _read_prompt(args: argparse.Namespace) -> GenerationRequest:
    from engine import GenerationRequest

    common: dict[str, Any] = dict(
        sampling=sampling_of(args),
        max_tokens=args.max_tokens,
        stop=args.stop,
        enable_thinking=not args.no_thinking,
        response_format=_schema_format(args.json_schema),
    )
    if args.prompt_ids is not None:
        try:
            ids = [int(x) for x in args.prompt_ids.replace(" ", "").split(",") if x]
        except ValueError:
            raise EngineError("--prompt-ids must be comma-separated integers, e.g. 1,2,3") from None
        if args.image:
            raise EngineError("--image needs a chat prompt (--prompt), not --prompt-ids")
        return GenerationRequest(prompt_ids=ids, **common)
    text = args.prompt
    if text is None or text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise EngineError("give --prompt TEXT, --prompt-ids, or pipe the prompt on stdin")
        text = sys.stdin.read()
    if args.no_chat_template:
        if args.image:
            raise EngineError("--image needs the chat template (drop --no-chat-template)")
        return GenerationRequest(prompt=(args.system or "") + text, **common)
    content: Any = text
    if args.image:
        for path in args.image:
            if not os.path.isfile(path):
                raise EngineError(f"--image {path}: no such file")
        content = [{"type": "image", "image": path} for path in args.image]
        content.append({"type": "text", "text": text})
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": content}
    ]
    return GenerationRequest(messages=messages, **common)


def cmd_generate(args: argparse.Namespace) -> int:
    req = _read_prompt(args)
    eng = open_backend(args)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    handle = eng.submit(req)
    in_reasoning = False
    done: Done | None = None
    try:
        for ev in handle.events():
            if args.json:
                if not isinstance(ev, PromptProgress):
                    print(json.dumps(event_to_dict(ev), ensure_ascii=False), flush=True)
                if isinstance(ev, Done):
                    done = ev
                continue
            if isinstance(ev, ReasoningDelta):
                if not in_reasoning:
                    in_reasoning = True
                    sys.stdout.write(DIM if color else "[reasoning]\n")
                sys.stdout.write(ev.text)
            elif isinstance(ev, TextDelta | ToolCall | ToolCallError) and in_reasoning:
                in_reasoning = False
                sys.stdout.write(RESET if color else "\n[/reasoning]\n")
            if isinstance(ev, TextDelta):
                sys.stdout.write(ev.text)
            elif isinstance(ev, ToolCall):
                sys.stdout.write(f"\n[tool call] {ev.name} {json.dumps(ev.arguments, ensure_ascii=False)}\n")
            elif isinstance(ev, ToolCallError):
                sys.stdout.write(f"\n[malformed tool call] {ev.message}\n{ev.raw}\n")
            elif isinstance(ev, Usage):
                u = ev
                print(
                    f"\n[{u.prompt_tokens} prompt tokens at {u.prompt_tps:.1f} tok/s, "
                    f"{u.completion_tokens} generated at {u.generation_tps:.1f} tok/s, "
                    f"peak {u.peak_memory_gb:.2f} GB"
                    + (f", MTP drafts {u.draft_accepted}/{u.draft_tokens} accepted" if u.draft_tokens else "")
                    + "]",
                    file=sys.stderr,
                )
            elif isinstance(ev, Done):
                done = ev
            sys.stdout.flush()
    except KeyboardInterrupt:
        handle.cancel()
        done = handle.result() and handle.done
    finally:
        if in_reasoning and color:
            sys.stdout.write(RESET)
        if not args.json:
            sys.stdout.write("\n")
        eng.close()
    if done is None or done.finish_reason == "error":
        print(
            f"locus: error: {done.error if done else 'generation ended unexpectedly'}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from engine import convert

    def progress(i: int, n: int) -> None:
        print(f"  wrote shard {i}/{n}", file=sys.stderr, flush=True)

    bits = None if args.no_quantize else args.bits
    out = convert(args.src, args.dst, bits=bits, group_size=args.group_size, progress=progress)
    what = "unquantized" if bits is None else f"{bits}-bit"
    print(f"Converted to {what} MLX checkpoint: {out}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .cli_mcp import chat_hub
    from .terminal_chat import run_chat

    backend = open_backend(args)
    hub = chat_hub(args)  # the MCP servers live as long as the chat
    try:
        return run_chat(args, backend, sampling_of(args), mcp=hub)
    finally:
        if hub is not None:
            hub.close()


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import format_report, run_checks, worst

    checks = run_checks(skip=("demo model",) if args.quick else ())
    rules = None
    if args.sandbox_rules:
        from .agent import sandbox_rules_report

        rules = sandbox_rules_report()
    if args.json:
        out: Any = [c.to_dict() for c in checks]
        if rules is not None:
            out = {"checks": out, "sandbox_rules": dataclasses.asdict(rules[0])}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(format_report(checks))
        if rules is not None:
            print("\nCommand sandbox, for a project in this folder:\n" + rules[1])
    return 1 if worst(checks) == "fail" else 0


def cmd_window(args: argparse.Namespace) -> int:
    """No command: open the desktop window (or render its views to PNG with --screenshot)
    through `args.open_window`, which the `locus` entry point (ui/main.py) supplies: app/ never
    imports ui/ (ui → app → engine)."""
    platform_given = any(
        a.split("=", 1)[0] in ("-platform", "--platform") for a in getattr(args, "qt_args", None) or []
    )
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or platform_given
    )
    remote = getattr(args, "window_remote", None)
    if remote and (args.demo or args.window_model):
        raise EngineError("--remote URL opens the window on a server's model: leave out --demo and --model")
    for opt in ("window_remote_model", "window_remote_key_env"):
        if getattr(args, opt, None) and not remote:
            raise EngineError(f"--{opt[len('window_') :].replace('_', '-')} goes with --remote URL")
    if remote and args.screenshot:
        raise EngineError("--screenshot renders the window on the demo model or --model PATH, not --remote")
    if headless and args.screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    elif headless and not os.environ.get("QT_QPA_PLATFORM"):
        # Qt would abort without a display: the same model in the terminal chat instead.
        if not (args.demo or args.window_model or remote):
            raise EngineError(
                "no display to open the window on: use `locus --demo` or `locus chat --model PATH` "
                "for the terminal chat, or `locus --demo --screenshot DIR` to render the window"
            )
        print(
            "locus: no display to open the window on; starting the terminal chat instead "
            "(`locus --demo --screenshot DIR` renders the window to PNG).",
            file=sys.stderr,
        )
        return cmd_chat(build_parser().parse_args(["chat", *_window_model_args(args)]))
    args.window_remote_key = _window_remote_key(args) if remote else None
    open_window = getattr(args, "open_window", None)
    if open_window is None:
        raise EngineError(
            "the window is opened by the `locus` command (python -m ui.main); "
            "`python -m app.cli` runs the other commands"
        )
    if args.demo:
        print(_demo_notice(), file=sys.stderr)
    if not args.screenshot:
        from .logs import apply_login_shell_path, setup_logging

        setup_logging()  # a file when double-clicked (no terminal); stderr otherwise
        apply_login_shell_path()  # macOS: agent commands find Homebrew's tools
    return int(open_window(args))


def _window_remote_key(args: argparse.Namespace) -> str | None:
    """The API key the window sends to --remote: --remote-key-env's, else the keychain's (the
    Models view saves it there), else none."""
    from .backends import remote_key_from_keyring

    name = getattr(args, "window_remote_key_env", None)
    if name:
        key = os.environ.get(name)
        if not key:
            raise EngineError(f"--remote-key-env {name}: the environment variable is not set")
        return key
    try:
        return remote_key_from_keyring(args.window_remote)
    except EngineError:
        return None  # no usable keychain: a server that needs a key will say so


def _window_model_args(args: argparse.Namespace) -> list[str]:
    """The window's model options as `locus chat` takes them (the terminal fallback)."""
    if args.demo:
        return ["--demo"]
    if args.window_model:
        return ["--model", args.window_model]
    out = ["--remote", args.window_remote]
    if args.window_remote_model:
        out += ["--remote-model", args.window_remote_model]
    if args.window_remote_key_env:
        out += ["--remote-key-env", args.window_remote_key_env]
    elif _window_remote_key(args):
        out.append("--remote-key-from-keyring")
    return out


def _demo_notice() -> str:
    from .demo import DEMO_NOTICE

    return DEMO_NOTICE


def _split_project(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], str | None]:
    """`locus [options] DIR`: take a folder argument out before argparse sees it as a command."""
    choices: set[str] = set()
    for act in parser._actions:  # the subcommands' names
        if isinstance(act, argparse._SubParsersAction):
            choices = set(act.choices)
    with_value = {"--model", "--screenshot", "--remote", "--remote-model", "--remote-key-env"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a.startswith("-"):
            i += 2 if a in with_value else 1
            continue
        if a in choices:
            return argv, None
        if os.path.isdir(a):
            return argv[:i] + argv[i + 1 :], a
        parser.error(
            f"{a!r} is neither a project folder nor a command (choose from {', '.join(sorted(choices))})"
        )
    return argv, None


def main(argv: Sequence[str] | None = None, *, open_window: Callable[[Any], int] | None = None) -> int:
    """The command line. `open_window(args)` opens the window when no command is given (the
    `locus` entry point in ui/main.py passes it; without it only the commands run)."""
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    raw, qt_args = split_qt_args(raw)
    raw, project = _split_project(parser, raw)
    args = parser.parse_args(raw)
    args.window_project = project
    args.qt_args = qt_args
    args.open_window = open_window
    if (project or qt_args) and args.command is not None:
        parser.error("a project folder and Qt options go with the window, not a command")
    try:
        if args.command is None:
            return cmd_window(args)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return handler(args)
        commands = {"generate": cmd_generate, "chat": cmd_chat, "convert": cmd_convert, "doctor": cmd_doctor}
        return commands[args.command](args)
    except EngineError as e:
        print(f"locus: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
