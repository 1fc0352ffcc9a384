"""`locus locate IMAGE "cats, the red cup"`: boxes from the model, printed and drawn on the image.

Prints the boxes (text, `--json`, or COCO with `--coco`) in pixels of the upright original image and
writes the image with labelled boxes (`--out`, default `<image>.boxes.png` in the current folder).
`--response FILE` parses a saved model answer instead of running the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any, add_model_args: Callable, add_sampling_args: Callable) -> None:
    """Register `locus locate` on the subparsers `sub`."""
    p = sub.add_parser(
        "locate",
        help="find objects in an image and draw labelled boxes",
        description=(
            "Ask the model where things are in an image. QUERY is a comma-separated list of "
            "categories ('cats, dogs') or one referring expression ('the cup left of the laptop')."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    p.add_argument("query", metavar="QUERY", help="what to find, e.g. 'cats, the red cup'")
    add_model_args(p)
    p.add_argument(
        "--out", metavar="PNG", help="annotated image to write (default: IMAGE_NAME.boxes.png here)"
    )
    p.add_argument("--no-draw", action="store_true", help="do not write an annotated image")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the boxes as JSON")
    fmt.add_argument("--coco", action="store_true", help="print COCO-style detections")
    p.add_argument("--prompt", metavar="TEXT", help="use this prompt instead of the built one")
    p.add_argument(
        "--response",
        metavar="FILE",
        help="parse a saved model answer ('-' = stdin) instead of running the model",
    )
    add_sampling_args(
        p, preset_help="default: instruct; locate always answers without thinking", thinking=False
    )
    p.set_defaults(handler=run, max_tokens=2048)


def _result(args: argparse.Namespace) -> Any:
    from engine.image import load_image

    from .localize import LocateResult, locate, parse_response

    if args.response is not None:
        if args.response == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(args.response).read_text("utf-8", errors="replace")
            except OSError as e:
                raise ValueError(f"cannot read --response {args.response}: {e.strerror}") from None
        width, height = load_image(args.image).original_size
        return LocateResult(parse_response(text, width, height), text, width, height)
    from .cli_common import open_backend, sampling_of

    # Grounding answers are short and exact: no thinking, the non-thinking preset by default.
    if args.preset is None:
        args.preset = "instruct"
    eng = open_backend(args)
    try:
        return locate(
            eng,
            args.image,
            args.query,
            max_tokens=args.max_tokens,
            sampling=sampling_of(args),
            prompt=args.prompt,
        )
    finally:
        eng.close()


def run(args: argparse.Namespace) -> int:
    from engine import EngineError

    from .localize import build_prompt, draw_boxes, open_image, to_coco, to_json

    try:
        if not args.query.strip():
            raise ValueError("say what to locate, e.g. 'cats, the red cup'")
        build_prompt(args.query)  # checks the query before loading a model
        res = _result(args)
        out = None
        if not args.no_draw:
            out = Path(args.out) if args.out else Path(Path(args.image).stem + ".boxes.png")
            if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
                raise ValueError(f"--out {out}: use a .png, .jpg or .webp file name")
            img = open_image(args.image)
            if img.size != (res.width, res.height):  # decoded reduced: draw at full size
                img = img.resize((res.width, res.height))
            draw_boxes(img, res.boxes).save(out)
    except (EngineError, ValueError, OSError) as e:
        print(f"locus locate: {e}", file=sys.stderr)
        return 1
    if args.coco:
        print(json.dumps(to_coco(res.boxes, Path(args.image).name, res.width, res.height), indent=2))
    elif args.json:
        doc = {
            "image": str(args.image),
            "width": res.width,
            "height": res.height,
            "query": args.query,
            "boxes": to_json(res.boxes),
            "response": res.text,
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for b in res.boxes:
            pt = f"  point ({b.point[0]:.0f}, {b.point[1]:.0f})" if b.point else ""
            print(f"{b.label}: ({b.x1:.0f}, {b.y1:.0f}) – ({b.x2:.0f}, {b.y2:.0f}){pt}")
    if not res.boxes:
        print(
            "The model found nothing it could box. Its answer was:\n" + res.text.strip()[:2000],
            file=sys.stderr,
        )
    if out is not None:
        print(f"Wrote {out}", file=sys.stderr)
    return 0
