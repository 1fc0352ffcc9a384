"""`locus serve`: the local Anthropic- and OpenAI-compatible API over the loaded model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from engine import PRESETS


def add_parser(sub: Any, add_model_args: Callable, add_sampling_args: Callable) -> None:
    """Register `locus serve` on the subparsers `sub`."""
    p = sub.add_parser(
        "serve",
        help="serve the model over Anthropic's Messages and OpenAI's chat completions and Responses APIs",
        description=(
            "Serve the model on this machine for Claude Code, Codex-style clients, the anthropic "
            "and openai SDKs and other tools: POST /v1/messages, /v1/messages/count_tokens, "
            "/v1/chat/completions, /v1/responses, GET and DELETE /v1/responses/{id}, GET /v1/models, "
            "/v1/models/{name}, /health. Any "
            "model name in a request is served by the loaded model. --log-level debug logs one "
            "line per request."
        ),
    )
    add_model_args(p)
    _add_access_args(p)
    _add_limit_args(p)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="sampling profile for requests that set none (default: thinking when "
        "the request thinks, instruct otherwise)",
    )
    p.add_argument("--model-name", metavar="NAME", help="name listed by /v1/models")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--hosts",
        metavar="HOSTFILE",
        help="run one model across several Macs: mlx.launch's JSON hostfile (ssh name "
        "and ring IPs of each Mac, this one first); rank 0 serves, the others hold "
        "the rest of the layers. The model path must be the same on every Mac",
    )
    p.set_defaults(handler=run)


def _add_access_args(p: Any) -> None:
    """Who may call the server: address, port, API key, origins and host names."""
    from app.server.config import DEFAULT_HOST, DEFAULT_PORT

    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-from-keyring",
        action="store_true",
        help="require the API key stored in the OS keychain (service 'locus', user "
        "'api-key') as x-api-key or Authorization: Bearer",
    )
    keys.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require the API key held in PATH, a file only you can read (chmod "
        "600); without either option the key in LOCUS_API_KEY is required if set "
        "(for machines without a keychain, e.g. headless Linux)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="browser origin allowed to call the API, e.g. http://localhost:3000 "
        "(repeatable; '*' allows any)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="extra Host header name to accept besides loopback names (repeatable)",
    )


def _add_limit_args(p: Any) -> None:
    """How much the server takes: sequences decoded at once, queue, body size, connections, header time."""
    from engine.request import DEFAULT_PARALLEL

    p.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help="requests decoded together as one batch (continuous batching); more wait in the "
        f"queue (default {DEFAULT_PARALLEL})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        metavar="N",
        help="requests allowed to wait for the model; more get 'overloaded' (default 32)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=32.0,
        metavar="MB",
        help="largest request body accepted (default 32 MB)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="connections open at once; at the limit the one idle longest is closed "
        "(default 1000, fewer if the open-file limit is lower)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a connection has to send a request's headers (default 10)",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The ServerConfig for the command line; RuntimeError with advice for bad values."""
    from app.cli_common import context_of
    from app.server.config import (
        ServerConfig,
        api_key_from_env,
        api_key_from_file,
        api_key_from_keyring,
    )
    from app.settings import data_dir

    if not 0 <= args.port <= 65535:
        raise RuntimeError(f"--port must be between 0 and 65535 (got {args.port})")
    if args.max_queue < 0:
        raise RuntimeError(f"--max-queue must be >= 0 (got {args.max_queue})")
    if args.parallel < 1:
        raise RuntimeError(f"--parallel must be >= 1 (got {args.parallel})")
    if args.max_body_mb <= 0:
        raise RuntimeError("--max-body-mb must be positive")
    if args.max_connections < 1 or args.header_timeout <= 0:
        raise RuntimeError("--max-connections and --header-timeout must be positive")
    if args.api_key_file:
        key = api_key_from_file(args.api_key_file)
    elif args.api_key_from_keyring:
        key = api_key_from_keyring()
    else:
        key = api_key_from_env()
    return ServerConfig(
        host=args.host,
        port=args.port,
        api_key=key,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        max_queue=args.max_queue,
        max_active=args.parallel,
        allowed_origins=tuple(args.allow_origin),
        allowed_hosts=tuple(args.allow_host),
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        context_tokens=context_of(args),
        preset=args.preset,
        model_name=args.model_name,
        log_level=args.log_level,
        responses_db=str(data_dir() / "responses.sqlite3"),
    )


