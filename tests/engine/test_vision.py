"""Images through the engine: vision tower, M-RoPE positions, prefill and decode after images.

The reference is transformers' Qwen3_5MoeForConditionalGeneration (torch CPU, float32) built from the
same tiny random checkpoint; the engine must match its logits with one and with two images (also in
an earlier turn of a conversation), through decode steps, in the HF and mlx-vlm-converted layouts.
"""

from __future__ import annotations

import io

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from engine import Engine, GenerationRequest, PromptCache, SamplingParams, load_model
from engine.generate import generate_step
from engine.image import ImageError, PromptInputs
from engine.model import bind_images
from engine.mrope import rope_index

FP32_TOL = 1e-4
GREEDY = SamplingParams(temperature=0)


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def user(*parts: object) -> dict:
    content = [
        {"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "image": p} for p in parts
    ]
    return {"role": "user", "content": content}


ONE_IMAGE = [user(noise_image(100, 70, 1), "where is the cat?")]
TWO_IMAGES = [user(noise_image(100, 70, 1), "the cat and", noise_image(60, 130, 2), "the dog")]
# An image in an earlier turn, another in the latest one.
CONVERSATION = [
    user(noise_image(90, 90, 3), "what is this?"),
    {"role": "assistant", "content": "A cat on a mat."},
    user("and this one?", noise_image(140, 50, 4)),
]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    eng = Engine(tiny_model, prompt_cache=PromptCache())
    yield eng
    eng.close()


def mlx_logits(model, inputs: PromptInputs, cache=None, ids=None) -> np.ndarray:
    bound = bind_images(model, inputs)
    ids = inputs.ids if ids is None else ids
    out = bound(mx.array([ids], dtype=mx.uint32), cache=cache)
    return np.array(out[0].astype(mx.float32))


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


# -- positions --------------------------------------------------------------------------------


def test_rope_index_matches_transformers(tiny_engine, tiny_model):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    inputs = tiny_engine.prepare(GenerationRequest(messages=TWO_IMAGES)).inputs
    pos, delta = rope_index(len(inputs.ids), inputs.images, 2)
    cfg = transformers.AutoConfig.from_pretrained(str(tiny_model.path))
    hf = transformers.Qwen3_5MoeModel(cfg)
    ids = torch.tensor([inputs.ids])
    ref, ref_delta = hf.get_rope_index(
        ids,
        mm_token_type_ids=(ids == cfg.image_token_id).int(),
        image_grid_thw=torch.tensor([s.grid for s in inputs.images]),
    )
    assert np.array_equal(pos, ref[:, 0].numpy())
    assert delta == int(ref_delta.reshape(-1)[0])
    # text after an image continues at max(rows, cols) past the image's start, not at its length
    first = inputs.images[0]
    assert pos[0, first.end] == first.start + max(first.grid[1:]) // 2
    assert delta < 0


# -- engine behaviour (no reference model) -----------------------------------------------------


def test_image_prompt_generates_and_reuses_features(tiny_engine, tiny_model, tmp_path):
    state = tiny_model.model._vision
    state.items.clear()
    before = state.computed
    img = png_bytes(noise_image(100, 70, 11))
    msgs = [user(img, "where is the cat?")]
    req = GenerationRequest(messages=msgs, sampling=GREEDY, max_tokens=6, session="v1")
    first = tiny_engine.generate(req)
    assert first.error is None and len(first.token_ids) == 6
    assert state.computed == before + 1
    # The same image as a path, in a new conversation that shares no cached prefix with the first:
    # its features come from the content-hash cache, not from the vision tower.
    (tmp_path / "cat.png").write_bytes(img)
    path_req = GenerationRequest(
        messages=[{"role": "system", "content": "Be brief."}, user(tmp_path / "cat.png", "hi")],
        sampling=GREEDY,
        max_tokens=6,
        use_cache=False,
    )
    tiny_engine.generate(path_req)
    assert state.computed == before + 1
    again = tiny_engine.generate(req)
    assert again.token_ids == first.token_ids
    assert again.usage.cached_tokens > tiny_engine.prepare(req).inputs.images[0].end


def test_same_size_images_never_share_a_snapshot(tiny_engine, tiny_model):
    a, b = noise_image(100, 70, 21), noise_image(100, 70, 22)
    req_a = GenerationRequest(messages=[user(a, "hi")], sampling=GREEDY, max_tokens=5)
    req_b = GenerationRequest(messages=[user(b, "hi")], sampling=GREEDY, max_tokens=5)
    ia, ib = tiny_engine.prepare(req_a).inputs, tiny_engine.prepare(req_b).inputs
    assert ia.ids == ib.ids and ia.image_keys != ib.image_keys
    tiny_engine.generate(req_a)
    got_b = tiny_engine.generate(req_b)
    # Only the text before the image may come from a's snapshot.
    assert got_b.usage.cached_tokens <= ib.images[0].start
    fresh = Engine(tiny_model, prompt_cache=PromptCache())
    try:
        want_b = fresh.generate(req_b)
    finally:
        fresh.close()
    assert got_b.token_ids == want_b.token_ids


def test_chunked_prefill_through_images_equals_one_pass(tiny_engine, tiny_model):
    inputs = tiny_engine.prepare(GenerationRequest(messages=TWO_IMAGES)).inputs
    model = tiny_model.model
    whole = mlx_logits(model, inputs, cache=model.make_cache())[-1]
    bound = bind_images(model, inputs)
    cache = model.make_cache()
    ids = mx.array(inputs.ids, dtype=mx.uint32)
    for i in range(0, len(inputs.ids), 5):  # chunks that split both images
        out = bound(ids[i : i + 5][None], cache=cache)
    assert max_diff(whole, np.array(out[0, -1])) < 1e-5
    # without the images' positions and features the logits are far off: the test can fail
    plain = np.array(model(ids[None], cache=model.make_cache())[0, -1])
    assert max_diff(whole, plain) > 1e-2


def test_text_only_checkpoint_refuses_images(tiny_dir, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    src = tiny_dir("per_expert")
    dst = tmp_path / "textonly"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        w = {k: v for k, v in load_file(f).items() if "visual" not in k}
        save_file(w, f, metadata={"format": "pt"})
    import json

    idx = json.loads((dst / "model.safetensors.index.json").read_text())
    idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if "visual" not in k}
    (dst / "model.safetensors.index.json").write_text(json.dumps(idx))
    eng = Engine(load_model(dst))
    try:
        res = eng.generate(GenerationRequest(messages=ONE_IMAGE, max_tokens=2))
        assert res.finish_reason == "error"
        assert "no vision tower" in res.error
        with pytest.raises(ImageError, match="no vision tower"):
            eng.prepare(GenerationRequest(messages=ONE_IMAGE))
        # text still works
        ok = eng.generate(GenerationRequest(prompt="hello", max_tokens=2))
        assert ok.error is None
    finally:
        eng.close()


def test_bad_image_is_a_request_error(tiny_engine):
    res = tiny_engine.generate(GenerationRequest(messages=[user(b"not an image", "hi")]))
    assert res.finish_reason == "error"
    assert "image 1" in res.error and "not an image" in res.error


# -- fidelity against transformers -------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen3_5MoeForConditionalGeneration.from_pretrained(
        str(tiny_dir("per_expert")), dtype=torch.float32
    )
    return model.eval()


