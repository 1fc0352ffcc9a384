"""Chat: a view of app.chat_session.ChatSession (conversations in the store, replies streamed from
the backend on a worker)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QCoreApplication, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut
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
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat_session import ChatSession, ChatSettings, Conversation, ReplyEnd, ReplyUpdate
from app.store import Store, StoreWriter, ThreadRecord
from engine import PRESETS, ReasoningDelta, ReplyAccumulator, TextDelta, ToolCall, ToolCallError

from .bridge import Task, run_in_background, stream_in_background, to_ui_thread, user_message
from .dialogs import confirm
from .markdown import MarkdownView

if TYPE_CHECKING:
    from engine import Backend

__all__ = ["ChatView", "Composer", "MessageWidget"]


class Composer(QPlainTextEdit):
    """The message box: Enter sends and Shift+Enter breaks the line (or Ctrl+Enter sends when
    `enter_sends` is off)."""

    submitted = Signal()
    stop_requested = Signal()  # Escape

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.enter_sends = True
        self.set_enter_sends(True)

    def set_enter_sends(self, on: bool) -> None:
        self.enter_sends = on
        hint = "Enter to send, Shift+Enter for a new line" if on else "Ctrl+Enter to send"
        self.setPlaceholderText(f"Message Locus ({hint})")

    def keyPressEvent(self, e: QKeyEvent) -> None:
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            mods = e.modifiers()
            ctrl = bool(mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.MetaModifier))
            shift = bool(mods & Qt.KeyboardModifier.ShiftModifier)
            if ctrl or (self.enter_sends and not shift):
                self.submitted.emit()
                return
            self.insertPlainText("\n")  # a plain newline, not Qt's U+2028 soft break
            return
        if e.key() == Qt.Key.Key_Escape:
            self.stop_requested.emit()
            return
        super().keyPressEvent(e)


class MessageWidget(QFrame):
    """One message: a collapsible reasoning block above the markdown answer."""

    def __init__(self, role: str, dark: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.setObjectName("userMessage" if role == "user" else "assistantMessage")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 6, 10, 6)
        who = QLabel("You" if role == "user" else "Locus")
        who.setObjectName("messageRole")
        lay.addWidget(who)
        self.reasoning_toggle = QToolButton(text="▸ Reasoning", checkable=True)
        self.reasoning_toggle.setObjectName("reasoningToggle")
        self.reasoning_toggle.setVisible(False)
        self.reasoning_toggle.toggled.connect(self._toggle)
        lay.addWidget(self.reasoning_toggle, alignment=Qt.AlignmentFlag.AlignLeft)
        self.reasoning_label = QLabel(wordWrap=True)
        self.reasoning_label.setObjectName("reasoning")
        self.reasoning_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reasoning_label.setVisible(False)
        lay.addWidget(self.reasoning_label)
        self.body = MarkdownView(dark)
        lay.addWidget(self.body)
        self.footer = QLabel()
        self.footer.setObjectName("messageFooter")
        self.footer.setVisible(False)
        lay.addWidget(self.footer)
        self.reasoning = ""
        self.text = ""

    def _toggle(self, open_: bool) -> None:
        self.reasoning_label.setVisible(open_)
        self.reasoning_toggle.setText(("▾" if open_ else "▸") + " Reasoning")

    def set_content(self, text: str, reasoning: str = "") -> None:
        if reasoning != self.reasoning:
            self.reasoning = reasoning
            self.reasoning_label.setText(reasoning)
            self.reasoning_toggle.setVisible(bool(reasoning))
        if text != self.text:
            self.text = text
            self.body.set_text(text)

    def set_footer(self, text: str) -> None:
        self.footer.setText(text)
        self.footer.setVisible(bool(text))


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
    ) -> None:
        super().__init__(parent)
        self.store = store
        # SQLite runs on the writer's thread, in order: reads see every earlier write.
        self.writer = writer or StoreWriter(store)
        self._own_writer = writer is None
        self.session = ChatSession(self.writer)
        self._list_gen = 0  # the newest list request; older answers are dropped
        self.dark = dark
        self.task: Task | None = None
        self._handle: Any = None
        self._current: MessageWidget | None = None
        # Streamed deltas are coalesced and painted at most every 40 ms.
        self._paint = QTimer(self, interval=40, singleShot=True)
        self._paint.timeout.connect(self._repaint_current)
        self._build()
        self._subscribe()
        self.refresh_list()

    def _subscribe(self) -> None:
        ev = self.session.events
        ev.store_failed.connect(to_ui_thread(self._on_write_failed, self))
        ev.conversation.connect(self._show_conversation)
        ev.settings.connect(self._show_settings)
        ev.message_added.connect(lambda m: self._add_message("user").set_content(str(m.get("content") or "")))
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
        # Escape stops a reply from anywhere in the view.
        stop = QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
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
        self.search = QLineEdit(placeholderText="Search conversations")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.refresh_list)
        row.addWidget(self.search)
        self.new_button = QToolButton(text="+")
        self.new_button.setToolTip("New conversation")
        self.new_button.clicked.connect(self.new_conversation)
        row.addWidget(self.new_button)
        ll.addLayout(row)
        self.conversations = QListWidget()
        self.conversations.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversations.customContextMenuRequested.connect(self._list_menu)
        self.conversations.itemClicked.connect(lambda it: self.open_conversation(it.data(256)))
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
        """The transcript, the profile and thinking controls, and the composer."""
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea(widgetResizable=True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.transcript = QWidget()
        self.transcript.setObjectName("transcript")
        self._tl = QVBoxLayout(self.transcript)
        self._tl.addStretch(1)
        self.scroll.setWidget(self.transcript)
        rl.addWidget(self.scroll, 1)

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
        controls.addStretch(1)
        self.stats = QLabel()
        self.stats.setObjectName("stats")
        controls.addWidget(self.stats)
        rl.addLayout(controls)

        composer = QHBoxLayout()
        self.input = Composer()
        self.input.submitted.connect(self.send)
        self.input.stop_requested.connect(self.stop)
        self.input.setFixedHeight(72)
        composer.addWidget(self.input, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(lambda *_: self.send())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.clicked.connect(self.regenerate)
        for b in (self.send_button, self.stop_button, self.regen_button):
            buttons.addWidget(b)
        composer.addLayout(buttons)
        rl.addLayout(composer)
        return right

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
            item.setData(256, t.id)
            self.conversations.addItem(item)
            if t.id == self.thread_id:
                item.setSelected(True)
        self.list_filled.emit()

    def new_conversation(self) -> None:
        if self.busy:
            return
        self.session.new_conversation()
        self.refresh_list()
        self.input.setFocus()

    def open_conversation(self, thread_id: str) -> None:
        """Show a stored conversation (read off the UI thread; `conversation_opened` when shown)."""
        if self.busy:
            self.message_for_user.emit("Stop the reply before switching conversations.")
            return
        self.session.begin_open(thread_id)
        self._read(self.session.load, thread_id, on_done=self.session.finish_open)

    def _show_conversation(self, c: Conversation) -> None:
        """Draw the session's conversation: a new one, one being read, or one read."""
        self._show_settings(c.settings)
        self._clear_transcript()
        for m in c.messages:
            if m.get("role") in ("user", "assistant"):
                w = self._add_message(m["role"])
                w.set_content(str(m.get("content") or ""), str(m.get("reasoning_content") or ""))
                meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
                if m["role"] == "assistant":
                    w.set_footer(str(meta.get("footer") or ""))
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
        return self.delete_conversation(item.data(256) if item is not None else self.thread_id)

    def undo_delete(self) -> None:
        """Put the last deleted conversation back, with its id, title, settings and messages."""
        tid = self.session.undo_delete()
        self.undo_bar.setVisible(False)
        if tid is None:
            return
        self.refresh_list()
        if not self.busy:
            self.open_conversation(tid)

    def _list_menu(self, pos: Any) -> None:
        item = self.conversations.itemAt(pos)
        if item is None:
            return
        tid = item.data(256)
        menu = QMenu(self)
        rename = menu.addAction("Rename…")
        delete = menu.addAction("Delete…")
        chosen = menu.exec(self.conversations.mapToGlobal(pos))
        if chosen is rename:
            title, ok = QInputDialog.getText(self, "Rename", "Title", text=item.text())
            if ok:
                self.rename_conversation(tid, title)
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
        return self.task is not None and self.task.running

    def send(self, text: str | None = None) -> None:
        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not text or self.busy or self.session.opening:
            return
        if self.backend is None:
            self.message_for_user.emit("No model is loaded: load one in Models (or run locus --demo).")
            return
        self.session.add_user(text)
        self.input.clear()
        self.refresh_list()
        self._generate()

    def regenerate(self) -> None:
        """Drop the last reply (from view and memory) and answer the last user message again."""
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

        self.send_button.setEnabled(False)
        self.regen_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.stats.setText("Thinking…" if req.enable_thinking else "Generating…")
        self.task = stream_in_background(
            make, on_event=self.session.add_event, on_error=self.session.fail, on_cancel=cancel
        )

    def _reply_started(self) -> None:
        self._current = self._add_message("assistant")

    def _reply_changed(self, u: ReplyUpdate) -> None:
        if isinstance(u.event, ReasoningDelta | TextDelta):
            self.stats.setText(f"{self.session.rate():.1f} tok/s")
        if not self._paint.isActive():
            self._paint.start()

    def _repaint_current(self) -> None:
        reply = self.session.reply
        if self._current is not None and reply is not None:
            self._current.set_content(shown_text(reply), reply.reasoning)
            bar = self.scroll.verticalScrollBar()
            bar.setValue(bar.maximum())

    def _reply_ended(self, end: ReplyEnd) -> None:
        self._paint.stop()
        self._repaint_current()
        if end.stats:
            self.stats.setText(end.stats)
        if end.error is not None:
            self.message_for_user.emit(f"Generation failed: {end.error}")
        if self._current is not None:
            self._current.set_footer(end.footer)
        self._reset_buttons()
        self.reply_finished.emit(end.finish_reason)

    def _reset_buttons(self) -> None:
        self.send_button.setEnabled(True)
        self.regen_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._handle = None

    # -- transcript ---------------------------------------------------------------------------------
    def _add_message(self, role: str) -> MessageWidget:
        w = MessageWidget(role, self.dark)
        self._tl.insertWidget(self._tl.count() - 1, w)
        return w

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
        if self._own_writer:
            self.writer.close()
        else:
            self.writer.flush()


def shown_text(reply: ReplyAccumulator) -> str:
    """The answer as the transcript shows it: each tool call, or malformed call, named in place."""
    out = []
    for p in reply.parts:
        if isinstance(p, TextDelta):
            out.append(p.text)
        elif isinstance(p, ToolCall):
            out.append(f"\n\n`tool call: {p.name}`")
        elif isinstance(p, ToolCallError):
            out.append(f"\n\n(malformed tool call: {p.message})")
    return "".join(out)
