"""Constrained decoding: what a request's output must match, as an llguidance grammar, and the
per-request logits processor that masks every token the grammar forbids.

Three kinds of constraint, one grammar each (Lark, compiled by llguidance):
- a JSON schema or any JSON object (`GenerationRequest.response_format`), with compact whitespace;
- Qwen's XML tool calls (`<tool_call>\\n<function=NAME>\\n<parameter=K>\\nV\\n</parameter>\\n...`),
  built from the offered tools' schemas (the format engine/parser.py reads back): the name one of
  the tools, parameter names from the schema, strings raw, other values JSON of their schema,
  required parameters present, the call closed; at most one call without parallel tool calls;
- both, when a reply may either answer in JSON or call a tool.

The reasoning stays free: the constraint begins after `</think>` (only the end of the reply is
forbidden inside it, so a thinking budget or the model closes it). No MLX import at module level:
request validation checks schemas without a model.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from .errors import RequestError
from .parser import tool_schemas

# Compact JSON: no whitespace between tokens, so a weak model cannot wander in blank space.
_COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# A raw string value runs to the first "\n</parameter>\n" (the value and its closing in one lexeme:
# llguidance's lexer is greedy, so a separate closing terminal could never start).
_RAW_VALUE = r"/(?s:.*)\n<\/parameter>\n/ & ~/(?s:.*)<\/parameter>(?s:.)(?s:.+)/"
# The longest minLength/maxLength a raw string value is held to.
_RAW_BOUND = 1000
# Tags Qwen's tokenizer has as single added tokens, which llguidance matches as tokens, not bytes.
_TAGS = ("<tool_call>", "</tool_call>")
_FORMATS = ("json_schema", "json_object")


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:  # a runtime dependency; say how to get it back
        raise RequestError(
            "structured outputs need the llguidance package: pip install 'llguidance>=1.9'"
        ) from e
    return llguidance


# -- which constraint a request has ----------------------------------------------------------------


def response_schema(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks for (`{"type": "json_object"}` is any object);
    None for free text. RequestError for a format that is not one of these."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in (*_FORMATS, "text"):
        raise RequestError(
            f"response_format must be {{'type': 'json_schema', 'schema': {{...}}}}, "
            f"{{'type': 'json_object'}} or {{'type': 'text'}} (got {fmt!r})"
        )
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "object"}
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise RequestError("response_format json_schema needs its schema as a JSON object")
    return schema


def is_strict(tool: dict[str, Any]) -> bool:
    """An OpenAI-style tool (`function.strict`) or a bare / Anthropic one (`strict`) marked strict."""
    spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    return spec.get("strict") is True


def constrains_calls(tools: list[dict[str, Any]] | None, tool_choice: str) -> bool:
    """Whether tool calls are constrained: a forced call, or a strict tool offered."""
    if not tools or tool_choice == "none":
        return False
    return tool_choice != "auto" or any(isinstance(t, dict) and is_strict(t) for t in tools)


def constrained(req: Any) -> bool:
    """Whether a GenerationRequest's output is constrained at all."""
    return response_schema(req.response_format) is not None or constrains_calls(
        req.rendered_tools, req.tool_choice
    )


def check_schema(schema: dict[str, Any], where: str = "response_format") -> None:
    """RequestError naming what of `schema` the engine cannot enforce (never ignored silently)."""
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides={**_COMPACT, "lenient": False})
    except (ValueError, TypeError) as e:
        raise RequestError(f"{where}: not a JSON schema ({e})") from None
    bad, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if bad:
        raise RequestError(f"{where}: the schema uses what the engine cannot enforce: {'; '.join(messages)}")


# -- grammars ----------------------------------------------------------------------------------------


def _json_rule(schema: dict[str, Any], *, lenient: bool) -> str:
    # Options travel in the schema's x-guidance (llguidance's way inside a Lark grammar).
    return "%json " + json.dumps({**schema, "x-guidance": {**_COMPACT, "lenient": lenient}})


def _lit(text: str) -> str:
    return json.dumps(text)


