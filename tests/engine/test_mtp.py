"""The MTP head (against a numpy reference) and speculative decoding (exactness, rollback, stats).

The tiny checkpoints' head is fitted to their model (engine/tiny.py), so it drafts tokens the model
accepts and tokens it rejects: the tests below run both paths with the real head."""

from __future__ import annotations

import json
import random

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from engine import Engine, GenerationRequest, PromptCache, SamplingParams, load_model
from engine.generate import generate_step
from engine.mtp import DraftStats, speculative_accept, speculative_step
from engine.tiny import TinyConfig, checkpoint_weights, make_config, make_weights

GREEDY = SamplingParams(temperature=0)
PROMPT = [5, 17, 99, 3, 200, 45, 7, 8, 9, 10, 11, 300]


# -- the head against a reference written from vLLM's / SGLang's semantics ------------------------


def _rms(x, w, eps=1e-6):
    # Qwen3.5's RMSNorm stores its weight around 0 (applied as 1 + w).
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def _rope(x, pos, rot, theta):
    inv = 1.0 / theta ** (np.arange(0, rot, 2) / rot)
    f = pos[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([f, f], -1)), np.sin(np.concatenate([f, f], -1))
    r, rest = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = np.concatenate([-r[..., half:], r[..., :half]], -1)
    return np.concatenate([r * cos[:, None] + rotated * sin[:, None], rest], -1)


def _silu(x):
    return x / (1 + np.exp(-x))


