"""Static INT8 (issue 13): rollout calibration sets, NNCF (OpenVINO) and ONNX Runtime Q/DQ quantization with the
canvas path kept float32, the Q/DQ audit, and the parity gates (21 C2F and 200 F-IID glimpses) on ViT-S."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import canvit_runtime
from canvit_export.calibration import load_calibration, record_calibration
from canvit_export.cli import main
from canvit_export.errors import ExportError
from canvit_export.parity import parity_command
from canvit_export.precision import audit_onnx
from canvit_runtime.manifest import load_manifest
from canvit_runtime.preprocess import scene_batch
from conftest import INT8_READOUT as READOUT


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_calibration_set_holds_the_rollouts_states(readout_fp32: Path, calibration: Path, photo) -> None:
    calib = load_calibration(calibration, load_manifest(readout_fp32))
    index = json.loads((calibration / "calibration.json").read_text())
    assert index["images"] == ["chelsea", "astronaut", "coffee", "rocket"]
    assert index["policies"] == ["c2f", "f-iid", "eg-c2f"] and calib.count == 4 * 3 * 4
    assert calib.bytes == sum(p.stat().st_size for p in calibration.glob("*.npy"))
    samples = list(calib.samples())
    assert {k: v.shape for k, v in samples[0].items()} == {t.name: tuple(t.shape) for t in load_manifest(readout_fp32).inputs}
    # Sample 0 is the first glimpse of chelsea under C2F: the learned initial state and the whole-scene viewpoint.
    session = canvit_runtime.open(readout_fp32, runtime="onnxruntime")
    session.reset()
    np.testing.assert_array_equal(samples[0]["canvas"], session.state("canvas"))
    np.testing.assert_array_equal(samples[0]["scene"], scene_batch(photo, scene_px=512, batch=1))
    # Sample 1 reads what glimpse 0 wrote: the recording carries the state as a rollout does.
    written = session.step(samples[0]["scene"], samples[0]["centers"], samples[0]["scales"])
    np.testing.assert_allclose(samples[1]["canvas"], written.canvas, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(samples[1]["canvas"], samples[0]["canvas"])
    assert np.isfinite(np.stack([s["canvas"] for s in samples])).all()


def test_calibration_refusals(readout_fp32: Path, calibration: Path, export_artifact, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is an fp16 graph: calibration records the states of the fp32 step"):
        record_calibration(export_artifact("vits16", canvas=16, precision="fp16"), tmp_path / "a", quiet=True)
    with pytest.raises(ExportError, match="no images"):
        record_calibration(readout_fp32, tmp_path / "b", images=tmp_path, quiet=True)
    with pytest.raises(ExportError, match="recorded for inputs"):
        load_calibration(calibration, load_manifest(export_artifact("vits16", canvas=8)))
    code, output = run("calibrate", "--artifact", str(readout_fp32), "--out", str(calibration))
    assert code == 2 and "already exists: pass --force" in output, output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_calibrate_command_reports_size(readout_fp32: Path, tmp_path: Path, photo) -> None:
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.fromarray(photo).save(tmp_path / "photos" / "mine.jpg")
    code, output = run("calibrate", "--artifact", str(readout_fp32), "--images", str(tmp_path / "photos"), "--policies",
                       "c2f", "--glimpses", "3", "--out", str(tmp_path / "set"))
    assert code == 0, output
    assert "3 samples (1 images x c2f x 3 glimpses)" in output and " MB" in output, output


@pytest.mark.parametrize(("kind", "runtime"), [("onnx", "onnxruntime"), ("openvino", "openvino"), ("onnx", "openvino")])
@pytest.mark.parametrize(("policy", "glimpses"), [("c2f", 21), ("f-iid", 200)])
def test_int8_parity_gates(int8, kind: str, runtime: str, policy: str, glimpses: int, photo, tmp_path: Path) -> None:
    """The int8 tolerances (verdict.TOLERANCES["int8"]) over 21 C2F and 200 F-IID glimpses, readouts included;
    finite at every glimpse (a NaN fails every comparison)."""
    report = parity_command(artifact=int8(kind), runtime=runtime, loaded=None, image=photo, policy=policy,
                            glimpses=glimpses, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures[:3]
    assert report.precision == "int8"
    assert report.worst["canvas_rel_l2"] > 1e-3, "the step really was quantized"


def test_int8_artifacts_record_their_calibration_and_keep_the_canvas_float32(int8, readout_fp32: Path) -> None:
    for kind, quantizer in (("onnx", "onnxruntime"), ("openvino", "nncf")):
        manifest = load_manifest(int8(kind))
        p = manifest.precision
        assert (p.name, p.matmul_dtype, p.stream_dtype, p.weights) == ("int8", "int8", "float32", "int8-sym-per-channel")
        assert p.calibration is not None and p.calibration.samples == 48 and p.calibration.quantizer.startswith(quantizer)
        assert p.calibration.graph_sha256 == load_manifest(readout_fp32).files["graph"].sha256
        assert p.calibration.quantizers > 20 and p.calibration.excluded_ops > 20
    graph = onnx.load(str(int8("onnx") / "step.onnx"))
    assert audit_onnx(graph).ok
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [i for n in graph.graph.node if n.op_type == "QuantizeLinear" for i in n.input[2:3]]
    initializers = {i.name: i for i in graph.graph.initializer}
    assert all(onnx.numpy_helper.to_array(initializers[z]).max() == 0 for z in zero_points if z in initializers), \
        "symmetric (zero point 0), as TensorRT's INT8 Q/DQ requires"
    assert (int8("onnx") / "step.onnx").stat().st_size < 0.4 * (readout_fp32 / "step.onnx").stat().st_size


def test_qdq_audit_catches_a_quantized_canvas(int8) -> None:
    """The audit must fail a Q/DQ graph that quantizes the canvas stream (here: the canvas input, re-read through a
    QuantizeLinear/DequantizeLinear pair before the first Canvas Write adds to it)."""
    graph = onnx.load(str(int8("onnx") / "step.onnx"))
    scale = onnx.numpy_helper.from_array(np.array(0.05, np.float32), "canvas_scale")
    graph.graph.initializer.append(scale)
    graph.graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", ["canvas", "canvas_scale"], ["canvas_q"],
                                                     name="bad_q"))
    graph.graph.node.insert(1, onnx.helper.make_node("DequantizeLinear", ["canvas_q", "canvas_scale"], ["canvas_dq"],
                                                     name="bad_dq"))
    report = audit_onnx(graph)
    assert "QuantizeLinear bad_q quantizes protected tensor canvas" in report.violations


def test_int8_cli(readout_fp32: Path, calibration: Path, export_artifact, tmp_path: Path) -> None:
    code, output = run("openvino", "--artifact", str(export_artifact("vits16", canvas=16, precision="bf16")),
                       "--precision", "int8", "--out", str(tmp_path / "x"))
    assert code == 2 and "for int8, export the fp32 graph first" in output, output
    code, output = run("openvino", "--artifact", str(readout_fp32), "--calibration", str(calibration), "--out",
                       str(tmp_path / "y"))
    assert code == 2 and "--calibration calibrates static INT8: pass it with --precision int8" in output, output
    code, output = run("openvino", "--artifact", str(readout_fp32), "--precision", "int8", "--calibration",
                       str(tmp_path / "nowhere"), "--out", str(tmp_path / "z"))
    assert code == 2 and "no such folder" in output, output
    assert not list(tmp_path.iterdir()), "nothing half-written"
    code, output = run("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "16", "--readout", READOUT,
                       "--precision", "int8", "--calibration", str(calibration), "--out", str(tmp_path / "q"))
    assert code == 0, output
    assert "int8" in output and load_manifest(tmp_path / "q").precision.name == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"], "the fp32 step it was quantized from is gone"


def test_tensorrt_takes_the_qdq_graph(int8) -> None:
    """TensorRT builds the Q/DQ graph strongly typed (its INT8 from the graph's Q/DQ); only the command is checked
    here (no GPU): the build itself is untested on this machine."""
    code, output = run("trt", "--artifact", str(int8("onnx")), "--precision", "int8", "--print-trtexec")
    assert code == 0 and "--stronglyTyped" in output and "--int8" not in output, output


def test_qdq_graph_keeps_attention_float(int8) -> None:
    """Only matmuls with constant weights are quantized: attention's Q K^T and P V (two activations) and the softmax
    between them stay float (export.int8.is_attention_matmul), as the float canvas attention needs no requantization."""
    graph = onnx.load(str(int8("onnx") / "step.onnx"))
    producer = {out: node for node in graph.graph.node for out in node.output}
    initializers = {i.name for i in graph.graph.initializer}
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul"]
    quantized = [n for n in matmuls if all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                           for i in n.input)]
    assert len(quantized) > 20
    for node in quantized:  # the weight input is a dequantized int8 initializer, never a dequantized activation
        assert producer[node.input[1]].input[0] in initializers, node.name
    attention = [n for n in matmuls if n.input[1] not in initializers and n not in quantized]
    assert len(attention) >= 2 * 12, "each ViT-S block's Q K^T and P V run float"
    softmax_outputs = {n.output[0] for n in graph.graph.node if n.op_type == "Softmax"}
    assert not [n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in softmax_outputs]


def qdq_matmul_graph(weights: np.ndarray, weight_scales: np.ndarray, x_scale: float, y_scale: float):
    """x -> Q/DQ (int8, zero point 0) -> MatMul(DQ(int8 weights, per column)) -> Q/DQ -> y: the pattern of the Q/DQ
    export, by hand."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weights.shape
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "sy", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "sy", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(x_scale), "sx"), numpy_helper.from_array(np.float32(y_scale), "sy"),
             numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(weights, "w"),
             numpy_helper.from_array(weight_scales, "sw"), numpy_helper.from_array(np.zeros(n, np.int8), "zw")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 71, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 71, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_unsigned_activations_compute_the_same_int8_matmul() -> None:
    """unsigned_activations turns the activation Q/DQ pairs to uint8 / zero point 128 and leaves the int8 weights;
    ONNX Runtime then gives the INT8 matmul's exact value (integer accumulation, requantized), as for the int8 graph."""
    import onnxruntime as ort

    from canvit_runtime.onnxruntime import unsigned_activations

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (256, 384)).astype(np.int8)
    weight_scales = (rng.random(384) * 1e-4 + 1e-5).astype(np.float32)
    x = (rng.standard_normal((1, 71, 256)) * 2).astype(np.float32)
    model = qdq_matmul_graph(weights, weight_scales, 0.05, 0.01)
    # The INT8 arithmetic by hand, in float64: round half to even, saturate to int8, accumulate exactly.
    xq = np.clip(np.round(x / np.float32(0.05)), -128, 127)
    expected = np.clip(np.round(xq @ weights.astype(np.float64) * 0.05 * weight_scales / 0.01), -128, 127) * 0.01
    options = ort.SessionOptions()  # keep the graph S8S8 (on x86 ONNX Runtime would turn this simple one U8 itself)
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    signed = ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})[0]
    rewritten, count = unsigned_activations(qdq_matmul_graph(weights, weight_scales, 0.05, 0.01))
    assert count == 2
    types = {i.name: i.data_type for i in rewritten.graph.initializer}
    assert types["w"] == onnx.TensorProto.INT8 and "z" not in types, "weights stay int8; the unread int8 zero point is gone"
    unsigned = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    for got in (signed, unsigned):  # at most a rounding tie away from the exact value, at a handful of outputs
        assert np.mean(np.abs(got - expected) > 0.005) < 1e-3
    np.testing.assert_array_equal(unsigned, signed)


