"""Server: start and stop the local Anthropic/OpenAI-compatible API; env lines for Claude Code."""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.settings import load_ui_settings

from .bridge import Task, run_in_background
from .dialogs import machine_name

if TYPE_CHECKING:
    from engine import Backend, CacheStats

__all__ = ["RequestLog", "ServerView", "batch_summary", "cache_summary", "claude_code_env"]

DEFAULT_PORT = 8723


def claude_code_env(host: str, port: int, api_key: str, model: str = "") -> str:
    """Shell lines that point Claude Code (and the Anthropic SDK) at the local server."""
    lines = [
        f"export ANTHROPIC_BASE_URL=http://{host}:{port}",
        f"export ANTHROPIC_AUTH_TOKEN={api_key or 'locus'}",
    ]
    if model:
        lines.append(f"export ANTHROPIC_MODEL={model}")
        # Claude Code 2.x's name for the background model (ANTHROPIC_SMALL_FAST_MODEL before).
        lines.append(f"export ANTHROPIC_DEFAULT_HAIKU_MODEL={model}")
    return "\n".join(lines)


def cache_summary(b: CacheStats | None) -> str:
    """One line on the prompt cache's budget (as /health reports it)."""
    if b is None:
        return "Prompt cache: off."
    mb = 1024 * 1024
    line = (
        f"Prompt cache: {b.memory_used_bytes / mb:,.0f} of {b.memory_bytes / mb:,.0f} MB "
        f"in memory ({b.snapshots} snapshots, {b.shared_snapshots} shared; {b.blocks} KV blocks, "
        f"{b.shared_blocks} shared), {b.disk_used_bytes / mb:,.0f} MB on disk; {b.hits} hits, "
        f"{b.tokens_reused:,} tokens reused, {b.evictions} evictions."
    )
    p = b.memory_plan
    if p:  # the memory plan made at load
        gb = 1024 * mb
        kv = f"{p['kv_bits']}-bit KV" if p.get("kv_bits") else "16-bit KV"
        line += (
            f"\nMemory: weights {p['weights_bytes'] / gb:.1f} GB, live caches "
            f"{p['live_cache_bytes'] / gb:.1f} GB ({p['sequences']} x {p['context_tokens']:,} tokens, {kv}), "
            f"snapshots {p['snapshot_budget_bytes'] / gb:.1f} GB; a context of "
            f"{p['context_fits_tokens']:,} tokens fits each sequence, "
            f"{p['context_fits_one_tokens']:,} one alone."
        )
    return line


def batch_summary(active: int, waiting: int, batch: int, parallel: int) -> str:
    """One line on the requests being served (as /health reports them)."""
    return (
        f"Requests: {active} running (up to {parallel} decoded together), {waiting} waiting; "
        f"batch of {batch} now."
    )