def reference_mtp_logits(w, cfg, tc, hidden, next_ids, positions):
    """Logits of the MTP head for pairs (hidden_i, next_ids_i) at `positions` (numpy, float64).

    x = fc([pre_fc_norm_embedding(embed(t_{i+1})); pre_fc_norm_hidden(h_i)]), one full-attention
    MoE decoder layer (causal over these pairs), norm, the shared lm_head.
    """
    w = {k: v.astype(np.float64) for k, v in w.items()}
    L = hidden.shape[0]
    emb = w["model.language_model.embed_tokens.weight"][next_ids]
    x = (
        np.concatenate(
            [
                _rms(emb, w["mtp.pre_fc_norm_embedding.weight"]),
                _rms(hidden, w["mtp.pre_fc_norm_hidden.weight"]),
            ],
            -1,
        )
        @ w["mtp.fc.weight"].T
    )
    p = "mtp.layers.0."
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    h = _rms(x, w[p + "input_layernorm.weight"])
    qg = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(L, nh, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(L, nh * hd)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(L, nkv, hd)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(L, nkv, hd)
    q, k = _rms(q, w[p + "self_attn.q_norm.weight"]), _rms(k, w[p + "self_attn.k_norm.weight"])
    rope = tc["rope_parameters"]
    rot = int(hd * rope["partial_rotary_factor"])
    pos = np.asarray(positions, dtype=np.float64)
    q, k = _rope(q, pos, rot, rope["rope_theta"]), _rope(k, pos, rot, rope["rope_theta"])
    rep = nh // nkv
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((L, L), bool))[None], scores, -np.inf)
    att = np.exp(scores - scores.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("hqk,khd->qhd", att, v).reshape(L, nh * hd)
    x = x + (o * (1 / (1 + np.exp(-gate)))) @ w[p + "self_attn.o_proj.weight"].T
    h = _rms(x, w[p + "post_attention_layernorm.weight"])
    m = p + "mlp."
    router = h @ w[m + "gate.weight"].T
    probs = np.exp(router - router.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for i in range(L):
        top = np.argsort(-probs[i])[: cfg.num_experts_per_tok]
        gw = probs[i, top] / probs[i, top].sum()
        for e, g in zip(top, gw, strict=True):
            a = _silu(h[i] @ w[f"{m}experts.{e}.gate_proj.weight"].T)
            b = h[i] @ w[f"{m}experts.{e}.up_proj.weight"].T
            out[i] += g * ((a * b) @ w[f"{m}experts.{e}.down_proj.weight"].T)
    sh = (
        _silu(h @ w[m + "shared_expert.gate_proj.weight"].T) * (h @ w[m + "shared_expert.up_proj.weight"].T)
    ) @ w[m + "shared_expert.down_proj.weight"].T
    sg = 1 / (1 + np.exp(-(h @ w[m + "shared_expert_gate.weight"].T)))
    x = x + out + sg * sh
    return _rms(x, w["mtp.norm.weight"]) @ w["lm_head.weight"].T


@pytest.mark.parametrize("layout", ["per_expert", "fused", "mlx"])
def test_head_logits_match_the_reference(tiny_dir, layout):
    from mlx_lm.models.cache import KVCache

    cfg = TinyConfig()
    weights = checkpoint_weights(cfg)
    tc = make_config(cfg)["text_config"]
    model = load_model(tiny_dir(layout)).model
    head = model.mtp_head
    assert head is not None
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((5, cfg.hidden_size)).astype(np.float32)
    ids = [3, 77, 140, 9, 400]
    positions = [7, 8, 9, 10, 11]
    out = head(
        model.language_model.model.embed_tokens(mx.array([ids])),
        mx.array(hidden[None]),
        KVCache(),
        model.text_positions(7, 5),
    )
    got = np.array(model.logits(out)[0])
    want = reference_mtp_logits(weights, cfg, tc, hidden.astype(np.float64), ids, positions)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


def test_concat_order_matters(tiny_dir):
    """The embedding comes first in fc's input (vLLM/SGLang); the swapped order is far off."""
    cfg = TinyConfig()
    weights = make_weights(cfg)
    tc = make_config(cfg)["text_config"]
    swapped = dict(weights)
    fc = weights["mtp.fc.weight"]
    H = cfg.hidden_size
    swapped["mtp.fc.weight"] = np.concatenate([fc[:, H:], fc[:, :H]], 1)
    swapped["mtp.pre_fc_norm_embedding.weight"] = weights["mtp.pre_fc_norm_hidden.weight"]
    swapped["mtp.pre_fc_norm_hidden.weight"] = weights["mtp.pre_fc_norm_embedding.weight"]
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((2, H))
    a = reference_mtp_logits(weights, cfg, tc, hidden, [3, 4], [0, 1])
    b = reference_mtp_logits(swapped, cfg, tc, hidden, [3, 4], [0, 1])
    assert np.abs(a - b).max() > 1e-2


def test_head_loads_quantized_and_convert_keeps_it(tiny_dir):
    from engine.loader import inspect_checkpoint

    info = inspect_checkpoint(tiny_dir("mlx", 4))
    names = [k for k in info.tensors if k.startswith("mtp.")]
    assert "mtp.layers.0.mlp.switch_mlp.up_proj.weight" in names
    assert "mtp.fc.scales" in names
    assert info.config["quantization"]["mtp.layers.0.mlp.gate"]["bits"] == 8
    head = load_model(tiny_dir("mlx", 4)).model.mtp_head
    assert head.fc.bits == 4 and head.layers[0].mlp.gate.bits == 8


@pytest.mark.slow
def test_checkpoint_without_a_head_decodes_without_drafting(tiny_dir, tmp_path, caplog):
    import shutil

    src = tiny_dir("per_expert")
    dst = tmp_path / "nomtp"
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        arrays = mx.load(str(dst / shard))
        keep = {k: v for k, v in arrays.items() if not k.startswith("mtp.") or k == "mtp.fc.weight"}
        mx.save_safetensors(str(dst / shard), keep, metadata={"format": "pt"})
    index["weight_map"] = {
        k: v for k, v in index["weight_map"].items() if not k.startswith("mtp.") or k == "mtp.fc.weight"
    }
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with caplog.at_level("WARNING"):
        eng = Engine.from_path(str(dst), mtp=3)
    try:
        assert eng.model.model.mtp_head is None
        assert "MTP head not usable" in caplog.text
        r = eng.generate(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=6))
        assert r.finish_reason == "length" and r.usage.draft_tokens == 0
    finally:
        eng.close()


# -- speculative decoding: exact greedy output ----------------------------------------------------


def plain(model, prompt, n):
    cache = model.make_cache()
    steps = generate_step(model, prompt, cache, sampler=lambda lp: mx.argmax(lp, axis=-1))
    out = [next(steps) for _ in range(n)]
    steps.close()
    return out


def noisy_oracle(truth, right=0.7, seed=0):
    """Drafts the true continuation, each token wrong with probability 1 - right."""
    rng = random.Random(seed)

    def draft(tokens, k):
        n = len(tokens)
        return [truth[n + i] if n + i < len(truth) and rng.random() < right else 1 for i in range(k)]

    return draft


@pytest.mark.parametrize("k", [1, 2, 4])
def test_rollback_keeps_greedy_output_and_cache_exact(tiny_model, k):
    """Accepted and rejected drafts (a noisy oracle) give plain decoding's tokens, and a stop in
    the middle of an accepted block leaves the cache holding exactly what was handed out."""
    model = tiny_model.model
    ref = plain(model, PROMPT, 40)
    truth = PROMPT + ref
    stats = DraftStats()
    cache = model.make_cache()
    steps = speculative_step(
        model, PROMPT, cache, params=GREEDY, draft_tokens=k, stats=stats, drafter=noisy_oracle(truth, seed=k)
    )
    out = [next(steps) for _ in range(27)]
    steps.close()
    assert out == ref[:27]
    assert 0 < stats.accepted < stats.drafted
    n = len(PROMPT) + 27
    assert cache[3].offset == n
    # Continue plainly from that cache: same tokens as never having drafted.
    more = generate_step(model, truth[: n + 1], cache, sampler=lambda lp: mx.argmax(lp, axis=-1), start=n)
    assert [next(more) for _ in range(6)] == ref[28:34]
    more.close()


def _rounds(monkeypatch):
    """Each verification of speculative decoding as (position, block [y, d_1..d_K], accepted)."""
    from engine import mtp

    seen = []
    verify = mtp._Speculator.verify

    def recording(self, block_arr, q_rows):
        rnd = verify(self, block_arr, q_rows)
        seen.append((rnd.pos, list(rnd.block), rnd.accepted))
        return rnd

    monkeypatch.setattr(mtp._Speculator, "verify", recording)
    return seen


def head_from_scratch(model, ids, n):
    """A fresh head cache over the pairs (h_i, ids[i+1]), i < n, at positions 0..n-1, where h is
    the main model's hidden state over ids[:n] in one forward; (cache, head outputs)."""
    from mlx_lm.models.cache import KVCache

    h = model(mx.array([ids[:n]], dtype=mx.uint32), hidden=True)
    cache = KVCache()
    nxt = model.language_model.model.embed_tokens(mx.array([ids[1 : n + 1]], dtype=mx.uint32))
    return cache, model.mtp_head(nxt, h, cache, model.text_positions(0, n))


def test_the_fitted_head_drafts_tokens_the_model_accepts_and_rejects(tiny_model):
    model = tiny_model.model
    stats = DraftStats()
    for i in range(3):
        prompt = [(t + 29 * i) % 480 for t in PROMPT]
        steps = speculative_step(
            model, prompt, model.make_cache(), params=GREEDY, draft_tokens=1, stats=stats
        )
        out = [next(steps) for _ in range(24)]
        steps.close()
        assert out == plain(model, prompt, 24)
    # A random head accepts none; the fitted one about a fifth (the tiny model is chaotic).
    assert 0.08 < stats.accepted / stats.drafted < 0.9, stats


@pytest.mark.parametrize("k", [2, 4])
def test_head_cache_after_a_stop_holds_exactly_the_reply(tiny_model, monkeypatch, k):
    """Stopped inside a round with accepted drafts, at its end, and after rejections: the head's KV
    cache holds one pair per position of prompt + reply, at the right positions (its keys equal a
    from-scratch run's), and the main model's caches equal one forward over prompt + reply."""
    model = tiny_model.model
    P = len(PROMPT)
    ref = plain(model, PROMPT, 32)
    rounds = _rounds(monkeypatch)
    steps = speculative_step(model, PROMPT, model.make_cache(), params=GREEDY, draft_tokens=k)
    [next(steps) for _ in range(24)]
    steps.close()
    pos, _, a = next(r for r in rounds if r[2] > 0)
    stops = sorted({pos - P + 1, pos - P + a + 1, 2, 9})  # inside, at the end of a round with drafts
    for n in stops:
        cache = model.make_cache()
        steps = speculative_step(model, PROMPT, cache, params=GREEDY, draft_tokens=k)
        assert [next(steps) for _ in range(n)] == ref[:n]
        steps.close()
        head = cache[-1]
        assert head.offset == P + n == cache[3].offset, n
        # Its last pair holds the next token (already decided, not yet handed out).
        want, _ = head_from_scratch(model, PROMPT + ref, P + n)
        for got, exp in zip(head.state[:2], want.state[:2], strict=True):
            np.testing.assert_allclose(
                np.array(got[..., : P + n, :]), np.array(exp[..., : P + n, :]), atol=1e-4
            )
        fresh = model.make_cache()
        model(mx.array([PROMPT + ref[:n]], dtype=mx.uint32), cache=fresh, hidden=True)
        for c, f in zip(cache[:-1], fresh[:-1], strict=True):
            got = (
                [c.keys[..., : c.offset, :], c.values[..., : c.offset, :]] if hasattr(c, "keys") else c.cache
            )
            exp = (
                [f.keys[..., : f.offset, :], f.values[..., : f.offset, :]] if hasattr(f, "keys") else f.cache
            )
            for g, e in zip(got, exp, strict=True):
                np.testing.assert_allclose(np.array(g), np.array(e), atol=1e-4)


def _draft_outputs(monkeypatch):
    """The head's outputs each round drafts from: the one left by the last round, then one per
    draft fed back (appended per round)."""
    from engine import mtp

    chains = []
    draft, run_head = mtp._Speculator.draft, mtp._Speculator.run_head

    def drafting(self):
        self.chain = [self.g]
        try:
            return draft(self)
        finally:
            chains.append(self.chain)
            self.chain = None

    def running(self, h, ids, pos):
        out = run_head(self, h, ids, pos)
        if getattr(self, "chain", None) is not None:
            self.chain.append(out)
        return out

    monkeypatch.setattr(mtp._Speculator, "draft", drafting)
    monkeypatch.setattr(mtp._Speculator, "run_head", running)
    return chains


def test_each_round_drafts_what_the_head_gives_from_scratch(tiny_model, monkeypatch):
    """Every round's drafts, and the head outputs they come from, equal the head's chain run afresh
    over prompt + reply so far: no draft pair is left in its cache, each pair sits at its position."""
    model = tiny_model.model
    embed = model.language_model.model.embed_tokens
    k = 3
    rounds, chains = _rounds(monkeypatch), _draft_outputs(monkeypatch)
    steps = speculative_step(model, PROMPT, model.make_cache(), params=GREEDY, draft_tokens=k)
    seq = PROMPT + [next(steps) for _ in range(20)]
    steps.close()
    assert sum(a for *_, a in rounds) > 0 and len(chains) == len(rounds)
    for (pos, block, _), chain in zip(rounds, chains, strict=True):
        assert block[0] == seq[pos]
        cache, g = head_from_scratch(model, seq, pos)
        g = g[:, -1:]
        for r in range(k):
            np.testing.assert_allclose(np.array(chain[r][:, -1:]), np.array(g), atol=1e-4, err_msg=f"{pos}")
            assert block[1 + r] == int(mx.argmax(model.logits(g[:, -1]), axis=-1).item()), pos
            if r < k - 1:
                ids = mx.array([[block[1 + r]]], dtype=mx.uint32)
                g = model.mtp_head(embed(ids), g, cache, model.text_positions(pos + r, 1))


@pytest.mark.slow
@pytest.mark.parametrize("layout,bits", [("per_expert", None), ("fused", None), ("mlx", 4)])
def test_engine_greedy_is_identical_with_mtp_in_every_layout(tiny_dir, layout, bits):
    eng = Engine.from_path(str(tiny_dir(layout, bits)), prompt_cache=PromptCache(memory_bytes=0))
    try:
        runs = {}
        for k in (0, 1, 2, 3, 4):
            r = eng.generate(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=24, mtp=k))
            runs[k] = r.token_ids
            assert len(r.token_ids) == 24 and r.finish_reason == "length"
            assert r.usage.draft_tokens % max(k, 1) == 0
            assert (r.usage.draft_tokens > 0) == (k > 0)
            if k:  # the fitted head's drafts: some accepted, some rejected, in every layout
                assert 0 < r.usage.draft_accepted < r.usage.draft_tokens, (k, r.usage)
        assert all(v == runs[0] for v in runs.values())
    finally:
        eng.close()


