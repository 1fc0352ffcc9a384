#!/usr/bin/env bash
# Build, check, sign and notarize Locus.app and Locus.dmg on an Apple Silicon Mac.
#   CODESIGN_IDENTITY="Developer ID Application: Name (TEAMID)" NOTARY_PROFILE=locus-notary \
#     bash packaging/build_macos.sh [--unsigned] [--doctor-may-fail] [WORKDIR]
# NOTARY_PROFILE: a `xcrun notarytool store-credentials` profile; without it the DMG is signed but
# not notarized. --unsigned: no identity, no notarization (CI and local tests only).
# --doctor-may-fail: report `doctor` failures without stopping (CI runners have no usable GPU).
# Everything goes to WORKDIR (default: a new temp dir); the checkout is not written to.
set -euo pipefail
if [[ "$(uname -s)/$(uname -m)" != "Darwin/arm64" ]]; then
  echo "build_macos.sh: Locus.app is built on an Apple Silicon Mac (this is $(uname -s)/$(uname -m))" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
UNSIGNED="" DOCTOR_MAY_FAIL=""
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --unsigned) UNSIGNED=1 ;;
    --doctor-may-fail) DOCTOR_MAY_FAIL=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
IDENTITY="${CODESIGN_IDENTITY:-}"
if [[ -z "$IDENTITY" && -z "$UNSIGNED" ]]; then
  echo "build_macos.sh: set CODESIGN_IDENTITY to a 'Developer ID Application' identity" \
       "(see \`security find-identity -v -p codesigning\`), or pass --unsigned" >&2
  exit 2
fi
[[ -n "$UNSIGNED" ]] && IDENTITY=""
WORK="${1:-$(mktemp -d -t locus-macos)}"
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
echo "build dir: $WORK"

rm -rf "$WORK/src" && mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -co --exclude-standard -z \
  | while IFS= read -r -d '' f; do [[ -f "$f" ]] && printf '%s\0' "$f"; done \
  | xargs -0 tar -cf -) | tar -xf - -C "$WORK/src"

python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q "$WORK/src" "pyinstaller>=6.10"
# pip installs the build Mac's newest MLX wheel (macosx_15/26); LSMinimumSystemVersion is 14.0,
# so swap in the macosx_14_0_arm64 wheels of the same version.
MLX_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("mlx"))')"
PYV="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
rm -rf "$WORK/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform macosx_14_0_arm64 \
  --python-version "$PYV" --implementation cp -d "$WORK/wheels" \
  "mlx==$MLX_VERSION" "mlx-metal==$MLX_VERSION"
ls "$WORK/wheels"
for w in "$WORK"/wheels/*.whl; do
  [[ "$w" == *macosx_14_0_arm64* ]] || { echo "not a macOS 14 wheel: $w" >&2; exit 1; }
done
"$PY" -m pip install -q --no-deps --force-reinstall "$WORK"/wheels/*.whl

# Version, build number and icon go into Info.plist through the spec.
export LOCUS_VERSION="$("$PY" -c 'import app; print(app.__version__)')"
export LOCUS_BUILD_NUMBER="$(git -C "$ROOT" rev-list --count HEAD 2>/dev/null || date +%Y%m%d%H%M)"
export LOCUS_ICON="$WORK/Locus.icns"
"$PY" "$WORK/src/packaging/make_icns.py" "$LOCUS_ICON"
export CODESIGN_IDENTITY="$IDENTITY"
export LOCUS_ENTITLEMENTS="$WORK/src/packaging/entitlements.plist"
t0=$SECONDS
(cd "$WORK" && "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$WORK/dist" --workpath "$WORK/build" "$WORK/src/packaging/locus.spec")
APP="$WORK/dist/Locus.app"
echo "freeze: $((SECONDS - t0)) s, $(du -sm "$APP" | cut -f1) MB"

# Every Mach-O file must load on LSMinimumSystemVersion.
"$PY" "$WORK/src/packaging/macho_min_version.py" "$APP"
# One libmlx.dylib, with the mlx.metallib MLX looks for beside it.
LIBS="$(find "$APP" -name libmlx.dylib -not -type l)"
[[ "$(printf '%s\n' "$LIBS" | grep -c .)" == 1 ]] || { echo "expected one libmlx.dylib:" >&2; echo "$LIBS" >&2; exit 1; }
[[ -f "$(dirname "$LIBS")/mlx.metallib" ]] || { echo "no mlx.metallib beside $LIBS" >&2; exit 1; }

if [[ -n "$IDENTITY" ]]; then
  # PyInstaller signed each binary and the bundle (hardened runtime); verify, never --deep sign.
  codesign --verify --deep --strict --verbose=2 "$APP"
  codesign -d --entitlements - "$APP" >/dev/null
fi

# The signed app must run: doctor inside it (Metal, metallib, matmul, demo tokens, ...).
if ! "$APP/Contents/MacOS/Locus" doctor; then
  [[ -n "$DOCTOR_MAY_FAIL" ]] || { echo "doctor failed inside the app" >&2; exit 1; }
  echo "doctor reported failures (allowed: --doctor-may-fail)" >&2
fi
"$APP/Contents/MacOS/Locus" generate --demo --prompt hi --max-tokens 4 --temperature 0

# DMG from a staging folder: the app and a link to /Applications to drag it onto.
STAGE="$WORK/dmg"
rm -rf "$STAGE" && mkdir -p "$STAGE"
ditto "$APP" "$STAGE/Locus.app"
ln -s /Applications "$STAGE/Applications"
DMG="$WORK/Locus-$LOCUS_VERSION.dmg"
rm -f "$DMG"
hdiutil create -volname Locus -srcfolder "$STAGE" -ov -format UDZO "$DMG"

if [[ -n "$IDENTITY" ]]; then
  codesign --force --sign "$IDENTITY" --timestamp "$DMG"
  if [[ -n "${NOTARY_PROFILE:-}" ]]; then
    xcrun notarytool submit "$DMG" --keychain-profile "$NOTARY_PROFILE" --wait \
      --output-format json >"$WORK/notary.json" || true
    cat "$WORK/notary.json"
    STATUS="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("status", ""))' "$WORK/notary.json" || true)"
    if [[ "$STATUS" != "Accepted" ]]; then
      ID="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("id", ""))' "$WORK/notary.json" || true)"
      [[ -n "$ID" ]] && xcrun notarytool log "$ID" --keychain-profile "$NOTARY_PROFILE" >&2
      echo "notarization failed: $STATUS" >&2
      exit 1
    fi
    xcrun stapler staple "$DMG"
    xcrun stapler validate "$DMG"
    spctl -a -t install -vv "$DMG"
  else
    echo "warning: NOTARY_PROFILE not set: the DMG is signed but not notarized" >&2
  fi
fi
echo "built $APP and $DMG"
