"""Agent: a project's live file tree, the run transcript, approval cards with diffs, undo, stop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.agent import (
    Agent,
    AgentConfig,
    AgentEvent,
    ApprovalRequest,
    Approvals,
    Decision,
    EngineBackend,
    ModelBackend,
    default_prefix,
    detect_sandbox,
)
from app.agent.approvals import valid_prefix
from app.agent.checkpoints import CheckpointError, Checkpoints
from app.agent.ignore import walk
from app.agent.watch import TreeWatcher
from app.mcp import McpConfigError, load_servers
from app.settings import data_dir, load_ui_settings, save_ui_settings
from app.store import Store
from app.textsafe import has_hidden, show_block, show_line, show_prose

from .bridge import Task, run_in_background

if TYPE_CHECKING:
    from engine import Backend

__all__ = ["AgentView", "ApprovalCard", "DiffHighlighter", "diff_html"]

_MAX_TREE = 3000  # entries shown; a huge folder must not freeze the window
_MAX_RECENT = 8
_MAX_FILE_SHOWN = 512 * 1024  # bytes of a clicked file shown


def recent_projects() -> list[Path]:
    """Projects opened before, most recent first (those that still exist)."""
    items = load_ui_settings().get("recent_projects") or []
    return [Path(p) for p in items if isinstance(p, str) and Path(p).is_dir()]


def _remember_project(p: Path) -> None:
    items = [str(p)] + [str(x) for x in recent_projects() if x != p]
    save_ui_settings({"last_project": str(p), "recent_projects": items[:_MAX_RECENT]})


# Added, removed and hunk lines, readable on light and dark themes alike.
_DIFF_COLORS = {"+": "#2ea043", "-": "#e5534b", "@": "#539bf5"}


def _diff_color(line: str) -> str | None:
    if line.startswith(("+++", "---")):
        return None
    return _DIFF_COLORS.get(line[:1])


def diff_html(patch: str) -> str:
    """A unified diff as coloured HTML (escaped; control characters shown)."""
    out = []
    for line in show_block(patch).split("\n"):
        color = _diff_color(line)
        text = _esc(line, show=str)
        out.append(f"<span style='color:{color}'>{text}</span>" if color else text)
    return "<pre>" + "\n".join(out) + "</pre>"


class DiffHighlighter(QSyntaxHighlighter):
    """Colours a diff shown in a plain-text editor (an approval card's)."""

    def __init__(self, doc: QTextDocument) -> None:
        super().__init__(doc)
        self.formats: dict[str, QTextCharFormat] = {}
        for k, c in _DIFF_COLORS.items():
            f = QTextCharFormat()
            f.setForeground(QColor(c))
            self.formats[k] = f

    def highlightBlock(self, text: str) -> None:
        color = _diff_color(text)
        if color is not None:
            self.setFormat(0, len(text), self.formats[text[:1]])


class ApprovalCard(QFrame):
    """One pending action with its diff: approve, reject with a reason, or allow for the session."""

    decided = Signal(object)  # Decision

    def __init__(self, req: ApprovalRequest, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.req = req
        self.setObjectName("approvalCard")
        lay = QVBoxLayout(self)
        # Everything shown is escaped: a control character must not hide what is approved.
        self.title = QLabel(f"<b>Approve?</b> {_esc(show_line(req.summary))}")
        self.title.setWordWrap(True)
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        lay.addWidget(self.title)
        if not req.sandboxed and req.command is not None:
            warn = QLabel("This command runs WITHOUT a sandbox, with your full permissions.")
            warn.setObjectName("notice")
            lay.addWidget(warn)
        self.hidden_note: QLabel | None = None
        if has_hidden(req.summary + (req.command or ""), keep="") or has_hidden(req.diff or ""):
            self.hidden_note = QLabel("Control characters are shown escaped, like \\x1b.")
            self.hidden_note.setObjectName("notice")
            lay.addWidget(self.hidden_note)
        # Buttons above the diff: at small window sizes they stay in view.
        self.buttons_row = QWidget()
        row = QHBoxLayout(self.buttons_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.approve_button = QPushButton("Approve")
        self.approve_button.clicked.connect(lambda: self._decide(Decision.approve()))
        self.reject_button = QPushButton("Reject")
        self.reject_button.clicked.connect(lambda: self._decide(Decision.reject(self.reason.text().strip())))
        self.allow_button = QPushButton("Allow for session")
        self.allow_button.clicked.connect(lambda: self._decide(Decision.allow_tool()))
        self._buttons = [self.approve_button, self.reject_button, self.allow_button]
        for b in self._buttons:
            row.addWidget(b)
        self.prefix: QLineEdit | None = None
        if req.command is not None:
            # Allow this command and later simple ones (no pipes or redirects) starting with a prefix.
            self.prefix = QLineEdit(default_prefix(req.command), placeholderText="command prefix")
            self.prefix.setMaximumWidth(220)
            self.prefix_button = QPushButton("Allow commands starting with")
            self.prefix_button.clicked.connect(self._allow_prefix)
            row.addWidget(self.prefix_button)
            row.addWidget(self.prefix)
            self._buttons.append(self.prefix_button)
        row.addStretch(1)
        lay.addWidget(self.buttons_row)
        self.reason = QLineEdit(placeholderText="Reason (sent to the model if you reject)")
        lay.addWidget(self.reason)
        text = req.diff or req.preview  # an edit's diff, or an MCP tool's arguments
        body = show_block(text) if text else show_line(req.command or "")
        if body:
            self.diff_view = QPlainTextEdit(body, readOnly=True)
            self.diff_view.setFont(QFont("Menlo, Consolas, monospace"))
            lines = body.count("\n") + 1
            self.diff_view.setFixedHeight(min(240, 20 + lines * 16))
            if req.diff:
                self.highlighter = DiffHighlighter(self.diff_view.document())
                self.highlighter.rehighlight()  # now, not at the next event loop turn
            lay.addWidget(self.diff_view)
        self.outcome = QLabel()
        lay.addWidget(self.outcome)

    def _allow_prefix(self) -> None:
        prefix = self.prefix.text().strip() if self.prefix is not None else ""
        if not prefix:
            self.outcome.setText("Type the start of the commands to allow, e.g. pytest")
            return
        if not valid_prefix(prefix):
            self.outcome.setText("A prefix is a program and plain words, e.g. pytest (no ; | $ * …)")
            return
        self._decide(Decision.allow_prefix(prefix))

    def _decide(self, d: Decision) -> None:
        self.setProperty("decided", True)  # the stylesheet greys a decided card's border
        self.style().unpolish(self)
        self.style().polish(self)
        for b in self._buttons:
            b.setEnabled(False)
        self.reason.setEnabled(False)
        # A decided card shrinks to its title and outcome: the next one stays in view.
        self.reason.setVisible(False)
        if hasattr(self, "diff_view"):
            self.diff_view.setVisible(False)
        if self.prefix is not None:
            self.prefix.setEnabled(False)
        self.outcome.setText(
            {
                "approve": "Approved",
                "reject": "Rejected",
                "allow_tool": "Allowed for this session",
                "allow_prefix": f"Allowed: commands starting with '{show_line(d.prefix)}'",
            }.get(d.action, d.action)
        )
        self.decided.emit(d)


class AgentView(QWidget):
    """Runs the agent on a worker; asks approvals through cards; keeps the tree live."""

    run_finished = Signal(str)  # done.status
    approval_shown = Signal(object)  # ApprovalCard, for tests
    message_for_user = Signal(str)  # an error the user should act on
    hint_for_user = Signal(str)  # information, not an error (status bar only)
    project_opened = Signal(str)
    runs_listed = Signal()  # the project's past runs are listed (read off the UI thread)
    run_shown = Signal(str)  # a stored run's transcript is shown

    def __init__(self, parent: QWidget | None = None, store: Store | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.data_dir = data_dir()
        self.checkpoints: Checkpoints | None = None  # the project's steps, from any session
        self.backend: Backend | None = None  # the loaded model
        self.backend_factory: Any = None  # tests: a callable returning a ModelBackend
        self.project: Path | None = None
        self.agent: Agent | None = None
        self.task: Task | None = None
        self.cards: list[ApprovalCard] = []
        self.watcher: TreeWatcher | None = None
        self._streaming = ""
        self._answer_streamed = ""  # the answer text streamed live since the run started
        self._emit: Any = None
        self._tree_timer = QTimer(self, interval=300)
        self._tree_timer.timeout.connect(self._poll_tree)
        self.sandbox = detect_sandbox("auto")
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.project_label = QLabel("Open a project folder, or drop one anywhere on the window.")
        self.project_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top.addWidget(self.project_label, 1)
        self.open_button = QPushButton("Open Folder…")
        self.open_button.clicked.connect(lambda *_: self.choose_project())
        top.addWidget(self.open_button)
        self.recent_button = QToolButton(text="Recent")
        self.recent_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_menu = QMenu(self.recent_button)
        self.recent_menu.aboutToShow.connect(lambda: self.fill_recent_menu(self.recent_menu))
        self.recent_button.setMenu(self.recent_menu)
        top.addWidget(self.recent_button)
        lay.addLayout(top)
        self.sandbox_notice = QLabel(
            f"Commands run WITHOUT a sandbox ({self.sandbox.reason or 'none found'}): each one asks "
            "for approval and runs with your permissions."
        )
        self.sandbox_notice.setObjectName("notice")
        self.sandbox_notice.setWordWrap(True)
        self.sandbox_notice.setVisible(not self.sandbox.active)
        lay.addWidget(self.sandbox_notice)
        row = QHBoxLayout()
        self.task_input = QLineEdit(placeholderText="What should the agent do in this project?")
        self.task_input.returnPressed.connect(self.start_run)
        row.addWidget(self.task_input, 1)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start_run)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop)
        self.undo_button = QPushButton("Undo last step")
        self.undo_button.clicked.connect(lambda *_: self.undo(1))
        for b in (self.run_button, self.stop_button, self.undo_button):
            row.addWidget(b)
        lay.addLayout(row)
        split = QSplitter()
        left = QSplitter(Qt.Orientation.Vertical)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Project"])
        self.tree.itemClicked.connect(lambda item, *_: self.show_file(self._item_path(item)))
        left.addWidget(self.tree)
        steps_box = QWidget()
        sl = QVBoxLayout(steps_box)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(QLabel("Steps (select one to undo back to it)"))
        self.steps = QListWidget()
        sl.addWidget(self.steps)
        self.undo_to_button = QPushButton("Undo to here")
        self.undo_to_button.clicked.connect(lambda *_: self.undo_to_selected())
        sl.addWidget(self.undo_to_button)
        left.addWidget(steps_box)
        runs_box = QWidget()
        rbl = QVBoxLayout(runs_box)
        rbl.setContentsMargins(0, 0, 0, 0)
        rbl.addWidget(QLabel("Past runs (select one to read it)"))
        self.runs = QListWidget()
        self.runs.itemClicked.connect(lambda it: self.show_run(it.data(256)))
        rbl.addWidget(self.runs)
        left.addWidget(runs_box)
        left.setSizes([300, 150, 150])
        split.addWidget(left)
        split.addWidget(self._build_right())
        split.setSizes([240, 700])
        lay.addWidget(split, 1)

    def _build_right(self) -> QWidget:
        """The transcript (and a clicked file) above the approval cards."""
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.transcript = QTextBrowser()
        self.transcript.setOpenExternalLinks(False)
        # A file clicked in the tree opens in its own tab, read-only, beside the transcript.
        self.file_view = QPlainTextEdit(readOnly=True)
        self.file_view.setFont(QFont("Menlo, Consolas, monospace"))
        self.tabs = QTabWidget()
        self.tabs.addTab(self.transcript, "Transcript")
        self.tabs.addTab(self.file_view, "File")
        self.tabs.setTabEnabled(1, False)
        rl.addWidget(self.tabs, 3)
        self.cards_area = QScrollArea(widgetResizable=True)
        holder = QWidget()
        self.cards_layout = QVBoxLayout(holder)
        self.cards_layout.addStretch(1)
        self.cards_area.setWidget(holder)
        rl.addWidget(self.cards_area, 2)
        return right

    # -- project ------------------------------------------------------------------------------------
    def set_backend(self, backend: Backend | None) -> None:
        self.backend = backend

    def open_project(self, path: str | Path) -> None:
        p = Path(path).expanduser().resolve()
        if not p.is_dir():
            self.message_for_user.emit(f"{p} is not a folder: drop a project folder.")
            return
        if self.task is not None and self.task.running:
            self.message_for_user.emit("Stop the running task before opening another project.")
            return
        if self.watcher is not None:
            self.watcher.stop()
        self.project = p
        self.project_label.setText(f"Project: {p}")
        self.project_label.setToolTip(str(p))
        self.watcher = TreeWatcher(p)
        if not self.watcher.start():
            self.message_for_user.emit(f"The tree will not update live: {self.watcher.error}")
        self._tree_timer.start()
        try:  # steps of earlier sessions can be undone too
            self.checkpoints = Checkpoints(p, self.data_dir)
        except (CheckpointError, OSError):
            self.checkpoints = None
        _remember_project(p)
        self.refresh_tree()
        self.refresh_steps()
        self.refresh_runs()
        self.project_opened.emit(str(p))

    def choose_project(self) -> None:
        """File → Open Folder…: pick a project folder."""
        start = str(self.project.parent if self.project else Path.home())
        path = QFileDialog.getExistingDirectory(self, "Open Project Folder", start)
        if path:
            self.open_project(path)

    def fill_recent_menu(self, menu: QMenu) -> None:
        menu.clear()
        recent = recent_projects()
        for p in recent:
            menu.addAction(str(p), lambda p=p: self.open_project(p))
        if not recent:
            menu.addAction("No recent projects").setEnabled(False)

    def refresh_runs(self) -> None:
        """This project's past runs from the store, newest first (read on a worker)."""
        if self.store is None or self.project is None:
            self.runs.clear()
            return
        project = str(self.project)
        run_in_background(
            self.store.runs,
            project=project,
            limit=50,
            on_done=lambda runs: self._fill_runs(project, runs),
            on_error=self.message_for_user.emit,
        )

    def _fill_runs(self, project: str, runs: list[Any]) -> None:
        if self.project is None or str(self.project) != project:
            return  # another project was opened meanwhile
        import datetime

        self.runs.clear()
        for r in runs:
            when = datetime.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M")
            title = r.task.strip().splitlines()[0][:80] if r.task.strip() else "agent run"
            item = QListWidgetItem(show_line(f"{when} · {r.status} · {title}"))
            item.setToolTip(show_block(r.task))
            item.setData(256, r.id)
            self.runs.addItem(item)
        self.runs_listed.emit()

    def show_run(self, run_id: str) -> None:
        """Show a stored run's transcript: its task, steps, tool calls, diffs and answer."""
        if self.store is None:
            return
        if self.task is not None and self.task.running:
            self.hint_for_user.emit("The transcript shows the running task until it ends.")
            return
        store = self.store
        run_in_background(
            lambda: (store.run(run_id), store.events(run_id)),
            on_done=self._show_stored_run,
            on_error=self.message_for_user.emit,
        )

    def _show_stored_run(self, loaded: tuple[Any, list[dict[str, Any]]]) -> None:
        rec, events = loaded
        if self.task is not None and self.task.running:
            return
        self._clear_cards()  # the last run's approvals are not this run's
        self.tabs.setCurrentIndex(0)
        self.transcript.clear()
        self._append(f"<b>Task:</b> {_esc(rec.task)} <i>({_esc(rec.status)})</i>")
        for e in events:
            data = {k: v for k, v in e.items() if k not in ("seq", "type", "step", "time")}
            self._show_event(AgentEvent(e["type"], e["step"], data, rec.id, e["seq"]), live=False)
        self.run_shown.emit(rec.id)

    def refresh_tree(self) -> None:
        self.tree.clear()
        if self.project is None:
            return
        root = QTreeWidgetItem([self.project.name])
        self.tree.addTopLevelItem(root)
        nodes: dict[str, QTreeWidgetItem] = {"": root}
        # The agent's own walk: what .gitignore ignores is left out here too.
        for count, e in enumerate(walk(self.project)):
            if count >= _MAX_TREE:
                QTreeWidgetItem(root, ["… (more files not shown)"])
                break
            parent = nodes.get(e.rel.rpartition("/")[0], root)
            name = e.rel.rpartition("/")[2]
            item = QTreeWidgetItem(parent, [show_line(name + "/" if e.is_dir else name)])
            if e.is_dir:
                nodes[e.rel] = item
            else:
                item.setData(0, 256, e.rel)
        root.setExpanded(True)

    @staticmethod
    def _item_path(item: QTreeWidgetItem) -> str | None:
        rel = item.data(0, 256)
        return rel if isinstance(rel, str) else None

    def show_file(self, rel: str | None) -> bool:
        """Show a project file (clicked in the tree) in the File tab, read-only."""
        if rel is None or self.project is None:
            return False
        path = (self.project / rel).resolve()
        if not path.is_relative_to(self.project) or not path.is_file():
            self.hint_for_user.emit(f"{show_line(rel)} is not a file in the project.")
            return False
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_FILE_SHOWN + 1)
        except OSError as e:
            self.hint_for_user.emit(f"Cannot read {show_line(rel)}: {e.strerror or e}")
            return False
        if b"\0" in data[:8192]:
            text = f"{rel} is a binary file ({path.stat().st_size:,} bytes); not shown."
        else:
            text = show_block(data[:_MAX_FILE_SHOWN].decode("utf-8", "replace"))
            if len(data) > _MAX_FILE_SHOWN:
                text += f"\n… (the first {_MAX_FILE_SHOWN // 1024} KB shown)"
        self.file_view.setPlainText(text)
        self.tabs.setTabText(1, show_line(Path(rel).name))
        self.tabs.setTabToolTip(1, show_line(rel))
        self.tabs.setTabEnabled(1, True)
        self.tabs.setCurrentIndex(1)
        return True

    def tree_paths(self) -> list[str]:
        """Every path shown in the tree, relative and POSIX (for tests)."""
        out: list[str] = []

        def walk(item: QTreeWidgetItem, prefix: str) -> None:
            for i in range(item.childCount()):
                c = item.child(i)
                name = c.text(0)
                out.append(prefix + name.rstrip("/"))
                walk(c, prefix + name)

        if self.tree.topLevelItemCount():
            walk(self.tree.topLevelItem(0), "")
        return out

    def _poll_tree(self) -> None:
        if self.watcher is not None and self.watcher.drain():
            self.refresh_tree()

    # -- runs ---------------------------------------------------------------------------------------
    def _backend(self) -> ModelBackend | None:
        if self.backend_factory is not None:
            return self.backend_factory()
        if self.backend is not None:
            return EngineBackend(self.backend)
        return None

    def start_run(self, task: str | None = None) -> None:
        task = (task if isinstance(task, str) else self.task_input.text()).strip()
        if self.project is None:
            self.message_for_user.emit("Drop a project folder on the window first.")
            return
        if not task:
            self.message_for_user.emit("Describe the task first.")
            return
        if self.task is not None and self.task.running:
            return
        backend = self._backend()
        if backend is None:
            self.message_for_user.emit("No model is loaded: load one in Models.")
            return
        self.transcript.clear()
        self.tabs.setCurrentIndex(0)
        self._clear_cards()  # cards of the last run go with its transcript
        self._answer_streamed = ""
        self._append(f"<b>Task:</b> {_esc(task)}")
        approvals = Approvals(ask=self._ask)
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        project, text = self.project, task

        def work(task: Task) -> Any:  # the bridge passes its Task by this name
            # Built here, not on the UI thread: it probes the sandbox and opens the checkpoint repo.
            config = AgentConfig.from_settings(watch=True)
            try:
                servers = load_servers()  # the MCP servers of the data folder's mcp.json
            except McpConfigError as e:
                servers = {}
                self.message_for_user.emit(f"MCP servers not used: {e}")
            agent = Agent(
                project,
                backend,
                approvals=approvals,
                config=config,
                on_event=task.emit_event,
                store=self.store,
                data_dir=self.data_dir,
                mcp_servers=servers,
            )
            self.agent, self._emit = agent, task.emit_event
            return agent.run(text)

        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.task = run_in_background(
            work, on_event=self._on_event, on_error=self._failed, on_done=self._done
        )

    def _clear_cards(self) -> None:
        for card in self.cards:
            self.cards_layout.removeWidget(card)
            card.deleteLater()
        self.cards = []

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        for c in self.cards:
            if c.approve_button.isEnabled():
                c._decide(Decision.reject("stopped by the user"))

    def _steps_source(self) -> Checkpoints | None:
        if self.agent is not None and self.agent.checkpoints is not None:
            return self.agent.checkpoints
        return self.checkpoints

    def undo(self, steps: int = 1) -> None:
        """Put the project back as it was before the last `steps` changes (of any session)."""
        cps = self._steps_source()
        if cps is None or not cps.list():
            # Nothing to undo is information, not an error.
            self.hint_for_user.emit("Nothing to undo in this project.")
            return
        if self.task is not None and self.task.running:
            self.message_for_user.emit("Stop the run before undoing a step.")
            return
        try:
            res = cps.undo(steps)
        except Exception as e:  # CheckpointError: tell the user why
            self.message_for_user.emit(f"Undo failed: {e}")
            return
        files = ", ".join(f["path"] for f in res.files) or "no files"
        self._append(f"<i>Undone: {_esc(files)}</i>")
        self.refresh_tree()
        self.refresh_steps()

    def undo_to_selected(self) -> None:
        row = self.steps.currentRow()
        if row < 0:
            self.hint_for_user.emit("Select the step to go back to (it is undone too).")
            return
        self.undo(self.steps.count() - row)

    def refresh_steps(self) -> None:
        """The project's changes that can still be undone, oldest first."""
        self.steps.clear()
        cps = self._steps_source()
        if cps is None:
            return
        for c in cps.list():
            files = ", ".join(f["path"] for f in c.files)
            self.steps.addItem(show_line(f"step {c.step}: {c.summary}" + (f" ({files})" if files else "")))

    def _ask(self, req: ApprovalRequest, cancel: threading.Event) -> Decision:
        """Runs on the agent's thread: show a card on the UI thread and wait for the click."""
        box: dict[str, Decision] = {}
        answered = threading.Event()

        def answer(d: Decision) -> None:
            box["d"] = d
            answered.set()

        self._emit(("approval", req, answer))
        while not answered.wait(0.1):
            if cancel.is_set():
                return Decision.reject("stopped by the user")
        return box["d"]

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, tuple) and ev and ev[0] == "approval":
            _, req, answer = ev
            card = ApprovalCard(req)
            card.decided.connect(answer)
            self.cards_layout.insertWidget(self.cards_layout.count() - 1, card)
            self.cards.append(card)
            # Scroll once the layout has placed it, so its buttons are in view.
            QTimer.singleShot(0, lambda c=card: self._reveal(c))
            self.approval_shown.emit(card)
            return
        if isinstance(ev, AgentEvent):
            self._show_event(ev, live=True)

    def _reveal(self, card: ApprovalCard) -> None:
        if card not in self.cards:
            return
        # Size the holder for the new card now (the scroll area would do it at its next layout pass),
        # then put the card's top at the top: its title, buttons and diff below, in view.
        holder = self.cards_area.widget()
        self.cards_layout.activate()
        need = max(holder.sizeHint().height(), self.cards_area.viewport().height())
        if holder.height() != need:
            holder.resize(holder.width(), need)
        self.cards_layout.activate()
        self.cards_area.verticalScrollBar().setValue(card.y())
        self.cards_area.ensureWidgetVisible(card.buttons_row, 0, 0)

    def _show_event(self, ev: AgentEvent, live: bool) -> None:
        d = ev.data
        t = ev.type
        if t in ("reasoning", "text"):
            self._stream(d.get("text", ""), dim=t == "reasoning")
            if t == "text" and live:
                self._answer_streamed += d.get("text", "")
            return
        self._streaming = ""
        if t == "step":
            self._append(f"<hr><b>Step {ev.step}</b><br>")
        elif t == "tool_call":
            self._append(
                f"<b>→ {_esc(d.get('name', ''))}</b> <code>{_esc(_json(d.get('arguments'))[:300])}</code>"
            )
        elif t == "tool_result":
            mark = "✓" if d.get("ok") else "✗"
            self._append(f"{mark} <pre>{_esc(str(d.get('content', ''))[:2000])}</pre>")
        elif t == "diff":
            self._append(diff_html(str(d.get("patch", ""))[:4000]))
            if live:
                self.refresh_tree()
                self.refresh_steps()
        elif t in ("warning", "error"):
            self._append(f"<span style='color:#ff453a'>{_esc(d.get('message', ''))}</span>")
        elif t == "done":
            answer = (d.get("answer") or "").strip()
            # Live, the answer has just streamed in: it is not printed a second time.
            if live and answer and answer in self._answer_streamed:
                answer = ""
            self._answer_streamed = ""
            self._append(f"<hr><b>Done ({_esc(d.get('status', ''))})</b><br>{_esc(answer, show_prose)}")

    def _stream(self, text: str, dim: bool) -> None:
        cur = self.transcript.textCursor()
        cur.movePosition(QTextCursor.MoveOperation.End)
        fmt = cur.charFormat()
        fmt.setFontItalic(dim)
        cur.insertText(show_prose(text), fmt)
        self.transcript.setTextCursor(cur)

    def _append(self, html: str) -> None:
        self.transcript.append(html)

    def _done(self, result: Any) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.refresh_tree()
        self.refresh_runs()
        self.run_finished.emit(getattr(result, "status", "done"))

    def _failed(self, message: str) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.refresh_runs()
        self._append(f"<span style='color:#ff453a'>Error: {_esc(message)}</span>")
        self.message_for_user.emit(f"Agent failed: {message}")
        self.run_finished.emit("error")

    def shutdown(self) -> None:
        self.stop()
        if self.task is not None:
            self.task.wait(5)
        self._tree_timer.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.agent is not None:
            self.agent.close()


def _esc(s: Any, show: Any = show_block) -> str:
    """HTML for the transcript, control characters escaped (newlines and tabs kept)."""
    import html

    return html.escape(show(s))


def _json(value: Any) -> str:
    """Tool arguments as JSON (what the model wrote), not Python's repr."""
    import json

    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
