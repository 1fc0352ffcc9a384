"""Locus's inference engine: load Qwen3.5/3.6-MoE checkpoints on MLX and stream typed events.

Everything not listed in `__all__` is internal.
"""

from .cache import PromptCache
from .chat import render_prompt, supports_preserve_thinking
from .engine import Engine, GenerationRequest, GenerationResult, RequestHandle
from .errors import (
    ChatTemplateError,
    EngineError,
    InsufficientMemoryError,
    ModelLoadError,
    RequestError,
)
from .events import (
    Done,
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
    estimate_memory,
    inspect_checkpoint,
    load_model,
)
from .parser import StreamParser, parse_tool_calls, tool_schemas
from .sampling import PRESETS, SamplingParams, preset

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
    "parse_tool_calls",
    "preset",
    "render_prompt",
    "supports_preserve_thinking",
    "tool_schemas",
]

from .convert import convert
from .tiny import write_checkpoint as write_tiny_checkpoint

__all__ += ["convert", "write_tiny_checkpoint"]
