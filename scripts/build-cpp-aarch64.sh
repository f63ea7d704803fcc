#!/usr/bin/env bash
# Cross-builds the C++ demo for 64-bit ARM Linux (aarch64) on an x86-64 Debian/Ubuntu host:
#   scripts/build-cpp-aarch64.sh [BUILD_DIR]      (default build/aarch64)
# 1. Debian packages (installed when missing, as root; otherwise the apt command is printed and the script stops):
#    g++-aarch64-linux-gnu and qemu-user-static; with `dpkg --add-architecture arm64`, libssl-dev:arm64 (SHA-256) and
#    libgtest-dev:arm64 (canvit_tests); nlohmann-json3-dev, libstb-dev, libvalijson-dev are header-only (any arch).
# 2. OpenVINO for aarch64: the PyPI wheel of the same version as .venv's x86 one (pip download, --platform
#    manylinux_2_35_aarch64, nothing installed), unpacked in BUILD_DIR/openvino-aarch64: its openvino/cmake and
#    openvino/libs (libopenvino.so.*, libopenvino_arm_cpu_plugin.so, libtbb.so.12, ...) are what the board needs.
# 3. CMake with cpp_demo/cmake/aarch64-linux-gnu.cmake: canvit_demo, canvit_tests, canvit_openvino_precisions, with
#    the OpenVINO backend only (ONNX Runtime, TensorRT and OpenCV off: `canvit_demo --version` lists the backends).
# 4. BUILD_DIR/run-aarch64: runs one of them under qemu-aarch64-static (-L the cross glibc; LD_LIBRARY_PATH that
#    glibc's own folder first, then the wheel's libs: see the comment at step 4), e.g. BUILD_DIR/run-aarch64
#    BUILD_DIR/canvit_tests. It emulates a Neoverse-N1 (Armv8.2 with fp16 arithmetic, no SVE: the class of Jetson
#    Orin's Cortex-A78AE, Graviton2 and the Raspberry Pi 5's Cortex-A76); QEMU_CPU overrides it, e.g. cortex-a53 for a
#    CPU without fp16 arithmetic. qemu's own default, max (SVE/SME), ran a glimpse ~8x slower on an Intel host.
#    The script checks that, under the wrapper, the demo's libc.so.6 is the loader's own.
# Environment: PYTHON (default .venv/bin/python, for pip and the OpenVINO version), OPENVINO_VERSION (default: that
# venv's openvino), JOBS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$(realpath -m "${1:-$ROOT/build/aarch64}")"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${JOBS:-2}"
SYSROOT=/usr/aarch64-linux-gnu
DEFAULT_QEMU_CPU=neoverse-n1  # run-aarch64's and the CMake emulator's CPU model (see step 4)
INTERP=/lib/ld-linux-aarch64.so.1  # PT_INTERP of AArch64 glibc programs (the ABI's loader path; checked in step 4)

# 1. packages
need=""
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need="$need g++-aarch64-linux-gnu"
command -v qemu-aarch64-static >/dev/null 2>&1 || need="$need qemu-user-static"
command -v cmake >/dev/null 2>&1 || need="$need cmake"
command -v file >/dev/null 2>&1 || need="$need file"
# arch-specific libraries, from Debian multiarch (:arm64)
[ -e /usr/lib/aarch64-linux-gnu/libcrypto.so ] || need="$need libssl-dev:arm64"
[ -e /usr/lib/aarch64-linux-gnu/libgtest.a ] || need="$need libgtest-dev:arm64"
for pair in nlohmann/json.hpp:nlohmann-json3-dev stb/stb_image.h:libstb-dev valijson/validator.hpp:libvalijson-dev; do
    [ -e "/usr/include/${pair%%:*}" ] || need="$need ${pair##*:}"
done
if [ -n "$need" ]; then
    install="dpkg --add-architecture arm64 && apt-get update && apt-get install -y --no-install-recommends$need"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing:$need"
        dpkg --add-architecture arm64
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    else
        echo "error: the aarch64 cross build needs:$need; as root: $install" >&2
        exit 2
    fi
fi

# 2. the aarch64 OpenVINO wheel, unpacked
if [ -z "${OPENVINO_VERSION:-}" ]; then
    OPENVINO_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("openvino"))')"
fi
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
OV="$BUILD/openvino-aarch64"
if [ ! -e "$OV/.version-$OPENVINO_VERSION" ]; then
    rm -rf "$OV" "$BUILD/wheel"
    mkdir -p "$BUILD/wheel"
    "$PYTHON" -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: --implementation cp \
        --platform manylinux_2_35_aarch64 --python-version "$PYVER" "openvino==$OPENVINO_VERSION" -d "$BUILD/wheel"
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$(ls "$BUILD"/wheel/openvino-*aarch64*.whl)" "$OV"
    rm -rf "$BUILD/wheel"
    touch "$OV/.version-$OPENVINO_VERSION"
