"""Issue 27, Models: a failed download is said for a person and can be discarded; a first start
shows guidance; the Hub search (a local stand-in, tests/fakehub.py) lists MLX models with size,
quantization and fit; a context choice at load; Eject."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import hub
from app.models import ModelManager
from engine import BackendInfo
from tests.fakebackend import FakeBackend, Reply
from tests.fakehub import FakeHub
from ui.models_view import ModelsView

REPO = "tester/tiny"


def _view(qtbot, tmp_path) -> ModelsView:
    v = ModelsView()
    v.extra_dirs = [tmp_path / "none"]  # nothing but the (empty) test caches
    qtbot.addWidget(v)
    v.show()
    return v


def test_offline_download_is_said_for_a_person_and_can_be_discarded(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens: like no network
    v = _view(qtbot, tmp_path)
    v.repo_input.setText(REPO)
    with qtbot.waitSignal(v.download_finished, timeout=120000) as sig:
        v.download_button.click()
    assert sig.args[0] == "error"
    text = v.progress_label.text()
    assert text.startswith("Cannot reach 127.0.0.1:1") and "internet connection" in text
    assert "Errno" not in text and "[" not in text
    assert not v.download_button.text().startswith("Resume") and v.download_button.text() == "Try again"
    assert v.discard_button.isEnabled()
    v.discard_button.click()
    assert v.downloader is None and v.download_button.text() == "Download"
    assert not v.discard_button.isEnabled() and v.progress.value() == 0


def test_a_failed_download_with_files_kept_offers_resume_and_discard_removes_them(
    qtbot, tmp_path, monkeypatch
):
    data = os.urandom(2_000_000)
    with FakeHub({REPO: {"config.json": b"{}", "model.safetensors": data}}, delay=0.01) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        v = _view(qtbot, tmp_path)
        v.repo_input.setText(REPO)
        v.download_button.click()
        qtbot.waitUntil(lambda: v.progress.value() > 50, timeout=30000)
        with qtbot.waitSignal(v.download_finished, timeout=30000) as sig:
            v.pause_button.click()
        assert sig.args[0] == "paused" and v.discard_button.isEnabled()
    cache = v.downloader.repo_cache
    assert cache.exists()
    v.discard_button.click()
    assert not cache.exists() and v.download_button.text() == "Download"


def test_first_start_without_models_shows_guidance(qtbot, tmp_path):
    v = _view(qtbot, tmp_path)
    assert not v.welcome.isVisibleTo(v)  # not before the list is known
    with qtbot.waitSignal(v.models_listed, timeout=30000) as sig:
        v.refresh()
    assert sig.args[0] == 0
    assert v.welcome.isVisibleTo(v) and "demo model" in v.welcome_text.text()
    assert hub.RECOMMENDED[0].repo_id in v.welcome_text.text()
    with qtbot.waitSignal(v.load_requested, timeout=120000) as sig:
        v.demo_button.click()
    from app.demo import is_demo_model

    assert is_demo_model(sig.args[0])
    v.set_model_in_use(True)
    assert not v.welcome.isVisibleTo(v)  # a model is in use: no guidance needed


LISTING = [
    {
        "id": "mlx-community/Qwen3-4B-4bit",
        "tags": ["mlx", "safetensors", "4-bit"],
        "downloads": 5000,
        "safetensors": {"parameters": {"U32": 500_000_000, "BF16": 100_000_000}, "total": 600_000_000},
        "config": {"model_type": "qwen3", "quantization": {"bits": 4, "group_size": 64}},
    },
    {
        "id": "mlx-community/Qwen3-235B-A22B-8bit",
        "tags": ["mlx", "safetensors"],
        "downloads": 900,
        "safetensors": {"parameters": {"U32": 60_000_000_000}, "total": 60_000_000_000},
    },
    {"id": "someone/Qwen3-4B-gguf", "tags": ["gguf"], "downloads": 99999},
]


def test_hub_search_lists_mlx_models_with_size_quantization_and_fit(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "16")
    with FakeHub({}, listing=LISTING) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        v = _view(qtbot, tmp_path)
        v.search_input.setText("qwen3")
        with qtbot.waitSignal(v.searched, timeout=30000) as sig:
            v.search_button.click()
        asked = [r for r, _ in fake.requests if r.startswith("GET /api/models?")][-1]
    assert sig.args[0] == 2 and "filter=mlx" in asked  # MLX conversions only: no GGUF
    rows = [[v.search_table.item(r, c).text() for c in range(5)] for r in range(2)]
    assert rows[0][:4] == ["mlx-community/Qwen3-4B-4bit", "2.2 GB", "4-bit", "Yes"]
    assert rows[1][0] == "mlx-community/Qwen3-235B-A22B-8bit" and rows[1][2] == "8-bit"
    assert rows[1][1] == "240.0 GB" and rows[1][3].startswith("No (needs")
    v.search_table.selectRow(1)
    assert v.repo_input.text() == "mlx-community/Qwen3-235B-A22B-8bit"  # Download fetches it


def test_search_failure_is_a_message(qtbot, tmp_path, monkeypatch):
    with FakeHub({}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url + "/nothing-here")
        v = _view(qtbot, tmp_path)
        with qtbot.waitSignal(v.message_for_user, timeout=30000) as sig:
            v.search()
    assert "answered 404" in sig.args[0] and v.search_button.isEnabled()


@pytest.fixture
def window(qtbot, store):
    from ui.main_window import MainWindow

    seen: list[int] = []

    def opener(path: str, **kw) -> FakeBackend:
        seen.append(kw["context_tokens"])
        info = BackendInfo(name=Path(path).name, context_tokens=262144, vocab_size=1000)
        return FakeBackend([Reply(text="hi")], info=info)

    manager = ModelManager(opener=opener, measure=lambda p, c: 10**9, available=lambda: 0)
    w = MainWindow(store, manager=manager)
    w.opened_contexts = seen
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()


@pytest.fixture
def context_restored():
    from app.settings import load_ui_settings, save_ui_settings

    before = load_ui_settings().get("context_tokens", 32768)
    yield
    save_ui_settings({"context_tokens": before})


def test_context_choice_applies_at_load_and_eject_unloads(window, qtbot, context_restored):
    from app.settings import preference

    m = window.models
    assert not m.eject_button.isEnabled()
    i = m.context_choice.findData(131072)
    m.context_choice.setCurrentIndex(i)
    m.context_choice.activated.emit(i)
    assert preference("context_tokens") == 131072  # the one source Preferences shows too
    with qtbot.waitSignal(window.model_loaded, timeout=30000):
        window.load_model("/models/real")
    assert window.opened_contexts == [131072]
    assert window.model_info.text() == "1.0 GB in memory · context 256K (memory planned for 128K)"
    assert m.eject_button.isEnabled()
    m.eject_button.click()
    qtbot.waitUntil(lambda: window.backend is None, timeout=30000)
    assert window.chat.backend is None and window.model_label.text() == "No model loaded"
    assert not m.eject_button.isEnabled()
