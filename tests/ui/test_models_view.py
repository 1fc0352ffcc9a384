"""Models view: a download from a local stand-in for the Hub shows progress and completes; the
token goes to the (in-memory) keyring; local models are listed and can be loaded or deleted."""

from __future__ import annotations

import os

from app import hub
from tests.fakehub import FakeHub, commit_of
from ui.models_view import ModelsView

REPO = "tester/tiny"


def _view(qtbot) -> ModelsView:
    v = ModelsView()
    qtbot.addWidget(v)
    v.show()
    return v


def test_download_shows_progress_and_completes(qtbot, tiny_dir, monkeypatch, memory_keyring, dialogs):
    src = tiny_dir("mlx", 4)
    files = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    with FakeHub({REPO: files}, delay=0.03) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        v = _view(qtbot)
        values: list[int] = []
        v.progress.valueChanged.connect(values.append)
        v.repo_input.setText(REPO)
        v.progress_interval = 0.02
        with qtbot.waitSignal(v.download_finished, timeout=60000) as sig:
            v.download_button.click()
            assert v.pause_button.isEnabled()  # returned at once: the download runs on a worker
        assert sig.args[0] == "done"
    assert v.progress.value() == 1000 and 0 < min(values) and len(set(values)) > 2
    assert "Downloaded to" in v.progress_label.text()
    dest = hub.Downloader(REPO).repo_cache / "snapshots" / commit_of(files)  # the HF cache
    assert (dest / "config.json").read_bytes() == files["config.json"]
    # The finished download shows up in the local list, with whether it fits.
    qtbot.waitUntil(lambda: any(m.path == dest for m in v.models), timeout=30000)
    row = next(i for i, m in enumerate(v.models) if m.path == dest)
    assert v.table.item(row, 0).text() == REPO
    assert v.table.item(row, 3).text().startswith(("Yes", "No"))
    v.table.selectRow(row)
    with qtbot.waitSignal(v.load_requested) as sig:
        v.load_button.click()
    assert sig.args[0] == str(dest)
    dialogs.answer("Delete")
    v.delete_selected()
    assert not dest.exists()


def test_pause_and_resume_from_the_view(qtbot, monkeypatch, memory_keyring):
    data = os.urandom(3_000_000)
    with FakeHub({REPO: {"config.json": b"{}", "model.safetensors": data}}, delay=0.005) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        v = _view(qtbot)
        v.repo_input.setText(REPO)
        v.download_button.click()
        qtbot.waitUntil(lambda: v.progress.value() > 50, timeout=30000)
        with qtbot.waitSignal(v.download_finished, timeout=30000) as sig:
            v.pause_button.click()
        assert sig.args[0] == "paused" and v.download_button.text() == "Resume"
        paused_at = v.progress.value()
        assert 0 < paused_at < 1000
        with qtbot.waitSignal(v.download_finished, timeout=60000) as sig:
            v.download_button.click()
        assert sig.args[0] == "done"
    snapshot = hub.Downloader(REPO).repo_cache / "snapshots" / commit_of(fake.repos[REPO])
    assert (snapshot / "model.safetensors").read_bytes() == data
    hub.delete_model(snapshot)
    assert not hub.Downloader(REPO).repo_cache.exists()


def test_errors_are_messages(qtbot, monkeypatch, memory_keyring):
    with FakeHub({}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        v = _view(qtbot)
        v.repo_input.setText("nobody/nothing")
        with qtbot.waitSignal(v.message_for_user, timeout=30000) as sig:
            v.download_button.click()
        assert "not found" in sig.args[0]
        v.repo_input.setText("no-slash")
        with qtbot.waitSignal(v.message_for_user) as sig:
            v.download_button.click()
        assert "owner/name" in sig.args[0]


def test_token_is_stored_in_keyring(qtbot, memory_keyring):
    v = _view(qtbot)
    assert v.token_state.text() == "No token"
    v.token_input.setText("hf_abc")
    v.save_token_button.click()
    assert memory_keyring[(hub.KEYRING_SERVICE, hub.KEYRING_TOKEN_USER)] == "hf_abc"
    assert v.token_input.text() == "" and v.token_state.text() == "Token saved"
    v.forget_token_button.click()
    assert memory_keyring == {} and v.token_state.text() == "No token"
