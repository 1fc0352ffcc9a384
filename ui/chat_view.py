"""Chat: a view of app.chat_session.ChatSession (conversations in the store, replies streamed from
the backend on a worker). The composer (images and files in) is ui/chat_composer.py, one message on
screen ui/chat_messages.py, the per-conversation settings panel ui/chat_settings.py."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QCoreApplication, QModelIndex, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QKeySequence, QPainter, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat_session import ChatSession, ChatSettings, Conversation, ReplyEnd, ReplyUpdate
from app.export import to_json, to_markdown
from app.store import Store, StoreWriter, ThreadRecord
from engine import PRESETS, ReasoningDelta, TextDelta

from .bridge import Task, run_in_background, stream_in_background, to_ui_thread, user_message
from .chat_composer import AttachmentStrip, Composer
from .chat_messages import MessageWidget, empty_answer_note, shown_text
from .chat_settings import ChatSettingsPanel
from .dialogs import confirm, save_file

if TYPE_CHECKING:
    from engine import Backend

__all__ = ["ChatView", "Composer", "MessageWidget", "list_date", "shown_text"]

ID_ROLE = 256  # Qt.UserRole: the conversation's id
DATE_ROLE = 257  # when it was last written to, as shown


def list_date(t: float, now: float | None = None) -> str:
    """A conversation's date for the list: the time today, the day this year, else the full date."""
    now = time.time() if now is None else now
    lt, ln = time.localtime(t), time.localtime(now)
    if lt[:3] == ln[:3]:
        return time.strftime("%H:%M", lt)
    if lt.tm_year == ln.tm_year:
        return time.strftime("%b %d", lt).replace(" 0", " ")
    return time.strftime("%Y-%m-%d", lt)


