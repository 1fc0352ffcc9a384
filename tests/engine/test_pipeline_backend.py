"""One model pipelined across two processes over loopback (mlx.launch, ring backend): the same
greedy tokens as one process, images, the prompt cache across turns, cancel, and a lost rank
ending requests with an error within seconds."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import proctree

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("pipeline_driver.py")
SAMPLING_DRIVER = Path(__file__).with_name("pipeline_sampling_driver.py")
LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["LOCUS_CACHE_DIR"] = str(tmp / "cache")
    env["LOCUS_DATA_DIR"] = str(tmp / "data")
    env["LOCUS_PIPELINE_TIMEOUT"] = "3"
    env.pop("LOCUS_API_KEY", None)
    return env


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ring_port() -> int:
    """A first port for mlx.launch whose next one is free too (the default may be taken)."""
    for _ in range(100):
        p = random.randint(40000, 60000)
        if _free(p) and _free(p + 1):
            return p
    raise RuntimeError("no free ports")


def _launch(*command: str, port: int | None = None) -> list[str]:
    return [
        sys.executable,
        "-c",
        LAUNCH,
        "-n",
        "2",
        "--backend",
        "ring",
        "--starting-port",
        str(port or _ring_port()),
        "--",
        sys.executable,
        *command,
    ]


def _run(cmd: list[str], tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in its own session; on timeout end every process of it (mlx.launch does not
    stop its ranks when it is killed) and fail the test: ranks out of step hang in a collective."""
    proc = proctree.popen(
        cmd,
        env=_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[-3:])} did not finish within {timeout:.0f} s (a hang):\n{err[-3000:]}")
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- fast: the seam -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [2, 3])
def test_split_model_gives_each_rank_mlx_lms_share(tiny_dir, size):
    """split_model runs mlx-lm's pipeline() on Locus's model: each rank keeps exactly the layers
    layer_split reports, the last rank the first ones, and the MTP head is dropped."""
    from engine.loader import _load_qwen, inspect_checkpoint
    from engine.pipeline import layer_split, split_model

    info = inspect_checkpoint(tiny_dir("mlx", 4))
    ranges = layer_split(info.config["text_config"]["num_hidden_layers"], size)
    assert ranges[-1][0] == 0 and ranges[0][1] == 4
    assert sorted(ranges) == [(a, b) for a, b in sorted(ranges)] and sum(b - a for a, b in ranges) == 4
    for rank in range(size):
        model = _load_qwen(info, lazy=True)
        group = SimpleNamespace(rank=lambda r=rank: r, size=lambda: size)
        assert split_model(model, group) == ranges
        inner = model.language_model.model
        assert (inner.start_idx, inner.end_idx) == ranges[rank]
        assert len(model.language_model.layers) == ranges[rank][1] - ranges[rank][0]
        assert len(model.make_cache()) == len(model.language_model.layers)
        assert model.mtp_head is None