fi
[ -e "$OV/openvino/libs/libopenvino_arm_cpu_plugin.so" ] || { echo "error: $OV has no ARM CPU plugin" >&2; exit 1; }

# 3. configure and build
cmake -S "$ROOT/cpp_demo" -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE="$ROOT/cpp_demo/cmake/aarch64-linux-gnu.cmake" \
    -DCANVIT_AARCH64_SYSROOT="$SYSROOT" -DOpenVINO_DIR="$OV/openvino/cmake" -DCANVIT_WITH_OPENVINO=ON \
    -DCANVIT_WITH_ONNXRUNTIME=OFF -DCANVIT_WITH_TENSORRT=OFF -DCANVIT_WITH_OPENCV=OFF -DCANVIT_WERROR=ON \
    -DCANVIT_QEMU_CPU="${QEMU_CPU:-$DEFAULT_QEMU_CPU}"
# The loader qemu runs: PT_INTERP under -L SYSROOT when it is there (libc6-arm64-cross, which g++-aarch64-linux-gnu
# pulls in), else the host's own (the multiarch libc6:arm64). Its glibc folder goes first on the guest's
# LD_LIBRARY_PATH (step 4); QEMU_SET_ENV does the same for CMake's emulator (gtest_discover_tests).
if [ -e "$SYSROOT$INTERP" ]; then LOADER="$(realpath "$SYSROOT$INTERP")"; else LOADER="$(realpath "$INTERP")"; fi
LIBC_DIR="$(dirname "$LOADER")"
[ -e "$LIBC_DIR/libc.so.6" ] || { echo "error: no libc.so.6 beside the aarch64 loader $LOADER" >&2; exit 1; }
QEMU_SET_ENV="LD_LIBRARY_PATH=$LIBC_DIR:$OV/openvino/libs" cmake --build "$BUILD" -j"$JOBS"

# 4. the emulator wrapper. qemu runs the loader from -L SYSROOT ($LOADER), but that loader finds libc.so.6, libm
# and libgcc_s through /etc/ld.so.cache: with no SYSROOT/etc/ld.so.cache, the host's, which lists the multiarch
# /lib/aarch64-linux-gnu (libc6:arm64, installed with libssl-dev:arm64: another glibc build). A loader and a libc of
# two builds disagree on the layout of glibc's private _rtld_global (Debian 12: 2.36-8 cross, 0x11a0 bytes, vs
# 2.36-9+deb12u14 multiarch, 0x11a8), and pthread_create then loops forever in its stack-cache walk: every program
# that starts a thread (OpenVINO's compile_model) hangs. So the loader's own folder comes first on LD_LIBRARY_PATH:
# loader, libc, libm, libgcc_s and libstdc++ from one build, then the wheel's libs (libcrypto.so.3 still comes from
# the multiarch folder, through the cache: it only uses glibc's public, versioned symbols).
cat > "$BUILD/run-aarch64" <<EOF
#!/bin/sh
# Runs an aarch64 binary of this build under qemu-aarch64-static (written by scripts/build-cpp-aarch64.sh).
# The loader qemu runs, $LOADER, must load its own glibc: its folder comes first (see the script).
# The emulated CPU: the boards' class (Armv8.2, fp16 arithmetic, no SVE) unless QEMU_CPU names another.
export QEMU_CPU="\${QEMU_CPU:-$DEFAULT_QEMU_CPU}"
export LD_LIBRARY_PATH="$LIBC_DIR:$OV/openvino/libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec qemu-aarch64-static -L "$SYSROOT" "\$@"
EOF
chmod +x "$BUILD/run-aarch64"
for binary in canvit_demo canvit_tests canvit_openvino_precisions; do
    [ -e "$BUILD/$binary" ] && file "$BUILD/$binary"
done
file "$BUILD/canvit_demo" | grep -q "interpreter $INTERP," \
    || { echo "error: $BUILD/canvit_demo does not request the loader $INTERP" >&2; exit 1; }
# what the loader resolves under the wrapper (ldd's trace, in the guest): libc.so.6 must be the loader's own
libc="$(QEMU_SET_ENV=LD_TRACE_LOADED_OBJECTS=1 "$BUILD/run-aarch64" "$BUILD/canvit_demo" \
        | awk '$1 == "libc.so.6" {print $3}')"
[ "$libc" = "$LIBC_DIR/libc.so.6" ] || {
    echo "error: under run-aarch64 libc.so.6 resolves to '$libc', not the loader's $LIBC_DIR/libc.so.6" >&2; exit 1; }
"$BUILD/run-aarch64" "$BUILD/canvit_demo" --version
