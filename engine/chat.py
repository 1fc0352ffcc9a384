"""Chat formatting through the model's own chat template."""

from __future__ import annotations

import json
from typing import Any

from .errors import ChatTemplateError
from .literal import Prompt, Shield


def template_text(tokenizer: Any) -> str:
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):  # some tokenizers carry several named templates
        t = t.get("default") or next(iter(t.values()), None)
    return t or ""


def supports_preserve_thinking(tokenizer: Any) -> bool:
    """Whether the template reads `preserve_thinking` (Qwen3.6 does; older templates don't)."""
    return "preserve_thinking" in template_text(tokenizer)


def _normalize(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Templates iterate `arguments|items`, but OpenAI-style clients send arguments as a JSON string.
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ChatTemplateError(f"every message needs a 'role' (got {str(m)[:80]!r})")
        calls = m.get("tool_calls")
        if calls:
            m = dict(m)
            fixed = []
            for c in calls:
                c = dict(c)
                fn = dict(c.get("function", c))
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError as e:
                        raise ChatTemplateError(
                            f"tool call {fn.get('name')!r}: arguments are not valid JSON ({e})"
                        ) from e
                if "function" in c:
                    c["function"] = fn
                else:
                    c = fn
                fixed.append(c)
            m["tool_calls"] = fixed
        out.append(m)
    return out


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    enable_thinking: bool = True,
    preserve_thinking: bool = False,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> str:
    """The prompt text the model's template renders for this conversation."""
    return render_chat(
        tokenizer,
        messages,
        tools=tools,
        enable_thinking=enable_thinking,
        preserve_thinking=preserve_thinking,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    ).text


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    enable_thinking: bool = True,
    preserve_thinking: bool = False,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> Prompt:
    """The rendered prompt, with the content's added-token strings (`<|im_end|>`, `<|image_pad|>`,
    `<tool_call>`...) kept as plain text for tokenization (engine/literal.py)."""
    if not template_text(tokenizer):
        raise ChatTemplateError(
            "this model has no chat template (tokenizer_config.json or chat_template.jinja); "
            "use a raw prompt (--no-chat-template) instead"
        )
    if not messages:
        raise ChatTemplateError("the conversation has no messages")
    shield = Shield(tokenizer)
    try:
        text = tokenizer.apply_chat_template(
            shield.messages(_normalize(messages)),
            tools=shield.walk(tools) or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            preserve_thinking=preserve_thinking,
            **template_kwargs,
        )
    except ChatTemplateError:
        raise
    except Exception as e:  # jinja's TemplateError and the template's raise_exception
        raise ChatTemplateError(f"the chat template rejected this conversation: {e}") from e
    return shield.prompt(text)


def opens_reasoning(prompt: str) -> bool:
    """True when the prompt ends inside an open `<think>` block (output starts as reasoning)."""
    tail = prompt.rstrip()
    return tail.endswith("<think>")
