"""Render resources/icons/locus.svg into a macOS .icns (Qt's SVG renderer + Pillow's ICNS writer).

    python packaging/make_icns.py OUT.icns
Runs anywhere (offscreen Qt), so the icon is generated at build time rather than committed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render_png(svg: Path, size: int = 1024):
    """The SVG as a square PIL image of `size` pixels with transparency."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    QSvgRenderer(str(svg)).render(painter)
    painter.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    import io

    return Image.open(io.BytesIO(bytes(data))).convert("RGBA")


def make_icns(out: Path, svg: Path = ROOT / "resources" / "icons" / "locus.svg") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    render_png(svg).save(out, format="ICNS")  # Pillow writes every size from 16 to 1024
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python packaging/make_icns.py OUT.icns")
    print(make_icns(Path(sys.argv[1])))
