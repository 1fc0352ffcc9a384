"""A chat conversation exported for people (Markdown) and programs (JSON).

Both hold what the conversation shows (the path to its head) with its settings and images (as
`data:` URLs, so one file is complete); JSON also keeps every earlier version (the whole tree), and
its messages take the OpenAI chat shape, so they can be sent back to `/v1/chat/completions`.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from .chat_session import Loaded, message_text
from .store import path_to

__all__ = ["EXPORT_VERSION", "to_json", "to_markdown"]

EXPORT_VERSION = 1


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _data_url(images: dict[str, tuple[str, bytes]], sha: str) -> str | None:
    found = images.get(sha)
    if found is None:
        return None
    return f"data:{found[0]};base64,{base64.b64encode(found[1]).decode('ascii')}"


def to_markdown(loaded: Loaded) -> str:
    """The conversation as Markdown: a heading per message, reasoning folded in <details>."""
    t = loaded.thread
    meta = t.meta
    lines = [f"# {t.title or 'Conversation'}", ""]
    about = [f"Exported from Locus on {_date(time.time())}", f"started {_date(t.created)}"]
    if t.model:
        about.append(f"model {t.model}")
    settings = ", ".join(
        f"{k} {meta[k]}" for k in ("preset", "temperature", "top_p", "max_tokens") if k in meta
    )
    if settings:
        about.append(settings)
    lines += ["*" + " · ".join(about) + "*", ""]
    if meta.get("system"):
        lines += ["## System prompt", "", str(meta["system"]), ""]
    for m in loaded.messages:
        lines += _markdown_message(m, loaded.images)
    return "\n".join(lines).rstrip() + "\n"


def _markdown_message(m: dict[str, Any], images: dict[str, tuple[str, bytes]]) -> list[str]:
    role = m.get("role")
    who = {"user": "You", "assistant": "Locus", "tool": "Tool result"}.get(str(role), str(role))
    out = [f"## {who}", ""]
    content = m.get("content")
    for p in content if isinstance(content, list) else []:
        if isinstance(p, dict) and p.get("type") == "image":
            url = _data_url(images, str(p.get("attachment")))
            name = str(p.get("name") or "image").replace("]", "")
            out += [f"![{name}]({url})" if url else f"*(image {name} missing)*", ""]
        elif isinstance(p, dict) and "file" in p:
            out += [f"*Attached file: {p['file']}*", ""]
    if m.get("reasoning_content"):
        out += [
            "<details><summary>Reasoning</summary>",
            "",
            str(m["reasoning_content"]).strip(),
            "",
            "</details>",
            "",
        ]
    text = message_text(m)
    if text.strip():
        out += [text.rstrip(), ""]
    for c in m.get("tool_calls") or []:
        fn = c.get("function", {}) if isinstance(c, dict) else {}
        args = json.dumps(fn.get("arguments"), ensure_ascii=False)
        out += [f"*Tool call:* `{fn.get('name')}` `{args}`", ""]
    return out


def _wire(m: dict[str, Any], images: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """A stored message in the OpenAI chat shape (images as data: URLs)."""
    out = {k: v for k, v in m.items() if k != "meta"}
    if isinstance(m.get("content"), list):
        parts = []
        for p in m["content"]:
            if isinstance(p, dict) and p.get("type") == "image":
                url = _data_url(images, str(p.get("attachment")))
                parts.append(
                    {"type": "image_url", "image_url": {"url": url}} if url else {"type": "text", "text": ""}
                )
            elif isinstance(p, dict):
                parts.append({"type": "text", "text": str(p.get("text") or "")})
        out["content"] = parts
    return out


def _kept(m: dict[str, Any], images: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """A message with the window's notes (footer, how it ended) kept."""
    return _wire(m, images) | ({"meta": m["meta"]} if "meta" in m else {})


def to_json(loaded: Loaded) -> str:
    """The conversation as JSON: settings, the messages shown, and every version (`tree`)."""
    t = loaded.thread
    shown = path_to(loaded.head, loaded.nodes)
    messages = [_wire(n.message, loaded.images) for n in shown]
    system = t.meta.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    doc = {
        "locus_export": EXPORT_VERSION,
        "id": t.id,
        "title": t.title,
        "model": t.model,
        "created": t.created,
        "updated": t.updated,
        "settings": t.meta,
        "messages": messages,
        "tree": {
            "head": loaded.head,
            "nodes": [
                {
                    "uid": n.uid,
                    "parent": n.parent,
                    "created": n.created,
                    "message": _kept(n.message, loaded.images),
                }
                for n in loaded.nodes
            ],
        },
    }
    return json.dumps(doc, ensure_ascii=False, indent=1)
