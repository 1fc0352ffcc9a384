"""Real clients (the Claude Code CLI) against a real Locus server, offline.

`run_isolated(mode, out)` runs this module inside a network namespace that has only loopback
(`unshare -n`), so neither the server nor the client can reach anything else; the results come
back as JSON in `out`. Modes:

- "scripted": the real FastAPI app and SSE over a scripted engine (tests.scripted.ReplyEngine on
  the tiny checkpoint) that calls Claude Code's Bash tool, then answers.
- "demo": `locus serve --demo` as a subprocess (the tiny random model: the answer is gibberish).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import proctree

ROOT = Path(__file__).resolve().parent.parent
MARK = "locus-ran-this"
# Qwen3-Coder's tool-call XML, as the real model writes it.
BASH_CALL = (
    "I will run it.\n\n<tool_call>\n<function=Bash>\n<parameter=command>\n"
    f"echo {MARK} > proof.txt && cat proof.txt\n</parameter>\n<parameter=description>\n"
    "Write the proof file\n</parameter>\n</function>\n</tool_call>"
)
FINAL = "The command ran and printed the mark. Done."


def claude_env(url: str, home: str, **extra: str) -> dict[str, str]:
    """The README's Claude Code environment, plus what keeps it from phoning home."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    return {
        **keep,
        "HOME": home,
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": "locus",
        "ANTHROPIC_MODEL": "qwen3.6",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "qwen3.6",
        "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "262144",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **extra,
    }


def run_claude(
    url: str,
    prompt: str,
    cwd: Path,
    home: Path,
    timeout: float,
    max_turns: int = 4,
    flags: tuple[str, ...] = (),
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """`claude -p PROMPT --output-format json` against `url`; the CompletedProcess."""
    return subprocess.run(
        [
            "claude",
            "-p",
            prompt,
            "--output-format",
            "json",
            "--allowedTools",
            "Bash",
            "--max-turns",
            str(max_turns),
            *flags,
        ],
        cwd=cwd,
        env=claude_env(url, str(home), **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _reply(req: Any) -> str:
    """The scripted model: call Bash when offered it, answer after its result, else say ok."""
    msgs = req.messages or []
    # Claude Code asks for (adaptive) thinking: the prompt then opens <think>, so close it first.
    think = "The user wants a file written.\n</think>\n\n" if req.enable_thinking else ""
    if any(m.get("role") == "tool" for m in msgs[-3:]):  # reminders may follow the result
        return think + FINAL
    if any(t["function"]["name"] == "Bash" for t in req.tools or []):
        return think + BASH_CALL
    return think + "ok"  # side requests (titles, summaries)


def _scripted(work: Path) -> dict[str, Any]:
    from app.server import ServerConfig, ServerThread, create_app
    from engine import load_model, write_tiny_checkpoint
    from tests.scripted import ReplyEngine

    write_tiny_checkpoint(work / "model", "mlx", bits=4)
    eng = ReplyEngine(load_model(work / "model"), _reply)
    config = ServerConfig(port=0, log_level="warning")
    srv = ServerThread(create_app(eng, config), config).start()
    try:
        proj = work / "proj"
        proj.mkdir()
        r = run_claude(srv.url, "Write the proof file with Bash.", proj, work / "home", 300)
        tool_results = [
            m["content"] for req in eng.requests for m in req.messages or [] if m.get("role") == "tool"
        ]
        records = [
            {"endpoint": x.endpoint, "status": x.status, "error": x.error, "client": x.client}
            for x in srv.app.service.requests.records()
        ]
    finally:
        srv.stop()
        eng.close()
    proof = proj / "proof.txt"
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "proof": proof.read_text() if proof.exists() else None,
        "tool_results": tool_results,
        "requests": records,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo(work: Path) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache"), "HOME": str(work / "serverhome")}
    log = open(work / "serve.log", "w")  # closed below
    server = proctree.popen(
        [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port), "--log-level", "debug"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("locus serve --demo did not start")
            time.sleep(0.5)
        proj = work / "proj"
        proj.mkdir()
        # Kept short for CI: no tools and a one-line system prompt (the random model's prefill of
        # Claude Code's full ~56K-token prompt takes minutes on two cores; the scripted run covers
        # that prompt), and its replies bounded.
        r = run_claude(
            url,
            "Say hello.",
            proj,
            work / "home",
            300,
            max_turns=1,
            flags=("--tools", "", "--system-prompt", "Answer briefly."),
            CLAUDE_CODE_MAX_OUTPUT_TOKENS="64",
        )
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "serve_log": (work / "serve.log").read_text()[-6000:],
    }


def run_isolated(mode: str, out: Path, timeout: float = 600) -> dict[str, Any]:
    """Run `mode` inside a loopback-only network namespace; its results."""
    script = 'ip link set lo up && exec "$0" -m tests.realclients "$1" "$2"'
    proctree.run(
        ["unshare", "-n", "sh", "-c", script, sys.executable, mode, str(out)],
        cwd=ROOT,
        timeout=timeout,
        check=True,
    )
    return json.loads(out.read_text())


def can_isolate() -> bool:
    """Whether this machine lets us make a loopback-only network namespace."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return r.returncode == 0


def main(argv: list[str]) -> int:
    mode, out = argv
    work = Path(tempfile.mkdtemp(prefix="locus-realclient-"))
    try:
        result = _scripted(work) if mode == "scripted" else _demo(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
