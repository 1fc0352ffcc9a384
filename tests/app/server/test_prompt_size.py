"""Huge prompts are refused before they reach the engine: a small request beside a 10 MB one is
answered at once, and memory stays flat."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from engine.counting import MAX_DECOMPOSITION, SLICE, PromptMeter


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """The highest resident size of this process while the block runs (Linux)."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_ten_megabyte_prompt_beside_a_small_one(serve, scripted):
    eng = scripted("fine", delay=0.01)
    srv = serve(eng)
    url = srv.url
    big = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "lorem ipsum dolor " * 580_000}],
    }
    small = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    assert len(big["messages"][0]["content"]) > 10_000_000
    httpx.post(f"{url}/v1/messages", json=small, timeout=60).raise_for_status()  # warm up

    results: dict[str, object] = {}

    def send_big() -> None:
        t0 = time.monotonic()
        results["big"] = httpx.post(f"{url}/v1/messages", json=big, timeout=120)
        results["big_s"] = time.monotonic() - t0

    with _PeakRSS() as rss:
        thread = threading.Thread(target=send_big)
        thread.start()
        time.sleep(0.3)  # the big body is on its way or being checked
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/chat/completions", json=small, timeout=60)
        small_s = time.monotonic() - t0
        thread.join(120)
    big_r = results["big"]
    print(
        f"\nsmall request {small_s:.3f}s beside the 10 MB one ({results['big_s']:.2f}s); "
        f"RSS grew {rss.growth_mb:.0f} MB"
    )
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert small_s < 1.0
    assert big_r.status_code == 400, big_r.text
    err = big_r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith("prompt is too long: ")
    assert rss.growth_mb < 400
    # Only the two small requests reached the engine.
    assert len(eng.requests) == 2


@pytest.mark.slow
def test_counting_stops_past_the_limit_and_agrees_with_the_tokenizer(tiny_model):
    tok = tiny_model.tokenizer
    meter = PromptMeter(tok)
    per = meter.chars_per_token()
    assert per is not None and per >= MAX_DECOMPOSITION  # ByteLevel BPE under NFC: a bound
    text = "The weather is sunny, thank you! def main(): return 0\n" * 11_000  # 3 slices
    assert len(text) > 2 * SLICE
    exact = len(tok.encode(text, add_special_tokens=False))
    total, at_least = meter.count(text)
    assert total == exact  # slices cut before a space add up exactly
    assert exact - 2 <= at_least <= exact
    assert meter.lower_bound(text) <= exact
    # Stopping early: past 1000 tokens it reads only the first slice.
    partial, at_least = meter.count(text, stop_above=1000)
    assert 1000 < at_least <= partial < exact / 2
