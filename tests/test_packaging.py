"""The packaging files are well-formed; the macOS build refuses to run off a Mac."""

import ast
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"


def test_spec_is_python_and_names_the_entry_point():
    spec = (PKG / "locus.spec").read_text()
    tree = ast.parse(spec)  # PyInstaller executes the spec as Python
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "id")}
    assert {"Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"} <= calls
    assert '"packaging" / "entry.py"' in spec
    assert (ROOT / "resources").is_dir()


def test_entry_point_runs_the_cli():
    out = subprocess.run(
        [sys.executable, str(PKG / "entry.py"), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "usage: locus" in out.stdout


@pytest.mark.skipif(platform.system() == "Darwin", reason="would start a real build on a Mac")
def test_macos_build_refuses_other_systems():
    out = subprocess.run(["bash", str(PKG / "build_macos.sh")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Apple Silicon Mac" in out.stderr


@pytest.mark.parametrize("script", ["build_macos.sh", "build_linux_smoke.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(PKG / script)]).returncode == 0


# -- the macOS release checks, exercised on fixture files built here -------------------------------
def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, PKG / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _macho(minos: tuple[int, int, int], *, cmd: str = "build", endian: str = "<") -> bytes:
    """A thin arm64 Mach-O header with one version load command (and an unrelated one first)."""
    import struct

    v = (minos[0] << 16) | (minos[1] << 8) | minos[2]
    other = struct.pack(endian + "2I", 0x19, 16) + b"\0" * 8  # LC_SEGMENT_64 stand-in
    if cmd == "build":  # LC_BUILD_VERSION: platform macOS, minos, sdk, ntools=0
        lc = struct.pack(endian + "6I", 0x32, 24, 1, v, v, 0)
    else:  # LC_VERSION_MIN_MACOSX: version, sdk
        lc = struct.pack(endian + "4I", 0x24, 16, v, v)
    header = struct.pack(endian + "8I", 0xFEEDFACF, 0x0100000C, 0, 6, 2, len(other + lc), 0, 0)
    return header + other + lc


def _fat(*images: bytes) -> bytes:
    import struct

    out = struct.pack(">2I", 0xCAFEBABE, len(images))
    offset = 4096
    body = b""
    for img in images:
        out += struct.pack(">5I", 0x0100000C, 0, offset + len(body), len(img), 12)
        body += img
    return out + b"\0" * (offset - len(out)) + body


def test_macho_reader_finds_minimum_macos():
    m = _load("macho_min_version")
    assert m.min_macos(_macho((14, 0, 0))) == (14, 0, 0)
    assert m.min_macos(_macho((15, 2, 1), cmd="min")) == (15, 2, 1)
    assert m.min_macos(_macho((13, 3, 0), endian=">")) == (13, 3, 0)
    assert m.min_macos(_fat(_macho((11, 0, 0)), _macho((14, 5, 0)))) == (14, 5, 0)
    assert m.min_macos(b"#!/bin/sh\n") is None


def test_bundle_check_fails_on_a_newer_dylib(tmp_path, capsys):
    import plistlib

    m = _load("macho_min_version")
    app = tmp_path / "Locus.app" / "Contents"
    (app / "Frameworks" / "mlx" / "lib").mkdir(parents=True)
    (app / "Info.plist").write_bytes(plistlib.dumps({"LSMinimumSystemVersion": "14.0"}))
    (app / "MacOS").mkdir()
    (app / "MacOS" / "Locus").write_bytes(_macho((14, 0, 0)))
    (app / "Frameworks" / "mlx" / "lib" / "mlx.metallib").write_bytes(b"MTLB")
    lib = app / "Frameworks" / "mlx" / "lib" / "libmlx.dylib"
    lib.write_bytes(_macho((14, 0, 0), cmd="min"))
    assert m.main([str(tmp_path / "Locus.app")]) == 0
    assert "all 2 Mach-O files load on macOS 14.0.0" in capsys.readouterr().out
    lib.write_bytes(_fat(_macho((15, 0, 0))))  # the build Mac's newer MLX wheel
    assert m.main([str(tmp_path / "Locus.app")]) == 1
    assert "libmlx.dylib needs macOS 15.0.0" in capsys.readouterr().err
    assert m.main([str(tmp_path / "Locus.app"), "--max", "15.0"]) == 0


def test_icns_is_rendered_from_the_svg(tmp_path):
    from PIL import Image

    # A subprocess, as build_macos.sh runs it: its QGuiApplication must not outlive it here
    # (the UI tests need a QApplication).
    out = tmp_path / "Locus.icns"
    r = subprocess.run(
        [sys.executable, str(PKG / "make_icns.py"), str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    im = Image.open(out)
    assert im.format == "ICNS" and im.size == (1024, 1024)
    assert im.convert("RGBA").getextrema()[3][1] == 255  # not an empty, transparent picture