def test_unsigned_activations_leave_other_quantizers() -> None:
    """A QuantizeLinear that also feeds something other than a DequantizeLinear, or whose output is a graph output,
    keeps its int8 zero point (rewriting it would change what that consumer reads)."""
    from onnx import TensorProto, helper

    from canvit_runtime.onnxruntime import unsigned_activations

    model = qdq_matmul_graph(np.ones((8, 8), np.int8), np.ones(8, np.float32), 0.1, 0.1)
    model.graph.output.append(helper.make_tensor_value_info("xq", TensorProto.INT8, [1, 71, 8]))
    model.graph.node.append(helper.make_node("Identity", ["mq"], ["mq_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("mq_copy", TensorProto.INT8, [1, 71, 8]))
    rewritten, count = unsigned_activations(model)
    assert count == 0
    assert all(n.input[2] == "z" for n in rewritten.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               and n.input[0] != "w")


def test_onnxruntime_runs_the_qdq_graph_unsigned(int8, photo, tmp_path: Path) -> None:
    """The CPU runner of a Q/DQ artifact runs it with unsigned activations, close to the int8 graph as exported
    (the same quantized arithmetic; ONNX Runtime fuses a few matmuls differently, float roundings INT8 requantizes)."""
    import onnxruntime as ort

    runner = canvit_runtime.open(int8("onnx"), runtime="onnxruntime")
    assert runner.activations == "uint8"
    runner.reset()
    feeds = {"scene": scene_batch(photo, scene_px=runner.manifest.scene_px, batch=1), "canvas": runner.state("canvas"),
             "recurrent_cls": runner.state("recurrent_cls"), "centers": np.zeros((1, 2), np.float32),
             "scales": np.ones(1, np.float32)}
    exported = ort.InferenceSession(str(int8("onnx") / "step.onnx"), providers=["CPUExecutionProvider"])
    canvas = exported.run(["canvas_next"], feeds)[0]
    got = runner.step(feeds["scene"], feeds["centers"], feeds["scales"]).canvas
    assert np.linalg.norm(got - canvas) / np.linalg.norm(canvas) < 5e-3
    report = parity_command(artifact=int8("onnx"), runtime="onnxruntime", loaded=None, image=photo, policy="c2f",
                            glimpses=2, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.activations == "uint8"
    assert runner.manifest.precision.calibration is not None
    assert "attention matmuls float" in runner.manifest.precision.calibration.quantizer


def test_onnx_runner_without_onnx_names_the_install(int8, monkeypatch) -> None:
    """The ONNX Runtime runner checks the graph for unlisted external data with the onnx package (issue 25), which the
    onnxruntime extra installs: without it, opening an artifact names that install in one RuntimeUnavailable."""
    import sys

    artifact = int8("onnx")  # exported (with onnx) first
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(canvit_runtime.RuntimeUnavailable, match=r"pip install 'canvit-runtime\[onnxruntime\]'"):
        canvit_runtime.open(artifact, runtime="onnxruntime")
