"""Compile checks of the C++ demo's GPU code where no GPU is: cpp_demo/src/backend_tensorrt.cpp compiled with
`-fsyntax-only -Wall -Wextra -Werror` against the real TensorRT 10.3 (JetPack 6) and 11.1 headers of
../shared/third_party with CUDA 12.6 (PyPI nvidia-cuda-runtime-cu12 + nvidia-cuda-nvcc-cu12) and 13.0 (an installed
toolkit) runtime headers; and the ONNX Runtime backend built from the PyPI wheel's library as it ships
(libonnxruntime.so.1.x.y, no soname link) with ONNXRUNTIME_INCLUDE_DIR + ONNXRUNTIME_LIBRARY (issue 17)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = Path(os.environ.get("CANVIT_THIRD_PARTY", ROOT.parent / "shared/third_party"))
CUDA12_CACHE = Path(os.environ.get("CANVIT_CUDA12_HEADERS", Path.home() / ".cache/canvit-export/cuda-12.6"))
CUDA12_WHEELS = ["nvidia-cuda-runtime-cu12==12.6.*", "nvidia-cuda-nvcc-cu12==12.6.*"]
TENSORRT = {"10.3": (10, 3), "11.1": (11, 1)}
CUDA = {"12.6": 12060, "13.0": 13000}
# An API TensorRT 10 removed (IExecutionContext::enqueueV2): compiling it must fail against either header set.
BROKEN = "#include <NvInfer.h>\nvoid f(nvinfer1::IExecutionContext& c) { c.enqueueV2(nullptr, nullptr, nullptr); }\n"


def compiler() -> str:
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler (apt-get install g++)")
    return gxx


def cuda12_include() -> list[Path]:
    """CUDA 12.6 runtime headers: the nvidia-cuda-runtime-cu12 wheel's include/ and nvidia-cuda-nvcc-cu12's (crt/),
    pip-installed once into CUDA12_CACHE (~/.cache/canvit-export/cuda-12.6); skips naming pip's error when PyPI
    cannot be reached."""
    folders = [CUDA12_CACHE / "nvidia/cuda_runtime/include", CUDA12_CACHE / "nvidia/cuda_nvcc/include"]
    if not (folders[0] / "cuda_runtime_api.h").exists() or not (folders[1] / "crt").is_dir():
        partial = CUDA12_CACHE.with_name(CUDA12_CACHE.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial),
                                 *CUDA12_WHEELS], capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            error = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"pip install {' '.join(CUDA12_WHEELS)} failed (PyPI unreachable?): {error}")
        shutil.rmtree(CUDA12_CACHE, ignore_errors=True)
        partial.rename(CUDA12_CACHE)
    return folders


def cuda13_include() -> list[Path]:
    """An installed CUDA 13 toolkit's include folder (/usr/local/cuda*/include, $CUDA_HOME/include)."""
    candidates = sorted(Path("/usr/local").glob("cuda*/include"))
    if home := os.environ.get("CUDA_HOME"):
        candidates.insert(0, Path(home) / "include")
    for include in candidates:
        header = include / "cuda_runtime_api.h"
        if header.exists() and re.search(r"#define CUDART_VERSION\s+13\d\d\d", header.read_text(errors="replace")):
            return [include]
    pytest.skip(f"no CUDA 13 toolkit here (no cuda_runtime_api.h with CUDART_VERSION 13xxx in {[str(c) for c in candidates]})")


def include_set(tensorrt: str, cuda: str) -> list[str]:
    trt = THIRD_PARTY / f"tensorrt-{tensorrt}/include"
    if not (trt / "NvInfer.h").exists():
        pytest.skip(f"{trt} is missing (../shared/third_party: see its README)")
    if not Path("/usr/include/nlohmann/json.hpp").exists():
        pytest.skip("nlohmann/json.hpp is missing (apt-get install nlohmann-json3-dev)")
    cuda_folders = cuda12_include() if cuda == "12.6" else cuda13_include()
    flags = []
    for folder in [trt, *cuda_folders]:  # SYSTEM, as CMakeLists.txt adds them: the vendors' warnings are not ours
        flags += ["-isystem", str(folder)]
    return flags


def syntax_only(gxx: str, flags: list[str], source: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *flags, *extra, str(source)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("cuda", list(CUDA))
@pytest.mark.parametrize("tensorrt", list(TENSORRT))
def test_tensorrt_backend_compiles(tensorrt, cuda, tmp_path) -> None:
    """backend_tensorrt.cpp has no error and no warning against TensorRT `tensorrt` x CUDA `cuda` headers; those
    are the headers used (their exact versions, static_assert-ed), and they reject an API TensorRT 10 removed."""
    gxx = compiler()
    flags = include_set(tensorrt, cuda)
    major, minor = TENSORRT[tensorrt]
    probe = tmp_path / "versions.cpp"
    probe.write_text("#include <NvInfer.h>\n#include <cuda_runtime_api.h>\n"
                     f"static_assert(NV_TENSORRT_MAJOR == {major} && NV_TENSORRT_MINOR == {minor}, \"TensorRT\");\n"
                     f"static_assert(CUDART_VERSION == {CUDA[cuda]}, \"CUDA runtime\");\n")
    result = syntax_only(gxx, flags, probe)
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "broken.cpp").write_text(BROKEN)
    broken = syntax_only(gxx, flags, tmp_path / "broken.cpp")
    assert broken.returncode != 0 and "enqueueV2" in broken.stderr, broken.stderr[-3000:]
    result = syntax_only(gxx, flags, ROOT / "cpp_demo/src/backend_tensorrt.cpp", "-DCANVIT_WITH_TENSORRT",
                         "-I", str(ROOT / "cpp_demo/include"), "-I", str(ROOT / "cpp_demo/src"))
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stderr == "", result.stderr[-5000:]


