"""Locate: an image on a zoomable canvas with labelled boxes over it, a box list, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QIcon,
    QImage,
    QPainter,
    QPen,
    QPixmap,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app import localize
from engine import Done, GenerationRequest, ReplyAccumulator

from .bridge import Task, stream_in_background
from .dialogs import save_file

if TYPE_CHECKING:
    from engine import Backend

__all__ = ["BoxItem", "LocateView", "box_dict", "label_color", "unsupported_image"]

# What Pillow (the engine's reader) opens here; HEIC needs a plugin Locus does not ship.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def label_color(label: str, labels: list[str] | None = None) -> QColor:
    """The label's color among `labels`: app.localize's rule, so canvas and exported PNG agree."""
    return QColor(*localize.label_color(label, labels))


def box_dict(box: localize.Box) -> dict[str, Any]:
    """A Box as exported JSON: app.localize's own (the CLI writes the same)."""
    return box.to_dict()


class BoxItem(QGraphicsRectItem):
    """One box on the canvas with its label; highlighted while hovered here or in the list."""

    def __init__(self, box: Any, index: int, color: QColor | None = None) -> None:
        super().__init__(QRectF(box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1))
        self.box = box
        self.index = index
        self.color = color or label_color(box.label)
        self.setAcceptHoverEvents(True)
        self.label_item = QGraphicsSimpleTextItem(box.label, self)
        ink = localize.ink_for((self.color.red(), self.color.green(), self.color.blue()))
        self.label_item.setBrush(QBrush(QColor(*ink)))
        f = QFont()
        f.setBold(True)
        self.label_item.setFont(f)
        self.label_item.setPos(box.x1 + 3, max(0.0, box.y1 - 18))
        self.label_bg = QGraphicsRectItem(self.label_item.boundingRect().adjusted(-3, 0, 3, 0), self)
        self.label_bg.setPos(self.label_item.pos())
        self.label_bg.setBrush(self.color)
        self.label_bg.setPen(Qt.PenStyle.NoPen)
        self.label_item.setZValue(1)
        self.set_highlight(False)

    def set_highlight(self, on: bool) -> None:
        pen = QPen(self.color, 5 if on else 2.5)
        pen.setCosmetic(True)
        self.setPen(pen)
        fill = QColor(self.color)
        fill.setAlpha(70 if on else 0)
        self.setBrush(fill)

    def hoverEnterEvent(self, event: Any) -> None:
        self.set_highlight(True)
        super().hoverEnterEvent(event)

    def hoverLeaveEvent(self, event: Any) -> None:
        self.set_highlight(False)
        super().hoverLeaveEvent(event)


class Canvas(QGraphicsView):
    """A QGraphicsView that zooms with the wheel (or pinch on a trackpad)."""

    def __init__(self, scene: QGraphicsScene) -> None:
        super().__init__(scene)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)

    def wheelEvent(self, event: QWheelEvent) -> None:
        factor = 1.15 if event.angleDelta().y() > 0 else 1 / 1.15
        self.scale(factor, factor)

    def fit(self) -> None:
        if not self.scene().itemsBoundingRect().isEmpty():
            self.fitInView(self.scene().itemsBoundingRect(), Qt.AspectRatioMode.KeepAspectRatio)


