"""cpp_demo: built here with CMake against the OpenVINO pip wheel; its canvas equals the Python runtime's, and it
validates every manifest against the same JSON Schema as canvit_runtime (runtimes/canvit_runtime/manifest.schema.json,
embedded at build time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import canvit_runtime
from canvit_runtime.manifest import ManifestError, load_manifest
from canvit_runtime.policies import make_policy, to_json
from canvit_runtime.preprocess import scene_batch
from conftest import bad_manifest_cases, mutate_manifest, write_bad_manifest

ROOT = Path(__file__).resolve().parents[1]
OPENCV_HEADER = Path("/usr/include/opencv4/opencv2/videoio.hpp")
HEADERS = [Path("/usr/include/nlohmann/json.hpp"), Path("/usr/include/stb/stb_image.h"), Path("/usr/include/openssl/evp.h"),
           Path("/usr/include/valijson/validator.hpp")]


def onnxruntime_release(folder: Path) -> Path | None:
    """An ONNX Runtime "release" folder (include/, lib/) for the C++ backend, where one can be put together: the C++
    headers of ../shared/third_party/onnxruntime/include (or $CANVIT_ONNXRUNTIME_INCLUDE) with the library of the
    venv's onnxruntime wheel (newer than the headers' ORT_API_VERSION: compatible). None otherwise."""
    import os

    headers = Path(os.environ.get("CANVIT_ONNXRUNTIME_INCLUDE", ROOT.parent / "shared/third_party/onnxruntime/include"))
    try:
        import onnxruntime
    except ImportError:
        return None
    libraries = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*"))
    if not (headers / "onnxruntime_cxx_api.h").exists() or not libraries:
        return None
    (folder / "lib").mkdir()
    (folder / "include").symlink_to(headers.resolve())
    for name in ("libonnxruntime.so", "libonnxruntime.so.1"):  # the link name and the soname the wheel lacks
        (folder / "lib" / name).symlink_to(libraries[-1])
    return folder


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Path:
    """The CMake build folder, built with -Werror: canvit_demo (OpenVINO, and ONNX Runtime where onnxruntime_release
    finds it: the ONNXRUNTIME_ROOT route; test_cpp_compile.py builds the wheel's library as it ships), and canvit_tests
    where GoogleTest is installed."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    if missing := [str(h) for h in HEADERS if not h.exists()]:
        pytest.skip(f"missing headers {missing}: apt-get install nlohmann-json3-dev libstb-dev libssl-dev "
                    f"libvalijson-dev (scripts/setup.sh does it as root)")
    import openvino

    folder = tmp_path_factory.mktemp("cpp_build")
    openvino_dir = Path(openvino.__file__).parent / "cmake"
    # -Werror: the sources compile without a warning (vendor headers are SYSTEM includes, issue 17)
    configure = ["cmake", "-S", str(ROOT / "cpp_demo"), "-B", str(folder), f"-DOpenVINO_DIR={openvino_dir}",
                 "-DCANVIT_WERROR=ON"]
    if (onnxruntime_root := onnxruntime_release(tmp_path_factory.mktemp("onnxruntime"))) is not None:
        configure.append(f"-DONNXRUNTIME_ROOT={onnxruntime_root}")
    for command in (configure, ["cmake", "--build", str(folder), "-j2"]):
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return folder


@pytest.fixture(scope="session")
def demo(build) -> Path:
    return build / "canvit_demo"


def compiled_backends(demo: Path) -> list[str]:
    version = subprocess.run([str(demo), "--version"], capture_output=True, text=True, check=True).stdout
    return version.split("backends:")[1].split()


@pytest.fixture(scope="module")
def ir(export_artifact, tmp_path_factory) -> Path:
    from canvit_export.export.openvino import export_openvino

    out = tmp_path_factory.mktemp("cpp_ir") / "ir"
    export_openvino(export_artifact("vits16", canvas=16), out, precision="fp32", quiet=True)
    return out


@pytest.fixture(scope="module")
def stateless_ir(export_artifact, tmp_path_factory) -> Path:
    from canvit_export.export.openvino import export_openvino

    out = tmp_path_factory.mktemp("cpp_ir") / "stateless"
    export_openvino(export_artifact("vits16", canvas=16), out, precision="fp32", stateful=False, quiet=True)
    return out


def run(demo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(demo), *args], check=False, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("artifact_kind", ["stateful-ir", "stateless-ir", "onnx"])
def test_cpp_canvas_equals_python(demo, ir, stateless_ir, export_artifact, photo, tmp_path, artifact_kind) -> None:
    artifact = {"stateful-ir": ir, "stateless-ir": stateless_ir}.get(artifact_kind) or export_artifact("vits16", canvas=16)
    viewpoints = make_policy("f-iid", batch=1, glimpses=8, seed=3)
    (tmp_path / "vp.json").write_text(json.dumps(to_json(viewpoints)))
    scene = scene_batch(photo, scene_px=512, batch=1)
    np.save(tmp_path / "scene.npy", scene[0])
    result = run(demo, "--artifact", str(artifact), "--image", str(tmp_path / "scene.npy"), "--policy",
                 str(tmp_path / "vp.json"), "--glimpses", "8", "--canvas-out", str(tmp_path / "canvas.npy"),
                 "--log", str(tmp_path / "log.json"))
    assert result.returncode == 0, result.stderr
    assert "median ms" in result.stdout and "glimpses/s" in result.stdout and "precision fp32" in result.stdout
    cpp = np.load(tmp_path / "canvas.npy")
    session = canvit_runtime.open(artifact, runtime="openvino")
    for v in viewpoints:
        python = session.step(scene, v.centers, v.scales).canvas
    assert cpp.shape == python.shape == (1, 16 + 256, 1024)
    rel = np.linalg.norm(cpp.astype(np.float64) - python) / np.linalg.norm(python)
    assert rel <= 1e-4, rel
    initial = session.manifest.initial_state_arrays(1)["canvas"]
    assert np.linalg.norm(cpp - initial) > 0.5 * np.linalg.norm(initial), "eight glimpses moved the canvas"
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log["step_ms"]) == 8 and log["median_ms"] > 0
    assert log["precision"] == "fp32" and log["target"] == session.manifest.target


