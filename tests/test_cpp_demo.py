"""cpp_demo: built here with CMake against the OpenVINO pip wheel; its canvas equals the Python runtime's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import canvit_runtime
from canvit_runtime.policies import make_policy, to_json
from canvit_runtime.preprocess import scene_batch

ROOT = Path(__file__).resolve().parents[1]
HEADERS = [Path("/usr/include/nlohmann/json.hpp"), Path("/usr/include/stb/stb_image.h"), Path("/usr/include/openssl/evp.h")]


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    if missing := [str(h) for h in HEADERS if not h.exists()]:
        pytest.skip(f"missing headers {missing}: apt-get install nlohmann-json3-dev libstb-dev libssl-dev "
                    f"(scripts/setup.sh does it as root)")
    import openvino

    build = tmp_path_factory.mktemp("cpp_build")
    openvino_dir = Path(openvino.__file__).parent / "cmake"
    for command in (["cmake", "-S", str(ROOT / "cpp_demo"), "-B", str(build), f"-DOpenVINO_DIR={openvino_dir}"],
                    ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return build / "canvit_demo"


@pytest.fixture(scope="module")
def ir(export_artifact, tmp_path_factory) -> Path:
    from canvit_export.export.openvino import export_openvino

    out = tmp_path_factory.mktemp("cpp_ir") / "ir"
    export_openvino(export_artifact("vits16", canvas=16), out, precision="fp32", quiet=True)
    return out


def run(demo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(demo), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("artifact_kind", ["stateful-ir", "onnx"])
def test_cpp_canvas_equals_python(demo, ir, export_artifact, photo, tmp_path, artifact_kind) -> None:
    artifact = ir if artifact_kind == "stateful-ir" else export_artifact("vits16", canvas=16)
    viewpoints = make_policy("f-iid", batch=1, glimpses=8, seed=3)
    (tmp_path / "vp.json").write_text(json.dumps(to_json(viewpoints)))
    scene = scene_batch(photo, scene_px=512, batch=1)
    np.save(tmp_path / "scene.npy", scene[0])
    result = run(demo, "--artifact", str(artifact), "--image", str(tmp_path / "scene.npy"), "--policy",
                 str(tmp_path / "vp.json"), "--glimpses", "8", "--canvas-out", str(tmp_path / "canvas.npy"),
                 "--log", str(tmp_path / "log.json"))
    assert result.returncode == 0, result.stderr
    assert "median ms" in result.stdout and "glimpses/s" in result.stdout
    cpp = np.load(tmp_path / "canvas.npy")
    session = canvit_runtime.open(artifact, runtime="openvino")
    for v in viewpoints:
        python = session.step(scene, v.centers, v.scales).canvas
    assert cpp.shape == python.shape == (1, 16 + 256, 1024)
    rel = np.linalg.norm(cpp.astype(np.float64) - python) / np.linalg.norm(python)
    assert rel <= 1e-4, rel
    initial = session.manifest.initial_state(1)["canvas"]
    assert np.linalg.norm(cpp - initial) > 0.5 * np.linalg.norm(initial), "eight glimpses moved the canvas"
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log["step_ms"]) == 8 and log["median_ms"] > 0


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
    ("version", "manifest version 2"),
    ("viewpoint", "leaves the scene"),
    ("image", "cannot read the image"),
    ("backend", "backend 'tensorrt' is not compiled into this canvit_demo"),
    ("unknown", "unknown backend 'tflite'"),
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
    else:
        args += ["--backend", "tensorrt" if case == "backend" else "tflite"]
    result = run(demo, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


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
