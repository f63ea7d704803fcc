"""cpp_demo on 64-bit ARM (issue 16): cross-built on this x86-64 host by scripts/build-cpp-aarch64.sh (Debian's
g++-aarch64-linux-gnu, multiarch libssl-dev:arm64 + libgtest-dev:arm64, the aarch64 OpenVINO wheel of .venv's
version) with cpp_demo/cmake/aarch64-linux-gnu.cmake, and run under qemu-aarch64-static (qemu-user-static) on
OpenVINO's ARM CPU plugin.

The toolchain file configures and compiles (guards it against rot), the build script makes aarch64 binaries,
canvit_tests passes under emulation, canvit_demo validates an artifact there, a 4-glimpse ViT-S rollout on the ARM
CPU plugin ends on the x86 plugin's canvas, and the runtime-precision census of the ARM-compiled step keeps the
canvas path f32 (f32 hint, fp32 and typed fp16 IRs) while the plugin's default (f16) narrows it. Skipped, naming
what to install, where the cross toolchain, qemu or the arm64 packages are missing.

Emulation runs threads only through the script's run-aarch64, which puts the cross glibc (the loader's own) first on
LD_LIBRARY_PATH: a loader and libc of two glibc builds hang pthread_create (see scripts/build-cpp-aarch64.sh)."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLCHAIN = ROOT / "cpp_demo/cmake/aarch64-linux-gnu.cmake"
SCRIPT = ROOT / "scripts/build-cpp-aarch64.sh"
PACKAGES = "g++-aarch64-linux-gnu qemu-user-static libssl-dev:arm64 libgtest-dev:arm64"
APT = f"dpkg --add-architecture arm64 && apt-get update && apt-get install -y --no-install-recommends {PACKAGES}"
# Canvas rel-L2, ARM CPU plugin (emulated) vs x86 CPU plugin, the same stateful fp32 IR (ViT-S, canvas 16), scene
# .npy and viewpoints file, 4 glimpses, both f32. Measured 1.8e-7 (QEMU_CPU max; 1.8e-7 with cortex-a53, whose
# kernels differ again; max vs a53 1.5e-7): a few f32 unit round-offs (6e-8), from the plugins' other kernels and
# reduction orders (ACL/oneDNN-aarch64 vs oneDNN-x64 JIT). The bound leaves 50x for other hosts' kernel choices
# (AVX2 vs AVX-512 on x86, SVE or not, a real board's ARM plugin) and stays 50x below f16's unit round-off (4.9e-4):
# a canvas path run in f16/bf16, a lost state or a wrong viewpoint is 1e-4 or more and fails it.
ARM_VS_X86_REL_L2 = 1e-5
# Emulation limits. A loader/libc mismatch (see the module docstring) hangs a program instead of failing it: fail then,
# without waiting the suite out, and without a limit that a slower host crosses. A program is stuck when it prints
# nothing for STALL_S (canvit_demo prints a progress line at least every 2 s of a long rollout, once loaded); the
# longest silent phase measured is loading the step, under a few seconds at qemu's neoverse-n1 and ~50 s at qemu's
# max on an Intel host, so 300 s holds on both kinds of machine. EMULATED_CAP_S bounds a program that keeps
# printing: the 4-glimpse rollout took ~25 s at neoverse-n1.
STALL_S = 300
EMULATED_CAP_S = 1800
DEFAULT_QEMU_CPU = "neoverse-n1"  # scripts/build-cpp-aarch64.sh's: Armv8.2 with fp16 arithmetic, no SVE


def missing_packages() -> list[str]:
    need = [p for p, ok in (("g++-aarch64-linux-gnu", shutil.which("aarch64-linux-gnu-g++")),
                            ("qemu-user-static", shutil.which("qemu-aarch64-static")),
                            ("libssl-dev:arm64", Path("/usr/lib/aarch64-linux-gnu/libcrypto.so").exists()),
                            ("libgtest-dev:arm64", Path("/usr/lib/aarch64-linux-gnu/libgtest.a").exists())) if not ok]
    headers = (("nlohmann/json.hpp", "nlohmann-json3-dev"), ("stb/stb_image.h", "libstb-dev"),
               ("valijson/validator.hpp", "libvalijson-dev"))
    need += [pkg for header, pkg in headers if not (Path("/usr/include") / header).exists()]
    return need


def need_cross_packages() -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is missing (apt-get install cmake)")
    if need := missing_packages():
        pytest.skip(f"the aarch64 cross build needs {' '.join(need)}: as root, {APT} (scripts/build-cpp-aarch64.sh "
                    f"does it itself when run as root)")


def test_toolchain_file_configures_and_compiles(tmp_path) -> None:
    """cpp_demo/cmake/aarch64-linux-gnu.cmake: CMake configures with it (aarch64 g++, OpenSSL from the arm64 multiarch
    folder, qemu as the cross-compiling emulator) and compiles a source into an AArch64 object."""
    need_cross_packages()
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(ROOT / "cpp_demo"), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
                 "-DCANVIT_WITH_OPENVINO=OFF", "-DCANVIT_WITH_ONNXRUNTIME=OFF", "-DCANVIT_WITH_TENSORRT=OFF",
                 "-DCANVIT_WITH_OPENCV=OFF", "-DCANVIT_WERROR=ON", "-DCANVIT_BUILD_TESTS=OFF", "-G", "Unix Makefiles"]
    result = subprocess.run(configure, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cache = dict(line.split("=", 1) for line in (build / "CMakeCache.txt").read_text().splitlines()
                 if "=" in line and not line.startswith(("#", "//")))
    compiler = next((build / "CMakeFiles").glob("*/CMakeCXXCompiler.cmake")).read_text()
    assert re.search(r'set\(CMAKE_CXX_COMPILER "\S*aarch64-linux-gnu-g\+\+"\)', compiler), compiler[:500]
    assert 'set(CMAKE_CXX_LIBRARY_ARCHITECTURE "aarch64-linux-gnu")' in compiler, compiler
    assert cache["OPENSSL_CRYPTO_LIBRARY:FILEPATH"] == "/usr/lib/aarch64-linux-gnu/libcrypto.so", cache
    assert cache["CANVIT_QEMU_AARCH64:FILEPATH"].endswith("qemu-aarch64-static")
    assert cache["CANVIT_QEMU_CPU:STRING"] == emulated_cpu(), cache["CANVIT_QEMU_CPU:STRING"]
    result = subprocess.run(["cmake", "--build", str(build), "--target", "src/policies.cpp.o"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    described = subprocess.run(["file", str(build / "CMakeFiles/canvit.dir/src/policies.cpp.o")], capture_output=True,
                               text=True, check=True).stdout
    assert "ARM aarch64" in described and "relocatable" in described, described


@pytest.fixture(scope="session")
def arm_build(tmp_path_factory) -> Path:
    """scripts/build-cpp-aarch64.sh into a fresh folder (the wheel downloaded anew: nothing cached across runs)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        need_cross_packages()  # the script installs them itself only as root
    if shutil.which("file") is None:
        pytest.skip("`file` is missing (apt-get install file)")
    folder = tmp_path_factory.mktemp("aarch64")
    started = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=1200, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0 and ("No matching distribution" in output or "Could not find a version" in output
                                   or "NewConnectionError" in output):
        pytest.skip(f"pip cannot download the aarch64 OpenVINO wheel: {output.strip().splitlines()[-1]}")
    assert result.returncode == 0, output[-5000:]
    print(f"aarch64 cross build: {time.monotonic() - started:.0f} s")
    return folder


