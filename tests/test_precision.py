"""Mixed-precision graphs: the float32 canvas rule holds in the graph, and the numerics hold on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import canvit_runtime
from canvit_export.parity import parity_command
from canvit_export.precision import audit_onnx
from canvit_runtime.manifest import load_manifest
from canvit_runtime.onnxruntime import emulate_bfloat16
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch


def matmul_weights(model: onnx.ModelProto) -> list[tuple[int, list[int]]]:
    """(dtype, shape) of every MatMul's constant right-hand side."""
    initializers = {init.name: init for init in model.graph.initializer}
    return [(initializers[n.input[1]].data_type, list(initializers[n.input[1]].dims)) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in initializers]


@pytest.mark.parametrize(("precision", "narrow"), [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_mixed_graph_keeps_the_canvas_float32(export_artifact, precision: str, narrow: int) -> None:
    artifact = export_artifact("vits16", canvas=16, precision=precision)
    model = onnx.load(str(artifact / "step.onnx"))
    report = audit_onnx(model)
    assert report.ok, report.violations
    assert len(report.canvas_stream) == 4  # canvas, three Canvas Write sums (the last is canvas_next)
    weights = matmul_weights(model)
    # Every weight matmul runs narrow but the VPE's random Fourier features ([3, Db / 2] float32, paper App. B).
    assert [shape for dtype, shape in weights if dtype != narrow] == [[3, 384 // 2]], weights
    assert sum(dtype == narrow for dtype, _ in weights) >= 12 * 4 + 3 * 2 + 3 * 2
    manifest = load_manifest(artifact)
    record = manifest.precision
    assert record.name == precision and record.stream_dtype == "float32" and record.follows_float32_rule
    assert record.matmul_dtype == {"fp16": "float16", "bf16": "bfloat16"}[precision] == record.weights
    assert {t.dtype for t in (*manifest.inputs, *manifest.outputs)} == {"float32"}  # state and every other I/O
    graph_io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert set(graph_io.values()) == {TensorProto.FLOAT} and set(graph_io) == {
        t.name for t in (*manifest.inputs, *manifest.outputs)}
    fp32_size = (export_artifact("vits16", canvas=16) / "step.onnx").stat().st_size
    assert (artifact / "step.onnx").stat().st_size < 0.55 * fp32_size


def test_all_fp16_variant_is_flagged(export_artifact) -> None:
    artifact = export_artifact("vits16", canvas=16, precision="fp16-all")
    report = audit_onnx(onnx.load(str(artifact / "step.onnx")))
    assert not report.ok
    assert sum("canvas update" in v for v in report.violations) == 3, report.violations
    record = load_manifest(artifact).precision
    assert record.stream_dtype == "float16" and not record.follows_float32_rule
    assert record.audit_violations == len(report.violations)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_parity_on_a_photo(export_artifact, photo, tmp_path, precision: str) -> None:
    """21 C2F glimpses on a real photo against PyTorch fp32: canvas cosine >= 0.999, rel-L2 <= 2e-2."""
    artifact = export_artifact("vits16", canvas=16, precision=precision)
    report = parity_command(artifact=artifact, runtime="onnxruntime", loaded=None, image=photo, policy="c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures
    worst = report.worst
    assert worst["canvas_cosine"] >= 0.999 and worst["canvas_rel_l2"] <= 2e-2, worst
    # The narrow types really ran (emulated or not): errors well above fp32 rounding.
    assert worst["canvas_rel_l2"] > 1e-5, worst
    assert report.emulated == ("bfloat16" if precision == "bf16" else None)


def test_fp16_survives_a_200_glimpse_rollout(export_artifact, photo) -> None:
    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    session = canvit_runtime.open(artifact)
    scene = scene_batch(photo, scene_px=512, batch=1)
    norms = []
    for viewpoint in make_policy("f-iid", batch=1, glimpses=200, seed=1):
        result = session.step(scene, viewpoint.centers, viewpoint.scales)
        assert np.isfinite(result.canvas).all() and np.isfinite(result.recurrent_cls).all()
        norms.append(float(np.linalg.norm(result.canvas)))
    assert norms[-1] > 10 * norms[0], "the canvas grew as trained-like weights make it grow"


def test_bfloat16_emulation_rounds_like_bfloat16() -> None:
    """A bf16 MatMul + Add graph, emulated, equals numpy doing float32 math on bf16-rounded values."""

    def to_bf16(x: np.ndarray) -> np.ndarray:  # round to nearest even, as Cast does
        bits = x.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.view(np.float32)

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w_bits = (to_bf16(w).view(np.uint32) >> 16).astype(np.uint16)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "w"], ["m"]),
             helper.make_node("Add", ["m", "m"], ["a"]),
             helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor("w", TensorProto.BFLOAT16, [64, 32], w_bits.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with pytest.raises(Exception, match=r"NOT_IMPLEMENTED|Could not find an implementation"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    emulated = emulate_bfloat16(model)
    widened = numpy_helper.to_array(next(i for i in emulated.graph.initializer if i.name == "w"))
    assert widened.dtype == np.float32 and np.array_equal(widened, to_bf16(w)), "bf16 weights widen exactly"
    session = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4, 64)).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    m = to_bf16(to_bf16(x) @ to_bf16(w))
    np.testing.assert_allclose(got, to_bf16(m + m), rtol=1e-6)
    assert not np.allclose(got, 2 * (x @ w), rtol=1e-4), "rounding must show"


def test_tolerances_cover_every_precision() -> None:
    from canvit_export.errors import ExportError
    from canvit_runtime.precision import PRECISIONS
    from canvit_runtime.verdict import TOLERANCES, tolerances_for

    for name in PRECISIONS:  # every word of the vocabulary has a parity tolerance
        assert set(tolerances_for(name)) == {"canvas_rel_l2", "cls_rel_l2", "canvas_cosine", "readout_rel_l2",
                                             "seg_agreement", "top1_agreement"}
    assert tolerances_for("fp16-int8w") == tolerances_for("bf16-int8w") == TOLERANCES["int8w"]
    assert tolerances_for("fp32")["canvas_rel_l2"] == 1e-4
    with pytest.raises(ExportError, match="no parity tolerance for precision 'int4'"):
        tolerances_for("int4")