def _raw_terminal(prop: dict[str, Any]) -> str:
    """A raw string value and its closing; `minLength`/`maxLength` bound it (so even a weak model
    ends the value), otherwise any text without `</parameter>`."""
    lo, hi = prop.get("minLength"), prop.get("maxLength")
    lo = lo if isinstance(lo, int) and 0 <= lo <= _RAW_BOUND else None
    hi = hi if isinstance(hi, int) and 0 <= hi <= _RAW_BOUND else None
    if lo is None and hi is None:  # long bounds exhaust llguidance's lexer fuel: left to the parser
        return _RAW_VALUE
    span = f"{{{lo if isinstance(lo, int) else 0},{hi if isinstance(hi, int) else ''}}}"
    return _RAW_VALUE.replace("/(?s:.*)\\n<", f"/(?s:.{span})\\n<", 1)


def _param_rule(name: str, key: str, prop: Any, defs: dict[str, Any]) -> list[str]:
    """Rules of `<parameter=K>\\nV\\n</parameter>\\n` (rule `name`): a string raw (an enum one of
    its values), others JSON of their schema."""
    head = _lit(f"<parameter={key}>\n")
    prop = prop if isinstance(prop, dict) else {}
    types = prop.get("type")
    if types == "string" and isinstance(prop.get("enum"), list):
        alts = " | ".join(_lit(f"{v}\n</parameter>\n") for v in prop["enum"] if isinstance(v, str))
        if alts:
            return [f"{name}: {head} ({alts})"]
    if types == "string" or not prop or (isinstance(types, list) and "string" in types):
        term = name.upper()  # the parser reads any text as such a value
        return [f"{name}: {head} {term}", f"{term}: {_raw_terminal(prop)}"]
    schema = {**prop, **({"$defs": defs} if defs and "$defs" not in prop else {})}
    return [f"{name}: {head} {_json_rule(schema, lenient=True)} {_lit(chr(10) + '</parameter>' + chr(10))}"]


