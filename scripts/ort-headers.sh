#!/usr/bin/env bash
# Puts ONNX Runtime's C API headers under .cache/onnxruntime-headers/include (idempotent), for
# the custom-op library that packages/runtime/cpp/CMakeLists.txt builds into the vpp-runtime wheel. The headers
# are taken from Debian's libonnxruntime-dev package (a .deb is an ar archive; nothing is
# installed, and no ORT library is linked: the ops use the C API that ORT hands them). PyPI's
# onnxruntime wheels ship no headers. Version 1.21's C API works with any ORT >= 1.21, and the
# headers are the same on every architecture (the amd64 package serves aarch64 builds too).
# Elsewhere: pass -DVPP_ORT_INCLUDE_DIR=<an ORT release's include/> or set VPP_ORT_INCLUDE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.21.0+dfsg-1
URL="http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_${VERSION}_amd64.deb"
SHA256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
dest=.cache/onnxruntime-headers
if [[ -f $dest/include/onnxruntime_c_api.h && "$(cat $dest/VERSION 2>/dev/null)" == "$VERSION" ]]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/dev.deb" "$URL"
echo "$SHA256  $work/dev.deb" | sha256sum -c --quiet -
(cd "$work" && ar x dev.deb && mkdir data && tar -xf data.tar.* -C data ./usr/include/onnxruntime)
rm -rf "$dest"
mkdir -p "$dest"
mv "$work/data/usr/include/onnxruntime" "$dest/include"
echo "$VERSION" > "$dest/VERSION"
echo "ONNX Runtime C API headers $VERSION in $dest/include"
