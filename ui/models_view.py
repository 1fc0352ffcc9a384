"""Models: local models (size, fits in memory; load with a context, eject), first-start guidance,
recommended downloads and a Hub search with progress, token, and a remote model server (URL, API
key in the keychain, a model from its /v1/models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app import hub
from app.backends import remote_key_from_keyring, remote_models, save_remote_key
from app.demo import demo_model_dir, is_demo_model
from app.settings import cache_dir, load_ui_settings, preference, save_ui_settings

from .bridge import Task, run_in_background
from .dialogs import confirm, machine_name

__all__ = ["CONTEXT_CHOICES", "ModelsView", "human_bytes"]

CONTEXT_CHOICES = (8192, 32768, 131072, 262144)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ModelsView(QWidget):
    """Lists models; downloads, deletes and loads them through app.hub on workers; lists a remote
    server's models (app.backends) and asks the window to use one."""

    load_requested = Signal(str)  # a model path for the window to load
    unload_requested = Signal()  # Eject: the window unloads its model
    searched = Signal(int)  # a Hub search answered with this many models
    # (url, model name or "", API key or None): the window uses that server's model
    remote_requested = Signal(str, str, object)
    remote_listed = Signal(int)  # the server answered /v1/models with this many models
    download_finished = Signal(str)  # "done", "paused", "cancelled" or "error"
    models_listed = Signal(int)
    message_for_user = Signal(str)
    hint_for_user = Signal(str)  # information, not an error (the status bar)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.models: list[hub.LocalModel] = []
        self.downloader: hub.Downloader | None = None
        self.download_task: Task | None = None
        self.list_task: Task | None = None
        # Also list what sits in the cache dir: the demo model lives there.
        self.extra_dirs: list[Path] = [cache_dir()]
        self.progress_interval = 0.2  # seconds between progress updates
        self.loaded_path: Path | None = None  # the window's model: marked, and never deleted
        self.memory_in_use = 0  # bytes the loaded model holds (free once it is unloaded)
        self.remote_task: Task | None = None
        self.search_task: Task | None = None
        self.found: list[hub.HubModel] = []
        self._listed_once = False
        self._in_use = False  # the window has a model (Eject can unload it)
        # Keys typed this session, by URL: used even where the keychain cannot store them.
        self._typed_keys: dict[str, str] = {}
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.addWidget(self._build_welcome())
        local = QGroupBox(f"On {machine_name()}")
        ll = QVBoxLayout(local)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Model", "Size", "Memory needed", "Fits"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setColumnWidth(0, 360)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.doubleClicked.connect(lambda *_: self.load_selected())
        ll.addWidget(self.table)
        row = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_selected)
        self.delete_button = QPushButton("Delete…")
        # clicked(bool) would land in delete_selected's first argument: always go through the dialog
        self.delete_button.clicked.connect(lambda *_: self.delete_selected())
        self.eject_button = QPushButton("Eject", enabled=False)
        self.eject_button.setToolTip("Unload the model in use and free its memory")
        self.eject_button.clicked.connect(lambda *_: self.unload_requested.emit())
        for b in (self.refresh_button, self.load_button, self.eject_button, self.delete_button):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(QLabel("Context:"))
        self.context_choice = QComboBox()
        self.context_choice.setToolTip(
            "The context a model is loaded with: memory is planned for this many tokens"
        )
        for n in CONTEXT_CHOICES:
            self.context_choice.addItem(f"{n // 1024}K tokens", n)
        self.show_context_choice()
        self.context_choice.activated.connect(lambda *_: self._context_chosen())
        row.addWidget(self.context_choice)
        ll.addLayout(row)
        lay.addWidget(local, 2)

        lay.addWidget(self._build_download())
        lay.addWidget(self._build_search(), 2)

        self.token_box = tok = QGroupBox("Hugging Face token (kept in the system keychain only)")
        tl = QHBoxLayout(tok)
        self.token_input = QLineEdit(echoMode=QLineEdit.EchoMode.Password)
        self.token_input.setPlaceholderText("hf_… (needed for gated or private models)")
        tl.addWidget(self.token_input, 1)
        self.save_token_button = QPushButton("Save")
        self.save_token_button.clicked.connect(self.save_token)
        self.forget_token_button = QPushButton("Forget")
        self.forget_token_button.clicked.connect(self.forget_token)
        tl.addWidget(self.save_token_button)
        tl.addWidget(self.forget_token_button)
        self.token_state = QLabel()
        tl.addWidget(self.token_state)
        lay.addWidget(tok)
        self._show_token_state()
        lay.addWidget(self._build_remote())

    def _build_download(self) -> QGroupBox:
        """The recommended models, a repo to download, its progress."""
        rec = QGroupBox("Download")
        rl = QVBoxLayout(rec)
        self.rec_table = QTableWidget(len(hub.RECOMMENDED), 3)
        self.rec_table.setHorizontalHeaderLabels(["Recommended", "Size", "About"])
        self.rec_table.horizontalHeader().setStretchLastSection(True)
        self.rec_table.verticalHeader().setVisible(False)
        self.rec_table.setColumnWidth(0, 300)
        self.rec_table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.rec_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for i, m in enumerate(hub.RECOMMENDED):
            self.rec_table.setItem(i, 0, QTableWidgetItem(m.repo_id))
            self.rec_table.setItem(i, 1, QTableWidgetItem(f"≈{m.approx_gb:.0f} GB"))
            self.rec_table.setItem(i, 2, QTableWidgetItem(m.description))
        self.rec_table.itemSelectionChanged.connect(self._pick_recommended)
        self.rec_table.resizeRowsToContents()
        # As tall as its rows: the room goes to the lists that grow (on disk, search results).
        self.rec_table.setFixedHeight(
            self.rec_table.horizontalHeader().sizeHint().height()
            + self.rec_table.verticalHeader().length()
            + 2 * self.rec_table.frameWidth()
        )
        rl.addWidget(self.rec_table)
        drow = QHBoxLayout()
        self.repo_input = QLineEdit(hub.RECOMMENDED[0].repo_id)
        self.repo_input.setPlaceholderText("owner/name on Hugging Face")
        drow.addWidget(self.repo_input, 1)
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download)
        self.pause_button = QPushButton("Pause", enabled=False)
        self.pause_button.clicked.connect(self.pause)
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.cancel_button.clicked.connect(self.cancel)
        self.discard_button = QPushButton("Discard", enabled=False)
        self.discard_button.setToolTip("Remove what a stopped download left on disk")
        self.discard_button.clicked.connect(lambda *_: self.discard())
        for b in (self.download_button, self.pause_button, self.cancel_button, self.discard_button):
            drow.addWidget(b)
        rl.addLayout(drow)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        rl.addWidget(self.progress)
        self.progress_label = QLabel("")
        # Wrapped: a long error never makes the window wider than the screen.
        self.progress_label.setWordWrap(True)
        self.progress_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        rl.addWidget(self.progress_label)
        return rec

    def _build_welcome(self) -> QFrame:
        """What a first start shows: no model yet, the demo model, and what to download."""
        self.welcome = QFrame()
        self.welcome.setObjectName("welcome")
        self.welcome.setFrameShape(QFrame.Shape.StyledPanel)
        wl = QVBoxLayout(self.welcome)
        rec = hub.RECOMMENDED[0]
        self.welcome_text = QLabel(
            f"<b>No model on {machine_name()} yet.</b> Try Locus at once with the demo model (tiny, "
            "built here in seconds: every part runs, but its weights are random, so replies are "
            f"gibberish), or download a real one below: {rec.repo_id} (≈{rec.approx_gb:.0f} GB) is the "
            "model Locus is built for; the search finds other MLX models and says which fit."
        )
        self.welcome_text.setWordWrap(True)
        self.welcome_text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        wl.addWidget(self.welcome_text)
        row = QHBoxLayout()
        self.demo_button = QPushButton("Use the demo model")
        self.demo_button.clicked.connect(lambda *_: self.use_demo())
        self.download_recommended_button = QPushButton(f"Download {rec.repo_id.split('/')[-1]}")
        self.download_recommended_button.clicked.connect(lambda *_: self._download_recommended())
        row.addWidget(self.demo_button)
        row.addWidget(self.download_recommended_button)
        row.addStretch(1)
        wl.addLayout(row)
        self.welcome.setVisible(False)  # until the list says there is no model
        return self.welcome

    def _build_search(self) -> QGroupBox:
        box = QGroupBox("Find MLX models on Hugging Face")
        bl = QVBoxLayout(box)
        row = QHBoxLayout()
        self.search_input = QLineEdit(placeholderText="Search, e.g. qwen3 4bit")
        self.search_input.returnPressed.connect(self.search)
        row.addWidget(self.search_input, 1)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(lambda *_: self.search())
        row.addWidget(self.search_button)
        bl.addLayout(row)
        self.search_table = QTableWidget(0, 5)
        self.search_table.setHorizontalHeaderLabels(["Model", "Size", "Quantization", "Fits", "Downloads"])
        self.search_table.horizontalHeader().setStretchLastSection(True)
        self.search_table.verticalHeader().setVisible(False)
        self.search_table.setColumnWidth(0, 320)
        self.search_table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.search_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.search_table.itemSelectionChanged.connect(self._pick_found)
        self.search_table.doubleClicked.connect(lambda *_: self.download())
        self.search_table.setMinimumHeight(100)
        bl.addWidget(self.search_table, 1)
        self.search_status = QLabel(
            "Lists MLX conversions (the Hub's “mlx” library); nothing is sent until you search."
        )
        self.search_status.setWordWrap(True)
        self.search_status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        bl.addWidget(self.search_status)
        return box

    def _build_remote(self) -> QGroupBox:
        box = QGroupBox("Remote server (prompts, images and the agent's files are sent to it)")
        rl = QVBoxLayout(box)
        urow = QHBoxLayout()
        saved = load_ui_settings()
        self.remote_url = QLineEdit(str(saved.get("remote_url") or ""))
        self.remote_url.setPlaceholderText("OpenAI-compatible base URL, e.g. http://host:8000/v1")
        # Once the URL is typed, not per keystroke: a keychain lookup can block (D-Bus on Linux).
        self.remote_url.editingFinished.connect(self._show_key_state)
        urow.addWidget(self.remote_url, 2)
        self.remote_key = QLineEdit(echoMode=QLineEdit.EchoMode.Password)
        self.remote_key.setToolTip("Sent as Authorization: Bearer; kept in the system keychain")
        urow.addWidget(self.remote_key, 1)
        self.forget_remote_key_button = QPushButton("Forget key")
        self.forget_remote_key_button.clicked.connect(lambda *_: self.forget_remote_key())
        urow.addWidget(self.forget_remote_key_button)
        rl.addLayout(urow)
        mrow = QHBoxLayout()
        self.list_remote_button = QPushButton("List models")
        self.list_remote_button.clicked.connect(lambda *_: self.list_remote_models())
        mrow.addWidget(self.list_remote_button)
        self.remote_picker = QComboBox(editable=True)
        self.remote_picker.setMinimumContentsLength(24)
        self.remote_picker.lineEdit().setPlaceholderText("the server's first model")
        if saved.get("remote_model"):
            self.remote_picker.setEditText(str(saved["remote_model"]))
        mrow.addWidget(self.remote_picker, 1)
        self.use_remote_button = QPushButton("Use")
        self.use_remote_button.clicked.connect(lambda *_: self.use_remote())
        mrow.addWidget(self.use_remote_button)
        rl.addLayout(mrow)
        self.remote_status = QLabel("Nothing is sent anywhere until you list or use a server.")
        self.remote_status.setWordWrap(True)
        rl.addWidget(self.remote_status)
        self._show_key_state()
        return box

    # -- local models -------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.list_task is not None and self.list_task.running:
            return
        self.refresh_button.setEnabled(False)
        self.list_task = run_in_background(
            hub.list_local_models,
            self.extra_dirs,
            in_use=self.memory_in_use,
            on_done=self._show_models,
            on_error=self._list_failed,
        )

    def _list_failed(self, message: str) -> None:
        self.refresh_button.setEnabled(True)
        self.message_for_user.emit(f"Could not list models: {message}")

    def _show_models(self, models: list[hub.LocalModel]) -> None:
        self.refresh_button.setEnabled(True)
        self.models = list(models)
        self._listed_once = True
        self._show_welcome()
        self.table.setRowCount(len(self.models))
        for i, m in enumerate(self.models):
            demo = "  (demo: random weights)" if is_demo_model(m.path) else ""
            name = QTableWidgetItem(m.name + demo + ("  ● loaded" if self.is_loaded(m) else ""))
            if self.is_loaded(m):
                f = QFont()
                f.setBold(True)
                name.setFont(f)
            self.table.setItem(i, 0, name)
            self.table.setItem(i, 1, QTableWidgetItem(human_bytes(m.size_bytes)))
            need = human_bytes(m.needed_bytes) if m.needed_bytes is not None else "?"
            self.table.setItem(i, 2, QTableWidgetItem(need))
            fits = {
                True: "Yes",
                False: f"No ({human_bytes(m.available_bytes)} available)",
                None: f"Unreadable: {m.error}",
            }[m.fits]
            self.table.setItem(i, 3, QTableWidgetItem(fits))
        self.models_listed.emit(len(self.models))

    def _selected(self) -> hub.LocalModel | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            self.message_for_user.emit("Select a model in the list first.")
            return None
        return self.models[rows[0].row()]

    def load_selected(self) -> None:
        m = self._selected()
        if m is not None:
            self.load_requested.emit(str(m.path))

    def set_loaded(self, path: str | Path | None, memory: int = 0) -> None:
        """Mark the window's loaded model in the list (and protect it from Delete); `memory` is
        what it holds, free for another model once it is unloaded."""
        self.loaded_path = Path(path).resolve() if path else None
        self.memory_in_use = memory if path else 0
        self._show_welcome()
        if self.models:
            self._show_models(self.models)

    def is_loaded(self, m: hub.LocalModel) -> bool:
        return self.loaded_path is not None and Path(m.path).resolve() == self.loaded_path

    def set_model_in_use(self, in_use: bool) -> None:
        """Whether the window has a model (local or remote) that Eject can unload."""
        self.eject_button.setEnabled(in_use)
        self._in_use = in_use
        self._show_welcome()

    def _show_welcome(self) -> None:
        # Only once the list is known: never flashes at start while it is being read.
        empty = self._listed_once and not any(m.error is None for m in self.models)
        self.welcome.setVisible(empty and not self._in_use)

    def use_demo(self) -> None:
        """Build the demo model (seconds, on a worker, once) and ask the window to load it."""
        self.demo_button.setEnabled(False)
        self.hint_for_user.emit("Building the demo model…")

        def done(path: Path) -> None:
            self.demo_button.setEnabled(True)
            self.load_requested.emit(str(path))
            self.refresh()

        def failed(message: str) -> None:
            self.demo_button.setEnabled(True)
            self.message_for_user.emit(f"Could not build the demo model: {message}")

        run_in_background(demo_model_dir, on_done=done, on_error=failed)

    def _download_recommended(self) -> None:
        self.rec_table.selectRow(0)
        self.repo_input.setText(hub.RECOMMENDED[0].repo_id)
        self.download()

    def chosen_context(self) -> int:
        """The context a model is loaded with (the "context_tokens" preference, one source)."""
        return int(preference("context_tokens"))

    def show_context_choice(self) -> None:
        """Show the saved context; a value set in Preferences that is not a choice is added."""
        n = self.chosen_context()
        i = self.context_choice.findData(n)
        if i < 0:
            self.context_choice.addItem(f"{n:,} tokens", n)
            i = self.context_choice.count() - 1
        self.context_choice.setCurrentIndex(i)

    def _context_chosen(self) -> None:
        save_ui_settings({"context_tokens": int(self.context_choice.currentData())})
        self.hint_for_user.emit("The context applies to the next model loaded (Load again to use it now).")

    def delete_selected(self) -> None:
        """Delete the selected model's files after a confirmation that shows their size."""
        m = self._selected()
        if m is None:
            return
        if self.is_loaded(m):
            self.message_for_user.emit(f"{m.name} is loaded: load another model before deleting this one.")
            return
        if not confirm(
            self,
            "Delete model",
            f"Delete {m.name} from disk?\n\n{human_bytes(m.size_bytes)} in {m.path} "
            "will be removed; downloading it again takes as long as the first time.",
            f"Delete {human_bytes(m.size_bytes)}",
        ):
            return
        try:
            hub.delete_model(m)
        except hub.HubError as e:
            self.message_for_user.emit(str(e))
        self.refresh()

    # -- downloads ----------------------------------------------------------------------------------
    def _pick_recommended(self) -> None:
        rows = self.rec_table.selectionModel().selectedRows()
        if rows:
            self.repo_input.setText(hub.RECOMMENDED[rows[0].row()].repo_id)

    def download(self) -> None:
        if self.download_task is not None and self.download_task.running:
            return
        repo = self.repo_input.text().strip()
        if not repo:
            self.message_for_user.emit("Choose a model to download (or type its owner/name).")
            return
        try:
            if self.downloader is None or self.downloader.repo_id != repo:
                self.downloader = hub.Downloader(repo)
        except hub.HubError as e:
            self.message_for_user.emit(str(e))
            return
        d = self.downloader

        def work(task: Task) -> Path:
            return d.download(
                on_progress=lambda p: task.emit_event(_copy(p)), interval=self.progress_interval
            )

        self.download_button.setEnabled(False)
        self.pause_button.setEnabled(True)
        self.cancel_button.setEnabled(True)
        self.discard_button.setEnabled(False)
        self.progress_label.setText(f"Connecting for {repo}…")
        self.download_task = run_in_background(
            work, on_event=self._show_progress, on_done=self._downloaded, on_error=self._dl_failed
        )

    def pause(self) -> None:
        if self.downloader is not None:
            self.downloader.pause()

    def cancel(self) -> None:
        if self.downloader is not None:
            self.downloader.cancel()

    def discard(self) -> None:
        """Forget a stopped (failed or paused) download and remove the files it left."""
        if self.download_task is not None and self.download_task.running:
            self.cancel()  # a running one: Cancel removes its files itself
            return
        d, self.downloader = self.downloader, None
        if d is not None:
            try:
                d.discard()
            except OSError as e:
                self.message_for_user.emit(f"Could not remove the partial download: {e}")
        self.download_button.setText("Download")
        self.discard_button.setEnabled(False)
        self.progress.setValue(0)
        self.progress_label.setText("Discarded; partial files removed." if d is not None else "")

    def _show_progress(self, p: hub.DownloadProgress) -> None:
        self.progress.setValue(int(p.fraction * 1000))
        self.progress_label.setText(
            f"{p.repo_id}: {human_bytes(p.done_bytes)} of {human_bytes(p.total_bytes)} · "
            f"{human_bytes(p.speed)}/s · file {min(p.files_done + 1, p.files_total)}/"
            f"{p.files_total} {p.file}"
        )

    def _end_download(self) -> None:
        self.download_button.setEnabled(True)
        self.pause_button.setEnabled(False)
        self.cancel_button.setEnabled(False)

    def _downloaded(self, path: Path) -> None:
        self._end_download()
        self.download_button.setText("Download")
        self.discard_button.setEnabled(False)
        self.progress.setValue(1000)
        self.progress_label.setText(f"Downloaded to {path}")
        self.downloader = None
        self.refresh()
        self.download_finished.emit("done")

    def _dl_failed(self, message: str) -> None:
        self._end_download()
        state = self.downloader.progress.state if self.downloader else "error"
        if state == "paused":
            self.download_button.setText("Resume")
            self.progress_label.setText("Paused. Press Resume to continue.")
        elif state == "cancelled":
            self.download_button.setText("Download")
            self.progress.setValue(0)
            self.progress_label.setText("Cancelled; partial files removed.")
            self.downloader = None
        else:
            state = "error"
            p = self.downloader.progress if self.downloader else None
            # Resume only where something was fetched; nothing yet: try again from the start.
            started = p is not None and p.done_bytes > 0
            self.download_button.setText(
                f"Resume ({human_bytes(p.done_bytes)} kept)" if started and p else "Try again"
            )
            self.progress_label.setText(message)
            self.message_for_user.emit(message)
        self.discard_button.setEnabled(state in ("paused", "error"))
        self.download_finished.emit(state)

    # -- Hub search ---------------------------------------------------------------------------------
    def search(self) -> None:
        """Ask the Hub (on a worker) for MLX models matching the search text."""
        if self.search_task is not None and self.search_task.running:
            return
        query = self.search_input.text().strip()
        self.search_button.setEnabled(False)
        self.search_status.setText(f"Searching Hugging Face for “{query}”…" if query else "Searching…")
        self.search_task = run_in_background(
            hub.search_models,
            query,
            context_tokens=self.chosen_context(),
            on_done=self._show_found,
            on_error=self._search_failed,
        )

    def _search_failed(self, message: str) -> None:
        self.search_button.setEnabled(True)
        self.search_status.setText(message)
        self.message_for_user.emit(message)

    def _show_found(self, found: list[hub.HubModel]) -> None:
        self.search_button.setEnabled(True)
        self.found = list(found)
        self.search_table.setRowCount(len(self.found))
        for i, m in enumerate(self.found):
            fits = {
                True: "Yes",
                False: f"No (needs {human_bytes(m.needed_bytes or 0)})",
                None: "?",
            }[m.fits]
            cells = [
                m.repo_id,
                human_bytes(m.size_bytes) if m.size_bytes else "?",
                m.quantization or "?",
                fits,
                f"{m.downloads:,}",
            ]
            for j, c in enumerate(cells):
                self.search_table.setItem(i, j, QTableWidgetItem(c))
        self.search_status.setText(
            f"{len(self.found)} MLX model(s): select one and press Download; "
            f"“Fits” counts a {self.chosen_context() // 1024}K context."
            if self.found
            else "No MLX model matches: try fewer words."
        )
        self.searched.emit(len(self.found))

    def _pick_found(self) -> None:
        rows = self.search_table.selectionModel().selectedRows()
        if rows:
            self.repo_input.setText(self.found[rows[0].row()].repo_id)

    # -- token --------------------------------------------------------------------------------------
    def save_token(self) -> None:
        try:
            hub.set_token(self.token_input.text())
        except hub.HubError as e:
            self.message_for_user.emit(str(e))
            return
        self.token_input.clear()
        self._show_token_state()

    def forget_token(self) -> None:
        try:
            hub.delete_token()
        except hub.HubError as e:
            self.message_for_user.emit(str(e))
        self._show_token_state()

    def _show_token_state(self) -> None:
        self.token_state.setText("Token saved" if hub.get_token() else "No token")

    def show_secrets_place(self) -> None:
        """Say where the token and API keys go when there is no system keychain (a private file)."""
        from app import secret_store

        if not secret_store.uses_file():
            return
        where = secret_store.secrets_file()
        self.token_box.setTitle(f"Hugging Face token (no system keychain: kept in {where.name}, mode 600)")
        self.token_box.setToolTip(f"Kept in {where}, readable only by you: {secret_store.describe()}")
        self.remote_key.setToolTip(f"Sent as Authorization: Bearer; kept in {where} (mode 600)")

    # -- remote server ------------------------------------------------------------------------------
    def _remote_url(self) -> str | None:
        url = self.remote_url.text().strip()
        if not url:
            self.remote_status.setText("Type the server's URL first, e.g. http://host:8000/v1.")
            self.message_for_user.emit("Type the remote server's URL first.")
            return None
        return url

    def session_key(self, url: str, key: str) -> None:
        """Send `key` to `url` for this session (a key from --remote-key-env; never stored)."""
        self._typed_keys[url.strip()] = key
        self._show_key_state()

    def _api_key(self, url: str) -> str | None:
        """The key to send to `url`: one just typed (saved to the keychain, then cleared from the
        field), else one typed earlier this session, else the keychain's."""
        typed = self.remote_key.text().strip()
        if typed:
            self._typed_keys[url] = typed
            self.remote_key.clear()
            try:
                save_remote_key(url, typed)
            except Exception as e:  # the key still works: this session only, said as information
                self.hint_for_user.emit(
                    f"The API key could not be stored ({type(e).__name__}); it is kept until Locus quits."
                )
            self._show_key_state()
            return typed
        if url in self._typed_keys:
            return self._typed_keys[url]
        try:
            return remote_key_from_keyring(url)
        except Exception as e:  # no stored key can be read: the request goes without one
            self.hint_for_user.emit(str(e))
            return None

    def _stored_key(self, url: str) -> bool:
        if not url:
            return False
        if url in self._typed_keys:
            return True
        try:
            return bool(remote_key_from_keyring(url))
        except Exception:
            return False

    def _show_key_state(self) -> None:
        # The key is never shown back: only whether one is stored for this URL.
        stored = self._stored_key(self.remote_url.text().strip())
        self.remote_key.setPlaceholderText(
            "API key saved (type to replace)" if stored else "API key (if the server needs one)"
        )
        self.forget_remote_key_button.setEnabled(stored)

    def forget_remote_key(self) -> None:
        """Remove the API key for the URL typed from the keychain (and from this session)."""
        url = self.remote_url.text().strip()
        if not url:
            return
        self._typed_keys.pop(url, None)
        try:
            save_remote_key(url, None)
        except Exception as e:
            self.message_for_user.emit(f"Could not remove the key from the keychain: {e}")
        self._show_key_state()

    def list_remote_models(self) -> None:
        """Ask the server's /v1/models (on a worker) and fill the model picker."""
        if self.remote_task is not None and self.remote_task.running:
            return
        url = self._remote_url()
        if url is None:
            return
        key = self._api_key(url)
        self.list_remote_button.setEnabled(False)
        self.remote_status.setText(f"Asking {url} for its models…")
        self.remote_task = run_in_background(
            remote_models,
            url,
            api_key=key,
            on_done=self._remote_listed,
            on_error=self._remote_list_failed,
        )

    def _remote_listed(self, names: list[str]) -> None:
        self.list_remote_button.setEnabled(True)
        typed = self.remote_picker.currentText().strip()
        self.remote_picker.clear()
        self.remote_picker.addItems(names)
        if typed in names:
            self.remote_picker.setCurrentText(typed)
        self.remote_status.setText(
            f"{len(names)} model(s) on the server: choose one and press Use."
            if names
            else "The server lists no models: type the name it serves, or leave it empty for its default."
        )
        self.remote_listed.emit(len(names))

    def _remote_list_failed(self, message: str) -> None:
        self.list_remote_button.setEnabled(True)
        self.remote_failed(message)

    def remote_failed(self, message: str, *, notify: bool = True) -> None:
        """Show why the server could not be listed or used (with `notify`, in the window too)."""
        self.remote_status.setText(f"Error: {message}")
        if notify:
            self.message_for_user.emit(f"Remote server: {message}")

    def use_remote(self) -> None:
        """Ask the window to use the chosen model of the server (it connects in the background)."""
        url = self._remote_url()
        if url is None:
            return
        key = self._api_key(url)
        self.remote_requested.emit(url, self.remote_picker.currentText().strip(), key)

    def set_remote(self, url: str | None, model: str = "") -> None:
        """Show which remote model is in use (None: the model is not remote)."""
        if url:
            self.remote_url.setText(url)
            self.remote_picker.setEditText(model)
            self.remote_status.setText(f"In use: {model} at {url}.")
        elif self.remote_status.text().startswith("In use"):
            self.remote_status.setText("Not in use: the model runs on this machine.")


def _copy(p: hub.DownloadProgress) -> Any:
    from dataclasses import replace

    return replace(p)  # the worker keeps mutating its own copy
