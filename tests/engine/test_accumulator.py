"""engine.ReplyAccumulator: the one fold of a request's events that every front end reads."""

from __future__ import annotations

import pytest

from engine import (
    Done,
    EngineError,
    GenerationResult,
    PromptProgress,
    ReasoningDelta,
    ReplyAccumulator,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
)

CALL = ToolCall("c1", "read", {"path": "a"}, "<tool_call>…</tool_call>")
BAD = ToolCallError("no name", "<tool_call>oops</tool_call>")
EVENTS = [
    PromptProgress(4, 4),
    ReasoningDelta("Let me "),
    ReasoningDelta("see."),
    TextDelta("Here "),
    TextDelta("it is."),
    CALL,
    TextDelta(" Then"),
    BAD,
    TextDelta(" done."),
    Usage(prompt_tokens=4, completion_tokens=9),
    Done("stop", [1, 2, 3], Usage(prompt_tokens=4, completion_tokens=9, cached_tokens=2)),
]


def fold(events):  # type: ignore[no-untyped-def]
    acc = ReplyAccumulator()
    for ev in events:
        assert acc.add(ev) is ev
    return acc


def test_folds_text_reasoning_calls_and_usage():
    acc = fold(EVENTS)
    assert acc.reasoning == "Let me see."
    assert acc.text == "Here it is. Then done."
    # The answer as written keeps a malformed call's raw text where it came.
    assert acc.content == "Here it is. Then<tool_call>oops</tool_call> done."
    assert acc.tool_calls == [CALL] and acc.tool_call_errors == [BAD] and acc.calls == [CALL, BAD]
    assert acc.usage is not None and acc.usage.cached_tokens == 2  # Done's usage wins
    assert acc.progress == PromptProgress(4, 4) and acc.finish_reason == "stop"
    assert acc.deltas == 6


def test_parts_keep_the_order_and_merge_runs():
    parts = fold(EVENTS).parts
    assert parts == [
        ReasoningDelta("Let me see."),
        TextDelta("Here it is."),
        CALL,
        TextDelta(" Then"),
        BAD,
        TextDelta(" done."),
    ]


def test_state_is_readable_while_the_reply_streams():
    acc = fold(EVENTS[:4])
    assert (acc.reasoning, acc.text, acc.done, acc.finish_reason) == ("Let me see.", "Here ", None, None)
    assert acc.usage is None
    acc.add(Usage(prompt_tokens=1, completion_tokens=2))
    assert acc.usage == Usage(prompt_tokens=1, completion_tokens=2)  # before Done, the last Usage
    with pytest.raises(EngineError, match="without Done"):
        acc.result()


def test_result_matches_generation_result_of():
    r = fold(EVENTS).result()
    assert r == GenerationResult.of(EVENTS)
    assert (r.text, r.reasoning, r.finish_reason, r.token_ids) == (
        "Here it is. Then done.",
        "Let me see.",
        "stop",
        [1, 2, 3],
    )
    assert r.tool_calls == [CALL] and r.tool_call_errors == [BAD]
    err = fold([Done("error", error="boom", error_kind="internal")]).result()
    assert (err.finish_reason, err.error, err.usage) == ("error", "boom", None)
