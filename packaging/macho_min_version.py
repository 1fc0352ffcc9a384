"""Fail when any Mach-O file in an app bundle needs a newer macOS than the app promises.

    python packaging/macho_min_version.py dist/Locus.app [--max 14.0]

Reads each Mach-O header itself (thin or universal, LC_BUILD_VERSION or LC_VERSION_MIN_MACOSX);
without --max it uses LSMinimumSystemVersion from the bundle's Info.plist. Pip picks the build
Mac's newest MLX wheel unless told otherwise, and a dylib built for macOS 15 does not load on 14.
"""

from __future__ import annotations

import plistlib
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

MH_MAGIC_64, MH_MAGIC = 0xFEEDFACF, 0xFEEDFACE
FAT_MAGIC, FAT_MAGIC_64 = 0xCAFEBABE, 0xCAFEBABF
LC_VERSION_MIN_MACOSX = 0x24
LC_BUILD_VERSION = 0x32
PLATFORM_MACOS = 1

Version = tuple[int, int, int]


def _decode(v: int) -> Version:
    """X.Y.Z packed as xxxx.yy.zz nibbles."""
    return (v >> 16, (v >> 8) & 0xFF, v & 0xFF)


def _thin(data: bytes, off: int) -> Version | None:
    """The minimum macOS of one thin Mach-O image starting at `off` (None if it states none)."""
    for endian in ("<", ">"):
        (magic,) = struct.unpack_from(endian + "I", data, off)
        if magic in (MH_MAGIC_64, MH_MAGIC):
            break
    else:
        return None
    header = 32 if magic == MH_MAGIC_64 else 28
    _, _, _, _, ncmds, _, _ = struct.unpack_from(endian + "7I", data, off)
    pos = off + header
    found: Version | None = None
    for _ in range(ncmds):
        cmd, size = struct.unpack_from(endian + "2I", data, pos)
        if cmd == LC_BUILD_VERSION:
            platform, minos = struct.unpack_from(endian + "2I", data, pos + 8)
            if platform == PLATFORM_MACOS:
                found = _decode(minos)
        elif cmd == LC_VERSION_MIN_MACOSX:
            (version,) = struct.unpack_from(endian + "I", data, pos + 8)
            found = _decode(version)
        if size < 8:  # a corrupt command: stop rather than loop forever
            break
        pos += size
    return found


def min_macos(data: bytes) -> Version | None:
    """The highest minimum macOS among the images of a Mach-O file; None if not Mach-O."""
    if len(data) < 8:
        return None
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic in (FAT_MAGIC, FAT_MAGIC_64):  # universal: big-endian arch table
        (n,) = struct.unpack_from(">I", data, 4)
        versions = []
        for i in range(n):
            if magic == FAT_MAGIC:
                _, _, offset, _, _ = struct.unpack_from(">5I", data, 8 + i * 20)
            else:
                _, _, offset, _, _, _ = struct.unpack_from(">2I2QII", data, 8 + i * 32)
            v = _thin(data, offset)
            if v:
                versions.append(v)
        return max(versions) if versions else None
    return _thin(data, 0)


def is_macho(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if len(head) < 4:
        return False
    return struct.unpack(">I", head)[0] in (FAT_MAGIC, FAT_MAGIC_64) or struct.unpack("<I", head)[0] in (
        MH_MAGIC_64,
        MH_MAGIC,
    )


def scan(root: Path) -> Iterator[tuple[Path, Version]]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and is_macho(p):
            v = min_macos(p.read_bytes())
            if v is not None:
                yield p, v


def parse(v: str) -> Version:
    parts = [int(x) for x in v.split(".")] + [0, 0]
    return (parts[0], parts[1], parts[2])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    root = Path(argv[0])
    if "--max" in argv:
        limit = parse(argv[argv.index("--max") + 1])
    else:
        plist = plistlib.loads((root / "Contents" / "Info.plist").read_bytes())
        limit = parse(plist["LSMinimumSystemVersion"])
    bad, n = [], 0
    for path, v in scan(root):
        n += 1
        if v > limit:
            bad.append(f"  {path.relative_to(root)} needs macOS {'.'.join(map(str, v))}")
    want = ".".join(map(str, limit))
    if bad:
        print(f"{len(bad)} of {n} Mach-O files need a macOS newer than {want}:", file=sys.stderr)
        print("\n".join(bad), file=sys.stderr)
        return 1
    print(f"all {n} Mach-O files load on macOS {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
