"""Locus's inference engine: load Qwen3.5/3.6-MoE checkpoints on MLX and stream typed events.

Everything not listed in `__all__` is internal. Names are imported on first use (PEP 562), so a
front end that needs only the request types, `PRESETS` or the event types (`locus --help`) loads
no MLX (engine/request.py, engine/events.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Backend, BackendInfo, BackendStats, CacheStats, Handle
    from .cache import PromptCache
    from .chat import render_prompt, supports_preserve_thinking
    from .convert import convert
    from .engine import BUDGET_NOTE, Engine, on_mlx_thread
    from .errors import (
        BackendUnavailableError,
        ChatTemplateError,
        ContextLengthError,
        EngineError,
        InsufficientMemoryError,
        LoadCancelled,
        ModelLoadError,
        RequestError,
    )
    from .events import (
        Done,
        ErrorKind,
        Event,
        FinishReason,
        PromptProgress,
        ReasoningDelta,
        TextDelta,
        ToolCall,
        ToolCallError,
        Usage,
        event_to_dict,
    )
    from .image import ImageConfig, ImageError, LoadedImage, PromptInputs, load_image
    from .loader import (
        CheckpointInfo,
        LoadedModel,
        MemoryEstimate,
        available_memory,
        estimate_memory,
        inspect_checkpoint,
        load_model,
    )
    from .parser import StreamParser, parse_tool_calls, tool_schemas
    from .pipeline import PipelineBackend, open_pipeline, pipeline_group, serve_worker
    from .remote import RemoteBackend
    from .request import (
        PRESETS,
        GenerationRequest,
        GenerationResult,
        PreparedRequest,
        ReplyAccumulator,
        RequestHandle,
        SamplingParams,
        preset,
    )
    from .tiny import write_checkpoint as write_tiny_checkpoint

_WHERE = {
    "Backend": "backend",
    "BackendInfo": "backend",
    "BackendStats": "backend",
    "CacheStats": "backend",
    "Handle": "backend",
    "PreparedRequest": "request",
    "RemoteBackend": "remote",
    "BackendUnavailableError": "errors",
    "ContextLengthError": "errors",
    "ErrorKind": "events",
    "PromptCache": "cache",
    "render_prompt": "chat",
    "supports_preserve_thinking": "chat",
    "BUDGET_NOTE": "engine",
    "Engine": "engine",
    "on_mlx_thread": "engine",
    "GenerationRequest": "request",
    "GenerationResult": "request",
    "RequestHandle": "request",
    "ReplyAccumulator": "request",
    "ChatTemplateError": "errors",
    "EngineError": "errors",
    "InsufficientMemoryError": "errors",
    "LoadCancelled": "errors",
    "ModelLoadError": "errors",
    "RequestError": "errors",
    "Done": "events",
    "Event": "events",
    "FinishReason": "events",
    "PromptProgress": "events",
    "ReasoningDelta": "events",
    "TextDelta": "events",
    "ToolCall": "events",
    "ToolCallError": "events",
    "Usage": "events",
    "event_to_dict": "events",
    "ImageConfig": "image",
    "ImageError": "image",
    "LoadedImage": "image",
    "PromptInputs": "image",
    "load_image": "image",
    "CheckpointInfo": "loader",
    "LoadedModel": "loader",
    "MemoryEstimate": "loader",
    "available_memory": "loader",
    "estimate_memory": "loader",
    "inspect_checkpoint": "loader",
    "load_model": "loader",
    "StreamParser": "parser",
    "parse_tool_calls": "parser",
    "tool_schemas": "parser",
    "PRESETS": "request",
    "SamplingParams": "request",
    "preset": "request",
    "convert": "convert",
    "write_tiny_checkpoint": "tiny:write_checkpoint",
    "PipelineBackend": "pipeline",
    "open_pipeline": "pipeline",
    "pipeline_group": "pipeline",
    "serve_worker": "pipeline",
}

__all__ = [
    "PRESETS",
    "ChatTemplateError",
    "CheckpointInfo",
    "Done",
    "Engine",
    "EngineError",
    "Event",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "ImageConfig",
    "ImageError",
    "InsufficientMemoryError",
    "LoadedImage",
    "LoadedModel",
    "MemoryEstimate",
    "ModelLoadError",
    "PromptCache",
    "PromptInputs",
    "PromptProgress",
    "ReasoningDelta",
    "ReplyAccumulator",
    "RequestError",
    "RequestHandle",
    "SamplingParams",
    "StreamParser",
    "TextDelta",
    "ToolCall",
    "ToolCallError",
    "Usage",
    "estimate_memory",
    "event_to_dict",
    "inspect_checkpoint",
    "load_image",
    "load_model",
    "on_mlx_thread",
    "parse_tool_calls",
    "preset",
    "render_prompt",
    "supports_preserve_thinking",
    "tool_schemas",
]
__all__ += ["convert", "write_tiny_checkpoint"]
__all__ += ["Backend", "BackendInfo", "BackendStats", "CacheStats", "Handle", "PreparedRequest"]
__all__ += ["BackendUnavailableError", "ContextLengthError", "ErrorKind"]
__all__ += ["BUDGET_NOTE"]
__all__ += ["LoadCancelled", "available_memory"]
__all__ += ["RemoteBackend"]
__all__ += ["PipelineBackend", "open_pipeline", "pipeline_group", "serve_worker"]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
