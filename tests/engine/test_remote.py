"""RemoteBackend: an engine.Backend over an OpenAI-compatible server.

Against real servers: hand-written HTTP servers in the test (what each failure looks like on the
wire), Locus's own API server (in this process over a scripted model, and `locus serve` in a
subprocess for greedy equality with the local engine), and mlx_lm.server in a subprocess.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine import (
    Backend,
    Done,
    GenerationRequest,
    PreparedRequest,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
)
from engine.remote import RemoteBackend, image_data_url
from tests import proctree
from tests.fakeopenai import Fake, chunk, send_event, send_json, sse, start_sse

GREEDY = SamplingParams(temperature=0.0)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


# -- a hand-written server ----------------------------------------------------------------------
@pytest.fixture
def fake():
    made: list[Fake] = []

    def make(respond: Callable[[Any, dict[str, Any]], None], **kw: Any) -> Fake:
        made.append(Fake(respond, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def chat(text: str = "hi", **kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], **kw)


def events_of(backend: Backend, req: GenerationRequest, timeout: float = 20) -> list[Any]:
    return list(backend.submit(req).events(timeout=timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the wire: what a server streams, as Locus's events -------------------------------------------
def test_stream_becomes_events_reasoning_text_usage(fake):
    srv = fake(
        sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning": "think."}),
            chunk({"content": "Hello"}),
            chunk({"content": ", world"}),
            chunk({}, "stop", stop_reason="END"),
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 30,
                    "completion_tokens": 4,
                    "total_tokens": 34,
                    "prompt_tokens_details": {"cached_tokens": 12},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            },
        )
    )
    rb = RemoteBackend(srv.url)
    assert isinstance(rb, Backend)
    evs = events_of(rb, chat(stop=["END"]))
    assert [e.text for e in evs if isinstance(e, ReasoningDelta)] == ["Let me ", "think."]
    assert "".join(e.text for e in evs if isinstance(e, TextDelta)) == "Hello, world"
    done = evs[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.error is None
    assert done.stop_sequence == "END"  # vLLM's stop_reason names the stop string
    u = done.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens) == (30, 4, 12, 2)


def test_request_body_carries_messages_tools_sampling_and_thinking(fake, tmp_path):
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(png, "PNG")
    path = tmp_path / "red.png"
    path.write_bytes(png.getvalue())
    srv = fake(sse(chunk({"content": "ok"}, "stop")))
    rb = RemoteBackend(srv.url, api_key="sekrit")
    req = GenerationRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "What colour?"}],
            },
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "look",
                "tool_calls": [
                    {
                        "type": "function",
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=TOOLS,
        enable_thinking=False,
        max_tokens=77,
        stop=["\n\n"],
        sampling=SamplingParams(
            temperature=0.3,
            top_p=0.9,
            top_k=0,
            min_p=0.05,
            presence_penalty=1.5,
            repetition_penalty=1.1,
            seed=7,
        ),
    )
    assert rb.submit(req).result().text == "ok"
    (_, headers, body), *_ = [r for r in srv.requests if r[0] == "/v1/chat/completions"]
    assert headers["Authorization"] == "Bearer sekrit"
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"]["enable_thinking"] is False
    assert body["tools"] == TOOLS and body["max_tokens"] == 77 and body["stop"] == ["\n\n"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (
        0.3,
        0.9,
        -1,
        0.05,
    )
    assert (body["presence_penalty"], body["repetition_penalty"], body["seed"]) == (1.5, 1.1, 7)
    image, text = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "What colour?"}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png.getvalue()  # the file as it is
    call = body["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert "sekrit" not in repr(rb)


def test_pil_and_rotated_images_are_sent_as_png():
    from PIL import Image

    url = image_data_url(Image.new("RGB", (5, 4), (0, 0, 255)))
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size == (5, 4) and img.getpixel((0, 0)) == (0, 0, 255)
    from engine import ImageError

    with pytest.raises(ImageError, match="not fetched"):
        image_data_url("https://example.com/cat.png")  # nothing leaves the machine but the prompt


def test_tool_call_deltas_are_assembled_and_bad_json_is_an_error(fake):
    srv = fake(
        sse(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": '},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        )
    )
    res = RemoteBackend(srv.url).submit(chat(tools=TOOLS)).result()
    assert res.finish_reason == "stop"
    assert [(c.id, c.name, c.arguments) for c in res.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"})
    ]
    (err,) = res.tool_call_errors
    assert err.name == "get_weather" and "not valid JSON" in err.message and '{\\"city\\": ' in err.raw


def test_tool_calls_left_in_the_text_are_parsed_by_locus(fake):
    # A server that does not parse Qwen's tool-call XML passes it on as text.
    xml = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>"
    )
    srv = fake(
        sse(chunk({"content": "Checking.\n\n" + xml[:20]}), chunk({"content": xml[20:]}), chunk({}, "stop"))
    )
    res = RemoteBackend(srv.url).submit(chat(tools=TOOLS)).result()
    assert res.text.strip() == "Checking."
    assert [(c.name, c.arguments) for c in res.tool_calls] == [("get_weather", {"city": "Oslo"})]


def test_finish_reason_length_and_info_from_models(fake):
    srv = fake(
        sse(chunk({"content": "abc"}, "length")),
        models={"data": [{"id": "Qwen/Qwen3.6-35B-A3B", "max_model_len": 131072}]},
    )
    rb = RemoteBackend(srv.url)
    info = rb.info
    assert (info.name, info.context_tokens, info.remote) == (
        "Qwen/Qwen3.6-35B-A3B",
        131072,
        srv.url,
    )
    assert info.model_id.startswith("remote:")
    assert rb.generate(chat()).finish_reason == "length"
    with pytest.raises(Exception, match=r"does not serve 'other'.*Qwen/Qwen3\.6-35B-A3B"):
        RemoteBackend(srv.url, model="other").info  # noqa: B018


def test_bare_host_url_means_v1(fake):
    srv = fake(sse(chunk({"content": "x"}, "stop")))
    rb = RemoteBackend(srv.url[: -len("/v1")])
    assert rb.url == srv.url and rb.generate(chat()).text == "x"


def test_count_tokens_uses_tokenize_or_a_one_token_request(fake):
    def vllm(h: Any, body: dict[str, Any]) -> None:
        if h.path == "/tokenize":
            send_json(h, 200, {"count": 42, "max_model_len": 4096, "tokens": [1] * 42})
        else:
            send_json(h, 500, {"error": {"message": "should not generate"}})

    srv = fake(vllm)
    rb = RemoteBackend(srv.url)
    assert rb.count_tokens(chat(tools=TOOLS)) == 42
    (ask,) = srv.posts("/tokenize")
    assert ask["messages"] == [{"role": "user", "content": "hi"}] and ask["tools"] == TOOLS
    prepared = rb.prepare(chat())
    assert isinstance(prepared, PreparedRequest) and prepared.prompt_tokens == 42

    def plain(h: Any, body: dict[str, Any]) -> None:
        if h.path == "/tokenize":
            send_json(h, 404, {"error": {"message": "not found"}})
        else:
            send_json(
                h,
                200,
                {
                    "choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 17, "completion_tokens": 1},
                },
            )

    srv2 = fake(plain)
    rb2 = RemoteBackend(srv2.url)
    assert rb2.count_tokens(chat()) == 17
    (one,) = srv2.posts()
    assert one["max_tokens"] == 1 and one["stream"] is False
    assert rb2.count_tokens(chat()) == 17 and len(srv2.posts("/tokenize")) == 1  # asked once
    assert rb2.prepare(chat()).prompt_tokens == 0  # not known before it runs


def test_a_server_that_does_not_stream(fake):
    srv = fake(
        lambda h, b: send_json(
            h,
            200,
            {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls",
                        "message": {
                            "role": "assistant",
                            "content": "Sure.",
                            "reasoning_content": "hm",
                            "tool_calls": [
                                {
                                    "id": "c1",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                                }
                            ],
                        },
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 5},
            },
        )
    )
    res = RemoteBackend(srv.url).generate(chat(tools=TOOLS))
    assert (res.reasoning, res.text, res.finish_reason) == ("hm", "Sure.", "stop")
    assert [(c.id, c.arguments) for c in res.tool_calls] == [("c1", {"city": "Rome"})]
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (9, 5)


def test_rate_limited_is_unavailable(fake):
    srv = fake(lambda h, b: send_json(h, 429, {"error": {"message": "slow down"}}))
    done, _ = _error(RemoteBackend(srv.url))
    assert done.error_kind == "unavailable" and "slow down" in done.error


# -- failures: each ends with Done("error") naming the problem, never a hang ---------------------
def _error(backend: Backend, req: GenerationRequest | None = None) -> tuple[Done, float]:
    t0 = time.monotonic()
    evs = events_of(backend, req or chat(), timeout=15)
    done = evs[-1]
    assert isinstance(done, Done) and done.finish_reason == "error", done
    return done, time.monotonic() - t0


def test_connection_refused_is_unavailable():
    port = free_port()  # nothing listens there now
    rb = RemoteBackend(f"http://127.0.0.1:{port}/v1", model="m")
    done, took = _error(rb)
    assert done.error_kind == "unavailable" and "connection refused" in done.error
    assert f"127.0.0.1:{port}" in done.error and took < 5
    with pytest.raises(Exception, match="connection refused"):
        RemoteBackend(f"http://127.0.0.1:{port}/v1").info  # noqa: B018


def test_server_error_is_unavailable_with_its_message(fake):
    srv = fake(
        lambda h, b: send_json(h, 500, {"error": {"message": "CUDA out of memory", "type": "server_error"}})
    )
    done, _ = _error(RemoteBackend(srv.url))
    assert done.error_kind == "unavailable"
    assert "HTTP 500" in done.error and "CUDA out of memory" in done.error


def test_client_errors_are_invalid_request_or_context_length(fake):
    srv = fake(
        lambda h, b: send_json(
            h, 400, {"error": {"message": "temperature is too hot", "type": "BadRequestError"}}
        )
    )
    done, _ = _error(RemoteBackend(srv.url))
    assert done.error_kind == "invalid_request" and "temperature is too hot" in done.error
    long = (
        "This model's maximum context length is 4096 tokens. However, you requested 9000 "
        "tokens in the messages."
    )
    srv2 = fake(lambda h, b: send_json(h, 400, {"object": "error", "message": long}))
    done2, _ = _error(RemoteBackend(srv2.url))
    assert done2.error_kind == "context_length" and "4096" in done2.error


def test_error_event_in_the_stream(fake):
    srv = fake(
        sse(
            chunk({"content": "par"}),
            {"error": {"message": "the engine died", "type": "server_error"}},
            done=False,
        )
    )
    evs = events_of(RemoteBackend(srv.url), chat())
    assert [e.text for e in evs if isinstance(e, TextDelta)] == ["par"]
    assert evs[-1].error_kind == "unavailable" and "the engine died" in evs[-1].error


def test_stream_cut_midway_is_unavailable(fake):
    srv = fake(sse(chunk({"content": "Hel"}), chunk({"content": "lo"}), done=False))
    rb = RemoteBackend(srv.url)
    evs = events_of(rb, chat())
    assert "".join(e.text for e in evs if isinstance(e, TextDelta)) == "Hello"
    done = evs[-1]
    assert done.finish_reason == "error" and done.error_kind == "unavailable"
    assert "ended midway" in done.error


def test_stream_cut_inside_a_chunked_body(fake):
    def cut(h: Any, body: dict[str, Any]) -> None:
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        data = f"data: {json.dumps(chunk({'content': 'a'}))}\n\n".encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.write(b"400\r\npartial")  # a chunk announced, then the connection drops
        h.wfile.flush()
        h.close_connection = True

    srv = fake(cut)
    done, took = _error(RemoteBackend(srv.url))
    assert done.error_kind == "unavailable" and took < 5
    assert "127.0.0.1" in done.error


def test_slow_server_times_out(fake):
    release = threading.Event()

    def slow(h: Any, body: dict[str, Any]) -> None:
        release.wait(10)  # never answers in time

    srv = fake(slow)
    rb = RemoteBackend(srv.url, timeout=0.5)
    done, took = _error(rb)
    release.set()
    assert done.error_kind == "unavailable" and "did not answer within 0.5 s" in done.error
    assert took < 3


def test_slow_between_chunks_times_out_too(fake):
    release = threading.Event()

    def stall(h: Any, body: dict[str, Any]) -> None:
        start_sse(h)
        send_event(h, chunk({"content": "a"}))
        release.wait(10)

    srv = fake(stall)
    done, took = _error(RemoteBackend(srv.url, timeout=0.5))
    release.set()
    assert done.error_kind == "unavailable" and "timed out" in done.error and took < 3


def test_bad_requests_fail_before_sending(fake):
    srv = fake(sse(chunk({"content": "x"}, "stop")))
    rb = RemoteBackend(srv.url)
    done = rb.submit(GenerationRequest(prompt="a", max_tokens=0)).result()
    assert done.finish_reason == "error" and "max_tokens" in done.error
    bad = chat()
    bad.messages = [{"role": "user", "content": [{"type": "image", "image": "/no/such.png"}]}]
    res = rb.submit(bad).result()
    assert res.finish_reason == "error" and "not found" in res.error
    assert srv.posts() == []
    with pytest.raises(Exception, match="expected http"):
        RemoteBackend("ftp://host/v1")


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("required", "required"),
        ("none", "none"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_is_sent_and_a_prefill_refused(fake, choice, sent):
    srv = fake(sse(chunk({"content": "ok"}, "stop")))
    rb = RemoteBackend(srv.url)
    req = chat()
    req.tools, req.tool_choice = TOOLS, choice
    assert rb.submit(req).result().text == "ok"
    (_, _, body), *_ = [r for r in srv.requests if r[0] == "/v1/chat/completions"]
    assert body["tool_choice"] == sent
    # A forced call is written without reasoning, as the local engine does.
    assert body["chat_template_kwargs"]["enable_thinking"] is (choice == "none")
    posts = len(srv.posts())
    pre = chat()
    pre.prefix = "The answer is"
    res = rb.submit(pre).result()
    assert res.finish_reason == "error" and "prefill" in res.error
    assert len(srv.posts()) == posts  # refused before sending


# -- cancel -----------------------------------------------------------------------------------------
def test_cancel_mid_stream_closes_the_connection(fake):
    def forever(h: Any, body: dict[str, Any]) -> None:
        start_sse(h)
        while True:
            send_event(h, chunk({"content": "tok "}))
            time.sleep(0.02)

    srv = fake(forever)
    handle = RemoteBackend(srv.url).submit(chat())
    seen, t0, done = 0, 0.0, None
    for ev in handle.events(timeout=10):
        if isinstance(ev, TextDelta):
            seen += 1
            if seen == 3:
                t0 = time.monotonic()
                handle.cancel()
        done = ev
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    assert time.monotonic() - t0 < 1 and seen >= 3
    assert srv.gone.wait(5)  # the server saw the client go: it can stop generating


def test_cancel_while_waiting_for_the_first_byte(fake):
    release = threading.Event()
    srv = fake(lambda h, b: release.wait(10))
    handle = RemoteBackend(srv.url).submit(chat())
    time.sleep(0.3)
    t0 = time.monotonic()
    handle.cancel()
    done = handle.result()
    release.set()
    assert done.finish_reason == "cancelled" and time.monotonic() - t0 < 1


# -- against Locus's own API server -----------------------------------------------------------------
@pytest.fixture
def locus_server(tiny_model):
    """start(replies) -> (ServerThread over a ReplyEngine, the engine)."""
    from app.server import ServerConfig, ServerThread, create_app
    from tests.scripted import ReplyEngine

    running: list[Any] = []

    def start(*replies: str, **cfg: Any) -> tuple[Any, Any]:
        eng = ReplyEngine(tiny_model, list(replies))
        config = ServerConfig(port=0, log_level="warning", **cfg)
        srv = ServerThread(create_app(eng, config), config).start()
        running.append(srv)
        return srv, eng

    yield start
    for srv in running:
        srv.stop()


def test_locus_server_reasoning_and_tool_calls_come_through(locus_server):
    srv, eng = locus_server(
        "The user wants weather.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    )
    rb = RemoteBackend(srv.url + "/v1")
    res = rb.generate(chat("Weather in Paris?", tools=TOOLS, max_tokens=200))
    assert res.reasoning.strip() == "The user wants weather."
    assert res.text.strip() == "Let me check."
    assert [(c.name, c.arguments) for c in res.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert res.tool_calls[0].id.startswith("call_")
    assert res.finish_reason == "stop" and res.usage.prompt_tokens > 0
    sent = eng.requests[-1]
    assert sent.tools and sent.tools[0]["function"]["name"] == "get_weather"
    assert sent.enable_thinking is True


def test_locus_server_api_key_and_thinking_off(locus_server):
    srv, eng = locus_server("plain answer", api_key="k3y")
    denied = RemoteBackend(srv.url + "/v1", model="any").generate(chat())
    assert denied.finish_reason == "error" and "401" in denied.error
    rb = RemoteBackend(srv.url + "/v1", api_key="k3y")
    res = rb.generate(chat(enable_thinking=False))
    assert res.text == "plain answer" and res.reasoning == ""
    assert eng.requests[-1].enable_thinking is False


def test_locus_server_cancel_stops_its_generation(locus_server):
    srv, eng = locus_server("loop")
    eng.eos = False  # the model repeats its last token until max_tokens or cancel
    rb = RemoteBackend(srv.url + "/v1")
    handle = rb.submit(chat(max_tokens=100000))
    for ev in handle.events(timeout=20):
        if isinstance(ev, TextDelta | ReasoningDelta):
            handle.cancel()
    assert handle.done.finish_reason == "cancelled"
    deadline = time.monotonic() + 10
    while not eng.handles[-1].cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.handles[-1].cancelled  # the server cancelled the engine when the client left


def _start_locus_serve(model_dir: Path, port: int) -> subprocess.Popen:
    proc = proctree.popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--no-prompt-cache",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    _wait_for(proc, f"http://127.0.0.1:{port}/v1/models")
    return proc


def _wait_for(proc: subprocess.Popen, url: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_greedy_text_equals_the_local_engine(tiny_dir, engine):
    port = free_port()
    proc = _start_locus_serve(tiny_dir("mlx", 4), port)
    try:
        rb = RemoteBackend(f"http://127.0.0.1:{port}/v1")
        assert rb.info.remote and rb.info.context_tokens > 0
        for req in (
            chat("Tell me about the cat on the mat.", sampling=GREEDY, max_tokens=24, use_cache=False),
            chat("Hello", sampling=GREEDY, max_tokens=16, enable_thinking=False, use_cache=False),
        ):
            here = engine.generate(req)
            assert here.reasoning or here.text  # something to compare
            there = rb.generate(req)
            assert there.finish_reason == here.finish_reason == "length"
            assert (there.reasoning, there.text) == (here.reasoning, here.text)
            assert there.usage.prompt_tokens == here.usage.prompt_tokens
            assert there.usage.completion_tokens == here.usage.completion_tokens
            assert rb.count_tokens(req) == engine.count_tokens(req)
    finally:
        _stop(proc)


# -- against mlx_lm.server ----------------------------------------------------------------------
@pytest.mark.slow
def test_mlx_lm_server_chat(tiny_dir, tmp_path):
    from engine import load_model

    model_dir = tiny_dir("mlx")  # the stacked layout mlx-lm loads itself
    port = free_port()
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf")}  # its /v1/models scans this
    (tmp_path / "hf").mkdir()
    proc = proctree.popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(proc, f"http://127.0.0.1:{port}/v1/models")
        rb = RemoteBackend(f"http://127.0.0.1:{port}/v1")
        assert rb.info.name == str(model_dir.resolve())
        req = chat("Hello there", sampling=GREEDY, max_tokens=12)
        res = rb.generate(req)
        assert res.finish_reason == "length", res.error
        assert res.usage.completion_tokens == 12 and res.usage.prompt_tokens > 0
        # The tiny model thinks first: mlx-lm sends that as `reasoning`, as Locus's engine does.
        local = load_model(model_dir)
        from engine import Engine

        with Engine(local) as eng:
            here = eng.generate(req)
        assert res.reasoning == here.reasoning and res.text == here.text
        assert res.reasoning  # not empty: the comparison says something
        # Cancel: the connection closes and the handle ends at once.
        handle = rb.submit(chat("Again", max_tokens=5000))
        for ev in handle.events(timeout=30):
            if isinstance(ev, TextDelta | ReasoningDelta):
                handle.cancel()
        assert handle.done.finish_reason == "cancelled"
    finally:
        _stop(proc)


@pytest.mark.slow
def test_mlx_lm_server_tool_calls(tiny_dir, tmp_path):
    script = (
        "Let me look it up.\n</think>\n\nChecking.\n\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    )
    port = free_port()
    (tmp_path / "hf").mkdir()
    launcher = Path(__file__).resolve().parents[1] / "forced_mlx_server.py"
    proc = proctree.popen(
        [sys.executable, str(launcher), script, "--model", str(tiny_dir("mlx")), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf")},
    )
    try:
        _wait_for(proc, f"http://127.0.0.1:{port}/v1/models")
        rb = RemoteBackend(f"http://127.0.0.1:{port}/v1")
        req = chat(
            "Weather in Paris?", tools=TOOLS, max_tokens=200, sampling=SamplingParams(temperature=0.0, seed=1)
        )
        res = rb.generate(req)
        assert res.finish_reason == "stop", res.error
        assert res.reasoning.strip() == "Let me look it up."
        assert res.text.strip() == "Checking."
        assert [(c.name, c.arguments) for c in res.tool_calls] == [("get_weather", {"city": "Paris"})]
        assert res.tool_calls[0].id and not res.tool_call_errors
        # The call goes back as the next turn's history, and the server takes it.
        follow = chat(
            "Weather in Paris?", tools=TOOLS, max_tokens=200, sampling=SamplingParams(temperature=0.0, seed=1)
        )
        follow.messages += [
            {
                "role": "assistant",
                "content": res.text,
                "reasoning_content": res.reasoning,
                "tool_calls": [
                    {
                        "type": "function",
                        "id": res.tool_calls[0].id,
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": res.tool_calls[0].id, "content": "sunny, 21 C"},
        ]
        again = rb.generate(follow)
        assert again.finish_reason == "stop", again.error
    finally:
        _stop(proc)


def test_a_refused_api_key_is_the_servers_setup_not_a_bad_request(fake):
    srv = fake(lambda h, b: send_json(h, 401, {"error": {"message": "Incorrect API key provided"}}))
    done, _ = _error(RemoteBackend(srv.url))
    assert done.error_kind == "unavailable" and "API key" in done.error


def test_an_unreadable_answer_still_ends_the_request(fake):
    # Usage the server fills with nonsense must not leave the request waiting forever.
    srv = fake(
        sse(chunk({"content": "hi"}), chunk({}, "stop"), {"choices": [], "usage": {"prompt_tokens": "n/a"}})
    )
    res = RemoteBackend(srv.url).submit(chat()).result()
    assert res.finish_reason == "error" and "cannot be read" in res.error