@pytest.mark.slow
def test_image_prompt_is_identical_with_mtp(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")), prompt_cache=PromptCache(memory_bytes=0))
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": img}, {"type": "text", "text": "what is this"}],
        }
    ]
    try:
        outs = [
            eng.generate(
                GenerationRequest(messages=msgs, sampling=GREEDY, max_tokens=12, enable_thinking=False, mtp=k)
            ).token_ids
            for k in (0, 3)
        ]
        assert outs[0] == outs[1] and len(outs[0]) > 0
        # The rollback path after an image (M-RoPE positions shifted by the prompt's delta).
        lm = eng.model
        inputs = eng.prepare(GenerationRequest(messages=msgs, enable_thinking=False)).inputs
        bound = lm.model.with_images(inputs)
        ref = plain(bound, inputs.ids, 20)
        steps = speculative_step(
            bound,
            inputs.ids,
            bound.make_cache(),
            params=GREEDY,
            draft_tokens=3,
            drafter=noisy_oracle(inputs.ids + ref),
        )
        assert [next(steps) for _ in range(20)] == ref
        steps.close()
    finally:
        eng.close()


@pytest.mark.slow
def test_prompt_cache_resume_is_identical_with_mtp(tiny_dir):
    path = str(tiny_dir("per_expert"))
    cold = Engine.from_path(path, prompt_cache=PromptCache(memory_bytes=0))
    warm = Engine.from_path(path, prompt_cache=PromptCache(), mtp=2)
    turn1 = [{"role": "user", "content": "hello there"}]
    try:
        a1 = cold.generate(GenerationRequest(messages=turn1, sampling=GREEDY, max_tokens=10))
        b1 = warm.generate(GenerationRequest(messages=turn1, sampling=GREEDY, max_tokens=10))
        assert a1.token_ids == b1.token_ids and b1.usage.draft_tokens > 0
        reply = cold.model.tokenizer.decode(a1.token_ids[:-1] if a1.finish_reason == "stop" else a1.token_ids)
        turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "and again"}]
        a2 = cold.generate(GenerationRequest(messages=turn2, sampling=GREEDY, max_tokens=10))
        b2 = warm.generate(GenerationRequest(messages=turn2, sampling=GREEDY, max_tokens=10))
        assert b2.usage.cached_tokens > 0  # resumed from a snapshot taken while drafting
        assert a2.token_ids == b2.token_ids
    finally:
        cold.close()
        warm.close()