class RequestLog(QTableWidget):
    """The server's recent requests, newest last, from plain records (dicts or objects) with
    any of: time, method, path, status, duration_ms (or seconds), tokens / output_tokens, error."""

    COLUMNS = ("Time", "Request", "Status", "Duration", "Tokens")

    def __init__(self, parent: QWidget | None = None, limit: int = 500) -> None:
        super().__init__(0, len(self.COLUMNS), parent)
        self.limit = limit
        self.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.horizontalHeader().setStretchLastSection(True)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.setColumnWidth(1, 260)
        self.setColumnWidth(2, 220)

    def detail(self, row: int) -> str:
        """The whole of a row: an error's message in full (the Status cell may be cut short)."""
        item = self.item(row, 2)
        return item.toolTip() if item is not None else ""

    def set_records(self, records: list[Any]) -> None:
        """Show exactly `records` (e.g. a ring buffer's contents)."""
        self.setRowCount(0)
        for r in records[-self.limit :]:
            self.append(r)

    def append(self, record: Any) -> None:
        import time as _time

        def get(*names: str) -> Any:
            for n in names:
                v = record.get(n) if isinstance(record, dict) else getattr(record, n, None)
                if v is not None:
                    return v
            return None

        t = get("time", "timestamp", "start")
        when = _time.strftime("%H:%M:%S", _time.localtime(t)) if isinstance(t, int | float) else ""
        ms = get("duration_ms")
        if ms is None and isinstance(get("duration_s", "duration", "seconds"), int | float):
            ms = get("duration_s", "duration", "seconds") * 1000
        tokens = get("tokens", "output_tokens", "completion_tokens")
        prompt, cached = get("prompt_tokens"), get("cached_tokens")
        if prompt:  # the request log's records: what was read from the cache, what was new
            tokens = f"{prompt} in ({cached or 0} cached) → {tokens or 0} out"
        status = get("status", "status_code")
        err = get("error")
        cells = [
            when,
            f"{get('method') or ''} {get('path', 'endpoint') or ''}".strip(),
            f"{status or ''}" + (f" {err}" if err else ""),
            f"{ms:.0f} ms" if isinstance(ms, int | float) else "",
            "" if tokens is None else str(tokens),
        ]
        if self.rowCount() >= self.limit:
            self.removeRow(0)
        row = self.rowCount()
        self.insertRow(row)
        detail = f"{cells[1]} → {status or ''}" + (f": {err}" if err else "")
        for i, c in enumerate(cells):
            item = QTableWidgetItem(c)
            item.setToolTip(detail)  # hovering any cell shows the message in full
            self.setItem(row, i, item)
        self.scrollToBottom()


