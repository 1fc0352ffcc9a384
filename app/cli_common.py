"""What every `locus` command that runs a model shares: its sampling settings, its context, and
the backend it opens (`--model`, `--demo` or `--remote`). app/cli.py and app/cli_*.py import it;
it imports none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from engine import PRESETS, EngineError, SamplingParams

if TYPE_CHECKING:
    from engine import Backend, PromptCache


def sampling_of(args: argparse.Namespace) -> SamplingParams:
    """--preset (or the profile --no-thinking implies) with the options given on top of it."""
    name = args.preset or ("instruct" if args.no_thinking else "thinking")
    return PRESETS[name].with_(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def model_path(args: argparse.Namespace) -> str:
    """--model, or the demo model's folder for --demo (made on first use)."""
    if getattr(args, "demo", False) or not args.model:
        if not getattr(args, "demo", False):
            raise EngineError("no model given: use --model PATH, or --demo for the tiny random model")
        from .demo import DEMO_NOTICE, demo_model_dir

        print(DEMO_NOTICE, file=sys.stderr)
        return str(demo_model_dir())
    return args.model


def context_of(args: argparse.Namespace) -> int:
    """--context, or its default: 32768 tokens, or the demo model's whole context (its cache is
    tiny, and every client's prompt fits), or with --remote 0: the server's own."""
    if getattr(args, "context", None):
        return int(args.context)
    if getattr(args, "remote", None):
        return 0  # the remote server's own context
    if getattr(args, "demo", False):
        from engine.tiny import QWEN36_CONTEXT

        return QWEN36_CONTEXT
    return 32768


def remote_key(args: argparse.Namespace) -> str | None:
    """The API key for --remote (never printed): from --remote-key-env or the keychain."""
    from .backends import remote_key_from_keyring

    name = getattr(args, "remote_key_env", None)
    if name:
        key = os.environ.get(name)
        if not key:
            raise EngineError(f"--remote-key-env {name}: the environment variable is not set")
        return key
    if getattr(args, "remote_key_from_keyring", False):
        key = remote_key_from_keyring(args.remote)
        if not key:
            raise EngineError(
                f"no API key for {args.remote} in the OS keychain (service "
                f"'locus', user 'remote:{args.remote.rstrip('/')}')"
            )
        return key
    return None


def open_backend(args: argparse.Namespace) -> Backend:
    """The model named by --model/--demo (loaded here) or --remote, reporting to stderr."""
    from engine import inspect_checkpoint

    from .backends import in_pipeline, open_local, open_pipeline, open_remote

    if getattr(args, "remote", None):
        for opt in ("mtp", "kv_bits", "prompt_cache_gb"):
            if getattr(args, opt, None):
                flag = "--" + opt.replace("_", "-")
                raise EngineError(f"{flag} applies to a model loaded here, not to --remote")
        print(f"Connecting to the remote model server at {args.remote}…", file=sys.stderr, flush=True)
        backend = open_remote(args.remote, api_key=remote_key(args), model=args.remote_model)
        print(
            f"Using the remote model {backend.info.name} at {args.remote} (prompts and replies "
            "go through that server)",
            file=sys.stderr,
            flush=True,
        )
        return backend
    for opt in ("remote_model", "remote_key_env", "remote_key_from_keyring"):
        if getattr(args, opt, None):
            raise EngineError(f"--{opt.replace('_', '-')} goes with --remote URL")
    path = model_path(args)
    info = inspect_checkpoint(path)
    print(
        f"Loading {info.path.name} ({info.file_bytes / 1e9:.2f} GB, {info.layout} layout)…",
        file=sys.stderr,
        flush=True,
    )
    if in_pipeline():  # started by mlx.launch: this process holds a share of the layers
        return open_pipeline(str(path), context_tokens=context_of(args), prompt_cache=prompt_cache_of(args))
    backend = open_local(
        str(path),
        context_tokens=context_of(args),
        memory_check=not args.no_memory_check,
        prompt_cache=prompt_cache_of(args),
        mtp=getattr(args, "mtp", 0),
        kv_bits=getattr(args, "kv_bits", None),
        parallel=getattr(args, "parallel", None),
    )
    plan = backend.stats().prompt_cache
    if plan is not None and plan.memory_plan:
        print(f"Memory plan: {memory_plan_line(plan.memory_plan)}", file=sys.stderr, flush=True)
    return backend


def memory_plan_line(plan: dict[str, int]) -> str:
    """The memory plan (engine.memplan.MemoryPlan.to_dict()) in one line for a person."""
    gb = 1024**3
    kv = f"{plan['kv_bits']}-bit KV" if plan.get("kv_bits") else "16-bit KV"
    return (
        f"weights {plan['weights_bytes'] / gb:.1f} GB, live caches {plan['live_cache_bytes'] / gb:.1f} GB "
        f"({plan['sequences']} x {plan['context_tokens']:,} tokens, {kv}), prompt-cache snapshots "
        f"{plan['snapshot_budget_bytes'] / gb:.1f} GB, free {plan['free_bytes'] / gb:.1f} GB: "
        f"a context of {plan['context_fits_tokens']:,} tokens fits each sequence, "
        f"{plan['context_fits_one_tokens']:,} one alone"
    )


def prompt_cache_of(args: argparse.Namespace) -> PromptCache:
    """The prompt cache, spilling to disk; memory-only and empty with --no-prompt-cache."""
    from engine import PromptCache

    from .settings import PROMPT_CACHE_DISK_BYTES, prompt_cache_dir

    if getattr(args, "no_prompt_cache", False):
        return PromptCache(memory_bytes=0)
    gb = getattr(args, "prompt_cache_gb", None)
    memory = int(gb * 1024**3) if gb is not None else None  # None: derived from free memory at load
    return PromptCache(memory_bytes=memory, disk_dir=prompt_cache_dir(), disk_bytes=PROMPT_CACHE_DISK_BYTES)
