"""One chat message on screen: who wrote it, its images, the reasoning (collapsed, saying
"Thinking…" while it streams), the answer, and what can be done with it (copy, edit and resend,
regenerate, delete, earlier versions ‹ 1/2 ›), as buttons and on right-click."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat_session import message_text
from engine import ReplyAccumulator, TextDelta, ToolCall, ToolCallError

from .chat_composer import thumbnail
from .markdown import MarkdownView

__all__ = ["MessageWidget", "empty_answer_note", "shown_text"]


def shown_text(reply: ReplyAccumulator) -> str:
    """The answer as the transcript shows it: each tool call named in place; a malformed call is
    noted for the user (the parser's advice is written for the model, not for them)."""
    out = []
    for p in reply.parts:
        if isinstance(p, TextDelta):
            out.append(p.text)
        elif isinstance(p, ToolCall):
            out.append(f"\n\n`tool call: {p.name}`")
        elif isinstance(p, ToolCallError):
            name = f" to `{p.name}`" if p.name else ""
            out.append(
                f"\n\n*(the model wrote a tool call{name} that Locus could not read; it was left out)*"
            )
    return "".join(out)


def empty_answer_note(finish_reason: str, has_reasoning: bool) -> str:
    """What an answer with no text says instead of nothing."""
    if finish_reason == "cancelled":
        return "*(stopped before the answer began)*"
    if not has_reasoning:
        return "*(the model gave an empty answer; try Regenerate)*"
    if finish_reason == "length":
        return (
            "*(no answer: the token limit was reached while the model was still thinking. "
            "Open Reasoning above to read it, or raise Max tokens in the chat settings and Regenerate.)*"
        )
    return "*(the model only thought and gave no answer; open Reasoning above to read it, or Regenerate)*"


class MessageWidget(QFrame):
    """One message: images, a collapsible reasoning block, the text (markdown for replies, plain
    text for the user's own), a footer, and its actions (`action` carries their names)."""

    action = Signal(str)  # copy, edit, regenerate, delete, previous, next
    edit_submitted = Signal(str)

    def __init__(self, role: str, dark: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.index = -1  # its place in the session's history
        self.setObjectName("userMessage" if role == "user" else "assistantMessage")
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self._lay = lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 6, 10, 6)
        who = QLabel("You" if role == "user" else "Locus")
        who.setObjectName("messageRole")
        lay.addWidget(who)
        self.images = QHBoxLayout()
        self.images.setContentsMargins(0, 0, 0, 0)
        self.images.addStretch(1)
        lay.addLayout(self.images)
        self.reasoning_toggle = QToolButton(text="▸ Reasoning", checkable=True)
        self.reasoning_toggle.setObjectName("reasoningToggle")
        self.reasoning_toggle.setVisible(False)
        self.reasoning_toggle.toggled.connect(lambda *_: self._label_toggle())
        lay.addWidget(self.reasoning_toggle, alignment=Qt.AlignmentFlag.AlignLeft)
        self.reasoning_label = QLabel(wordWrap=True)
        self.reasoning_label.setObjectName("reasoning")
        self.reasoning_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reasoning_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reasoning_label.setVisible(False)
        # Right-click anywhere in a message is its menu (Copy Selection included), not a label's own.
        self.reasoning_label.setContextMenuPolicy(Qt.ContextMenuPolicy.NoContextMenu)
        lay.addWidget(self.reasoning_label)
        self.body: QWidget
        if role == "user":  # the user's words as typed: every line break kept, no markdown
            self.body = QLabel(wordWrap=True)
            self.body.setObjectName("userText")
            self.body.setTextFormat(Qt.TextFormat.PlainText)
            self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.body.setContextMenuPolicy(Qt.ContextMenuPolicy.NoContextMenu)
        else:
            self.body = MarkdownView(dark)
        lay.addWidget(self.body)
        self.editor: QPlainTextEdit | None = None
        self.footer = QLabel(wordWrap=True)
        self.footer.setObjectName("messageFooter")
        self.footer.setVisible(False)
        lay.addWidget(self.footer)
        lay.addWidget(self._build_actions())
        self.reasoning = ""
        self.text = ""
        self.thinking = False  # reasoning is streaming and no answer has come yet
        self.image_count = 0

    def _build_actions(self) -> QWidget:
        bar = QWidget()
        row = QHBoxLayout(bar)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.prev_button = QToolButton(text="‹")
        self.version_label = QLabel()
        self.version_label.setObjectName("stats")
        self.next_button = QToolButton(text="›")
        for w in (self.prev_button, self.version_label, self.next_button):
            w.setVisible(False)
            row.addWidget(w)
        self.prev_button.setToolTip("Previous version")
        self.next_button.setToolTip("Next version")
        self.prev_button.clicked.connect(lambda *_: self.action.emit("previous"))
        self.next_button.clicked.connect(lambda *_: self.action.emit("next"))
        self.buttons: dict[str, QToolButton] = {}
        names = ["copy", "edit", "delete"] if self.role == "user" else ["copy", "regenerate", "delete"]
        tips = {
            "copy": ("Copy", "Copy this message"),
            "edit": ("Edit", "Edit and resend (the earlier version is kept)"),
            "regenerate": ("Regenerate", "Answer again (this answer is kept as a version)"),
            "delete": ("Delete", "Delete this message"),
        }
        for name in names:
            b = QToolButton(text=tips[name][0])
            b.setObjectName("messageAction")
            b.setToolTip(tips[name][1])
            b.setAutoRaise(True)
            b.clicked.connect(lambda *_, n=name: self.action.emit(n))
            row.addWidget(b)
            self.buttons[name] = b
        row.addStretch(1)
        return bar

    # -- content -----------------------------------------------------------------------------------
    def _label_toggle(self) -> None:
        open_ = self.reasoning_toggle.isChecked()
        self.reasoning_label.setVisible(open_)
        if self.thinking:
            words = len(self.reasoning.split())
            label = f"Thinking… ({words} words)" if words else "Thinking…"
        else:
            label = "Reasoning"
        self.reasoning_toggle.setText(("▾ " if open_ else "▸ ") + label)

    def set_thinking(self, on: bool) -> None:
        """Say "Thinking…" on the (collapsed) reasoning while it streams with no answer yet."""
        self.thinking = on
        self.reasoning_toggle.setVisible(on or bool(self.reasoning))
        self._label_toggle()

    def set_content(self, text: str, reasoning: str = "") -> None:
        if reasoning != self.reasoning:
            self.reasoning = reasoning
            self.reasoning_label.setText(reasoning)
            self.reasoning_toggle.setVisible(bool(reasoning) or self.thinking)
            self._label_toggle()
        if text != self.text:
            self.text = text
            if isinstance(self.body, MarkdownView):
                self.body.set_text(text)
                for label in self.body.findChildren(QLabel):  # right-click is this message's menu
                    label.setContextMenuPolicy(Qt.ContextMenuPolicy.NoContextMenu)
            else:
                self.body.setText(text)
                self.body.setVisible(bool(text))

    def set_message(self, m: dict[str, Any], images: dict[str, tuple[str, bytes]]) -> None:
        """Show a stored message: its images and files, reasoning and text."""
        content = m.get("content")
        for p in content if isinstance(content, list) else []:
            if isinstance(p, dict) and p.get("type") == "image":
                found = images.get(str(p.get("attachment")))
                self.add_image(found[1] if found else None, str(p.get("name") or "image"))
            elif isinstance(p, dict) and "file" in p:
                self.add_file(str(p["file"]))
        self.set_content(message_text(m), str(m.get("reasoning_content") or ""))

    def add_image(self, data: bytes | None, name: str) -> None:
        label = QLabel()
        label.setObjectName("messageImage")
        pix = thumbnail(data, 160) if data else None
        if pix is not None and not pix.isNull():
            label.setPixmap(pix)
        else:
            label.setText(f"(image {name} is missing)")
        label.setToolTip(name)
        self.images.insertWidget(self.images.count() - 1, label)
        self.image_count += 1

    def add_file(self, name: str) -> None:
        label = QLabel(f"📄 {name}")
        label.setObjectName("messageFile")
        self.images.insertWidget(self.images.count() - 1, label)

    def set_footer(self, text: str) -> None:
        self.footer.setText(text)
        self.footer.setVisible(bool(text))

    def set_versions(self, position: int, count: int) -> None:
        """‹ position/count ›, shown when the message has earlier or later versions."""
        for w in (self.prev_button, self.version_label, self.next_button):
            w.setVisible(count > 1)
        self.version_label.setText(f"{position}/{count}")
        self.prev_button.setEnabled(position > 1)
        self.next_button.setEnabled(position < count)

    def set_actions_enabled(self, on: bool) -> None:
        """No edits while a reply is being written."""
        for name, b in self.buttons.items():
            b.setEnabled(on or name == "copy")
        self.prev_button.setEnabled(on and self.version_label.text().split("/")[0] not in ("", "1"))
        pos, _, count = self.version_label.text().partition("/")
        self.next_button.setEnabled(on and pos != count)

    # -- actions -------------------------------------------------------------------------------------
    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)

    def _selected(self) -> str:
        for label in self.findChildren(QLabel):
            if label.hasSelectedText():
                return label.selectedText().replace("\u2029", "\n")
        return ""

    def _menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        chosen: dict[Any, str] = {}
        selected = self._selected()
        if selected:
            act = menu.addAction("Copy Selection")
            act.triggered.connect(lambda *_: QGuiApplication.clipboard().setText(selected))
        chosen[menu.addAction("Copy Message")] = "copy"
        if "edit" in self.buttons:
            chosen[menu.addAction("Edit and Resend…")] = "edit"
        if "regenerate" in self.buttons:
            chosen[menu.addAction("Regenerate")] = "regenerate"
        if self.prev_button.isVisible():
            menu.addSeparator()
            chosen[menu.addAction("Previous Version")] = "previous"
            chosen[menu.addAction("Next Version")] = "next"
        menu.addSeparator()
        chosen[menu.addAction("Delete Message")] = "delete"
        for act, name in chosen.items():
            btn = self.buttons.get(name) or (self.prev_button if name == "previous" else self.next_button)
            act.setEnabled(name == "copy" or btn.isEnabled())
        self.last_menu = [a.text() for a in menu.actions() if a.text()]
        picked = menu.exec(self.mapToGlobal(pos))
        if picked in chosen:
            self.action.emit(chosen[picked])

    def start_edit(self) -> None:
        """Edit in place: the text in a box with Send and Cancel (Send makes a new version)."""
        if self.editor is not None:
            return
        self.editor = QPlainTextEdit(self.text)
        self.editor.setObjectName("messageEditor")
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addStretch(1)
        cancel = QPushButton("Cancel")
        send = QPushButton("Send")
        send.setDefault(True)
        row.addWidget(cancel)
        row.addWidget(send)
        self._edit_box = box
        at = self._lay.indexOf(self.body)
        self._lay.insertWidget(at + 1, self.editor)
        self._lay.insertWidget(at + 2, box)
        self.body.setVisible(False)
        cancel.clicked.connect(lambda *_: self.end_edit())
        send.clicked.connect(lambda *_: self._send_edit())
        self.editor.setFocus()

    def _send_edit(self) -> None:
        text = self.editor.toPlainText() if self.editor is not None else ""
        self.end_edit()
        if text.strip():
            self.edit_submitted.emit(text)

    def end_edit(self) -> None:
        if self.editor is None:
            return
        for w in (self.editor, self._edit_box):
            self._lay.removeWidget(w)
            w.setParent(None)
            w.deleteLater()
        self.editor = None
        self.body.setVisible(bool(self.text) or isinstance(self.body, MarkdownView))
