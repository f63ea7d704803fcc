"""canvit-runtime as a device installs it: its wheel, built from runtimes/, installed into a fresh venv with only the
onnxruntime extra, under Python 3.12 and 3.10 (JetPack 6's). It runs an artifact there without torch, and gives the
same canvas as the runtime in canvit-export's own environment; and the Jetson route's engine steps work there
(docs/tensorrt.md, "On a Jetson"): building an engine refuses cleanly without TensorRT, `--print-trtexec` prints the build,
and an engine trtexec built is adopted with its manifest."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import canvit_runtime
from canvit_runtime.policies import make_policy, to_json
from canvit_runtime.preprocess import scene_batch
from conftest import trtexec_log

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "canvit-pytorch", "canvit-core", "canvit-export", "matplotlib", "scikit-image")


def find_python(version: str) -> str | None:
    """An interpreter of that minor version: on the PATH, or under pyenv."""
    found = shutil.which(f"python{version}")
    candidates = [found] if found else []
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def run(*args: str | Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, REPO / "runtimes")
    assert result.returncode == 0, result.stderr[-2000:]
    (built,) = out.glob("canvit_runtime-*.whl")
    return built


def test_wheel_holds_the_runtime_and_its_schema_only(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "canvit_runtime/manifest.schema.json" in names and "canvit_runtime/manifest.py" in names
    assert "canvit_runtime/manifest.contract.json" in names  # the rules beyond the schema, read by the C++ demo too
    assert not [n for n in names if n.startswith(("canvit_export", "tests", "cpp_demo"))], names
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("METADATA"))
    assert "Requires-Python: >=3.10" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    # By distribution name: executorch-numpy-runtime (the torch-free .pte runner) is not torch.
    names = {re.split(r"[\s\[;<>=!~(]", r.removeprefix("Requires-Dist:").strip(), maxsplit=1)[0].lower().replace("_", "-")
             for r in requires}
    assert "onnxruntime" in names and "executorch-numpy-runtime" in names, names  # the name parse reads real names
    assert not names & set(FORBIDDEN), requires


@pytest.mark.parametrize("version", ["3.12", "3.10"])
def test_fresh_venv_runs_an_artifact_without_torch(wheel: Path, export_artifact, photo, tmp_path: Path,
                                                   version: str) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter here (looked for python{version} on the PATH and under "
                    f"~/.pyenv/versions/{version}.*)")
    venv = tmp_path / "venv"
    assert run(python, "-m", "venv", venv).returncode == 0
    pip = run(venv / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              f"{wheel}[onnxruntime]")
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = run(venv / "bin/python", "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert not [f for f in FORBIDDEN if f"\n{f}==" in f"\n{installed}"], installed
    assert run(venv / "bin/python", "-c", "import torch").returncode != 0, "torch must not be importable there"

    artifact = export_artifact("vits16", canvas=16)
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "photo.png")
    viewpoints = make_policy("f-iid", batch=1, glimpses=8, seed=3)
    (tmp_path / "viewpoints.json").write_text(json.dumps(to_json(viewpoints)))
    result = run(venv / "bin/canvit-runtime", "run", "--artifact", artifact, "--image", tmp_path / "photo.png",
                 "--policy", tmp_path / "viewpoints.json", "--glimpses", "8", "--threads", "2",
                 "--canvas-out", tmp_path / "canvas.npy", "--cls-out", tmp_path / "cls.npy")
    assert result.returncode == 0, result.stderr
    assert "8 glimpses of photo.png on onnxruntime (fp32)" in result.stdout, result.stdout

    session = canvit_runtime.open(artifact, runtime="onnxruntime", threads=2)  # this environment's runtime
    scene = scene_batch(photo, scene_px=session.manifest.scene_px, batch=1)
    for v in viewpoints:
        expected = session.step(scene, v.centers, v.scales)
    canvas, cls = np.load(tmp_path / "canvas.npy"), np.load(tmp_path / "cls.npy")
    # Another onnxruntime/numpy release may order float32 sums differently: far below the fp32 parity bar (1e-4).
    assert np.linalg.norm(canvas - expected.canvas) / np.linalg.norm(expected.canvas) < 1e-5
    assert np.linalg.norm(cls - expected.recurrent_cls) / np.linalg.norm(expected.recurrent_cls) < 1e-5

    bad = run(venv / "bin/canvit-runtime", "run", "--artifact", tmp_path / "nowhere", "--image", tmp_path / "photo.png")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()], bad.stderr
    assert bad.stderr.startswith("error: ") and "no such artifact folder" in bad.stderr

    # The Jetson route's engine steps, in this venv (no TensorRT: JetPack's comes from python3-libnvinfer).
    fp16 = export_artifact("vits16", canvas=16, precision="fp16")
    cli = venv / "bin/canvit-runtime"
    build = run(cli, "trt", "--artifact", fp16, "--precision", "fp16", "--out", tmp_path / "engine")
    assert build.returncode == 2 and build.stderr.startswith("error: TensorRT is not installed"), build.stderr
    assert build.stderr.strip().splitlines() == [build.stderr.strip()] and not (tmp_path / "engine").exists()
    printed = run(cli, "trt", "--artifact", fp16, "--print-trtexec", "--out", tmp_path / "engine")
    assert printed.returncode == 0 and printed.stdout.startswith("trtexec --onnx="), printed.stderr
    (tmp_path / "engine.bin").write_bytes(b"placeholder for the engine trtexec writes on the device")
    (tmp_path / "build.log").write_text(trtexec_log(printed.stdout.strip().replace("step.engine", "engine.bin")))
    adopt = run(cli, "trt", "--artifact", fp16, "--adopt-engine", tmp_path / "engine.bin", "--trtexec-log",
                tmp_path / "build.log", "--out", tmp_path / "engine")
    assert adopt.returncode == 0, adopt.stderr
    assert "TensorRT 10.3.0 engine for Orin (compute capability 8.7)" in adopt.stdout, adopt.stdout
    info = run(cli, "info", tmp_path / "engine")
    assert info.returncode == 0 and "built by trtexec" in info.stdout and "SHA-256 verified" in info.stdout, info.stdout
    refused = run(cli, "run", "--artifact", tmp_path / "engine", "--image", tmp_path / "photo.png", "--runtime",
                  "tensorrt")
    assert refused.returncode == 2 and "runtime 'tensorrt' is not available" in refused.stderr, refused.stderr
