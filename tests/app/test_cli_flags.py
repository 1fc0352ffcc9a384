"""Flags the README and `--help` promise, as the parser takes them (issue 31)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.cli import main


def test_convert_takes_only_the_bits_it_documents(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as e:
        main(["convert", "src", "dst", "--bits", "3"])
    assert e.value.code == 2 and "invalid choice: 3" in capsys.readouterr().err


def test_locate_takes_generates_no_thinking(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The README: "the sampling options of `locus generate` apply" to locate.
    Image.new("RGB", (100, 100), "white").save(tmp_path / "w.png")
    monkeypatch.setattr("sys.stdin", io.StringIO('[{"bbox_2d": [0, 0, 500, 500], "label": "cat"}]'))
    args = ["locate", str(tmp_path / "w.png"), "cats", "--response", "-", "--no-draw", "--no-thinking"]
    assert main(args) == 0
    assert "cat: (0, 0) – (50, 50)" in capsys.readouterr().out
