"""Core ML: conversion here (Linux converts; only macOS predicts), the spec against the manifest, the MIL audit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from canvit_export.export.artifact import Geometry
from canvit_export.step import INPUT_NAMES, GlimpseStep
from canvit_runtime.manifest import CoreMLArtifact
from conftest import manifest_round_trip

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install canvit-export[coreml])")
from canvit_export.export.coreml import audit_mil, convert, export_coreml  # noqa: E402

FLOAT32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
FLOAT16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
GEOMETRY = Geometry(batch=1, scene_px=512, glimpse_px=128, canvas_grid=16)


@pytest.fixture(scope="module")
def packages(vits16, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    export_coreml(vits16, GEOMETRY, root / "fp16", precision="fp16", quiet=True)
    export_coreml(vits16, GEOMETRY, root / "stateful", precision="fp16", stateful=True, quiet=True)
    return {"fp16": root / "fp16", "stateful": root / "stateful"}


def spec_io(path: Path) -> tuple[dict, dict, dict]:
    spec = ct.models.MLModel(str(path / "step.mlpackage"), skip_model_load=True).get_spec()
    def shape_type(feature):
        return list(feature.type.multiArrayType.shape), feature.type.multiArrayType.dataType
    return ({f.name: shape_type(f) for f in spec.description.input},
            {f.name: shape_type(f) for f in spec.description.output},
            {f.name: (list(f.type.stateType.arrayType.shape), f.type.stateType.arrayType.dataType)
             for f in spec.description.state})


def test_spec_equals_manifest(packages) -> None:
    manifest = manifest_round_trip(packages["fp16"])  # also verifies the package folder's SHA-256
    inputs, outputs, states = spec_io(packages["fp16"])
    assert inputs == {t.name: (list(t.shape), FLOAT32) for t in manifest.inputs}
    assert outputs == {t.name: (list(t.shape), FLOAT32) for t in manifest.outputs}
    assert states == {}
    facts = manifest.artifact
    assert isinstance(facts, CoreMLArtifact) and facts.format == "mlprogram" and not facts.stateful
    assert manifest.precision.name == "fp16" and manifest.precision.follows_float32_rule
    assert manifest.precision.matmul_dtype == "float16"
    audit = facts.mil_audit
    assert not audit.violations and len(audit.canvas_stream) == 4 and audit.coordinate_ops > 10
    # fp16 weights: about half the fp32 ONNX export of the same model
    assert manifest.files["package"].bytes < 60e6


def test_stateful_package(packages) -> None:
    manifest = manifest_round_trip(packages["stateful"])
    inputs, outputs, states = spec_io(packages["stateful"])
    assert set(inputs) == {"scene", "recurrent_cls", "centers", "scales", "reset"}
    assert set(outputs) == {"recurrent_cls_next"}
    # fp16 (coremltools stores states so); 16 + 256 = 272 rows padded to 288, 9 x 32, for the Neural Engine
    assert states == {"canvas": ([1, 288, 1024], FLOAT16)}, "coremltools stores states in fp16, padded rows"
    assert manifest.state[0].shape == [1, 272, 1024] and manifest.state[0].storage_shape == [1, 288, 1024]
    facts = manifest.artifact
    assert isinstance(facts, CoreMLArtifact) and facts.stateful and facts.min_target == "iOS18"
    assert not manifest.precision.follows_float32_rule and manifest.precision.state_storage == "float16"
    assert manifest.state[0].core_ml_state == "canvas" and manifest.state[0].storage_dtype == "float16"
    assert [t.name for t in manifest.inputs if t.role == "reset"] == ["reset"]
    assert not facts.mil_audit.violations, "the computation on the canvas stays fp32"


def test_mil_audit_catches_coremltools_fp16_compute_precision(vits16) -> None:
    """coremltools' default compute precision (FLOAT16 for every op) on the fp32 step narrows the canvas path;
    the MIL audit must say so. This is why the export keeps FLOAT32 and the step's own casts."""
    step = GlimpseStep(vits16.canvit, glimpse_px=128, canvas_grid=8).eval()
    example = step.example_inputs(batch=1, scene_px=256)
    mlmodel = convert(step, tuple(example), list(INPUT_NAMES), ["canvas_next", "recurrent_cls_next"],
                      min_target="iOS17", state_shape=None, compute_precision=ct.precision.FLOAT16)
    audit = audit_mil(mlmodel._mil_program)
    assert any("fp16" in v for v in audit["violations"]), audit["violations"]
    assert any(("sin" in v or "cos" in v or "coordinate" in v) for v in audit["violations"]), audit["violations"]


def test_readouts_convert_and_the_audit_covers_them(vits16, tmp_path) -> None:
    """Readouts are outputs of the same ML program, stateless and stateful, in fp32 (MIL audit); coremltools' FLOAT16
    compute precision narrows the readout path and the audit says so."""
    from canvit_export.readouts import load_heads

    heads = load_heads(vits16, ["segmentation", "classification"], probe=None, seed=0)
    for stateful in (False, True):
        out = tmp_path / f"r{stateful}"
        export_coreml(vits16, GEOMETRY, out, precision="fp16", stateful=stateful, heads=heads, quiet=True)
        manifest = manifest_round_trip(out)
        _, outputs, _ = spec_io(out)
        assert {"seg_logits", "seg_entropy", "class_logits"} <= set(outputs)
        assert outputs["seg_logits"] == ([1, 150, 16, 16], FLOAT32) and outputs["seg_entropy"] == ([1, 16, 16], FLOAT32)
        assert [r.name for r in manifest.readouts] == ["segmentation", "classification"]
    step = GlimpseStep(vits16.canvit, glimpse_px=128, canvas_grid=8, heads=heads).eval()
    example = step.example_inputs(batch=1, scene_px=256)
    mlmodel = convert(step, tuple(example), list(INPUT_NAMES), list(step.output_names), min_target="iOS17",
                      state_shape=None, compute_precision=ct.precision.FLOAT16)
    audit = audit_mil(mlmodel._mil_program, readouts=list(step.readout_names))
    assert any(v.startswith("readout seg_logits depends on") and "fp16" in v for v in audit["violations"])