class _DatedItems(QStyledItemDelegate):
    """List rows with the date, dimmed, at the right (the title is elided before it)."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        date = str(index.data(DATE_ROLE) or "")
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        width = opt.fontMetrics.horizontalAdvance(date) + 12 if date else 0
        row = QRect(option.rect)
        view = option.widget
        if view is not None and hasattr(view, "viewport"):  # a long title never pushes the date out
            row.setRight(min(row.right(), view.viewport().width() - 1))
        opt.rect = row.adjusted(0, 0, -width, 0)
        super().paint(painter, opt, index)
        if date:
            painter.save()
            painter.setPen(option.palette.placeholderText().color())
            r = row.adjusted(0, 0, -6, 0)
            painter.drawText(r, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), date)
            painter.restore()


class _Search(QLineEdit):
    """The conversation search: Escape clears it (and gives the list the focus back)."""

    def keyPressEvent(self, e: Any) -> None:
        if e.key() == Qt.Key.Key_Escape and self.text():
            self.clear()
            return
        super().keyPressEvent(e)


class ChatView(QWidget):
    """Conversations list on the left; transcript, composer and controls on the right.

    It renders an `app.chat_session.ChatSession` (history, settings, replies, storage) and turns
    the user's clicks into its calls; replies stream on a worker thread."""

    reply_finished = Signal(str)  # finish_reason, for tests and the status bar
    list_filled = Signal()  # the conversation list shows the latest search
    conversation_opened = Signal(str)  # a stored conversation is shown (its id)
    message_for_user = Signal(str)  # an error or hint for the window's status area

    def __init__(
        self,
        store: Store,
        dark: bool = False,
        parent: QWidget | None = None,
        writer: StoreWriter | None = None,
        reopen: bool = True,
    ) -> None:
        super().__init__(parent)
        self.store = store
        # SQLite runs on the writer's thread, in order: reads see every earlier write.
        self.writer = writer or StoreWriter(store)
        self._own_writer = writer is None
        self.session = ChatSession(self.writer)
        self._list_gen = 0  # the newest list request; older answers are dropped
        self._touched = False  # the user started or opened a conversation (no reopening then)
        self.dark = dark
        self.task: Task | None = None
        self._handle: Any = None
        self._current: MessageWidget | None = None
        # Streamed deltas are coalesced and painted at most every 40 ms.
        self._paint = QTimer(self, interval=40, singleShot=True)
        self._paint.timeout.connect(self._repaint_current)
        self.setAcceptDrops(True)
        self._build()
        self._subscribe()
        self.refresh_list()
        if reopen:
            self._read(self.session.last_opened, on_done=self._reopen)

    def _subscribe(self) -> None:
        ev = self.session.events
        ev.store_failed.connect(to_ui_thread(self._on_write_failed, self))
        ev.conversation.connect(self._show_conversation)
        ev.settings.connect(self._show_settings)
        ev.message_added.connect(self._message_added)
        ev.reply_removed.connect(self._remove_last_reply)
        ev.reply_started.connect(lambda _: self._reply_started())
        ev.prompt_progress.connect(lambda p: self.stats.setText(f"Reading prompt {p.processed}/{p.total}"))
        ev.reply_changed.connect(self._reply_changed)
        ev.reply_finished.connect(self._reply_ended)

    # The session's state, under the names the window and tests use.
    @property
    def backend(self) -> Backend | None:
        return self.session.backend

    @property
    def model_name(self) -> str:
        return self.session.model_name

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.session.history

    @property
    def thread_id(self) -> str | None:
        return self.session.thread_id

    @property
    def max_tokens(self) -> int:
        return self.session.settings.max_tokens

    @max_tokens.setter
    def max_tokens(self, n: int) -> None:
        self.session.settings = replace(self.session.settings, max_tokens=n)

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        split = QSplitter(self)
        split.addWidget(self._build_list())
        split.addWidget(self._build_transcript())
        split.setSizes([220, 700])
        # Escape stops a reply from anywhere in the view (the search field clears itself first).
        stop = QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self._escape)
        stop.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        delete = QShortcut(
            QKeySequence.StandardKey.Delete, self.conversations, lambda: self.delete_selected_conversation()
        )
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

    def _build_list(self) -> QWidget:
        """The conversation list: search, new, and the bar that undoes a delete."""
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.search = _Search(placeholderText="Search conversations")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.refresh_list)
        row.addWidget(self.search)
        self.new_button = QToolButton(text="+")
        self.new_button.setToolTip("New conversation")
        self.new_button.clicked.connect(self.new_conversation)
        row.addWidget(self.new_button)
        ll.addLayout(row)
        self.conversations = QListWidget()
        self.conversations.setItemDelegate(_DatedItems(self.conversations))
        self.conversations.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conversations.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversations.customContextMenuRequested.connect(self._list_menu)
        self.conversations.itemClicked.connect(lambda it: self.open_conversation(it.data(ID_ROLE)))
        ll.addWidget(self.conversations)
        self.undo_bar = QWidget()
        ub = QHBoxLayout(self.undo_bar)
        ub.setContentsMargins(4, 2, 4, 2)
        self.undo_label = QLabel()
        self.undo_label.setObjectName("stats")
        self.undo_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        ub.addWidget(self.undo_label, 1)
        self.undo_delete_button = QPushButton("Undo")
        self.undo_delete_button.clicked.connect(lambda *_: self.undo_delete())
        ub.addWidget(self.undo_delete_button)
        self.undo_bar.setVisible(False)
        ll.addWidget(self.undo_bar)
        return left

    def _build_transcript(self) -> QWidget:
        """The transcript, the settings, and the composer."""
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea(widgetResizable=True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.transcript = QWidget()
        self.transcript.setObjectName("transcript")
        self._tl = QVBoxLayout(self.transcript)
        self._tl.addStretch(1)
        self.scroll.setWidget(self.transcript)
        # Follow the end while it grows, unless the user scrolled up: set as the range changes,
        # so the thumb and the view never disagree mid-layout.
        self._follow = True
        bar = self.scroll.verticalScrollBar()
        bar.rangeChanged.connect(lambda _lo, hi: self._follow and bar.setValue(hi))
        bar.valueChanged.connect(lambda v: setattr(self, "_follow", v >= bar.maximum() - 4))
        rl.addWidget(self.scroll, 1)
        rl.addLayout(self._build_controls())
        self.settings_panel = ChatSettingsPanel()
        self.settings_panel.changed.connect(lambda changes: self.session.update_settings(**changes))
        self.settings_panel.setVisible(False)
        rl.addWidget(self.settings_panel)
        self.attachments = AttachmentStrip()
        self.attachments.failed.connect(self.message_for_user)
        rl.addWidget(self.attachments)
        rl.addLayout(self._build_composer())
        self._show_settings(self.session.settings)
        return right

    def _build_controls(self) -> QHBoxLayout:
        """Profile, thinking, the sampling in numbers (the settings panel opens below), stats."""
        controls = QHBoxLayout()
        self.profile = QComboBox()
        self.profile.addItems(sorted(PRESETS))
        self.profile.setCurrentText("thinking")
        self.profile.setToolTip("Sampling profile (from the model card)")
        self.profile.currentTextChanged.connect(self._save_meta)
        controls.addWidget(QLabel("Profile"))
        controls.addWidget(self.profile)
        self.thinking = QCheckBox("Thinking", checked=True)
        self.thinking.toggled.connect(self._save_meta)
        controls.addWidget(self.thinking)
        self.settings_button = QToolButton(text="Settings", checkable=True)
        self.settings_button.setToolTip("System prompt and sampling for this conversation")
        self.settings_button.toggled.connect(lambda on: self.settings_panel.setVisible(on))
        controls.addWidget(self.settings_button)
        self.sampling_label = QLabel()
        self.sampling_label.setObjectName("stats")
        controls.addWidget(self.sampling_label)
        controls.addStretch(1)
        self.stats = QLabel()
        self.stats.setObjectName("stats")
        controls.addWidget(self.stats)
        return controls

    def _build_composer(self) -> QHBoxLayout:
        composer = QHBoxLayout()
        self.attach_button = QToolButton(text="Attach…")
        self.attach_button.setToolTip(
            "Attach images or text files (or drop or paste them in the box) — Ctrl+Shift+A"
        )
        self.attach_button.setShortcut(QKeySequence("Ctrl+Shift+A"))
        self.attach_button.clicked.connect(lambda *_: self.attach_files())
        composer.addWidget(self.attach_button, alignment=Qt.AlignmentFlag.AlignTop)
        self.input = Composer()
        self.input.submitted.connect(self.send)
        self.input.stop_requested.connect(self.stop)
        self.input.files_given.connect(self.attachments.add)
        self.input.setFixedHeight(72)
        composer.addWidget(self.input, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(lambda *_: self.send())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.setToolTip(
            "Answer the last message again (the earlier answer is kept as a version)"
        )
        self.regen_button.clicked.connect(self.regenerate)
        for b in (self.send_button, self.stop_button, self.regen_button):
            buttons.addWidget(b)
        composer.addLayout(buttons)
        return composer

    def attach_files(self) -> None:
        """The Attach button (Ctrl+Shift+A): choose images or files, then go on typing."""
        self.attachments.choose(self)
        self.input.setFocus()

    # -- drops on the chat: images and files go into the message -------------------------------------
    def _files_drag(self, e: QDragEnterEvent | QDragMoveEvent | QDropEvent) -> bool:
        if not Composer.files_in(e.mimeData()) or any(
            Path(u.toLocalFile()).is_dir() for u in e.mimeData().urls() if u.isLocalFile()
        ):
            return False  # folders go on to the window (the agent)
        e.setDropAction(Qt.DropAction.CopyAction)
        e.accept()
        return True

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:
        if not self._files_drag(e):
            e.ignore()

    def dragMoveEvent(self, e: QDragMoveEvent) -> None:
        if not self._files_drag(e):
            e.ignore()

    def dropEvent(self, e: QDropEvent) -> None:
        if self._files_drag(e):
            self.attachments.add(Composer.files_in(e.mimeData()))
            self.input.setFocus()
        else:
            e.ignore()

    # -- conversations ------------------------------------------------------------------------------
    def _on_write_failed(self, e: BaseException) -> None:
        self.message_for_user.emit(f"Could not save the conversation: {user_message(e)}")

    def _read(self, fn: Any, *args: Any, on_done: Any) -> Task:
        """Run a store read (after every earlier write) off the UI thread; `on_done` gets it."""
        return run_in_background(
            fn,
            *args,
            on_done=on_done,
            on_error=lambda m: self.message_for_user.emit(f"Could not read conversations: {m}"),
        )

    def _reopen(self, thread_id: str | None) -> None:
        """At start: show the conversation open when Locus last quit (unless the user moved on)."""
        if thread_id and not self._touched and self.thread_id is None:
            self.open_conversation(thread_id)

    def _escape(self) -> None:
        if self.search.hasFocus() and self.search.text():
            self.search.clear()
        else:
            self.stop()

    def refresh_list(self) -> None:
        """List the conversations matching the search (titles and message text)."""
        self._list_gen += 1
        gen, query = self._list_gen, self.search.text().strip()
        self._read(self.session.search, query, on_done=lambda threads: self._fill_list(gen, threads))

    def _fill_list(self, gen: int, threads: list[ThreadRecord]) -> None:
        if gen != self._list_gen:
            return
        self.conversations.clear()
        for t in threads:
            item = QListWidgetItem(t.title or "New conversation")
            item.setData(ID_ROLE, t.id)
            item.setData(DATE_ROLE, list_date(t.updated))
            item.setToolTip(
                f"{t.title}\nlast message {time.strftime('%Y-%m-%d %H:%M', time.localtime(t.updated))}"
            )
            self.conversations.addItem(item)
            if t.id == self.thread_id:
                item.setSelected(True)
        self.list_filled.emit()

    def new_conversation(self) -> None:
        if self.busy:
            return
        self._touched = True
        self.settings_panel.flush()
        self.session.new_conversation()
        self.writer.submit(self.store.set_state, "last_chat", None)
        self.refresh_list()
        self.input.setFocus()

    def open_conversation(self, thread_id: str) -> None:
        """Show a stored conversation (read off the UI thread; `conversation_opened` when shown)."""
        if self.busy:
            self.message_for_user.emit("Stop the reply before switching conversations.")
            return
        self._touched = True
        self.settings_panel.flush()
        self.session.begin_open(thread_id)
        self._read(self.session.load, thread_id, on_done=self.session.finish_open)

    def _show_conversation(self, c: Conversation) -> None:
        """Draw the session's conversation: a new one, one being read, or one read."""
        self._show_settings(c.settings)
        self._clear_transcript()
        self._scroll_to_end()
        for i, m in enumerate(c.messages):
            if m.get("role") in ("user", "assistant"):
                w = self._add_message(m["role"], i)
                w.set_message(m, self.session.images)
                meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
                if m["role"] == "assistant":
                    w.set_footer(str(meta.get("footer") or ""))
                    self._note_empty(w, str(meta.get("finish_reason") or "stop"))
        if not c.loading:
            self.stats.setText(c.footer)  # the last conversation's speed is not this one's
        if c.thread_id is not None and not c.loading:
            self.conversation_opened.emit(c.thread_id)

    def _show_settings(self, s: ChatSettings) -> None:
        self.profile.blockSignals(True)
        self.thinking.blockSignals(True)
        self.profile.setCurrentText(s.preset)
        self.thinking.setChecked(s.thinking)
        self.profile.blockSignals(False)
        self.thinking.blockSignals(False)
        self.settings_panel.show_settings(s)
        p = s.effective_sampling
        system = " · system prompt" if s.system else ""
        self.sampling_label.setText(
            f"temp {p.temperature:g} · top-p {p.top_p:g} · max {s.max_tokens}{system}"
        )

    def rename_conversation(self, thread_id: str, title: str) -> None:
        self.session.rename(thread_id, title)
        self.refresh_list()

    def delete_conversation(self, thread_id: str, ask: bool = True) -> bool:
        """Delete a conversation after a confirmation; Undo (beside the list) brings it back."""
        if self.busy and thread_id == self.thread_id:
            self.message_for_user.emit("Stop the reply before deleting this conversation.")
            return False
        # What the question and Undo need, read after every queued write (a short wait).
        loaded = self.session.load(thread_id)
        t, msgs = loaded
        title = t.title or "New conversation"
        if ask and not confirm(
            self, "Delete conversation", f"Delete “{title}” and its {len(msgs)} messages?", "Delete"
        ):
            return False
        self.session.delete(loaded)
        self.undo_label.setText(f"Deleted “{title}”")
        self.undo_label.setToolTip(title)
        self.undo_bar.setVisible(True)
        self.refresh_list()
        return True

    def delete_selected_conversation(self) -> bool:
        item = self.conversations.currentItem()
        if item is None and self.thread_id is None:
            self.message_for_user.emit("Select a conversation to delete.")
            return False
        return self.delete_conversation(item.data(ID_ROLE) if item is not None else self.thread_id)

    def undo_delete(self) -> None:
        """Put the last deleted conversation back, with its id, title, settings and messages."""
        tid = self.session.undo_delete()
        self.undo_bar.setVisible(False)
        if tid is None:
            self.message_for_user.emit("No deleted conversation to bring back.")
            return
        self.refresh_list()
        if not self.busy:
            self.open_conversation(tid)

    def export_conversation(self, path: Path | None = None) -> Path | None:
        """Save the conversation shown as Markdown (.md) or JSON (.json); the file written."""
        if self.thread_id is None or not self.history:
            self.message_for_user.emit("Nothing to export yet: open or start a conversation first.")
            return None
        if path is None:
            name = "".join(c for c in (self._title() or "conversation") if c.isalnum() or c in " -_")
            path = save_file(
                self, "Export Conversation", f"{name.strip()[:60]}.md", "Markdown (*.md);;JSON (*.json)"
            )
            if path is None:
                return None
        loaded = self.session.load(self.thread_id)
        text = to_json(loaded) if path.suffix.lower() == ".json" else to_markdown(loaded)
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            self.message_for_user.emit(f"Could not export to {path}: {e.strerror or e}")
            return None
        self.message_for_user.emit(f"Exported to {path}")
        return path

    def _title(self) -> str:
        for i in range(self.conversations.count()):
            if self.conversations.item(i).data(ID_ROLE) == self.thread_id:
                return self.conversations.item(i).text()
        return ""

    def _list_menu(self, pos: Any) -> None:
        item = self.conversations.itemAt(pos)
        if item is None:
            return
        tid = item.data(ID_ROLE)
        menu = QMenu(self)
        rename = menu.addAction("Rename…")
        export = menu.addAction("Export…")
        delete = menu.addAction("Delete…")
        chosen = menu.exec(self.conversations.mapToGlobal(pos))
        if chosen is rename:
            title, ok = QInputDialog.getText(self, "Rename", "Title", text=item.text())
            if ok:
                self.rename_conversation(tid, title)
        elif chosen is export:
            if tid != self.thread_id:
                self.message_for_user.emit("Open the conversation, then export it.")
                self.open_conversation(tid)
            else:
                self.export_conversation()
        elif chosen is delete:
            self.delete_conversation(tid)

    def _save_meta(self, *_: Any) -> None:
        self.session.update_settings(preset=self.profile.currentText(), thinking=self.thinking.isChecked())

    def set_default_profile(self, name: str) -> None:
        """The sampling profile a new conversation starts with (Preferences)."""
        self.session.default_preset = name if name in PRESETS else "thinking"
        if self.thread_id is None:
            self.profile.setCurrentText(self.session.default_preset)

    # -- generation ---------------------------------------------------------------------------------
    def set_backend(self, backend: Backend | None, model_name: str = "") -> None:
        self.session.set_backend(backend, model_name)

    @property
    def busy(self) -> bool:
        """A reply is being written: its worker runs, or its last events are still on their way."""
        return (self.task is not None and self.task.running) or self.session.replying

    def send(self, text: str | None = None) -> None:
        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not (text or self.attachments.items) or self.busy or self.session.opening:
            return
        if self.backend is None:
            self.message_for_user.emit("No model is loaded: pick one in Models (or its demo model).")
            return
        self._touched = True
        self.settings_panel.flush()
        new = self.thread_id is None
        self.session.add_user(text, self.attachments.take())
        if new:
            self.writer.submit(self.store.set_state, "last_chat", self.thread_id)
        self.input.clear()
        self.refresh_list()
        self._generate()

    def regenerate(self) -> None:
        """Answer the last user message again; the earlier answer stays as a version (‹ 1/2 ›)."""
        if self.busy or not self.history or self.backend is None:
            return
        if self.session.drop_last_reply():
            self._generate()

    def _remove_last_reply(self, _msg: dict[str, Any]) -> None:
        last = self._messages()[-1] if self._messages() else None
        if last is not None and last.role == "assistant":
            self._remove(last)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    # -- message actions ------------------------------------------------------------------------------
    def _message_action(self, w: MessageWidget, name: str) -> None:
        if name == "copy":
            w.copy()
            return
        if self.busy:
            self.message_for_user.emit("Stop the reply first.")
            return
        if name == "edit":
            w.start_edit()
        elif name == "regenerate":
            if self.backend is None:
                self.message_for_user.emit("No model is loaded: pick one in Models (or its demo model).")
            elif self.session.regenerate_at(w.index):
                self._generate()
        elif name == "delete":
            if confirm(self, "Delete message", "Delete this message? This cannot be undone.", "Delete"):
                self.session.delete_message(w.index)
        elif name in ("previous", "next"):
            self.session.switch_version(w.index, -1 if name == "previous" else 1)

    def _edit_submitted(self, w: MessageWidget, text: str) -> None:
        """Edit and resend: a new version of the message (the old one is kept), then a reply."""
        if self.busy or self.backend is None:
            self.message_for_user.emit("Load a model and let the reply finish before resending.")
            return
        self.session.edit_user(w.index, text)
        self._generate()

    def _generate(self) -> None:
        req = self.session.start_reply()
        backend = self.backend
        assert backend is not None

        def make() -> Any:
            self._handle = backend.submit(req)
            return self._handle.events()

        def cancel() -> None:
            if self._handle is not None:
                self._handle.cancel()

        def ended(_: Any) -> None:  # every event was delivered: a stream without Done still ends
            if self.session.replying:
                self.session.fail("the reply ended without a reason")

        self.send_button.setEnabled(False)
        self.regen_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        for w in self._messages():
            w.set_actions_enabled(False)
        self.stats.setText("Thinking…" if req.enable_thinking else "Generating…")
        self.task = stream_in_background(
            make, on_event=self.session.add_event, on_error=self.session.fail, on_cancel=cancel, on_done=ended
        )

    def _reply_started(self) -> None:
        self._current = self._add_message("assistant", len(self.history))
        self._current.set_actions_enabled(False)
        self._current.set_thinking(self.session.settings.thinking)
        self._scroll_to_end()

    def _reply_changed(self, u: ReplyUpdate) -> None:
        if isinstance(u.event, ReasoningDelta | TextDelta):
            self.stats.setText(f"{self.session.rate():.1f} tok/s")
        if not self._paint.isActive():
            self._paint.start()

    def _repaint_current(self) -> None:
        reply = self.session.reply
        if self._current is not None and reply is not None:
            self._current.set_content(shown_text(reply), reply.reasoning)
            self._current.set_thinking(
                reply.done is None and not reply.text and self.session.settings.thinking
            )

    def _reply_ended(self, end: ReplyEnd) -> None:
        self._paint.stop()
        self._repaint_current()
        if end.stats:
            self.stats.setText(end.stats)
        if end.error is not None:
            self.message_for_user.emit(f"Generation failed: {end.error}")
        w = self._current
        if w is not None:
            w.set_thinking(False)
            w.set_footer(end.footer)
            if end.message is not None:
                w.index = len(self.history) - 1
                self._note_empty(w, end.finish_reason)
        self._reset_buttons()
        self.reply_finished.emit(end.finish_reason)

    def _note_empty(self, w: MessageWidget, finish_reason: str) -> None:
        """A reply with reasoning (or nothing) but no answer says so instead of showing a blank."""
        if not w.text.strip() and isinstance(w.body, QWidget) and hasattr(w.body, "set_text"):
            w.body.set_text(empty_answer_note(finish_reason, bool(w.reasoning)))

    def _reset_buttons(self) -> None:
        self.send_button.setEnabled(True)
        self.regen_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._handle = None
        for w in self._messages():
            if 0 <= w.index < len(self.history):
                w.set_versions(*self.session.versions(w.index))
            w.set_actions_enabled(True)

    # -- transcript ---------------------------------------------------------------------------------
    def _message_added(self, m: dict[str, Any]) -> None:
        w = self._add_message(str(m.get("role") or "user"), len(self.history) - 1)
        w.set_message(m, self.session.images)
        self._scroll_to_end()

    def _add_message(self, role: str, index: int) -> MessageWidget:
        w = MessageWidget(role, self.dark)
        w.index = index
        if 0 <= index < len(self.history):
            w.set_versions(*self.session.versions(index))
        w.action.connect(lambda name, w=w: self._message_action(w, name))
        w.edit_submitted.connect(lambda text, w=w: self._edit_submitted(w, text))
        self._tl.insertWidget(self._tl.count() - 1, w)
        return w

    def _scroll_to_end(self) -> None:
        """Show the end, and keep showing it as the layout grows (see `_follow`)."""
        self._follow = True
        bar = self.scroll.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _messages(self) -> list[MessageWidget]:
        out = []
        for i in range(self._tl.count()):
            w = self._tl.itemAt(i).widget()
            if isinstance(w, MessageWidget):
                out.append(w)
        return out

    def _remove(self, w: QWidget) -> None:
        self._tl.removeWidget(w)
        w.setParent(None)
        w.deleteLater()

    def _clear_transcript(self) -> None:
        for w in self._messages():
            self._remove(w)
        self._current = None

    def shutdown(self) -> None:
        """Stop the reply and commit every queued write (a finished message is never lost)."""
        if self.task is not None and self.task.running:
            self.task.cancel()
            self.task.wait(5)
        # The reply's last events (Done, which stores it) are still queued for this thread.
        QCoreApplication.sendPostedEvents()
        self.settings_panel.flush()
        if self._own_writer:
            self.writer.close()
        else:
            self.writer.flush()