def test_onnxruntime_wheel_library_as_shipped(tmp_path) -> None:
    """CMake with ONNXRUNTIME_INCLUDE_DIR (the vendored headers) + ONNXRUNTIME_LIBRARY (the venv wheel's
    libonnxruntime.so.1.x.y, as it ships) and -Werror: the soname link is made in the build folder, the headers are
    SYSTEM includes, canvit_demo runs with the onnxruntime backend and canvit_tests' discovery (which runs the binary)
    and tests pass. ONNXRUNTIME_ROOT=<the wheel's capi folder> finds the same library."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    headers = THIRD_PARTY / "onnxruntime/include"
    try:
        import onnxruntime
        import openvino
    except ImportError as e:
        pytest.skip(f"{e.name} is not installed in this venv")
    capi = Path(onnxruntime.__file__).parent / "capi"
    libraries = sorted(capi.glob("libonnxruntime.so.1.*"))
    if not (headers / "onnxruntime_cxx_api.h").exists() or not libraries:
        pytest.skip(f"no ONNX Runtime headers in {headers} or no libonnxruntime.so.1.* in {capi}")
    if (capi / "libonnxruntime.so.1").exists():
        pytest.skip(f"{capi} has libonnxruntime.so.1: this wheel is not the case under test")
    base = ["cmake", "-S", str(ROOT / "cpp_demo"), f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}",
            "-DCANVIT_WERROR=ON", f"-DONNXRUNTIME_INCLUDE_DIR={headers}"]

    def ok(command: list[str]) -> str:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    root = ok([*base, "-B", str(tmp_path / "root"), f"-DONNXRUNTIME_ROOT={capi}", "-DCANVIT_BUILD_TESTS=OFF"])
    assert "ONNXRUNTIME yes" in root and f"ONNX Runtime {libraries[-1]} through the soname link" in root, root

    build = tmp_path / "build"
    configured = ok([*base, "-B", str(build), f"-DONNXRUNTIME_LIBRARY={libraries[-1]}"])
    assert "ONNXRUNTIME yes" in configured, configured
    assert (build / "onnxruntime-lib/libonnxruntime.so.1").resolve() == libraries[-1].resolve()
    flags = (build / "CMakeFiles/canvit.dir/flags.make").read_text()
    assert f"-isystem {headers}" in flags and "-Werror" in flags, flags
    ok(["cmake", "--build", str(build), "-j2"])
    version = ok([str(build / "canvit_demo"), "--version"])
    assert "onnxruntime" in version.split("backends:")[1].split(), version
    if (build / "canvit_tests").exists():
        ok(["ctest", "--test-dir", str(build), "--output-on-failure"])


@pytest.mark.parametrize("tensorrt", list(TENSORRT))
def test_cmake_compiles_tensorrt_backend_warning_free(tensorrt, tmp_path) -> None:
    """CMake with -Werror compiles backend_tensorrt.cpp against the TensorRT `tensorrt` headers and an installed CUDA
    toolkit: the vendor include folders are SYSTEM includes (with plain -I these headers give 25-31 warnings under
    -Wall -Wextra). TensorRT's libraries are stubs (empty shared objects): only the object file is built."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is missing")
    gxx = compiler()
    cuda = cuda13_include()[0].parent
    headers = THIRD_PARTY / f"tensorrt-{tensorrt}/include"
    if not (headers / "NvInfer.h").exists():
        pytest.skip(f"{headers} is missing (../shared/third_party: see its README)")
    try:
        import openvino
    except ImportError:
        pytest.skip("openvino is not installed in this venv")
    stub = tmp_path / "tensorrt"
    (stub / "lib").mkdir(parents=True)
    (stub / "include").symlink_to(headers)
    (tmp_path / "stub.cpp").write_text("void canvit_tensorrt_stub() {}\n")
    for name in ("nvinfer", "nvonnxparser"):
        subprocess.run([gxx, "-shared", "-fPIC", "-o", str(stub / f"lib/lib{name}.so"), str(tmp_path / "stub.cpp")], check=True)
    build = tmp_path / "build"
    commands = [["cmake", "-G", "Unix Makefiles", "-S", str(ROOT / "cpp_demo"), "-B", str(build), "-DCANVIT_WERROR=ON",
                 f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}", "-DCANVIT_WITH_TENSORRT=ON",
                 f"-DTENSORRT_ROOT={stub}", f"-DCUDAToolkit_ROOT={cuda}", "-DCANVIT_BUILD_TESTS=OFF"],
                ["cmake", "--build", str(build), "--target", "src/backend_tensorrt.cpp.o"]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "TENSORRT yes" in subprocess.run(commands[0], capture_output=True, text=True, check=True).stdout
    flags = (build / "CMakeFiles/canvit.dir/flags.make").read_text()
    assert f"-isystem {stub / 'include'}" in flags, flags
    assert any(f"-isystem {folder}" in flags for folder in (cuda / "include", (cuda / "include").resolve())), flags
    assert (build / "CMakeFiles/canvit.dir/src/backend_tensorrt.cpp.o").stat().st_size > 0
