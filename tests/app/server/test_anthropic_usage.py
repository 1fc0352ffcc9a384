"""Anthropic usage as Anthropic reports it, through the official SDK: input_tokens +
cache_creation_input_tokens + cache_read_input_tokens is the prompt; creation counts the tokens
up to the client's last cache_control breakpoint that the cache did not hold; the tokens after
it are input_tokens; without breakpoints nothing is created."""

from __future__ import annotations

import uuid

import anthropic

from engine import render_prompt


def client(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


def _split(u) -> tuple[int, int, int]:
    return u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens


def test_without_breakpoints_nothing_is_created_and_input_tokens_is_the_rest(serve, engine):
    c = client(serve(engine))
    tag = uuid.uuid4().hex  # a prompt no other test cached
    msgs = [{"role": "user", "content": f"[{tag}] What is a cat on a mat, in many words? " * 3}]
    n = c.messages.count_tokens(model="m", messages=msgs).input_tokens
    first = c.messages.create(model="m", max_tokens=1, messages=msgs)
    assert _split(first.usage) == (n, 0, 0)
    # Locus snapshots the prompt anyway (its own business): the same prompt again is read.
    again = c.messages.create(model="m", max_tokens=1, messages=msgs)
    inp, created, read = _split(again.usage)
    assert created == 0 and read > 0 and inp > 0 and inp + read == n


def test_a_breakpoint_splits_the_prompt_where_the_client_put_it(serve, engine):
    c = client(serve(engine))
    tag = uuid.uuid4().hex
    system_text = f"[{tag}] You answer in one word. " * 4
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    msgs = [{"role": "user", "content": "Name a colour."}]
    n = c.messages.count_tokens(model="m", system=system, messages=msgs).input_tokens
    tok = engine.model.tokenizer
    text = render_prompt(
        tok,
        [{"role": "system", "content": system_text}, *msgs],
        enable_thinking=False,
        preserve_thinking=True,
        add_generation_prompt=False,
    )
    upto = len(tok.encode(text[: text.index("<|im_start|>user")], add_special_tokens=False))
    starts, deltas = [], []
    with c.messages.stream(model="m", max_tokens=1, system=system, messages=msgs) as s:
        for ev in s:
            if ev.type == "message_start":
                starts.append(_split(ev.message.usage))
            elif ev.type == "message_delta":
                deltas.append(_split(ev.usage))
    assert starts == deltas == [(n - upto, upto, 0)]
    # Another question under the same system prompt reads the marked prefix, creates nothing.
    other = [{"role": "user", "content": "Name a fruit."}]
    m = c.messages.count_tokens(model="m", system=system, messages=other).input_tokens
    two = c.messages.create(model="m", max_tokens=1, system=system, messages=other)
    assert _split(two.usage) == (m - upto, 0, upto)
