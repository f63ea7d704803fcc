"""canvit_runtime: torch-free, checks its inputs, carries and resets the state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import canvit_runtime
from canvit_runtime.preprocess import scene_batch

BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("canvit_export") or name.startswith("canvit_pytorch"):
            raise ImportError(f"{name} is made unimportable by this test")
sys.meta_path.insert(0, BlockTorch())
"""


def test_runtime_runs_without_torch(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16)
    script = BLOCK_TORCH + f"""
import numpy as np, skimage.data
import canvit_runtime
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")
session = canvit_runtime.open({str(artifact)!r})
scene = scene_batch(skimage.data.astronaut(), scene_px=512, batch=1)
for vp in make_policy("c2f", batch=1, glimpses=3, seed=0):
    result = session.step(scene, vp.centers, vp.scales)
np.save({str(tmp_path / "canvas.npy")!r}, result.canvas)
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("ran without torch")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "ran without torch" in result.stdout
    assert np.load(tmp_path / "canvas.npy").shape == (1, 16 + 256, 1024)


@pytest.fixture(scope="module")
def session(export_artifact):
    return canvit_runtime.open(export_artifact("vits16", canvas=16), runtime="onnxruntime", threads=2)


@pytest.fixture(scope="module")
def scene(photo) -> np.ndarray:
    return scene_batch(photo, scene_px=512, batch=1)


@pytest.mark.parametrize(("centers", "scales", "needle"), [
    ([[0.0, 0.0]], [0.0], "scale 0.0 is outside (0, 1]"),
    ([[0.0, 0.0]], [1.5], "scale 1.5 is outside"),
    ([[0.6, 0.0]], [0.5], "leaves the scene"),
    ([[0.0, -0.9]], [0.5], "leaves the scene"),
    ([[float("nan"), 0.0]], [0.5], "not finite"),
    ([[0.0, 0.0]], [float("inf")], "not finite"),
    ([[0.0, 0.0, 0.0]], [0.5], "centers must have shape [1, 2]"),
    ([[0.0, 0.0]], [0.5, 0.5], "scales must have shape [1]"),
])
def test_invalid_viewpoints_are_rejected(session, scene, centers, scales, needle) -> None:
    before = session.state("canvas")
    with pytest.raises(ValueError) as error:
        session.step(scene, np.array(centers, np.float32), np.array(scales, np.float32))
    assert needle in str(error.value)
    assert session.state("canvas") is before, "a rejected step must not touch the state"


def test_bad_scenes_are_rejected(session, scene) -> None:
    centers, scales = np.zeros((1, 2), np.float32), np.ones(1, np.float32)
    with pytest.raises(ValueError, match=r"shape \[1, 3, 256, 256\].*\[1, 3, 512, 512\]"):
        session.step(np.zeros((1, 3, 256, 256), np.float32), centers, scales)
    with pytest.raises(ValueError, match="dtype float64"):
        session.step(scene.astype(np.float64), centers, scales)
    with pytest.raises(ValueError, match="batch 1; re-export with --batch 2"):
        session.reset(batch_size=2)


def test_state_is_carried_and_reset(session, scene) -> None:
    full = (np.zeros((1, 2), np.float32), np.ones(1, np.float32))
    quadrant = (np.array([[0.5, -0.5]], np.float32), np.array([0.5], np.float32))
    session.reset()
    first = session.step(scene, *full).canvas.copy()
    second = session.step(scene, *quadrant).canvas.copy()
    assert not np.allclose(first, second)
    session.reset()
    np.testing.assert_array_equal(session.state("canvas"), session.manifest.initial_state_arrays(1)["canvas"])
    again = session.step(scene, *full).canvas
    np.testing.assert_array_equal(again, first)
    # The same glimpse from another state gives another canvas: the state input is used.
    session.reset()
    session.step(scene, *quadrant)
    assert not np.allclose(session.step(scene, *full).canvas, first)


def test_glimpse_output_is_the_crop(tmp_path, vits16) -> None:
    """With --glimpse-output, the extra output is the bilinear crop at the viewpoint (a runtime extra)."""
    from canvit_export.export.artifact import Geometry
    from canvit_export.export.onnx import export_onnx

    out = tmp_path / "g"
    export_onnx(vits16, Geometry(batch=1, scene_px=256, glimpse_px=128, canvas_grid=8), out, glimpse_output=True, quiet=True)
    runner = canvit_runtime.open(out)
    scene = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    result = runner.step(scene, np.array([[0.0, 0.0]], np.float32), np.array([1.0], np.float32))
    glimpse = result.extras["glimpse"]
    assert glimpse.shape == (1, 3, 128, 128)
    # Full-scene viewpoint at half resolution: bilinear with align_corners=False averages 2x2 pixel blocks.
    expected = scene.reshape(1, 3, 128, 2, 128, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(glimpse, expected, atol=1e-5)


def test_unknown_runtime_is_refused(export_artifact) -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        canvit_runtime.open(export_artifact("vits16", canvas=16), runtime="tflite")


def test_each_runner_runs_the_targets_of_the_one_table(export_artifact, tmp_path: Path) -> None:
    """base.TARGETS names every runtime of canvit_runtime.open; a runner refuses a target outside its row before
    loading anything (the ONNX artifact on TensorRT and Core ML, an IR on ONNX Runtime) and runs those inside it."""
    import importlib

    from canvit_runtime.base import TARGETS
    from canvit_runtime.manifest import ManifestError

    assert set(TARGETS) == set(canvit_runtime.RUNNERS)
    assert TARGETS["openvino"] == ("openvino", "onnx") and TARGETS["onnxruntime"] == ("onnx",)
    onnx_artifact = export_artifact("vits16", canvas=8)
    for runtime in ("tensorrt", "coreml"):
        assert "onnx" not in TARGETS[runtime]
        with pytest.raises(ManifestError, match=r"is an ONNX artifact; (TensorRT runs engine|Core ML runs mlpackages)"):
            module, name, _ = canvit_runtime.RUNNERS[runtime]
            getattr(importlib.import_module(module), name)(canvit_runtime.load_manifest(onnx_artifact))
    from canvit_export.export.openvino import export_openvino

    ir = export_openvino(onnx_artifact, tmp_path / "ir", precision="fp32", quiet=True).directory
    with pytest.raises(ManifestError, match="is an OpenVINO IR artifact; ONNX Runtime runs ONNX artifacts"):
        canvit_runtime.open(ir, runtime="onnxruntime")
    for target_dir in (onnx_artifact, ir):
        canvit_runtime.open(target_dir, runtime="openvino").close()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runner_close_and_context_manager(export_artifact, runtime: str) -> None:
    """close() drops the backend's session or compiled model (the attributes the runner names), idempotently; a step
    or reset after it is one clear ValueError; `with` closes on exit."""
    import canvit_runtime

    artifact = export_artifact("vits16", canvas=16)
    with canvit_runtime.open(artifact, runtime=runtime, threads=1) as runner:
        scene = np.zeros((1, 3, 512, 512), np.float32)
        runner.step(scene, np.zeros((1, 2), np.float32), np.ones(1, np.float32))
        assert runner.released and all(getattr(runner, name) is not None for name in runner.released)
    assert all(getattr(runner, name) is None for name in runner.released)
    runner.close()  # idempotent
    with pytest.raises(ValueError, match="was closed: open the artifact again"):
        runner.step(scene, np.zeros((1, 2), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="was closed"):
        runner.reset()
