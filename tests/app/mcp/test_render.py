"""Tool results for the model: text escaped and capped, images checked, structured content, links."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from app.mcp import RenderLimits, render_result


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_text_is_escaped_and_capped():
    r = render_result({"content": [{"type": "text", "text": "a\x1b[2Jb\u202ec\nnext\tline"}]})
    assert r.ok and r.text == "a\\x1b[2Jb\\u202ec\nnext\tline"
    big = render_result({"content": [{"type": "text", "text": "x" * 5000}]}, RenderLimits(text_chars=1000))
    assert len(big.text) < 1100 and "characters omitted" in big.text
    assert big.details["output_chars"] == 5000


def test_images_become_image_parts_the_model_sees():
    r = render_result({"content": [{"type": "image", "data": _b64(_png()), "mimeType": "image/png"}]})
    assert r.images == ["data:image/png;base64," + _b64(_png())]
    assert "[image 1: PNG 8x8" in r.text
    content = r.content()
    assert content[0]["type"] == "text" and content[1] == {"type": "image", "image": r.images[0]}


def test_bad_or_too_many_images_are_notes_not_failures():
    bad = render_result({"content": [{"type": "image", "data": _b64(b"not a png"), "mimeType": "image/png"}]})
    assert bad.images == [] and "not shown" in bad.text and bad.ok
    junk = render_result({"content": [{"type": "image", "data": "!!!", "mimeType": "image/png"}]})
    assert "not valid base64" in junk.text
    many = [{"type": "image", "data": _b64(_png()), "mimeType": "image/png"}] * 6
    r = render_result({"content": many}, RenderLimits(images=2))
    assert len(r.images) == 2 and r.text.count("at most 2 images") == 4


def test_png_with_a_corrupt_ancillary_chunk_is_repaired():
    png = _png()
    chunk = b"tEXt" + b"k\x00v"
    broken = png[:33] + struct.pack(">I", 3) + chunk + struct.pack(">I", zlib.crc32(chunk) ^ 1) + png[33:]
    r = render_result({"content": [{"type": "image", "data": _b64(broken), "mimeType": "image/png"}]})
    assert len(r.images) == 1 and base64.b64decode(r.images[0].split(",", 1)[1]) == png


def test_structured_content_links_resources_and_errors():
    r = render_result(
        {
            "content": [
                {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt", "mimeType": "text/plain"},
                {"type": "resource", "resource": {"uri": "mem://n", "text": "note\x07"}},
                {"type": "resource", "resource": {"uri": "mem://b", "blob": _b64(b"\0" * 300)}},
                {"type": "audio", "data": "", "mimeType": "audio/wav"},
            ],
            "structuredContent": {"temp": 21},
            "isError": True,
        }
    )
    assert not r.ok and r.text.startswith("Error: the tool reported a failure")
    assert "[resource link] a.txt: file:///a.txt (text/plain)" in r.text
    assert "[resource mem://n]\nnote\\x07" in r.text
    assert "binary, about 300 B" in r.text and "the model cannot hear" in r.text
    assert 'structured content:\n{\n  "temp": 21\n}' in r.text


def test_structured_content_already_in_text_is_not_repeated():
    r = render_result({"content": [{"type": "text", "text": "5"}], "structuredContent": {"result": 5}})
    assert r.text == "5"
    assert render_result({"content": []}).text == "(no output)"
