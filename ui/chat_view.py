"""Chat: conversations persisted in the store, streaming replies from the engine on a worker."""

from __future__ import annotations

import time
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

from app.store import Store, StoreWriter, ThreadRecord, new_thread_id
from engine import (
    PRESETS,
    Done,
    GenerationRequest,
    PromptProgress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallError,
    Usage,
    preset,
)

from .bridge import Task, run_in_background, stream_in_background, to_ui_thread, user_message
from .dialogs import confirm
from .markdown import MarkdownView

if TYPE_CHECKING:
    from engine import Backend

__all__ = ["ChatView", "Composer", "MessageWidget"]

# Keys a message's dict may carry for the window only; never sent to the model.
_UI_KEYS = ("meta",)


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
    """Conversations list on the left; transcript, composer and controls on the right."""

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
        self._write_failed = to_ui_thread(self._on_write_failed, self)
        self._list_gen = 0  # the newest list request; older answers are dropped
        self._opening: str | None = None  # a conversation being read from the store
        self.dark = dark
        self.engine: Backend | None = None  # the loaded model
        self._context_tokens = 0
        self._remote: str | None = None  # the server's URL when the model runs elsewhere
        self.model_name = ""
        self.thread_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.task: Task | None = None
        self._handle: Any = None
        self._current: MessageWidget | None = None
        self._text = self._reasoning = ""
        self._usage: Usage | None = None
        self._started = 0.0
        self._tokens = 0
        self.max_tokens = 2048
        # Streamed deltas are coalesced and painted at most every 40 ms.
        self._paint = QTimer(self, interval=40, singleShot=True)
        self._paint.timeout.connect(self._repaint_current)
        self._build()
        self.refresh_list()

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
        self._deleted: tuple[Any, list[dict[str, Any]]] | None = None
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
    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Queue a store write (committed in order on the writer thread; flushed at shutdown)."""
        fut = self.writer.submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda f: f.exception() and self._write_failed(f.exception()))

    def _on_write_failed(self, e: BaseException) -> None:
        self.message_for_user.emit(f"Could not save the conversation: {user_message(e)}")

    def _read(self, fn: Any, *args: Any, on_done: Any) -> Task:
        """Run a store read after every earlier write, off the UI thread; `on_done` gets it."""
        return run_in_background(
            self.writer.call,
            fn,
            *args,
            on_done=on_done,
            on_error=lambda m: self.message_for_user.emit(f"Could not read conversations: {m}"),
        )

    def refresh_list(self) -> None:
        """List the conversations matching the search (titles and message text)."""
        self._list_gen += 1
        gen, query = self._list_gen, self.search.text().strip()
        self._read(
            self.store.search, query, "chat", 500, on_done=lambda threads: self._fill_list(gen, threads)
        )

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
        self.thread_id, self.history, self._opening = None, [], None
        self.profile.setCurrentText(getattr(self, "default_profile", "thinking"))
        self._clear_transcript()
        self.stats.setText("")  # the last conversation's speed is not this one's
        self.refresh_list()
        self.input.setFocus()

    def open_conversation(self, thread_id: str) -> None:
        """Show a stored conversation (read off the UI thread; `conversation_opened` when shown)."""
        if self.busy:
            self.message_for_user.emit("Stop the reply before switching conversations.")
            return
        self.thread_id, self.history, self._opening = thread_id, [], thread_id
        self._clear_transcript()
        self._read(self._load, thread_id, on_done=self._show_conversation)

    def _load(self, thread_id: str) -> tuple[ThreadRecord, list[dict[str, Any]]]:
        return self.store.thread(thread_id), self.store.messages(thread_id)

    def _show_conversation(self, loaded: tuple[ThreadRecord, list[dict[str, Any]]]) -> None:
        t, messages = loaded
        if t.id != self._opening:  # another conversation was opened meanwhile
            return
        self._opening = None
        self.history = messages
        self.profile.blockSignals(True)
        self.thinking.blockSignals(True)
        self.profile.setCurrentText(t.meta.get("preset", "thinking"))
        self.thinking.setChecked(bool(t.meta.get("thinking", True)))
        self.profile.blockSignals(False)
        self.thinking.blockSignals(False)
        self._clear_transcript()
        footer = ""
        for m in self.history:
            if m.get("role") in ("user", "assistant"):
                w = self._add_message(m["role"])
                w.set_content(str(m.get("content") or ""), str(m.get("reasoning_content") or ""))
                meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
                if m["role"] == "assistant":
                    footer = str(meta.get("footer") or "")
                    w.set_footer(footer)
        self.stats.setText(footer if not footer.startswith("Error") else "")
        self.conversation_opened.emit(t.id)

    def rename_conversation(self, thread_id: str, title: str) -> None:
        self._write(self.store.rename_thread, thread_id, title.strip() or "Untitled")
        self.refresh_list()

    def delete_conversation(self, thread_id: str, ask: bool = True) -> bool:
        """Delete a conversation after a confirmation; Undo (beside the list) brings it back."""
        if self.busy and thread_id == self.thread_id:
            self.message_for_user.emit("Stop the reply before deleting this conversation.")
            return False
        # What the question and Undo need, read after every queued write (a short wait).
        t, msgs = self.writer.call(self._load, thread_id)
        title = t.title or "New conversation"
        if ask and not confirm(
            self, "Delete conversation", f"Delete “{title}” and its {len(msgs)} messages?", "Delete"
        ):
            return False
        self._write(self.store.delete_thread, thread_id)
        self._deleted = (t, msgs)
        self.undo_label.setText(f"Deleted “{title}”")
        self.undo_label.setToolTip(title)
        self.undo_bar.setVisible(True)
        if thread_id == self.thread_id:
            self.new_conversation()
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
        if self._deleted is None:
            return
        t, msgs = self._deleted
        self._deleted = None
        self.undo_bar.setVisible(False)
        self._write(self.store.create_thread, t.kind, t.title, model=t.model, meta=t.meta, id=t.id)
        for m in msgs:
            self._write(self.store.add_message, t.id, m)
        self.refresh_list()
        if not self.busy:
            self.open_conversation(t.id)

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
        if self.thread_id:
            self._write(self.store.set_thread_meta, self.thread_id, self._meta())

    def _meta(self) -> dict[str, Any]:
        return {"preset": self.profile.currentText(), "thinking": self.thinking.isChecked()}

    def set_default_profile(self, name: str) -> None:
        """The sampling profile a new conversation starts with (Preferences)."""
        self.default_profile = name if name in PRESETS else "thinking"
        if self.thread_id is None:
            self.profile.setCurrentText(self.default_profile)

    # -- generation ---------------------------------------------------------------------------------
    def set_engine(self, engine: Backend | None, model_name: str = "") -> None:
        self.engine = engine
        self.model_name = model_name
        # Read once: a reply that ends after the model is unloaded still shows its footer.
        self._context_tokens = engine.info.context_tokens if engine is not None else 0
        self._remote = engine.info.remote if engine is not None else None

    @property
    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def send(self, text: str | None = None) -> None:
        text = (text if isinstance(text, str) else self.input.toPlainText()).strip()
        if not text or self.busy or self._opening:
            return
        if self.engine is None:
            self.message_for_user.emit("No model is loaded: load one in Models (or run locus --demo).")
            return
        if self.thread_id is None:
            self.thread_id = new_thread_id()
            self._write(
                self.store.create_thread,
                "chat",
                text.splitlines()[0][:60],
                model=self.model_name,
                meta=self._meta(),
                id=self.thread_id,
            )
        msg = {"role": "user", "content": text}
        self._write(self.store.add_message, self.thread_id, msg)
        self.history.append(msg)
        self._add_message("user").set_content(text)
        self.input.clear()
        self.refresh_list()
        self._generate()

    def regenerate(self) -> None:
        """Drop the last reply (from view and memory) and answer the last user message again."""
        if self.busy or not self.history or self.engine is None:
            return
        if self.history[-1].get("role") == "assistant":
            self.history.pop()
            last = self._messages()[-1] if self._messages() else None
            if last is not None and last.role == "assistant":
                self._remove(last)
            if self.thread_id:
                self._write(self.store.pop_message, self.thread_id)  # the stored reply goes too
        if self.history and self.history[-1].get("role") == "user":
            self._generate()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _generate(self) -> None:
        thinking = self.thinking.isChecked()
        messages = [{k: v for k, v in m.items() if k not in _UI_KEYS} for m in self.history]
        req = GenerationRequest(
            messages=messages,
            enable_thinking=thinking,
            sampling=preset(self.profile.currentText()),
            max_tokens=self.max_tokens,
            session=f"chat-{self.thread_id}",
        )
        self._current = self._add_message("assistant")
        self._text = self._reasoning = ""
        self._usage = None
        self._tokens = 0
        self._started = time.monotonic()
        engine = self.engine

        def make() -> Any:
            self._handle = engine.submit(req)
            return self._handle.events()

        def cancel() -> None:
            if self._handle is not None:
                self._handle.cancel()

        self.send_button.setEnabled(False)
        self.regen_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.stats.setText("Thinking…" if thinking else "Generating…")
        self.task = stream_in_background(
            make, on_event=self._on_event, on_error=self._on_error, on_cancel=cancel
        )

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, ReasoningDelta):
            self._reasoning += ev.text
            self._tokens += 1
        elif isinstance(ev, TextDelta):
            self._text += ev.text
            self._tokens += 1
        elif isinstance(ev, ToolCall):
            self._text += f"\n\n`tool call: {ev.name}`"
        elif isinstance(ev, ToolCallError):
            self._text += f"\n\n(malformed tool call: {ev.message})"
        elif isinstance(ev, PromptProgress):
            self.stats.setText(f"Reading prompt {ev.processed}/{ev.total}")
        elif isinstance(ev, Usage):
            self._usage = ev
        elif isinstance(ev, Done):
            self._finish(ev)
            return
        if isinstance(ev, ReasoningDelta | TextDelta):
            dt = max(time.monotonic() - self._started, 1e-6)
            self.stats.setText(f"{self._tokens / dt:.1f} tok/s")
        if not self._paint.isActive():
            self._paint.start()

    def _repaint_current(self) -> None:
        if self._current is not None:
            self._current.set_content(self._text, self._reasoning)
            bar = self.scroll.verticalScrollBar()
            bar.setValue(bar.maximum())

    def _finish(self, done: Done) -> None:
        self._paint.stop()
        self._repaint_current()
        reason = done.finish_reason
        u = self._usage or done.usage
        footer = ""
        if u is not None:
            limit = self._context_tokens
            ctx = u.prompt_tokens + u.completion_tokens
            footer = f"{u.generation_tps:.1f} tok/s · context {ctx}" + (f"/{limit}" if limit else "")
            if u.draft_tokens:  # speculative decoding: how many drafts the model kept
                footer += f" · drafts {u.draft_accepted}/{u.draft_tokens}"
            self.stats.setText(footer)
        if self._remote and reason != "error":  # which replies left the machine, kept with them
            footer = (footer + f" · remote: {self.model_name} at {self._remote}").strip(" ·")
        if reason == "cancelled":
            footer = (footer + " · stopped").strip(" ·")
        elif reason == "error":
            footer = f"Error: {done.error}"
            self.message_for_user.emit(f"Generation failed: {done.error}")
        elif reason == "length":
            footer += " · hit the token limit"
        if self._current is not None:
            self._current.set_footer(footer)
        if self._text or self._reasoning:
            msg: dict[str, Any] = {"role": "assistant", "content": self._text}
            if self._reasoning:
                msg["reasoning_content"] = self._reasoning
            # The footer (speed, context, "stopped") comes back with the conversation.
            msg["meta"] = {"footer": footer, "finish_reason": reason}
            self.history.append(msg)
            if self.thread_id:
                self._write(self.store.add_message, self.thread_id, msg)
        self._reset_buttons()
        self.reply_finished.emit(reason)

    def _on_error(self, message: str) -> None:
        self._reset_buttons()
        if self._current is not None:
            self._current.set_footer(f"Error: {message}")
        self.message_for_user.emit(f"Generation failed: {message}")
        self.reply_finished.emit("error")

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
