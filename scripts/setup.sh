#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs both distributions of this repository, editable (idempotent):
# canvit-runtime (runtimes/, the torch-free side a device installs) and canvit-export with its dev, OpenVINO,
# Core ML, Triton and ExecuTorch extras.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        echo python3.12; return
    fi
    for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    echo "error: Python 3.12 not found: install it (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
    exit 2
}

# The C++ demo (cpp_demo/) needs these Debian packages (OpenCV for --video, GoogleTest for its unit tests); install
# them when missing and we may (root, apt-get).
need=""
for pair in nlohmann/json.hpp:nlohmann-json3-dev stb/stb_image.h:libstb-dev openssl/evp.h:libssl-dev \
            valijson/validator.hpp:libvalijson-dev opencv4/opencv2/videoio.hpp:libopencv-dev gtest/gtest.h:libgtest-dev; do
    [ -e "/usr/include/${pair%%:*}" ] || need="$need ${pair##*:}"
done
command -v cmake >/dev/null 2>&1 || need="$need cmake"
command -v c++ >/dev/null 2>&1 || need="$need g++"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    else
        echo "note: the C++ demo needs:$need (apt-get install them); its tests skip until then" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# setuptools' BuildBackendWarning "Editable installation ... folders with the same name as your package" is printed
# once per distribution and says nothing about this layout: the warnings filter reaches pip's build subprocesses.
export PYTHONWARNINGS="ignore:Editable installation"
.venv/bin/python -m pip install --quiet -e "./runtimes[onnxruntime,openvino,signing,executorch]" \
    -e ".[dev,openvino,coreml,triton,executorch]"

# The Triton server for `canvit-export triton`'s tests and scripts/serve_bench.py: nvidia-pytriton's tritonserver
# (2.51, with its Python backend) in its own venv inside .venv (ignored by git), because that Python backend needs
# numpy < 2 while canvit-pytorch needs numpy >= 2.2; canvit-runtime (editable) runs in its Python-backend models.
if [ ! -x .venv/triton/bin/python ]; then
    "$(find_python)" -m venv .venv/triton
fi
.venv/triton/bin/python -m pip install --quiet --upgrade pip
.venv/triton/bin/python -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" -e "./runtimes[onnxruntime,openvino]"
echo "canvit-export is installed in .venv ($(.venv/bin/python --version))"
