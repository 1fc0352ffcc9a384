"""`locus` as a user runs it: real subprocesses on tiny checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def locus(*args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 300):
    e = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


def test_help_lists_commands():
    r = locus("--help")
    assert r.returncode == 0
    for cmd in ("generate", "chat", "convert", "--demo"):
        assert cmd in r.stdout


def test_generate_json_with_prompt_ids(tiny_dir):
    model = tiny_dir("mlx", 4)
    eos = json.loads((model / "generation_config.json").read_text())["eos_token_id"]
    r = locus(
        "generate",
        "--model",
        str(model),
        "--prompt-ids",
        "5,17,33,2",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    done = lines[-1]
    assert done["type"] == "done"
    assert done["finish_reason"] in ("length", "stop")
    # Either all 6 tokens were generated, or fewer ending on an end-of-sequence token.
    if done["finish_reason"] == "length":
        assert len(done["token_ids"]) == 6
    else:
        assert len(done["token_ids"]) < 6 and done["token_ids"][-1] in eos
    assert done["usage"]["completion_tokens"] == len(done["token_ids"])
    assert done["usage"]["prompt_tokens"] == 4
    assert done["usage"]["draft_tokens"] == 0
    assert {x["type"] for x in lines} <= {
        "reasoning",
        "text",
        "tool_call",
        "tool_call_error",
        "usage",
        "done",
    }


@pytest.mark.slow
def test_generate_mtp_gives_the_same_tokens_and_counts_drafts(tiny_dir):
    model = tiny_dir("mlx", 4)
    runs = []
    for k in ("0", "3"):
        r = locus(
            "generate",
            "--model",
            str(model),
            "--prompt-ids",
            "5,17,33,2",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--json",
            "--mtp",
            k,
        )
        assert r.returncode == 0, r.stderr
        runs.append(json.loads(r.stdout.splitlines()[-1]))
    assert runs[0]["token_ids"] == runs[1]["token_ids"]
    assert runs[0]["usage"]["draft_tokens"] == 0
    assert runs[1]["usage"]["draft_tokens"] > 0 and runs[1]["usage"]["draft_tokens"] % 3 == 0
    assert "draft_accepted" in runs[1]["usage"]


def test_generate_matches_engine_greedy(tiny_dir):
    """The CLI's ids equal the engine's for the same request (same model, greedy)."""
    from engine import Engine, GenerationRequest, SamplingParams

    path = str(tiny_dir("per_expert"))
    r = locus(
        "generate",
        "--model",
        path,
        "--prompt",
        "Hello there",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    cli_ids = json.loads(r.stdout.splitlines()[-1])["token_ids"]
    with Engine.from_path(path) as eng:
        res = eng.generate(
            GenerationRequest(
                messages=[{"role": "user", "content": "Hello there"}],
                sampling=SamplingParams(temperature=0),
                max_tokens=8,
            )
        )
    assert cli_ids == res.token_ids


def test_generate_text_output_and_stdin(tiny_dir):
    r = locus(
        "generate",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--prompt",
        "-",
        "--max-tokens",
        "5",
        "--seed",
        "3",
        stdin="Hi from stdin",
    )
    assert r.returncode == 0, r.stderr
    assert "[reasoning]" in r.stdout  # the thinking template opens a reasoning block
    assert "prompt tokens" in r.stderr and "generated" in r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "/nonexistent/model"], "model directory not found"),
        (["--model", "nobody/not-cached-model"], "not in the local Hugging Face cache"),
        (["--prompt-ids", "1,x"], "comma-separated integers"),
        ([], "no model given"),
    ],
)
def test_generate_errors_are_clear(tiny_dir, args, needle):
    if "--model" not in args and args != []:
        args = ["--model", str(tiny_dir("mlx", 4)), *args]
    r = locus("generate", "--prompt", "x", *args) if "--prompt-ids" not in args else locus("generate", *args)
    assert r.returncode == 1
    assert "locus: error:" in r.stderr and needle in r.stderr
    assert "Traceback" not in r.stderr


def test_memory_refusal_is_clear(tiny_dir):
    r = locus(
        "generate",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--prompt",
        "x",
        env={"LOCUS_MEMORY_LIMIT_GB": "0.0001"},
    )
    assert r.returncode == 1
    assert "not enough memory" in r.stderr and "GB" in r.stderr


def test_convert_then_generate(tiny_dir, tmp_path):
    out = tmp_path / "q8"
    r = locus("convert", str(tiny_dir("fused")), str(out), "--bits", "8")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 8
    r = locus("generate", "--model", str(out), "--prompt-ids", "1,2,3", "--max-tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    r = locus("convert", str(tiny_dir("fused")), str(out))
    assert r.returncode == 1 and "not empty" in r.stderr


def test_demo_builds_once_and_says_it_is_random(tmp_path):
    env = {"LOCUS_CACHE_DIR": str(tmp_path)}
    r = locus("generate", "--demo", "--prompt", "hi", "--max-tokens", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr
    built = list(tmp_path.rglob("demo-qwen3_5_moe-tiny-v*/config.json"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    r = locus("generate", "--demo", "--prompt", "hi", "--max-tokens", "3", env=env)
    assert r.returncode == 0 and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_chat_session(tiny_dir):
    script = "hello\n/think off\nsecond\n/reset\n/help\nthird\n/quit\n"
    r = locus("chat", "--model", str(tiny_dir("mlx", 4)), "--max-tokens", "4", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "thinking off" in r.stdout and "conversation cleared" in r.stdout
    assert r.stdout.count("you> ") == 7
    assert r.stdout.count(" tok/s") == 3  # three replies, each with its stats line


def test_prompt_cache_survives_between_runs(tiny_dir, tmp_path):
    args = [
        "generate",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--prompt",
        "Same question again",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        "--json",
    ]
    env = {"LOCUS_CACHE_DIR": str(tmp_path)}
    first = json.loads(locus(*args, env=env).stdout.splitlines()[-1])
    second = json.loads(locus(*args, env=env).stdout.splitlines()[-1])
    assert first["usage"]["cached_tokens"] == 0
    assert second["usage"]["cached_tokens"] > 0  # resumed from a snapshot written by the first run
    assert second["token_ids"] == first["token_ids"]
    assert list((tmp_path / "prompt-cache").glob("*.safetensors"))
    off = json.loads(locus(*args, "--no-prompt-cache", env=env).stdout.splitlines()[-1])
    assert off["usage"]["cached_tokens"] == 0 and off["token_ids"] == first["token_ids"]


def test_help_imports_neither_the_engine_nor_the_server():
    # `locus --help` answers at once: mlx-lm (and transformers, torch) and FastAPI load lazily.
    code = (
        "import sys, contextlib, io\nsys.argv = ['locus', '--help']\nimport app.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    app.cli.main(['--help'])\n"
        "print(sorted(m for m in ('mlx_lm', 'fastapi', 'transformers', 'engine.engine') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
