"""Images for the model: read any common file safely, then resize and patch exactly like its processor.

Preprocessing follows the Qwen2-VL-style image processor that Qwen3.5/3.6 ship with (transformers'
PIL backend): "smart resize" to multiples of patch_size × merge_size between min and max pixels
(bicubic), rescale to [0, 1], normalize by mean/std, repeat the frame to fill the temporal patch,
and flatten into patches ordered block by block (each merge_size × merge_size block contiguous, as
the vision tower's patch merger expects).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RequestError

# Qwen3.6's processor defaults (preprocessor_config.json of the released checkpoint).
DEFAULT_MIN_PIXELS = 65_536
DEFAULT_MAX_PIXELS = 16_777_216
# Locus caps what the model sees: 16.7 MP would be 16k image tokens and a vision attention far beyond
# a laptop's memory. 4 MP (4096 image tokens) keeps small objects visible.
LOCUS_MAX_PIXELS = 4_194_304
# Files larger than this are refused before decoding (JPEGs are first decoded at a reduced scale).
MAX_DECODE_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 200

# Magic bytes of formats people drop that Pillow may not read, to name them in the error.
_SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftyphevc", 4, "HEIC"),
    (b"ftypheim", 4, "HEIC"),
    (b"ftypheis", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypmsf1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypavis", 4, "AVIF"),
    (b"ftypqt", 4, "a QuickTime video"),
    (b"ftypisom", 4, "an MP4 video"),
    (b"ftypmp4", 4, "an MP4 video"),
    (b"%PDF", 0, "PDF"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "XML/SVG"),
    (b"8BPS", 0, "Photoshop PSD"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
]


class ImageError(RequestError):
    """An image could not be read or used; the message names the file or format and the problem."""


@dataclass(frozen=True)
class ImageConfig:
    """The model's image processor settings (from preprocessor_config.json and vision_config)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_model(
        cls,
        config: dict[str, Any],
        path: str | os.PathLike[str] | None = None,
        *,
        max_pixels_cap: int | None = LOCUS_MAX_PIXELS,
    ) -> ImageConfig:
        """Settings for a model: its vision_config, overridden by its preprocessor_config.json."""
        vc = config.get("vision_config") or {}
        kw: dict[str, Any] = {
            "patch_size": int(vc.get("patch_size", 16)),
            "temporal_patch_size": int(vc.get("temporal_patch_size", 2)),
            "merge_size": int(vc.get("spatial_merge_size", 2)),
        }
        pre: dict[str, Any] = {}
        if path is not None and (Path(path) / "preprocessor_config.json").is_file():
            try:
                pre = json.loads((Path(path) / "preprocessor_config.json").read_text("utf-8"))
            except (OSError, ValueError):
                pre = {}  # a broken processor file: the model's own defaults still apply
        size = pre.get("size") if isinstance(pre.get("size"), dict) else {}
        lo = pre.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
        hi = pre.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
        if lo:
            kw["min_pixels"] = int(lo)
        if hi:
            kw["max_pixels"] = int(hi)
        for name, key in (
            ("patch_size", "patch_size"),
            ("temporal_patch_size", "temporal_patch_size"),
            ("merge_size", "merge_size"),
        ):
            if isinstance(pre.get(key), int):
                kw[name] = pre[key]
        for key in ("image_mean", "image_std"):
            v = pre.get(key)
            if isinstance(v, list | tuple) and len(v) == 3:
                kw[key] = tuple(float(x) for x in v)
        if max_pixels_cap is not None:
            kw["max_pixels"] = min(kw.get("max_pixels", DEFAULT_MAX_PIXELS), max_pixels_cap)
            kw["min_pixels"] = min(kw.get("min_pixels", DEFAULT_MIN_PIXELS), kw["max_pixels"])
        return cls(**kw)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the model sees an image of this size at."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h

    def num_tokens(self, width: int, height: int) -> int:
        """Image tokens (`<|image_pad|>` after expansion) for an image of this size."""
        w, h = self.resized_size(width, height)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size**2)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, area within [min, max], aspect kept."""
    if min(height, width) <= 0:
        raise ImageError(f"the image has no pixels ({width}×{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"the image is {width}×{height}: its aspect ratio exceeds {MAX_ASPECT_RATIO}:1, which the "
            "model cannot take; crop it first"
        )
    # Python's round (half to even) on purpose: it is what the reference processor does.
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass
class LoadedImage:
    """A decoded image, upright (EXIF orientation applied) and in RGB."""

    image: Any  # PIL.Image.Image, mode "RGB"
    format: str | None  # "JPEG", "PNG", … (None for an in-memory image)
    orientation: int = 1  # the EXIF orientation tag that was applied (1 = none)
    stored_size: tuple[int, int] = (0, 0)  # (w, h) as stored in the file, before orientation
    # Upright (w, h) at full resolution; larger than `image` when a huge JPEG was decoded reduced.
    original_size: tuple[int, int] = (0, 0)
    frames: int = 1  # animated images: only the first frame is used
    source: str = "image"  # a name for messages: the file name, or "image"
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.image.width)

    @property
    def height(self) -> int:
        return int(self.image.height)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass
class PreparedImage:
    """What the vision tower takes for one image, and what the prompt needs to know about it."""

    pixel_values: np.ndarray  # (h·w patches, C·T·P·P) float32, merge-block order
    grid: tuple[int, int, int]  # (t, h, w) in patches
    hash: str  # content hash of exactly what the model sees (resized pixels and grid)
    size: tuple[int, int]  # upright original (width, height)
    resized: tuple[int, int]  # (width, height) the model sees
    merge_size: int = 2

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w // (self.merge_size**2)


def _describe(data: bytes) -> str | None:
    head = data[:64]
    for sig, off, name in _SIGNATURES:
        if head[off : off + len(sig)] == sig:
            return name
    text = head.lstrip()[:16].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    return None


def _too_large_msg(width: int, height: int, limit: int) -> str:
    return (
        f"the image is {width}×{height} ({width * height / 1e6:.0f} megapixels); Locus reads "
        f"images up to {limit / 1e6:.0f} megapixels — downscale it first"
    )


def _too_large(data: bytes, limit: int) -> str:
    """The size message for a file Pillow refused as a decompression bomb (size read unchecked)."""
    from PIL import Image

    try:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    except Exception:
        return "the image is too large to decode safely; downscale it first"
    return _too_large_msg(w, h, limit)


def _read_source(source: Any) -> tuple[bytes | None, Any, str]:
    """(raw bytes or None, an already-open PIL image or None, a name for messages)."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return None, source, "image"
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None, "image data"
    if isinstance(source, str) and source.startswith("data:"):
        head, _, payload = source.partition(",")
        if ";base64" not in head:
            raise ImageError("image data URL must be base64-encoded (data:image/png;base64,…)")
        try:
            return base64.b64decode(payload, validate=False), None, "image data URL"
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"image data URL is not valid base64 ({e})") from None
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ImageError(f"remote images are not fetched ({source[:80]}); download it first")
    if isinstance(source, str | os.PathLike):
        p = Path(source).expanduser()
        if p.is_dir():
            raise ImageError(f"{p} is a directory, not an image file")
        try:
            return p.read_bytes(), None, p.name
        except FileNotFoundError:
            raise ImageError(f"image file not found: {p}") from None
        except OSError as e:
            raise ImageError(f"cannot read image file {p}: {e.strerror or e}") from None
    raise ImageError(
        f"unsupported image value of type {type(source).__name__}; give bytes, a file path, a "
        "data: URL or a PIL image"
    )


