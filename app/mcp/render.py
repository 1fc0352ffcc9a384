"""An MCP tool result as a tool result for the model: text, images it can see, structured content and
resource links, capped like the built-in tools' output and with control characters escaped.

Nothing a server sends is trusted: text goes through textsafe.show_block, images are decoded by the
engine's own loader before they are offered (a broken one becomes a note, not a failed turn), and
sizes and counts are capped.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..textsafe import show_block, show_line

__all__ = ["RenderLimits", "ToolResult", "render_result"]


@dataclass(frozen=True)
class RenderLimits:
    """Caps on one result (text like run_command's output cap)."""

    text_chars: int = 30_000
    images: int = 4
    image_bytes: int = 8 * 1024 * 1024
    resource_chars: int = 20_000


@dataclass
class ToolResult:
    """What one MCP call gives the model: `text` (also what the transcript shows) and `images`
    (data: URLs the model sees after the text); `details` are for the event log."""

    ok: bool
    text: str
    images: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def content(self) -> str | list[dict[str, Any]]:
        """The tool message's content: the text, or text and image parts when there are images."""
        if not self.images:
            return self.text
        return [{"type": "text", "text": self.text}, *({"type": "image", "image": u} for u in self.images)]


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def _cap(text: str, limit: int) -> str:
    """Head and tail of `text` when it is over `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters omitted ...]\n{text[-half:]}"


def _repair_png(raw: bytes) -> bytes:
    """A PNG without its ancillary chunks whose checksum is wrong (browsers skip them, Pillow
    refuses the file; server-everything's own sample image has one); other data as it is."""
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return raw
    out, i = bytearray(raw[:8]), 8
    while i + 12 <= len(raw):
        n = struct.unpack(">I", raw[i : i + 4])[0]
        chunk = raw[i : i + 12 + n]
        kind, body = chunk[4:8], chunk[8 : 8 + n]
        crc_ok = len(chunk) == 12 + n and zlib.crc32(kind + body) == struct.unpack(">I", chunk[-4:])[0]
        if crc_ok or not kind[:1].islower():  # a critical chunk stays; Pillow judges it
            out += chunk
        i += 12 + n
    return bytes(out)


class _Renderer:
    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.parts: list[str] = []
        self.images: list[str] = []

    def image(self, data: Any, mime: Any, label: str = "image") -> None:
        if len(self.images) >= self.limits.images:
            self.parts.append(f"[{label} not shown: at most {self.limits.images} images per result]")
            return
        try:
            raw = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            self.parts.append(f"[{label} not shown: its data is not valid base64]")
            return
        if len(raw) > self.limits.image_bytes:
            self.parts.append(
                f"[{label} not shown: {_size(len(raw))} is over {_size(self.limits.image_bytes)}]"
            )
            return
        from engine import ImageError, load_image

        try:
            img = load_image(raw)
        except ImageError as e:
            fixed = _repair_png(raw)
            try:
                img, raw = load_image(fixed), fixed
            except ImageError:
                self.parts.append(f"[{label} not shown: {show_line(e)}]")
                return
        fmt = (img.format or "png").lower()
        self.images.append(f"data:image/{fmt};base64,{base64.b64encode(raw).decode('ascii')}")
        w, h = img.original_size
        said = show_line(mime) if isinstance(mime, str) else "?"
        self.parts.append(f"[{label} {len(self.images)}: {fmt.upper()} {w}x{h}, {_size(len(raw))} ({said})]")

    def resource(self, res: dict[str, Any]) -> None:
        uri, mime = show_line(res.get("uri", "?")), res.get("mimeType")
        head = f"[resource {uri}" + (f" ({show_line(mime)})" if mime else "") + "]"
        if isinstance(res.get("text"), str):
            self.parts.append(head + "\n" + _cap(show_block(res["text"]), self.limits.resource_chars))
        elif isinstance(mime, str) and mime.startswith("image/") and "blob" in res:
            self.image(res["blob"], mime, f"image resource {uri}")
        else:
            blob = str(res.get("blob") or "")
            self.parts.append(f"{head[:-1]}: binary, about {_size(len(blob) * 3 // 4)}, not shown]")

    def block(self, b: Any) -> None:
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            self.parts.append(show_block(b.get("text", "")))
        elif kind == "image":
            self.image(b.get("data", ""), b.get("mimeType"))
        elif kind == "resource_link":
            name = show_line(b.get("title") or b.get("name") or "")
            line = f"[resource link] {name}: {show_line(b.get('uri', '?'))}"
            if b.get("mimeType"):
                line += f" ({show_line(b['mimeType'])})"
            if b.get("description"):
                line += f" — {show_line(b['description'])}"
            self.parts.append(line)
        elif kind == "resource" and isinstance(b.get("resource"), dict):
            self.resource(b["resource"])
        elif kind == "audio":
            self.parts.append(
                f"[audio ({show_line(b.get('mimeType', '?'))}) not shown: the model cannot hear]"
            )
        else:
            self.parts.append(f"[content of type {show_line(kind)!r} not shown]")


def _said_in_text(structured: Any, blocks: list[Any]) -> bool:
    """Whether a text block already carries the structured content (servers should send both;
    the SDK's servers wrap a plain return value as {"result": value})."""
    same = [structured]
    if isinstance(structured, dict) and list(structured) == ["result"]:
        same.append(structured["result"])
    for b in blocks:
        if not (isinstance(b, dict) and b.get("type") == "text"):
            continue
        text = b.get("text", "")
        if text in same:
            return True
        try:
            if json.loads(text) in same:
                return True
        except ValueError:
            continue
    return False


def render_result(raw: dict[str, Any], limits: RenderLimits | None = None) -> ToolResult:
    """Render a `tools/call` result in its wire form (`content`, `structuredContent`, `isError`)."""
    r = _Renderer(limits or RenderLimits())
    blocks = raw.get("content") if isinstance(raw.get("content"), list) else []
    for b in blocks:
        r.block(b)
    structured = raw.get("structuredContent")
    if structured is not None and not _said_in_text(structured, blocks):
        dumped = json.dumps(structured, indent=2, ensure_ascii=False)
        r.parts.append("structured content:\n" + show_block(dumped))
    text = "\n".join(p for p in r.parts if p) or "(no output)"
    total = len(text)
    text = _cap(text, r.limits.text_chars)
    ok = raw.get("isError") is not True
    if not ok:
        text = "Error: the tool reported a failure:\n" + text
    details = {"images": len(r.images), "output_chars": total, "is_error": not ok}
    return ToolResult(ok, text, r.images, details)
