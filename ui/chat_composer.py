"""The chat's message box: Enter sends, images and files come in by drop, paste or the attach
button, and wait as removable chips above the box until the message is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QToolButton,
    QWidget,
)

from app.chat_session import Attachment, AttachmentError, make_attachment

__all__ = ["AttachmentStrip", "Composer", "thumbnail"]

IMAGE_FILTER = (
    "Images and text files (*.png *.jpg *.jpeg *.webp *.gif *.bmp *.txt *.md *.py *.json *.csv);;All (*)"
)


def thumbnail(data: bytes, size: int = 96) -> QPixmap:
    """A pixmap of an image's bytes fitted in `size` × `size` (empty when it cannot be read)."""
    pix = QPixmap()
    pix.loadFromData(data)
    if pix.isNull():
        return pix
    return pix.scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


def _png(image: QImage) -> bytes:
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    return bytes(QByteArray(buf.data()).data())


class Composer(QPlainTextEdit):
    """The message box: Enter sends and Shift+Enter breaks the line (or Ctrl+Enter sends when
    `enter_sends` is off). Dropped or pasted images and files come out as `files_given`."""

    submitted = Signal()
    stop_requested = Signal()  # Escape
    files_given = Signal(list)  # [(path or PNG bytes, name)]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.enter_sends = True
        self.set_enter_sends(True)

    def set_enter_sends(self, on: bool) -> None:
        self.enter_sends = on
        hint = "Enter to send, Shift+Enter for a new line" if on else "Ctrl+Enter to send"
        self.setPlaceholderText(f"Message Locus ({hint}); drop or paste images here")

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

    # -- images and files in -------------------------------------------------------------------
    @staticmethod
    def files_in(mime: QMimeData) -> list[tuple[Any, str]]:
        """The local files or image a drop or paste carries (none for plain text)."""
        files = [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]
        if files:
            return [(p, p.name) for p in files if p.is_file()]
        if mime.hasImage():
            image = mime.imageData()
            if isinstance(image, QPixmap):
                image = image.toImage()
            if isinstance(image, QImage) and not image.isNull():
                return [(_png(image), "pasted image.png")]
        return []

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return bool(self.files_in(source)) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        files = self.files_in(source)
        if files:
            self.files_given.emit(files)
        else:
            super().insertFromMimeData(source)

    def _take(self, e: QDragEnterEvent | QDragMoveEvent | QDropEvent) -> bool:
        """A drag of files or an image: accepted as Copy (never Move, which would take the file)."""
        if not self.files_in(e.mimeData()):
            return False
        e.setDropAction(Qt.DropAction.CopyAction)
        e.accept()
        return True

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:
        if not self._take(e):
            super().dragEnterEvent(e)

    def dragMoveEvent(self, e: QDragMoveEvent) -> None:
        if not self._take(e):
            super().dragMoveEvent(e)

    def dropEvent(self, e: QDropEvent) -> None:
        if self._take(e):
            self.files_given.emit(self.files_in(e.mimeData()))
        else:
            super().dropEvent(e)


class AttachmentStrip(QFrame):
    """The images and files waiting to be sent, each a chip with a thumbnail and a remove button."""

    changed = Signal()
    failed = Signal(str)  # a file that cannot be attached, said for a person

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attachmentStrip")
        self.items: list[Attachment] = []
        self._lay = QHBoxLayout(self)
        self._lay.setContentsMargins(4, 2, 4, 2)
        self._lay.addStretch(1)
        self.setVisible(False)

    def add(self, files: list[tuple[Any, str]]) -> None:
        """Attach `(path or bytes, name)` pairs; ones that cannot be used are reported by `failed`."""
        for source, name in files:
            try:
                a = make_attachment(source, name)
            except AttachmentError as e:
                self.failed.emit(str(e))
                continue
            if all(x.sha256 != a.sha256 for x in self.items):
                self.items.append(a)
        self._rebuild()

    def choose(self, parent: QWidget) -> None:
        """The attach button: pick images or text files."""
        paths, _ = QFileDialog.getOpenFileNames(
            parent, "Attach images or files", str(Path.home()), IMAGE_FILTER
        )
        self.add([(Path(p), Path(p).name) for p in paths])

    def take(self) -> list[Attachment]:
        """The attachments, cleared (the message was sent)."""
        out, self.items = self.items, []
        self._rebuild()
        return out

    def remove(self, a: Attachment) -> None:
        self.items = [x for x in self.items if x is not a]
        self._rebuild()

    def _rebuild(self) -> None:
        while self._lay.count() > 1:
            w = self._lay.takeAt(0).widget()
            if w is not None:
                w.setParent(None)
                w.deleteLater()
        for a in self.items:
            self._lay.insertWidget(self._lay.count() - 1, self._chip(a))
        self.setVisible(bool(self.items))
        self.changed.emit()

    def _chip(self, a: Attachment) -> QWidget:
        chip = QFrame()
        chip.setObjectName("attachmentChip")
        lay = QHBoxLayout(chip)
        lay.setContentsMargins(2, 2, 2, 2)
        icon = QLabel()
        if a.is_image:
            icon.setPixmap(thumbnail(a.data, 40))
        else:
            icon.setText("📄")
        lay.addWidget(icon)
        name = QLabel(a.name if len(a.name) <= 24 else a.name[:21] + "…")
        name.setToolTip(a.name)
        lay.addWidget(name)
        rm = QToolButton(text="✕")
        rm.setToolTip(f"Remove {a.name}")
        rm.clicked.connect(lambda *_, a=a: self.remove(a))
        lay.addWidget(rm)
        return chip