def hf_run(hf_model, inputs: PromptInputs, n_decode: int):
    """transformers' prompt logits, then greedy decode logits and ids with its own cache."""
    import torch

    hf_model.model.rope_deltas = None  # stateful in transformers: stale deltas would leak in
    ids = torch.tensor([inputs.ids])
    tok = hf_model.config.image_token_id
    with torch.no_grad():
        out = hf_model(
            input_ids=ids,
            pixel_values=torch.tensor(np.concatenate([p.pixel_values for p in inputs.prepared])),
            image_grid_thw=torch.tensor([p.grid for p in inputs.prepared]),
            mm_token_type_ids=(ids == tok).int(),
            use_cache=True,
        )
        prompt_logits = out.logits[0].numpy()
        steps, chosen = [], [int(out.logits[0, -1].argmax())]
        for _ in range(n_decode):
            out = hf_model(
                input_ids=torch.tensor([chosen[-1:]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            steps.append(out.logits[0, -1].numpy())
            chosen.append(int(out.logits[0, -1].argmax()))
    return prompt_logits, np.stack(steps), chosen


@pytest.mark.slow
def test_vision_tower_matches_transformers(tiny_engine, tiny_model, hf_model):
    import torch

    for msgs in (ONE_IMAGE, TWO_IMAGES):
        inputs = tiny_engine.prepare(GenerationRequest(messages=msgs)).inputs
        for p in inputs.prepared:
            with torch.no_grad():
                ref = hf_model.model.visual(
                    torch.tensor(p.pixel_values), grid_thw=torch.tensor([p.grid])
                ).pooler_output.numpy()
            got = np.array(tiny_model.model.vision(mx.array(p.pixel_values), p.grid))
            err = max_diff(ref, got)
            print(f"vision tower {p.grid}: max abs diff {err:.2e}")
            assert err < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,msgs",
    [("one image", ONE_IMAGE), ("two images", TWO_IMAGES), ("conversation", CONVERSATION)],
)
def test_image_logits_and_decode_match_transformers(tiny_engine, tiny_model, hf_model, name, msgs):
    inputs = tiny_engine.prepare(GenerationRequest(messages=msgs)).inputs
    assert len(inputs.images) == (1 if msgs is ONE_IMAGE else 2)
    ref_prompt, ref_steps, ref_ids = hf_run(hf_model, inputs, 6)
    model = tiny_model.model
    cache = model.make_cache()
    got = mlx_logits(model, inputs, cache=cache)
    err = max_diff(ref_prompt, got)
    bound = bind_images(model, inputs)
    steps = [np.array(bound(mx.array([[t]]), cache=cache)[0, -1]) for t in ref_ids[:-1]]
    derr = max_diff(ref_steps, np.stack(steps))
    print(f"{name}: prefill max abs diff {err:.2e}, decode {derr:.2e}")
    assert err < FP32_TOL and derr < FP32_TOL
    assert np.abs(ref_prompt).max() > 1.0


@pytest.mark.slow
def test_greedy_ids_match_transformers_in_every_layout(tiny_dir, tiny_engine, hf_model):
    inputs = tiny_engine.prepare(GenerationRequest(messages=TWO_IMAGES)).inputs
    _, _, ref_ids = hf_run(hf_model, inputs, 8)
    assert len(set(ref_ids)) > 1
    for layout in ("per_expert", "fused", "mlx"):
        lm = load_model(tiny_dir(layout))
        assert lm.model.has_vision
        # prefill in chunks of 7: the images are split across chunks
        steps = generate_step(
            bind_images(lm.model, inputs),
            inputs.ids,
            lm.model.make_cache(),
            sampler=lambda lp: mx.argmax(lp, axis=-1),
            prefill_step=7,
        )
        got = [next(steps) for _ in range(len(ref_ids))]
        steps.close()
        assert got == ref_ids, layout
    eng = Engine(load_model(tiny_dir("mlx")))
    try:
        res = eng.generate(GenerationRequest(messages=TWO_IMAGES, sampling=GREEDY, max_tokens=len(ref_ids)))
    finally:
        eng.close()
    assert res.token_ids == ref_ids
