"""Object localization: grounding prompts, tolerant parsing of the model's boxes, drawing, export.

Qwen3-VL-family models answer with a JSON list of `{"bbox_2d": [x1, y1, x2, y2], "label": …}` (or
`"point_2d": [x, y]`) on a 0–1000 grid relative to the image as the model saw it. The processor
resizes the upright (EXIF-rotated) image as a whole, so relative coordinates map to the upright
original by `v / 1000 × width`. Stable API used by the CLI, the server and the UI:
`Box`, `parse_response`, `build_prompt`, `draw_boxes`, `to_json`, `to_coco`, `open_image`, `locate`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from engine import Backend, GenerationRequest

__all__ = [
    "Box",
    "LocateResult",
    "answer_text",
    "build_prompt",
    "categories_prompt",
    "draw_boxes",
    "ink_for",
    "label_color",
    "label_colors",
    "locate",
    "locate_request",
    "open_image",
    "parse_response",
    "referring_prompt",
    "split_query",
    "to_coco",
    "to_json",
]

GRID = 1000.0  # Qwen3-VL's relative coordinate range

_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bounding_box", "coordinates")
_POINT_KEYS = ("point_2d", "point", "keypoint")
_LABEL_KEYS = ("label", "name", "category", "class", "object", "text", "description")
# Same palette and rule as the UI's overlay, so exports and the canvas agree. Assigned in order of
# first appearance, so the first ten labels of an answer never share a color.
PALETTE = [
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#17becf",
    "#e377c2",
    "#8c564b",
    "#bcbd22",
    "#7f7f7f",
]


def _num(v: float) -> float | int:
    # 2 decimals is sub-pixel; it drops float noise such as 79.80000000000001 (and 10.0 is 10).
    r = round(float(v), 2)
    return int(r) if r.is_integer() else r


@dataclass(frozen=True)
class Box:
    """One located object in pixels of the upright original image (x1 < x2, y1 < y2).

    A point-only answer gives a zero-size box at the point, with `point` set.
    """

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    point: tuple[float, float] | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def iou(self, other: Box) -> float:
        """Intersection over union with another box (0 for point-only boxes)."""
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON for exports (CLI and window alike): label, bbox in pixels, optional point."""
        d: dict[str, Any] = {"label": self.label, "bbox": [_num(v) for v in self.xyxy]}
        if self.point is not None:
            d["point"] = [_num(v) for v in self.point]
        return d

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2


# -- prompts -------------------------------------------------------------------------------------

_DETERMINERS = {"the", "a", "an", "this", "that", "my", "his", "her", "their", "our", "its"}


def split_query(query: str) -> list[str]:
    """Categories in a "cats, dogs; the red cup" query (commas, semicolons, newlines)."""
    items = [q.strip().strip("\"'") for q in re.split(r"[,;\n]", query)]
    return [q for q in items if q]


def categories_prompt(categories: list[str]) -> str:
    """Qwen's cookbook prompt for finding every instance of some categories."""
    if not categories:
        raise ValueError("say what to locate, e.g. 'cats, the red cup'")
    return (
        "Locate every instance that belongs to the following categories: "
        f'"{", ".join(categories)}". Report bbox coordinates in JSON format.'
    )


def referring_prompt(expression: str) -> str:
    """A prompt for one free-form referring expression ("the cup left of the laptop")."""
    expression = expression.strip()
    if not expression:
        raise ValueError("say what to locate, e.g. 'the red cup'")
    return (
        f'Locate "{expression}" in the image. Report its bbox coordinates in JSON format as '
        f'[{{"bbox_2d": [x1, y1, x2, y2], "label": "{expression}"}}].'
    )


def build_prompt(query: str) -> str:
    """The grounding prompt for a user's query.

    Several items ("cats, the red cup") or a bare category ("cat", "traffic light") ask for every
    instance; one longer or determined phrase ("the cup left of the laptop") is a referring
    expression.
    """
    items = split_query(query)
    if not items:
        raise ValueError("say what to locate, e.g. 'cats, the red cup'")
    if len(items) == 1:
        words = items[0].split()
        if words[0].lower() in _DETERMINERS or len(words) >= 4:
            return referring_prompt(items[0])
    return categories_prompt(items)


# -- parsing -------------------------------------------------------------------------------------


def _strip_reasoning(text: str) -> str:
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    return re.sub(r"<think>.*", "", text, flags=re.S) if "<think>" in text else text


