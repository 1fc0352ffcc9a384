"""`locus serve`: options, the exposure warning, the keychain, and a real server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from app.cli import build_parser, main
from app.cli_serve import config_from_args, exposure_warning
from tests import proctree


def _args(*argv: str):
    return build_parser().parse_args(["serve", "--demo", *argv])


def test_options_become_the_config():
    cfg = config_from_args(
        _args(
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--max-queue",
            "3",
            "--allow-origin",
            "http://localhost:3000",
            "--allow-host",
            "box",
            "--preset",
            "coding",
            "--context",
            "8192",
            "--max-body-mb",
            "1",
        )
    )
    assert (cfg.host, cfg.port, cfg.max_queue, cfg.preset) == ("0.0.0.0", 9000, 3, "coding")
    assert cfg.allowed_origins == ("http://localhost:3000",) and cfg.allowed_hosts == ("box",)
    assert cfg.context_tokens == 8192 and cfg.max_body_bytes == 1024 * 1024
    assert cfg.api_key is None and not cfg.is_loopback


def test_warning_only_beyond_loopback():
    assert exposure_warning(config_from_args(_args())) is None
    assert exposure_warning(config_from_args(_args("--host", "::1"))) is None
    loud = exposure_warning(config_from_args(_args("--host", "0.0.0.0")))
    assert "other machines can reach this API" in loud and "NO API key" in loud


def test_missing_keychain_key_is_a_clear_error(memory_keyring, capsys):
    assert main(["serve", "--demo", "--api-key-from-keyring"]) == 2
    assert "username api-key" in capsys.readouterr().err  # secret-tool on Linux
    assert main(["serve", "--demo", "--port", "70000"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_process_answers_and_stops_on_ctrl_c():
    port = _free_port()
    proc = proctree.popen(
        [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["data"][0]["owned_by"] == "locus"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/messages",
            timeout=60,
            json={
                "model": "claude-sonnet-4-6",
                "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ).json()
        assert answer["type"] == "message" and answer["usage"]["output_tokens"] >= 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err  # stopped by Ctrl-C, after a clean shutdown
        assert "Application shutdown complete" in err
        assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{port}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in proc.stderr
