"""mlx_lm.server (the real server) whose model is forced to write a fixed text, for tests of what
it sends back (reasoning, tool calls). Run: python tests/forced_mlx_server.py SCRIPT --model DIR
--port P (then mlx_lm.server's own arguments). Requests should set a seed: mlx_lm then runs them
one at a time, without batching."""

import sys

import mlx.core as mx
import mlx_lm.server as server

SCRIPT = sys.argv.pop(1)
_load = server.load


class Forced:
    """The real model, its last logits replaced so greedy decoding writes SCRIPT, then eos. The
    place in SCRIPT is the longest prefix of it the tokens fed so far end with."""

    def __init__(self, model, script, eos):
        self._model, self._script, self._eos, self._fed = model, script, eos, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, inputs, cache=None, **kw):
        out = self._model(inputs, cache=cache, **kw)
        self._fed = (self._fed + inputs.reshape(-1).tolist())[-4096:]
        s, fed = self._script, self._fed
        k = max(k for k in range(min(len(s), len(fed)) + 1) if k == 0 or fed[-k:] == s[:k])
        forced = mx.full(out.shape[-1:], -1e9)
        forced[s[k] if k < len(s) else self._eos] = 0.0
        return mx.concatenate([out[:, :-1], out[:, -1:] * 0 + forced], axis=1)


def load(*args, **kw):
    model, tokenizer, *rest = _load(*args, **kw)
    ids = tokenizer.encode(SCRIPT, add_special_tokens=False)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return (Forced(model, ids, eos), tokenizer, *rest)


server.load = load
server.main()