def _function_rules(i: int, name: str, schema: dict[str, Any]) -> tuple[str, list[str]]:
    """The rule of one tool's call body (after `<function=`), and the rules it needs."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    req = schema.get("required") if isinstance(schema.get("required"), list) else []
    defs = schema.get("$defs") or schema.get("definitions") or {}
    rules, parts = [], []
    for j, (key, prop) in enumerate(props.items()):
        rules += _param_rule(f"f{i}_p{j}", key, prop, defs)
        parts.append(f"f{i}_p{j}" + ("" if key in req else "?"))
    if not props and schema.get("additionalProperties") is not False:
        # A schema that lists no parameters (an open object): any names, raw values.
        rules += [f'f{i}_any: "<parameter=" /[^<>\\n=]+/ ">\\n" F{i}_ANY', f"F{i}_ANY: {_RAW_VALUE}"]
        parts.append(f"f{i}_any*")
    # Parameters in the schema's order: required ones present, optional ones may be left out.
    body = " ".join(parts)
    rules.append(f"f{i}_fields: {body}" if body else f'f{i}_fields: ""')
    return f"f{i}_fields", rules


def tool_call_grammar(
    tools: list[dict[str, Any]], tool_choice: str, parallel: bool, tag: Any = _lit
) -> tuple[str, str]:
    """Lark rules for Qwen XML calls of `tools`: (the rules, the name of the rule of the calls).

    `tool_choice` "required" or a tool's name: the reply is only calls, and the opening of the first
    one (`<tool_call>\\n<function=`, then a forced name) is already written (the request's
    reply_prefix); otherwise ("auto") the calls are whole. `tag` renders `<tool_call>`/`</tool_call>`.
    """
    schemas = tool_schemas(tools)
    rules: list[str] = []
    bodies: dict[str, str] = {}
    for i, (name, schema) in enumerate(schemas.items()):
        args, more = _function_rules(i, name, schema if isinstance(schema, dict) else {})
        rules += more
        bodies[name] = f"f{i}"
        rules.append(f"f{i}: {_lit(name + '>' + chr(10))} {args}")
    close = f'"</function>\\n" {tag("</tool_call>")}'
    rules.append(f"fn: {' | '.join(bodies.values())}")
    rules.append(f'call: {tag("<tool_call>")} "\\n<function=" fn {close}')
    more = ' ("\\n" call)*' if parallel else ""
    if tool_choice == "auto":
        rules.append(f"calls: call{more}")
    else:
        first = "fn" if tool_choice == "required" else f"{bodies[tool_choice]}_fields"
        rules.append(f"calls: {first} {close}{more}")
    return "\n".join(rules), "calls"


def grammar(
    response_format: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None,
    tool_choice: str,
    parallel: bool,
    *,
    after_reasoning: bool = False,
    tag: Any = _lit,
) -> str | None:
    """The whole reply's Lark grammar, or None when the reply is unconstrained.

    `after_reasoning`: the grammar begins right after `</think>`, where the template's framing puts
    up to two newlines."""
    schema = response_schema(response_format)
    calls = constrains_calls(tools, tool_choice)
    if schema is None and not calls:
        return None
    lines, alts = [], []
    if calls:
        rules, name = tool_call_grammar(tools or [], tool_choice, parallel, tag)
        lines.append(rules)
        alts.append(name)
    if tool_choice in ("auto", "none") or not calls:
        if schema is not None:
            lines.append(f"answer: {_json_rule(schema, lenient=False)}")
            alts.insert(0, "answer")
        elif calls:  # strict tools, free answer: any text, then maybe the calls
            lines.append("TEXT: /(?s:.*)/")
            alts = ["TEXT calls?"]
    lead = "/\\n{0,2}/ " if after_reasoning and tool_choice in ("auto", "none") else ""
    return f"start: {lead}({' | '.join(alts)})\n" + "\n".join(lines) + "\n"


def check_request(req: Any) -> None:
    """RequestError for a constraint the engine cannot enforce (`req` a GenerationRequest)."""
    schema = response_schema(req.response_format)
    if schema is not None:
        check_schema(schema)
        if req.prefix:
            raise RequestError("a JSON response_format cannot be combined with a prefilled reply")
    if not isinstance(req.parallel_tool_calls, bool):
        raise RequestError(f"parallel_tool_calls must be true or false (got {req.parallel_tool_calls!r})")
    g = grammar(req.response_format, req.rendered_tools, req.tool_choice, req.parallel_tool_calls)
    if g is None:
        return
    llg = _llguidance()
    bad, messages = llg.LLMatcher.validate_grammar_with_warnings(llg.LLMatcher.grammar_from_lark(g))
    if bad:
        raise RequestError(f"the tools' schemas cannot be enforced: {'; '.join(messages)}")


# -- the logits processor ----------------------------------------------------------------------------

_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer (about 1 s at 248K tokens; kept per
    tokenizer). `tokenizer` is mlx-lm's wrapper or the Hugging Face tokenizer itself."""
    llg = _llguidance()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise RequestError("structured outputs need a fast (tokenizer.json) tokenizer")
    try:
        per = _TOKENIZERS.setdefault(backend, {})
    except TypeError:  # not weakly referable: no cache
        per = {}
    key = hash((vocab_size, tuple(eos_ids)))
    if key not in per:
        per[key] = llg.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_ids))
    return per[key]


def _tag_renderer(ll: Any) -> Any:
    def tag(text: str) -> str:
        ids = ll.tokenize_str(text)
        # An added token of its own (Qwen's), matched as that token; otherwise plain text.
        return text if len(ids) == 1 and ll.is_special_token(ids[0]) else _lit(text)

    return tag


