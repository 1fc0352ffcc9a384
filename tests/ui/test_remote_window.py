"""The window on a remote model server: a real HTTP server (tests/fakeopenai.py) speaking OpenAI chat
completions, the real RemoteBackend, the real ModelManager, real widgets offscreen."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.backends import KEYRING_SERVICE, remote_key_account
from app.models import ModelManager
from engine import BackendInfo
from tests.fakebackend import FakeBackend, Reply
from tests.fakeopenai import Fake, chunk, send_event, send_json, start_sse
from ui.main_window import MainWindow

KEY = "sk-remote-secret-4711"
ROOT = Path(__file__).resolve().parents[2]


def scripted(*replies: list[dict[str, Any]] | tuple[int, str]):
    """A responder: each chat completion gets the next reply (SSE chunks, or (status, message)
    for an error); the server has no /tokenize (llama-server, mlx_lm.server)."""
    queue = list(replies)

    def respond(h: Any, body: dict[str, Any]) -> None:
        if h.path == "/tokenize":
            send_json(h, 404, {"error": {"message": "not found"}})
            return
        reply = queue.pop(0) if queue else [chunk({"content": "(no more replies)"}, "stop")]
        if isinstance(reply, tuple):
            send_json(h, reply[0], {"error": {"message": reply[1]}})
            return
        start_sse(h)
        for c in reply:
            send_event(h, c)
        send_event(
            h,
            {
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3},
            },
        )
        send_event(h, "[DONE]")

    return respond


def text(s: str) -> list[dict[str, Any]]:
    return [chunk({"content": s}), chunk(finish="stop")]


@pytest.fixture
def servers():
    made: list[Fake] = []

    def make(*replies: Any, models: Any = None) -> Fake:
        made.append(Fake(scripted(*replies), models=models))
        return made[-1]

    yield make
    for f in made:
        f.close()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def window(qtbot, store):
    """A window whose local models are fakes (no MLX); remote models are real RemoteBackends."""

    def opener(path: str, **kw: Any) -> FakeBackend:
        info = BackendInfo(name=Path(path).name, context_tokens=8192, vocab_size=1000)
        return FakeBackend([Reply(text="Hello from this machine.")], info=info)

    manager = ModelManager(opener=opener, measure=lambda path, ctx: 10**9, available=lambda: 0)
    w = MainWindow(store, manager=manager)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_loaded, timeout=30000):
        w.load_model("/models/local-model")
    yield w
    w.shutdown()


def _files_containing(secret: str, *dirs: Path) -> list[Path]:
    """Every file under Locus's data, cache and log dirs (settings.json, logs) and `dirs` (the
    store) that holds `secret`."""
    hits = []
    roots = [Path(os.environ[v]) for v in ("LOCUS_DATA_DIR", "LOCUS_CACHE_DIR", "LOCUS_LOG_DIR")]
    for root in [*roots, *dirs]:
        for p in root.rglob("*") if root.exists() else []:
            if p.is_file() and p.stat().st_size < 50 * 1024**2 and secret.encode() in p.read_bytes():
                hits.append(p)
    return hits


def test_list_use_and_chat_with_a_remote_model(window, qtbot, servers, memory_keyring, caplog, store):
    caplog.set_level(logging.DEBUG)
    srv = servers(
        text("Hello from the server."),
        models={"data": [{"id": "qwen-a"}, {"id": "qwen-b", "max_model_len": 32768}]},
    )
    local = window.backend
    assert local.info.remote is None and window.model_label.text() == "Model:"
    assert not srv.requests  # nothing is sent before the user asks
    m = window.models
    window.show_view("Models")
    m.remote_url.setText(srv.url)
    m.remote_key.setText(KEY)
    assert m.remote_key.echoMode() == m.remote_key.EchoMode.Password
    with qtbot.waitSignal(m.remote_listed, timeout=30000) as sig:
        m.list_remote_button.click()
    assert sig.args == [2]
    assert [m.remote_picker.itemText(i) for i in range(m.remote_picker.count())] == ["qwen-a", "qwen-b"]
    # The key went to the keychain; the field is cleared and never shows it again.
    assert memory_keyring[(KEYRING_SERVICE, remote_key_account(srv.url))] == KEY
    assert m.remote_key.text() == "" and "saved" in m.remote_key.placeholderText()
    assert srv.requests[0][1].get("Authorization") == f"Bearer {KEY}"

    m.remote_picker.setCurrentText("qwen-b")
    with qtbot.waitSignal(window.model_loaded, timeout=30000) as sig:
        m.use_remote_button.click()
    assert sig.args == ["qwen-b"]
    remote = window.backend
    assert remote.info.remote == srv.url and remote.info.context_tokens == 32768
    for view_backend in (
        window.chat.backend,
        window.agent.backend,
        window.locate.backend,
        window.server.backend,
    ):
        assert view_backend is remote
    assert local.closed  # the local model is unloaded: only one model at a time
    # The window says plainly that the model runs elsewhere.
    assert window.model_label.text() == "Remote model:"
    assert f"Remote: qwen-b at {srv.url}" in window.model_info.text()
    assert "context 32K" in window.model_info.text()
    assert window.model_picker.currentText() == "qwen-b (remote)"
    assert m.remote_status.text() == f"In use: qwen-b at {srv.url}."
    assert m.loaded_path is None  # no local model is marked loaded

    window.show_view("Chat")
    with qtbot.waitSignal(window.chat.reply_finished, timeout=30000) as sig:
        window.chat.send("hello over there")
    assert sig.args == ["stop"]
    reply = window.chat._messages()[-1]
    assert reply.role == "assistant" and "Hello from the server." in window.chat.history[-1]["content"]
    assert f"remote: qwen-b at {srv.url}" in reply.footer.text()
    assert "context 15/32768" in reply.footer.text()
    (sent,) = srv.posts()
    assert sent["model"] == "qwen-b" and sent["messages"][-1]["content"] == "hello over there"
    chat_auth = [h.get("Authorization") for p, h, _ in srv.requests if p == "/v1/chat/completions"]
    assert chat_auth == [f"Bearer {KEY}"]

    window.shutdown()  # settings are written: the URL and model are remembered, the key is not
    from app.settings import load_ui_settings

    saved = load_ui_settings()
    assert saved["remote_url"] == srv.url and saved["remote_model"] == "qwen-b"
    assert "last_model" not in saved or not str(saved["last_model"]).startswith("remote:")
    assert KEY not in caplog.text
    # The next window offers the server again but does not connect to it by itself.
    asked = len(srv.requests)
    again = MainWindow(store)
    qtbot.addWidget(again)
    try:
        assert again.models.remote_url.text() == srv.url
        assert again.models.remote_picker.currentText() == "qwen-b"
        assert again.models.remote_key.text() == ""  # never shown back
        qtbot.wait(300)
        assert len(srv.requests) == asked and again.backend is None
    finally:
        again.shutdown()
    stored = store.messages(window.chat.thread_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert _files_containing(KEY, Path(store.path).parent) == []
    assert _files_containing("Hello from the server.", Path(store.path).parent)  # the scan works


def test_a_refused_connection_is_a_clear_error_and_the_local_model_stays(window, qtbot):
    local = window.backend
    url = refused_url()
    m = window.models
    m.remote_url.setText(url)
    # Listing the models: the error is shown in the view.
    m.list_remote_button.click()
    qtbot.waitUntil(lambda: m.remote_status.text().startswith("Error"), timeout=30000)
    assert "connection refused" in m.remote_status.text() and url in m.remote_status.text()
    assert m.list_remote_button.isEnabled()
    # Using the server: the same, in the view and the window; the local model stays loaded.
    m.remote_status.setText("")
    m.use_remote_button.click()
    qtbot.waitUntil(lambda: m.remote_status.text().startswith("Error"), timeout=30000)
    assert "connection refused" in m.remote_status.text()
    qtbot.waitUntil(lambda: window.loading_path is None, timeout=30000)
    assert window.backend is local and not local.closed and window.chat.backend is local
    assert window.model_label.text() == "Model:" and "Remote" not in window.model_info.text()
    banner = window.error_banner.text()
    assert window.error_banner.isVisible() and "Could not use the remote model" in banner
    assert "connection refused" in banner and "Traceback" not in banner
    # The local model still answers.
    with qtbot.waitSignal(window.chat.reply_finished, timeout=30000):
        window.chat.send("still here?")
    assert window.chat.history[-1]["content"].strip() == "Hello from this machine."


def test_a_url_is_needed_and_a_key_can_be_forgotten(window, memory_keyring, servers):
    m = window.models
    m.remote_url.setText("")
    m.use_remote_button.click()
    assert "URL first" in m.remote_status.text() and window.loading_path is None
    srv = servers()
    m.remote_url.setText(srv.url)
    m.remote_url.editingFinished.emit()  # the user leaves the field (not looked up per keystroke)
    assert not m.forget_remote_key_button.isEnabled()
    memory_keyring[(KEYRING_SERVICE, remote_key_account(srv.url))] = KEY
    m.remote_url.setText(srv.url + "/")  # the same server: its key is found
    m.remote_url.editingFinished.emit()
    assert m.forget_remote_key_button.isEnabled() and "saved" in m.remote_key.placeholderText()
    m.forget_remote_key()
    assert memory_keyring == {} and not m.forget_remote_key_button.isEnabled()
    assert not srv.requests


def test_locate_and_agent_with_a_remote_model(qtbot, servers, tmp_path):
    """Locate sends the image to a server that reports images and shows the server's refusal
    plainly; a remote model that reports no images is not asked at all. The agent runs on it."""
    from PIL import Image

    from app.backends import open_remote
    from ui.agent_view import AgentView
    from ui.locate_view import LocateView

    img = tmp_path / "cats.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(img)
    srv = servers(
        text('```json\n[{"bbox_2d": [0, 0, 500, 500], "label": "cat"}]\n```'),
        (400, "this model does not support image input"),
    )
    backend = open_remote(srv.url)
    assert backend.info.images  # a remote model may read images: Locate tries
    view = LocateView()
    qtbot.addWidget(view)
    view.set_backend(backend)
    assert view.open_image(img)
    view.query.setText("cat")
    with qtbot.waitSignal(view.located, timeout=30000) as sig:
        view.locate()
    assert sig.args == [1] and view.boxes[0].label == "cat"
    (sent,) = srv.posts()
    parts = sent["messages"][-1]["content"]
    assert any(
        p.get("type") == "image_url" and p["image_url"]["url"].startswith("data:image/") for p in parts
    )
    messages: list[str] = []
    view.message_for_user.connect(messages.append)
    view.locate()
    qtbot.waitUntil(lambda: bool(messages), timeout=30000)
    assert "does not support image input" in messages[0] and "HTTP 400" in messages[0]
    assert view.status.text().startswith("Error:") and view.locate_button.isEnabled()

    # A remote model that says it reads no images: a plain message, nothing sent.
    no_images = FakeBackend([], info=BackendInfo(name="text-only", images=False, remote=srv.url))
    view.set_backend(no_images)
    messages.clear()
    view.locate()
    assert "text-only" in messages[0] and "does not read images" in messages[0]
    assert not no_images.requests and len(srv.posts()) == 2

    # The agent on the remote model: it reads a file with a tool call, then answers.
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hello.py").write_text('print("hello")\n')
    agent_srv = servers(
        [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "hello.py"}'},
                        }
                    ]
                }
            ),
            chunk(finish="tool_calls"),
        ],
        text("hello.py prints hello."),
    )
    agent = AgentView()
    qtbot.addWidget(agent)
    agent.open_project(project)
    agent.set_backend(open_remote(agent_srv.url))
    try:
        with qtbot.waitSignal(agent.run_finished, timeout=60000) as sig:
            agent.start_run("what does hello.py do?")
        assert sig.args[0] != "error"
        first, second = agent_srv.posts()
        assert first["tools"] and any(t["function"]["name"] == "read_file" for t in first["tools"])
        tool_result = [m for m in second["messages"] if m["role"] == "tool"]
        assert tool_result and 'print("hello")' in str(tool_result[0]["content"])
        assert "hello.py prints hello." in agent.transcript.toPlainText()
    finally:
        agent.shutdown()


def test_locus_remote_opens_the_window_on_the_remote_model(qtbot, servers, memory_keyring, monkeypatch):
    import app.logs
    import ui
    from app.backends import save_remote_key
    from app.cli import build_parser
    from app.cli import main as cli_main
    from ui.main import window_options

    help_text = build_parser().format_help()
    assert "--remote URL" in help_text and "--remote-model NAME" in help_text
    srv = servers(models={"data": [{"id": "one"}, {"id": "two"}]})
    save_remote_key(srv.url, KEY)
    # The file logging and login-shell PATH of a real start stay out of the test process.
    monkeypatch.setattr(app.logs, "setup_logging", lambda **kw: None)
    monkeypatch.setattr(app.logs, "apply_login_shell_path", lambda **kw: None)
    built: list[Any] = []

    def open_window(args: Any) -> int:
        win = ui._window(**window_options(args))
        qtbot.addWidget(win)
        built.append(win)
        return 0

    assert cli_main(["--remote", srv.url, "--remote-model", "two"], open_window=open_window) == 0
    (win,) = built
    try:
        qtbot.waitUntil(lambda: win.backend is not None, timeout=30000)
        assert win.backend.info.remote == srv.url and win.backend.info.name == "two"
        assert f"Remote: two at {srv.url}" in win.model_info.text()
        assert win.models.remote_url.text() == srv.url
        assert srv.requests[-1][1].get("Authorization") == f"Bearer {KEY}"  # the keychain's key
    finally:
        win.shutdown()
    # A server that cannot be reached: the window opens anyway and says why, in Models too.
    url = refused_url()
    assert cli_main(["--remote", url], open_window=open_window) == 0
    win = built[-1]
    try:
        qtbot.waitUntil(lambda: win.models.remote_status.text().startswith("Error"), timeout=30000)
        assert "connection refused" in win.models.remote_status.text()
        assert win.models.remote_url.text() == url and win.backend is None
        assert "Could not use the remote model" in win.error_banner.text()
    finally:
        win.shutdown()
    # --remote goes alone; its options go with it.
    assert cli_main(["--remote", srv.url, "--demo"], open_window=open_window) == 1
    assert cli_main(["--remote-model", "two"], open_window=open_window) == 1
    assert len(built) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS always has a display")
def test_remote_without_display_falls_back_to_the_terminal_chat(servers):
    srv = servers(text("Hi from the server."))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(NO_COLOR="1", REMOTE_KEY=KEY)
    r = subprocess.run(
        [sys.executable, "-m", "ui.main", "--remote", srv.url, "--remote-key-env", "REMOTE_KEY"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        input="hello\n",
    )
    assert r.returncode == 0, r.stderr
    assert "starting the terminal chat" in r.stderr and "Hi from the server." in r.stdout
    assert KEY not in r.stdout + r.stderr
    chat_auth = [h.get("Authorization") for p, h, _ in srv.requests if p == "/v1/chat/completions"]
    assert chat_auth == [f"Bearer {KEY}"]


def test_a_key_from_the_environment_is_sent_by_list_models_too(qtbot, servers, memory_keyring, monkeypatch):
    import ui
    from app.cli import main as cli_main
    from ui.main import window_options

    srv = servers(models={"data": [{"id": "one"}]})
    monkeypatch.setenv("REMOTE_KEY", KEY)
    built: list[Any] = []

    def open_window(args: Any) -> int:
        built.append(ui._window(**window_options(args)))
        qtbot.addWidget(built[-1])
        return 0

    assert cli_main(["--remote", srv.url, "--remote-key-env", "REMOTE_KEY"], open_window=open_window) == 0
    (win,) = built
    try:
        qtbot.waitUntil(lambda: win.backend is not None, timeout=30000)
        n = len(srv.requests)
        with qtbot.waitSignal(win.models.remote_listed, timeout=30000):
            win.models.list_remote_models()
        assert [r[1].get("Authorization") for r in srv.requests[n:]] == [f"Bearer {KEY}"]
        assert memory_keyring == {}  # a key from the environment is never stored
    finally:
        win.shutdown()