@pytest.mark.slow
def test_vitb16_converts(tmp_path) -> None:
    from canvit_export.source import load

    manifest = export_coreml(load(None, random_weights=True, backbone="vitb16", seed=0), GEOMETRY, tmp_path / "b",
                             precision="fp16", quiet=True)
    assert isinstance(manifest.artifact, CoreMLArtifact) and not manifest.artifact.mil_audit.violations
    assert manifest.architecture.backbone == "vitb16" and manifest.files["package"].bytes > 150e6


@pytest.mark.parametrize(("args", "needle"), [
    (["--precision", "bf16"], "Invalid value for '--precision'"),
    (["--min-target", "iOS16"], "Invalid value for '--min-target'"),
    (["--stateful", "--min-target", "iOS17"], "error: --stateful needs Core ML states, from iOS18/macOS15"),
])
def test_bad_coreml_options(tmp_path, args, needle) -> None:
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["coreml", "--random-weights", "--backbone", "vits16", "--canvas", "8",
                                       *args, "--out", str(out)])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not out.exists()


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts on macOS only; conversion is tested above")
@pytest.mark.parametrize("kind", ["fp16", "stateful"])
def test_coreml_parity(packages, photo, tmp_path, kind) -> None:
    from canvit_export.parity import parity_command

    report = parity_command(artifact=packages[kind], runtime="coreml", loaded=None, image=photo, policy="c2f",
                            glimpses=10, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures


def test_coreml_runtime_refused_off_macos(packages) -> None:
    import canvit_runtime

    if sys.platform == "darwin":
        pytest.skip("on macOS the Core ML runner runs (see test_coreml_parity)")
    with pytest.raises(canvit_runtime.RuntimeUnavailable, match="Core ML predicts on macOS only"):
        canvit_runtime.open(packages["fp16"], runtime="coreml")


def test_padded_state_is_the_canvas_in_torch(vits16, photo) -> None:
    """The stateful module that coremltools converts (StatefulStep, its canvas state padded to multiples of 32 for the
    Neural Engine), run in PyTorch over 4 glimpses against canvit-pytorch's own step (reference_step) fed the same
    fp16-rounded canvas: the state's leading block is the canvas, the padding stays zero, the recurrent CLS agrees.
    (Core ML itself predicts on macOS only: this checks the slicing that the conversion carries.)"""
    import torch

    from canvit_export.export.coreml import StatefulStep
    from canvit_export.step import reference_step
    from canvit_runtime.policies import make_policy
    from canvit_runtime.preprocess import scene_batch

    canvit = vits16.canvit
    step = GlimpseStep(canvit, glimpse_px=128, canvas_grid=16, precision=None).eval()
    stateful = StatefulStep(step, batch=1).eval()
    assert tuple(stateful.canvas.shape) == (1, 288, 1024)
    scene = torch.from_numpy(scene_batch(photo, scene_px=512, batch=1))
    init = canvit.init_state(batch_size=1, canvas_grid_size=16)
    canvas, cls = init.canvas.detach().float(), init.recurrent_cls.detach().float()
    with torch.no_grad():
        for t, v in enumerate(make_policy("c2f", batch=1, glimpses=4, seed=0)):
            centers, scales = torch.from_numpy(v.centers), torch.from_numpy(v.scales)
            cls_next = stateful(scene, cls, centers, scales, torch.full((1,), 1.0 if t == 0 else 0.0))[0]
            canvas, ref_cls = reference_step(canvit, scene, canvas, cls, centers, scales, glimpse_px=128)
            canvas = canvas.half().float()  # the state's storage
            assert torch.equal(stateful.canvas[:, :272].float(), canvas), f"glimpse {t}: the state's leading block"
            assert not stateful.canvas[:, 272:].any(), f"glimpse {t}: the padding rows stay zero"
            assert torch.allclose(cls_next, ref_cls, rtol=1e-4, atol=1e-4), f"glimpse {t}: recurrent CLS"
            cls = ref_cls


def test_coremltools_import_notices_are_silenced_and_real_warnings_kept() -> None:
    """coremltools' import-time notices (scikit-learn and torch versions, Linux's missing libcoremlpython: 10 lines
    before each export) are dropped; a warning of its own after import still reaches stderr."""
    import subprocess

    code = ("import logging\nfrom canvit_runtime.coreml import import_coremltools\nimport_coremltools()\n"
            "logging.getLogger('coremltools').warning('a real coremltools warning')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stderr.strip().splitlines() == ["a real coremltools warning"], result.stderr
    bare = subprocess.run([sys.executable, "-c", "import coremltools"], capture_output=True, text=True, timeout=300,
                          check=False)
    if sys.platform != "darwin":  # the notices exist, so the first assertion proves something
        assert "Failed to load _MLModelProxy" in bare.stderr, bare.stderr
