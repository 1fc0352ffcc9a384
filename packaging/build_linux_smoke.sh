#!/usr/bin/env bash
# Freeze Locus with packaging/locus.spec on Linux and run the frozen app for real: `doctor`,
# `generate --demo`, `--demo --screenshot` (5 PNGs), `serve --demo` answering /health and
# `locate --demo` on a generated PNG. It checks what the macOS .app shares with this bundle
# (hidden imports, data files, the trim); it is not a product.
#   bash packaging/build_linux_smoke.sh [--python PY] [WORKDIR]
# Default: a fresh venv with a plain `pip install .` plus PyInstaller (pip's cache is reused).
# --python PY: build with PY, which must already have Locus's dependencies and PyInstaller.
# Everything (source copy, venv, build, dist, test home) goes to WORKDIR or a new temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=""
if [[ "${1:-}" == "--python" ]]; then PY="$2"; shift 2; fi
WORK="${1:-$(mktemp -d -t locus-build.XXXXXX)}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
echo "build dir: $WORK"

# A copy of the checkout's files: building writes nothing into the repository.
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -co --exclude-standard -z \
    | while IFS= read -r -d '' f; do [[ -f "$f" ]] && printf '%s\0' "$f"; done \
    | xargs -0 tar -cf -) | tar -xf - -C "$WORK/src"
else
  (cd "$ROOT" && tar --exclude=.git --exclude=.venv --exclude=build --exclude=dist -cf - .) \
    | tar -xf - -C "$WORK/src"
fi

t0=$SECONDS
if [[ -z "$PY" ]]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q "$WORK/src" "pyinstaller>=6.10"
  PY="$WORK/venv/bin/python"
  echo "install: $((SECONDS - t0)) s"
fi
t1=$SECONDS
(cd "$WORK" && "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$WORK/dist" --workpath "$WORK/build" "$WORK/src/packaging/locus.spec")
APP="$WORK/dist/Locus/Locus"
echo "freeze: $((SECONDS - t1)) s"
echo "bundle: $(du -sm "$WORK/dist/Locus" | cut -f1) MB in $(find "$WORK/dist/Locus" -type f | wc -l) files"

# Run the frozen app outside the checkout, with its own home, no display and no network.
export LOCUS_CACHE_DIR="$WORK/home/cache" LOCUS_DATA_DIR="$WORK/home/data"
export HF_HUB_CACHE="$WORK/home/hf" HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen
unset DISPLAY WAYLAND_DISPLAY
cd "$WORK"
step() { echo "== $*"; }

step doctor
"$APP" doctor

step "generate --demo"
out="$("$APP" generate --demo --prompt hi --max-tokens 4 --temperature 0 --no-thinking)"
echo "$out"

step "--demo --screenshot"
"$APP" --demo --screenshot "$WORK/shots"
n="$(find "$WORK/shots" -name '*.png' | wc -l)"
[[ "$n" == 5 ]] || { echo "expected 5 screenshots, got $n" >&2; exit 1; }

step "serve --demo"
port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$APP" serve --demo --port "$port" >"$WORK/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
ok=""
for _ in $(seq 1 240); do
  if "$PY" -c "import sys, urllib.request as u; r = u.urlopen('http://127.0.0.1:$port/health', timeout=2); sys.stdout.write(r.read().decode() + '\n')" 2>/dev/null; then
    ok=1; break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
trap - EXIT
[[ -n "$ok" ]] || { echo "serve did not answer /health:" >&2; cat "$WORK/serve.log" >&2; exit 1; }

step "locate --demo"
img="$(find "$WORK/shots" -name '*.png' | sort | head -n1)"
# The random demo model rarely answers with boxes; the run must still finish and draw the image.
"$APP" locate --demo "$img" "the send button" --json --max-tokens 8 --out "$WORK/located.png"
[[ -s "$WORK/located.png" ]] || { echo "locate wrote no image" >&2; exit 1; }

echo "Linux smoke bundle OK: $WORK/dist/Locus ($(du -sm "$WORK/dist/Locus" | cut -f1) MB)"
