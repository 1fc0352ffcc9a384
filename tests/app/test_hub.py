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
    with FakeHub({REPO: files}, delay=0.002) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        seen: list[hub.DownloadProgress] = []
        d = hub.Downloader(REPO, cache_dir=tmp_path / "hf")
        out = d.download(on_progress=lambda p: seen.append(hub.DownloadProgress(**vars(p))), interval=0)
    total = sum(len(b) for b in files.values())
    # The standard Hugging Face cache layout: models--owner--name/snapshots/<commit>.
    assert out.parent.parent == tmp_path / "hf" / "models--tester--tiny-model"
    # refs/main names the commit, so `--model tester/tiny-model` resolves to this snapshot.
    assert (out.parent.parent / "refs" / "main").read_text() == out.name
    for name, data in files.items():
        if name.endswith((".json", ".safetensors", ".jinja", ".txt")):
            assert (out / name).read_bytes() == data
    assert not list((tmp_path / "hf").rglob("*.incomplete"))
    assert seen[0].total_bytes == total and seen[-1].state == "done"
    done = [p.done_bytes for p in seen]
    assert done == sorted(done) and done[-1] == total  # progress only moves forward, to the end
    assert len({p.done_bytes for p in seen}) > 2
    assert any(p.speed > 0 for p in seen) and seen[-1].files_done == seen[-1].files_total
    # The downloaded snapshot is a model Locus lists (from the HF cache) and can estimate.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    m = next(m for m in hub.list_local_models() if m.path == out)
    assert m.repo_id == REPO and m.error is None and m.needed_bytes
    assert m.fits is (m.needed_bytes <= m.available_bytes)


def test_pause_keeps_finished_files_and_resume_skips_them(tmp_path, monkeypatch, memory_keyring):
    first, second = os.urandom(700_000), os.urandom(2_000_000)
    repo = {"config.json": b"{}", "a.safetensors": first, "b.safetensors": second}
    with FakeHub({REPO: repo}, delay=0.002) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        d = hub.Downloader(REPO, cache_dir=tmp_path / "hf", max_workers=1)
        hit = threading.Event()

        def progress(p: hub.DownloadProgress) -> None:
            if p.done_bytes > len(first) + 200_000 and not hit.is_set():
                hit.set()
                d.pause()

        with pytest.raises(hub.DownloadPaused):
            d.download(on_progress=progress, interval=0)
        assert d.progress.state == "paused"
        assert 0 < d.progress.fraction < 1
        assert fake.gets("a.safetensors") == 1
        seen: list[int] = []
        out = d.download(on_progress=lambda p: seen.append(p.done_bytes), interval=0)
        # Resumed: the finished file is not fetched again and progress starts where it was.
        assert fake.gets("a.safetensors") == 1 and fake.gets("b.safetensors") == 2
        assert seen[0] >= len(first)
    assert (out / "a.safetensors").read_bytes() == first
    assert (out / "b.safetensors").read_bytes() == second


