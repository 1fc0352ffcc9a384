"""Localization: parsing what models really write, mapping to pixels, drawing, export, `locus locate`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.localize import (
    Box,
    build_prompt,
    draw_boxes,
    label_color,
    label_colors,
    locate,
    parse_response,
    split_query,
    to_coco,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
W, H = 800, 600  # pixel = v / 1000 × W (or H)

# (model output, expected [(label, x1, y1, x2, y2)] in pixels of an 800×600 image)
CASES = [
    (
        '```json\n[\n  {"bbox_2d": [100, 200, 300, 400], "label": "cat"}\n]\n```',
        [("cat", 80, 120, 240, 240)],
    ),
    (
        'Sure! Here are the objects:\n```json\n[{"bbox_2d": [0, 0, 500, 500], "label": "dog"},'
        ' {"bbox_2d": [500, 500, 1000, 1000], "label": "cup"}]\n```\nLet me know if you need more.',
        [("dog", 0, 0, 400, 300), ("cup", 400, 300, 800, 600)],
    ),
    (
        '{"bbox_2d": [250, 250, 750, 750], "label": "the red cup"}',
        [("the red cup", 200, 150, 600, 450)],
    ),
    (  # truncated mid-object: the complete objects stay
        '```json\n[{"bbox_2d": [100, 100, 200, 200], "label": "cat"}, {"bbox_2d": [300, 3',
        [("cat", 80, 60, 160, 120)],
    ),
    (  # trailing commas
        '[{"bbox_2d": [100, 100, 200, 200,], "label": "a",},]',
        [("a", 80, 60, 160, 120)],
    ),
    (  # swapped corners
        '[{"bbox_2d": [200, 300, 100, 100], "label": "b"}]',
        [("b", 80, 60, 160, 180)],
    ),
    (  # outside 0–1000: clamped; one entirely outside: dropped
        '[{"bbox_2d": [-50, 900, 500, 1200], "label": "c"}, '
        '{"bbox_2d": [1100, 100, 1300, 200], "label": "gone"}]',
        [("c", 0, 540, 400, 600)],
    ),
    (  # duplicates
        '[{"bbox_2d": [100, 100, 200, 200], "label": "cat"}, '
        '{"bbox_2d": [100, 100, 201, 200], "label": "cat"}, '
        '{"bbox_2d": [100, 100, 200, 200], "label": "dog"}]',
        [("cat", 80, 60, 160, 120), ("dog", 80, 60, 160, 120)],
    ),
    (
        '<think>\nlet me look [1,2]\n</think>\n\n[{"bbox_2d": [0, 0, 1000, 1000], "label": "all"}]',
        [("all", 0, 0, 800, 600)],
    ),
    (  # string coordinates, nested pairs, other key names
        '[{"bbox": "100, 100, 200, 200", "name": "s"}, {"box_2d": [[300, 300], [400, 400]]}]',
        [("s", 80, 60, 160, 120), ("object", 240, 180, 320, 240)],
    ),
    (
        "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
        [("the cat", 80, 120, 240, 240)],
    ),
    ("I could not find any cats in this image.", []),
    ("```json\n[]\n```", []),
    ('[{"label": "no coordinates"}]', []),
]


@pytest.mark.parametrize("text,want", CASES)
def test_parse_response_table(text, want):
    got = [(b.label, b.x1, b.y1, b.x2, b.y2) for b in parse_response(text, W, H)]
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0]
        assert np.allclose(g[1:], w[1:], atol=1e-6), (g, w)


def test_points():
    text = (
        '[{"point_2d": [500, 250], "label": "eye"}, '
        '{"bbox_2d": [0,0,100,100], "point_2d": [50, 50], "label": "x"}]'
    )
    eye, x = parse_response(text, W, H)
    assert eye.point == (400, 150) and eye.area == 0 and (eye.x1, eye.y1) == (400, 150)
    assert x.point == (40, 30) and x.area > 0


def test_absolute_coordinates_use_the_resized_size():
    # Qwen2.5-VL style: pixels in the image the model saw (here 640×480 for an 800×600 original)
    (b,) = parse_response(
        '[{"bbox_2d": [64, 48, 320, 240], "label": "a"}]', W, H, coords="absolute", model_size=(640, 480)
    )
    assert np.allclose(b.xyxy, (80, 60, 400, 300))
    with pytest.raises(ValueError, match="model_size"):
        parse_response("[]", W, H, coords="absolute")
    with pytest.raises(ValueError, match="positive"):
        parse_response("[]", 0, H)


def test_exif_rotated_image_maps_to_upright_pixels(tmp_path):
    """The model sees the upright image: boxes map onto the upright size, not the stored one."""
    from app.localize import open_image
    from engine.image import load_image

    stored = Image.new("RGB", (400, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.original_size == (200, 400) == open_image(path).size
    (b,) = parse_response('[{"bbox_2d": [0, 0, 500, 250], "label": "top-left"}]', *loaded.original_size)
    assert np.allclose(b.xyxy, (0, 0, 100, 100))


def test_prompts():
    assert split_query("cats, the red cup; dogs\n") == ["cats", "the red cup", "dogs"]
    p = build_prompt("cats, the red cup")
    assert 'categories: "cats, the red cup"' in p and "JSON" in p
    assert "every instance" in build_prompt("traffic light")
    r = build_prompt("the cup left of the laptop")
    assert '"the cup left of the laptop"' in r and "bbox_2d" in r and "every" not in r
    with pytest.raises(ValueError, match="what to locate"):
        build_prompt(" , ")


def test_label_colors_are_distinct_and_in_order():
    # Issue 16: byte-sum mod 8 gave "red circle" and "blue rectangle" the same color.
    labels = ["red circle", "blue rectangle", "cat", "dog", "cup", "car", "tree", "sun", "a", "b"]
    colors = label_colors(labels)
    assert len(set(colors.values())) == len(labels)
    assert label_color("red circle", labels) != label_color("blue rectangle", labels)
    assert label_color("cat") == label_colors(["cat"])["cat"]  # alone: the palette's first


def test_draw_and_export():
    img = Image.new("RGB", (400, 300), "white")
    boxes = [
        Box("cat", 40, 50, 200, 250),
        Box("cup", 0, 0, 60, 40),
        Box("eye", 300, 100, 300, 100, (300, 100)),
    ]
    out = draw_boxes(img, boxes)
    assert out.size == img.size and np.asarray(img).min() == 255  # the input is untouched
    a = np.asarray(out)
    colors = label_colors(["cat", "cup", "eye"])
    assert tuple(a[150, 40]) == colors["cat"]  # left edge of the cat's box
    assert tuple(a[100, 300]) == colors["eye"]  # the point
    # a tag in the label's color sits just above the cat's box, with white text inside it
    assert (a[44:50, 40:44] == label_color("cat")).all()
    tag = a[30:50, 40:80].reshape(-1, 3)
    assert (tag == (255, 255, 255)).all(axis=1).any()
    assert to_json(boxes)[0] == {"label": "cat", "bbox": [40, 50, 200, 250]}
    coco = to_coco(boxes, "x.png", 400, 300)
    assert coco["images"][0] == {"id": 1, "file_name": "x.png", "width": 400, "height": 300}
    assert coco["annotations"][0]["bbox"] == [40, 50, 160, 200]
    assert [c["name"] for c in coco["categories"]] == ["cat", "cup", "eye"]
    assert coco["annotations"][2]["keypoints"] == [300, 100, 2]


def test_locate_through_the_engine(tiny_dir):
    """End to end on the tiny model (random weights: the answer is nonsense, never a crash)."""
    from engine import Engine, SamplingParams

    eng = Engine.from_path(str(tiny_dir("mlx", 4)))
    try:
        img = Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        res = locate(eng, buf.getvalue(), "cats", max_tokens=8, sampling=SamplingParams(temperature=0))
    finally:
        eng.close()
    assert (res.width, res.height) == (120, 90)
    assert res.finish_reason == "length" and isinstance(res.boxes, list)


# -- the CLI -------------------------------------------------------------------------------------


def locus(*args: str, stdin: str | None = None, cwd: Path = ROOT):
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_locate_with_saved_response(tmp_path):
    Image.new("RGB", (800, 600), "white").save(tmp_path / "room.png")
    answer = 'Here:\n```json\n[{"bbox_2d": [100, 200, 300, 400], "label": "cat"},\n{"bbox_2d": [5'
    r = locus(
        "locate",
        str(tmp_path / "room.png"),
        "cats",
        "--response",
        "-",
        "--json",
        "--out",
        str(tmp_path / "out.png"),
        stdin=answer,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["width"] == 800 and doc["boxes"] == [{"label": "cat", "bbox": [80, 120, 240, 240]}]
    drawn = np.asarray(Image.open(tmp_path / "out.png"))
    assert tuple(drawn[180, 80]) == label_color("cat")


def in_process(capsys, monkeypatch, *args: str, stdin: str = "") -> tuple[int, str, str]:
    from app.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_locate_coco_and_text(tmp_path, capsys, monkeypatch):
    Image.new("RGB", (800, 600), "white").save(tmp_path / "room.png")
    answer = '[{"bbox_2d": [100, 200, 300, 400], "label": "cat"}, {"point_2d": [500, 500]}]'
    img = str(tmp_path / "room.png")
    rc, out, _ = in_process(
        capsys, monkeypatch, "locate", img, "cats", "--response", "-", "--coco", "--no-draw", stdin=answer
    )
    assert rc == 0
    coco = json.loads(out)
    assert coco["annotations"][0]["bbox"] == [80, 120, 160, 120]
    assert coco["images"][0]["file_name"] == "room.png"
    rc, out, err = in_process(
        capsys,
        monkeypatch,
        "locate",
        img,
        "cats",
        "--response",
        "-",
        "--out",
        str(tmp_path / "o.jpg"),
        stdin=answer,
    )
    assert rc == 0 and "cat: (80, 120) – (240, 240)" in out and "point (400, 300)" in out
    assert "Wrote" in err and Image.open(tmp_path / "o.jpg").size == (800, 600)


def test_cli_locate_runs_the_model(tiny_dir, tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "red.png")
    r = locus(
        "locate",
        str(tmp_path / "red.png"),
        "the red square",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "found nothing" in r.stderr  # random weights never answer with boxes
    assert Image.open(tmp_path / "red.boxes.png").size == (64, 48)


def test_cli_locate_bad_inputs(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.png").write_text("not really a png")
    args = ("cats", "--response", "-", "--no-draw")
    rc, _, err = in_process(capsys, monkeypatch, "locate", str(tmp_path / "notes.png"), *args)
    assert rc == 1 and "notes.png" in err and "not an image" in err
    rc, _, err = in_process(capsys, monkeypatch, "locate", str(tmp_path / "missing.jpg"), *args)
    assert rc == 1 and "not found" in err
    rc, _, err = in_process(capsys, monkeypatch, "locate", str(tmp_path / "notes.png"), " ", "--demo")
    assert rc == 1 and "what to locate" in err
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    rc, _, err = in_process(
        capsys,
        monkeypatch,
        "locate",
        str(tmp_path / "ok.png"),
        "cats",
        "--response",
        "-",
        "--out",
        str(tmp_path / "x.txt"),
    )
    assert rc == 1 and ".png" in err


def test_cli_generate_with_images(tiny_dir, tmp_path, capsys, monkeypatch):
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    common = [
        "generate",
        "--model",
        str(tiny_dir("mlx", 4)),
        "--prompt",
        "what is this?",
        "--max-tokens",
        "2",
        "--temperature",
        "0",
        "--json",
        "--no-prompt-cache",
    ]

    def prompt_tokens(*extra: str) -> int:
        rc, out, err = in_process(capsys, monkeypatch, *common, *extra)
        assert rc == 0, err
        done = json.loads(out.splitlines()[-1])
        assert done["type"] == "done" and done["error"] is None
        return done["usage"]["prompt_tokens"]

    text = prompt_tokens()
    one = prompt_tokens("--image", str(tmp_path / "a.png"))
    two = prompt_tokens("--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "b.png"))
    # 64×64 is the tiny processor's minimum area: 4×4 patches → 4 tokens, plus 2 markers each
    assert one - text == 6 and two - text == 12


def test_special_tokens_never_reach_the_answer_shown(tmp_path):
    # Locate keeps special tokens for Qwen's box markup; pads and separators reached users (issue 31).
    from app.localize import locate
    from tests.fakebackend import FakeBackend

    Image.new("RGB", (100, 100), "white").save(tmp_path / "w.png")
    noise = "nothing<|file_sep|> here<|vision_pad|><|image_pad|>"
    res = locate(FakeBackend([noise]), tmp_path / "w.png", "cats")
    assert (res.boxes, res.text) == ([], "nothing here")
    boxed = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|><|im_start|>"
    res = locate(FakeBackend([boxed]), tmp_path / "w.png", "cats")
    assert res.text == boxed.removesuffix("<|im_start|>") and [b.label for b in res.boxes] == ["cat"]
    assert parse_response(res.text, 100, 100) == res.boxes  # a saved answer re-parses the same
