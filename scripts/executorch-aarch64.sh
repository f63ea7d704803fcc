#!/usr/bin/env bash
# Runs canvit-runtime's ExecuTorch runner (executorch-numpy-runtime: ExecuTorch's C++ core + XNNPACK, aarch64 wheel)
# under qemu-aarch64-static on an x86-64 Linux host, in an aarch64 Python built from Debian packages:
#   scripts/executorch-aarch64.sh CACHE [PYTHON-ARGS...]
# e.g. scripts/executorch-aarch64.sh ~/.cache/canvit-export/aarch64 -m canvit_runtime.cli run ...
# 1. CACHE/sysroot: Debian's arm64 python3.MM-minimal + libpython3.MM-stdlib + libstdc++6 and their Depends (apt's
#    own resolution, in a private apt configuration under CACHE/apt: the host's apt state and sources are untouched,
#    nothing is installed), unpacked with dpkg-deb -x. Suite DEBIAN_SUITE (default trixie: Python 3.13, the oldest
#    Debian with Python >= 3.12, which executorch-numpy-runtime needs), mirror DEBIAN_MIRROR (default
#    http://deb.debian.org/debian), checked against DEBIAN_KEYRING (default Debian's archive keyring).
# 2. CACHE/site: the aarch64 wheels of canvit-runtime's dependencies and executorch-numpy-runtime, at the versions of
#    PYTHON's (default .venv/bin/python) own, so the emulated run differs from the host's by the CPU kernels only
#    (pip download --platform manylinux_2_28/2_17_aarch64; unpacked, nothing installed). canvit_runtime itself comes
#    from this checkout (runtimes/ on PYTHONPATH).
# 3. CACHE/run-python: the aarch64 python under qemu (QEMU_CPU default neoverse-n1: Armv8.2 with fp16 arithmetic, no
#    SVE, the boards' class; see scripts/build-cpp-aarch64.sh), the sysroot's glibc first on LD_LIBRARY_PATH (the
#    loader must load its own libc, not the host's multiarch one: see scripts/build-cpp-aarch64.sh step 4).
# Each step runs once (a stamp file names what it built); a change of suite or versions rebuilds it. With PYTHON-ARGS,
# runs them under CACHE/run-python; without, prints the emulated interpreter's version.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "error: usage: scripts/executorch-aarch64.sh CACHE [PYTHON-ARGS...]" >&2; exit 2; }
CACHE="$(realpath -m "$1")"
shift
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SUITE="${DEBIAN_SUITE:-trixie}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING="${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
PYMM="${GUEST_PYTHON:-3.13}"  # trixie's python3 (the suite's python3.MM-minimal)
DEFAULT_QEMU_CPU=neoverse-n1
SYSROOT="$CACHE/sysroot"
SITE="$CACHE/site"
LIBDIR=/usr/lib/aarch64-linux-gnu  # the sysroot's glibc folder, as the guest sees it (qemu -L maps it to SYSROOT)

need=""
command -v qemu-aarch64-static >/dev/null 2>&1 || need="$need qemu-user-static"
command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || need="$need apt dpkg (a Debian/Ubuntu host)"
[ -e "$KEYRING" ] || need="$need debian-archive-keyring"
[ -z "$need" ] || { echo "error: the emulated ExecuTorch run needs:$need; as root: apt-get install$need" >&2; exit 2; }
[ -x "$PYTHON" ] || { echo "error: no host python at $PYTHON; set PYTHON to the venv's python" >&2; exit 2; }

# 1. the Debian sysroot
PKGS="python$PYMM-minimal libpython$PYMM-stdlib libstdc++6"
STAMP="$SYSROOT/.built-$SUITE-python$PYMM"
if [ ! -e "$STAMP" ]; then
    APT="$CACHE/apt"
    rm -rf "$SYSROOT" "$APT"
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/parts" "$APT/debs" "$SYSROOT"
    : > "$APT/status"
    echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main" > "$APT/sources.list"
    cat > "$APT/apt.conf" <<EOF
Dir::State::Lists "$APT/lists";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache";
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/parts";
Dir::Etc::Preferences "$APT/parts/none";
Dir::Etc::PreferencesParts "$APT/parts";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
EOF
    export APT_CONFIG="$APT/apt.conf"
    echo "fetching the arm64 package index: $MIRROR $SUITE main"
    apt-get update -qq
    # Depends and Pre-Depends, recursively (virtual packages, in <>, are provided by a listed one)
    debs="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
            --no-enhances $PKGS | grep -v '^[ <]' | sort -u)"
    echo "fetching $(echo $debs | wc -w) arm64 packages ($SUITE):" $debs
    (cd "$APT/debs" && apt-get download -qq $debs)
    for deb in "$APT"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
    # merged /usr (base-files makes these links on a real system): PT_INTERP is /lib/ld-linux-aarch64.so.1
    for dir in lib bin sbin; do [ -e "$SYSROOT/$dir" ] || ln -s "usr/$dir" "$SYSROOT/$dir"; done
    rm -rf "$APT"  # the index and the .debs (~25 MB): the stamp keeps the sysroot
    touch "$STAMP"
