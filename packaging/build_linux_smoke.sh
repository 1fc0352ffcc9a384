#!/usr/bin/env bash
# Freeze Locus with the same spec on Linux and check the bundle starts: a smoke test of the
# packaging (hidden imports, data files), not a product. Needs ~5 minutes and ~2 GB of disk.
#   bash packaging/build_linux_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-build
.venv-build/bin/pip install -q -e . pyinstaller
# BUNDLE is macOS-only; PyInstaller skips it elsewhere and leaves dist/Locus/.
.venv-build/bin/pyinstaller --noconfirm --clean --distpath dist --workpath build packaging/locus.spec
dist/Locus/Locus --help >/dev/null
LOCUS_CACHE_DIR="$(mktemp -d)" dist/Locus/Locus generate --demo --prompt hi --max-tokens 4 --temperature 0
echo "Linux smoke bundle OK: dist/Locus/"