class LocateView(QWidget):
    """Drop or open an image, ask where things are, see and export the boxes."""

    located = Signal(int)  # number of boxes after a query (tests, status)
    message_for_user = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend: Backend | None = None  # the loaded model
        self.image_path: Path | None = None
        self.image_size = (0, 0)
        self.boxes: list[Any] = []
        self.box_items: list[BoxItem] = []
        self.reply = ReplyAccumulator()  # the answer being read
        self.max_tokens = 1024
        self.task: Task | None = None
        self.scene = QGraphicsScene(self)
        self.pixmap_item: QGraphicsPixmapItem | None = None
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.open_button = QPushButton("Open Image…")
        self.open_button.clicked.connect(self._choose_image)
        top.addWidget(self.open_button)
        self.query = QLineEdit(placeholderText='What to find, e.g. "cats, the red cup"')
        self.query.returnPressed.connect(self.locate)
        top.addWidget(self.query, 1)
        self.locate_button = QPushButton("Locate")
        self.locate_button.clicked.connect(self.locate)
        top.addWidget(self.locate_button)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop)
        top.addWidget(self.stop_button)
        lay.addLayout(top)
        split = QSplitter()
        self.canvas = Canvas(self.scene)
        split.addWidget(self.canvas)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(QLabel("Boxes"))
        self.box_list = QListWidget()
        self.box_list.setMouseTracking(True)
        self.box_list.itemChanged.connect(self._toggle)
        self.box_list.itemEntered.connect(lambda it: self.highlight(self.box_list.row(it)))
        self.box_list.currentRowChanged.connect(self.highlight)
        sl.addWidget(self.box_list, 1)
        row = QHBoxLayout()
        self.export_json_button = QPushButton("Export JSON…")
        self.export_json_button.clicked.connect(lambda: self._export("json"))
        self.export_png_button = QPushButton("Export PNG…")
        self.export_png_button.clicked.connect(lambda: self._export("png"))
        row.addWidget(self.export_json_button)
        row.addWidget(self.export_png_button)
        sl.addLayout(row)
        self.status = QLabel("Drop an image here, or open one.")
        self.status.setWordWrap(True)
        # Ignored: a long error (a path has no break points) must not widen the window.
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        sl.addWidget(self.status)
        split.addWidget(side)
        split.setSizes([700, 240])
        lay.addWidget(split, 1)

    def set_backend(self, backend: Backend | None) -> None:
        self.backend = backend

    # -- image and boxes ----------------------------------------------------------------------------
    def open_image(self, path: str | Path) -> bool:
        """Show an image (EXIF orientation applied, as the model sees it); False with a message
        when it cannot be read."""
        path = Path(path)
        if path.suffix.lower() not in IMAGE_SUFFIXES and path.suffix:
            self.message_for_user.emit(unsupported_image(path))
            return False
        img = _read_image(path)
        if img.isNull():
            self.message_for_user.emit(f"Cannot open {path.name}: not an image Locus can read.")
            return False
        self.image_path = path
        self.image_size = (img.width(), img.height())
        self.scene.clear()
        self.box_items = []
        self.boxes = []
        self.box_list.clear()
        self.pixmap_item = self.scene.addPixmap(QPixmap.fromImage(img))
        self.scene.setSceneRect(QRectF(0, 0, img.width(), img.height()))
        self.canvas.fit()
        self.status.setText(f"{path.name} — {img.width()}×{img.height()}")
        return True

    def set_boxes(self, boxes: list[Any]) -> None:
        """Draw `boxes` (pixels of the original image) over the image and list them."""
        for item in self.box_items:
            self.scene.removeItem(item)
        self.box_items = []
        self.boxes = list(boxes)
        self.box_list.blockSignals(True)
        self.box_list.clear()
        colors = localize.label_colors(b.label for b in self.boxes)
        for i, b in enumerate(self.boxes):
            color = QColor(*colors[b.label])
            item = BoxItem(b, i, color)
            self.scene.addItem(item)
            self.box_items.append(item)
            li = QListWidgetItem(f"{b.label}  ({b.x1:.0f}, {b.y1:.0f}) – ({b.x2:.0f}, {b.y2:.0f})")
            li.setFlags(li.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            li.setCheckState(Qt.CheckState.Checked)
            # A swatch, not colored text: light colors are unreadable as text on white.
            swatch = QPixmap(12, 12)
            swatch.fill(color)
            li.setIcon(QIcon(swatch))
            self.box_list.addItem(li)
        self.box_list.blockSignals(False)

    def _toggle(self, item: QListWidgetItem) -> None:
        row = self.box_list.row(item)
        if 0 <= row < len(self.box_items):
            self.box_items[row].setVisible(item.checkState() == Qt.CheckState.Checked)

    def highlight(self, row: int) -> None:
        for i, it in enumerate(self.box_items):
            it.set_highlight(i == row)

    # -- the model ----------------------------------------------------------------------------------
    def locate(self) -> None:
        query = self.query.text().strip()
        if self.image_path is None:
            self.message_for_user.emit("Open or drop an image first.")
            return
        if not query:
            self.message_for_user.emit("Type what to find, e.g. “cats, the red cup”.")
            return
        if self.backend is None:
            self.message_for_user.emit("No model is loaded: load one in Models.")
            return
        if self.task is not None and self.task.running:
            return
        info = self.backend.info
        if not info.images:  # a remote model that may not read images says so itself, on trying
            self.message_for_user.emit(
                f"The loaded model ({info.name}) does not read images: load a vision model "
                "(Qwen3.6 with its vision weights) to locate things."
            )
            return
        req = self.request(query)
        backend = self.backend
        holder: dict[str, Any] = {}

        def make() -> Any:
            holder["h"] = backend.submit(req)
            return holder["h"].events()

        self.reply = ReplyAccumulator()
        self.status.setText("Looking…")
        self.locate_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.task = stream_in_background(
            make,
            on_event=self._on_event,
            on_error=self._failed,
            on_cancel=lambda: holder.get("h") and holder["h"].cancel(),
        )

    def request(self, query: str) -> GenerationRequest:
        """The grounding request for the open image (app.localize builds it, as for the CLI)."""
        return localize.locate_request(str(self.image_path), query, max_tokens=self.max_tokens)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    @property
    def raw_output(self) -> str:
        """The model's answer so far (the boxes are parsed from it)."""
        return self.reply.text

    def _on_event(self, ev: Any) -> None:
        self.reply.add(ev)
        if isinstance(ev, Done):
            self.locate_button.setEnabled(True)
            self.stop_button.setEnabled(False)
            if ev.finish_reason == "error":
                self._failed(str(ev.error))
                return
            self.show_response(self.raw_output)

    def show_response(self, text: str) -> int:
        """Parse a model answer into boxes and draw them; the number of boxes."""
        try:
            boxes = localize.parse_response(text, *self.image_size)
        except Exception as e:  # a parser failure is a message, not a crash
            self._failed(str(e))
            return 0
        self.set_boxes(boxes)
        self.status.setText(
            f"{len(boxes)} box(es) found." if boxes else "The model found nothing it could box."
        )
        self.located.emit(len(boxes))
        return len(boxes)

    def _failed(self, message: str) -> None:
        self.locate_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.status.setText(f"Error: {message}")
        self.message_for_user.emit(f"Locate failed: {message}")

    # -- export -------------------------------------------------------------------------------------
    def export_json(self, path: str | Path) -> None:
        data = {
            "image": str(self.image_path) if self.image_path else None,
            "width": self.image_size[0],
            "height": self.image_size[1],
            "boxes": [
                box_dict(b) for b, it in zip(self.boxes, self.box_items, strict=True) if it.isVisible()
            ],
        }
        Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")

    def render_annotated(self) -> QImage:
        """The image at full resolution with the visible boxes drawn on it."""
        w, h = self.image_size
        img = QImage(w, h, QImage.Format.Format_ARGB32)
        img.fill(QColor("white"))
        # The file shows the boxes as they are, not as the mouse happens to highlight one.
        lit = [it for it in self.box_items if it.brush().color().alpha() > 0]
        for it in lit:
            it.set_highlight(False)
        p = QPainter(img)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.scene.render(p, QRectF(0, 0, w, h), QRectF(0, 0, w, h))
        p.end()
        for it in lit:
            it.set_highlight(True)
        return img

    def export_png(self, path: str | Path) -> None:
        if not self.render_annotated().save(str(path), "PNG"):
            raise OSError(f"could not write {path}")

    def _export(self, kind: str) -> None:
        if self.image_path is None:
            self.message_for_user.emit("Nothing to export yet: open an image and locate something.")
            return
        stem = self.image_path.stem + "-boxes"
        path = save_file(self, "Export", f"{stem}.{kind}", f"*.{kind}")
        if path is None:
            return
        try:
            self.export_json(path) if kind == "json" else self.export_png(path)
        except OSError as e:
            self.message_for_user.emit(f"Export failed: {e}")

    def choose_image(self) -> None:
        """File → Open Image…"""
        self._choose_image()

    def _choose_image(self) -> None:
        start = str(self.image_path.parent) if self.image_path else str(Path.home())
        pattern = "Images (" + " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES)) + ")"
        path, _ = QFileDialog.getOpenFileName(self, "Open Image", start, pattern)
        if path:
            self.open_image(path)


def unsupported_image(path: Path) -> str:
    """What to do with an image type Locus does not read."""
    kinds = "PNG, JPEG, GIF, BMP, WebP or TIFF"
    if path.suffix.lower() in (".heic", ".heif"):
        return (
            f"Locus cannot read HEIC images such as {path.name}: export it as JPEG or PNG "
            "first (Preview → File → Export)."
        )
    return f"Locus cannot open {path.name}: drop a project folder, or an image ({kinds})."


def _read_image(path: Path) -> QImage:
    """Read with Pillow (EXIF transpose, first frame, any mode) so boxes line up with what the model
    saw; Qt's reader as a fallback."""
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im.seek(0)
            rgb = ImageOps.exif_transpose(im).convert("RGBA")
            data = rgb.tobytes("raw", "RGBA")
            q = QImage(data, rgb.width, rgb.height, 4 * rgb.width, QImage.Format.Format_RGBA8888)
            return q.copy()  # own the pixels: `data` goes away
    except Exception:  # not something Pillow reads; let Qt try
        return QImage(str(path))
