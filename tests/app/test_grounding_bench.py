"""bench/grounding.py scores real parser output against ground truth, and can fail."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("app.localize")
BENCH = Path(__file__).resolve().parents[2] / "bench" / "grounding.py"


@pytest.fixture(scope="module")
def grounding():
    spec = importlib.util.spec_from_file_location("bench_grounding", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_grounding"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_synthesized_answers_are_found(grounding, tmp_path, capsys):
    assert grounding.main(["--replay", "--json", str(tmp_path / "r.json")]) == 0
    loc = json.loads((tmp_path / "r.json").read_text())["localization"]
    assert loc["truth"] >= 6 and loc["found"] == loc["truth"]


def test_wrong_answers_score_zero(grounding, tmp_path):
    data = grounding.generate_dataset(tmp_path, n=3)
    items = [json.loads(x) for x in data.read_text().splitlines()]
    # Boxes in the opposite corner, with the right labels: nothing overlaps at IoU >= 0.5.
    answers = []
    for it in items:
        objs = [{"bbox_2d": [990, 990, 1000, 1000], "label": b["label"]} for b in it["boxes"]]
        answers.append(json.dumps(f"```json\n{json.dumps(objs)}\n```"))
    replay = tmp_path / "answers.jsonl"
    replay.write_text("\n".join(answers) + "\n")
    out = tmp_path / "r.json"
    assert grounding.main(["--data", str(data), "--replay", str(replay), "--json", str(out)]) == 0
    loc = json.loads(out.read_text())["localization"]
    assert loc["found"] == 0 and loc["predicted"] == loc["truth"]