def _fenced(text: str) -> list[str]:
    """Bodies of ``` fences (an unterminated last fence too: truncated output)."""
    parts = re.split(r"```[a-zA-Z0-9_-]*[ \t]*\n?", text)
    return [p for p in parts[1::2] if p.strip()]


def _loads(s: str) -> Any:
    """json.loads, tolerating trailing commas and single-quoted keys/strings."""
    try:
        return json.loads(s)
    except ValueError:
        pass
    fixed = re.sub(r",\s*([\]}])", r"\1", s)
    try:
        return json.loads(fixed)
    except ValueError:
        pass
    if "'" in fixed and '"' not in fixed:
        try:
            return json.loads(fixed.replace("'", '"'))
        except ValueError:
            pass
    raise ValueError("not JSON")


def _objects(text: str) -> list[Any]:
    """Every complete top-level JSON object in `text` (string-aware brace matching).

    Used when the whole answer does not parse: a truncated list still yields its complete objects.
    """
    out: list[Any] = []
    depth, start, in_str, esc, quote = 0, -1, False, False, ""
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'" and depth > 0:
            in_str, quote = True, ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    out.append(_loads(text[start : i + 1]))
                except ValueError:
                    pass  # a malformed object: skip it, keep the others
    return out


def _candidates(text: str) -> list[Any]:
    """The parsed JSON items of an answer: a list of dicts (or bare coordinate lists)."""
    for chunk in [*_fenced(text), text]:
        chunk = chunk.strip()
        # The outermost JSON value first: a lone object's "[…]" coordinates are not the answer.
        openers = sorted((chunk.find(o), o) for o in "[{" if o in chunk)
        for at, opener in openers:
            closer = "]" if opener == "[" else "}"
            end = chunk.rfind(closer)
            if end > at:
                try:
                    data = _loads(chunk[at : end + 1])
                except ValueError:
                    continue
                if isinstance(data, dict):
                    data = [data]
                if isinstance(data, list) and data:
                    # a single bare box [x1, y1, x2, y2]
                    if all(isinstance(v, int | float) for v in data):
                        return [data]
                    return data
    found: list[Any] = []
    for chunk in _fenced(text) or [text]:
        found += _objects(chunk)
    return found


_NUM = r"-?\d+(?:\.\d+)?"
_QWEN_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?"
    rf"<\|box_start\|>\s*\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*,\s*"
    rf"\(\s*(?P<x2>{_NUM})\s*,\s*(?P<y2>{_NUM})\s*\)\s*<\|box_end\|>",
    re.S,
)


def _numbers(v: Any) -> list[float] | None:
    """Coordinates from a list, nested pairs, or a string like "10, 20, 30, 40"."""
    if isinstance(v, str):
        v = re.findall(_NUM, v)
    if isinstance(v, dict):
        keys = [k for k in ("x1", "y1", "x2", "y2") if k in v] or [k for k in ("x", "y") if k in v]
        v = [v[k] for k in keys]
    if not isinstance(v, list | tuple):
        return None
    flat: list[Any] = []
    for x in v:
        flat.extend(x if isinstance(x, list | tuple) else [x])
    try:
        nums = [float(x) for x in flat]
    except (TypeError, ValueError):
        return None
    return nums if all(math.isfinite(n) for n in nums) else None


def _label(obj: dict[str, Any]) -> str:
    for k in _LABEL_KEYS:
        v = obj.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return "object"


