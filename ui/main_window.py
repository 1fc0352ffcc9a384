"""The main window: a sidebar of views, a toolbar with the model, drops routed to the right view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QMimeData, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from app.settings import load_ui_settings, save_ui_settings
from app.store import Store

from .agent_view import AgentView
from .bridge import Task, run_in_background
from .chat_view import ChatView
from .locate_view import IMAGE_SUFFIXES, LocateView
from .models_view import ModelsView
from .server_view import ServerView

__all__ = ["VIEWS", "MainWindow", "route_drop"]

VIEWS = ["Chat", "Agent", "Locate", "Models", "Server"]


def route_drop(paths: list[Path]) -> tuple[str, Path] | None:
    """Which view a drop opens: a folder → ("Agent", folder), an image → ("Locate", image)."""
    for p in paths:
        if p.is_dir():
            return "Agent", p
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            return "Locate", p
    return None


def _paths(mime: QMimeData) -> list[Path]:
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


class MainWindow(QMainWindow):
    """Owns the engine (loaded on a worker) and hands it to every view."""

    model_loaded = Signal(str)

    def __init__(self, store: Store | None = None, *, dark: bool = False,
                 demo: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.setWindowTitle("Locus" + (" — demo model" if demo else ""))
        self.demo = demo
        self.setUnifiedTitleAndToolBarOnMac(True)
        self.setAcceptDrops(True)
        self.resize(1200, 780)
        self.store = store or Store()
        self.engine: Any = None
        self.model_name = ""
        self.load_task: Task | None = None
        self._stale_loads: list[Task] = []

        tb = QToolBar("Main")
        tb.setMovable(False)
        self.model_label = QLabel("No model loaded")
        tb.addWidget(self.model_label)
        self.load_progress = QProgressBar(maximumWidth=160)
        self.load_progress.setRange(0, 0)  # busy: loading reports no fraction
        self._progress_action = tb.addWidget(self.load_progress)
        self.cancel_load_button = QPushButton("Cancel loading")
        self.cancel_load_button.clicked.connect(self.cancel_load)
        self._cancel_action = tb.addWidget(self.cancel_load_button)
        self.addToolBar(tb)
        self._loading(False)

        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        from app.demo import DEMO_NOTICE

        self.demo_banner = QLabel(DEMO_NOTICE)
        self.demo_banner.setObjectName("demoBanner")
        self.demo_banner.setWordWrap(True)
        self.demo_banner.setVisible(demo)
        outer.addWidget(self.demo_banner)
        self.error_banner = QLabel()
        self.error_banner.setObjectName("errorBanner")
        self.error_banner.setWordWrap(True)
        self.error_banner.setVisible(False)
        self.error_banner.mousePressEvent = lambda *_: self.error_banner.setVisible(False)
        outer.addWidget(self.error_banner)
        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(150)
        self.sidebar.addItems(VIEWS)
        body.addWidget(self.sidebar)
        self.stack = QStackedWidget()
        self.chat = ChatView(self.store, dark)
        self.agent = AgentView()
        self.locate = LocateView()
        self.models = ModelsView()
        self.server = ServerView()
        for v in (self.chat, self.agent, self.locate, self.models, self.server):
            self.stack.addWidget(v)
            v.message_for_user.connect(self.show_message)
        body.addWidget(self.stack, 1)
        outer.addLayout(body, 1)
        self.setCentralWidget(central)
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        self.models.load_requested.connect(self.load_model)
        self._hide_error = QTimer(self, singleShot=True, interval=12000)
        self._hide_error.timeout.connect(lambda: self.error_banner.setVisible(False))
        self.statusBar().showMessage("Drop a folder to start the agent, or an image to locate.")
        geometry = load_ui_settings().get("window_geometry")
        if isinstance(geometry, str):
            self.restoreGeometry(QByteArray.fromHex(geometry.encode()))

    # -- views --------------------------------------------------------------------------------------
    def show_view(self, name: str) -> None:
        self.sidebar.setCurrentRow(VIEWS.index(name))

    @property
    def current_view(self) -> str:
        return VIEWS[self.stack.currentIndex()]

    def show_message(self, text: str) -> None:
        """An actionable message in a banner (clicking hides it) and the status bar."""
        self.error_banner.setText(text)
        self.error_banner.setVisible(True)
        self.statusBar().showMessage(text, 12000)
        self._hide_error.start()

    # -- drops --------------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if route_drop(_paths(event.mimeData())) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        if self.open_paths(_paths(event.mimeData())):
            event.acceptProposedAction()
        else:
            event.ignore()

    def open_paths(self, paths: list[Path]) -> bool:
        route = route_drop(paths)
        if route is None:
            self.show_message("Drop a project folder (for the agent) or an image (to locate).")
            return False
        view, path = route
        if view == "Agent":
            self.agent.open_project(path)
        else:
            self.locate.open_image(path)
        self.show_view(view)
        return True

    # -- the engine ---------------------------------------------------------------------------------
    def set_engine(self, engine: Any, name: str) -> None:
        old = self.engine
        self.engine, self.model_name = engine, name
        self.chat.set_engine(engine, name)
        self.agent.set_engine(engine)
        self.locate.set_engine(engine)
        self.server.set_engine(engine, name)
        self.model_label.setText(f"Model: {name}" if engine is not None else "No model loaded")
        if old is not None and old is not engine:
            old.close()

    def load_model(self, path: str) -> None:
        """Load on a worker; the window stays live, and Cancel drops the result when it comes."""
        if self.chat.busy:
            self.show_message("Stop the reply before loading another model.")
            return
        from engine import Engine

        name = Path(path).name
        self.model_label.setText(f"Loading {name}…")
        self._loading(True)
        task = run_in_background(Engine.from_path, path)
        task.done.connect(lambda eng: self._loaded(task, eng, name, path))
        task.failed.connect(lambda msg: self._load_failed(task, msg))
        self.load_task = task

    def _loading(self, on: bool) -> None:
        # Widgets in a toolbar are shown and hidden through their actions.
        self._cancel_action.setVisible(on)
        self._progress_action.setVisible(on)

    def cancel_load(self) -> None:
        if self.load_task is not None:
            self._stale_loads.append(self.load_task)
            self.load_task = None
        self._loading(False)
        self.model_label.setText(f"Model: {self.model_name}" if self.engine else "No model loaded")

    def _loaded(self, task: Task, engine: Any, name: str, path: str) -> None:
        if task is not self.load_task:  # cancelled: free what was loaded
            engine.close()
            return
        self.load_task = None
        if not self.demo:  # the next plain `locus` opens with this model again
            save_ui_settings({"last_model": path})
        self._loading(False)
        self.set_engine(engine, name)
        self.model_loaded.emit(name)

    def _load_failed(self, task: Task, message: str) -> None:
        if task is not self.load_task:
            return
        self.load_task = None
        self._loading(False)
        self.model_label.setText(f"Model: {self.model_name}" if self.engine else "No model loaded")
        self.show_message(f"Could not load the model: {message}")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop workers and close the engine (idempotent); remember the server's settings."""
        save_ui_settings({"server_host": self.server.host.text().strip(),
                          "server_port": self.server.port.value(),
                          "window_geometry": bytes(self.saveGeometry().toHex()).decode()})  # fmt: skip
        for v in (self.chat, self.agent, self.server):
            v.shutdown()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
