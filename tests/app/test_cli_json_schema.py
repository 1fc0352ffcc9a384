"""`locus generate --json-schema FILE` as a user runs it (a real subprocess on the tiny model)."""

from __future__ import annotations

import json

import jsonschema

from tests.app.test_cli import locus

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "n": {"type": "integer", "maximum": 9}},
    "required": ["city", "n"],
    "additionalProperties": False,
}


def test_generate_with_a_json_schema_prints_valid_json(tiny_dir, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    model = str(tiny_dir("mlx", 4))
    for seed in ("1", "2"):
        args = f"--prompt JSON --no-thinking --seed {seed} --temperature 1 --max-tokens 200 --json"
        r = locus("generate", "--model", model, "--json-schema", str(path), *args.split())
        assert r.returncode == 0, r.stderr
        events = [json.loads(x) for x in r.stdout.splitlines()]
        text = "".join(e["text"] for e in events if e["type"] == "text")
        jsonschema.validate(json.loads(text), SCHEMA)
        assert events[-1]["finish_reason"] == "stop"


def test_json_schema_errors_are_clear(tiny_dir, tmp_path):
    model = str(tiny_dir("mlx", 4))
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"a": {"not": {}}}}')
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    for path, needle in ((tmp_path / "none.json", "cannot read"), (broken, "not JSON"), (bad, '"not"')):
        r = locus("generate", "--model", model, "--prompt", "x", "--json-schema", str(path))
        assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