def _to_rgb(img: Any, notes: list[str]) -> Any:
    """RGB from any mode: transparency composited onto white (like the reference processor),
    16-bit and float greys scaled to 8 bits instead of clipped."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16") or hi > 255:
            a = a / 257.0 if hi <= 65535 else a * (255.0 / hi)
            notes.append(f"{mode} image scaled to 8 bits")
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    source: Any,
    *,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    target_pixels: int | None = None,
) -> LoadedImage:
    """Decode `source` (bytes, a path, a data: URL, or a PIL image) into an upright RGB image.

    Raises ImageError naming the problem: missing or empty file, not an image, a format Pillow cannot
    read (HEIC, PDF, SVG…), truncated or corrupt data, or an image too large to decode. Animated
    images give their first frame. `target_pixels` lets a large JPEG be decoded at a reduced scale
    (never below twice that many pixels) so that huge photos do not need full-size memory.
    """
    from PIL import Image, ImageOps

    data, img, name = _read_source(source)
    fmt: str | None = None
    if img is None:
        assert data is not None
        img = _open(data, name, max_decode_pixels)
        fmt = img.format
    label = f"{name} ({fmt})" if fmt else name
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: the image has no pixels ({width}×{height})")
    notes: list[str] = []
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        img.seek(0)
        notes.append(f"animated image with {frames} frames: the first frame is used")
    if fmt == "JPEG" and target_pixels and width * height > 4 * target_pixels:
        # Decode at 1/2, 1/4 or 1/8 scale, staying at least twice the size the model will see.
        scale = math.sqrt(2 * target_pixels / (width * height))
        img.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        if img.size != (width, height):
            notes.append(f"decoded at {img.size[0]}×{img.size[1]} instead of {width}×{height}")
    if img.size[0] * img.size[1] > max_decode_pixels:
        raise ImageError(f"{label}: {_too_large_msg(width, height, max_decode_pixels)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"{label}: the image is too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{label}: the image data is truncated or corrupt ({e})") from None
    stored = (width, height)
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        orientation = 1
    if orientation not in range(1, 9):
        orientation = 1
    try:
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img, notes)
    except (OSError, ValueError) as e:
        raise ImageError(f"{label}: the image cannot be converted to RGB ({e})") from None
    upright = stored if orientation < 5 else (stored[1], stored[0])
    return LoadedImage(rgb, fmt, orientation, stored, upright, frames, name, notes)


def _open(data: bytes, name: str, max_decode_pixels: int) -> Any:
    """Pillow's image for `data` (header only, not decoded yet), or ImageError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: {_too_large(data, max_decode_pixels)}") from None
    except UnidentifiedImageError:
        kind = _describe(data)
        if kind:
            raise ImageError(
                f"{name}: the file is {kind}, which Locus cannot read as an image; convert it to JPEG or PNG"
            ) from None
        raise ImageError(
            f"{name}: not an image, or a format Locus cannot read ({len(data)} bytes; first "
            f"bytes {data[:8]!r}); use JPEG, PNG, WebP, GIF, BMP or TIFF"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: corrupt image header ({e})") from None


def preprocess(image: LoadedImage | Any, config: ImageConfig) -> PreparedImage:
    """Pixel patches and grid for one image, equal to the reference processor's output."""
    from PIL import Image

    img = image.image if isinstance(image, LoadedImage) else image
    if not isinstance(img, Image.Image):
        raise ImageError(f"preprocess takes a LoadedImage or a PIL image, not {type(img).__name__}")
    if img.mode != "RGB":
        img = _to_rgb(img, [])
    width, height = img.size
    original = image.original_size if isinstance(image, LoadedImage) else (width, height)
    rh, rw = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    resized = img.resize((rw, rh), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8)
    digest = hashlib.sha256()
    digest.update(f"{rw}x{rh}:{config.patch_size}:{config.merge_size}:".encode())
    digest.update(f"{config.image_mean}:{config.image_std}:".encode())
    digest.update(pixels.tobytes())
    # Same arithmetic as the reference: rescale in float64, then normalize in float32.
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    x = ((x - mean) / std).transpose(2, 0, 1)  # (C, H, W)
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = rh // p, rw // p
    c = x.shape[0]
    x = x.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, C, ph, pw)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))  # repeat the frame
    patches = np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32)
    return PreparedImage(patches, (1, gh, gw), digest.hexdigest(), original, (rw, rh), m)