def exposure_warning(config: Any) -> str | None:
    """The warning printed when the server listens beyond this machine (None when it does not)."""
    if config.is_loopback:
        return None
    lines = [
        f"WARNING: listening on {config.host}, not 127.0.0.1: other machines can reach this API.",
        "Requests are not encrypted (plain HTTP).",
    ]
    if config.api_key is None:
        lines.append(
            "There is NO API key: anyone who can reach this port can use the model. "
            "Set LOCUS_API_KEY, or add --api-key-file PATH or --api-key-from-keyring."
        )
    return "\n".join(lines)


def _log_to_stderr(level: str) -> None:
    """Locus's own log lines (one per request at debug, 4xx reasons at info) beside uvicorn's."""
    import logging

    logger = logging.getLogger("locus")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def launch_hosts(hostfile: str, argv: list[str]) -> int:
    """Run this command again on every host of `hostfile` under mlx.launch (ring backend unless
    the hostfile names another), minus --hosts; the exit status."""
    import os
    import subprocess

    if not os.path.isfile(hostfile):
        print(f"locus serve: --hosts {hostfile}: no such file", file=sys.stderr)
        return 2
    rest, skip = [], False
    for a in argv:
        if skip or a.startswith("--hosts="):
            skip = False
            continue
        if a == "--hosts":
            skip = True
            continue
        rest.append(a)
    main = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"
    launcher = [sys.executable, "-c", main, "--hostfile", hostfile]
    return subprocess.call([*launcher, "--", sys.executable, "-m", "app.cli", *rest])


def run(args: argparse.Namespace) -> int:
    from app.backends import in_pipeline
    from app.cli_common import open_backend
    from app.server import create_app, make_server
    from app.server.jobs import context_note

    if getattr(args, "hosts", None) and not in_pipeline():
        return launch_hosts(args.hosts, sys.argv[1:])
    if in_pipeline() and os.environ.get("MLX_RANK", "0") != "0":
        # A worker rank serves no HTTP: it needs neither the API key nor the server's settings.
        open_backend(args)  # runs rank 0's requests until rank 0 closes the pipeline, then exits
        return 0

    try:
        config = config_from_args(args)
    except RuntimeError as e:
        print(f"locus serve: {e}", file=sys.stderr)
        return 2
    warning = exposure_warning(config)
    if warning:
        color = sys.stderr.isatty()
        print(
            ("\033[1;31m" if color else "") + warning + ("\033[0m" if color else ""),
            file=sys.stderr,
            flush=True,
        )
    _log_to_stderr(config.log_level)
    backend = open_backend(args)
    try:
        app = create_app(backend, config)
        name = app.service.model_name
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{config.port}"
        window = app.service.context_limit()
        compact = f"CLAUDE_CODE_AUTO_COMPACT_WINDOW={window} " if window else ""
        remote = backend.info.remote
        if remote:
            name += f" (a remote model, served by {remote})"
        print(
            f"Serving {name} at {url}\n"
            f"  Claude Code:  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN="
            f"{'<your key>' if config.api_key else 'locus'} ANTHROPIC_MODEL=qwen3.6 "
            f"{compact}claude\n"
            f"  OpenAI SDK:   base_url={url}/v1\n"
            "Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        print(context_note(backend, config.context_tokens), file=sys.stderr, flush=True)
        server = make_server(app, config)
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; say why below
            pass
        app.service.cancel_all()
    finally:
        backend.close()
    if not server.started:
        print(f"locus serve: could not listen on {config.host}:{config.port} (in use?)", file=sys.stderr)
        return 1
    return 0
