"""Image reading and preprocessing: equal to transformers' processor, and clear errors for bad files."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.image import (
    ImageConfig,
    ImageError,
    expand_images,
    image_parts,
    load_image,
    prepare_image,
    preprocess,
    smart_resize,
)

TINY = ImageConfig(min_pixels=4096, max_pixels=16384)
REAL = ImageConfig()  # Qwen3.6's processor: 65536 to 16777216 pixels


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hf_processor():
    transformers = pytest.importorskip("transformers")

    def make(cfg: ImageConfig):
        return transformers.Qwen2VLImageProcessorPil(
            size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
            patch_size=cfg.patch_size,
            temporal_patch_size=cfg.temporal_patch_size,
            merge_size=cfg.merge_size,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
        )

    return make


@pytest.mark.parametrize(
    "cfg,size",
    [
        (TINY, (100, 70)),
        (TINY, (5, 5)),  # tiny: scaled up to the minimum
        (TINY, (640, 20)),  # very wide
        (TINY, (33, 500)),  # very tall
        (TINY, (257, 255)),  # rounding at the edges
        (REAL, (64, 48)),
        (REAL, (1000, 9)),
        (REAL, (300, 200)),
    ],
)
def test_preprocess_equals_transformers(hf_processor, cfg, size):
    img = noise(*size, seed=size[0])
    ref = hf_processor(cfg)(images=[img], return_tensors="np")
    got = preprocess(img, cfg)
    assert list(got.grid) == ref["image_grid_thw"][0].tolist()
    assert got.pixel_values.shape == ref["pixel_values"].shape
    assert np.abs(got.pixel_values - ref["pixel_values"]).max() < 1e-5
    _t, h, w = got.grid
    assert got.num_tokens == h * w // 4
    assert cfg.num_tokens(*size) == got.num_tokens
    assert got.resized == (w * 16, h * 16) == cfg.resized_size(*size)


def test_smart_resize_bounds():
    h, w = smart_resize(3000, 4000, 32, 65536, 4_194_304)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 4_194_304
    assert abs(w / h - 4 / 3) < 0.02
    with pytest.raises(ImageError, match="aspect ratio"):
        smart_resize(10, 3000, 32, 4096, 16384)


def test_content_hash_depends_on_pixels_not_source(tmp_path):
    a = noise(100, 70, 1)
    (tmp_path / "a.png").write_bytes(encode(a, "PNG"))
    data_url = "data:image/png;base64," + base64.b64encode(encode(a, "PNG")).decode()
    hashes = {prepare_image(src, TINY)[1].hash for src in (a, tmp_path / "a.png", data_url)}
    assert len(hashes) == 1
    assert preprocess(noise(100, 70, 2), TINY).hash not in hashes


def test_exif_rotated_jpeg_is_upright():
    img = noise(120, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    loaded = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert loaded.orientation == 6
    assert loaded.stored_size == (120, 60)
    assert loaded.size == loaded.original_size == (60, 120)


@pytest.mark.parametrize(
    "make,note",
    [
        (lambda: encode(noise(40, 30, mode="CMYK"), "JPEG"), None),
        (lambda: encode(noise(40, 30).convert("P"), "PNG"), None),
        (lambda: encode(noise(40, 30, mode="RGBA"), "PNG"), None),
        (lambda: encode(noise(40, 30, mode="LA"), "PNG"), None),
        (lambda: encode(Image.fromarray(np.full((30, 40), 65535, np.uint16)), "PNG"), "8 bits"),
    ],
)
def test_unusual_modes_become_rgb(make, note):
    loaded = load_image(make())
    assert loaded.image.mode == "RGB" and loaded.size == (40, 30)
    if note:
        assert any(note in n for n in loaded.notes)
        # 16-bit white stays white instead of clipping or wrapping
        assert np.asarray(loaded.image).min() == 255


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    loaded = load_image(encode(rgba, "PNG"))
    assert np.asarray(loaded.image)[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(buf.getvalue())
    assert loaded.frames == 2 and "first frame" in loaded.notes[0]
    r, _g, b = np.asarray(loaded.image)[5, 5].tolist()
    assert r > 200 and b < 50


def test_huge_jpeg_is_decoded_reduced():
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    loaded = load_image(encode(big, "JPEG"), target_pixels=16384)
    assert loaded.original_size == (4000, 3000)
    assert loaded.size[0] < 1000  # decoded at 1/8 scale, not at full size
    assert any("decoded at" in n for n in loaded.notes)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello, this is text and not a picture at all", "not an image"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "HEIC"),
        (b"%PDF-1.4\n" + b"x" * 40, "PDF"),
        (b"<!DOCTYPE html><html></html>", "HTML"),
    ],
)
def test_bad_bytes_name_the_problem(data, match):
    with pytest.raises(ImageError, match=match):
        load_image(data)


def test_truncated_and_corrupt_files():
    png = encode(noise(64, 64), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(png[: len(png) // 2])
    jpeg = bytearray(encode(noise(64, 64), "JPEG"))
    with pytest.raises(ImageError, match="image data"):
        load_image(bytes(jpeg[:20]))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width × height (what a decompression bomb looks like)."""
    import struct
    import zlib

    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize("side", [12_000, 20_000])  # above Locus's limit, above Pillow's
def test_huge_dimensions_are_refused_before_decoding(side):
    with pytest.raises(ImageError, match=f"{side}×{side}.*megapixels.*downscale"):
        load_image(png_claiming(side, side))


def test_bad_sources(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="base64"):
        load_image("data:image/png,rawdata")
    with pytest.raises(ImageError, match="remote"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ImageError, match="unsupported image value"):
        load_image(12345)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"zero\.png.*empty"):
        load_image(tmp_path / "zero.png")


def test_image_parts_and_expansion():
    msgs = [
        {"role": "system", "content": "hi"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image", "image": b"X"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
    ]
    out, sources = image_parts(msgs)
    assert sources == [b"X", "data:image/png;base64,AA=="]
    assert out[1]["content"][1] == {"type": "image"} and out[0] == msgs[0]
    with pytest.raises(ImageError, match="video"):
        image_parts([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])
    with pytest.raises(ImageError, match="no image"):
        image_parts([{"role": "user", "content": [{"type": "image"}]}])
    p = preprocess(noise(100, 70), TINY)
    ids, spans = expand_images([1, 9, 2, 9, 3], 9, [p, p])
    n = p.num_tokens
    assert ids == [1, *[9] * n, 2, *[9] * n, 3]
    assert [(s.start, s.length) for s in spans] == [(1, n), (2 + n, n)]
    with pytest.raises(ImageError, match="placeholder"):
        expand_images([1, 9, 2], 9, [p, p])