def prepare_image(source: Any, config: ImageConfig) -> tuple[LoadedImage, PreparedImage]:
    """Load and preprocess in one step (large JPEGs decoded at reduced scale)."""
    loaded = load_image(source, target_pixels=config.max_pixels)
    return loaded, preprocess(loaded, config)


@dataclass(frozen=True)
class ImageSpan:
    """Where one image sits in a prompt: its `length` tokens start at `start`."""

    start: int
    length: int
    hash: str  # content hash of what the model sees (PreparedImage.hash)
    grid: tuple[int, int, int]  # (t, h, w) in patches, before merging

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class PromptInputs:
    """A prompt ready for the model: token ids with every image expanded in place.

    `images[i]` is where image i's tokens sit and its content hash; `prepared[i]` holds its pixels.
    A prompt cache must key on `image_keys` as well as `ids`: two different images of the same
    size give identical ids.
    """

    ids: list[int]
    reasoning: bool = False
    images: list[ImageSpan] = field(default_factory=list)
    prepared: list[PreparedImage] = field(default_factory=list, repr=False, compare=False)

    @property
    def image_keys(self) -> list[tuple[int, str]]:
        """(start, content hash) of each image, in prompt order."""
        return [(s.start, s.hash) for s in self.images]


def image_parts(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages for the chat template (image parts reduced to a marker) and the image sources.

    Image parts are `{"type": "image", "image": X}` (X: bytes, a path, a data: URL or a PIL image)
    or OpenAI-style `{"type": "image_url", "image_url": {"url": ...}}`. Sources come back in the
    order the template renders them.
    """
    out: list[dict[str, Any]] = []
    sources: list[Any] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for part in content:
            if not isinstance(part, dict):
                parts.append(part)
                continue
            kind = part.get("type")
            if kind in ("video", "video_url") or "video" in part:
                raise ImageError("video input is not supported; give still images")
            if kind == "image" or "image" in part or kind == "image_url" or "image_url" in part:
                src = part.get("image")
                if src is None:
                    url = part.get("image_url")
                    src = url.get("url") if isinstance(url, dict) else url
                if src is None:
                    raise ImageError("an image part has no image (use {'type': 'image', 'image': …})")
                sources.append(src)
                parts.append({"type": "image"})
            else:
                parts.append(part)
        out.append({**m, "content": parts})
    return out, sources


def expand_images(
    ids: list[int], image_token_id: int, prepared: list[PreparedImage]
) -> tuple[list[int], list[ImageSpan]]:
    """Replace each single image token by the image's token count; return ids and spans."""
    at = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(at) != len(prepared):
        raise ImageError(
            f"the prompt has {len(at)} image placeholder(s) but {len(prepared)} image(s) were given"
        )
    out: list[int] = []
    spans: list[ImageSpan] = []
    prev = 0
    for i, img in zip(at, prepared, strict=True):
        out.extend(ids[prev:i])
        spans.append(ImageSpan(len(out), img.num_tokens, img.hash, img.grid))
        out.extend([image_token_id] * img.num_tokens)
        prev = i + 1
    out.extend(ids[prev:])
    return out, spans


def build_prompt_inputs(loaded: Any, ids: list[int], reasoning: bool, sources: list[Any]) -> PromptInputs:
    """PromptInputs for a rendered prompt: check the model takes images, read them, expand ids.

    `loaded` is the engine's LoadedModel; `sources` are the images in template order.
    """
    if not sources:
        return PromptInputs(list(ids), reasoning)
    model = loaded.model
    if loaded.kind != "qwen3_5_moe" or not hasattr(model, "with_images"):
        raise ImageError(
            f"this model ({loaded.config.get('model_type', '?')}) is loaded as a text-only model; "
            "images need a Qwen3.5/3.6 checkpoint with its vision tower"
        )
    if not getattr(model, "has_vision", False):
        raise ImageError(
            f"{loaded.path.name}: this checkpoint has no vision tower weights (it was converted "
            "text-only, e.g. by mlx-lm), so it cannot take images; use a multimodal conversion "
            "such as mlx-community/Qwen3.6-35B-A3B-4bit, or `locus convert` the original"
        )
    token = loaded.config.get("image_token_id")
    if not isinstance(token, int):
        token = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    config = ImageConfig.from_model(loaded.config, loaded.path)
    prepared = []
    for i, src in enumerate(sources):
        try:
            prepared.append(prepare_image(src, config)[1])
        except ImageError as e:
            raise ImageError(f"image {i + 1}: {e}") from None
    expanded, spans = expand_images(list(ids), int(token), prepared)
    return PromptInputs(expanded, reasoning, spans, prepared)
