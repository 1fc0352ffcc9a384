"""Server view: Claude Code env lines, and start/stop of the real API server when it is built."""

from __future__ import annotations

import socket

import httpx
from PySide6.QtGui import QGuiApplication

from ui.server_view import ServerView, claude_code_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_env_lines_follow_the_settings_and_copy(qtbot):
    v = ServerView()
    qtbot.addWidget(v)
    v.port.setValue(9999)
    v.api_key.setText("sk-test")
    v.set_backend(None, "qwen-tiny")
    text = v.env.toPlainText()
    assert text == claude_code_env("127.0.0.1", 9999, "sk-test", "qwen-tiny")
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:9999" in text.splitlines()
    assert "export ANTHROPIC_AUTH_TOKEN=sk-test" in text.splitlines()
    v.copy_button.click()
    assert QGuiApplication.clipboard().text() == text


def test_start_without_model_is_a_message(qtbot):
    v = ServerView()
    qtbot.addWidget(v)
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.start_button.click()
    assert "No model" in sig.args[0] and not v.running


def test_start_and_stop(qtbot, engine):
    v = ServerView()
    qtbot.addWidget(v)
    v.set_backend(engine, "tiny")
    v.port.setValue(_free_port())
    v.api_key.setText("sk-test")
    with qtbot.waitSignal(v.state_changed) as sig:
        v.start_button.click()
    assert sig.args[0] is True
    url = f"http://127.0.0.1:{v.port.value()}/v1/models"
    qtbot.waitUntil(lambda: v.server is not None and v.server.started, timeout=20000)
    assert httpx.get(url, timeout=10).status_code == 401  # the key is required
    r = httpx.get(url, headers={"x-api-key": "sk-test"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
    with qtbot.waitSignal(v.state_changed, timeout=20000) as sig:
        v.stop_button.click()
    assert sig.args[0] is False and v.start_button.isEnabled()


def test_port_in_use_is_a_message(qtbot, engine):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        v = ServerView()
        qtbot.addWidget(v)
        v.set_backend(engine, "tiny")
        v.port.setValue(busy.getsockname()[1])
        with qtbot.waitSignal(v.state_changed, timeout=20000) as sig:
            v.start_button.click()
            qtbot.waitUntil(lambda: not v.running, timeout=20000)
    assert sig.args[0] is True  # it tried; then it reports why it stopped
    qtbot.waitUntil(lambda: v.start_button.isEnabled(), timeout=20000)
    assert "port" in v.status.text()


def test_request_log_shows_the_servers_requests(qtbot, engine):
    v = ServerView()
    qtbot.addWidget(v)
    v.set_backend(engine, "tiny")
    v.port.setValue(_free_port())
    with qtbot.waitSignal(v.state_changed):
        v.start_button.click()
    qtbot.waitUntil(lambda: v.server is not None and v.server.started, timeout=20000)
    base = f"http://127.0.0.1:{v.port.value()}"
    body = {"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(base + "/v1/messages", json=body, timeout=60).status_code == 200
    assert httpx.post(base + "/v1/messages", json={"model": "tiny"}, timeout=60).status_code == 400
    qtbot.waitUntil(lambda: v.request_log.rowCount() == 2, timeout=5000)
    rows = [[v.request_log.item(r, c).text() for c in range(5)] for r in range(2)]
    assert rows[0][1] == "POST /v1/messages" and rows[0][2] == "200"
    assert rows[0][4].endswith("out") and " in (" in rows[0][4]
    assert rows[1][2].startswith("400 ")  # the reason is shown beside the status
    b = engine.prompt_cache.budget()
    assert v.cache_status.text().startswith("Prompt cache: ")
    assert f"of {b['memory_bytes'] / 1024 / 1024:,.0f} MB" in v.cache_status.text()
    assert v.batch_status.text().startswith("Requests: 0 running (up to 8 decoded together)")
    with qtbot.waitSignal(v.state_changed, timeout=20000):
        v.stop_button.click()


def test_a_running_server_follows_the_loaded_model(qtbot):
    from engine import BackendInfo
    from tests.fakebackend import FakeBackend

    first = FakeBackend(info=BackendInfo(name="first", context_tokens=4096))
    second = FakeBackend(info=BackendInfo(name="second", context_tokens=4096))
    v = ServerView()
    qtbot.addWidget(v)
    v.set_backend(first, "first")
    v.port.setValue(_free_port())
    with qtbot.waitSignal(v.state_changed):
        v.start_button.click()
    qtbot.waitUntil(lambda: v.server is not None and v.server.started, timeout=20000)
    url = f"http://127.0.0.1:{v.port.value()}/v1/models"
    assert httpx.get(url, timeout=10).json()["data"][0]["id"] == "first"
    first.close()  # the window unloads it, then loads the next
    v.set_backend(second, "second")
    assert httpx.get(url, timeout=10).json()["data"][0]["id"] == "second"
    with qtbot.waitSignal(v.state_changed, timeout=20000):
        v.stop_button.click()
