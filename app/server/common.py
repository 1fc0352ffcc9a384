"""What both APIs share: images, Claude Code's billing line, sampling defaults, the model's name."""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from engine import PRESETS, SamplingParams

from .errors import invalid

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
NO_REMOTE = (
    "remote image URLs are not fetched: nothing leaves this machine. Send the image inline as base64 instead"
)
# Claude Code starts its system prompt with a per-request attribution line whose `cch=` nonce
# changes every time; left in, it would make every prompt differ from the last at token ~10.
_BILLING = re.compile(r"\A[ \t]*x-anthropic-billing-header:[^\n]*(?:\n|\Z)")


def strip_billing_header(text: str) -> str:
    """`text` without a leading `x-anthropic-billing-header: ...` line."""
    return _BILLING.sub("", text, count=1)


def image_part(data: str, media_type: str | None, where: str) -> dict[str, Any]:
    """An engine image part from base64 data, checked with Pillow; 400 when it is not an image."""
    if media_type is not None and media_type not in IMAGE_TYPES:
        raise invalid(
            f"{where}: unsupported image media type {media_type!r}; use one of "
            f"{', '.join(sorted(IMAGE_TYPES))}"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(f"{where}: image data is not valid base64 ({e})") from e
    if not raw:
        raise invalid(f"{where}: image data is empty")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except Exception as e:  # Pillow raises many types for bad data (and decompression bombs)
        raise invalid(f"{where}: the image could not be decoded ({type(e).__name__}: {e})") from e
    return {"type": "image", "image": raw}


def data_url_image(url: str, where: str) -> dict[str, Any]:
    """An engine image part from a `data:image/...;base64,...` URL; remote URLs are refused."""
    if not url.startswith("data:"):
        raise invalid(f"{where}: {NO_REMOTE} (as a data: URL)")
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise invalid(f"{where}: image data URLs must be base64 (data:image/png;base64,...)")
    media = head[: -len(";base64")].lower() or None
    return image_part(data, media, where)


def sampling_for(preset: str | None, thinking: bool, vocab_size: int, **given: Any) -> SamplingParams:
    """The model card's preset for the mode (or the server's), with the request's own values."""
    base = PRESETS[preset or ("thinking" if thinking else "instruct")]
    top_k = given.pop("top_k", None)
    if top_k is not None:
        top_k = 0 if top_k < 0 or top_k >= vocab_size else top_k  # beyond the vocabulary: off
    seed = given.pop("seed", None)
    if seed is not None:
        seed %= 2**32
    return base.with_(top_k=top_k, seed=seed, **given)


def join_text(parts: list[str]) -> str:
    """Adjacent text blocks of one message, as one string."""
    return "\n\n".join(p for p in parts if p)