@pytest.mark.slow
def test_cancel_stop_and_max_tokens_behave_as_without_mtp(tiny_dir):
    eng = Engine.from_path(str(tiny_dir("per_expert")), prompt_cache=PromptCache(memory_bytes=0))
    try:
        h = eng.submit(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=10000, mtp=3))
        n = 0
        for ev in h.events():
            if getattr(ev, "type", "") == "text":
                n += 1
                if n == 3:
                    h.cancel()
        assert h.done.finish_reason == "cancelled"
        assert len(h.done.token_ids) < 50
        base = eng.generate(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=30))
        stop = base.text[8:11]
        for k in (0, 2):
            r = eng.generate(GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=7, mtp=k))
            assert r.token_ids == base.token_ids[:7] and r.finish_reason == "length"
        with_stop = [
            eng.generate(
                GenerationRequest(prompt_ids=PROMPT, sampling=GREEDY, max_tokens=30, stop=[stop], mtp=k)
            )
            for k in (0, 4)
        ]
        assert with_stop[0].text == with_stop[1].text == base.text[: base.text.find(stop)]
        assert with_stop[0].token_ids == with_stop[1].token_ids
    finally:
        eng.close()


def test_request_mtp_is_validated(engine):
    r = engine.generate(GenerationRequest(prompt_ids=PROMPT, mtp=99))
    assert r.finish_reason == "error" and "mtp" in r.error


