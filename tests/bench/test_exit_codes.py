"""Every bench/ script exits non-zero, naming the miss on its last line, when a target or a side fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.verdict import finish

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_finish_names_every_failure_on_the_last_line(capsys) -> None:  # type: ignore[no-untyped-def]
    assert finish(["decode 0.90 < target 1.00", "mlx-lm could not load"]) == 1
    last = _last_line(capsys.readouterr().out)
    assert last.startswith("FAILED (2)") and "decode" in last and "mlx-lm" in last
    assert finish([]) == 0 and _last_line(capsys.readouterr().out).startswith("OK")
    # --json keeps stdout parseable: the verdict goes to stderr.
    assert finish(["x"], json_mode=True) == 1
    out, err = capsys.readouterr()
    assert out == "" and _last_line(err).startswith("FAILED")


def _decode_report(decode: float, prefill: float, load: float | None, same: bool = True) -> dict[str, Any]:
    return {
        "ratios": {"decode": decode, "prefill": prefill, "load_peak": load},
        "targets": {"decode": 1.0, "prefill": 0.95, "load_peak": 1.15},
        "load": {"locus": {"peak_ratio": load} if load else {"error": "boom"}, "mlx-lm": {}},
        "outputs_identical": {"mlx_lm": same},
        "first_divergence": {"mlx_lm": None if same else 3},
        "gen_tokens": 8,
        "gen_tokens_produced": {"locus": 8, "mlx_lm": 8},
    }


def test_decode_judges_each_target_and_side() -> None:
    decode = _load("decode")
    assert decode.judge(_decode_report(1.01, 0.96, 1.10)) == []
    fails = decode.judge(_decode_report(0.99, 0.96, 1.10))
    assert len(fails) == 1 and fails[0].startswith("decode")
    assert decode.judge(_decode_report(1.0, 0.5, 1.10))[0].startswith("prefill")
    assert decode.judge(_decode_report(1.0, 1.0, 1.20))[0].startswith("load peak")
    assert "locus could not load" in decode.judge(_decode_report(1.0, 1.0, None))[0]
    assert "differ from Locus's from token 3" in decode.judge(_decode_report(1.0, 1.0, 1.0, same=False))[0]


def test_mtp_and_pipeline_fail_when_tokens_differ() -> None:
    mtp = _load("mtp")
    rows = [{"row": "plain", "same": True}, {"row": "oracle 2", "same": False}]
    assert mtp.judge({"rows": rows}) == ["row oracle 2: tokens differ from plain decoding"]
    assert mtp.judge({"rows": rows[:1]}) == []
    pipeline = _load("pipeline")
    assert pipeline.judge({"same_tokens": False}) and pipeline.judge({"same_tokens": True}) == []


def test_pipeline_exits_1_when_a_configuration_fails(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    pipeline = _load("pipeline")

    def failing(args: Any) -> Any:
        raise pipeline.SideFailed("the 2-process configuration failed (exit 1)")

    monkeypatch.setattr(pipeline, "run", failing)
    assert pipeline.main([]) == 1
    assert "2-process configuration failed" in _last_line(capsys.readouterr().out)


@pytest.fixture
def agent_session(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """bench/agent_session.py with the model and tokenizer replaced: main() runs only the harness."""
    mod = _load("agent_session")
    monkeypatch.setattr(mod._decode, "ensure_model", lambda args: (tmp_path / "m", "fake"))
    monkeypatch.setattr(mod, "restrict_output", lambda src, dst: 0)
    monkeypatch.setattr(mod, "Counter", lambda path: None)
    return mod


def _fake_locus(mod: Any, prefill_everything: bool) -> type:
    class FakeLocus:
        name = "Locus"

        def __init__(self, path: Path, cache_dir: Path) -> None:
            self.prompt = 0

        def turn(self, messages: list[dict[str, Any]], max_tokens: int, session: str) -> Any:
            if not prefill_everything:
                raise mod.SideFailed("request ended with error")
            self.prompt += 100  # the whole prompt prefilled again on every turn: no reuse at all
            return mod.Turn(self.prompt, self.prompt, 0.1, 0.2, "", "x", 4)

        def close(self) -> None:
            pass

    return FakeLocus


def test_agent_session_exits_1_when_locus_fails(agent_session, monkeypatch, capsys) -> None:  # type: ignore
    monkeypatch.setattr(agent_session, "LocusSide", _fake_locus(agent_session, prefill_everything=False))
    assert agent_session.main(["--scenarios", "A", "--no-mlx"]) == 1
    assert "scenario A: Locus failed" in _last_line(capsys.readouterr().out)


def test_agent_session_exits_1_when_a_target_is_missed(agent_session, monkeypatch, capsys) -> None:  # type: ignore
    monkeypatch.setattr(agent_session, "LocusSide", _fake_locus(agent_session, prefill_everything=True))
    assert agent_session.main(["--scenarios", "A", "--no-mlx"]) == 1
    last = _last_line(capsys.readouterr().out)
    assert "scenario A: Locus prefilled <= 1.1 x new NOT met" in last


def test_grounding_exits_1_below_min_accuracy(capsys) -> None:  # type: ignore[no-untyped-def]
    grounding = _load("grounding")
    assert grounding.main(["--replay", "--min-accuracy", "1.01"]) == 1
    assert "accuracy 1.00 < target 1.01" in _last_line(capsys.readouterr().out)
    assert grounding.main(["--replay", "--min-accuracy", "1.0"]) == 0


@pytest.mark.slow
def test_decode_script_exits_1_on_an_impossible_target() -> None:
    # The whole script on the tiny model, smallest settings: the exit code is the process's own.
    cmd = [sys.executable, str(BENCH / "decode.py"), "--prompt-tokens", "4", "--gen-tokens", "2"]
    cmd += ["--runs", "1", "--no-warmup", "--no-load", "--target-prefill", "0", "--target-decode"]
    r = subprocess.run([*cmd, "1e9"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _last_line(r.stdout).startswith("FAILED (1): decode locus/mlx-lm")
    r = subprocess.run([*cmd, "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and _last_line(r.stdout).startswith("OK"), r.stdout + r.stderr
