"""Locate view: box overlay items match the boxes in count and geometry; toggles, hover, export."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from app.localize import Box, parse_response
from ui.locate_view import BoxItem, LocateView, label_color

BOXES = [
    Box("cat", 10, 20, 110, 90),
    Box("red cup", 150.5, 40, 190, 140, (170, 90)),
    Box("cat", 0, 0, 30, 30),
]


@pytest.fixture
def view(qtbot, tmp_path):
    img = tmp_path / "scene.png"
    Image.new("RGB", (200, 150), (250, 250, 250)).save(img)
    v = LocateView()
    qtbot.addWidget(v)
    v.resize(900, 600)
    v.show()
    assert v.open_image(img)
    return v


def _items(v: LocateView) -> list[BoxItem]:
    return [it for it in v.scene.items() if isinstance(it, BoxItem)]


def test_overlay_matches_boxes(view):
    view.set_boxes(BOXES)
    items = sorted(_items(view), key=lambda it: it.index)
    assert len(items) == len(BOXES) == view.box_list.count()
    for it, b in zip(items, BOXES, strict=True):
        r = it.mapRectToScene(it.rect())
        assert (r.left(), r.top(), r.right(), r.bottom()) == pytest.approx((b.x1, b.y1, b.x2, b.y2))
        assert it.label_item.text() == b.label
    # Same label, same color; the pixmap sits at scene (0, 0) at the image's own size.
    assert items[0].color == items[2].color == label_color("cat")
    assert view.pixmap_item.pixmap().width() == 200 and view.pixmap_item.pos().x() == 0
    view.set_boxes(BOXES[:1])  # a new answer replaces the old boxes
    assert len(_items(view)) == 1


def test_parsed_boxes_are_drawn_in_pixels(view):
    text = '```json\n[{"bbox_2d": [0, 0, 500, 1000], "label": "left half"}]\n```'
    n = view.show_response(text)
    boxes = parse_response(text, 200, 150)
    assert n == len(boxes) == len(_items(view)) == 1
    r = _items(view)[0].rect()
    b = boxes[0]
    assert (r.left(), r.top(), r.right(), r.bottom()) == pytest.approx((b.x1, b.y1, b.x2, b.y2))
    assert r.right() == pytest.approx(100, abs=1) and r.bottom() == pytest.approx(150, abs=1)


def test_toggle_and_hover_highlight(view):
    view.set_boxes(BOXES)
    items = sorted(_items(view), key=lambda it: it.index)
    view.box_list.item(1).setCheckState(Qt.CheckState.Unchecked)
    assert not items[1].isVisible() and items[0].isVisible()
    view.highlight(0)
    assert items[0].pen().widthF() > items[2].pen().widthF()
    assert items[0].brush().color().alpha() > 0 and items[2].brush().color().alpha() == 0


def test_export_json_and_png(view, tmp_path):
    view.set_boxes(BOXES[:2])
    view.box_list.item(1).setCheckState(Qt.CheckState.Unchecked)  # hidden boxes are not exported
    view.export_json(tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["width"] == 200 and data["height"] == 150
    assert data["boxes"] == [{"label": "cat", "bbox": [10, 20, 110, 90]}]
    view.export_png(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == (200, 150)
        edge = im.convert("RGB").getpixel((10, 55))  # on the cat box's left edge
        inside = im.convert("RGB").getpixel((60, 55))
    c = label_color("cat")
    assert abs(edge[0] - c.red()) + abs(edge[1] - c.green()) + abs(edge[2] - c.blue()) < 90
    assert inside == (250, 250, 250)


def test_bad_images_and_missing_model_are_messages(qtbot, tmp_path):
    v = LocateView()
    qtbot.addWidget(v)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with qtbot.waitSignal(v.message_for_user) as sig:
        assert not v.open_image(bad)
    assert "broken.png" in sig.args[0]
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    v.open_image(tmp_path / "ok.png")
    v.query.setText("cats")
    with qtbot.waitSignal(v.message_for_user) as sig:
        v.locate()
    assert "No model" in sig.args[0]


def test_exif_rotation_is_applied(qtbot, tmp_path):
    img = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    v = LocateView()
    qtbot.addWidget(v)
    assert v.open_image(tmp_path / "rot.jpg")
    assert v.image_size == (20, 40)


def test_locate_runs_the_engine_with_the_image(view, qtbot, engine):
    """The real tiny model (vision tower included) gets the image; its answer is parsed and drawn,
    or, when it is not something the parser takes, reported; the view never hangs."""
    view.set_backend(engine)
    view.max_tokens = 24
    view.query.setText("thing")
    ids, _ = engine.encode(view.request("thing"))
    pad = engine.model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(pad) > 0  # the image's tokens are part of the prompt
    outcomes: list[object] = []
    view.located.connect(outcomes.append)
    view.message_for_user.connect(outcomes.append)
    view.locate_button.click()
    assert not view.locate_button.isEnabled()  # running on a worker
    qtbot.waitUntil(lambda: bool(outcomes), timeout=60000)
    assert view.locate_button.isEnabled() and not view.stop_button.isEnabled()
    # parse_response never raises on model text, so the run ends with a count, not a message.
    expected = len(parse_response(view.raw_output, *view.image_size))
    assert outcomes[0] == expected == len(_items(view))