# -- sampling: the output distribution is the model's ---------------------------------------------


def _chi2_ok(counts, probs, n):
    expected = np.asarray(probs) * n
    mask = expected > 0
    assert counts[~mask].sum() == 0, "a token the target never produces was emitted"
    stat = (((counts - expected) ** 2)[mask] / expected[mask]).sum()
    df = mask.sum() - 1
    # 99.9% quantile of chi-square, Wilson-Hilferty approximation.
    z = 3.09
    limit = df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3
    return stat < limit


@pytest.mark.parametrize("deterministic", [False, True])
def test_speculative_sampling_keeps_the_target_distribution(deterministic):
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    p = np.array([[0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.3, 0.4]])
    q = np.array([[0.1, 0.5, 0.1, 0.1, 0.2]])
    n = 3000
    counts = np.zeros(5)
    pm, qm = mx.array(p, dtype=mx.float32), mx.array(q, dtype=mx.float32)
    for _ in range(n):
        if deterministic:  # a drafter without a distribution (one-hot q), e.g. a fixed guess
            d = 1
            a, nxt = speculative_accept(pm, None, [d])
        else:
            d = int(rng.choice(5, p=q[0]))
            a, nxt = speculative_accept(pm, qm, [d])
        first = d if a == 1 else nxt
        counts[first] += 1
    assert _chi2_ok(counts, p[0], n)


