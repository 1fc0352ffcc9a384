"""The memory plan: weights, the live caches of the sequences that run at once, the prompt-cache
budget, and the longest context that fits what is left (at load, in /health, the Server view and
`locus doctor`). The default snapshot budget is derived from free memory, not a fixed size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MB = 1024**2
GB = 1024**3
MIN_BUDGET = 256 * MB
MAX_BUDGET = 64 * GB
KV_GROUP = 64  # mlx-lm's QuantizedKVCache group size: one scale and one bias per 64 values


# Qwen3.6-35B-A3B's text config (the shapes that set its cache sizes) and its 4-bit weights, for a
# plan made before any checkpoint is on the machine (`locus doctor`).
QWEN36_CONFIG: dict[str, Any] = {
    "text_config": {
        "num_hidden_layers": 40,
        "full_attention_interval": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 262144,
    }
}
QWEN36_4BIT_WEIGHTS = 20 * GB


def _text(config: dict[str, Any]) -> dict[str, Any]:
    tc = config.get("text_config")
    return tc if isinstance(tc, dict) else config


def kv_bytes_per_token(config: dict[str, Any], hybrid: bool, kv_bits: int | None = None) -> int:
    """Keys + values of one token over the full-attention layers (16-bit, or `kv_bits` with their
    16-bit scales and biases per group)."""
    tc = _text(config)
    layers = int(tc.get("num_hidden_layers", 0))
    interval = int(tc.get("full_attention_interval", 4)) if hybrid else 1
    n_full = layers // interval if interval else layers
    heads = int(tc.get("num_attention_heads", 1))
    kv = int(tc.get("num_key_value_heads", heads))
    hd = int(tc.get("head_dim") or int(tc.get("hidden_size", 0)) // max(heads, 1))
    per_value = 2.0 if not kv_bits else kv_bits / 8 + 2 * 2 / KV_GROUP
    return int(2 * n_full * kv * hd * per_value)


def state_bytes(config: dict[str, Any], hybrid: bool) -> int:
    """One sequence's Gated DeltaNet state (float32 recurrent state + 16-bit conv window)."""
    if not hybrid:
        return 0
    tc = _text(config)
    layers = int(tc.get("num_hidden_layers", 0))
    interval = int(tc.get("full_attention_interval", 4))
    n_linear = layers - (layers // interval if interval else layers)
    dk, dv = int(tc.get("linear_key_head_dim", 0)), int(tc.get("linear_value_head_dim", 0))
    nk, nv = int(tc.get("linear_num_key_heads", 0)), int(tc.get("linear_num_value_heads", 0))
    conv_dim = 2 * nk * dk + nv * dv
    kernel = int(tc.get("linear_conv_kernel_dim", 4))
    return n_linear * (nv * dk * dv * 4 + (kernel - 1) * conv_dim * 2)


def default_snapshot_budget(free: int, reserved: int = 0) -> int:
    """Half of what stays free once the live caches are reserved, within [256 MB, 64 GB]."""
    return max(MIN_BUDGET, min(MAX_BUDGET, (free - reserved) // 2))


@dataclass(frozen=True)
class MemoryPlan:
    """Where this machine's memory goes with the model loaded (bytes unless named otherwise)."""

    weights_bytes: int
    free_bytes: int  # what the process may still use beside the weights
    kv_bytes_per_token: int
    state_bytes: int  # one sequence's linear-attention state
    sequences: int  # sequences whose caches are live at once (a batch)
    context_tokens: int  # the context reserved per sequence
    snapshot_budget_bytes: int
    overhead_bytes: int
    kv_bits: int = 0  # 0: 16-bit KV
    model_context: int = 0  # the model's own longest context (0: not known), a cap on what fits

    def _cap(self, n: int) -> int:
        return min(n, self.model_context) if self.model_context else n

    @property
    def live_cache_bytes(self) -> int:
        return self.sequences * (self.context_tokens * self.kv_bytes_per_token + self.state_bytes)

    @property
    def live_room_bytes(self) -> int:
        """What the batch's live caches may take together: free memory less the snapshot budget
        and the working margin (admission checks against it)."""
        return max(0, self.free_bytes - self.overhead_bytes - self.snapshot_budget_bytes)

    def sequence_bytes(self, tokens: int) -> int:
        """The live cache of one sequence of `tokens` tokens (its KV and its linear-attention state)."""
        return self._cap(tokens) * self.kv_bytes_per_token + self.state_bytes

    @property
    def context_fits_tokens(self) -> int:
        """The longest context each sequence may grow to once the snapshot budget is set aside."""
        left = self.free_bytes - self.overhead_bytes - self.snapshot_budget_bytes
        left -= self.sequences * self.state_bytes
        return self._cap(max(0, left // max(1, self.sequences * self.kv_bytes_per_token)))

    @property
    def context_fits_one_tokens(self) -> int:
        """The longest context of one sequence running alone (one long conversation)."""
        left = self.free_bytes - self.overhead_bytes - self.snapshot_budget_bytes - self.state_bytes
        return self._cap(max(0, left // max(1, self.kv_bytes_per_token)))

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["live_cache_bytes"] = self.live_cache_bytes
        d["context_fits_tokens"] = self.context_fits_tokens
        d["context_fits_one_tokens"] = self.context_fits_one_tokens
        return d

    def summary(self) -> str:
        """One line for a person: where the memory goes and what context fits."""
        kv = f"{self.kv_bits}-bit KV" if self.kv_bits else "16-bit KV"
        return (
            f"weights {self.weights_bytes / GB:.1f} GB, live caches {self.live_cache_bytes / GB:.1f} GB "
            f"({self.sequences} x {self.context_tokens:,} tokens, {kv}, "
            f"{self.kv_bytes_per_token / 1024:.0f} KB/token), prompt-cache snapshots "
            f"{self.snapshot_budget_bytes / GB:.1f} GB, free {self.free_bytes / GB:.1f} GB: "
            f"a context of {self.context_fits_tokens:,} tokens fits each of {self.sequences}, "
            f"{self.context_fits_one_tokens:,} one alone"
        )


def plan_memory(
    config: dict[str, Any],
    *,
    hybrid: bool,
    weights: int,
    free: int,
    context_tokens: int,
    kv_bits: int | None = None,
    sequences: int = 1,
    snapshot_budget: int | None = None,
) -> MemoryPlan:
    """The plan for a model (its config) with `weights` loaded and `free` bytes beside them;
    `snapshot_budget` None: the default derived from free memory."""
    kv = kv_bytes_per_token(config, hybrid, kv_bits)
    state = state_bytes(config, hybrid)
    overhead = max(512 * MB, weights // 20)
    live = sequences * (context_tokens * kv + state)
    budget = (
        snapshot_budget if snapshot_budget is not None else default_snapshot_budget(free, live + overhead)
    )
    most = int(_text(config).get("max_position_embeddings") or 0)
    return MemoryPlan(
        weights, free, kv, state, sequences, context_tokens, budget, overhead, kv_bits or 0, most
    )


def plan_loaded(
    loaded: Any, *, free: int, context_tokens: int, sequences: int = 1, snapshot_budget: int | None = None
) -> MemoryPlan:
    """The plan for a loaded model (engine.loader.LoadedModel), with `free` measured now that its
    weights are in (engine.loader.available_memory)."""
    info = loaded.info
    return plan_memory(
        loaded.config,
        hybrid=info.is_qwen_moe,
        weights=info.weight_bytes,
        free=free,
        context_tokens=context_tokens,
        kv_bits=int(getattr(loaded.model, "kv_bits", 0) or 0),
        sequences=sequences,
        snapshot_budget=snapshot_budget,
    )