fi
[ -x "$SYSROOT/usr/bin/python$PYMM" ] || { echo "error: $SYSROOT has no python$PYMM; delete it and rerun" >&2; exit 1; }

# 2. the aarch64 wheels, at the host venv's versions
PINS="$("$PYTHON" - <<'EOF'
import importlib.metadata as m
names = ["numpy", "pillow", "pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection",
         "click", "executorch-numpy-runtime"]
print(" ".join(f"{n}=={m.version(n)}" for n in names))
EOF
)" || { echo "error: $PYTHON lacks canvit-runtime's dependencies or executorch-numpy-runtime; pip install -e 'runtimes[executorch]'" >&2; exit 2; }
WSTAMP="$SITE/.built-$(echo "$PINS $PYMM" | sha256sum | cut -c1-16)"
if [ ! -e "$WSTAMP" ]; then
    rm -rf "$SITE" "$CACHE/wheels"
    mkdir -p "$SITE" "$CACHE/wheels"
    echo "fetching aarch64 cp${PYMM/./} wheels: $PINS"
    # --isolated: the host's pip configuration (extra indexes, constraints for x86 builds) does not apply here
    "$PYTHON" -m pip download --isolated --quiet --no-cache-dir --no-deps --only-binary=:all: --implementation cp \
        --python-version "$PYMM" --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 -d "$CACHE/wheels" $PINS
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$SITE" "$CACHE"/wheels/*.whl
    rm -rf "$CACHE/wheels"
    touch "$WSTAMP"
fi

# 3. the emulated interpreter
cat > "$CACHE/run-python" <<EOF
#!/bin/sh
# Debian $SUITE's aarch64 python$PYMM under qemu-aarch64-static (written by scripts/executorch-aarch64.sh), with the
# aarch64 wheels in $SITE and this checkout's canvit_runtime. The sysroot's glibc first: the loader's own libc.
export QEMU_CPU="\${QEMU_CPU:-$DEFAULT_QEMU_CPU}"
export LD_LIBRARY_PATH="$LIBDIR"
export PYTHONPATH="$SITE:$ROOT/runtimes\${PYTHONPATH:+:\$PYTHONPATH}"
export PYTHONNOUSERSITE=1
exec qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYMM" "\$@"
EOF
chmod +x "$CACHE/run-python"
# the guest's libc.so.6 must be the sysroot's (the loader's own)
libc="$(QEMU_SET_ENV=LD_TRACE_LOADED_OBJECTS=1 "$CACHE/run-python" | awk '$1 == "libc.so.6" {print $3}')"
[ "$libc" = "$LIBDIR/libc.so.6" ] || {
    echo "error: under run-python libc.so.6 resolves to '$libc', not the sysroot's $LIBDIR/libc.so.6" >&2; exit 1; }
if [ $# -eq 0 ]; then
    exec "$CACHE/run-python" -c 'import platform, sys; print(f"python {platform.python_version()} on {platform.machine()}")'
fi
exec "$CACHE/run-python" "$@"