def test_sampled_generation_runs_and_counts_drafts(tiny_model):
    model = tiny_model.model
    stats = DraftStats()
    mx.random.seed(3)
    steps = speculative_step(
        model,
        PROMPT,
        model.make_cache(),
        stats=stats,
        draft_tokens=2,
        params=SamplingParams(temperature=0.8, top_k=20, top_p=0.95),
    )
    out = [next(steps) for _ in range(40)]
    steps.close()
    assert len(out) == 40 and all(0 <= t < 512 for t in out)
    assert stats.drafted == 2 * stats.rounds and stats.rounds >= 1
    assert 0 < stats.accepted < stats.drafted  # min(1, p/q) accepts the fitted head's drafts at times


def test_penalties_see_the_same_history_with_drafts(tiny_model):
    """Presence/repetition penalties apply per verified position as plain decoding applies them."""
    from engine.sampling import make_logits_processors

    model = tiny_model.model
    params = SamplingParams(temperature=0, presence_penalty=1.5, repetition_penalty=1.3)
    procs = make_logits_processors(params)
    steps = generate_step(
        model, PROMPT, model.make_cache(), logits_processors=procs, sampler=lambda lp: mx.argmax(lp, axis=-1)
    )
    ref = [next(steps) for _ in range(30)]
    steps.close()
    assert ref != plain(model, PROMPT, 30)  # the penalties change the output
    spec = speculative_step(
        model,
        PROMPT,
        model.make_cache(),
        params=params,
        draft_tokens=3,
        logits_processors=procs,
        drafter=noisy_oracle(PROMPT + ref),
    )
    assert [next(spec) for _ in range(30)] == ref
    spec.close()


@pytest.mark.slow
def test_locus_generate_demo_with_mtp_accepts_drafts():
    """`locus generate --demo --mtp 3 --json`: the demo checkpoint's head drafts tokens the model
    accepts (with the demo's default sampling), and the done event says how many."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "app.cli", "generate", "--demo", "--mtp", "3", "--json"]
    # No --seed: a seeded, sampled request does not draft (its text depends on its seed alone).
    cmd += ["--prompt", "Tell me about the weather in Paris.", "--max-tokens", "48"]
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["type"] == "done" and done["usage"]["draft_tokens"] > 0
    assert 0 < done["usage"]["draft_accepted"] < done["usage"]["draft_tokens"], done["usage"]
