"""ONNX export: parity against canvit-pytorch on a real photo, the graph audit, the manifest, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from canvit_export.errors import ExportError
from canvit_export.export import onnx as onnx_target
from canvit_export.export.artifact import Geometry
from canvit_export.parity import parity_command
from canvit_export.precision import audit_onnx
from canvit_runtime.manifest import OnnxArtifact, RandomWeights, load_manifest
from canvit_runtime.verdict import TOLERANCES


def check_parity(artifact: Path, photo: np.ndarray, glimpses: int, policy: str = "c2f") -> dict:
    report = parity_command(artifact=artifact, runtime="onnxruntime", loaded=None, image=photo, policy=policy,
                            glimpses=glimpses, seed=0, threads=None, report_path=artifact.parent / f"{artifact.name}.json")
    assert report.passed, report.failures
    assert report.glimpses == glimpses
    worst = report.worst
    assert worst["canvas_rel_l2"] <= 1e-4 and worst["cls_rel_l2"] <= 1e-4, worst
    # The rollout really moved the canvas: a step that ignored its input would not pass this.
    norms = [row.reference_canvas_norm for row in report.per_glimpse]
    assert norms[-1] > 2 * norms[0], norms
    return report


@pytest.mark.parametrize(("canvas", "batch"), [(16, 1), (32, 2), (64, 1)])
def test_vits16_parity_on_a_photo(export_artifact, photo, canvas: int, batch: int) -> None:
    artifact = export_artifact("vits16", canvas=canvas, batch=batch)
    report = check_parity(artifact, photo, glimpses=10)
    assert report.geometry == {"batch": batch, "scene_px": 512, "glimpse_px": 128, "canvas_grid": canvas}


@pytest.mark.slow
def test_vitb16_parity_on_a_photo(export_artifact, photo) -> None:
    check_parity(export_artifact("vitb16", canvas=32, batch=1), photo, glimpses=10, policy="f-iid")


def test_graph_audit_passes_and_graph_checks(export_artifact) -> None:
    model = onnx.load(str(export_artifact("vits16", canvas=16) / "step.onnx"))
    onnx.checker.check_model(model)
    report = audit_onnx(model)
    assert report.ok, report.violations
    assert "ScatterND" not in report.op_counts
    # blocks (norm1, norm2), 3 Canvas Reads + 3 Canvas Writes (ln_q, ln_kv), the VPE's norm; 32 before the random
    # weights had distinct LayerNorms (test_random_layernorms_stay_distinct_in_the_graph)
    assert report.op_counts["LayerNormalization"] == 12 * 2 + 2 * (3 + 3) + 1
    # canvas -> one Add per Canvas Write (after blocks 3, 7, 11 of ViT-S) -> canvas_next
    assert report.canvas_stream[0] == "canvas" and report.canvas_stream[-1] == "canvas_next"
    assert len(report.canvas_stream) == 4, report.canvas_stream
    assert report.coordinate_tensors > 10 and report.float32_op_tensors > 0


def _canvas_stream_add(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Add" and "canvas" in n.input)


def test_graph_audit_catches_a_narrow_canvas_update(export_artifact) -> None:
    """Round the first Canvas Write update through float16: the audit must name it."""
    model = onnx.load(str(export_artifact("vits16", canvas=16) / "step.onnx"))
    add = _canvas_stream_add(model)
    update = add.input[1] if add.input[0] == "canvas" else add.input[0]
    index = list(model.graph.node).index(add)
    model.graph.node.insert(index, helper.make_node("Cast", [update], ["update_fp16"], to=TensorProto.FLOAT16))
    model.graph.node.insert(index + 1, helper.make_node("Cast", ["update_fp16"], ["update_back"], to=TensorProto.FLOAT))
    add.input[list(add.input).index(update)] = "update_fp16"
    report = audit_onnx(model)
    assert any("update_fp16" in v and "float16" in v for v in report.violations), report.violations


def test_graph_audit_catches_scatternd_and_narrow_rope(export_artifact) -> None:
    model = onnx.load(str(export_artifact("vits16", canvas=16) / "step.onnx"))
    sin = next(n for n in model.graph.node if n.op_type == "Sin")
    index = list(model.graph.node).index(sin)
    model.graph.node.insert(index, helper.make_node("Cast", [sin.input[0]], ["angles_fp16"], to=TensorProto.FLOAT16))
    sin.input[0] = "angles_fp16"
    model.graph.node.append(helper.make_node("ScatterND", ["canvas_next", "i", "u"], ["unused"]))
    report = audit_onnx(model)
    assert any("ScatterND" in v for v in report.violations), report.violations
    assert any("angles_fp16" in v for v in report.violations), report.violations


def test_manifest_describes_the_graph(export_artifact) -> None:
    artifact = export_artifact("vits16", canvas=32, batch=2)
    manifest = load_manifest(artifact)  # verifies every SHA-256
    session = ort.InferenceSession(str(artifact / "step.onnx"), providers=["CPUExecutionProvider"])
    graph_inputs = {i.name: (list(i.shape), i.type) for i in session.get_inputs()}
    graph_outputs = {o.name: (list(o.shape), o.type) for o in session.get_outputs()}
    assert {t.name: (list(t.shape), f"tensor({'float' if t.dtype == 'float32' else t.dtype})")
            for t in manifest.inputs} == graph_inputs
    assert {t.name: (list(t.shape), "tensor(float)") for t in manifest.outputs} == graph_outputs
    assert manifest.state_pairs == (("canvas", "canvas_next"), ("recurrent_cls", "recurrent_cls_next"))
    model = manifest.model
    assert isinstance(model, RandomWeights) and model.backbone == "vits16"
    assert model.layerscale_std == 0.3 and model.layernorm_std == 0.1 and len(model.weights_fingerprint) == 64
    assert manifest.geometry.model_dump() == {"batch": 2, "scene_px": 512, "glimpse_px": 128, "canvas_grid": 32}
    assert isinstance(manifest.artifact, OnnxArtifact) and manifest.artifact.opset == 18
    assert manifest.artifact.nodes == len(onnx.load(str(artifact / "step.onnx")).graph.node)
    assert set(manifest.files) == {"graph", "initial_state"}
    assert {"torch", "onnx", "onnxruntime", "canvit-pytorch", "canvit-export", "canvit-runtime",
            "python"} <= set(manifest.tools)
    assert manifest.precision.name == "fp32" and manifest.precision.follows_float32_rule
    state = manifest.initial_state_arrays(2)
    assert state["canvas"].shape == (2, 16 + 32 * 32, 1024) and state["recurrent_cls"].shape == (2, 1, 384)


def test_random_layernorms_stay_distinct_in_the_graph(export_artifact, vits16) -> None:
    """Seeded random weights give every LayerNorm its own gain and bias (source.RANDOM_LAYERNORM_STD), so the
    exported step holds one LayerNormalization per LayerNorm of CanViT. With canvit-pytorch's gain 1, bias 0 the
    exporter merged the LayerNorms that see the same tensor (a Canvas Read's keys and the next Canvas Write's
    queries on the unchanged canvas, a Write's keys and the next block's norm1): 32 of ViT-S's 37, and every
    runtime and the bench ran less than a trained checkpoint makes them run."""
    import torch

    norms = [m for m in vits16.canvit.modules() if isinstance(m, torch.nn.LayerNorm)]
    widths = {m.weight.shape for m in norms}
    for width in widths:  # no two gains of a width equal
        gains = [m.weight for m in norms if m.weight.shape == width]
        assert all(not torch.equal(a, b) for i, a in enumerate(gains) for b in gains[i + 1:])
    graph = onnx.load(str(export_artifact("vits16", canvas=16) / "step.onnx"), load_external_data=False).graph
    assert sum(node.op_type == "LayerNormalization" for node in graph.node) == len(norms) == 37


def test_initial_state_matches_canvit_init_state(export_artifact, vits16) -> None:
    manifest = load_manifest(export_artifact("vits16", canvas=16))
    state = manifest.initial_state_arrays(3)
    reference = vits16.canvit.init_state(batch_size=3, canvas_grid_size=16)
    np.testing.assert_array_equal(state["canvas"], reference.canvas.detach().numpy())
    np.testing.assert_array_equal(state["recurrent_cls"], reference.recurrent_cls.detach().numpy())


def test_failed_export_leaves_nothing(tmp_path, vits16, monkeypatch) -> None:
    def broken(*args, **kwargs):
        (args[2]).write_bytes(b"half a graph")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_target, "export_graph", broken)
    out = tmp_path / "artifact"
    with pytest.raises(RuntimeError, match="exporter crashed"):
        onnx_target.export_onnx(vits16, Geometry(batch=1, scene_px=256, glimpse_px=128, canvas_grid=8), out, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(tmp_path, vits16, monkeypatch) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        onnx_target.export_onnx(vits16, Geometry(batch=1, scene_px=256, glimpse_px=128, canvas_grid=8), out, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_parity_fails_past_tolerance(export_artifact, photo, tmp_path) -> None:
    """Other weights than the exported ones must fail parity (the check can fail)."""
    from canvit_export.source import load

    artifact = export_artifact("vits16", canvas=16)
    other = load(None, random_weights=True, backbone="vits16", seed=0)
    with __import__("torch").no_grad():
        other.canvit.canvas_writes[0].k_map.weight.mul_(1.01)
    report = parity_command(artifact=artifact, runtime="onnxruntime", loaded=other, image=photo, policy="c2f",
                            glimpses=2, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert not report.passed and report.worst["canvas_rel_l2"] > TOLERANCES["fp32"]["canvas_rel_l2"]
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