def test_checksum_failure_is_reported_and_not_kept(tmp_path, monkeypatch, memory_keyring):
    data = os.urandom(300_000)
    bad = bytes([data[0] ^ 1]) + data[1:]  # same size: only a checksum can tell
    repo = {"config.json": b"{}", "model.safetensors": data}
    with FakeHub({REPO: repo}, corrupt={"model.safetensors": bad}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        d = hub.Downloader(REPO, cache_dir=tmp_path / "hf")
        with pytest.raises(hub.HubError, match=r"model\.safetensors arrived damaged"):
            d.download()
        snap = next((tmp_path / "hf").rglob("snapshots/*"))
        assert not (snap / "model.safetensors").exists()
        assert not any(p.read_bytes() == bad for p in (tmp_path / "hf").rglob("*") if p.is_file())
        fake.corrupt.clear()  # the network recovers: Resume fetches the file again, intact
        out = d.download()
    assert (out / "model.safetensors").read_bytes() == data


def test_cancel_removes_partial_files(tmp_path, monkeypatch, memory_keyring):
    repo = {"config.json": b"{}", "model.safetensors": os.urandom(600_000)}
    with FakeHub({REPO: repo}, delay=0.002) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        d = hub.Downloader(REPO, cache_dir=tmp_path / "hf", max_workers=1)

        def progress(p: hub.DownloadProgress) -> None:
            if p.done_bytes > 100_000:  # config.json is already in the snapshot by now
                d.cancel()

        with pytest.raises(hub.DownloadCancelled):
            d.download(on_progress=progress, interval=0)
    assert d.progress.state == "cancelled"
    assert not d.repo_cache.exists()


def test_token_lives_in_keyring_and_is_sent(tmp_path, monkeypatch, memory_keyring):
    assert hub.get_token() is None
    hub.set_token("  hf_secret  ")
    assert memory_keyring[(hub.KEYRING_SERVICE, hub.KEYRING_TOKEN_USER)] == "hf_secret"
    assert hub.get_token() == "hf_secret"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub({REPO: {"config.json": b"{}"}}, token="hf_secret") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        out = hub.Downloader(REPO, cache_dir=tmp_path / "m").download()
        hub.delete_token()
        assert hub.get_token() is None
        with pytest.raises(hub.HubError, match="needs a Hugging Face token"):
            hub.Downloader(REPO, cache_dir=tmp_path / "n").download()
    assert (out / "config.json").read_bytes() == b"{}"
    assert not any("hf_secret" in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(hub.HubError):
        hub.set_token("   ")


def test_bad_names_and_missing_repos_are_actionable(tmp_path, monkeypatch, memory_keyring):
    with pytest.raises(hub.HubError, match="owner/name"):
        hub.Downloader("not-a-repo")
    with FakeHub({}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(hub.HubError, match="not found"):
            hub.Downloader("a/b", cache_dir=tmp_path / "x").download()


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
    # The loaded model's memory is freed before another loads: it counts as available.
    need = models["owner/small"].needed_bytes
    again = hub.list_local_models([root], include_hf_cache=False, in_use=need)
    assert next(m for m in again if m.name == "owner/small").fits is True
    hub.delete_model(models["owner/small"])
    assert not (root / "owner--small").exists()
    with pytest.raises(hub.HubError, match="does not look like a model"):
        hub.delete_model(tmp_path)


def test_unreachable_hub_says_so(tmp_path, memory_keyring):
    # Offline, huggingface-hub says "Local entry not found… Name or service not known" (issue 31).
    d = hub.Downloader("a/b", cache_dir=tmp_path / "x", endpoint="http://127.0.0.1:1")
    with pytest.raises(hub.HubError, match=r"Cannot reach 127\.0\.0\.1:1 .*check the internet connection"):
        d.download()


def test_not_cached_message_names_the_hf_command():
    # huggingface-hub >= 1.0 ships `hf`; `huggingface-cli` is gone.
    from engine.errors import ModelLoadError
    from engine.loader import resolve_model_path

    with pytest.raises(ModelLoadError, match=r"`hf download nobody/not-cached-model`"):
        resolve_model_path("nobody/not-cached-model")


def test_search_lists_mlx_models_with_size_quantization_and_fit(memory_keyring):
    from tests.fakehub import FakeHub

    listing = [
        {
            "id": "mlx-community/Small-3bit",
            "tags": ["mlx"],
            "downloads": 10,
            "safetensors": {"parameters": {"U32": 100, "F16": 50}, "total": 150},
        },
        {"id": "mlx-community/NoSize-mxfp4", "tags": ["mlx"], "downloads": 20},
        {"id": "other/Small", "tags": ["pytorch"], "downloads": 99},
    ]
    with FakeHub({}, listing=listing) as fake:
        found = hub.search_models("small", endpoint=fake.url, available=10**9)
        assert [m.repo_id for m in found] == ["mlx-community/Small-3bit"]
        assert found[0].size_bytes == 100 * 4 + 50 * 2 and found[0].quantization == "3-bit"
        assert found[0].fits is True
        found = hub.search_models("", endpoint=fake.url, available=10**9)
        assert [m.repo_id for m in found] == ["mlx-community/NoSize-mxfp4", "mlx-community/Small-3bit"]
        assert found[0].quantization == "mxfp4" and found[0].size_bytes is None and found[0].fits is None
        # The token comes from Locus's keyring entry only, never from another stored HF token.
        assert all("authorization" not in h for r, h in fake.requests)
