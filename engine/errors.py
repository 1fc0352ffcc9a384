"""Errors the engine raises, each with a message a user can act on."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose.

    `kind` is the typed error kind a request's Done carries (events.ErrorKind)."""

    kind = "internal"


class ModelLoadError(EngineError):
    """A checkpoint could not be found, read or understood."""


class InsufficientMemoryError(ModelLoadError):
    """The model (plus its context budget) does not fit in the memory available."""

    def __init__(self, needed: int, available: int, detail: str = ""):
        self.needed = needed
        self.available = available
        gb = 1024**3
        msg = (
            f"not enough memory to load this model: it needs about {needed / gb:.1f} GB "
            f"(weights and context), but only {available / gb:.1f} GB is available"
        )
        if detail:
            msg += f" ({detail})"
        msg += ". Close other apps, choose a smaller quantization, or lower the context budget."
        super().__init__(msg)


class LoadCancelled(EngineError):
    """A model load was stopped on request (`load_model(should_stop=...)`); nothing stays loaded."""


class ChatTemplateError(EngineError):
    """The conversation could not be rendered with the model's chat template."""

    kind = "invalid_request"  # the template refuses what the conversation holds


class RequestError(EngineError):
    """A generation request is invalid (bad sampling values, empty prompt, too long)."""

    kind = "invalid_request"


class ContextLengthError(RequestError):
    """The prompt (plus the room asked for the reply) does not fit the model's context.

    `tokens` and `limit` (0 when not known) let a front end word it its own way."""

    kind = "context_length"

    def __init__(self, message: str, tokens: int = 0, limit: int = 0):
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class BackendUnavailableError(EngineError):
    """The model cannot be reached: a remote server that is down, a pipeline rank that died."""

    kind = "unavailable"
