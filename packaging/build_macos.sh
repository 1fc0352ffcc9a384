#!/usr/bin/env bash
# Build Locus.app and Locus.dmg on an Apple Silicon Mac:  bash packaging/build_macos.sh
# Optional: CODESIGN_IDENTITY="Developer ID Application: ..." signs the app (hardened runtime);
# NOTARY_PROFILE=<notarytool keychain profile> then notarizes and staples the DMG.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(uname -s)/$(uname -m)" != "Darwin/arm64" ]]; then
  echo "build_macos.sh: Locus.app is built on an Apple Silicon Mac (this is $(uname -s)/$(uname -m))" >&2
  exit 2
fi
python3 -m venv .venv-build
.venv-build/bin/pip install -q -e . pyinstaller
.venv-build/bin/pyinstaller --noconfirm --clean --distpath dist --workpath build packaging/locus.spec
APP=dist/Locus.app
# The frozen app must start and answer --help before it is packaged.
"$APP/Contents/MacOS/Locus" --help >/dev/null
if [[ -n "${CODESIGN_IDENTITY:-}" ]]; then
  codesign --force --deep --options runtime --timestamp --sign "$CODESIGN_IDENTITY" "$APP"
  codesign --verify --deep --strict "$APP"
fi
rm -f dist/Locus.dmg
hdiutil create -volname Locus -srcfolder "$APP" -ov -format UDZO dist/Locus.dmg
if [[ -n "${CODESIGN_IDENTITY:-}" && -n "${NOTARY_PROFILE:-}" ]]; then
  xcrun notarytool submit dist/Locus.dmg --keychain-profile "$NOTARY_PROFILE" --wait
  xcrun stapler staple dist/Locus.dmg
fi
echo "built $APP and dist/Locus.dmg"
