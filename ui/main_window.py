"""The main window: a sidebar of views, a toolbar with the model, drops routed to the right view."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QByteArray, QMimeData, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStackedWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from app.demo import is_demo_model
from app.models import (
    LoadingCancelled,
    LoadingFailed,
    LoadingProgress,
    ModelEvent,
    ModelLoaded,
    ModelManager,
    ModelUnloaded,
    remote_model_path,
)
from app.settings import load_ui_settings, save_ui_settings
from app.store import Store

from .agent_view import AgentView
from .bridge import to_ui_thread
from .chat_view import ChatView
from .locate_view import IMAGE_SUFFIXES, LocateView, unsupported_image
from .models_view import ModelsView, human_bytes
from .preferences import context_words, model_context
from .server_view import ServerView

if TYPE_CHECKING:
    from engine import Backend

__all__ = [
    "VIEWS",
    "WINDOW_DEMO_NOTICE",
    "MainWindow",
    "context_words",
    "log_path",
    "model_context",
    "route_drop",
]

VIEWS = ["Chat", "Agent", "Locate", "Models", "Server"]

# The window's own words: a window user picks a model in the window, not with --model PATH.
WINDOW_DEMO_NOTICE = (
    "Demo mode: a tiny model with RANDOM weights, so replies are gibberish, but every part of "
    "Locus runs for real. For real answers, download or load a model in Models (or pick one in "
    "the model menu above)."
)
_MAX_BANNER_CHARS = 400


def log_path() -> Path:
    """Where Locus writes its log (Help → Show Log opens it)."""
    from app.logs import log_path as app_log_path

    return app_log_path()


def route_drop(paths: list[Path]) -> tuple[str, Path] | None:
    """Which view a drop opens: a folder → ("Agent", folder), an image → ("Locate", image)."""
    for p in paths:
        if p.is_dir():
            return "Agent", p
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            return "Locate", p
    return None


def _describe_model(backend: Backend, memory: int, planned: int = 0) -> str:
    """The memory the loaded model takes (weights, context budget, margin) and its context; for a
    remote model, where it runs."""
    info = backend.info
    ctx = model_context(backend)
    parts = [f"{human_bytes(memory)} in memory"] if memory else []
    if info.remote:
        parts.append(f"Remote: {info.name} at {info.remote}")
    if ctx:
        plan = f" (memory planned for {context_words(planned)})" if memory and 0 < planned < ctx else ""
        parts.append(f"context {context_words(ctx)}{plan}")
    return " · ".join(parts)


def _paths(mime: QMimeData) -> list[Path]:
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


def _copy_or_link(event: QDragEnterEvent | QDragMoveEvent | QDropEvent) -> bool:
    """Accept a drop as Copy (or Link), never Move: a file manager that honours Move would take the
    user's folder away. False when the source offers neither."""
    possible = event.possibleActions()
    for action in (Qt.DropAction.CopyAction, Qt.DropAction.LinkAction):
        if possible & action:
            event.setDropAction(action)
            event.accept()
            return True
    event.ignore()
    return False


