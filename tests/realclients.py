"""Real clients (the Claude Code and Codex CLIs) against a real Locus server, offline.

`run_isolated(mode, out)` runs this module inside a network namespace that has only loopback
(`unshare -n`), so neither the server nor the client can reach anything else; the results come
back as JSON in `out`. Modes:

- "scripted": the real FastAPI app and SSE over a scripted engine (tests.scripted.ReplyEngine on
  the tiny checkpoint) that calls Claude Code's Bash tool, then answers.
- "claude-full": `locus serve --demo` as a subprocess (the tiny random model: the answer is
  gibberish) and Claude Code's real prompt (default tools and system prompt), in two sessions.
- "claude-subagents": Claude Code launching three sub-agents at once against the real batching
  engine (tests.scripted.batched_reply_engine, --parallel 4); which requests shared decode steps.
- "codex-scripted", "codex-demo": the same two for the Codex CLI (`codex exec`, its default tools,
  configured as the README says); "codex-schema": `codex exec --output-schema` against the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
EXEC_CALL = (
    "I will run it.\n\n<tool_call>\n<function=exec_command>\n<parameter=cmd>\n"
    f"echo {MARK}\n</parameter>\n</function>\n</tool_call>"
)


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


def codex_config(url: str, home: Path) -> Path:
    """CODEX_HOME with the README's config.toml pointing Codex at `url`; the folder."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model = "qwen3.6"\nmodel_provider = "locus"\nmodel_context_window = 262144\n\n'
        f'[model_providers.locus]\nname = "Locus"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
    )
    return codex_home