def parse_response(
    text: str,
    width: int,
    height: int,
    *,
    coords: Literal["relative", "absolute"] = "relative",
    model_size: tuple[int, int] | None = None,
) -> list[Box]:
    """Boxes in pixels of the upright original image (`width` × `height`) from a model's answer.

    Accepts what models really write: ```json fences, prose around the JSON, one object instead of a
    list, `bbox_2d` / `point_2d` (and bbox/box/point), truncated output (complete objects are kept),
    trailing commas, swapped corners, values outside 0–1000 (clamped), duplicates (dropped), and
    Qwen's `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` tags. `coords="absolute"` reads pixel
    coordinates in the image as the model saw it (Qwen2.5-VL style), `model_size` = (w, h) of that
    resized image. Returns [] when the answer holds no box; never raises on model text.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive (got {width}×{height})")
    if coords == "absolute":
        if not model_size or min(model_size) <= 0:
            raise ValueError("absolute coordinates need model_size=(width, height) the model saw")
        sx, sy = model_size
    elif coords == "relative":
        sx = sy = GRID
    else:
        raise ValueError(f"coords must be 'relative' or 'absolute' (got {coords!r})")
    text = _strip_reasoning(text or "")
    raw: list[tuple[str, list[float] | None, list[float] | None]] = []
    for m in _QWEN_BOX.finditer(text):
        nums = [float(m.group(k)) for k in ("x1", "y1", "x2", "y2")]
        raw.append(((m.group("label") or "object").strip() or "object", nums, None))
    if not raw:
        for item in _candidates(text):
            if isinstance(item, list):
                raw.append(("object", _numbers(item), None))
                continue
            if not isinstance(item, dict):
                continue
            box = next((_numbers(item[k]) for k in _BOX_KEYS if k in item), None)
            point = next((_numbers(item[k]) for k in _POINT_KEYS if k in item), None)
            raw.append((_label(item), box, point))

    def px(v: float, scale: float, size: int) -> float:
        return min(max(v, 0.0), scale) / scale * size

    out: list[Box] = []
    for label, box, point in raw:
        pt = None
        if point is not None and len(point) >= 2:
            pt = (px(point[0], sx, width), px(point[1], sy, height))
        if box is not None and len(box) >= 4:
            x1, y1, x2, y2 = box[:4]
            x1, x2 = sorted((px(x1, sx, width), px(x2, sx, width)))
            y1, y2 = sorted((px(y1, sy, height), px(y2, sy, height)))
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                continue  # collapsed by clamping: it lay outside the image
            out.append(Box(label, x1, y1, x2, y2, pt))
        elif pt is not None:
            out.append(Box(label, pt[0], pt[1], pt[0], pt[1], pt))
    return _dedupe(out)


def _dedupe(boxes: list[Box], iou: float = 0.9) -> list[Box]:
    kept: list[Box] = []
    for b in boxes:
        same = [k for k in kept if k.label.lower() == b.label.lower()]
        if b.area > 0 and any(k.iou(b) >= iou for k in same):
            continue
        if b.area == 0 and any(k.point == b.point and k.area == 0 for k in same):
            continue
        kept.append(b)
    return kept


# -- images, drawing, export ---------------------------------------------------------------------


def open_image(source: Any) -> Any:
    """The upright RGB PIL image for a path, bytes or data: URL (EXIF orientation applied).

    Raises engine.image.ImageError naming the format and problem for files that cannot be used.
    """
    from engine.image import load_image

    return load_image(source).image


def label_colors(labels: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """One RGB color per distinct label, PALETTE in order of first appearance (then it repeats)."""
    out: dict[str, tuple[int, int, int]] = {}
    for label in labels:
        if label not in out:
            h = PALETTE[len(out) % len(PALETTE)]
            out[label] = int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)
    return out


def label_color(label: str, labels: Iterable[str] | None = None) -> tuple[int, int, int]:
    """The color `label` gets among `labels` (all the labels drawn together; default just it)."""
    order = list(labels) if labels is not None else []
    return label_colors([*order, label])[label]


def ink_for(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `color` (tags and list swatches)."""
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if lum > 150 else (255, 255, 255)


