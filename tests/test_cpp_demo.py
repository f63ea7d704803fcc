"""cpp_demo: built here with CMake against the OpenVINO pip wheel; its canvas equals the Python runtime's, and it
validates every manifest against the same JSON Schema as canvit_runtime (runtimes/canvit_runtime/manifest.schema.json,
embedded at build time)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import mutate_manifest

import canvit_runtime
from canvit_runtime.manifest import ManifestError, load_manifest
from canvit_runtime.policies import make_policy, to_json
from canvit_runtime.preprocess import scene_batch

ROOT = Path(__file__).resolve().parents[1]
OPENCV_HEADER = Path("/usr/include/opencv4/opencv2/videoio.hpp")
HEADERS = [Path("/usr/include/nlohmann/json.hpp"), Path("/usr/include/stb/stb_image.h"), Path("/usr/include/openssl/evp.h"),
           Path("/usr/include/valijson/validator.hpp")]


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Path:
    """The CMake build folder: canvit_demo, and canvit_tests where GoogleTest is installed."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    if missing := [str(h) for h in HEADERS if not h.exists()]:
        pytest.skip(f"missing headers {missing}: apt-get install nlohmann-json3-dev libstb-dev libssl-dev "
                    f"libvalijson-dev (scripts/setup.sh does it as root)")
    import openvino

    folder = tmp_path_factory.mktemp("cpp_build")
    openvino_dir = Path(openvino.__file__).parent / "cmake"
    for command in (["cmake", "-S", str(ROOT / "cpp_demo"), "-B", str(folder), f"-DOpenVINO_DIR={openvino_dir}"],
                    ["cmake", "--build", str(folder), "-j2"]):
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
