"""cpp_demo hardening (issue 15): canvit_demo and canvit_tests built with AddressSanitizer and UndefinedBehaviorSanitizer
(-DCANVIT_SANITIZE=ON) run a rollout and the unit tests without a report, and libFuzzer (-DCANVIT_FUZZ=ON, clang) finds
nothing in the readers of what a user hands canvit_demo: manifest.json, a viewpoints file (--policy FILE), a scene .npy.

CANVIT_FUZZ_SECONDS (default 20) is each fuzz target's time; 0 skips the fuzzing. The executions are printed
(pytest -s, or -rP): "canvit_fuzz_manifest: 61234 executions in 20 s ...".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cpp_demo import HEADERS, OPENCV_HEADER, READOUTS, onnxruntime_release

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "cpp_demo/fuzz/corpus"
FUZZ_TARGETS = ("manifest", "viewpoints", "npy")
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")
# Sanitized binaries: stop at the first report, leaks included (LeakSanitizer at exit), symbolized stacks.
ASAN_OPTIONS = "halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:symbolize=1"
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"


def configure_and_build(source_args: list[str], folder: Path, targets: list[str]) -> None:
    for command in (["cmake", "-S", str(ROOT / "cpp_demo"), "-B", str(folder), *source_args],
                    ["cmake", "--build", str(folder), "-j2", "--target", *targets]):
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def require_toolchain() -> None:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    if missing := [str(h) for h in HEADERS if not h.exists()]:
        pytest.skip(f"missing headers {missing}: apt-get install nlohmann-json3-dev libstb-dev libssl-dev "
                    f"libvalijson-dev (scripts/setup.sh does it as root)")


def sanitizer_env() -> dict[str, str]:
    """The environment of a sanitized canvit_demo / canvit_tests. TBB_ENABLE_SANITIZERS=1: oneTBB (OpenVINO's CPU
    plugin) otherwise dlopens libtbbbind with RTLD_DEEPBIND, which the ASan runtime refuses ("You are trying to dlopen
    a ... libtbbbind_2_5.so.3 shared library with RTLD_DEEPBIND flag which is incompatible with sanitizer runtime",
    exit 1 before the first glimpse); oneTBB reads this variable to leave the flag out. Nothing is suppressed: neither
    OpenVINO nor ONNX Runtime produces an ASan, UBSan or leak report here."""
    return dict(os.environ, ASAN_OPTIONS=ASAN_OPTIONS, UBSAN_OPTIONS=UBSAN_OPTIONS, TBB_ENABLE_SANITIZERS="1")


def assert_clean(result: subprocess.CompletedProcess, code: int = 0) -> None:
    output = result.stdout + result.stderr
    reports = [line for line in output.splitlines() if any(r in line for r in SANITIZER_REPORTS)]
    assert not reports, "\n".join(reports) + "\n" + output[-6000:]
    assert result.returncode == code, output[-4000:]


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> Path:
    """A build folder of canvit_demo (OpenVINO, and ONNX Runtime where tests/test_cpp_demo.py finds it) and canvit_tests
    (where GoogleTest is installed), compiled with -DCANVIT_SANITIZE=ON (ASan + UBSan, UB aborts) and -Werror."""
    require_toolchain()
    import openvino

    folder = tmp_path_factory.mktemp("cpp_sanitized")
    args = [f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}", "-DCANVIT_WERROR=ON", "-DCANVIT_SANITIZE=ON"]
    if (onnxruntime_root := onnxruntime_release(tmp_path_factory.mktemp("onnxruntime"))) is not None:
        args.append(f"-DONNXRUNTIME_ROOT={onnxruntime_root}")
    targets = ["canvit_demo"] + (["canvit_tests"] if Path("/usr/include/gtest/gtest.h").exists() else [])
    configure_and_build(args, folder, targets)
    return folder


def run_sanitized(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], check=False, capture_output=True, text=True, timeout=900,
                          env=sanitizer_env())


@pytest.fixture(scope="module")
def readout_onnx(export_artifact) -> Path:
    """The seeded ViT-S canvas-16 step with segmentation and classification readouts (ONNX), as test_cpp_demo.py's."""
    return export_artifact("vits16", canvas=16, readout=READOUTS)


@pytest.fixture(scope="module")
def readout_ir(readout_onnx, tmp_path_factory) -> Path:
    from canvit_export.export.openvino import export_openvino

    out = tmp_path_factory.mktemp("hardening_ir") / "stateful"
    export_openvino(readout_onnx, out, precision="fp32", quiet=True)
    return out


