"""Find, inspect and load checkpoints: every Qwen3.5/3.6-MoE layout, quantized or not.

Loading is lazy and streaming: tensors are read from the safetensors files only when the final
(stacked, renamed) parameters are evaluated, so peak memory stays near the checkpoint's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InsufficientMemoryError, LoadCancelled, ModelLoadError
from .model import QWEN_MOE_TYPES, text_config

GB = 1024**3
DEFAULT_CONTEXT_TOKENS = 32_768
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class CheckpointInfo:
    """What a checkpoint directory holds, read from its headers without loading any tensor."""

    path: Path
    config: dict[str, Any]
    files: list[Path]
    tensors: dict[str, TensorInfo]
    layout: str  # "per_expert" | "fused" | "mlx" | "other"
    quantization: dict[str, Any] | None

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def is_qwen_moe(self) -> bool:
        return self.model_type in QWEN_MOE_TYPES

    @property
    def weight_bytes(self) -> int:
        """Bytes of the tensors that get loaded (an MTP head only when it has its layer)."""
        head = any(_is_mtp(k) and ".layers." in k for k in self.tensors)
        return sum(t.nbytes for k, t in self.tensors.items() if head or not _is_mtp(k))

    @property
    def file_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class MemoryEstimate:
    weights: int
    cache: int
    overhead: int
    context_tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.cache + self.overhead


@dataclass
class LoadedModel:
    """A model ready for generation: the MLX module, its tokenizer and what the engine needs."""

    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict[str, Any]
    path: Path
    eos_token_ids: list[int]
    kind: str  # "qwen3_5_moe" (Locus's model) or "mlx_lm" (text-only via mlx-lm)
    model_id: str
    info: CheckpointInfo
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    @property
    def has_vision_weights(self) -> bool:
        return bool(getattr(self.model, "vision_tower", None))


def _is_mtp(key: str) -> bool:
    return key.startswith("mtp.") or ".mtp." in key or key.startswith("model.mtp")


def resolve_model_path(path_or_repo: str | os.PathLike[str]) -> Path:
    """A local directory, or a Hugging Face repo id already in the local cache (never downloads)."""
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ModelLoadError(f"{p} is a file; give the model's directory (the one with config.json)")
    text = str(path_or_repo)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception as e:  # the hub raises several types for "not cached"
            raise ModelLoadError(
                f"model {text!r} is not in the local Hugging Face cache ({type(e).__name__}). "
                f"Download it first with `hf download {text}` (the `hf` command comes with "
                "huggingface-hub and needs the network), or give a directory."
            ) from e
    raise ModelLoadError(f"model directory not found: {p}")


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors header; errors name the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{file.name}: file is truncated (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > 100 * 1024 * 1024 or 8 + n > size:
                raise ModelLoadError(f"{file.name}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelLoadError(f"{file.name}: cannot read ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{file.name}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file.name}: corrupt safetensors header")
    out: dict[str, TensorInfo] = {}
    data_size = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = meta["dtype"], tuple(int(s) for s in meta["shape"])
            start, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{file.name}: corrupt entry for tensor {name!r}") from e
        if end > data_size or start > end:
            raise ModelLoadError(
                f"{file.name}: tensor {name!r} lies past the end of the file "
                f"(the file is truncated: {size} bytes)"
            )
        count = 1
        for s in shape:
            count *= s
        nbytes = count * _DTYPE_BYTES.get(dtype, 0)
        if dtype in _DTYPE_BYTES and nbytes != end - start:
            raise ModelLoadError(
                f"{file.name}: tensor {name!r} has {end - start} bytes, shape {list(shape)} "
                f"{dtype} needs {nbytes}"
            )
        out[name] = TensorInfo(file.name, dtype, shape, end - start)
    return out


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path.parent}: no {path.name} ({what})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def inspect_checkpoint(path_or_repo: str | os.PathLike[str]) -> CheckpointInfo:
    """Read config and safetensors headers; detect the expert layout and quantization."""
    path = resolve_model_path(path_or_repo)
    config = _read_json(path / "config.json", "every model directory needs its config.json")
    index = path / "model.safetensors.index.json"
    if index.exists():
        wm = _read_json(index, "shard index").get("weight_map", {})
        files = sorted({path / f for f in wm.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{path}: shard(s) listed in the index are missing: {missing}")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no .safetensors weight files")
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        tensors.update(read_safetensors_header(f))
    keys = tensors.keys()
    if any(".switch_mlp." in k for k in keys):
        layout = "mlx"
    elif any(k.endswith("experts.gate_up_proj") for k in keys):
        layout = "fused"
    elif any(".experts.0." in k for k in keys):
        layout = "per_expert"
    else:
        layout = "other"
    q = config.get("quantization") or config.get("quantization_config")
    if q is not None and not (isinstance(q, dict) and "bits" in q and "group_size" in q):
        method = q.get("quant_method", "unknown") if isinstance(q, dict) else q
        raise ModelLoadError(
            f"{path}: quantization method {method!r} is not supported; use an MLX checkpoint "
            "or convert the original with `locus convert`"
        )
    return CheckpointInfo(path, config, files, tensors, layout, q)


def estimate_memory(
    info: CheckpointInfo, context_tokens: int = DEFAULT_CONTEXT_TOKENS, kv_bits: int | None = None
) -> MemoryEstimate:
    """Weights + KV cache for `context_tokens` (16-bit, or `kv_bits`) + recurrent state + a working
    margin. A context above the model's max_position_embeddings is capped there, as it is served."""
    tc = text_config(info.config)
    most = int(tc.get("max_position_embeddings") or 0)
    if most:
        context_tokens = min(context_tokens, most)
    layers = int(tc.get("num_hidden_layers", 0))
    interval = int(tc.get("full_attention_interval", 4)) if info.is_qwen_moe else 1
    n_full = layers // interval if interval else layers
    n_linear = layers - n_full
    heads = int(tc.get("num_attention_heads", 1))
    kv = int(tc.get("num_key_value_heads", heads))
    hd = int(tc.get("head_dim") or int(tc.get("hidden_size", 0)) // max(heads, 1))
    kv_bytes = 2 * n_full * kv * hd * 2 * context_tokens  # keys + values, 16-bit
    if kv_bits and info.is_qwen_moe:  # quantized values plus their scales and biases
        from .memplan import kv_bytes_per_token

        kv_bytes = kv_bytes_per_token(info.config, True, kv_bits) * context_tokens
    state = 0
    if info.is_qwen_moe:
        dk, dv = int(tc.get("linear_key_head_dim", 0)), int(tc.get("linear_value_head_dim", 0))
        nk, nv = int(tc.get("linear_num_key_heads", 0)), int(tc.get("linear_num_value_heads", 0))
        conv_dim = 2 * nk * dk + nv * dv
        state = n_linear * (nv * dk * dv * 4 + 3 * conv_dim * 2)
    weights = info.weight_bytes
    overhead = max(512 * 1024**2, weights // 20)
    return MemoryEstimate(weights, kv_bytes + state, overhead, context_tokens)


def available_memory() -> int:
    """Memory a model may use: Metal's recommended working set on macOS, MemAvailable on Linux."""
    env = os.environ.get("LOCUS_MEMORY_LIMIT_GB")
    if env:
        return int(float(env) * GB)
    try:
        import mlx.core as mx

        info = mx.device_info()
        rec = info.get("max_recommended_working_set_size")
        if rec:  # a budget for the process: what MLX holds now (a loaded model) is not free
            return max(0, int(rec) - mx.get_active_memory())
    except Exception:  # device_info is missing on some builds; fall through to the OS
        pass
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(
    info: CheckpointInfo, context_tokens: int = DEFAULT_CONTEXT_TOKENS, kv_bits: int | None = None
) -> MemoryEstimate:
    """Raise InsufficientMemoryError when the model cannot fit; return the estimate otherwise."""
    est = estimate_memory(info, context_tokens, kv_bits)
    avail = available_memory()
    if avail and est.total > avail:
        raise InsufficientMemoryError(
            est.total,
            avail,
            f"weights {est.weights / GB:.1f} GB + {est.context_tokens}-token context "
            f"{est.cache / GB:.1f} GB + margin {est.overhead / GB:.1f} GB",
        )
    return est


def _configure_metal(est: MemoryEstimate) -> None:
    """On Metal, wire what the model needs (never more than the recommended working set).

    Several processes each wiring 75% of RAM can panic the kernel (mlx-lm #883), so wire only the
    estimate; keep MLX's buffer cache small so freed activations go back to the system.
    """
    import mlx.core as mx

    if not mx.metal.is_available():
        return  # CPU and CUDA backends have no wired memory
    rec = int(mx.device_info().get("max_recommended_working_set_size", 0))
    if rec:
        mx.set_wired_limit(min(est.total, rec))
    mx.set_cache_limit(min(2 * GB, max(est.total // 10, 256 * 1024**2)))


def _eos_ids(path: Path, config: dict[str, Any], tokenizer: Any) -> tuple[list[int], dict]:
    ids: list[int] = []
    gen: dict[str, Any] = {}
    if (path / "generation_config.json").exists():
        gen = _read_json(path / "generation_config.json", "generation config")
    for src in (gen.get("eos_token_id"), config.get("eos_token_id"), text_config(config).get("eos_token_id")):
        for i in [src] if isinstance(src, int) else (src or []):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(tok_eos, int) and tok_eos not in ids:
        ids.append(tok_eos)
    return ids, gen


# Config fields that must be positive whole numbers, with upper bounds where a typo would otherwise
# surface as an overflow deep inside MLX (vocab_size 1e12) or a division by zero (zero heads).
_POSITIVE_INTS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 20,
    "num_hidden_layers": 1 << 12,
    "num_attention_heads": 1 << 12,
    "num_key_value_heads": 1 << 12,
    "head_dim": 1 << 14,
    "intermediate_size": 1 << 22,
    "moe_intermediate_size": 1 << 22,
    "shared_expert_intermediate_size": 1 << 22,
    "num_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16,
    "linear_key_head_dim": 1 << 14,
    "linear_value_head_dim": 1 << 14,
    "linear_num_key_heads": 1 << 12,
    "linear_num_value_heads": 1 << 12,
    "linear_conv_kernel_dim": 1 << 10,
    "max_position_embeddings": 1 << 31,
    "depth": 1 << 12,
    "num_heads": 1 << 12,
    "patch_size": 1 << 12,
    "out_hidden_size": 1 << 20,
}


def _json_kind(v: Any) -> str:
    kinds = {
        list: "a list",
        str: "a string",
        bool: "true/false",
        float: "a fraction",
        type(None): "null",
        dict: "an object",
        int: "a number",
    }
    return kinds.get(type(v), type(v).__name__)


def check_config(config: dict[str, Any], where: Path | str = "config.json") -> None:
    """Refuse a config whose shape or numbers cannot describe a model, in one line naming the
    field (instead of a traceback from deep inside the model's constructor)."""
    if not isinstance(config.get("model_type", ""), str):
        raise ModelLoadError(f"{where}: model_type must be a string, not {_json_kind(config['model_type'])}")
    subs = {}
    for key in ("text_config", "vision_config"):
        v = config.get(key)
        if v is not None and not isinstance(v, dict):
            raise ModelLoadError(f"{where}: {key} must be a JSON object, not {_json_kind(v)}")
        subs[key] = v or {}
    text = subs["text_config"] or config
    for scope, section in (("", text), ("vision_config.", subs["vision_config"])):
        for k, hi in _POSITIVE_INTS.items():
            if k not in section:
                continue
            v = section[k]
            if isinstance(v, bool) or not isinstance(v, int):
                raise ModelLoadError(
                    f"{where}: {scope}{k} must be a whole number, not {_json_kind(v)} ({json.dumps(v)[:40]})"
                )
            if not 1 <= v <= hi:
                raise ModelLoadError(f"{where}: {scope}{k} = {v} is out of range (1 to {hi:,})")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _load_tokenizer(path: Path) -> Any:
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelLoadError(
            f"{path}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json) in the model directory"
        )
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from .mlxlm_compat import set_chat_template

    try:
        tok = load_tokenizer(path)
    except Exception as e:
        msg = _one_line(e)
        if "validat" in msg.lower() or "Field '" in msg:  # transformers checking config.json
            raise ModelLoadError(f"{path / 'config.json'}: invalid config: {msg}") from e
        raise ModelLoadError(f"{path}: tokenizer cannot be loaded: {msg}") from e
    if tok.chat_template is None and (path / "chat_template.jinja").exists():
        set_chat_template(tok, (path / "chat_template.jinja").read_text(encoding="utf-8"))
    return tok


def _model_id(info: CheckpointInfo) -> str:
    h = hashlib.sha256(json.dumps(info.config, sort_keys=True).encode())
    for f in info.files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _quant_predicate(q: dict[str, Any], weight_keys: set[str]):
    def predicate(path: str, module: Any) -> bool | dict[str, Any]:
        if path in q:
            spec = q[path]
            return spec if isinstance(spec, dict) else bool(spec)
        return hasattr(module, "to_quantized") and f"{path}.scales" in weight_keys

    return predicate


def _load_qwen(info: CheckpointInfo, lazy: bool = False, steps: _Steps | None = None) -> Any:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    from .model import Model, WeightError

    try:
        model = Model(info.config)
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
        OverflowError,
        ZeroDivisionError,
    ) as e:
        raise ModelLoadError(
            f"{info.path / 'config.json'}: invalid model config: {type(e).__name__}: {_one_line(e)}"
        ) from e
    steps = steps or _Steps()
    source = {}
    for f in info.files:
        steps.step()
        try:
            source.update(mx.load(str(f)))
        except Exception as e:
            raise ModelLoadError(f"{f.name}: cannot read weights: {e}") from e
    origin: dict[str, str] = {}
    try:
        weights = model.sanitize(source, origin)
    except WeightError as e:
        t = info.tensors.get(e.key)
        raise ModelLoadError(f"{info.path / t.file if t else info.path}: {e}") from e
    del source
    q = info.quantization
    if q is not None:
        nn.quantize(
            model.language_model,
            group_size=int(q["group_size"]),
            bits=int(q["bits"]),
            mode=q.get("mode", "affine"),
            class_predicate=_quant_predicate(
                {k.removeprefix("language_model."): v for k, v in q.items()},
                {k.removeprefix("language_model.") for k in weights},
            ),
        )
    text = _text_weights(info, model, weights, origin)
    model.language_model.update(tree_unflatten(list(text.items())))
    model.vision_tower = {
        k.removeprefix("vision_tower."): v for k, v in weights.items() if k.startswith("vision_tower.")
    }
    _attach_mtp(model, weights, info)
    del weights, text, origin
    if lazy:
        return model
    try:
        # mx.load is lazy: the weights are read here, a layer at a time so a cancel stops the read.
        for group in steps.groups(tree_flatten(model.parameters())):
            mx.eval(group)
    except LoadCancelled:
        raise
    except Exception as e:
        raise ModelLoadError(f"{info.path}: reading weights failed: {e}") from e
    model.eval()
    return model


def _text_weights(
    info: CheckpointInfo, model: Any, weights: dict[str, Any], origin: dict[str, str]
) -> dict[str, Any]:
    """The language model's weights (prefix dropped), checked against what the config implies:
    ModelLoadError names a missing, unused or misshapen weight and the file that holds it."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.language_model.parameters()))
    text = {
        k.removeprefix("language_model."): v for k, v in weights.items() if k.startswith("language_model.")
    }
    missing = sorted(set(expected) - set(text))
    if missing:
        raise ModelLoadError(
            f"{info.path}: checkpoint is missing {len(missing)} weight(s) the model needs, "
            f"e.g. {missing[:3]} (layout {info.layout!r}; is the config for this checkpoint?)"
        )
    unexpected = sorted(set(text) - set(expected))
    if unexpected:
        raise ModelLoadError(
            f"{info.path}: checkpoint has {len(unexpected)} weight(s) this model does not use, "
            f"e.g. {unexpected[:3]} — the config and the weights do not match"
        )
    for k, v in text.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            src_key = origin.get("language_model." + k, k)
            t = info.tensors.get(src_key)
            raise ModelLoadError(
                f"{info.path / t.file if t else info.path}: weight {src_key!r} has shape "
                f"{list(v.shape)}, the config implies {list(expected[k].shape)}"
            )
    return text


class _Steps:
    """Checks `should_stop` and reports `progress(done, total)` between shards and weight groups."""

    def __init__(
        self,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        total: int = 0,
    ) -> None:
        self.should_stop, self.progress = should_stop, progress
        self.done, self.total = 0, total

    def step(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise LoadCancelled("loading the model was cancelled")
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))
        self.done += 1

    def groups(self, flat: list[tuple[str, Any]]) -> Iterator[list[Any]]:
        """The parameters by decoder layer (and one group for the rest), a step each."""
        by: dict[str, list[Any]] = {}
        for k, v in flat:
            m = re.match(r"(.*?\.layers\.\d+)\.", k)
            by.setdefault(m.group(1) if m else "", []).append(v)
        self.total += len(by)
        for group in by.values():
            self.step()
            yield group
        self.step()


def _attach_mtp(model: Any, weights: dict[str, Any], info: CheckpointInfo) -> None:
    """Load the checkpoint's MTP head for speculative decoding; without a complete one the model
    simply decodes without drafting (most conversions drop `mtp.*`)."""
    from .mtp import attach_head

    mtp = {k.removeprefix("mtp."): v for k, v in weights.items() if k.startswith("mtp.")}
    if not mtp:
        return
    q = info.quantization
    pred = None
    if q is not None:
        pred = _quant_predicate({k.removeprefix("mtp."): v for k, v in q.items()}, set(mtp))
    problems = attach_head(model, mtp, q, pred)
    if problems:
        import logging

        logging.getLogger("locus.engine").warning(
            "%s: MTP head not usable (%s); decoding without drafting",
            info.path,
            "; ".join(problems),
        )


def _load_other(info: CheckpointInfo) -> Any:
    from mlx_lm.utils import load_model as mlx_load_model

    try:
        model, _ = mlx_load_model(info.path, lazy=False)
    except ValueError as e:
        raise ModelLoadError(_mismatch(info, e)) from e
    except Exception as e:
        raise ModelLoadError(f"{info.path}: mlx-lm could not load this model: {_one_line(e)}") from e
    return model


def _mismatch(info: CheckpointInfo, e: BaseException) -> str:
    """One line for weights that do not fit the config's architecture (mlx-lm lists every
    parameter name)."""
    text = str(e)
    counts = re.findall(r"(Received|Missing) (\d+) parameters", text)
    if not counts:
        return f"{info.path}: mlx-lm could not load this {info.model_type!r} model: {_one_line(e)}"
    what = ", ".join(
        f"{n} weight(s) {'the model does not have' if k == 'Received' else 'missing'}" for k, n in counts
    )
    names = re.findall(r"^\s*([\w.]+),?\s*$", text, re.M)
    eg = f", e.g. {names[0]}" if names else ""
    hint = ""
    if any(".linear_attn." in k or ".experts." in k or ".switch_mlp." in k for k in info.tensors):
        hint = "; the weights look like a Qwen3.5/3.6 MoE checkpoint (model_type qwen3_5_moe)"
    return (
        f"{info.path}: config.json says model_type {info.model_type!r} but the weights do not "
        f"match it ({what}{eg}){hint}"
    )


def load_model(
    path_or_repo: str | os.PathLike[str],
    *,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    memory_check: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    split: Callable[[Any], str] | None = None,
    kv_bits: int | None = None,
) -> LoadedModel:
    """Load a model directory (or a cached Hugging Face repo id) for generation.

    Qwen3.5/3.6-MoE checkpoints load into Locus's model in any layout; other architectures load
    through mlx-lm as text-only models. Raises ModelLoadError with a message naming the problem.
    `should_stop` is polled between shards and between layers read (raising LoadCancelled when
    it returns True); `progress(done, total)` reports those steps.
    `split(model)` keeps only this process's share of a Qwen model before any weight is read (a
    pipeline across processes) and returns what to add to the model id.
    `kv_bits` (4 or 8) keeps the full-attention layers' keys and values quantized (mlx-lm's
    QuantizedKVCache): about half the KV memory at 8 bits.
    """
    if kv_bits not in (None, 0, 4, 8):
        raise ModelLoadError(f"--kv-bits must be 4 or 8 (got {kv_bits})")
    info = inspect_checkpoint(path_or_repo)
    check_config(info.config, info.path / "config.json")
    if not info.model_type:
        raise ModelLoadError(f"{info.path / 'config.json'}: no model_type")
    if memory_check:
        check_memory(info, context_tokens, kv_bits)
    _configure_metal(estimate_memory(info, context_tokens, kv_bits))
    steps = _Steps(should_stop, progress, total=len(info.files) + 1)
    steps.step()
    tokenizer = _load_tokenizer(info.path)
    suffix = ""
    if split is not None:
        import mlx.core as mx

        if not info.is_qwen_moe:
            raise ModelLoadError(
                f"{info.path}: only Qwen3.5/3.6 checkpoints can run across processes "
                f"(this one is {info.model_type!r})"
            )
        model, kind = _load_qwen(info, lazy=True, steps=steps), "qwen3_5_moe"
        suffix = split(model)
        try:
            mx.eval(model.language_model.parameters())  # only this process's layers are read
        except Exception as e:
            raise ModelLoadError(f"{info.path}: reading weights failed: {e}") from e
        model.eval()
    elif info.is_qwen_moe:
        model, kind = _load_qwen(info, steps=steps), "qwen3_5_moe"
    else:
        from .mlxlm_compat import model_classes

        try:
            model_classes(info.config)
        except ValueError as e:
            raise ModelLoadError(
                f"{info.path / 'config.json'}: unknown model_type {info.model_type!r}: "
                "neither Locus nor mlx-lm supports it"
            ) from e
        steps.step()  # mlx-lm reads every shard in one call: a cancel counts before it starts
        model, kind = _load_other(info), "mlx_lm"
    if kv_bits and kind == "qwen3_5_moe":
        hd = int(text_config(info.config).get("head_dim") or 0)
        if hd % 64:  # mlx-lm quantizes keys and values in groups of 64 along head_dim
            msg = f"--kv-bits needs a head_dim that is a multiple of 64 (this model's is {hd})"
            raise ModelLoadError(msg)
        model.kv_bits = int(kv_bits)
    elif kv_bits:
        import logging

        msg = "--kv-bits applies to Qwen3.5/3.6 models; %s keeps a 16-bit KV cache"
        logging.getLogger("locus.engine").warning(msg, info.path.name)
    eos, gen = _eos_ids(info.path, info.config, tokenizer)
    tokenizer.eos_token_ids = set(eos)
    return LoadedModel(
        model, tokenizer, info.config, info.path, eos, kind, _model_id(info) + suffix, info, gen
    )
