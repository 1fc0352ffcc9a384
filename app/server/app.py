"""The FastAPI application: routes of both APIs over one Service, errors in each API's shape."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from engine import Backend, BackendStats

from . import anthropic_api, openai_api, openapi, responses_api
from .anthropic_models import CountTokensRequest, MessagesRequest
from .config import ServerConfig
from .errors import APIError, flavor_of
from .jsonbody import parse_body
from .openai_models import ChatRequest
from .requestlog import error_record, escape_controls
from .responses_models import ResponsesRequest
from .security import ASGIApp, Guard
from .service import ClientGone, EventStream, Service

log = logging.getLogger("locus.server")
# The model that validates each POST path's body (and whose JSON schema /openapi.json serves).
REQUEST_MODELS = {
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/chat/completions": ChatRequest,
    "/v1/responses": ResponsesRequest,
}
_HTTP_KINDS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
}


def _error_response(request: Request, err: APIError) -> JSONResponse:
    flavor = flavor_of(request.url.path)
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.requests.add(error_record(request, err.status_for(flavor), err.message))
    return JSONResponse(err.body(flavor), status_code=err.status_for(flavor), headers=err.headers)


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, its model name noted for the request log."""
    body = parse_body(await request.body())
    request.state.locus_model = body.get("model") if isinstance(body.get("model"), str) else ""
    return body


def build_fastapi(service: Service) -> FastAPI:
    """The routes, without the Guard in front (see create_app)."""
    config = service.config
    api = FastAPI(title="Locus local API", version="1", docs_url=None, redoc_url=None)
    api.state.service = service
    openapi.document(api, REQUEST_MODELS)
    _add_error_handlers(api)
    _add_info_routes(api, service)
    _add_generation_routes(api, service)
    store = responses_api.ResponseStore(
        config.responses_db,
        owner_bytes=config.responses_owner_bytes,
        total_bytes=config.responses_total_bytes,
    )
    api.state.responses = store
    responses_api.add_routes(api, service, store)
    return api


def _add_error_handlers(api: FastAPI) -> None:
    """Every failure answered in the API's own error shape (see errors.flavor_of)."""

    @api.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return _error_response(request, exc)

    @api.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody is listening; the generation was cancelled

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        kind = _HTTP_KINDS.get(exc.status_code, "invalid_request_error")
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        # 405 carries Allow (the methods the path takes), as HTTP requires.
        err = APIError(kind, msg, status=exc.status_code, headers=dict(exc.headers or {}))
        return _error_response(request, err)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(request, APIError("invalid_request_error", str(exc)))

    @api.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error serving %s", escape_controls(request.url.path))
        err = APIError("api_error", f"internal server error ({type(exc).__name__}); see the log")
        return _error_response(request, err)


def _add_info_routes(api: FastAPI, service: Service) -> None:
    """/, /health and the model list both SDKs read."""

    @api.get("/")
    @api.head("/")
    async def root() -> dict[str, Any]:
        return {"name": "locus", "apis": ["anthropic", "openai"]}

    @api.get("/health")
    async def health() -> dict[str, Any]:
        s = service.scheduler
        try:
            loaded = service.loaded() is not None
        except APIError:
            loaded = False
        stats = service.backend.stats() if service.backend is not None else BackendStats()
        pc = stats.prompt_cache  # a local engine's
        ranks = [list(r) for r in stats.rank_layers]  # a pipeline's processes and layers
        return {
            "status": "ok",
            "model_loaded": loaded,
            "active": s.active,
            "waiting": s.waiting,
            # The engine's continuous batch: sequences admitted, decoding now, and at most at once.
            "sequences": stats.running,
            "batch_size": stats.batch_size,
            "parallel": s.max_active,
            "finished": dict(service.finished),
            "prompt_cache": dataclasses.asdict(pc) if pc is not None else None,
            # The memory plan made at load (weights, live caches, snapshot budget, context that fits).
            "memory": pc.memory_plan if pc is not None else None,
            "draft_tokens": service.drafts["draft_tokens"],
            "draft_accepted": service.drafts["draft_accepted"],
            "ranks": stats.ranks,
            "rank_layers": ranks,
        }

    def model_entry(model_id: str) -> dict[str, Any]:
        # Both SDKs' shapes at once: Anthropic's type/display_name/created_at, OpenAI's object/created.
        return {
            "id": model_id,
            "type": "model",
            "display_name": model_id,
            "created_at": "2026-01-01T00:00:00Z",
            "object": "model",
            "created": service.model_created,
            "owned_by": "locus",
            "context_length": service.context_limit(),
        }

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        name = service.model_name
        return {
            "object": "list",
            "data": [model_entry(name)],
            "has_more": False,
            "first_id": name,
            "last_id": name,
        }

    @api.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        service.loaded()  # every name is served by the loaded model
        return model_entry(model_id)


def _add_generation_routes(api: FastAPI, service: Service) -> None:
    """Anthropic's /v1/messages (and count_tokens) and OpenAI's /v1/chat/completions."""
    config = service.config

    @api.post("/v1/messages")
    async def messages(request: Request) -> Response:
        req = MessagesRequest.parse(await _body(request))
        plan = anthropic_api.to_plan(req, vocab_size=service.vocab_size, preset=config.preset)
        model_name = req.model
        job = await service.start(plan, request)
        if req.stream:
            content = anthropic_api.stream(job, model_name, config.ping_interval)
            return EventStream(content, job.cancel, {})
        reply, fin = await service.collect(job, request)
        anthropic_api.raise_if_error(fin)
        return JSONResponse(anthropic_api.message(reply, fin, job, model_name))

    @api.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        req = CountTokensRequest.parse(await _body(request))
        plan = anthropic_api.to_plan(req, vocab_size=service.vocab_size, preset=config.preset)
        return JSONResponse({"input_tokens": await service.count(plan)})

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = ChatRequest.parse(await _body(request))
        plan = openai_api.to_plan(
            req, vocab_size=service.vocab_size, preset=config.preset, default_max=config.default_max_tokens
        )
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        model_name = req.model
        job = await service.start(plan, request)
        if req.stream:
            content = openai_api.stream(job, model_name, config.ping_interval, include_usage)
            return EventStream(content, job.cancel, {})
        reply, fin = await service.collect(job, request)
        anthropic_api.raise_if_error(fin)
        return JSONResponse(openai_api.completion(reply, fin, job, model_name))


def create_app(backend: Backend | None, config: ServerConfig | None = None) -> ASGIApp:
    """The ASGI app serving `backend` (a model behind engine.Backend) per `config`."""
    config = config or ServerConfig()
    service = Service(backend, config)
    guarded = Guard(build_fastapi(service), config)
    guarded.service = service  # type: ignore[attr-defined]
    return guarded