def test_sanitized_unit_tests(sanitized) -> None:
    """canvit_tests under ASan + UBSan: every test passes, no report."""
    binary = sanitized / "canvit_tests"
    if not binary.exists():
        pytest.skip("GoogleTest is not installed (apt-get install libgtest-dev; scripts/setup.sh does it as root)")
    result = run_sanitized(binary, "--gtest_brief=1")
    assert_clean(result)
    assert "[  PASSED  ]" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize(("artifact_kind", "backend"), [("onnx", "openvino"), ("stateful-ir", "openvino"),
                                                        ("onnx", "onnxruntime")])
def test_sanitized_rollout(sanitized, readout_onnx, readout_ir, photo, tmp_path, artifact_kind, backend) -> None:
    """A 5-glimpse EG-C2F rollout of a ViT-S canvas-16 artifact with readouts, writing every output the demo has
    (canvas, scene, readouts, PCA PNG, pictures, log, and the overlay video where OpenCV is compiled in), exits 0
    without an ASan or UBSan report."""
    from PIL import Image

    demo = sanitized / "canvit_demo"
    version = subprocess.run([str(demo), "--version"], capture_output=True, text=True, check=True, env=sanitizer_env())
    if backend not in version.stdout.split("backends:")[1].split():
        pytest.skip(f"this build has no {backend} backend (tests/test_cpp_demo.py onnxruntime_release found none)")
    Image.fromarray(photo).save(tmp_path / "photo.png")  # a real photo: the stb decode and resize run too
    artifact = {"onnx": readout_onnx, "stateful-ir": readout_ir}[artifact_kind]
    args = ["--artifact", str(artifact), "--backend", backend, "--image", str(tmp_path / "photo.png"), "--policy", "eg-c2f",
            "--glimpses", "5", "--canvas-out", str(tmp_path / "canvas.npy"), "--scene-out", str(tmp_path / "scene.npy"),
            "--readouts-out", str(tmp_path / "readouts"), "--pca-png", str(tmp_path / "pca.png"), "--pictures",
            str(tmp_path / "pictures"), "--log", str(tmp_path / "log.json")]
    if OPENCV_HEADER.exists():
        args += ["--overlay-video", str(tmp_path / "overlay.avi")]
    result = run_sanitized(demo, *args)
    assert_clean(result)
    assert f"5 glimpses on {backend}/CPU" in result.stdout, result.stdout
    assert np.load(tmp_path / "canvas.npy").shape == (1, 16 + 256, 1024)
    assert len(json.loads((tmp_path / "log.json").read_text())["step_ms"]) == 5
    assert (tmp_path / "pictures" / "segmentation.png").exists()


