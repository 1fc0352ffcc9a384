"""The server's shared state and the request lifecycle both APIs use: queue, run, watch the client."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine import Backend, BackendInfo, EngineError, Event, ReplyAccumulator

from .config import ServerConfig
from .errors import APIError
from .jobs import Finished, Job, Plan, Scheduler, check_length, context_limit, count_tokens
from .requestlog import RequestLog

log = logging.getLogger("locus.server")
# The request's body size in bytes, set in the ASGI scope by the Guard.
BODY_SIZE = "locus.body_size"
# Characters a chat template adds around the messages (tool instructions and the like), generously.
TEMPLATE_ALLOWANCE = 16384


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Service:
    """One backend served over HTTP: its scheduler, running jobs and counters."""

    def __init__(self, backend: Backend | None, config: ServerConfig) -> None:
        self.backend = backend
        self.config = config
        self.scheduler = Scheduler(config.max_active, config.max_queue)
        self.jobs: set[Job] = set()
        # How generations ended (stop, length, cancelled, error): for /health and tests.
        self.finished: collections.Counter[str] = collections.Counter()
        # Speculative decoding totals (tokens drafted, drafts accepted): for /health.
        self.drafts: collections.Counter[str] = collections.Counter()
        self._count_slots: asyncio.Semaphore | None = None
        self._check_slots: asyncio.Semaphore | None = None
        self.started = time.time()
        # The last requests, one record each: `locus serve --log-level debug` and the Server view.
        self.requests = RequestLog()

    # -- the model ----------------------------------------------------------------------------
    def loaded(self) -> BackendInfo:
        """The model being served; 503 when there is none."""
        try:
            if self.backend is None:
                raise EngineError("no model is loaded")
            return self.backend.info
        except EngineError as e:
            raise APIError(
                "api_error",
                f"{e}: start the server with a model (locus serve --model PATH)",
                status=503,
            ) from e

    @property
    def model_name(self) -> str:
        return self.config.model_name or self.loaded().name

    @property
    def model_created(self) -> int:
        """A stable `created` time for /v1/models: when the checkpoint's config was written."""
        return self.loaded().created or 1767225600  # 2026-01-01, when the model cannot say

    @property
    def vocab_size(self) -> int:
        return self.loaded().vocab_size or 1 << 20

    def context_limit(self) -> int | None:
        self.loaded()
        assert self.backend is not None
        return context_limit(self.backend, self.config.context_tokens)

    # -- running requests ---------------------------------------------------------------------
    async def start(self, plan: Plan, request: Request) -> Job:
        """Queue, prepare and submit a plan; raises APIError, or ClientGone if the client left."""
        self.loaded()
        assert self.backend is not None
        job = Job(self.backend, plan, self.config.context_tokens)
        job.describe(request, plan.model)
        return await until_disconnect(request, self._start(job, request.scope.get(BODY_SIZE)))

    async def _start(self, job: Job, body_size: int | None = None) -> Job:
        # Too long is decided here, off the engine's thread and before taking a slot, so a huge
        # prompt holds up neither the model nor the requests queued behind it. A body too small
        # to hold that many tokens (each at least a byte of text, plus the template's) skips it.
        limit = self.context_limit()
        if limit and (body_size is None or body_size + TEMPLATE_ALLOWANCE >= limit):
            if self._check_slots is None:
                self._check_slots = asyncio.Semaphore(2)
            async with self._check_slots:
                await asyncio.to_thread(check_length, job.backend, job.plan, limit)
        await self.scheduler.acquire()
        try:
            await asyncio.to_thread(job.prepare)
        except BaseException:
            self.scheduler.release()
            raise
        self.jobs.add(job)
        job.start(self._ended)
        return job

    def _ended(self, job: Job) -> None:
        self.jobs.discard(job)
        self.requests.add(job.record())
        if job.finished is not None:
            self.finished[job.finished.finish_reason] += 1
            u = job.finished.usage
            if u is not None:
                self.drafts["draft_tokens"] += u.draft_tokens
                self.drafts["draft_accepted"] += u.draft_accepted
        self.scheduler.release()

    async def collect(self, job: Job, request: Request) -> tuple[ReplyAccumulator, Finished]:
        """A job's whole reply, folded (for a non-streaming answer); cancels it if the client leaves."""

        async def gather() -> tuple[ReplyAccumulator, Finished]:
            while True:
                item = await job.queue.get()
                if isinstance(item, Finished):
                    return job.reply, item  # the job's thread folded every event before this

        try:
            return await until_disconnect(request, gather())
        except BaseException:
            job.cancel()
            raise

    async def count(self, plan: Plan) -> int:
        """Prompt tokens of a plan (two at a time, off the engine's thread when text only)."""
        self.loaded()
        async with self._counting():
            return await asyncio.to_thread(count_tokens, self.backend, plan)

    def _counting(self) -> asyncio.Semaphore:
        # Two tokenizations at a time: each takes a core (the Rust tokenizer lets go of the GIL).
        if self._count_slots is None:
            self._count_slots = asyncio.Semaphore(2)
        return self._count_slots

    def shutdown(self) -> None:
        """Stop everything: waiting requests are refused, running ones cancelled (thread-safe
        for the jobs; call on the loop for the queue)."""
        self.scheduler.close()
        for job in list(self.jobs):
            job.cancel()

    def cancel_all(self) -> None:
        """Cancel the running generations (safe from any thread)."""
        for job in list(self.jobs):
            job.cancel()


async def until_disconnect(request: Request, work: Any) -> Any:
    """Await `work`, but cancel it and raise ClientGone if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watch.cancel()
        raise
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def next_event(job: Job, timeout: float) -> Event | Finished | None:
    """The job's next event, or None after `timeout` seconds of quiet (time for a ping)."""
    try:
        return await asyncio.wait_for(job.queue.get(), timeout)
    except TimeoutError:
        return None


class EventStream(StreamingResponse):
    """Server-sent events that always watch for the client leaving, and call `on_close` when
    the stream ends for any reason (which cancels the generation if it is still running)."""

    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the client went away mid-write
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self._on_close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def sse(data: str, event: str | None = None) -> str:
    """One server-sent event."""
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