def run_codex(
    url: str,
    prompt: str,
    cwd: Path,
    home: Path,
    timeout: float,
    resume: bool = False,
    flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`codex exec PROMPT` with Codex's default tools and sandbox, against `url`; `resume`: as the
    next turn of the last session (`codex exec resume --last`); `flags`: more `codex exec` options."""
    codex_home = codex_config(url, home)
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    # Codex will not put its sandbox helper in a CODEX_HOME under the temp folder: name another.
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**keep, "HOME": str(home), "CODEX_HOME": str(codex_home), "TMPDIR": str(tmp), "RUST_LOG": "error"}
    return subprocess.run(
        [
            "codex",
            "exec",
            "--skip-git-repo-check",
            "--json",
            *flags,
            *(["resume", "--last"] if resume else []),
            prompt,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _codex_reply(req: Any) -> str:
    """The scripted model for Codex: run exec_command when offered it, answer after its output."""
    think = "The user wants the mark printed.\n</think>\n\n" if req.enable_thinking else ""
    if any(m.get("role") == "tool" for m in (req.messages or [])[-3:]):
        return think + FINAL
    if any(t["function"]["name"] == "exec_command" for t in req.tools or []):
        return think + EXEC_CALL
    return think + "ok"


def _served(work: Path, reply: Any, client: Any, cache: bool = False) -> dict[str, Any]:
    """`client(url, proj)` against the real app over a scripted engine; what both sides saw.
    `cache`: the real tiny model runs (forced to the replies) with a real prompt cache."""
    from app.server import ServerConfig, ServerThread, create_app
    from engine import PromptCache, load_model, write_tiny_checkpoint
    from tests.scripted import ReplyEngine

    write_tiny_checkpoint(work / "model", "mlx", bits=4)
    eng = ReplyEngine(load_model(work / "model"), reply, prompt_cache=PromptCache() if cache else None)
    config = ServerConfig(port=0, log_level="warning")
    srv = ServerThread(create_app(eng, config), config).start()
    try:
        proj = work / "proj"
        proj.mkdir()
        r = client(srv.url, proj)
        tool_results = [
            m["content"] for req in eng.requests for m in req.messages or [] if m.get("role") == "tool"
        ]
        records = [
            {
                "endpoint": x.endpoint,
                "status": x.status,
                "error": x.error,
                "client": x.client,
                "note": x.note,
                "prompt": x.prompt_tokens,
                "cached": x.cached_tokens,
                "out": x.output_tokens,
            }
            for x in srv.app.service.requests.records()
        ]
        tools = [t["function"]["name"] for t in (eng.requests[0].tools or [])] if eng.requests else []
    finally:
        srv.stop()
        eng.close()
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "tool_results": tool_results,
        "requests": records,
        "tools": tools,
        "proof": (proj / "proof.txt").read_text() if (proj / "proof.txt").exists() else None,
    }


def _scripted(work: Path) -> dict[str, Any]:
    def claude(url: str, proj: Path) -> subprocess.CompletedProcess[str]:
        return run_claude(url, "Write the proof file with Bash.", proj, work / "home", 300)

    return _served(work, _reply, claude)


def _codex_scripted(work: Path) -> dict[str, Any]:
    def codex(url: str, proj: Path) -> subprocess.CompletedProcess[str]:
        first = run_codex(url, "Print the mark with a shell command.", proj, work / "home", 300)
        if first.returncode != 0:
            return first
        # A second turn of the same session: its prompt extends the first session's last one.
        again = run_codex(url, "Say it once more.", proj, work / "home", 300, resume=True)
        return subprocess.CompletedProcess(
            again.args, again.returncode, first.stdout + again.stdout, again.stderr
        )

    # The real tiny model under the script, with a real prompt cache: the reuse is measured.
    return _served(work, _codex_reply, codex, cache=True)


SUBAGENTS = 3
SUB_FINAL = "All three sub-agents answered. Done."


def _agent_call(tool: str, k: int) -> str:
    return (
        f"<tool_call>\n<function={tool}>\n<parameter=description>\nSub-task {k}\n</parameter>\n"
        f"<parameter=prompt>\nSUBTASK-{k}: say which sub-task you are.\n</parameter>\n"
        "<parameter=subagent_type>\ngeneral-purpose\n</parameter>\n</function>\n</tool_call>"
    )


def _subagent_reply(req: Any) -> str:
    """The scripted model for parallel sub-agents: the main agent (offered the sub-agent tool)
    launches SUBAGENTS of them in one reply, then finishes; each sub-agent answers in ~350 tokens
    (the tiny tokenizer's), longer than the gap between the calls as Claude Code starts them."""
    think = "Planned.\n</think>\n\n" if req.enable_thinking else ""
    msgs = req.messages or []
    # A sub-agent's task is its first user message (sub-agents are offered the tool too).
    first = json.dumps(next((m.get("content") for m in msgs if m.get("role") == "user"), ""))
    for k in range(1, SUBAGENTS + 1):
        if f"SUBTASK-{k}" in first:
            return think + f"I am sub-agent {k}. " + "Checked and nothing else to report. " * 14
    names = [t["function"]["name"] for t in req.tools or []]
    tool = next((n for n in ("Agent", "Task") if n in names), None)
    if tool is None:
        return think + "ok"  # side requests (titles, summaries)
    if any(m.get("role") == "tool" for m in msgs[-3:]):
        return think + SUB_FINAL
    return think + "\n".join(_agent_call(tool, k) for k in range(1, SUBAGENTS + 1))


def _claude_subagents(work: Path) -> dict[str, Any]:
    """Claude Code launching parallel sub-agents against the real app and the real batching
    engine (tests.scripted.batched_reply_engine, --parallel 4): which requests shared decode steps."""
    from app.server import ServerConfig, ServerThread, create_app
    from engine import load_model, write_tiny_checkpoint
    from tests.scripted import batched_reply_engine

    write_tiny_checkpoint(work / "model", "mlx", bits=4)
    eng = batched_reply_engine(load_model(work / "model"), _subagent_reply, parallel=4)
    config = ServerConfig(port=0, log_level="warning", max_active=4)
    srv = ServerThread(create_app(eng, config), config).start()
    proj = work / "proj"
    proj.mkdir()
    try:
        t0 = time.monotonic()
        flags = ("--tools", "Agent", "--allowedTools", "Agent")
        r = run_claude(srv.url, "Run the three sub-tasks in parallel.", proj, work / "home", 240, 6, flags)
        seconds = time.monotonic() - t0
        records = [
            {"status": x.status, "error": x.error, "time": x.time, "duration": x.duration_s}
            for x in srv.app.service.requests.records()
        ]
    finally:
        srv.stop()
        eng.close()
    kinds = {hid: _subagent_reply(req)[:40] for hid, req in eng.runs.items()}
    steps: dict[str, list[int]] = {}
    for hid, step in eng.trace:
        steps.setdefault(str(hid), []).append(step)
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "seconds": seconds,
        "requests": records,
        "kinds": {str(h): k for h, k in kinds.items()},
        "tools": [[t["function"]["name"] for t in req.tools or []] for req in eng.runs.values()],
        "steps": steps,
        "widest": eng.scheduler.widest,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def demo_server(work: Path, *flags: str) -> Iterator[str]:
    """`locus serve --demo` (the tiny random model) as a subprocess; its URL while it runs."""
    port = _free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache"), "HOME": str(work / "serverhome")}
    log = open(work / "serve.log", "w")  # closed below
    cmd = [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port), "--log-level", "debug"]
    server = proctree.popen([*cmd, *flags], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _claude_full(work: Path) -> dict[str, Any]:
    """Claude Code's real prompt (default tools and system prompt) against the demo model, twice:
    the second session's prompt shares the first one's prefix."""
    proj = work / "proj"
    proj.mkdir()
    runs = []
    with demo_server(work) as url:
        for prompt in ("Say hello.", "Say goodbye."):
            r = run_claude(
                url, prompt, proj, work / "home", 600, max_turns=1, CLAUDE_CODE_MAX_OUTPUT_TOKENS="16"
            )
            runs.append({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-2000:]})
    lines = (work / "serve.log").read_text().splitlines()
    keep = ("locus.server.requests", "Context:", "ERROR", "Traceback")
    return {"runs": runs, "serve_log": "\n".join(x for x in lines if any(k in x for k in keep))[-20000:]}


def _codex_demo(work: Path) -> dict[str, Any]:
    proj = work / "proj"
    proj.mkdir()
    # The random model's reply is bounded by the server's default (Codex sends no max_output_tokens).
    with demo_server(work) as url:
        r = run_codex(url, "Say hello.", proj, work / "home", 400)
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "serve_log": (work / "serve.log").read_text()[-12000:],
    }


# `codex exec --output-schema`: small, so the random model's constrained answer ends quickly.
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}, "count": {"type": "integer"}},
    "required": ["answer", "count"],
    "additionalProperties": False,
}


def _codex_schema(work: Path) -> dict[str, Any]:
    """`codex exec --output-schema` against the demo model, thinking off (a random model would
    think until the token limit, and the constraint starts after the thinking)."""
    proj = work / "proj"
    proj.mkdir()
    schema = work / "schema.json"
    schema.write_text(json.dumps(OUTPUT_SCHEMA))
    flags = ("--output-schema", str(schema), "-c", 'model_reasoning_effort="minimal"')
    with demo_server(work) as url:
        r = run_codex(url, "Answer with a word and a number.", proj, work / "home", 400, flags=flags)
    return {
        "rc": r.returncode,
        "stdout": r.stdout,
        "stderr": r.stderr[-4000:],
        "serve_log": (work / "serve.log").read_text()[-12000:],
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
        modes = {"scripted": _scripted, "claude-full": _claude_full, "codex-scripted": _codex_scripted}
        modes["codex-demo"] = _codex_demo
        modes["claude-subagents"] = _claude_subagents
        modes["codex-schema"] = _codex_schema
        result = modes[mode](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