def manifest_with(artifact: Path, tmp_path: Path, edit) -> Path:
    """A copy of the artifact's folder (its files linked) whose manifest.json is edit(manifest)'s."""
    folder = tmp_path / "a"
    folder.mkdir()
    for file in artifact.iterdir():
        if file.name != "manifest.json":
            (folder / file.name).symlink_to(file)
    manifest = json.loads((artifact / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def canvas_dim(manifest: dict, dim: int) -> None:
    """Every canvas size in the manifest set to `dim`, consistently (shapes, state, initial state parts)."""
    manifest["architecture"]["canvas_dim"] = dim
    for tensor in manifest["inputs"] + manifest["outputs"]:
        if tensor["name"] in ("canvas", "canvas_next"):
            tensor["shape"][-1] = dim
    for pair in manifest["state"]:
        if pair["input"] == "canvas":
            pair["shape"][-1] = dim
    for part in manifest["initial_state"]["parts"]:
        part["shape"][-1] = dim if part["name"] != "recurrent_cls" else part["shape"][-1]


def npy_bytes(header: str) -> bytes:
    """A .npy (version 1) of this header and no data."""
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


@pytest.mark.parametrize(("case", "needle"), [
    # 4 * (2^62 + 1) wrapped around to 4 in the bounds check of initial_state.bin; the vector then asked for 2^62 floats
    # (that check stays); the schema's caps (issue 25) now refuse it first
    ("canvas dim 2^62+1", "/architecture/canvas_dim: 4611686018427387905 must be <= 8192"),
    # an int kept the low 32 bits: the grid read as 16, the manifest accepted although Python refuses it
    ("canvas grid 2^32+16", "/geometry/canvas_grid: 4294967312 must be <= 256"),
    # nlohmann's out_of_range.406 escaped the parse_error handler: "error: [json.exception.out_of_range.406] number ..."
    ("manifest number overflow", "manifest.json: not valid JSON ([json.exception.out_of_range.406] number overflow"),
    # a json out_of_range escaped as "[json.exception.out_of_range.403] key 'viewpoints' not found"
    ("viewpoints key", "expected a non-empty list of viewpoints"),
    # std::regex recursed once per header character: a stack overflow
    ("npy long header", "truncated"),
    # a shape of 2^40 floats was allocated before reading the data
    ("npy huge shape", "truncated"),
    # std::stoll's std::out_of_range escaped
    ("npy dimension out of range", "a shape dimension (99999999999999999999) is out of range"),
])
def test_sanitized_refusals(sanitized, export_artifact, tmp_path, case, needle) -> None:
    """What the fuzz targets found, refused by the sanitized canvit_demo with one line 'error: ...' and exit 2."""
    onnx = export_artifact("vits16", canvas=16)
    scene = tmp_path / "scene.npy"
    np.save(scene, np.zeros((3, 512, 512), np.float32))
    args = ["--image", str(scene), "--glimpses", "1"]
    if case == "canvas dim 2^62+1":
        artifact = manifest_with(onnx, tmp_path, lambda m: canvas_dim(m, 2**62 + 1))
    elif case == "canvas grid 2^32+16":
        artifact = manifest_with(onnx, tmp_path, lambda m: m["geometry"].update(canvas_grid=2**32 + 16))
    elif case == "manifest number overflow":
        artifact = manifest_with(onnx, tmp_path, lambda m: None)
        text = (artifact / "manifest.json").read_text()
        (artifact / "manifest.json").write_text(text.replace('"batch": 1', '"batch": 5e421', 1))
    else:
        artifact = onnx
    if case == "viewpoints key":
        (tmp_path / "vp.json").write_text(json.dumps({"glimpses": [[0, 0, 1]]}))
        args += ["--policy", str(tmp_path / "vp.json")]
    elif case.startswith("npy"):
        shape = {"npy long header": "(" + "1, " * 20000 + "2)", "npy huge shape": "(1099511627776,)",
                 "npy dimension out of range": "(99999999999999999999,)"}[case]
        scene.write_bytes(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }\n"))
    result = run_sanitized(sanitized / "canvit_demo", "--artifact", str(artifact), *args)
    assert_clean(result, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr[:3000]


# --- fuzzing ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzers(tmp_path_factory) -> Path:
    """A clang build folder of the three fuzz targets (-DCANVIT_FUZZ=ON: libFuzzer, ASan, UBSan), without backends."""
    require_toolchain()
    if shutil.which("clang++") is None:
        pytest.skip("clang++ is missing (apt-get install clang): the fuzz targets need clang's libFuzzer")
    probe = tmp_path_factory.mktemp("libfuzzer_probe")
    (probe / "probe.cpp").write_text("#include <cstddef>\n#include <cstdint>\n"
                                     'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n')
    linked = subprocess.run(["clang++", "-fsanitize=fuzzer,address,undefined", str(probe / "probe.cpp"), "-o",
                             str(probe / "probe")], capture_output=True, text=True, check=False, timeout=300)
    if linked.returncode != 0:
        pytest.skip(f"clang++ cannot link a libFuzzer target (its compiler-rt is missing): {linked.stderr.strip()[:300]}")
    folder = tmp_path_factory.mktemp("cpp_fuzz")
    args = ["-DCMAKE_CXX_COMPILER=clang++", "-DCANVIT_FUZZ=ON", "-DCANVIT_WERROR=ON", "-DCANVIT_BUILD_TESTS=OFF",
            *(f"-DCANVIT_WITH_{name}=OFF" for name in ("OPENVINO", "ONNXRUNTIME", "TENSORRT", "OPENCV"))]
    configure_and_build(args, folder, [f"canvit_fuzz_{target}" for target in FUZZ_TARGETS])
    return folder


def stand_in_files(manifests: list[Path], files: Path, seeds: Path) -> None:
    """Seeds for canvit_fuzz_manifest: each manifest with its files records pointing at small stand-ins in `files`
    (CANVIT_FUZZ_FILES: the target copies them beside the manifest it loads) of the sizes and SHA-256s it now lists,
    so that a seed passes load_manifest whole (checksums, initial state) and mutations of it reach that far; the
    initial state is the artifact's own initial_state.bin."""
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        for key, record in manifest["files"].items():
            source = manifest_path.parent / record["path"]
            target = files / f"{manifest_path.parent.name}-{Path(record['path']).name}"
            if key == "initial_state":
                shutil.copyfile(source, target)
            else:
                target.write_bytes(f"a stand-in for {record['path']}\n".encode())
            data = target.read_bytes()
            record.update(path=target.name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        (seeds / f"{manifest_path.parent.name}.json").write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def seed_corpora(export_artifact, readout_onnx, readout_ir, tmp_path_factory) -> dict[str, Path]:
    """Per target, a folder of seeds (the fuzzer adds what it finds there): cpp_demo/fuzz/corpus/<target>/ and real
    inputs made here: the manifests of an ONNX artifact, one with readouts and its stateful IR; viewpoints files of
    the C2F and F-IID policies as canvit_runtime writes them; scene .npy files as numpy writes them."""
    from canvit_runtime.policies import make_policy, to_json

    root = tmp_path_factory.mktemp("fuzz_corpora")
    corpora = {target: root / target for target in FUZZ_TARGETS}
    for target, folder in corpora.items():
        shutil.copytree(CORPUS / target, folder)
    corpora["files"] = root / "files"
    corpora["files"].mkdir()
    stand_in_files([export_artifact("vits16", canvas=16) / "manifest.json", readout_onnx / "manifest.json",
                    readout_ir / "manifest.json"], corpora["files"], corpora["manifest"])
    for name, batch, glimpses in (("c2f", 1, 21), ("r-iid", 2, 4)):
        (corpora["viewpoints"] / f"{name}.json").write_text(json.dumps(to_json(make_policy(name, batch=batch,
                                                                                          glimpses=glimpses, seed=7))))
    np.save(corpora["npy"] / "scene-3x4x4.npy", np.random.default_rng(0).standard_normal((3, 4, 4), np.float32))
    np.save(corpora["npy"] / "other-shape.npy", np.ones((5, 2), np.float32))
    return corpora


def fuzz_seconds() -> int:
    seconds = int(os.environ.get("CANVIT_FUZZ_SECONDS", "20"))
    if seconds <= 0:
        pytest.skip("CANVIT_FUZZ_SECONDS=0: fuzzing skipped")
    return seconds


@pytest.mark.parametrize("target", FUZZ_TARGETS)
def test_fuzz(fuzzers, seed_corpora, tmp_path, target) -> None:
    """canvit_fuzz_<target> for CANVIT_FUZZ_SECONDS from its seeds: exit 0, no crash, leak, timeout or out-of-memory
    input written, no sanitizer report. Prints the executions."""
    seconds = fuzz_seconds()
    findings = tmp_path / "findings"
    findings.mkdir()
    scratch = tmp_path / "scratch"  # the targets' TMPDIR: the files they hand the readers by path
    scratch.mkdir()
    command = [str(fuzzers / f"canvit_fuzz_{target}"), f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
               "-print_final_stats=1", f"-artifact_prefix={findings}/", str(seed_corpora[target])]
    # libFuzzer's -rss_limit_mb reads the peak RSS (getrusage ru_maxrss), and Linux carries the peak of the process that
    # exec()s into the new program: started straight from this pytest process (3+ GB after the whole suite), the fuzzer
    # "ran out of memory" within its first second. A shell forks it, so its peak starts from the shell's few MB.
    command = ["sh", "-c", '"$@"; exit $?', "sh", *command]
    env = dict(os.environ, TMPDIR=str(scratch), CANVIT_FUZZ_FILES=str(seed_corpora["files"]),
               UBSAN_OPTIONS=UBSAN_OPTIONS)
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 600, env=env)
    output = result.stdout + result.stderr
    found = sorted(p.name for p in findings.iterdir())
    assert result.returncode == 0 and not found, f"{found}\n{output[-8000:]}"
    assert_clean(result)
    executions = re.search(r"stat::number_of_executed_units: (\d+)", output)
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", output)
    assert executions is not None, output[-3000:]
    edges, features, corpus = coverage[-1] if coverage else ("?", "?", "?")
    print(f"canvit_fuzz_{target}: {executions[1]} executions in {seconds} s, {edges} edges, {features} features, "
          f"corpus {corpus} inputs; no crash, leak, timeout or sanitizer report")
    assert int(executions[1]) > 100, output[-3000:]
