"""canvit-export trt: clean failures and the trtexec command here; engine build and parity where TensorRT runs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from conftest import trtexec_log

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
                       "--engine-out", str(out))
    assert code == 2
    assert output.strip().splitlines() == [output.strip().splitlines()[-1]]  # one line
    assert output.startswith("error: TensorRT is not installed") and "--print-trtexec" in output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_print_trtexec(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    code, output = run("trt", "--artifact", str(artifact), "--precision", "fp16", "--print-trtexec", "--workspace", "2",
                       "--timing-cache", str(tmp_path / "cache.bin"), "--engine-out", str(tmp_path / "e"))
    assert code == 0, output
    command = output.strip()
    assert command.startswith("trtexec ") and "\n" not in command
    for part in (f"--onnx={artifact / 'step.onnx'}", f"--saveEngine={tmp_path / 'e' / 'step.engine'}",
                 "--stronglyTyped", "--memPoolSize=workspace:2048M", f"--timingCacheFile={tmp_path / 'cache.bin'}"):
        assert part in command
    assert "--fp16" not in command, "strongly typed builds take the precision from the graph"


@pytest.mark.parametrize(("precision", "asserted", "needle"), [
    ("fp32", "fp16", "is an fp32 graph and TensorRT builds strongly typed engines from the graph's types: re-export "
                     "with `canvit-export onnx --precision fp16`"),
    ("fp16", "bf16", "re-export with `canvit-export onnx --precision bf16`"),
    ("fp16", "bf16-int8w", "Invalid value for '--precision'"),
])
def test_precision_must_match_the_graph(export_artifact, precision, asserted, needle) -> None:
    """canvit-runtime trt (no torch, so no re-export; canvit-export trt re-exports: test_trt_command) refuses."""
    from canvit_runtime.cli import main as runtime_main

    result = CliRunner().invoke(runtime_main, ["trt", "--artifact", str(export_artifact("vits16", canvas=16,
                                                                                          precision=precision)),
                                               "--precision", asserted, "--print-trtexec"])
    assert result.exit_code == 2 and needle in result.output, result.output


def test_trt_needs_an_onnx_artifact(tmp_path: Path) -> None:
    code, output = run("trt", "--artifact", str(tmp_path / "missing"), "--print-trtexec")
    assert code == 2 and "no such artifact folder" in output


def test_tensorrt_runtime_refuses_an_onnx_artifact(export_artifact) -> None:
    import canvit_runtime

    with pytest.raises((ValueError, canvit_runtime.RuntimeUnavailable), match=r"canvit-export trt|not available"):
        canvit_runtime.open(export_artifact("vits16", canvas=16, precision="fp16"), runtime="tensorrt")


def jetson_build(artifact: Path, tmp_path: Path, **log_options: str) -> tuple[Path, Path]:
    """What a Jetson user does: run the printed trtexec command there (paths as on the device) and keep its log.
    No TensorRT runs here, so the engine file holds placeholder bytes: adoption copies and fingerprints it, and only
    a runner with TensorRT can load (and then checks) it."""
    code, command = run("trt", "--artifact", str(artifact), "--print-trtexec", "--engine-out", "/home/nvidia/canvit/engine")
    assert code == 0, command
    on_device = command.strip().replace("trtexec ", "/usr/src/tensorrt/bin/trtexec ", 1).replace(
        str(artifact), "/home/nvidia/canvit/artifact")
    engine, log = tmp_path / "step.engine", tmp_path / "build.log"
    engine.write_bytes(b"placeholder for trtexec's engine: not loadable")
    log.write_text(trtexec_log(on_device, **log_options))
    return engine, log


@pytest.mark.skipif(HAS_TENSORRT, reason="checks adoption from trtexec's log without TensorRT; tensorrt is installed")
def test_adopt_engine_from_a_trtexec_log(export_artifact, tmp_path: Path) -> None:
    import canvit_runtime
    from canvit_runtime.manifest import TensorRtArtifact, load_manifest, sha256_file

    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    engine, log = jetson_build(artifact, tmp_path)
    out = tmp_path / "adopted"
    code, output = run("trt", "--artifact", str(artifact), "--precision", "fp16", "--adopt-engine", str(engine),
                       "--trtexec-log", str(log), "--engine-out", str(out))
    assert code == 0, output
    assert "TensorRT 10.3.0 engine for Orin (compute capability 8.7)" in output and "trtexec's log" in output
    manifest = load_manifest(out)  # verifies every file's SHA-256
    facts = manifest.artifact
    assert isinstance(facts, TensorRtArtifact)
    assert (facts.builder, facts.checked_with, facts.gpu, facts.compute_capability, facts.tensorrt) == (
        "trtexec", "trtexec-log", "Orin", "8.7", "10.3.0")
    assert facts.workspace_gib == 4.0 and facts.trtexec_command.startswith("/usr/src/tensorrt/bin/trtexec --onnx=")
    assert facts.source.graph_sha256 == load_manifest(artifact).files["graph"].sha256
    assert manifest.files["engine"].sha256 == sha256_file(engine)
    assert (manifest.inputs, manifest.outputs, manifest.precision) == (
        load_manifest(artifact).inputs, load_manifest(artifact).outputs, load_manifest(artifact).precision)
    assert (out / "initial_state.bin").read_bytes() == (artifact / "initial_state.bin").read_bytes()
    assert oct(out.stat().st_mode & 0o777) != oct(0o700), "the artifact folder must not keep mkdtemp's 0700"
    code, output = run("info", str(out))
    assert code == 0 and "built by trtexec, facts from its log (I/O checked at load)" in output, output
    with pytest.raises(canvit_runtime.RuntimeUnavailable, match="runtime 'tensorrt' is not available"):
        canvit_runtime.open(out, runtime="tensorrt")


@pytest.mark.parametrize(("change", "needle"), [
    ("no-log", "pass --trtexec-log LOG"),
    ("failed", "trtexec reports the build FAILED"),
    ("other-engine", "trtexec's --saveEngine was /home/nvidia/canvit/engine/step.engine, not a other.engine"),
    ("not-strongly-typed", "was not built --stronglyTyped"),
    ("cut-short", "no `&&&& PASSED TensorRT.trtexec` line"),
    ("no-gpu-line", "trtexec's log has no gpu line"),
    ("missing-engine", "no such file; build it with the command"),
    ("log-without-engine", "--trtexec-log describes an engine to adopt"),
    ("with-print", "--print-trtexec and --adopt-engine exclude each other"),
    ("precision", "is an fp16 graph"),
])
@pytest.mark.skipif(HAS_TENSORRT, reason="checks adoption from trtexec's log without TensorRT; tensorrt is installed")
def test_adopt_engine_refusals(export_artifact, tmp_path: Path, change: str, needle: str) -> None:
    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    engine, log = jetson_build(artifact, tmp_path, result="FAILED" if change == "failed" else "PASSED")
    text = log.read_text()
    if change == "other-engine":
        engine = engine.rename(tmp_path / "other.engine")
    if change == "not-strongly-typed":
        log.write_text(text.replace(" --stronglyTyped", ""))
    if change == "cut-short":
        log.write_text(text.rsplit("&&&& PASSED", 1)[0])
    if change == "no-gpu-line":
        log.write_text("".join(line for line in text.splitlines(True) if "Selected Device:" not in line))
    args = ["trt", "--artifact", str(artifact), "--adopt-engine", str(engine), "--trtexec-log", str(log),
            "--engine-out", str(tmp_path / "out")]
    if change == "no-log":
        args = args[:5] + args[7:]
    if change == "missing-engine":
        args[4] = str(tmp_path / "missing.engine")
    if change == "log-without-engine":
        args = args[:3] + args[5:]
    if change == "with-print":
        args.append("--print-trtexec")
    if change == "precision":
        args += ["--precision", "bf16"]
    code, output = run(*args)
    assert code == 2 and needle in output, output
    assert output.strip().splitlines() == [output.strip()], "one line"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), "nothing half-written"


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
                       "--engine-out", str(engine_dir))
    if code != 0 and "no usable CUDA GPU" in output:
        pytest.skip(f"tensorrt imports but no GPU is usable: {output.strip()}")
    assert code == 0, output
    adopted = tmp_path / "adopted"  # the same engine adopted as trtexec's would be: checked by TensorRT here
    code, output = run("trt", "--artifact", str(export_artifact("vits16", canvas=16, precision="fp16")),
                       "--adopt-engine", str(engine_dir / "step.engine"), "--engine-out", str(adopted))
    assert code == 0 and "I/O checked by TensorRT" in output, output
    report = parity_command(artifact=engine_dir, runtime="tensorrt", loaded=None, image=photo, policy="c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures
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