def draw_boxes(image: Any, boxes: list[Box], *, line_width: int | None = None) -> Any:
    """A copy of `image` (PIL, upright) with labelled boxes: a color per label, readable text
    on a filled tag sized to the image."""
    from PIL import ImageDraw, ImageFont

    img = image.convert("RGB").copy()
    w, h = img.size
    lw = line_width or max(2, round(min(w, h) / 250))
    size = max(12, round(min(w, h) / 40))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    colors = label_colors(b.label for b in boxes)
    for b in boxes:
        color = colors[b.label]
        if b.area > 0:
            draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=color, width=lw)
        if b.point is not None:
            r = lw * 3
            px, py = b.point
            draw.ellipse([px - r, py - r, px + r, py + r], fill=color, outline=(255, 255, 255))
        tx, ty = (b.x1, b.y1) if b.area > 0 else (b.point or (b.x1, b.y1))
        left, top, right, bottom = draw.textbbox((0, 0), b.label, font=font)
        tw, th = right - left + 2 * lw + 4, bottom - top + 2 * lw + 2
        ty = ty - th if ty - th >= 0 else ty  # above the box, or inside when at the top edge
        tx = min(max(0, tx), max(0, w - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
        ink = ink_for(color)
        draw.text((tx + lw + 2 - left, ty + lw - top), b.label, fill=ink, font=font)
    return img


def to_json(boxes: list[Box]) -> list[dict[str, Any]]:
    """Boxes as plain JSON: [{"label", "bbox": [x1, y1, x2, y2], "point"?}] in pixels."""
    return [b.to_dict() for b in boxes]


def to_coco(boxes: list[Box], file_name: str, width: int, height: int) -> dict[str, Any]:
    """A COCO-style detection file for one image (bbox = [x, y, width, height] in pixels)."""
    names = list(dict.fromkeys(b.label for b in boxes))
    cat = {n: i + 1 for i, n in enumerate(names)}
    anns = []
    for i, b in enumerate(boxes):
        ann: dict[str, Any] = {
            "id": i + 1,
            "image_id": 1,
            "category_id": cat[b.label],
            "bbox": [round(b.x1, 2), round(b.y1, 2), round(b.width, 2), round(b.height, 2)],
            "area": round(b.area, 2),
            "iscrowd": 0,
        }
        if b.point is not None:
            ann["keypoints"] = [round(b.point[0], 2), round(b.point[1], 2), 2]
            ann["num_keypoints"] = 1
        anns.append(ann)
    return {
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "annotations": anns,
        "categories": [{"id": cat[n], "name": n} for n in names],
    }


# -- running the model ---------------------------------------------------------------------------


@dataclass
class LocateResult:
    """What `locate` found: boxes in upright-original pixels, the answer shown, the image size."""

    boxes: list[Box]
    text: str
    width: int
    height: int
    finish_reason: str = "stop"
    notes: list[str] = field(default_factory=list)


def locate_request(
    image: Any,
    query: str,
    *,
    max_tokens: int = 2048,
    sampling: Any = None,
    prompt: str | None = None,
) -> GenerationRequest:
    """The grounding request for `image` (a path or PIL image): the image, then the prompt for
    `query`; no thinking, the model card's non-thinking preset unless `sampling` is given."""
    from engine import GenerationRequest, preset

    return GenerationRequest(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": prompt or build_prompt(query)},
                ],
            }
        ],
        enable_thinking=False,
        skip_special_tokens=False,  # Qwen2.5-VL style answers box with <|box_start|> tags
        sampling=sampling if sampling is not None else preset("instruct"),
        max_tokens=max_tokens,
    )


def locate(
    engine: Backend,
    image: Any,
    query: str,
    *,
    max_tokens: int = 2048,
    sampling: Any = None,
    prompt: str | None = None,
) -> LocateResult:
    """Ask the model where `query` is in `image` (path, bytes, data: URL or PIL image).

    Runs without thinking and with the model card's non-thinking preset unless `sampling` is
    given. Raises engine errors (ImageError for unusable images) with a message for the user.
    """
    from engine import EngineError
    from engine.image import LOCUS_MAX_PIXELS, load_image

    # Large JPEGs decode at a reduced scale; relative boxes still map to the full original size.
    loaded = load_image(image, target_pixels=LOCUS_MAX_PIXELS)
    width, height = loaded.original_size
    req = locate_request(loaded.image, query, max_tokens=max_tokens, sampling=sampling, prompt=prompt)
    res = engine.submit(req).result()  # any engine.Backend (a local or a remote model)
    if res.finish_reason == "error":
        raise EngineError(res.error or "generation failed")
    boxes = parse_response(res.text, width, height)
    return LocateResult(boxes, answer_text(res.text), width, height, res.finish_reason, list(loaded.notes))


# Qwen's grounding markup is how a box is written; its other special tokens (pads, separators)
# are noise the request kept only so that this markup would come through.
_GROUNDING_TAGS = frozenset(f"<|{n}_{e}|>" for n in ("object_ref", "box", "quad") for e in ("start", "end"))
_SPECIAL_TAG = re.compile(r"<\|[a-z0-9_]+\|>")


def answer_text(raw: str) -> str:
    """The answer as shown to a person and in JSON: Qwen's special tokens removed except its box
    markup, which `parse_response` reads again."""
    return _SPECIAL_TAG.sub(lambda m: m.group(0) if m.group(0) in _GROUNDING_TAGS else "", raw)