class Constraint:
    """One request's constraint as a logits processor `(history, logits) -> logits`.

    Stateful, like the penalties: it advances its grammar matcher over the tokens of `history`
    (after the prompt's `start` tokens) it has not seen, rolls back those that changed (MTP
    drafts rejected), then sets every token the grammar forbids to -inf. Before `</think>` (when the
    output starts in the reasoning) it only forbids ending the reply.
    """

    def __init__(self, matcher: Any, eos_ids: list[int], start: int, think_close: int | None, vocab: int):
        self.matcher = matcher
        self.eos = list(eos_ids)
        self.start = start
        self.think_close = think_close  # None: the grammar starts with the output
        self.vocab = vocab
        self.seen: list[int] = []  # output tokens accounted for
        self.begin: int | None = 0 if think_close is None else None  # index of the grammar's first
        self.fed = 0  # of seen[begin:], tokens the matcher consumed (the rest it refused)
        self.mask: Any = None  # numpy int32 bitmask buffer

    def _sync(self, history: Any) -> None:
        n = (len(history) if isinstance(history, list) else history.size) - self.start
        # Tokens may change only near the end (MTP rolls back at most a few): compare from there.
        lo = max(0, min(len(self.seen), n) - 16)
        new = history[self.start + lo :]
        new = new if isinstance(new, list) else new.tolist()
        keep = lo
        while keep - lo < len(new) and keep < len(self.seen) and self.seen[keep] == new[keep - lo]:
            keep += 1
        if keep < len(self.seen):
            self._rollback(keep)
        for t in new[keep - lo :]:
            self._advance(int(t))

    def _rollback(self, keep: int) -> None:
        del self.seen[keep:]
        if self.begin is None:
            return
        if keep < self.begin:
            self.matcher.reset()
            self.begin, self.fed = None, 0
            return
        drop = self.fed - min(self.fed, keep - self.begin)
        if drop:
            self.matcher.rollback(drop)
            self.fed -= drop

    def _advance(self, tok: int) -> None:
        self.seen.append(tok)
        if self.begin is None:
            if tok == self.think_close:
                self.begin, self.fed = len(self.seen), 0
            return
        # A refused token (an MTP draft the mask forbids) is not consumed: the matcher never
        # enters its error state, and tokens after it are refused too until it is rolled back.
        if self.fed == len(self.seen) - 1 - self.begin and self.matcher.try_consume_tokens([tok]) == 1:
            self.fed += 1

    @property
    def dead(self) -> bool:
        """A token the grammar forbids is in the history (the row's result will be discarded)."""
        return self.begin is not None and self.fed < len(self.seen) - self.begin

    def allowed(self) -> Any:
        """The current bitmask (numpy int32, one bit a token)."""
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        if self.mask is None:
            self.mask = allocate_token_bitmask(1, self.vocab)
        fill_next_token_bitmask(self.matcher, self.mask)
        return self.mask

    def _eos_mask(self, width: int) -> Any:
        import mlx.core as mx
        import numpy as np

        flags = np.zeros(width, dtype=bool)
        flags[[e for e in self.eos if e < width]] = True
        return mx.array(flags)

    def __call__(self, history: Any, logits: Any) -> Any:
        import mlx.core as mx

        self._sync(history)
        width = logits.shape[-1]
        if self.begin is None:  # reasoning: anything but the end of the reply
            return mx.where(self._eos_mask(width), -mx.inf, logits)
        if self.dead:
            ok = self._eos_mask(width)
        else:
            words = mx.array(self.allowed()[0]).view(mx.uint32)
            bits = (words[:, None] >> mx.arange(32, dtype=mx.uint32)) & 1
            ok = bits.reshape(-1)[:width].astype(mx.bool_)
            if ok.shape[0] < width:
                ok = mx.concatenate([ok, mx.zeros((width - ok.shape[0],), dtype=mx.bool_)])
        return mx.where(ok, logits, -mx.inf)


def make_constraint(
    req: Any, tokenizer: Any, *, start: int, reasoning: bool, vocab_size: int, eos_ids: list[int]
) -> Constraint | None:
    """The request's constraint (None when its output is free). `start`: prompt tokens at the
    head of the history; `reasoning`: the output starts inside `<think>`."""
    if not constrained(req):
        return None
    llg = _llguidance()
    ll = ll_tokenizer(tokenizer, vocab_size, eos_ids)
    think_close = None
    if reasoning:
        ids = ll.tokenize_str("</think>")
        think_close = ids[0] if len(ids) == 1 else None
        if think_close is None:
            raise RequestError("this tokenizer has no </think> token to start the constraint after")
    text = grammar(
        req.response_format,
        req.rendered_tools,
        req.tool_choice,
        req.parallel_tool_calls,
        after_reasoning=reasoning,
        tag=_tag_renderer(ll),
    )
    matcher = llg.LLMatcher(ll, llg.LLMatcher.grammar_from_lark(text), log_level=0)
    if matcher.is_error():
        raise RequestError(f"the output's grammar cannot be enforced: {matcher.get_error()}")
    return Constraint(matcher, eos_ids, start, think_close, vocab_size)
