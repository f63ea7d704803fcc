"""canvit-export trt: clean failures and the trtexec command here; engine build and parity where TensorRT runs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from canvit_export.cli import main

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt cannot be imported here (no NVIDIA GPU; "
                                    "PyPI's tensorrt-cu1x-libs download from another index)")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the failure without TensorRT; tensorrt is installed here")
def test_trt_fails_cleanly_without_tensorrt(export_artifact, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    code, output = run("trt", "--artifact", str(export_artifact("vits16", canvas=16, precision="fp16")), "--precision", "fp16",
                       "--out", str(out))
    assert code == 2
    assert output.strip().splitlines() == [output.strip().splitlines()[-1]]  # one line
    assert output.startswith("error: TensorRT is not installed") and "--print-trtexec" in output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_print_trtexec(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    code, output = run("trt", "--artifact", str(artifact), "--precision", "fp16", "--print-trtexec", "--workspace", "2",
                       "--timing-cache", str(tmp_path / "cache.bin"), "--out", str(tmp_path / "e"))
    assert code == 0, output
    command = output.strip()
    assert command.startswith("trtexec ") and "\n" not in command
    for part in (f"--onnx={artifact / 'step.onnx'}", f"--saveEngine={tmp_path / 'e' / 'step.engine'}",
                 "--stronglyTyped", "--memPoolSize=workspace:2048M", f"--timingCacheFile={tmp_path / 'cache.bin'}"):
        assert part in command
    assert "--fp16" not in command, "strongly typed builds take the precision from the graph"


@pytest.mark.parametrize(("precision", "asserted", "needle"), [
    ("fp32", "fp16", "is a fp32 graph and TensorRT builds strongly typed engines from the graph's types: re-export "
                     "with `canvit-export onnx --precision fp16`"),
    ("fp16", "bf16", "re-export with `canvit-export onnx --precision bf16`"),
    ("fp16", "bf16-int8w", "Invalid value for '--precision'"),
])
def test_precision_must_match_the_graph(export_artifact, precision, asserted, needle) -> None:
    code, output = run("trt", "--artifact", str(export_artifact("vits16", canvas=16, precision=precision)),
                       "--precision", asserted, "--print-trtexec")
    assert code == 2 and needle in output, output


def test_trt_needs_an_onnx_artifact(tmp_path: Path) -> None:
    code, output = run("trt", "--artifact", str(tmp_path / "missing"), "--print-trtexec")
    assert code == 2 and "no such artifact folder" in output


def test_tensorrt_runtime_refuses_an_onnx_artifact(export_artifact) -> None:
    import canvit_runtime

    with pytest.raises((ValueError, canvit_runtime.RuntimeUnavailable), match=r"canvit-export trt|not available"):
        canvit_runtime.open(export_artifact("vits16", canvas=16, precision="fp16"), runtime="tensorrt")


@needs_tensorrt
def test_engine_parity_with_device_state(export_artifact, photo, tmp_path: Path) -> None:
    """The engine against PyTorch over 21 C2F glimpses; then the CUDA-graph replay against plain enqueues, glimpse by
    glimpse (same engine, same inputs: equal to the last bit, as a graph replays the same kernels)."""
    import canvit_runtime
    from canvit_export.parity import parity_command
    from canvit_runtime.policies import make_policy
    from canvit_runtime.preprocess import scene_batch

    engine_dir = tmp_path / "engine"
    code, output = run("trt", "--artifact", str(export_artifact("vits16", canvas=16, precision="fp16")), "--precision", "fp16",
                       "--out", str(engine_dir))
    if code != 0 and "no usable CUDA GPU" in output:
        pytest.skip(f"tensorrt imports but no GPU is usable: {output.strip()}")
    assert code == 0, output
    report = parity_command(artifact=engine_dir, runtime="tensorrt", loaded=None, image=photo, policy="c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report["passed"], report["failures"]
    plain = canvit_runtime.open(engine_dir, runtime="tensorrt", cuda_graph=False)
    graph = canvit_runtime.open(engine_dir, runtime="tensorrt", cuda_graph=True)
    scene = scene_batch(photo, scene_px=512, batch=1)
    for v in make_policy("c2f", batch=1, glimpses=5, seed=0):
        expected, got = plain.step(scene, v.centers, v.scales), graph.step(scene, v.centers, v.scales)
        assert np.array_equal(expected.canvas, got.canvas) and np.array_equal(expected.recurrent_cls, got.recurrent_cls)
    assert got.canvas.shape == (1, 16 + 256, 1024)
    old = graph.step(scene, v.centers, v.scales)
    graph.step(scene, v.centers, v.scales)
    with pytest.raises(RuntimeError, match="overwritten by a later step"):
        old.canvas  # noqa: B018 (device state of an old step)
    shutil.rmtree(engine_dir)