def test_cpp_onnxruntime_canvas_equals_openvino_and_python(demo, export_artifact, photo, tmp_path) -> None:
    """Issue 17: the C++ ONNX Runtime backend's canvas after a rollout of the fp32 ONNX artifact equals the C++
    OpenVINO backend's and canvit_runtime's ONNX Runtime session's (rel-L2 <= 1e-5) on the same scene and
    viewpoints (canvit_runtime's 21 C2F glimpses, given to the demo as a viewpoints file)."""
    if "onnxruntime" not in compiled_backends(demo):
        pytest.skip("canvit_demo was built without onnxruntime: needs ../shared/third_party/onnxruntime/include and "
                    "the onnxruntime wheel (see onnxruntime_release)")
    artifact = export_artifact("vits16", canvas=16)
    scene = scene_batch(photo, scene_px=512, batch=1)
    np.save(tmp_path / "scene.npy", scene[0])
    viewpoints = make_policy("c2f", batch=1, glimpses=21)
    (tmp_path / "vp.json").write_text(json.dumps(to_json(viewpoints)))
    canvases = {}
    for backend in ("onnxruntime", "openvino"):
        result = run(demo, "--artifact", str(artifact), "--image", str(tmp_path / "scene.npy"), "--policy",
                     str(tmp_path / "vp.json"), "--glimpses", "21", "--backend", backend, "--canvas-out",
                     str(tmp_path / f"{backend}.npy"))
        assert result.returncode == 0, result.stderr
        assert f"glimpses on {backend}/CPU" in result.stdout, result.stdout
        canvases[backend] = np.load(tmp_path / f"{backend}.npy").astype(np.float64)
    session = canvit_runtime.open(artifact, runtime="onnxruntime")
    for v in viewpoints:
        python = session.step(scene, v.centers, v.scales).canvas
    initial = session.manifest.initial_state_arrays(1)["canvas"]
    assert np.linalg.norm(python - initial) > 0.5 * np.linalg.norm(initial), "21 glimpses moved the canvas"
    for name, other in (("openvino", canvases["openvino"]), ("python", python)):
        rel = np.linalg.norm(canvases["onnxruntime"] - other) / np.linalg.norm(other)
        assert rel <= 1e-5, (name, rel)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the demo reads resident memory from Linux's /proc")
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_cpp_1000_glimpses_keep_memory_flat(demo, ir, export_artifact, scene_npy, tmp_path, backend) -> None:
    """Issue 15: 1000 F-IID glimpses in C++ (stateful IR on OpenVINO; ONNX on ONNX Runtime) end finite, and the
    demo's resident memory (--log resident_mb, after every glimpse) grows < 1% over glimpses 100-1000: no leak."""
    if backend not in compiled_backends(demo):
        pytest.skip(f"canvit_demo was built without {backend} (see onnxruntime_release)")
    artifact = ir if backend == "openvino" else export_artifact("vits16", canvas=16)
    result = run(demo, "--artifact", str(artifact), "--image", str(scene_npy), "--policy", "f-iid", "--glimpses",
                 "1000", "--backend", backend, "--log", str(tmp_path / "log.json"), "--canvas-out",
                 str(tmp_path / "canvas.npy"))
    assert result.returncode == 0, result.stderr
    resident = json.loads((tmp_path / "log.json").read_text())["resident_mb"]
    assert len(resident) == 1000 and resident[0] > 10, resident[:3]
    growth = (max(resident[100:]) - resident[100]) / resident[100]
    assert growth < 0.01, f"resident memory grew {growth:.2%} over glimpses 100-1000 ({resident[100]:.0f} MB)"
    assert np.isfinite(np.load(tmp_path / "canvas.npy")).all()


def test_cpp_runs_a_photo_with_c2f(demo, ir, tmp_path) -> None:
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    result = run(demo, "--artifact", str(ir), "--image", str(tmp_path / "astronaut.png"), "--glimpses", "21")
    assert result.returncode == 0, result.stderr
    assert "21 glimpses on openvino/CPU" in result.stdout


