"""Markdown for chat messages: prose through Qt's own markdown, code blocks highlighted by Pygments
with a copy button each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["CodeBlock", "MarkdownView", "Segment", "highlight", "split_code"]

_FENCE = re.compile(r"^```([\w+#.-]*)[^\n]*\n(.*?)(?:^```[ \t]*$|\Z)", re.S | re.M)


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" or "code"
    text: str
    lang: str = ""


def split_code(text: str) -> list[Segment]:
    """Prose and fenced code blocks in order; an unclosed fence (still streaming) is code too."""
    out: list[Segment] = []
    pos = 0
    for m in _FENCE.finditer(text):
        if m.start() > pos and text[pos : m.start()].strip():
            out.append(Segment("text", text[pos : m.start()]))
        out.append(Segment("code", m.group(2).rstrip("\n"), m.group(1)))
        pos = m.end()
    if text[pos:].strip():
        out.append(Segment("text", text[pos:]))
    return out


def highlight(code: str, lang: str, dark: bool) -> str:
    """HTML for `code` highlighted with inline styles (Qt's rich text has no stylesheet classes)."""
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    style = "monokai" if dark else "friendly"
    return pyg(code, lexer, HtmlFormatter(noclasses=True, style=style, nobackground=True))


class CodeBlock(QFrame):
    """A highlighted code block with a language label and a Copy button."""

    def __init__(self, code: str, lang: str, dark: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("codeBlock")
        self.code = code
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 8)
        head = QHBoxLayout()
        head.addWidget(QLabel(lang or "code"))
        head.addStretch(1)
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.clicked.connect(self.copy)
        head.addWidget(self.copy_button)
        lay.addLayout(head)
        self.view = QTextBrowser()
        self.view.setFrameShape(QFrame.Shape.NoFrame)
        self.view.setHtml(highlight(code, lang, dark))
        self.view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        lines = max(1, code.count("\n") + 1)
        self.view.setFixedHeight(min(400, 8 + lines * self.view.fontMetrics().lineSpacing() + 8))
        lay.addWidget(self.view)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.code)
        self.copy_button.setText("Copied")


class MarkdownView(QWidget):
    """Renders markdown text; `set_text` re-renders only when the segments changed."""

    def __init__(self, dark: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dark = dark
        self._lay = QVBoxLayout(self)
        self._lay.setContentsMargins(0, 0, 0, 0)
        self._segments: list[Segment] = []
        self._widgets: list[QWidget] = []
        self.text = ""

    def set_text(self, text: str) -> None:
        self.text = text
        segs = split_code(text)
        # Reuse widgets for unchanged leading segments so streaming stays cheap.
        keep = 0
        while keep < min(len(segs), len(self._segments)) and segs[keep] == self._segments[keep]:
            keep += 1
        for w in self._widgets[keep:]:
            w.setParent(None)
            w.deleteLater()
        self._widgets = self._widgets[:keep]
        for seg in segs[keep:]:
            if seg.kind == "code":
                w: QWidget = CodeBlock(seg.text, seg.lang, self.dark)
            else:
                label = QLabel()
                label.setTextFormat(Qt.TextFormat.MarkdownText)
                label.setText(seg.text)
                label.setWordWrap(True)
                label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
                label.setOpenExternalLinks(True)
                w = label
            self._lay.addWidget(w)
            self._widgets.append(w)
        self._segments = segs

    def code_blocks(self) -> list[CodeBlock]:
        return [w for w in self._widgets if isinstance(w, CodeBlock)]
