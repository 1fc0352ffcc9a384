"""Constrained decoding (engine/constrain.py): the grammars against the texts the chat template and
the parser agree on, the stateful processor's rollback, and real decoding on the tiny model —
greedy, sampled, after `</think>`, and under MTP verification with drafts the mask forbids."""

from __future__ import annotations

import json
import random

import jsonschema
import mlx.core as mx
import pytest

from engine import Engine, GenerationRequest, PromptCache, RequestError, SamplingParams
from engine.constrain import grammar, ll_tokenizer
from engine.generate import generate_step
from engine.mtp import speculative_step
from engine.parser import parse_tool_calls
from engine.request import CALL_PREFIX
from engine.sampling import constraint_processors, make_sampler

GREEDY = SamplingParams(temperature=0)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "n", "ok"],
    "additionalProperties": False,
}
FMT = {"type": "json_schema", "schema": SCHEMA}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "opts": {"type": "object", "properties": {"x": {"type": "boolean"}}},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
]
WEATHER = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew </par York\n</parameter>\n"
    '<parameter=days>\n3\n</parameter>\n<parameter=opts>\n{"x":true}\n</parameter>\n</function>\n</tool_call>'
)
NOOP = "<tool_call>\n<function=noop>\n</function>\n</tool_call>"
MSGS = [{"role": "user", "content": "JSON please"}]
VOCAB = 512  # engine.tiny.TinyConfig().vocab_size


def _accepts(tiny_model, lark, text) -> bool:
    """Whether the grammar `lark(tag)` takes exactly `text` as the tiny tokenizer encodes it."""
    import llguidance as llg

    from engine.constrain import _tag_renderer

    ll = ll_tokenizer(tiny_model.tokenizer, VOCAB, sorted(tiny_model.eos_token_ids))
    m = llg.LLMatcher(ll, llg.LLMatcher.grammar_from_lark(lark(_tag_renderer(ll))), log_level=0)
    ids = tiny_model.tokenizer.encode(text, add_special_tokens=False)
    return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


def test_tool_grammar_takes_the_templates_calls_and_nothing_the_parser_would_refuse(tiny_model):
    def calls(choice="auto", parallel=True):
        return lambda tag: grammar(None, TOOLS, choice, parallel, tag=tag)

    assert parse_tool_calls(WEATHER, TOOLS)[0].arguments == {
        "city": "New </par York",
        "days": 3,
        "opts": {"x": True},
    }
    req = lambda tag: grammar(None, TOOLS, "required", True, tag=tag)  # noqa: E731
    assert _accepts(tiny_model, req, WEATHER[len(CALL_PREFIX) :])
    assert _accepts(tiny_model, req, (WEATHER + "\n" + NOOP)[len(CALL_PREFIX) :])
    assert not _accepts(tiny_model, calls("required", False), (WEATHER + "\n" + NOOP)[len(CALL_PREFIX) :])
    named = CALL_PREFIX + "get_weather>\n"
    assert _accepts(tiny_model, calls("get_weather"), WEATHER[len(named) :])
    # Unknown tool, missing required parameter, a string where an integer goes, spaces in JSON,
    # an unclosed call, an unknown parameter.
    for bad in (
        WEATHER.replace("get_weather", "get_weathers"),
        WEATHER.replace("<parameter=city>\nNew </par York\n</parameter>\n", ""),
        WEATHER.replace("\n3\n", "\nthree\n"),
        WEATHER.replace('{"x":true}', '{"x": true}'),
        WEATHER[: -len("</tool_call>")],
        WEATHER.replace("<parameter=days>", "<parameter=weeks>"),
    ):
        assert not _accepts(tiny_model, req, bad[len(CALL_PREFIX) :]), bad
    # A tool whose schema lists no parameters takes any (raw), unless additionalProperties is false.
    open_call = NOOP.replace("\n</function>", "\n<parameter=any thing>\nv\n</parameter>\n</function>")
    assert _accepts(tiny_model, req, open_call[len(CALL_PREFIX) :])
    shut = [
        TOOLS[0],
        {"type": "function", "function": {"name": "noop", "parameters": {"additionalProperties": False}}},
    ]
    assert not _accepts(
        tiny_model, lambda tag: grammar(None, shut, "required", True, tag=tag), open_call[len(CALL_PREFIX) :]
    )
    assert _accepts(
        tiny_model, lambda tag: grammar(None, shut, "required", True, tag=tag), NOOP[len(CALL_PREFIX) :]
    )
    # Whole calls when the choice is auto with a strict tool: text, then calls.
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}, TOOLS[1]]
    auto = lambda tag: grammar(None, strict, "auto", True, tag=tag)  # noqa: E731
    assert _accepts(tiny_model, auto, "Let me check.\n\n" + WEATHER)
    assert _accepts(tiny_model, auto, "Just text.")
    assert not _accepts(tiny_model, auto, "x " + WEATHER.replace("\n3\n", "\nthree\n"))


