"""Object localization: accuracy at IoU ≥ 0.5 and time per image; vision-tower time at real widths.

Run from the repository root with the project's Python:

    python bench/grounding.py --replay                       # generated images, scripted answers
    python bench/grounding.py --data set.jsonl --model ~/models/Qwen3.6-35B-A3B-4bit
    python bench/grounding.py --vision-timing                # 1024×768 image, real widths, random

`--data` is a JSONL file, one image per line: {"image": PATH (relative to the file), "query":
"cats, the red cup", "boxes": [{"label": "cat", "bbox": [x1, y1, x2, y2]}, ...]} in pixels of the
upright image. Without `--data`, a handful of images with coloured shapes are generated.

Answers come from `app.localize.locate` on a loaded model (`--model PATH` or `--demo`), or, with
`--replay [FILE]`, from recorded raw model answers (one JSON string per line, in dataset order;
without FILE the answers are synthesized from the ground truth in the formats models really write —
fenced JSON, prose around it, `bbox_2d` on the 0–1000 grid, slightly off — which proves the harness
and the parser, not a model). A ground-truth box counts as found when a predicted box with the same
label (case-insensitive) overlaps it at IoU ≥ 0.5, each prediction matched at most once.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------

SHAPES = [("red square", "red"), ("blue circle", "blue"), ("green bar", "green")]


def generate_dataset(folder: Path, n: int = 6, seed: int = 0) -> Path:
    """Images with 1–3 coloured shapes at random places and sizes, and their boxes."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    sizes = [(640, 480), (480, 640), (1024, 768), (300, 300), (1280, 400), (800, 600)]
    lines = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = Image.new("RGB", (w, h), (235, 235, 235))
        d = ImageDraw.Draw(img)
        boxes = []
        for label, color in rng.sample(SHAPES, rng.randint(1, 3)):
            bw, bh = rng.randint(w // 8, w // 3), rng.randint(h // 8, h // 3)
            x1, y1 = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            box = (x1, y1, x1 + bw, y1 + bh)
            (d.ellipse if "circle" in label else d.rectangle)(box, fill=color)
            boxes.append({"label": label, "bbox": list(box)})
        name = f"img{i}.png"
        img.save(folder / name)
        query = ", ".join(b["label"] for b in boxes)
        lines.append(json.dumps({"image": name, "query": query, "boxes": boxes}))
    path = folder / "dataset.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def synthesize_answer(item: dict[str, Any], width: int, height: int, rng: random.Random) -> str:
    """A model-like answer for the item's ground truth (0–1000 grid, jittered, varied format)."""
    objs = []
    for b in item["boxes"]:
        x1, y1, x2, y2 = b["bbox"]
        grid = [x1 / width * 1000, y1 / height * 1000, x2 / width * 1000, y2 / height * 1000]
        grid = [round(v + rng.uniform(-8, 8)) for v in grid]
        objs.append({"bbox_2d": grid, "label": b["label"]})
    body = json.dumps(objs, indent=2)
    style = rng.randrange(3)
    if style == 0:
        return f"```json\n{body}\n```"
    if style == 1:
        return f"Here is what I found in the image:\n```json\n{body}\n```\nLet me know if you need more."
    return body[:-1] + ",\n]"  # trailing comma, as models sometimes write


# -- scoring ---------------------------------------------------------------------------------


def score(pred: list[Any], truth: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(ground-truth boxes found at IoU ≥ 0.5, ground-truth boxes, predicted boxes)."""
    from app.localize import Box

    used: set[int] = set()
    found = 0
    for t in truth:
        tb = Box(t["label"], *map(float, t["bbox"]))
        best, best_iou = None, 0.5
        for i, p in enumerate(pred):
            if i in used or p.label.strip().lower() != tb.label.strip().lower():
                continue
            iou = p.iou(tb)
            if iou >= best_iou:
                best, best_iou = i, iou
        if best is not None:
            used.add(best)
            found += 1
    return found, len(truth), len(pred)


# -- vision tower timing ---------------------------------------------------------------------


def vision_timing(dtype: str, width: int = 1024, height: int = 768, runs: int = 2) -> dict[str, Any]:
    """Seconds for the vision tower at Qwen3.6's real widths (random weights) on one image."""
    import mlx.core as mx
    import numpy as np
    from PIL import Image

    from engine.image import ImageConfig, prepare_image
    from engine.vision import VisionModel

    config = {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2048,
        "num_position_embeddings": 2304,
        "hidden_act": "gelu_pytorch_tanh",
    }
    mx.random.seed(0)
    model = VisionModel(config)
    if dtype == "bfloat16":
        model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    _, prep = prepare_image(img, ImageConfig())
    pixels = mx.array(prep.pixel_values)
    if dtype == "bfloat16":
        pixels = pixels.astype(mx.bfloat16)
    times = []
    for i in range(runs):
        t = time.perf_counter()
        mx.eval(model(pixels, prep.grid))
        times.append(time.perf_counter() - t)
        log(f"  run {i + 1}/{runs}: {times[-1]:.2f} s")
    return {
        "image": [width, height],
        "seen_as": list(prep.resized),
        "grid": list(prep.grid),
        "image_tokens": prep.num_tokens,
        "dtype": dtype,
        "device": str(mx.default_device()),
        "runs": times,
        "seconds": min(times),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", metavar="JSONL", help="dataset (default: generate a few images)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="PATH", help="model directory or cached repo id")
    src.add_argument("--demo", action="store_true", help="the tiny random demo model")
    src.add_argument(
        "--replay",
        nargs="?",
        const="",
        metavar="FILE",
        help="recorded answers (JSONL of strings); bare: synthesized from the truth",
    )
    ap.add_argument(
        "--vision-timing",
        action="store_true",
        help="also time the vision tower at real widths on a 1024×768 image",
    )
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--vision-runs", type=int, default=1, metavar="N", help="timed runs (best)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--min-accuracy", type=float, metavar="X", help="target: exit 1 below this accuracy")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.model is None and not args.demo and args.replay is None and not args.vision_timing:
        ap.error("give --model PATH, --demo, --replay [FILE] or --vision-timing")

    from app.localize import locate, parse_response
    from bench.verdict import finish
    from engine.image import load_image

    out: dict[str, Any] = {}
    if args.model or args.demo or args.replay is not None:
        tmp = Path(tempfile.mkdtemp(prefix="locus-grounding-"))
        data = Path(args.data) if args.data else generate_dataset(tmp)
        items = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        answers: list[str] | None = None
        if args.replay:
            answers = [json.loads(line) for line in Path(args.replay).read_text().splitlines()]
            if len(answers) != len(items):
                sys.exit(f"--replay: {len(answers)} answers for {len(items)} images")
        engine = None
        if args.model or args.demo:
            from app.demo import demo_model_dir
            from engine import Engine

            engine = Engine.from_path(str(demo_model_dir()) if args.demo else args.model)
        rng = random.Random(0)
        found = total = predicted = 0
        times = []
        try:
            for i, item in enumerate(items):
                image = data.parent / item["image"]
                width, height = load_image(image).original_size
                t = time.perf_counter()
                if engine is not None:
                    boxes = locate(engine, image, item["query"], max_tokens=args.max_tokens).boxes
                else:
                    text = answers[i] if answers else synthesize_answer(item, width, height, rng)
                    boxes = parse_response(text, width, height)
                times.append(time.perf_counter() - t)
                f, n, p = score(boxes, item["boxes"])
                found, total, predicted = found + f, total + n, predicted + p
                print(
                    f"{item['image']:>14} {width}×{height}: {f}/{n} found, {p} predicted, {times[-1]:.3f} s"
                )
        finally:
            if engine is not None:
                engine.close()
        source = "model" if engine is not None else ("replay" if args.replay else "synthesized")
        print(
            f"accuracy at IoU >= 0.5: {found}/{total} = {found / max(total, 1):.3f} "
            f"(precision {found / max(predicted, 1):.3f}); answers: {source}; "
            f"{sum(times) / max(len(times), 1):.3f} s per image"
        )
        out["localization"] = {
            "answers": source,
            "images": len(items),
            "found": found,
            "truth": total,
            "predicted": predicted,
            "accuracy": found / max(total, 1),
            "seconds_per_image": sum(times) / max(len(times), 1),
        }
    if args.vision_timing:
        log("timing the vision tower at real widths (random weights)...")
        v = vision_timing(args.dtype, runs=args.vision_runs)
        print(
            f"vision tower, {v['image'][0]}×{v['image'][1]} image ({v['image_tokens']} tokens, "
            f"grid {v['grid']}), {v['dtype']} on {v['device']}: {v['seconds']:.2f} s "
            f"(best of {len(v['runs'])})"
        )
        out["vision_tower"] = v
    out["failures"] = judge(out, args.min_accuracy)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return finish(out["failures"])


def judge(out: dict[str, Any], min_accuracy: float | None) -> list[str]:
    """No images scored is a failed run; below --min-accuracy (when given) a missed target."""
    from bench.verdict import at_least

    loc = out.get("localization")
    if loc is None:
        return []
    if loc["images"] == 0:
        return ["no images were scored"]
    return [] if min_accuracy is None else at_least("accuracy", loc["accuracy"], min_accuracy)


if __name__ == "__main__":
    sys.exit(main())