def emulate(build: Path, *args: str, env: dict | None = None, stall_s: float = STALL_S,
            cap_s: float = EMULATED_CAP_S) -> subprocess.CompletedProcess:
    """An aarch64 binary of the build under qemu-aarch64-static, through the script's run-aarch64 wrapper. Fails the
    test, saying whether the program was stuck (no output line for `stall_s`) or slow (still printing at `cap_s`)."""
    proc = subprocess.Popen([str(build / "run-aarch64"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    streams = selectors.DefaultSelector()  # both pipes read here, in this thread: no reader threads, no fork warnings
    for name in chunks:
        streams.register(getattr(proc, name), selectors.EVENT_READ, name)
    started = last_output = time.monotonic()
    while streams.get_map():
        for key, _ in streams.select(timeout=1.0):
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.data].append(data)
                last_output = time.monotonic()
            else:
                streams.unregister(key.fileobj)
        now = time.monotonic()
        if now - last_output > stall_s or now - started > cap_s:
            proc.kill()
            proc.wait()
            said = b"".join(chunks["stdout"] + chunks["stderr"]).decode(errors="replace").strip().splitlines()
            last = f"its last line {said[-1]!r} at {last_output - started:.0f} s" if said else "it printed nothing"
            verdict = (f"stuck: no output for {stall_s:.0f} s ({last}; a thread started with the loader and libc of two "
                       f"glibc builds loops in pthread_create: see run-aarch64)" if now - last_output > stall_s else
                       f"slow: still running at the {cap_s:.0f} s cap ({last})")
            pytest.fail(f"{Path(args[0]).name} under emulation (QEMU_CPU={emulated_cpu(env)}) {verdict}")
    proc.wait()
    text = {name: b"".join(parts).decode(errors="replace") for name, parts in chunks.items()}
    return subprocess.CompletedProcess(proc.args, proc.returncode, text["stdout"], text["stderr"])


def emulated_cpu(env: dict | None = None) -> str:
    """The CPU model run-aarch64 gives qemu: QEMU_CPU from `env` or the environment, else the script's default."""
    return (env or {}).get("QEMU_CPU") or os.environ.get("QEMU_CPU") or DEFAULT_QEMU_CPU


def test_emulate_tells_stuck_from_slow(tmp_path) -> None:
    """emulate() fails a silent program as stuck after stall_s, and one that keeps printing as slow at cap_s, each
    naming its last line; a program that ends is returned whole. (A shell wrapper stands in for run-aarch64.)"""
    wrapper = tmp_path / "run-aarch64"
    wrapper.write_text('#!/bin/sh\nexec "$@"\n')
    wrapper.chmod(0o755)
    with pytest.raises(pytest.fail.Exception, match=r"stuck: no output for 1 s \(its last line 'loading' at 0 s"):
        emulate(tmp_path, "sh", "-c", "echo loading; sleep 30", stall_s=1, cap_s=60)
    with pytest.raises(pytest.fail.Exception, match=r"slow: still running at the 2 s cap \(its last line 'tick'"):
        emulate(tmp_path, "sh", "-c", "while true; do echo tick; sleep 0.2; done", stall_s=1, cap_s=2)
    done = emulate(tmp_path, "sh", "-c", "echo out; echo err >&2; exit 3", stall_s=5, cap_s=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_aarch64_binaries(arm_build) -> None:
    """The binaries are AArch64 ELF files; the demo runs under emulation and lists only the OpenVINO backend (ONNX
    Runtime, TensorRT and OpenCV are off in this cross build)."""
    for binary in ("canvit_demo", "canvit_tests", "canvit_openvino_precisions"):
        described = subprocess.run(["file", str(arm_build / binary)], capture_output=True, text=True, check=True).stdout
        assert "ELF 64-bit" in described and "ARM aarch64" in described, described
    version = emulate(arm_build, str(arm_build / "canvit_demo"), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.split("backends:")[1].split() == ["openvino"], version.stdout


def test_aarch64_unit_tests(arm_build) -> None:
    """canvit_tests (GoogleTest) passes under qemu-aarch64-static."""
    result = emulate(arm_build, str(arm_build / "canvit_tests"), "--gtest_brief=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "[  PASSED  ]" in result.stdout and " 0 tests" not in result.stdout, result.stdout[-1000:]


@pytest.fixture(scope="module")
def irs(export_artifact, tmp_path_factory) -> Callable[[str], Path]:
    """irs(kind) -> an IR of ViT-S, canvas 16 (tests/conftest.py), exported once: "fp32" (stateful), "fp32-stateless",
    "fp16-stateless" (from the typed fp16 ONNX export: its canvas path float32 in the graph)."""
    from canvit_export.export.openvino import export_openvino

    folder, made = tmp_path_factory.mktemp("aarch64_ir"), {}

    def make(kind: str) -> Path:
        if kind not in made:
            precision = kind.split("-")[0]
            export_openvino(export_artifact("vits16", canvas=16, precision=precision), folder / kind, precision=precision,
                            stateful=not kind.endswith("-stateless"), quiet=True)
            made[kind] = folder / kind
        return made[kind]

    return make


def test_aarch64_demo_checks_an_artifact(arm_build, irs, tmp_path) -> None:
    """Under emulation the demo validates an IR (JSON Schema, SHA-256 with the arm64 libcrypto) and refuses an
    altered one with its one line."""
    result = emulate(arm_build, str(arm_build / "canvit_demo"), "--artifact", str(irs("fp32")), "--check")
    assert result.returncode == 0, result.stderr
    assert "a valid canvit-export artifact (manifest format 1, files verified): openvino (stateful), precision fp32" \
        in result.stdout, result.stdout
    altered = tmp_path / "altered"
    shutil.copytree(irs("fp32"), altered)
    with (altered / "initial_state.bin").open("r+b") as f:
        f.write(b"\x00\x01\x02\x03")
    result = emulate(arm_build, str(arm_build / "canvit_demo"), "--artifact", str(altered), "--check")
    assert result.returncode == 2 and "SHA-256 mismatch" in result.stderr, result.stdout + result.stderr


def test_aarch64_rollout_matches_x86(arm_build, irs, photo, tmp_path, report_figure) -> None:
    """A 4-glimpse rollout of the stateful fp32 IR by canvit_demo on the ARM CPU plugin (emulated) ends on the canvas
    the x86 CPU plugin gives (canvit_runtime: the same IR, and the same scene .npy and viewpoints file read back),
    within ARM_VS_X86_REL_L2."""
    import canvit_runtime
    from canvit_runtime.policies import from_json, make_policy, to_json
    from canvit_runtime.preprocess import scene_batch

    (tmp_path / "vp.json").write_text(json.dumps(to_json(make_policy("f-iid", batch=1, glimpses=4, seed=3))))
    np.save(tmp_path / "scene.npy", scene_batch(photo, scene_px=512, batch=1)[0])
    result = emulate(arm_build, str(arm_build / "canvit_demo"), "--artifact", str(irs("fp32")), "--image",
                     str(tmp_path / "scene.npy"), "--policy", str(tmp_path / "vp.json"), "--glimpses", "4",
                     "--canvas-out", str(tmp_path / "canvas.npy"), "--log", str(tmp_path / "log.json"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "precision fp32" in result.stdout and "4 glimpses on openvino/CPU" in result.stdout, result.stdout
    assert "canvit_demo: glimpse 4/4 (step " in result.stderr, result.stderr  # progress: a glimpse takes seconds here
    arm = np.load(tmp_path / "canvas.npy")
    scene = np.load(tmp_path / "scene.npy")[None]
    session = canvit_runtime.open(irs("fp32"), runtime="openvino")
    for v in from_json(tmp_path / "vp.json", batch=1):
        x86 = session.step(scene, v.centers, v.scales).canvas
    assert arm.shape == x86.shape == (1, 16 + 256, 1024)
    rel = np.linalg.norm(arm.astype(np.float64) - x86) / np.linalg.norm(x86)
    step_ms = json.loads((tmp_path / "log.json").read_text())["step_ms"]
    report_figure(f"aarch64 rollout under qemu ({emulated_cpu()}): ARM vs x86 canvas rel-L2 {rel:.2e}; emulated ms per "
                  f"glimpse {', '.join(f'{ms:.0f}' for ms in step_ms)}")
    assert rel <= ARM_VS_X86_REL_L2, rel
    initial = session.manifest.initial_state_arrays(1)["canvas"]
    assert np.linalg.norm(arm - initial) > 0.5 * np.linalg.norm(initial), "four glimpses moved the canvas"


def arm_census(arm_build: Path, ir: Path, out: Path, hint: str = "demo") -> tuple[dict, list[dict]]:
    """The ARM CPU plugin's compiled runtime model of `ir` (canvit_openvino_precisions under emulation), and its
    nodes fused from the protected ops (the canvas path: precision.audit_onnx's `protected`, found in the IR by
    tensor name as canvit_export.export.openvino.audit_compiled does on x86)."""
    import onnx
    import openvino as ov

    from canvit_export.export.openvino import protected_ops
    from canvit_export.precision import audit_onnx
    from canvit_runtime.manifest import OpenVinoArtifact, load_manifest

    result = emulate(arm_build, str(arm_build / "canvit_openvino_precisions"), str(ir / "step.xml"), "--out", str(out),
                     "--hint", hint)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    artifact = load_manifest(ir).artifact
    assert isinstance(artifact, OpenVinoArtifact), artifact
    source = load_manifest(Path(artifact.source.path))  # the ONNX artifact the IR was converted from
    protected_tensors = audit_onnx(onnx.load(str(source.file("graph")))).protected
    protected = protected_ops(ov.Core().read_model(str(ir / "step.xml")), protected_tensors)  # IR keeps tensor names
    nodes = [n for n in report["nodes"] if set(n["originalLayersNames"].split(",")) & protected]
    return report, nodes


def narrow_outputs(node: dict) -> list[str]:
    return [p for p in node["outputPrecisions"].replace(",", " ").split() if p not in ("f32", "i32", "i64", "u8", "boolean")]


@pytest.mark.parametrize("ir_kind", ["fp32-stateless", "fp16-stateless"])
def test_aarch64_canvas_path_stays_f32(arm_build, irs, tmp_path, ir_kind) -> None:
    """On the emulated ARM CPU (qemu's neoverse-n1: fp16 arithmetic, where the ARM plugin's default inference precision
    is f16), the demo's configuration (f32 hint) compiles the fp32 IR all in f32, and the typed fp16 IR with every node
    of the canvas path outputting f32. Measured on ARM: 42 canvas-path nodes, census f32 628 / i32 231 / dynamic 49
    (fp32 IR) and f32 652 / i32 231 / dynamic 49 (fp16 IR: no f16 node, the f32 hint runs its ops in f32 too); the same
    judgement of canvit_openvino_precisions' x86 output gives the export audit's own figures (43 canvas-path nodes,
    census f32 564 / i32 210 / dynamic 49)."""
    report, protected = arm_census(arm_build, irs(ir_kind), tmp_path / "census.json")
    print(f"{ir_kind}: inference precision {report['inference_precision']}, runtime precisions "
          f"{report['runtime_precisions']}, {len(protected)} canvas-path nodes")
    assert report["inference_precision"] == "f32", report["inference_precision"]
    assert len(protected) >= 10, "the audit cannot vouch for the canvas path: too few protected nodes found"
    assert not [n for n in protected if narrow_outputs(n)], [n for n in protected if narrow_outputs(n)][:3]
    if ir_kind == "fp32-stateless":  # the typed fp16 IR's own f16 ops may run in f16: only its canvas path is held
        assert report["runtime_precisions"].get("f16", 0) == 0 and report["runtime_precisions"].get("bf16", 0) == 0


def test_aarch64_default_hint_would_narrow(arm_build, irs, tmp_path) -> None:
    """Why the hint matters (the audit can fail): with the plugin's defaults, the emulated CPU (fp16 arithmetic)
    infers the fp32 IR in f16, canvas path included (measured under qemu's max: census f16 594 / f32 72 / i32 249 /
    dynamic 49, 31 of the 42 canvas-path nodes outputting f16)."""
    report, protected = arm_census(arm_build, irs("fp32-stateless"), tmp_path / "census.json", hint="default")
    if "FP16" not in report["device_capabilities"]:
        pytest.skip(f"this emulated CPU has no fp16 arithmetic (capabilities {report['device_capabilities']}): "
                    f"QEMU_CPU={os.environ.get('QEMU_CPU', '')}")
    narrowed = [n for n in protected if narrow_outputs(n)]
    print(f"default hint: inference precision {report['inference_precision']}, runtime precisions "
          f"{report['runtime_precisions']}, {len(narrowed)} of {len(protected)} canvas-path nodes narrowed")
    assert report["inference_precision"] == "f16", report["inference_precision"]
    assert report["runtime_precisions"].get("f16", 0) > 0, report["runtime_precisions"]
    assert narrowed, "f16 inference left the canvas path in f32"


def test_aarch64_default_hint_without_fp16_arithmetic(arm_build, irs, tmp_path) -> None:
    """The other side of the census: on a CPU without fp16 arithmetic (qemu's cortex-a53, Armv8.0: a Raspberry Pi 3/4
    class core), the plugin's default hint already infers in f32, so nothing on the canvas path is narrowed; the
    census tells the two CPUs apart by their capabilities, not by the host."""
    cpu = {"QEMU_CPU": "cortex-a53"}
    result = emulate(arm_build, str(arm_build / "canvit_openvino_precisions"), str(irs("fp32-stateless") / "step.xml"),
                     "--out", str(tmp_path / "census.json"), "--hint", "default", env=cpu)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "census.json").read_text())
    assert "FP16" not in report["device_capabilities"], report["device_capabilities"]
    assert report["inference_precision"] == "f32", report["inference_precision"]
    assert report["runtime_precisions"].get("f16", 0) == 0, report["runtime_precisions"]