def test_json_grammar_is_compact_and_follows_the_schema(tiny_model):
    g = lambda tag: grammar(FMT, None, "auto", True, tag=tag)  # noqa: E731
    assert _accepts(tiny_model, g, '{"name":"ab","n":7,"ok":true}')
    assert not _accepts(tiny_model, g, '{"name": "ab","n":7,"ok":true}')
    assert not _accepts(tiny_model, g, '{"name":"ab","n":700,"ok":true}')
    assert not _accepts(tiny_model, g, '{"name":"ab","n":7}')
    after = lambda tag: grammar(FMT, None, "auto", True, after_reasoning=True, tag=tag)  # noqa: E731
    assert _accepts(tiny_model, after, '\n\n{"name":"","n":0,"ok":false}')


@pytest.mark.parametrize(
    "fmt,needle",
    [
        ({"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
        ({"type": "json_schema", "schema": {"not": {"type": "string"}}}, "not"),
        ({"type": "json_schema", "schema": {"type": "string", "format": "bogus"}}, "bogus"),
        ({"type": "json_schema"}, "schema"),
        ({"type": "yaml"}, "response_format"),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(fmt, needle):
    with pytest.raises(RequestError, match=needle):
        GenerationRequest(messages=MSGS, response_format=fmt).validate()


def test_prefill_with_a_json_format_is_refused():
    with pytest.raises(RequestError, match="prefilled"):
        GenerationRequest(messages=MSGS, response_format={"type": "json_object"}, prefix="{").validate()


def _constraint(tiny_model, req, start, reasoning=False):
    (c,) = constraint_processors(
        req,
        tiny_model.tokenizer,
        start=start,
        reasoning=reasoning,
        vocab_size=VOCAB,
        eos_ids=sorted(tiny_model.eos_token_ids),
    )
    return c


def _allowed(c, history, width):
    out = c(mx.array(history, dtype=mx.uint32), mx.zeros((1, width)))
    return {i for i, v in enumerate(out[0].tolist()) if v == 0}


def test_processor_rolls_back_changed_tokens_and_refuses_forbidden_ones(tiny_model):
    width = VOCAB
    tok = tiny_model.tokenizer
    req = GenerationRequest(messages=MSGS, response_format=FMT)
    prompt = [1, 2, 3]
    good = tok.encode('{"name":"ab","n":1', add_special_tokens=False)
    other = tok.encode('{"name":"x"', add_special_tokens=False)
    c = _constraint(tiny_model, req, len(prompt))
    c(mx.array(prompt + good, dtype=mx.uint32), mx.zeros((1, width)))
    # Back to a shorter, then a different history: the mask is a fresh processor's.
    for hist in (prompt + good[:2], prompt + other, prompt + good):
        fresh = _constraint(tiny_model, req, len(prompt))
        assert _allowed(c, hist, width) == _allowed(fresh, hist, width)
    # A forbidden token (a rejected MTP draft) leaves only the end allowed, and rolls back cleanly.
    bad = prompt + good + tok.encode(" ", add_special_tokens=False)
    assert _allowed(c, bad, width) <= set(tiny_model.eos_token_ids) and c.dead
    assert _allowed(c, prompt + good, width) == _allowed(
        _constraint(tiny_model, req, 3), prompt + good, width
    )
    assert not c.dead


def test_reasoning_is_free_until_think_closes_and_cannot_end(tiny_model):
    width = VOCAB
    tok = tiny_model.tokenizer
    c = _constraint(tiny_model, GenerationRequest(messages=MSGS, response_format=FMT), 1, reasoning=True)
    inside = _allowed(c, [1, *tok.encode("Hmm, JSON", add_special_tokens=False)], width)
    assert inside == set(range(width)) - set(tiny_model.eos_token_ids)
    after = _allowed(c, [1, *tok.encode("Hmm</think>\n\n", add_special_tokens=False)], width)
    assert after == {tok.encode("{", add_special_tokens=False)[0]} or len(after) < 5


def _plain(model, prompt, procs, sampler, n=60, eos=()):
    steps = generate_step(model, prompt, model.make_cache(), sampler=sampler, logits_processors=procs)
    out = []
    for t in steps:
        out.append(t)
        if len(out) >= n or t in eos:
            break
    steps.close()
    return out


def _ends(tiny_model, out):
    eos = set(tiny_model.eos_token_ids)
    return out[: next((i for i, t in enumerate(out) if t in eos), len(out))]


def test_greedy_and_sampled_decoding_give_schema_valid_json(tiny_model):
    tok = tiny_model.tokenizer
    model = tiny_model.model
    prompt = tok.encode("<|im_start|>user\nJSON<|im_end|>\n<|im_start|>assistant\n")
    req = GenerationRequest(messages=MSGS, response_format=FMT)
    for seed in range(6):
        mx.random.seed(seed)
        params = GREEDY if seed == 0 else SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
        procs = [_constraint(tiny_model, req, len(prompt))]
        out = _plain(model, prompt, procs, make_sampler(params), 80, tiny_model.eos_token_ids)
        assert out[-1] in tiny_model.eos_token_ids, tok.decode(out)
        jsonschema.validate(json.loads(tok.decode(_ends(tiny_model, out))), SCHEMA)


def test_mtp_verification_rejects_drafts_the_mask_forbids(tiny_model):
    """A drafter proposing the unconstrained model's choices (mostly forbidden) or noise: the
    output is exactly plain constrained decoding's, greedy."""
    tok = tiny_model.tokenizer
    model = tiny_model.model
    prompt = tok.encode("<|im_start|>user\nJSON<|im_end|>\n<|im_start|>assistant\n")
    req = GenerationRequest(messages=MSGS, response_format=FMT)
    argmax = lambda lp: mx.argmax(lp, axis=-1)  # noqa: E731
    ref = _plain(
        model, prompt, [_constraint(tiny_model, req, len(prompt))], argmax, 60, tiny_model.eos_token_ids
    )
    free = _plain(model, prompt, [], argmax, n=len(ref) + 8)
    assert ref != free[: len(ref)]  # the mask changes the output
    rng = random.Random(0)

    def drafter(tokens, k):  # right, the free model's token, or noise
        n = len(tokens) - len(prompt)
        pick = [ref, free, [rng.randrange(200)] * 99]
        return [rng.choice(pick)[min(n + i, len(ref) - 1)] for i in range(k)]

    for k in (1, 3):
        steps = speculative_step(
            model,
            prompt,
            model.make_cache(),
            params=GREEDY,
            draft_tokens=k,
            drafter=drafter,
            logits_processors=[_constraint(tiny_model, req, len(prompt))],
        )
        out = [next(steps) for _ in range(len(ref))]
        steps.close()
        assert out == ref, (k, tok.decode(out))


@pytest.mark.slow
def test_engine_json_with_thinking_mtp_and_forced_calls(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("mlx", 4)), prompt_cache=PromptCache(memory_bytes=0))
    try:
        runs = {}
        for k in (0, 2):
            r = eng.generate(
                GenerationRequest(
                    messages=MSGS, response_format=FMT, sampling=GREEDY, mtp=k, enable_thinking=False
                )
            )
            jsonschema.validate(json.loads(r.text), SCHEMA)
            runs[k] = r.token_ids
        assert runs[0] == runs[2]
        r = eng.generate(
            GenerationRequest(
                messages=MSGS,
                response_format=FMT,
                max_tokens=200,
                thinking_budget=8,
                sampling=SamplingParams(seed=3),
            )
        )
        assert r.reasoning and r.finish_reason == "stop"
        jsonschema.validate(json.loads(r.text), SCHEMA)
        bounded = json.loads(
            json.dumps(TOOLS).replace('"type": "string"', '"type": "string", "maxLength": 6')
        )
        for seed in range(3):
            r = eng.generate(
                GenerationRequest(
                    messages=MSGS,
                    tools=bounded,
                    tool_choice="get_weather",
                    parallel_tool_calls=False,
                    max_tokens=200,
                    sampling=SamplingParams(seed=seed),
                )
            )
            assert [c.name for c in r.tool_calls] == ["get_weather"] and not r.tool_call_errors, r
            assert isinstance(r.tool_calls[0].arguments["city"], str)
    finally:
        eng.close()
