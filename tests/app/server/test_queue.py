"""One model, many clients: the bounded fair queue, cancel on disconnect, stalled clients."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest

USER = [{"role": "user", "content": "hi"}]


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _open_stream(srv, max_tokens: int = 100000):
    """A streaming request whose reply never ends by itself; the first SSE lines are read."""
    client = httpx.Client(timeout=30)
    body = {"model": "m", "max_tokens": max_tokens, "stream": True, "messages": USER}
    cm = client.stream("POST", srv.url + "/v1/messages", json=body)
    resp = cm.__enter__()
    lines = resp.iter_lines()
    return client, cm, resp, lines


def test_disconnect_cancels_a_streaming_generation(serve, scripted):
    eng = scripted("la la la", eos=False)
    srv = serve(eng)
    client, cm, resp, lines = _open_stream(srv)
    assert resp.status_code == 200
    seen = [next(lines) for _ in range(12)]
    assert any("content_block_delta" in s for s in seen)
    cm.__exit__(None, None, None)
    client.close()
    svc = srv.app.service
    _wait(lambda: svc.finished["cancelled"] == 1)  # the engine's Done said "cancelled"
    assert svc.scheduler.active == 0 and sum(svc.finished.values()) == 1


def test_disconnect_cancels_a_non_streaming_generation(serve, scripted):
    eng = scripted("la la la", eos=False)
    srv = serve(eng)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            srv.url + "/v1/chat/completions",
            timeout=1.0,
            json={"model": "m", "max_tokens": 100000, "messages": USER},
        )
    svc = srv.app.service
    _wait(lambda: svc.finished["cancelled"] == 1)
    assert eng.handles[0].cancelled


def test_queue_full_is_overloaded_and_waiters_run_in_order(serve, scripted):
    eng = scripted("la la", eos=False)
    srv = serve(eng, max_queue=1)
    svc = srv.app.service
    client, cm, _resp, lines = _open_stream(srv)  # holds the model
    next(lines)
    results: list[str] = []
    body = {"model": "m", "max_tokens": 3, "messages": USER}
    waiter = threading.Thread(
        target=lambda: results.append(
            httpx.post(srv.url + "/v1/messages", json=body, timeout=30).json()["stop_reason"]
        )
    )
    waiter.start()
    _wait(lambda: svc.scheduler.waiting == 1)
    with pytest.raises(anthropic.OverloadedError, match="max-queue"):
        anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0).messages.create(**body)
    with pytest.raises(openai.InternalServerError) as e:
        openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=USER, max_tokens=3
        )
    assert e.value.status_code == 503
    cm.__exit__(None, None, None)  # the first client leaves: the waiter gets the model
    client.close()
    waiter.join(30)
    assert results == ["max_tokens"]
    assert svc.finished == {"cancelled": 1, "length": 1}


def test_a_stalled_client_does_not_block_others(serve, scripted):
    eng = scripted("word " * 50)
    srv = serve(eng)
    svc = srv.app.service
    client, cm, _resp, lines = _open_stream(srv, max_tokens=400)  # opened, then never read
    _wait(lambda: svc.finished["stop"] == 1)  # its generation ran to the end anyway
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=20)
    r = c.chat.completions.create(model="m", messages=USER, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    rest = "\n".join(lines)  # the stalled client can still read its whole answer later
    assert rest.rstrip().endswith('data: {"type": "message_stop"}')
    cm.__exit__(None, None, None)
    client.close()


def test_fifty_concurrent_streaming_clients(serve, engine):
    srv = serve(engine, max_queue=64)
    c = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0, timeout=120)

    def one(i: int) -> tuple[str, int]:
        with c.messages.stream(
            model="m", max_tokens=3, messages=[{"role": "user", "content": f"Client {i}"}]
        ) as s:
            final = s.get_final_message()
        return final.stop_reason, final.usage.output_tokens

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert len(results) == 50
    assert all(reason in ("end_turn", "max_tokens") and 1 <= n <= 3 for reason, n in results)
    svc = srv.app.service
    assert sum(svc.finished.values()) == 50 and svc.scheduler.active == 0


def test_health_reports_the_queue(serve, engine):
    srv = serve(engine)
    h = httpx.get(srv.url + "/health").json()
    pc = h.pop("prompt_cache")
    assert pc["memory_bytes"] == engine.prompt_cache.memory_bytes > 0
    assert h == {
        "status": "ok",
        "model_loaded": True,
        "active": 0,
        "waiting": 0,
        "sequences": 0,
        "batch_size": 0,
        "parallel": 1,
        "finished": {},
        "draft_tokens": 0,
        "draft_accepted": 0,
        "ranks": 1,
        "rank_layers": [],
        "memory": None,  # this engine was built without a load-time memory plan
    }
    json.dumps(h)


def test_mtp_request_field_drafts_and_health_counts_them(serve, engine):
    srv = serve(engine)
    body = {"model": "m", "max_tokens": 4, "temperature": 0, "messages": USER}
    r = httpx.post(srv.url + "/v1/chat/completions", json={**body, "mtp": 2}, timeout=60)
    assert r.status_code == 200
    h = httpx.get(srv.url + "/health").json()
    assert h["draft_tokens"] > 0 and h["draft_tokens"] % 2 == 0
    assert 0 <= h["draft_accepted"] <= h["draft_tokens"]
    r = httpx.post(srv.url + "/v1/messages", json={**body, "mtp": 99}, timeout=60)
    assert r.status_code == 400 and "mtp" in r.json()["error"]["message"]


def test_count_tokens_does_not_wait_for_a_running_generation(serve, scripted):
    eng = scripted("la la", eos=False)
    srv = serve(eng)
    client, cm, _resp, lines = _open_stream(srv)  # the engine is busy until cancelled
    next(lines)
    c = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0, timeout=10)
    t0 = time.monotonic()
    n = c.messages.count_tokens(model="m", messages=USER).input_tokens
    assert time.monotonic() - t0 < 5
    assert srv.app.service.scheduler.active == 1  # still generating
    cm.__exit__(None, None, None)
    client.close()
    assert n == len(eng.encode(eng.requests[0])[0])  # the same prompt the generation saw


def test_no_model_loaded_is_a_clear_503(serve):
    from engine import Engine

    srv = serve(Engine())
    r = httpx.post(srv.url + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER})
    assert r.status_code == 503 and "locus serve --model" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert httpx.get(srv.url + "/health").json()["model_loaded"] is False


def test_fifty_clients_some_leaving_none_lost(serve, scripted):
    eng = scripted("tick", eos=False)
    srv = serve(eng, max_queue=64)
    svc = srv.app.service
    body = {"model": "m", "max_tokens": 30, "stream": True, "messages": USER}

    def stay(i: int) -> tuple[str, int]:
        with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=120) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        last_delta = json.loads(next(ln for ln in reversed(lines) if "message_delta" in ln)[6:])
        assert lines[-1] == 'data: {"type": "message_stop"}'
        return last_delta["delta"]["stop_reason"], last_delta["usage"]["output_tokens"]

    def leave(i: int) -> str:
        try:  # gives up while queued or early in its stream
            with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=0.2) as r:
                next(r.iter_lines())
        except httpx.TimeoutException:
            return "timed out"
        return "left"

    with ThreadPoolExecutor(50) as pool:
        kept = [pool.submit(stay, i) for i in range(40)]
        gone = [pool.submit(leave, i) for i in range(10)]
        results = [f.result() for f in kept]
        [f.result() for f in gone]
    assert results == [("max_tokens", 30)] * 40
    _wait(lambda: svc.scheduler.active == 0 and svc.scheduler.waiting == 0)
    assert svc.finished["length"] == 40 and sum(svc.finished.values()) <= 50


def test_quiet_streams_get_keep_alive_pings(serve, scripted):
    eng = scripted("ab", delay=0.25)  # every model step takes a quarter second
    srv = serve(eng, ping_interval=0.05)
    body = {"model": "m", "max_tokens": 3, "stream": True, "messages": USER}
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, timeout=30) as r:
        names = [ln[7:] for ln in r.iter_lines() if ln.startswith("event: ")]
    assert names.count("ping") >= 3 and names[-1] == "message_stop"
    body["messages"] = USER
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = list(r.iter_lines())
    assert lines.count(": keep-alive") >= 3 and [ln for ln in lines if ln][-1] == "data: [DONE]"
