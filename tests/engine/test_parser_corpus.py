"""Real Qwen3.5/3.6 outputs from public threads (fixtures/tool_calls/corpus.json): each one gives
the same events whole and streamed in 1-, 3- and 7-character chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.events import ReasoningDelta, TextDelta, ToolCall, ToolCallError
from engine.parser import StreamParser

CORPUS = json.loads((Path(__file__).parent / "fixtures" / "tool_calls" / "corpus.json").read_text("utf-8"))
FIXTURES = {f["id"]: f for f in CORPUS["fixtures"]}


def _events(fx: dict[str, Any], size: int | None) -> list[dict[str, Any]]:
    parser = StreamParser(CORPUS["tools"][fx["tools"]], reasoning=fx["reasoning"])
    text = fx["output"]
    events = []
    for i in range(0, len(text), size or len(text) or 1):
        events += parser.feed(text[i : i + (size or len(text))])
    events += parser.finish(truncated=fx.get("truncated", False))
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, ReasoningDelta | TextDelta):
            key = "reasoning" if isinstance(e, ReasoningDelta) else "text"
            if out and key in out[-1]:
                out[-1][key] += e.text
            else:
                out.append({key: e.text})
        elif isinstance(e, ToolCall):
            out.append({"call": e.name, "arguments": e.arguments, "raw": e.raw})
        elif isinstance(e, ToolCallError):
            out.append({"error": e.message, "name": e.name, "raw": e.raw})
    return out


def _matches(got: dict[str, Any], want: dict[str, Any]) -> bool:
    if "error" in want:
        return "error" in got and want["error"] in got["error"] and got["name"] == want.get("name")
    return {k: got.get(k) for k in want} == want


def test_every_fixture_cites_a_source_and_the_corpus_is_not_empty():
    assert len(FIXTURES) >= 15
    for fx in FIXTURES.values():
        assert fx["source"] and fx["expect"] and fx["tools"] in CORPUS["tools"]


@pytest.mark.parametrize("size", [None, 1, 3, 7])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_gives_its_events_in_every_chunking(name, size):
    fx = FIXTURES[name]
    got = _events(fx, size)
    want = fx["expect"]
    assert len(got) == len(want) and all(map(_matches, got, want)), got
    # Reasoning, text and the raw text of calls hold every non-blank character of the output.
    parts = [g.get("reasoning") or g.get("text") or g["raw"] for g in got]

    def squash(s: str) -> str:  # dropped stray closing tags aside
        return "".join(s.replace("</think>", "").replace("</tool_call>", "").split())

    assert squash("".join(parts)) == squash(fx["output"])
    # No call markup ever reaches the answer text.
    answer = "".join(g.get("text", "") for g in got)
    for tag in ("<tool_call>", "</tool_call>", "<function=", "<parameter=", "</think>"):
        assert tag not in answer
