"""app.hub against a local server standing in for the Hugging Face Hub, and an in-memory keyring."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from app import hub
from tests.fakehub import FakeHub

REPO = "tester/tiny-model"


def _repo_files(tiny_dir) -> dict[str, bytes]:
    src = tiny_dir("mlx", 4)
    return {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()}


def test_download_shows_progress_and_completes(tiny_dir, tmp_path, monkeypatch, memory_keyring):
    files = _repo_files(tiny_dir)
    with FakeHub({REPO: files}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        seen: list[hub.DownloadProgress] = []
        d = hub.Downloader(REPO, dest=tmp_path / "m")
        out = d.download(on_progress=lambda p: seen.append(hub.DownloadProgress(**vars(p))),
                         interval=0)  # fmt: skip
    total = sum(len(b) for b in files.values())
    assert out == tmp_path / "m"
    for name, data in files.items():
        if name.endswith((".json", ".safetensors", ".jinja", ".txt")):
            assert (out / name).read_bytes() == data
    assert not list(out.rglob("*.part"))
    assert seen[0].total_bytes == total and seen[-1].state == "done"
    done = [p.done_bytes for p in seen]
    assert done == sorted(done) and done[-1] == total  # progress only moves forward, to the end
    assert len({p.done_bytes for p in seen}) > 2
    # The downloaded directory is a model Locus lists and can estimate.
    models = hub.list_local_models([tmp_path], include_hf_cache=False)
    m = next(m for m in models if m.path == out)
    assert m.error is None and m.needed_bytes and m.size_bytes >= total * 0.9
    assert m.fits is (m.needed_bytes <= m.available_bytes)


def test_pause_then_resume_uses_range(tmp_path, monkeypatch, memory_keyring):
    data = os.urandom(2_000_000)
    with FakeHub({REPO: {"config.json": b"{}", "model.safetensors": data}}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        d = hub.Downloader(REPO, dest=tmp_path / "m")
        hit = threading.Event()

        def progress(p: hub.DownloadProgress) -> None:
            if p.file == "model.safetensors" and p.done_bytes > 200_000 and not hit.is_set():
                hit.set()
                d.pause()

        with pytest.raises(hub.DownloadPaused):
            d.download(on_progress=progress, interval=0)
        part = tmp_path / "m" / "model.safetensors.part"
        assert 0 < part.stat().st_size < len(data)
        assert d.progress.state == "paused"
        d.download()
        ranges = [h.get("range") for path, h in fake.requests if "resolve" in path]
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == data
    assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges)


def test_cancel_removes_partial_files(tmp_path, monkeypatch, memory_keyring):
    with FakeHub({REPO: {"model.safetensors": os.urandom(600_000)}}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        d = hub.Downloader(REPO, dest=tmp_path / "m")

        def progress(p: hub.DownloadProgress) -> None:
            if p.done_bytes > 0:
                d.cancel()

        with pytest.raises(hub.DownloadCancelled):
            d.download(on_progress=progress, interval=0)
    assert not (tmp_path / "m").exists()


def test_token_lives_in_keyring_and_is_sent(tmp_path, monkeypatch, memory_keyring):
    assert hub.get_token() is None
    hub.set_token("  hf_secret  ")
    assert memory_keyring[(hub.KEYRING_SERVICE, hub.KEYRING_TOKEN_USER)] == "hf_secret"
    assert hub.get_token() == "hf_secret"
    with FakeHub({REPO: {"config.json": b"{}"}}, token="hf_secret") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        hub.Downloader(REPO, dest=tmp_path / "m").download()
        hub.delete_token()
        assert hub.get_token() is None
        with pytest.raises(hub.HubError, match="needs a Hugging Face token"):
            hub.Downloader(REPO, dest=tmp_path / "n").download()
    assert (tmp_path / "m" / "config.json").read_bytes() == b"{}"
    assert not any("hf_secret" in str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(hub.HubError):
        hub.set_token("   ")


def test_bad_names_and_missing_repos_are_actionable(tmp_path, monkeypatch, memory_keyring):
    with pytest.raises(hub.HubError, match="owner/name"):
        hub.Downloader("not-a-repo")
    with FakeHub({}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(hub.HubError, match="not found"):
            hub.Downloader("a/b", dest=tmp_path / "x").download()


def test_recommended_list_is_led_by_qwen36():
    assert hub.RECOMMENDED[0].repo_id == "mlx-community/Qwen3.6-35B-A3B-4bit"


def test_list_and_delete(tiny_dir, tmp_path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(tiny_dir("mlx", 4), root / "owner--small")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    monkeypatch.setenv("LOCUS_MEMORY_LIMIT_GB", "0.000001")
    models = {m.name: m for m in hub.list_local_models([root], include_hf_cache=False)}
    assert models["owner/small"].repo_id == "owner/small"
    assert models["owner/small"].fits is False  # a tiny memory limit: does not fit
    assert models["broken"].fits is None and models["broken"].error
    hub.delete_model(models["owner/small"])
    assert not (root / "owner--small").exists()
    with pytest.raises(hub.HubError, match="does not look like a model"):
        hub.delete_model(tmp_path)
