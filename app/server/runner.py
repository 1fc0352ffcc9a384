"""Running the server: in the foreground for `locus serve`, or on a thread for tests and the window."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .config import ServerConfig
from .limits import Limits, connection_cap, rate_limit_logs
from .requestlog import escape_logs

log = logging.getLogger("locus.server")


def make_server(app: Any, config: ServerConfig) -> Any:
    """A uvicorn.Server for the app (not started); raises the process's open-file limit.

    Its `limits` attribute (a limits.Limits) counts connections evicted, timed out and refused.
    """
    import uvicorn

    rate_limit_logs()
    escape_logs()  # after rate_limit_logs: its filter keys on the unformatted message
    # The accept loop takes up to `backlog` sockets at once before any is counted: keep it small.
    backlog = 64
    cap = connection_cap(config.max_connections, backlog)
    limits = Limits(cap, config.header_timeout)
    ucfg = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        http=limits.protocol(_http_protocol()),
        backlog=backlog,
        # The Guard bounds bodies itself (size, pauses, total time, all bodies together); Limits
        # bounds connections and the wait for headers.
        # No limit_concurrency: it answers 503 to a real request once idle sockets fill the table.
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        access_log=config.log_level == "debug",
    )
    server = uvicorn.Server(ucfg)
    server.limits = limits
    if cap < config.max_connections:
        log.warning("serving at most %d connections (open-file limit)", cap)
    return server


def _http_protocol() -> type:
    """h11, always: the limits are tested on it, and a local model server gains nothing from a
    faster parser (uvicorn would pick httptools whenever something else installed it)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


class ServerThread:
    """A uvicorn server on a background thread; `port` is the bound port (useful with port 0)."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.server = make_server(app, config)
        self.thread = threading.Thread(target=self.server.run, name="locus-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving and wait until the socket listens; RuntimeError if it could not."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the API server did not start on {self.config.host}:{self.config.port} "
                    "(is the port in use?)"
                )
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel running generations and stop the server."""
        svc = getattr(self.app, "service", None)
        if svc is not None:
            svc.cancel_all()
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