@pytest.mark.parametrize(("case", "needle"), [
    ("missing", "no such artifact folder"),
    ("altered", "SHA-256 mismatch"),
    ("version", "manifest version 2 is newer than this canvit_demo reads (1): upgrade canvit_demo"),
    ("viewpoint", "leaves the scene"),
    ("image", "cannot read the image"),
    ("backend", "backend 'tensorrt' is not compiled into this canvit_demo: reconfigure CMake with -DTENSORRT_ROOT"),
    ("unknown", "unknown backend 'tflite'"),
    ("model-shape", "shape mismatch: tensor 'canvas' is [1, 272, 1024] float32 in the model but [1, 80, 1024] float32"),
    ("manifest-shape", "tensor 'scene' has shape [1, 3, 512, 512], but the geometry"),
    ("video", "no such video file"),
    ("option", "unknown option '--canvass'"),
    ("number", "--glimpses 0: expected an integer >= 1"),
])
def test_cpp_bad_inputs(demo, ir, tmp_path, case, needle) -> None:
    artifact = tmp_path / "a"
    shutil.copytree(ir, artifact)
    image = tmp_path / "scene.npy"
    np.save(image, np.zeros((3, 512, 512), np.float32))
    args = ["--artifact", str(artifact), "--image", str(image), "--glimpses", "1"]
    if case == "missing":
        args[1] = str(tmp_path / "nope")
    elif case == "altered":
        with (artifact / "initial_state.bin").open("r+b") as f:
            f.write(b"\x00\x01\x02\x03")
    elif case == "version":
        manifest = json.loads((artifact / "manifest.json").read_text())
        manifest["format_version"] = 2
        (artifact / "manifest.json").write_text(json.dumps(manifest))
    elif case == "viewpoint":
        (tmp_path / "vp.json").write_text(json.dumps([[0.9, 0.0, 0.5]]))
        args += ["--policy", str(tmp_path / "vp.json")]
    elif case == "image":
        (tmp_path / "bad.png").write_text("not a png")
        args[3] = str(tmp_path / "bad.png")
    elif case in ("model-shape", "manifest-shape"):
        # model-shape: a self-consistent manifest for a canvas 8 next to the canvas-16 IR it does not describe.
        manifest = json.loads((artifact / "manifest.json").read_text())
        if case == "model-shape":
            manifest["geometry"]["canvas_grid"] = 8
            manifest["state"][0]["shape"] = [1, 16 + 64, 1024]
        else:
            manifest["geometry"]["scene_px"] = 256
        (artifact / "manifest.json").write_text(json.dumps(manifest))
    elif case == "video":
        args[2:4] = ["--video", str(tmp_path / "missing.mp4")]
    elif case == "option":
        args += ["--canvass", "32"]
    elif case == "number":
        args[-1] = "0"
    else:
        args += ["--backend", "tensorrt" if case == "backend" else "tflite"]
    if case == "backend" and "tensorrt" in compiled_backends(demo):
        pytest.skip("this build has TensorRT compiled in")
    if case == "video" and not OPENCV_HEADER.exists():
        pytest.skip("OpenCV is not installed (apt-get install libopencv-dev): --video is refused differently")
    result = run(demo, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


@pytest.mark.parametrize(("case", "needle"), [
    ("wrong type", "not a valid version-1 manifest, /geometry/batch: '1' is a string, expected integer; re-export the artifact"),
    ("missing field", "not a valid version-1 manifest, /precision: missing, a required field; re-export the artifact"),
    ("future version", "manifest version 2 is newer than this canvit_demo reads (1): upgrade canvit_demo (rebuild it from "
                       "a newer canvit-export)"),
    ("unknown role", "not a valid version-1 manifest, /inputs/0/role: 'segmentation' is not one of scene, state, "
                     "viewpoint_centers, viewpoint_scales, reset, readout, extra; re-export the artifact"),
    ("unknown key", "not a valid version-1 manifest, /camera: unknown field, not in manifest version 1; re-export the artifact"),
])
def test_cpp_refuses_manifests_off_the_schema(demo, ir, tmp_path, case, needle) -> None:
    """A manifest off the JSON Schema is refused by the C++ demo (one `error:` line, exit 2, the JSON pointer and the
    fix) before anything runs, and by canvit_runtime too (one line)."""
    artifact = tmp_path / "a"
    shutil.copytree(ir, artifact)
    manifest = mutate_manifest(json.loads((artifact / "manifest.json").read_text()), case)
    (artifact / "manifest.json").write_text(json.dumps(manifest, indent=1))
    np.save(tmp_path / "scene.npy", np.zeros((3, 512, 512), np.float32))
    for args in (["--image", str(tmp_path / "scene.npy"), "--glimpses", "1"], ["--check"]):
        result = run(demo, "--artifact", str(artifact), *args)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
        assert result.stdout == ""
    with pytest.raises(ManifestError) as refused:
        load_manifest(artifact)
    assert "\n" not in str(refused.value)
    assert ("upgrade" if case == "future version" else "re-export") in str(refused.value)


@pytest.mark.parametrize("artifact_kind", ["onnx", "stateful-ir", "stateless-ir", "int8w-ir"])
def test_cpp_validates_every_exported_manifest(demo, ir, stateless_ir, export_artifact, tmp_path, artifact_kind) -> None:
    """Each manifest the exporters write passes the C++ validation (schema, consistency, checksums) as it does the
    Python one, and --check names what it holds."""
    from canvit_export.export.openvino import export_openvino

    onnx = export_artifact("vits16", canvas=16)
    if artifact_kind == "int8w-ir":
        export_openvino(onnx, tmp_path / "int8w", precision="fp32-int8w", quiet=True)
    artifact = {"onnx": onnx, "stateful-ir": ir, "stateless-ir": stateless_ir, "int8w-ir": tmp_path / "int8w"}[artifact_kind]
    manifest = load_manifest(artifact)
    result = run(demo, "--artifact", str(artifact), "--check")
    assert result.returncode == 0, result.stderr
    kind = {"onnx": "onnx", "stateless-ir": "openvino (stateless)"}.get(artifact_kind, "openvino (stateful)")
    assert (f"a valid canvit-export artifact (manifest format 1, files verified): {kind}, precision "
            f"{manifest.precision.name}, batch 1, scene 512 px, canvas 16x16") in result.stdout, result.stdout
    assert manifest.precision.name == ("fp32-int8w" if artifact_kind == "int8w-ir" else "fp32")


def test_cpp_canvas_pca_png(demo, ir, photo, tmp_path) -> None:
    """The PNG's channels are the canvas's top-3 principal components (checked against numpy, up to sign)."""
    from PIL import Image

    np.save(tmp_path / "scene.npy", scene_batch(photo, scene_px=512, batch=1)[0])
    result = run(demo, "--artifact", str(ir), "--image", str(tmp_path / "scene.npy"), "--policy", "c2f",
                 "--glimpses", "5", "--canvas-out", str(tmp_path / "canvas.npy"), "--pca-png", str(tmp_path / "pca.png"))
    assert result.returncode == 0, result.stderr
    image = np.asarray(Image.open(tmp_path / "pca.png"))
    assert image.shape == (16 * 8, 16 * 8, 3)
    tokens = np.load(tmp_path / "canvas.npy")[0, 16:].astype(np.float64)  # [G*G, Dc]
    centered = tokens - tokens.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    reference = centered @ vt[:3].T  # [G*G, 3]
    pixels = image[::8, ::8].reshape(-1, 3).astype(np.float64)
    for k in range(3):
        assert pixels[:, k].std() > 10, f"channel {k} is flat"
        corr = np.corrcoef(pixels[:, k], reference[:, k])[0, 1]
        assert abs(corr) > 0.99, (k, corr)


def test_cpp_unit_tests(build) -> None:
    """The GoogleTest suite (cpp_demo/tests/test_canvit.cpp): policies, viewpoint files, preprocessing, manifests, video."""
    binary = build / "canvit_tests"
    if not binary.exists():
        pytest.skip("GoogleTest is not installed (apt-get install libgtest-dev; scripts/setup.sh does it as root)")
    result = subprocess.run([str(binary), "--gtest_brief=1"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "[  PASSED  ]" in result.stdout and " 0 tests" not in result.stdout, result.stdout[-1000:]


def test_cpp_video_frames_equal_python(demo, ir, tmp_path) -> None:
    """A time-varying scene: each frame of an image sequence is the scene of the next 3 glimpses, the canvas carries
    over; the C++ canvas after 3 frames x 3 glimpses equals the Python runtime's fed the same frames."""
    if not OPENCV_HEADER.exists():
        pytest.skip("OpenCV is not installed (apt-get install libopencv-dev): canvit_demo has no --video")
    import skimage.data
    from PIL import Image

    # 512 x 512 frames: both sides skip the resize (canvit_core.preprocess does when the short side is S already).
    frames = [skimage.data.astronaut(), skimage.data.coffee()[:, 100:500], skimage.data.chelsea()[:, 75:375]]
    for f, frame in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(frame)).resize((512, 512), Image.BILINEAR).save(tmp_path / f"frame_{f:03d}.png")
    viewpoints = make_policy("f-iid", batch=1, glimpses=9, seed=5)
    (tmp_path / "vp.json").write_text(json.dumps(to_json(viewpoints)))
    result = run(demo, "--artifact", str(ir), "--video", str(tmp_path / "frame_%03d.png"), "--glimpses-per-frame", "3",
                 "--policy", str(tmp_path / "vp.json"), "--glimpses", "9", "--canvas-out", str(tmp_path / "canvas.npy"),
                 "--log", str(tmp_path / "log.json"))
    assert result.returncode == 0, result.stderr
    assert "3 frames of image sequence" in result.stdout and "frame decode+preprocess" in result.stdout, result.stdout
    session = canvit_runtime.open(ir, runtime="openvino")
    session.reset()
    for t, v in enumerate(viewpoints):
        scene = scene_batch(tmp_path / f"frame_{t // 3:03d}.png", scene_px=512, batch=1)
        python = session.step(scene, v.centers, v.scales).canvas
    cpp = np.load(tmp_path / "canvas.npy")
    rel = np.linalg.norm(cpp.astype(np.float64) - python) / np.linalg.norm(python)
    assert rel <= 1e-4, rel
    # The frames matter: the same glimpses on the first frame alone give another canvas.
    session.reset()
    still = scene_batch(tmp_path / "frame_000.png", scene_px=512, batch=1)
    for v in viewpoints:
        only_first = session.step(still, v.centers, v.scales).canvas
    assert np.linalg.norm(cpp - only_first) / np.linalg.norm(only_first) > 1e-2
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["video"]["frames"] == 3 and len(log["video"]["frame_ms"]) == 3 and not log["video"]["ended_early"]
    # A video shorter than the glimpses asked for ends the run early, with a note, not an error.
    result = run(demo, "--artifact", str(ir), "--video", str(tmp_path / "frame_%03d.png"), "--glimpses", "12",
                 "--glimpses-per-frame", "2")
    assert result.returncode == 0, result.stderr
    assert "6 glimpses" in result.stdout and "the video ended after 3 frames" in result.stdout, result.stdout


def test_cpp_preprocessing_close_to_pil(demo, ir, tmp_path) -> None:
    """C++ (stb) short-side resize + center crop of real photos is within one 8-bit level of canvit_core's PIL path:
    upscaled (chelsea 451 x 300, coffee 600 x 400), downscaled (chelsea at 1353 x 900), and exact at 512 x 512."""
    import skimage.data
    from canvit_core.preprocess import IMAGENET_STD
    from PIL import Image

    images = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "astronaut": skimage.data.astronaut(),
              "big": np.asarray(Image.fromarray(skimage.data.chelsea()).resize((1353, 900), Image.LANCZOS))}
    std = np.array(IMAGENET_STD, np.float32)[None, :, None, None]
    for name, pixels in images.items():
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        result = run(demo, "--artifact", str(ir), "--image", str(tmp_path / f"{name}.png"), "--glimpses", "1",
                     "--scene-out", str(tmp_path / f"{name}.npy"))
        assert result.returncode == 0, result.stderr
        python = scene_batch(tmp_path / f"{name}.png", scene_px=512, batch=1)
        levels = np.abs(np.load(tmp_path / f"{name}.npy") - python) * std * 255
        assert levels.max() <= 1.0 + 1e-3, (name, levels.max())
        assert levels.mean() <= (0.0 if name == "astronaut" else 0.3), (name, levels.mean())


def test_cpp_policies_run(demo, ir, tmp_path) -> None:
    """f-iid and r-iid run and log valid, seeded viewpoints; a raw canvas output comes with its JSON header."""
    import skimage.data
    from PIL import Image

    from canvit_runtime.policies import check_viewpoints

    Image.fromarray(skimage.data.rocket()).save(tmp_path / "rocket.png")
    logged = {}
    for policy, seed, repeat in (("f-iid", 1, 0), ("f-iid", 1, 1), ("r-iid", 1, 0), ("f-iid", 2, 0)):
        log = tmp_path / f"{policy}-{seed}-{repeat}.json"
        result = run(demo, "--artifact", str(ir), "--image", str(tmp_path / "rocket.png"), "--policy", policy,
                     "--seed", str(seed), "--glimpses", "4", "--log", str(log), "--canvas-out", str(tmp_path / "canvas.f32"))
        assert result.returncode == 0, result.stderr
        logged[(policy, seed, repeat)] = json.loads(log.read_text())["viewpoints"]
    fiid = logged[("f-iid", 1, 0)]
    assert len(fiid) == 4 and fiid == logged[("f-iid", 1, 1)], "seeded"
    assert fiid[0] == [[0.0, 0.0, 1.0]], "F-IID starts with the full scene"
    assert logged[("r-iid", 1, 0)][0][0][2] < 1.0, "R-IID does not"
    assert logged[("f-iid", 2, 0)] != fiid
    for glimpse in fiid + logged[("r-iid", 1, 0)]:  # the Python rule accepts every C++ viewpoint
        check_viewpoints(np.array([g[:2] for g in glimpse]), np.array([g[2] for g in glimpse]), batch=1)
    header = json.loads((tmp_path / "canvas.f32.json").read_text())
    assert header["shape"] == [1, 272, 1024] and header["dtype"] == "float32"
    assert (tmp_path / "canvas.f32").stat().st_size == 272 * 1024 * 4


# --- readouts, EG-C2F and pictures (issue "Readouts and active vision on the device") ---------------------------------

READOUTS = "segmentation,classification"


@pytest.fixture(scope="module")
def readout_artifacts(export_artifact, tmp_path_factory) -> dict[str, Path]:
    """The same seeded ViT-S canvas-16 step with segmentation and classification readouts: ONNX, stateful IR (its
    graph outputs are exactly the readouts) and stateless IR."""
    from canvit_export.export.openvino import export_openvino

    onnx = export_artifact("vits16", canvas=16, readout=READOUTS)
    folder = tmp_path_factory.mktemp("cpp_readouts")
    export_openvino(onnx, folder / "stateful", precision="fp32", quiet=True)
    export_openvino(onnx, folder / "stateless", precision="fp32", stateful=False, quiet=True)
    return {"onnx": onnx, "stateful-ir": folder / "stateful", "stateless-ir": folder / "stateless"}


@pytest.fixture(scope="module")
def scene_npy(photo, tmp_path_factory) -> Path:
    """chelsea, preprocessed by canvit_core (the scene both languages read exactly): [3, 512, 512] float32."""
    path = tmp_path_factory.mktemp("cpp_scene") / "scene.npy"
    np.save(path, scene_batch(photo, scene_px=512, batch=1)[0])
    return path


def one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


@pytest.mark.parametrize(("artifact_kind", "backend"), [("stateful-ir", "openvino"), ("stateless-ir", "openvino"),
                                                      ("onnx", "openvino"), ("onnx", "onnxruntime")])
def test_cpp_eg_c2f_equals_python(demo, readout_artifacts, scene_npy, tmp_path, artifact_kind, backend) -> None:
    """EG-C2F in C++ (entropy read back every glimpse) visits exactly the viewpoints of canvit_runtime's rollout on
    the same artifact, scene and runtime, and its final readouts equal Python's: the same seg_logits argmax map,
    logits and entropy within float noise."""
    from canvit_runtime.rollout import rollout

    if backend not in compiled_backends(demo):
        pytest.skip(f"canvit_demo was built without {backend} (see onnxruntime_release)")
    artifact = readout_artifacts[artifact_kind]
    result = run(demo, "--artifact", str(artifact), "--image", str(scene_npy), "--policy", "eg-c2f", "--glimpses", "21",
                 "--backend", backend, "--log", str(tmp_path / "log.json"), "--readouts-out", str(tmp_path / "readouts"))
    assert result.returncode == 0, result.stderr
    assert "policy eg-c2f" in result.stdout and "eg-c2f entropy+choice" in result.stdout, result.stdout
    session = canvit_runtime.open(artifact, runtime=backend)
    viewpoints, last = rollout(session, np.load(scene_npy)[None], "eg-c2f", glimpses=21)
    cpp = json.loads((tmp_path / "log.json").read_text())
    assert cpp["viewpoints"] == to_json(viewpoints)["viewpoints"]
    assert cpp["readouts"] == ["segmentation", "classification"] and len(cpp["policy_ms"]) == 21
    # Adaptive: the sixteenths are not visited in row-major order (the order all-equal entropies would give).
    level2 = [tuple(v[0][:2]) for v in cpp["viewpoints"][5:21]]
    assert level2 != sorted(level2) and len(set(level2)) == 16
    for name in ("seg_logits", "seg_entropy", "class_logits"):
        ours, python = np.load(tmp_path / "readouts" / f"{name}.npy"), last.extras[name]
        assert ours.shape == python.shape and ours.dtype == np.float32, name
        rel = np.linalg.norm(ours.astype(np.float64) - python) / np.linalg.norm(python)
        assert rel <= 1e-5, (name, rel)
    labels = np.load(tmp_path / "readouts" / "seg_logits.npy").argmax(1)
    assert np.array_equal(labels, last.extras["seg_logits"].argmax(1))


def test_cpp_pictures_and_top_classes(demo, readout_artifacts, scene_npy, tmp_path) -> None:
    """--pictures writes viewpoints.png (S x S), segmentation.png (S + 230 legend px wide) and entropy.png (S + 44 px
    high, the scale bar) laid out as canvit_runtime.pictures draws them (most pixels identical: all but the text),
    and legend.txt lists the classes of Python's final argmax map by area; the top-5 line is Python's."""
    from PIL import Image

    from canvit_runtime.pictures import draw_rollout, top_classes
    from canvit_runtime.rollout import rollout

    artifact = readout_artifacts["stateful-ir"]
    result = run(demo, "--artifact", str(artifact), "--image", str(scene_npy), "--policy", "eg-c2f", "--glimpses", "21",
                 "--pictures", str(tmp_path / "cpp"))
    assert result.returncode == 0, result.stderr
    session = canvit_runtime.open(artifact, runtime="openvino")
    manifest = session.manifest
    scene = np.load(scene_npy)[None]
    viewpoints, last = rollout(session, scene, "eg-c2f", glimpses=21)
    top = top_classes(last.extras["class_logits"][0], manifest.readout("classification").class_names)
    assert "top-5 classes: " + ", ".join(f"{name} {p:.1%}" for name, p in top) in result.stdout, result.stdout
    triples = [(float(v.centers[0, 0]), float(v.centers[0, 1]), float(v.scales[0])) for v in viewpoints]
    draw_rollout(manifest, scene, triples, last.extras, tmp_path / "python")
    sizes = {"viewpoints": (512, 512), "segmentation": (512 + 230, 512), "entropy": (512, 512 + 44)}
    for name, size in sizes.items():
        ours = Image.open(tmp_path / "cpp" / f"{name}.png")
        assert ours.format == "PNG" and ours.mode == "RGB" and ours.size == size, (name, ours.size)
        python = np.asarray(Image.open(tmp_path / "python" / f"{name}.png"))
        same = (np.asarray(ours) == python).all(axis=-1).mean()
        assert same >= 0.9, (name, same)
    labels = last.extras["seg_logits"][0].argmax(0)
    counts = np.bincount(labels.ravel(), minlength=150)
    expected = [(int(c), manifest.readout("segmentation").class_names[c], int(counts[c]))
                for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    rows = [line.split("\t") for line in (tmp_path / "cpp" / "legend.txt").read_text().splitlines()
            if not line.startswith("#")]
    assert [(int(r[0]), r[1], int(r[2])) for r in rows] == expected
    assert f"pictures: {tmp_path / 'cpp' / 'viewpoints.png'}" in result.stdout


def test_cpp_pictures_without_segmentation(demo, ir, scene_npy, tmp_path) -> None:
    """An artifact without readouts: viewpoints.png only, no top-5 line, as canvit-runtime run does."""
    from PIL import Image

    result = run(demo, "--artifact", str(ir), "--image", str(scene_npy), "--policy", "c2f", "--glimpses", "5",
                 "--pictures", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["viewpoints.png"]
    assert Image.open(tmp_path / "p" / "viewpoints.png").size == (512, 512)
    assert "top-5" not in result.stdout


def test_cpp_overlay_video(demo, readout_artifacts, scene_npy, tmp_path) -> None:
    """--overlay-video writes one 512 x 512 frame per glimpse (Motion JPEG AVI), which canvit_demo reads back."""
    if not OPENCV_HEADER.exists():
        pytest.skip("OpenCV is not installed (apt-get install libopencv-dev): canvit_demo has no --overlay-video")
    artifact = readout_artifacts["stateful-ir"]
    result = run(demo, "--artifact", str(artifact), "--image", str(scene_npy), "--policy", "eg-c2f", "--glimpses", "6",
                 "--overlay-video", str(tmp_path / "overlay.avi"))
    assert result.returncode == 0, result.stderr
    again = run(demo, "--artifact", str(artifact), "--video", str(tmp_path / "overlay.avi"), "--glimpses", "10")
    assert again.returncode == 0, again.stderr
    assert "6 frames of video file" in again.stdout and "the video ended after 6 frames" in again.stdout, again.stdout


def canvas_12(manifest: dict) -> dict:
    """A self-consistent manifest for a canvas 12 x 12 (not a power of two) beside the canvas-16 model."""
    manifest["geometry"]["canvas_grid"] = 12
    for pair in manifest["state"]:
        if pair["input"] == "canvas":
            pair["shape"][1] = 16 + 144
    for tensor in manifest["inputs"] + manifest["outputs"]:
        if tensor["name"] in ("canvas", "canvas_next"):
            tensor["shape"][1] = 16 + 144
        elif tensor["name"] in ("seg_logits", "seg_entropy"):
            tensor["shape"][-2:] = [12, 12]
    return manifest


@pytest.mark.parametrize(("case", "needle"), [
    ("no segmentation", "--policy eg-c2f reads the segmentation entropy, and {dir} has no segmentation readout: "
                        "re-export with --readout segmentation"),
    ("canvas 12", "--policy eg-c2f needs a power-of-two canvas grid (its quadtree tiles align with canvas cells); this "
                  "artifact's is 12: re-export with --canvas 16, 32 or 64"),
    ("no readouts out", "--readouts-out: {dir} has no readouts; re-export it with --readout"),
    ("pictures file", "--pictures {tmp}/file.png is a file: pass a folder (created if missing)"),
    ("overlay name", "overlay.gif: name the overlay video *.avi (Motion JPEG) or *.mp4"),
])
def test_cpp_readout_refusals(demo, ir, readout_artifacts, scene_npy, tmp_path, case, needle) -> None:
    """What EG-C2F and the readout outputs cannot run on is refused with one line naming the fix, before any glimpse;
    canvit_runtime refuses the same EG-C2F cases."""
    from canvit_runtime.policies import EntropyGuidedC2F
    from canvit_runtime.rollout import rollout

    artifact = tmp_path / "a"
    shutil.copytree(ir if case in ("no segmentation", "no readouts out") else readout_artifacts["stateful-ir"], artifact)
    args = ["--artifact", str(artifact), "--image", str(scene_npy), "--glimpses", "3", "--policy", "eg-c2f"]
    if case == "canvas 12":
        manifest = canvas_12(json.loads((artifact / "manifest.json").read_text()))
        (artifact / "manifest.json").write_text(json.dumps(manifest, indent=1))
        load_manifest(artifact)  # self-consistent: Python reads it, and refuses EG-C2F on it
        with pytest.raises(ValueError, match="power-of-two canvas grid"):
            EntropyGuidedC2F(batch=1, glimpses=3, canvas_grid=12)
    elif case == "no segmentation":
        with pytest.raises(ValueError, match="has no segmentation readout: re-export with --readout segmentation"):
            rollout(canvit_runtime.open(artifact, runtime="openvino"), np.load(scene_npy)[None], "eg-c2f", glimpses=3)
    elif case == "no readouts out":
        args[-1] = "c2f"
        args += ["--readouts-out", str(tmp_path / "r")]
    elif case == "pictures file":
        (tmp_path / "file.png").write_bytes(b"")
        args += ["--pictures", str(tmp_path / "file.png")]
    elif case == "overlay name":
        if not OPENCV_HEADER.exists():
            pytest.skip("OpenCV is not installed: --overlay-video is refused as not compiled in")
        args += ["--overlay-video", str(tmp_path / "overlay.gif")]
    result = run(demo, *args)
    one_error_line(result, needle.format(dir=artifact, tmp=tmp_path))
    assert "glimpses on" not in result.stdout


@pytest.mark.parametrize("case", bad_manifest_cases(), ids=lambda case: case["case"])
def test_cpp_refuses_the_bad_manifest_corpus(demo, tmp_path, case) -> None:
    """Every case of tests/data/bad_manifests (the contract's rules: readouts, precisions, roles, state pairs, target
    files, caps, file names) is refused by canvit_demo --check with exactly the hand-written line that
    tests/test_contract.py expects from canvit_runtime: one contract, one corpus, the same words."""
    path = write_bad_manifest(case, tmp_path / "artifact")
    result = run(demo, "--artifact", str(path.parent), "--check")
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert result.stderr == "error: " + case["message"].replace("{manifest}", str(path)) + "\n"


@pytest.mark.parametrize("case", bad_manifest_cases("schema_cases"), ids=lambda case: case["case"])
def test_cpp_refuses_the_schema_corpus(demo, tmp_path, case) -> None:
    """The corpus's caps and names that the JSON Schema enforces, in valijson's words (each validator words its own
    schema errors); the base manifest passes every check but the files it does not have."""
    path = write_bad_manifest(case, tmp_path / "artifact")
    result = run(demo, "--artifact", str(path.parent), "--check")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "error: " + case["cpp"].replace("{manifest}", str(path)) + "\n"
    base = write_bad_manifest({"patch": []}, tmp_path / "base")
    result = run(demo, "--artifact", str(base.parent), "--check")
    assert result.stderr == f"error: {base.parent / 'step.onnx'}: missing from the artifact (graph); re-export or re-copy it\n"


# --- untrusted artifacts and paths (issue 25): the C++ side of tests/test_untrusted.py --------------------------
CPP_CORPUS = {
    "FIFO as a listed file": "not a regular file",
    "symlink to /dev/zero, listed as 0 bytes": "not a regular file",
    "manifest.json is a FIFO": "not a plain manifest file",
    "../ in a file entry": "not a plain name inside the artifact folder",
    "absolute file entry": "not a plain name inside the artifact folder",
    "huge canvas grid": "canvas_grid",
    "deeply nested JSON": "manifest",
    "escape sequences in manifest strings": "precision",
    "tensor name breaking out of config.pbtxt": "name",
    "unlisted external data": "weights.data: in the ONNX artifact's folder but not in its manifest",
}


@pytest.mark.parametrize("case", sorted(CPP_CORPUS))
def test_cpp_refuses_hostile_artifacts(demo, export_artifact, tmp_path, case) -> None:
    """The hostile corpus of tests/test_untrusted.py through `canvit_demo --check`, in a child with an address-space
    limit and a kill timeout: one line, exit 2, nothing printed raw."""
    from test_untrusted import CORPUS, copy_artifact, guarded, one_line

    artifact = copy_artifact(export_artifact("vits16", canvas=16), tmp_path / "hostile")
    CORPUS[case][0](artifact)
    result = guarded(demo, "--artifact", artifact, "--check")
    assert result.returncode == 2, (result.stdout[-1000:], result.stderr[-1000:])
    assert CPP_CORPUS[case] in one_line(result.stderr), result.stderr


def test_cpp_manifest_pin(demo, ir, tmp_path) -> None:
    """--manifest-sha256 pins the artifact: the right hash runs, a wrong one (or a rewritten manifest) is one line."""
    import hashlib

    pin = hashlib.sha256((ir / "manifest.json").read_bytes()).hexdigest()
    assert run(demo, "--artifact", str(ir), "--check", "--manifest-sha256", pin.upper()).returncode == 0
    result = run(demo, "--artifact", str(ir), "--check", "--manifest-sha256", "0" * 64)
    assert result.returncode == 2 and f"SHA-256 {pin} is not the pinned {'0' * 64}" in result.stderr, result.stderr


def test_cpp_outputs_never_through_links_nor_into_the_artifact(demo, ir, scene_npy, tmp_path) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text("mine")
    (tmp_path / "link.json").symlink_to(victim)
    for args, needle in ((["--log", str(tmp_path / "link.json")], "is a symbolic link"),
                         (["--canvas-out", str(ir / "canvas.npy")], "is inside the input artifact"),
                         (["--pictures", str(ir / "pictures")], "is inside the input artifact")):
        result = run(demo, "--artifact", str(ir), "--image", str(scene_npy), "--glimpses", "1", *args)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert victim.read_text() == "mine" and not (ir / "pictures").exists() and not (ir / "canvas.npy").exists()


def test_cpp_thin_image_is_refused(demo, ir, tmp_path) -> None:
    from PIL import Image

    Image.new("RGB", (100_000, 1)).save(tmp_path / "thin.png")
    result = run(demo, "--artifact", str(ir), "--image", str(tmp_path / "thin.png"), "--glimpses", "1")
    assert result.returncode == 2 and "100000 x 1 px is more than 16:1" in result.stderr, result.stderr


def test_cpp_ir_runs_the_weights_it_lists(demo, ir, scene_npy, tmp_path) -> None:
    """Before: read_model(xml) read the step.bin beside step.xml whatever the manifest listed. Now the listed weights
    are passed explicitly: with a decoy step.bin the canvas is the real artifact's."""
    from test_untrusted import copy_artifact, relist

    hostile = copy_artifact(ir, tmp_path / "hostile")
    os.rename(hostile / "step.bin", hostile / "listed.bin")
    relist(hostile, "weights", "listed.bin")
    (hostile / "step.bin").write_bytes(np.random.default_rng(0).bytes((hostile / "listed.bin").stat().st_size))
    canvases = []
    for artifact in (ir, hostile):
        out = tmp_path / f"{artifact.name}.npy"
        result = run(demo, "--artifact", str(artifact), "--image", str(scene_npy), "--glimpses", "2", "--canvas-out",
                     str(out))
        assert result.returncode == 0, result.stderr
        canvases.append(np.load(out))
    np.testing.assert_array_equal(canvases[0], canvases[1])


def test_cpp_a_billion_glimpses_are_refused_at_once(demo, ir, scene_npy) -> None:
    result = run(demo, "--artifact", str(ir), "--image", str(scene_npy), "--policy", "f-iid", "--glimpses", "1000000000")
    assert result.returncode == 2 and "--glimpses 1000000000: at most 100000" in result.stderr, result.stderr