# -- slow: two processes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_decode_like_one(tiny_dir, tmp_path):
    """The same greedy tokens as one process, across two turns with the prompt cache (the second
    resumes from the first's reply on both ranks), a cancelled request, and one after it."""
    path = str(tiny_dir("mlx", 4))
    one = _run([sys.executable, str(DRIVER), path], tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = _run(_launch(str(DRIVER), path), tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    (alone,) = _json_lines(one.stdout)
    (piped,) = _json_lines(two.stdout)  # only rank 0 prints
    for key in ("first", "second", "after", "budget", "after_budget"):
        assert piped[key]["error"] is None
        assert piped[key]["tokens"] == alone[key]["tokens"], key
        assert piped[key]["finish"] == alone[key]["finish"]
        assert (alone[key]["ranks"], piped[key]["ranks"]) == (1, 2)
    second = len(range(20, 60)) + len(alone["first"]["tokens"])
    assert alone["second"]["cached"] == piped["second"]["cached"] == second
    assert alone["budget"]["finish"] == "length" and len(alone["budget"]["tokens"]) > 30  # the note too
    assert piped["cancelled"]["finish"] == "cancelled"
    assert alone["info"] == {"ranks": 1, "rank_layers": []}
    assert piped["info"] == {"ranks": 2, "rank_layers": [[2, 4], [0, 2]]}
    assert 0 < piped["cancelled"]["n"] < 400
    assert re.search(r"Pipeline rank 1 of 2 \(pid \d+\): layers 0-1", two.stderr)


@pytest.mark.slow
def test_sampled_tokens_reach_every_rank(tiny_dir, tmp_path):
    """Sampling (temperature > 0, no request seed) with a different RNG seed on each rank: only the
    token rank 0 shares keeps the ranks in step. Both ranks emit the same tokens and text, and each
    token is one the single-process model allows there (its top-k, teacher-forced)."""
    import mlx.core as mx
    import numpy as np

    from engine import load_model

    from .pipeline_sampling_driver import REQUESTS, TOP_K

    path = tiny_dir("mlx", 4)
    out = tmp_path / "out"
    out.mkdir()
    two = _run(_launch(str(SAMPLING_DRIVER), str(path), str(out)), tmp_path, timeout=150)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(REQUESTS)
    for i, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert a["error"] is None and b["error"] is None, (a, b)
        assert (a["tokens"], a["text"], a["finish"]) == (b["tokens"], b["text"], b["finish"]), f"request {i}"
    assert ranks[0][0]["tokens"] != ranks[0][1]["tokens"]  # the same prompt drew anew: it sampled
    model = load_model(path).model
    for spec, run in zip(REQUESTS[:3], ranks[0], strict=False):
        ids = spec["prompt_ids"] + run["tokens"]
        logits = np.array(model(mx.array([ids], dtype=mx.uint32))[0].astype(mx.float32))
        for j, tok in enumerate(run["tokens"]):
            row = logits[len(spec["prompt_ids"]) - 1 + j]
            kth = np.sort(row)[-TOP_K]
            assert row[tok] >= kth - 1e-3, f"token {j} ({tok}) is outside the model's top {TOP_K}"


@pytest.mark.slow
def test_ranks_agree_on_where_to_resume(tiny_dir, tmp_path):
    """Rank 1 keeps no snapshot (its prompt cache holds 1 byte): rank 0 holds the first turn's
    but must not resume from it alone; both prefill the whole prompt and still agree."""
    path = str(tiny_dir("mlx", 4))
    one = _run([sys.executable, str(DRIVER), path], tmp_path / "one")
    cmd = _launch(str(DRIVER), path)
    env_cmd = ["env", "DRIVER_STARVE_WORKER=1", *cmd]
    two = _run(env_cmd, tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    (alone,) = _json_lines(one.stdout)
    (piped,) = _json_lines(two.stdout)
    assert alone["second"]["cached"] > 0 and piped["second"]["cached"] == 0
    for key in ("first", "second", "after"):
        assert piped[key]["tokens"] == alone[key]["tokens"], key


@pytest.mark.slow
def test_locus_generate_under_mlx_launch_with_an_image(tiny_dir, tmp_path):
    """`mlx.launch -n 2 -- locus generate --image ...`: rank 1 (the first layers) runs the vision
    tower; the tokens equal one process's, and the done event reports both ranks' layers."""
    from PIL import Image

    img = tmp_path / "img.png"
    pixels = bytes(random.Random(0).randrange(256) for _ in range(40 * 56 * 3))
    Image.frombytes("RGB", (56, 40), pixels).save(img)
    args = [
        "-m",
        "app.cli",
        "generate",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--prompt",
        "describe",
        "--no-memory-check",
        "--image",
        str(img),
        "--temperature",
        "0",
        "--max-tokens",
        "10",
        "--json",
    ]
    one = _run([sys.executable, *args], tmp_path / "one")
    two = _run(_launch(*args), tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    done1 = next(e for e in _json_lines(one.stdout) if e["type"] == "done")
    done2 = next(e for e in _json_lines(two.stdout) if e["type"] == "done")
    assert done2["token_ids"] == done1["token_ids"] and len(done1["token_ids"]) == 10
    assert done2["usage"]["ranks"] == 2 and done2["usage"]["rank_layers"] == [[2, 4], [0, 2]]
    assert done1["usage"]["ranks"] == 1
    text_only = _run(
        [sys.executable, *args[:-7], "--temperature", "0", "--max-tokens", "10", "--json"], tmp_path / "one"
    )
    done0 = next(e for e in _json_lines(text_only.stdout) if e["type"] == "done")
    assert done0["token_ids"] != done1["token_ids"]  # the image did reach the model


class _Server:
    """`locus serve` across two processes, in its own session so the test can end all of it."""

    def __init__(self, cmd: list[str], tmp: Path, port: int):
        self.port = port
        self.log = tmp / "serve.log"
        tmp.mkdir(parents=True, exist_ok=True)
        self.proc = proctree.popen(
            cmd,
            env=_env(tmp),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                self.health = self.get("/health")
                break
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.5)
        else:
            raise AssertionError("the server did not start: " + self.log.read_text()[-3000:])
        m = re.search(r"Pipeline rank 1 of 2 \(pid (\d+)\)", self.log.read_text())
        assert m, self.log.read_text()
        self.worker = int(m.group(1))

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def chat(self, text: str, timeout: float = 60) -> tuple[int, dict]:
        body = json.dumps(
            {"model": "x", "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions", body, {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_hosts_hung_rank_ends_requests_with_an_error(tiny_dir, tmp_path):
    """`locus serve --hosts HOSTFILE` serves from rank 0; when rank 1 stops answering (SIGSTOP:
    a hung Mac or a cut cable), a request ends with a clear error within seconds, the server
    stays up, and later requests are refused at once."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    port = _port()
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--hosts",
        str(hostfile),
        "--model",
        str(tiny_dir("mlx", 4)),
        "--port",
        str(port),
        "--no-memory-check",
    ]
    srv = _Server(cmd, tmp_path, port)
    try:
        assert srv.health["ranks"] == 2 and srv.health["rank_layers"] == [[2, 4], [0, 2]]
        status, body = srv.chat("hello")
        assert status == 200, body
        os.kill(srv.worker, signal.SIGSTOP)
        t0 = time.monotonic()
        status, body = srv.chat("hello again")
        took = time.monotonic() - t0
        assert status >= 500 and "pipeline is down" in body["error"]["message"], body
        assert "pipeline rank 1" in body["error"]["message"] and "not answered" in body["error"]["message"]
        assert took < 15
        assert srv.get("/health")["status"] == "ok"
        t0 = time.monotonic()
        status, body = srv.chat("and again")  # refused before it reaches the model
        assert status >= 400 and "pipeline is down" in body["error"]["message"], body
        assert time.monotonic() - t0 < 3
    finally:
        srv.stop()


@pytest.mark.slow
def test_killed_rank_ends_the_request_in_flight_within_seconds(tiny_dir, tmp_path):
    """A rank killed while a request waits on it: the request ends with an error naming the
    lost rank within seconds (then mlx.launch stops the rest), never a hang."""
    port = _port()
    args = [
        "-m",
        "app.cli",
        "serve",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--port",
        str(port),
        "--no-memory-check",
    ]
    srv = _Server(_launch(*args), tmp_path, port)
    try:
        assert srv.chat("hello")[0] == 200
        os.kill(srv.worker, signal.SIGSTOP)  # hold the next request in flight ...
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(r=srv.chat("hi", timeout=30)))
        thread.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        os.kill(srv.worker, signal.SIGKILL)  # ... then kill the rank it waits on
        thread.join(30)
        took = time.monotonic() - t0
        status, body = result["r"]
        assert status >= 500 and "pipeline is down" in body["error"]["message"], body
        assert took < 5
    finally:
        srv.stop()


def test_a_job_travels_as_data_and_nothing_else_is_read(engine):
    # Workers read requests from the network: JSON and raw pixels only, never pickle.
    import pickle

    import numpy as np
    from PIL import Image

    from engine import GenerationRequest, SamplingParams
    from engine.pipeline import _Job, pack_job, unpack_job

    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (40, 28), "red")},
                {"type": "text", "text": "what?"},
            ],
        }
    ]
    inputs = engine.prepare(GenerationRequest(messages=msgs)).inputs
    req = GenerationRequest(
        prompt_ids=inputs.ids,
        tools=[{"type": "function", "function": {"name": "f"}}],
        sampling=SamplingParams(temperature=0.5, seed=3),
        max_tokens=9,
        stop=["x"],
        session="s",
    )
    job = unpack_job(pack_job(_Job(req, inputs, {5: "boundary"})))
    assert job.request.prompt_ids == inputs.ids and job.request.sampling == req.sampling
    assert (job.request.tools, job.request.max_tokens, job.request.stop) == (req.tools, 9, ["x"])
    assert job.inputs.images == inputs.images and job.kinds == {5: "boundary"}
    (a,), (b,) = job.inputs.prepared, inputs.prepared
    assert np.array_equal(a.pixel_values, b.pixel_values) and (a.grid, a.hash) == (b.grid, b.hash)
    for bad in (pickle.dumps(job), pack_job(job)[:-4], b"\x00\x00\x00\x02{}", pack_job(job) + b"x"):
        with pytest.raises(ValueError, match="not a pipeline job"):
            unpack_job(bad)


def test_a_large_frame_counts_as_a_sign_of_life_while_it_arrives():
    # A request with images can take seconds to arrive: heartbeats must not time the rank out.
    from engine.pipeline import _recv_exact

    a, b = socket.socketpair()
    data = os.urandom(3 << 20)
    sender = threading.Thread(target=a.sendall, args=(data,))
    sender.start()
    beats: list[int] = []
    try:
        assert _recv_exact(b, len(data), lambda: beats.append(1)) == data
    finally:
        sender.join()
        a.close()
        b.close()
    assert len(beats) >= 3  # at most 1 MB between two signs of life
