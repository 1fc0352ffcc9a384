"""`--remote URL` as a user runs it: `locus` subprocesses against a real Locus API server (in this
process, over a model that replays scripted outputs on the tiny checkpoint)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import proctree
from tests.app.agent.helpers import answer, call, make_project

ROOT = Path(__file__).resolve().parents[2]


def locus(*args: str, stdin: str | None = None, env: dict | None = None, cwd: Path = ROOT):
    e = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=e,
    )


@pytest.fixture
def server(tiny_model):
    """start(*replies, **ServerConfig fields) -> (its /v1 URL, the scripted engine behind it)."""
    from app.server import ServerConfig, ServerThread, create_app
    from tests.scripted import ReplyEngine

    running: list[Any] = []

    def start(*replies: str, **cfg: Any) -> tuple[str, Any]:
        eng = ReplyEngine(tiny_model, list(replies))
        config = ServerConfig(port=0, log_level="warning", **cfg)
        srv = ServerThread(create_app(eng, config), config).start()
        running.append(srv)
        return srv.url + "/v1", eng

    yield start
    for srv in running:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chat_remote(server):
    url, eng = server("The user says hi.\n</think>\n\nHello from afar.")
    r = locus("chat", "--remote", url, "--max-tokens", "50", stdin="hi there\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "Using the remote model" in r.stderr and url in r.stderr
    assert f"(remote, at {url})" in r.stdout
    assert "Hello from afar." in r.stdout and "The user says hi." in r.stdout
    (req,) = eng.requests
    assert req.messages[-1] == {"role": "user", "content": "hi there"}
    assert req.max_tokens == 50


def test_generate_remote_json(server):
    url, _ = server("Thinking.\n</think>\n\nDone.")
    r = locus("generate", "--remote", url, "--prompt", "go", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert "".join(e["text"] for e in events if e["type"] == "text") == "Done."
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    assert events[-1]["usage"]["prompt_tokens"] > 0


def test_agent_remote_edits_the_project(server, tmp_path):
    url, eng = server(
        call("write_file", "I will write the note.", path="NOTE.txt", content="from afar\n"),
        answer("Wrote NOTE.txt."),
    )
    project = make_project(tmp_path / "proj")
    r = locus(
        "agent",
        str(project),
        "write a note",
        "--remote",
        url,
        "--yes",
        env={"LOCUS_DATA_DIR": str(tmp_path / "data")},
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert (project / "NOTE.txt").read_text() == "from afar\n"
    assert "Wrote NOTE.txt." in r.stdout
    # The second turn carried the tool call and its result back to the server.
    second = eng.requests[1].messages
    calls = [m for m in second if m.get("tool_calls")]
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] == "write_file"
    assert any(m["role"] == "tool" for m in second)


def test_locate_remote(tmp_path):
    import base64
    import io

    from PIL import Image

    from tests.fakeopenai import Fake, chunk, sse

    img = tmp_path / "pic.png"
    Image.new("RGB", (200, 100), (255, 0, 0)).save(img)
    srv = Fake(
        sse(chunk({"content": '[{"bbox_2d": [100, 200, 500, 800], "label": "cat"}]'}), chunk({}, "stop"))
    )
    try:
        r = locus("locate", str(img), "cat", "--remote", srv.url, "--json", "--no-draw")
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["boxes"] == [{"label": "cat", "bbox": [20.0, 20.0, 100.0, 80.0]}]
    assert (out["width"], out["height"]) == (200, 100)
    (body,) = srv.posts()
    assert body["chat_template_kwargs"]["enable_thinking"] is False
    parts = body["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (200, 100) and sent.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    assert any(p["type"] == "text" and "cat" in p["text"] for p in parts)


@pytest.mark.slow
def test_remote_with_model_is_refused_and_other_errors_are_clear(server, tmp_path):
    r = locus("chat", "--remote", "http://127.0.0.1:1/v1", "--demo")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    port = free_port()
    r = locus("chat", "--remote", f"http://127.0.0.1:{port}/v1", stdin="/quit\n")
    assert r.returncode == 1 and "connection refused" in r.stderr and "Traceback" not in r.stderr
    r = locus("generate", "--demo", "--remote-model", "x", "--prompt", "hi")
    assert r.returncode == 1 and "--remote-model goes with --remote URL" in r.stderr


@pytest.mark.slow
def test_api_key_from_an_environment_variable(server):
    url, _ = server("Thought.\n</think>\n\nauthorised", api_key="s3cret-key")
    r = locus("generate", "--remote", url, "--prompt", "hi")
    assert r.returncode == 1 and "401" in r.stderr
    r = locus("generate", "--remote", url, "--remote-key-env", "MY_KEY", "--prompt", "hi")
    assert r.returncode == 1 and "MY_KEY" in r.stderr and "not set" in r.stderr
    r = locus(
        "generate",
        "--remote",
        url,
        "--remote-key-env",
        "MY_KEY",
        "--prompt",
        "hi",
        env={"MY_KEY": "s3cret-key"},
    )
    assert r.returncode == 0, r.stderr
    assert "authorised" in r.stdout and "s3cret-key" not in r.stdout + r.stderr


def test_api_key_from_the_keychain(server, memory_keyring):
    from app.backends import open_remote, remote_key_from_keyring, save_remote_key
    from app.cli import build_parser
    from app.cli_common import remote_key
    from engine import GenerationRequest

    url, _ = server("Thought.\n</think>\n\nok", api_key="k")
    args = build_parser().parse_args(["chat", "--remote", url, "--remote-key-from-keyring"])
    with pytest.raises(Exception, match="no API key"):
        remote_key(args)
    save_remote_key(url + "/", "k")
    assert remote_key_from_keyring(url) == "k" and remote_key(args) == "k"
    rb = open_remote(url, api_key=remote_key(args))
    req = GenerationRequest(messages=[{"role": "user", "content": "hi"}])
    assert rb.submit(req).result().text == "ok"
    save_remote_key(url, None)
    assert remote_key_from_keyring(url) is None


@pytest.mark.slow
def test_serve_remote_reserves_the_model(server):
    import openai

    url, eng = server("Why not.\n</think>\n\nRelayed answer.")
    port = free_port()
    proc = proctree.popen(
        [sys.executable, "-m", "app.cli", "serve", "--remote", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert models["data"][0]["id"] == "model"  # the remote server's model name
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        out = client.chat.completions.create(
            model="qwen3.6", messages=[{"role": "user", "content": "relay this"}], max_tokens=40
        )
        assert out.choices[0].message.content == "Relayed answer."
        assert out.usage.prompt_tokens > 0
        assert eng.requests[-1].messages[-1] == {"role": "user", "content": "relay this"}
        anth = httpx.post(
            f"http://127.0.0.1:{port}/v1/messages",
            timeout=30,
            json={
                "model": "claude",
                "max_tokens": 2000,
                "messages": [{"role": "user", "content": "hi"}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
        ).json()
        kinds = [b["type"] for b in anth.get("content", [anth])]
        assert kinds == ["thinking", "text"] and anth["content"][1]["text"] == "Relayed answer."
        count = httpx.post(
            f"http://127.0.0.1:{port}/v1/messages/count_tokens",
            timeout=30,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert count.status_code == 200 and count.json()["input_tokens"] > 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "a remote model, served by" in err