class MainWindow(QMainWindow):
    """Hands the model its ModelManager loads (an engine.Backend) to every view."""

    model_loaded = Signal(str)

    def __init__(
        self,
        store: Store | None = None,
        *,
        dark: bool = False,
        demo: bool = False,
        manager: ModelManager | None = None,
    ) -> None:
        super().__init__()
        self.launched_demo = demo  # `locus --demo`: the demo model is not remembered as the last one
        self.demo = False  # whether the model in use is the demo model (random weights)
        self.setUnifiedTitleAndToolBarOnMac(True)
        self.setAcceptDrops(True)
        self.resize(1200, 780)
        self.store = store or Store()
        self.backend: Backend | None = None  # the loaded model, as every view has it
        self._planned_context = 0  # the context memory was planned for at the last load
        self._next_context = 0
        self.model_name = ""
        self.loading_path: str | None = None  # the model being loaded (None: no load)
        self._loading_url = ""  # the server connected to, when loading_path is a remote model
        self.manager = manager or ModelManager()
        self.manager.add_listener(to_ui_thread(self._model_event, self))
        self._build_toolbar()
        self._build_body(dark, demo)
        self._set_demo(demo)  # until a model loads: the one --demo is loading
        self.model_path = ""
        self._hide_error = QTimer(self, singleShot=True, interval=12000)
        self._hide_error.timeout.connect(lambda: self.error_banner.setVisible(False))
        self.statusBar().showMessage("Drop a folder to start the agent, or an image to locate.")
        self._build_menus()
        self.apply_preferences()
        self._fill_picker()
        geometry = load_ui_settings().get("window_geometry")
        if isinstance(geometry, str):
            self.restoreGeometry(QByteArray.fromHex(geometry.encode()))
        self._fit_screen()
        QTimer.singleShot(0, self.models.refresh)  # the Models list is filled from the start
        self._tell_where_secrets_go()

    def _build_toolbar(self) -> None:
        """The model label and picker, what is loaded, and the loading progress with Cancel."""
        tb = QToolBar("Main")
        tb.setMovable(False)
        self.model_label = QLabel("No model loaded")
        tb.addWidget(self.model_label)
        # The model picker: the loaded model and the others on disk; choosing one loads it.
        self.model_picker = QComboBox()
        self.model_picker.setMinimumContentsLength(24)
        self.model_picker.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.model_picker.setToolTip("The loaded model; choose another to load it")
        self.model_picker.activated.connect(self._picked)
        tb.addWidget(self.model_picker)
        self.model_info = QLabel("")
        self.model_info.setObjectName("stats")
        tb.addWidget(self.model_info)
        self.load_progress = QProgressBar(maximumWidth=160)
        self.load_progress.setRange(0, 0)  # busy: loading reports no fraction
        self._progress_action = tb.addWidget(self.load_progress)
        self.cancel_load_button = QPushButton("Cancel loading")
        self.cancel_load_button.clicked.connect(self.cancel_load)
        self._cancel_action = tb.addWidget(self.cancel_load_button)
        self.addToolBar(tb)
        self._loading(False)

    def _build_body(self, dark: bool, demo: bool) -> None:
        """The banners, the sidebar and the five views."""
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.demo_banner = QLabel(WINDOW_DEMO_NOTICE)
        self.demo_banner.setObjectName("demoBanner")
        self.demo_banner.setWordWrap(True)
        self.demo_banner.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.demo_banner.setVisible(demo)
        outer.addWidget(self.demo_banner)
        # A row above the view, never an overlay: the view's own controls stay clickable under it.
        self.error_banner = QLabel()
        self.error_banner.setObjectName("errorBanner")
        self.error_banner.setWordWrap(True)
        self.error_banner.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.error_banner.setVisible(False)
        self.error_banner.setCursor(Qt.CursorShape.PointingHandCursor)
        self.error_banner.mousePressEvent = lambda *_: self.error_banner.setVisible(False)
        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(150)
        self.sidebar.addItems(VIEWS)
        body.addWidget(self.sidebar)
        column = QVBoxLayout()
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.error_banner)
        self.stack = QStackedWidget()
        self.chat = ChatView(self.store, dark)
        self.agent = AgentView(store=self.store)
        self.locate = LocateView()
        self.models = ModelsView()
        self.server = ServerView()
        self.views = [self.chat, self.agent, self.locate, self.models, self.server]
        for v in self.views:
            self.stack.addWidget(_scrolling(v))
            v.message_for_user.connect(self.show_message)
        self.agent.hint_for_user.connect(self.show_hint)
        self.models.hint_for_user.connect(self.show_hint)
        column.addWidget(self.stack, 1)
        body.addLayout(column, 1)
        outer.addLayout(body, 1)
        self.setCentralWidget(central)
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        # An error belongs to the view it came from: it never lies over the next one's controls.
        self.sidebar.currentRowChanged.connect(lambda *_: self.error_banner.setVisible(False))
        self.sidebar.setCurrentRow(0)
        self.models.load_requested.connect(self.load_model)
        self.models.unload_requested.connect(self.unload_model)
        self.models.remote_requested.connect(self.load_remote)
        self.models.models_listed.connect(lambda *_: self._fill_picker())

    # -- menus --------------------------------------------------------------------------------------
    def _action(
        self, menu: Any, text: str, slot: Any, shortcut: Any = None, role: QAction.MenuRole | None = None
    ) -> QAction:
        act = QAction(text, self)
        act.triggered.connect(lambda *_: slot())
        if isinstance(shortcut, tuple):  # (standard key, fallback where the platform has none)
            std = QKeySequence(shortcut[0])
            act.setShortcut(std if not std.isEmpty() else QKeySequence(shortcut[1]))
        elif shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        if role is not None:
            act.setMenuRole(role)  # macOS moves About/Preferences/Quit to the app menu
        menu.addAction(act)
        return act

    def _build_menus(self) -> None:
        R = QAction.MenuRole
        K = QKeySequence.StandardKey
        bar = self.menuBar()
        f = bar.addMenu("&File")
        self.new_action = self._action(f, "New Conversation", self._new_conversation, (K.New, "Ctrl+N"))
        self.open_folder_action = self._action(f, "Open Folder…", self._open_folder, (K.Open, "Ctrl+O"))
        self.recent_menu = f.addMenu("Open Recent Project")
        self.recent_menu.aboutToShow.connect(lambda: self.agent.fill_recent_menu(self.recent_menu))
        self._action(f, "Open Image…", self._open_image, "Ctrl+Shift+O")
        self.export_action = self._action(
            f, "Export Conversation…", self._export_conversation, "Ctrl+Shift+S"
        )
        f.addSeparator()
        self.preferences_action = self._action(
            f, "Preferences…", self.show_preferences, (K.Preferences, "Ctrl+,"), R.PreferencesRole
        )
        f.addSeparator()
        self.quit_action = self._action(f, "Quit Locus", self.close, (K.Quit, "Ctrl+Q"), R.QuitRole)
        e = bar.addMenu("&Edit")
        self.delete_conversation_action = self._action(e, "Delete Conversation…", self._delete_conversation)
        self.undo_deletion_action = self._action(e, "Undo Conversation Deletion", self.chat.undo_delete)
        e.addSeparator()
        self.undo_step_action = self._action(e, "Undo Last Agent Step", lambda: self.agent.undo(1))
        self.stop_action = self._action(e, "Stop", self.stop_current)
        # Items with nothing to act on are greyed out while the menu is open; enabled again when it
        # closes, so a shortcut still reaches them (and says why nothing happens).
        e.aboutToShow.connect(self.update_edit_menu)
        e.aboutToHide.connect(lambda: QTimer.singleShot(0, self._enable_edit_menu))
        v = bar.addMenu("&View")
        self.view_actions = []
        for i, name in enumerate(VIEWS):
            self.view_actions.append(self._action(v, name, lambda n=name: self.show_view(n), f"Ctrl+{i + 1}"))
        w = bar.addMenu("&Window")
        self._action(w, "Minimize", self.showMinimized, "Ctrl+M")
        self._action(w, "Zoom", lambda: self.showNormal() if self.isMaximized() else self.showMaximized())
        h = bar.addMenu("&Help")
        self._action(h, "Show Log", self.show_log)
        self.about_action = self._action(h, "About Locus", self.show_about, None, R.AboutRole)

    def update_edit_menu(self) -> None:
        """Grey out the Edit items that have nothing to act on right now."""
        chat = self.chat
        self.delete_conversation_action.setEnabled(
            chat.thread_id is not None or chat.conversations.currentItem() is not None
        )
        # The session keeps the last deleted conversation for Undo (enabled where that is not known).
        self.undo_deletion_action.setEnabled(getattr(chat.session, "_deleted", True) is not None)
        cps = self.agent._steps_source()
        self.undo_step_action.setEnabled(cps is not None and bool(cps.list()))
        agent_busy = self.agent.task is not None and self.agent.task.running
        self.stop_action.setEnabled(bool(chat.busy or agent_busy or self.locate_busy()))

    def _enable_edit_menu(self) -> None:
        for a in (self.delete_conversation_action, self.undo_deletion_action, self.undo_step_action):
            a.setEnabled(True)
        self.stop_action.setEnabled(True)

    def locate_busy(self) -> bool:
        task = getattr(self.locate, "task", None)
        return task is not None and bool(getattr(task, "running", False))

    def _new_conversation(self) -> None:
        self.show_view("Chat")
        self.chat.new_conversation()

    def _delete_conversation(self) -> None:
        self.show_view("Chat")
        self.chat.delete_selected_conversation()

    def _export_conversation(self) -> None:
        self.show_view("Chat")
        self.chat.export_conversation()

    def _open_folder(self) -> None:
        self.show_view("Agent")
        self.agent.choose_project()

    def _open_image(self) -> None:
        self.show_view("Locate")
        self.locate.choose_image()

    def stop_current(self) -> None:
        """Stop what the current view is doing (a reply, an agent run, a locate)."""
        view = self.views[self.stack.currentIndex()]
        busy = {
            "Chat": self.chat.busy,
            "Agent": self.agent.task is not None and self.agent.task.running,
            "Locate": self.locate_busy(),
        }
        if self.current_view in busy and not busy[self.current_view]:
            self.show_hint(f"Nothing to stop: the {self.current_view} view is not working on anything.")
            return
        if hasattr(view, "stop"):
            view.stop()

    def show_log(self) -> bool:
        """Help → Show Log: open the log in the system's viewer; where there is none (no desktop
        opener), show its last lines in a dialog that says where the file is."""
        path = log_path()
        if not path.exists():
            self.show_hint(f"No log yet (it will be written to {path}).")
            return False
        if _has_opener() and QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
            return True
        self.log_dialog = _LogDialog(path, self)
        self.log_dialog.show()
        return True

    def show_about(self) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("locus")
        except PackageNotFoundError:
            v = "development"
        QMessageBox.about(
            self,
            "About Locus",
            f"<b>Locus</b> {v}<br>Qwen3.6 and other MLX models on this machine: chat, "
            "an agent in your project folder, image localization and a local "
            "Anthropic/OpenAI-compatible API.",
        )

    def show_preferences(self) -> bool:
        from .preferences import PreferencesDialog

        dlg = PreferencesDialog(self)
        if dlg.exec():
            self.apply_preferences()
            return True
        return False

    def apply_preferences(self) -> None:
        """Use the saved defaults (Preferences…) in the views."""
        from app.settings import preference

        self.chat.input.set_enter_sends(bool(preference("enter_sends")))
        self.chat.set_default_profile(str(preference("sampling_profile")))
        if not self.server.running:
            self.server.port.setValue(int(preference("server_port")))
        self.models.show_context_choice()

    def _fit_screen(self) -> None:
        """Never larger than the screen (a saved geometry from a bigger display, say)."""
        screen = self.screen().availableGeometry() if self.screen() else None
        if screen is not None and (self.width() > screen.width() or self.height() > screen.height()):
            self.resize(min(self.width(), screen.width()), min(self.height(), screen.height()))

    # -- the model picker ---------------------------------------------------------------------------
    def _fill_picker(self) -> None:
        self.model_picker.blockSignals(True)
        self.model_picker.clear()
        if not self.model_path:
            self.model_picker.addItem("Choose a model…", "")
        seen = set()
        if self.model_path:
            # Not backend.info: a backend the manager has just closed may still be shown here.
            remote = self.model_path.startswith("remote:")
            self.model_picker.addItem(self.model_name + (" (remote)" if remote else ""), self.model_path)
            seen.add(str(Path(self.model_path).resolve()))
        for m in self.models.models:
            key = str(Path(m.path).resolve())
            if key not in seen and m.error is None:
                seen.add(key)
                self.model_picker.addItem(m.name, str(m.path))
        self.model_picker.addItem("Manage models…", "manage")
        self.model_picker.setCurrentIndex(0)
        self.model_picker.blockSignals(False)

    def _picked(self, index: int) -> None:
        path = self.model_picker.itemData(index)
        if path == "manage":
            self.show_view("Models")
        elif path and path != self.model_path:
            self.load_model(path)
        self._fill_picker()

    # -- views --------------------------------------------------------------------------------------
    def show_view(self, name: str) -> None:
        self.sidebar.setCurrentRow(VIEWS.index(name))

    @property
    def current_view(self) -> str:
        return VIEWS[self.stack.currentIndex()]

    def show_message(self, text: str) -> None:
        """An actionable message in a banner (clicking hides it) and the status bar."""
        short = text if len(text) <= _MAX_BANNER_CHARS else text[: _MAX_BANNER_CHARS - 1] + "…"
        self.error_banner.setText(short)
        self.error_banner.setToolTip(text)
        self.error_banner.setVisible(True)
        self.statusBar().showMessage(short.splitlines()[0] if short else "", 12000)
        self._hide_error.start()

    def show_hint(self, text: str) -> None:
        """Information, not an error: the status bar only."""
        self.statusBar().showMessage(text, 8000)

    # -- drops --------------------------------------------------------------------------------------
    # Any local file is accepted while dragging, so an unsupported one gets a hint on drop.
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _paths(event.mimeData()):
            _copy_or_link(event)
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if _paths(event.mimeData()):
            _copy_or_link(event)
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = _paths(event.mimeData())
        if not paths or not _copy_or_link(event):
            return
        if not self.open_paths(paths):
            event.ignore()

    def open_paths(self, paths: list[Path]) -> bool:
        route = route_drop(paths)
        if route is None:
            first = next((p for p in paths if p.is_file()), None)
            self.show_message(
                unsupported_image(first)
                if first is not None
                else "Drop a project folder (for the agent) or an image (to locate)."
            )
            return False
        view, path = route
        if view == "Agent":
            self.agent.open_project(path)
        else:
            self.locate.open_image(path)
        self.show_view(view)
        return True

    # -- the model ----------------------------------------------------------------------------------
    # The ModelManager (app/models.py) owns the model; its events reach `_model_event` on this thread.
    def set_backend(self, backend: Backend | None, name: str) -> None:
        """Use an already open backend (the one loaded before is unloaded first)."""
        self.manager.adopt(backend, name)
        self._show_backend(backend, name, self.manager.path, self.manager.memory_in_use)

    def _show_backend(self, backend: Backend | None, name: str, path: str, memory: int) -> None:
        self.backend, self.model_name = backend, name
        self.model_path = path if backend is not None else ""
        self.chat.set_backend(backend, name)
        self.agent.set_backend(backend)
        self.locate.set_backend(backend)
        self.server.set_backend(backend, name)
        self._set_label()
        self.model_info.setText(
            _describe_model(backend, memory, self._planned_context) if backend is not None else ""
        )
        remote = backend.info.remote if backend is not None else None
        self.model_info.setToolTip(
            f"The model runs on {remote}: prompts, images and the files the agent reads are sent there."
            if remote
            else ""
        )
        self.models.set_remote(remote, name)
        self.models.set_loaded(None if remote else self.model_path or None, memory)
        self.models.set_model_in_use(backend is not None)
        self._fill_picker()
        # Demo-ness is the model's own (a marker in its folder), not how Locus was started.
        self._set_demo(backend is not None and not remote and is_demo_model(self.model_path))

    def _set_demo(self, demo: bool) -> None:
        self.demo = demo
        self.demo_banner.setVisible(demo)
        self.setWindowTitle("Locus" + (" — demo model" if demo else ""))

    def _tell_where_secrets_go(self) -> None:
        """Where there is no keychain, secrets go to a private file: said once, at the first start."""
        from app import secret_store

        if not secret_store.install_fallback():
            return
        self.models.show_secrets_place()
        if not load_ui_settings().get("secrets_file_notice"):
            save_ui_settings({"secrets_file_notice": True})
            where = secret_store.secrets_file()
            self.statusBar().showMessage(
                f"No system keychain: tokens and API keys are kept in {where} (mode 600).", 30000
            )

    def _set_label(self) -> None:
        if self.loading_path is not None:
            if self.loading_path.startswith("remote:"):
                self.model_label.setText(f"Connecting to {self._loading_url}…")
            else:
                self.model_label.setText(f"Loading {Path(self.loading_path).name}…")
        elif self.backend is not None:
            self.model_label.setText("Remote model:" if self.backend.info.remote else "Model:")
        else:
            self.model_label.setText("No model loaded")

    def load_model(self, path: str) -> None:
        """Load in the background (the loaded model is unloaded first); Cancel stops the load."""
        if self._busy("loading another model"):
            return
        if self._already_loading(str(path)):
            return
        from app.settings import preference

        self.loading_path = str(path)
        self.load_progress.setRange(0, 0)  # busy until the first step is reported
        self._loading(True)
        self._set_label()
        self._next_context = int(preference("context_tokens"))  # Models → Context chooses it
        self.manager.load(str(path), context_tokens=self._next_context)

    def unload_model(self) -> None:
        """Eject: unload the model in use (on the manager's thread) and free its memory."""
        if self.backend is None:
            self.show_hint("No model is loaded.")
            return
        if self._busy("ejecting the model"):
            return
        self.manager.unload(wait=False)

    def load_remote(self, url: str, model: str = "", api_key: str | None = None) -> None:
        """Use the model of the OpenAI-compatible server at `url` (connecting in the background);
        the loaded model stays until the server answers."""
        if self._busy("switching to another model"):
            return
        if self._already_loading(remote_model_path(url, model or None)):
            return
        self._loading_url = url
        self.models.remote_url.setText(url)  # where a failure's reason is shown, with the fields
        self.models.remote_picker.setEditText(model)
        self.models.remote_status.setText(f"Connecting to {url}…")
        self.loading_path = self.manager.load_remote(url, api_key=api_key, model=model or None)
        self.load_progress.setRange(0, 0)
        self._loading(True)
        self._set_label()

    def _busy(self, what: str) -> bool:
        # The model in use is closed before the next one loads: never under a running reply or task.
        agent = self.agent.task
        if self.chat.busy or (agent is not None and agent.running):
            self.show_message(f"Stop the reply or the agent's task before {what}.")
            return True
        return False

    def _already_loading(self, path: str) -> bool:
        # Asking again for the model being loaded (a second click) must not restart its load.
        return self.loading_path == path and self.manager.loading == path

    def _loading(self, on: bool) -> None:
        # Widgets in a toolbar are shown and hidden through their actions.
        self._cancel_action.setVisible(on)
        self._progress_action.setVisible(on)

    def cancel_load(self) -> None:
        """Stop the load under way (it stops between shards; nothing half-loaded is kept)."""
        self.manager.cancel()
        self.loading_path = None
        self._loading(False)
        self._set_label()

    def _model_event(self, ev: ModelEvent) -> None:
        mine = self.loading_path is not None and ev.path == self.loading_path
        if isinstance(ev, LoadingProgress) and mine:
            self.load_progress.setRange(0, ev.total)
            self.load_progress.setValue(ev.done)
        elif isinstance(ev, ModelLoaded | ModelUnloaded):
            m = self.manager  # its present state: events that are already stale change nothing
            if mine and isinstance(ev, ModelLoaded):
                self.loading_path = None
                self._loading(False)
                self._planned_context = 0 if ev.info.remote else self._next_context
                if ev.info.remote:  # the Models view offers it again; never connected at start
                    save_ui_settings({"remote_url": self._loading_url, "remote_model": ev.name})
                elif not (self.launched_demo and is_demo_model(ev.path)):
                    save_ui_settings({"last_model": ev.path})  # the next plain `locus` opens with it
            if m.backend is not self.backend or isinstance(ev, ModelLoaded):
                self._show_backend(m.backend, m.name, m.path, m.memory_in_use)
            if mine and isinstance(ev, ModelLoaded):
                self.model_loaded.emit(ev.name)
        elif isinstance(ev, LoadingFailed | LoadingCancelled) and mine:
            self.loading_path = None
            self._loading(False)
            self._set_label()
            if isinstance(ev, LoadingFailed) and ev.path.startswith("remote:"):
                self.models.remote_failed(ev.message, notify=False)
                self.show_message(f"Could not use the remote model: {ev.message}")
            elif isinstance(ev, LoadingFailed):
                self.show_message(f"Could not load the model: {ev.message}")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.hide()  # the window goes at once; workers stop and the prompt cache is saved behind it
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop workers and close the engine (idempotent); remember the server's settings."""
        save_ui_settings(
            {
                "server_host": self.server.host.text().strip(),
                "server_port": self.server.port.value(),
                "window_geometry": bytes(self.saveGeometry().toHex()).decode(),
            }
        )
        views = (self.chat, self.agent, self.locate, self.server)
        for v in views:  # ask every worker to stop first, so their waits overlap
            v.stop()
        for v in (self.chat, self.agent, self.server):
            v.shutdown()
        self.manager.close()
        self.backend = None


def _scrolling(view: QWidget) -> QScrollArea:
    """A view in a scroll area: the window can be made smaller than the view's own minimum."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab and clicks go to the view's own widgets
    area.setWidget(view)
    return area


def _has_opener() -> bool:
    """Whether a desktop opener exists (always on macOS and Windows; xdg-open on Linux)."""
    import shutil
    import sys

    return not sys.platform.startswith("linux") or shutil.which("xdg-open") is not None


class _LogDialog(QDialog):
    """The log's last lines, where the system has no viewer to open it with."""

    def __init__(self, path: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Locus log")
        lay = QVBoxLayout(self)
        where = QLabel(f"The log is written to {path}")
        where.setWordWrap(True)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(where)
        self.text = QPlainTextEdit(readOnly=True)
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 200_000))  # the end is what matters; never a huge read
                body = f.read().decode("utf-8", "replace")
        except OSError as e:
            body = f"Could not read the log: {e}"
        self.text.setPlainText(body)
        self.text.moveCursor(self.text.textCursor().MoveOperation.End)
        lay.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.resize(760, 480)