class ServerView(QWidget):
    """Runs uvicorn on a worker thread with the loaded engine."""

    state_changed = Signal(bool)  # running
    message_for_user = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend: Backend | None = None  # the loaded model
        self.model_name = ""
        self.server: Any = None
        self.asgi: Any = None
        self.task: Task | None = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.host = QLineEdit("127.0.0.1")
        self.host.setToolTip(f"127.0.0.1 keeps the API on {machine_name()}; other addresses expose it")
        self.port = QSpinBox(minimum=1, maximum=65535, value=DEFAULT_PORT)
        self.api_key = QLineEdit()
        self.api_key.setPlaceholderText("optional: clients must send it")
        key_row = QHBoxLayout()
        key_row.addWidget(self.api_key, 1)
        gen = QPushButton("Generate")
        gen.clicked.connect(lambda: self.api_key.setText("sk-locus-" + secrets.token_urlsafe(18)))
        key_row.addWidget(gen)
        form.addRow("Address", self.host)
        form.addRow("Port", self.port)
        form.addRow("API key", key_row)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        row.addStretch(1)
        lay.addLayout(row)
        self.status = QLabel("Stopped.")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        lay.addWidget(self.status)
        lay.addWidget(QLabel("For Claude Code, paste these lines in a terminal, then run `claude`:"))
        self.env = QPlainTextEdit(readOnly=True)
        self.env.setFont(QFont("Menlo, Consolas, monospace"))
        self.env.setFixedHeight(100)
        lay.addWidget(self.env)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy_env)
        lay.addWidget(self.copy_button)
        self.batch_status = QLabel("")
        lay.addWidget(self.batch_status)
        self.cache_status = QLabel("")
        self.cache_status.setWordWrap(True)
        lay.addWidget(self.cache_status)
        lay.addWidget(QLabel("Requests"))
        self.request_log = RequestLog()
        lay.addWidget(self.request_log, 1)
        # The selected request in full: an error's message is readable without widening the column.
        self.request_detail = QLabel("Select a request to read its details.")
        self.request_detail.setWordWrap(True)
        self.request_detail.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.request_detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.request_log.itemSelectionChanged.connect(self._show_request_detail)
        lay.addWidget(self.request_detail)
        self._shown: Any = -1
        self._poll = QTimer(self, interval=1000)
        self._poll.timeout.connect(self.refresh_requests)
        for w in (self.host, self.api_key):
            w.textChanged.connect(self._update_env)
        self.port.valueChanged.connect(self._update_env)
        remembered = load_ui_settings()
        self.host.setText(str(remembered.get("server_host") or "127.0.0.1"))
        self.port.setValue(int(remembered.get("server_port") or DEFAULT_PORT))
        self._update_env()

    def _show_request_detail(self) -> None:
        rows = self.request_log.selectionModel().selectedRows()
        if rows:
            self.request_detail.setText(self.request_log.detail(rows[0].row()))

    def set_backend(self, backend: Backend | None, model_name: str = "") -> None:
        self.backend = backend
        self.model_name = model_name
        service = getattr(self.asgi, "service", None)
        if service is not None:  # a running server serves the model loaded now, not the one before
            service.backend = backend
            service.config = dataclasses.replace(service.config, model_name=model_name or None)
        self._update_env()

    def _update_env(self, *_: Any) -> None:
        self.env.setPlainText(
            claude_code_env(
                self.host.text().strip() or "127.0.0.1",
                self.port.value(),
                self.api_key.text().strip(),
                self.model_name,
            )
        )

    def copy_env(self) -> None:
        QGuiApplication.clipboard().setText(self.env.toPlainText())
        self.copy_button.setText("Copied")

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def start(self) -> None:
        if self.running:
            return
        if self.backend is None:
            self.message_for_user.emit("No model is loaded: load one in Models first.")
            return
        from app.server import ServerConfig, create_app, make_server

        cfg = ServerConfig(
            host=self.host.text().strip() or "127.0.0.1",
            port=self.port.value(),
            api_key=self.api_key.text().strip() or None,
            model_name=self.model_name or None,
            log_level="warning",
            max_active=max(1, self.backend.stats().parallel) if self.backend is not None else 1,
        )
        try:
            self.asgi = create_app(self.backend, cfg)
        except Exception as e:  # configuration the server refuses: tell the user why
            self.message_for_user.emit(f"Cannot start the server: {e}")
            return
        self.server = make_server(self.asgi, cfg)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(f"Running on http://{cfg.host}:{cfg.port}")
        self.task = run_in_background(self.server.run, on_done=self._stopped, on_error=self._failed)
        self._shown = -1
        self._poll.start()
        self.state_changed.emit(True)

    def refresh_requests(self) -> None:
        """Show the server's request log (a thread-safe ring buffer) when it has changed."""
        service = getattr(self.asgi, "service", None)
        if service is None:
            return
        stats = self.backend.stats() if self.backend else None
        self.cache_status.setText(cache_summary(stats.prompt_cache if stats else None))
        s = service.scheduler
        batch = stats.batch_size if stats else 0
        self.batch_status.setText(batch_summary(s.active, s.waiting, batch, s.max_active))
        records = service.requests.records()
        mark = (len(records), records[-1].time if records else 0)
        if mark != self._shown:
            self._shown = mark
            self.request_log.set_records(records)

    def stop(self) -> None:
        if self.server is not None:
            service = getattr(self.asgi, "service", None)
            if service is not None:  # end running generations so shutdown does not wait on them
                service.cancel_all()
            self.server.should_exit = True

    def _stopped(self, *_: Any) -> None:
        self.refresh_requests()
        self._poll.stop()
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.server is not None and not self.server.started:
            # uvicorn logs the bind error and exits; say what to do about it.
            text = f"Could not start on port {self.port.value()}: is it already in use? Choose another port."
            self.status.setText(text)
            self.message_for_user.emit(text)
        else:
            self.status.setText("Stopped.")
        self.server = None
        self.asgi = None
        self.state_changed.emit(False)

    def _failed(self, message: str) -> None:
        started = self.server is not None and self.server.started
        self._stopped()
        if started:
            self.status.setText(f"Server error: {message}")
            self.message_for_user.emit(f"Server error: {message}")

    def shutdown(self) -> None:
        self.stop()
        if self.task is not None:
            self.task.wait(5)
