"""OpenVINO: stateful IR with the canvas as a float32 variable, precision audited in the compiled model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.export.openvino import audit_compiled, export_openvino, protected_ops
from canvit_export.parity import parity_command
from canvit_export.precision import audit_onnx
from canvit_runtime.manifest import ManifestError, OpenVinoArtifact, load_manifest
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch
from conftest import manifest_round_trip

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install canvit-export[openvino])")


@pytest.fixture(scope="module")
def ir(export_artifact, tmp_path_factory):
    """ir(precision, stateful, int8, batch) -> IR artifact converted from the vits16 ONNX artifact of that precision
    (canvas 16 unless given), with INT8 weights when int8."""
    cache: dict[tuple, Path] = {}

    def make(precision: str = "fp32", stateful: bool = True, int8: bool = False, batch: int = 1, canvas: int = 16) -> Path:
        key = (precision, stateful, int8, batch, canvas)
        if key not in cache:
            out = tmp_path_factory.mktemp("ir") / f"{precision}-{stateful}-{int8}-{batch}-{canvas}"
            export_openvino(export_artifact("vits16", canvas=canvas, batch=batch, precision=precision), out,
                            precision=precision + ("-int8w" if int8 else ""), stateful=stateful, quiet=True)
            cache[key] = out
        return cache[key]

    return make


def parity(artifact: Path, photo, tmp_path: Path, glimpses: int = 10) -> dict:
    return parity_command(artifact=artifact, runtime="openvino", loaded=None, image=photo, policy="c2f",
                          glimpses=glimpses, seed=0, threads=None, report_path=tmp_path / "r.json")


def test_stateful_ir_holds_the_state_as_variables(ir) -> None:
    artifact = ir("fp32")
    model = ov.Core().read_model(str(artifact / "step.xml"))
    assert {i.get_any_name() for i in model.inputs} == {"scene", "centers", "scales"}
    assert len(model.outputs) == 0
    read_values = {op.get_variable_id(): op for op in model.get_ops() if op.get_type_name() == "ReadValue"}
    assert set(read_values) == {"canvascanvas_next", "recurrent_clsrecurrent_cls_next"}
    assert str(read_values["canvascanvas_next"].get_output_element_type(0)) == "<Type: 'float32'>"
    assert list(read_values["canvascanvas_next"].get_output_shape(0)) == [1, 16 + 256, 1024]
    assert sum(op.get_type_name() == "Assign" for op in model.get_ops()) == 2
    manifest = canvit_runtime.load_manifest(artifact)
    assert isinstance(manifest.artifact, OpenVinoArtifact)
    assert manifest.artifact.stateful and manifest.artifact.compiled_audit.checked >= 30
    assert [s.variable for s in manifest.state] == ["canvascanvas_next", "recurrent_clsrecurrent_cls_next"]
    assert {t.name for t in manifest.inputs} == {"scene", "centers", "scales"} and not manifest.outputs
    assert manifest.artifact.source.precision == manifest.precision.name == "fp32"


@pytest.mark.parametrize(("precision", "stateful", "int8"), [
    ("fp32", True, False), ("fp32", False, False), ("bf16", True, False), ("fp32", True, True)])
def test_ir_manifests_round_trip(ir, precision: str, stateful: bool, int8: bool) -> None:
    manifest = manifest_round_trip(ir(precision, stateful=stateful, int8=int8))
    assert manifest.precision.name == precision + ("-int8w" if int8 else "")
    assert manifest.precision.weights == ("int8-asym-per-channel" if int8 else
                                          {"fp32": "float32", "bf16": "bfloat16"}[precision])
    assert manifest.stateful == stateful and all((s.variable is not None) == stateful for s in manifest.state)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_parity_on_a_photo(ir, photo, tmp_path, precision: str) -> None:
    report = parity(ir(precision), photo, tmp_path)
    assert report.passed, report.failures
    worst = report.worst
    if precision == "fp32":
        assert worst["canvas_rel_l2"] <= 1e-4, worst
    else:
        assert 1e-5 < worst["canvas_rel_l2"] <= 2e-2 and worst["canvas_cosine"] >= 0.999, worst


def test_int8_weights_parity_and_size(ir, photo, tmp_path) -> None:
    artifact = ir("fp32", int8=True)
    report = parity(artifact, photo, tmp_path)
    assert report.passed, report.failures
    assert report.worst["canvas_rel_l2"] > 1e-4, "the weights really were compressed"
    size = (artifact / "step.bin").stat().st_size
    assert size < 0.35 * (ir("fp32") / "step.bin").stat().st_size


def test_batch_2(ir, photo, tmp_path) -> None:
    report = parity(ir("fp32", batch=2, canvas=32), photo, tmp_path, glimpses=3)
    assert report.passed and report.geometry["batch"] == 2, report.failures


def test_stateful_equals_stateless_and_reset(ir, photo) -> None:
    stateful = canvit_runtime.open(ir("bf16"), runtime="openvino")
    stateless = canvit_runtime.open(ir("bf16", stateful=False), runtime="openvino")
    scene = scene_batch(photo, scene_px=512, batch=1)
    viewpoints = make_policy("c2f", batch=1, glimpses=5, seed=0)
    first = None
    for t, v in enumerate(viewpoints):
        a = stateful.step(scene, v.centers, v.scales)
        b = stateless.step(scene, v.centers, v.scales)
        np.testing.assert_allclose(a.canvas, b.canvas, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a.recurrent_cls, b.recurrent_cls, rtol=1e-5, atol=1e-4)
        if t == 0:
            first = a.canvas.copy()
    with pytest.raises(RuntimeError, match="overwritten by a later step"):
        a_old = stateful.step(scene, viewpoints[0].centers, viewpoints[0].scales)
        stateful.step(scene, viewpoints[0].centers, viewpoints[0].scales)
        a_old.canvas  # noqa: B018 (the variable moved on)
    stateful.reset()
    np.testing.assert_array_equal(stateful.state("canvas"), stateful.manifest.initial_state_arrays(1)["canvas"])
    np.testing.assert_array_equal(stateful.step(scene, viewpoints[0].centers, viewpoints[0].scales).canvas, first)


def test_compiled_audit_catches_openvinos_own_bf16(export_artifact) -> None:
    """OpenVINO's bf16 inference hint on the fp32 graph narrows the canvas LayerNorm, the VPE and RoPE: the
    audit of the compiled model must say so (this is why bf16 IRs come from our typed graph)."""
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16: OpenVINO's bf16 hint falls back to f32")
    path = export_artifact("vits16", canvas=16) / "step.onnx"
    protected = audit_onnx(onnx.load(str(path))).protected
    model = ov.convert_model(str(path))
    ops = protected_ops(model, protected)
    narrowed = audit_compiled(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}), ops)
    assert narrowed["violations"], narrowed
    # a canvas LayerNorm: its MVN, or the Snippets subgraph of its gain and bias that reads the MVN
    assert any("MVN" in v or "(from node_layer_norm" in v for v in narrowed["violations"]), narrowed["violations"]
    exact = audit_compiled(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), ops)
    assert not exact["violations"] and exact["checked"] >= 30


def test_bad_openvino_inputs(export_artifact, tmp_path) -> None:
    with pytest.raises(ExportError, match="no such artifact folder"):
        export_openvino(tmp_path / "missing", tmp_path / "o", quiet=True)
    with pytest.raises(ExportError, match="--precision int4: choose one of fp32, fp16, bf16, fp16-all"):
        export_openvino(export_artifact("vits16", canvas=16), tmp_path / "o", precision="int4", quiet=True)
    # Conversion keeps the graph's types and never goes back to PyTorch: another compute precision names the export.
    with pytest.raises(ExportError, match=r"is an fp32 graph .* can be fp32, fp32-int8w or int8; for bf16, export the bf16 "
                                          r"graph first \(`canvit-export onnx --precision bf16"):
        export_openvino(export_artifact("vits16", canvas=16), tmp_path / "o", precision="bf16", quiet=True)
    with pytest.raises(ValueError, match="OpenVINO device 'NPU' is not available"):
        canvit_runtime.open(export_artifact("vits16", canvas=16), runtime="openvino", device="NPU")
    assert not (tmp_path / "o").exists()


def test_streams_keep_their_own_state(ir, photo) -> None:
    """OpenVinoStreams (the throughput hint, one infer request per stream): three streams of one compiled model on
    three different viewpoint sequences and two scenes each end where a lone stateful runner ends on that stream's
    inputs; a reset returns every stream to the initial state."""
    import skimage.data

    from canvit_runtime.openvino import OpenVinoStatefulRunner, OpenVinoStreams

    manifest = load_manifest(ir())
    streams = OpenVinoStreams(manifest, 3, threads=2)
    scenes = [scene_batch(image, scene_px=512, batch=1) for image in (photo, skimage.data.coffee(), photo)]
    sequences = [make_policy("f-iid", batch=1, glimpses=5, seed=seed) for seed in (1, 2, 3)]
    for t in range(5):
        results = streams.step(scenes, [s[t].centers for s in sequences], [s[t].scales for s in sequences])
    canvases = [r.canvas for r in results]
    alone = OpenVinoStatefulRunner(manifest, threads=2)
    for scene, sequence, canvas in zip(scenes, sequences, canvases, strict=True):
        alone.reset()
        for v in sequence:
            expected = alone.step(scene, v.centers, v.scales).canvas
        assert np.linalg.norm(canvas - expected) / np.linalg.norm(expected) < 1e-6
    assert np.linalg.norm(canvases[0] - canvases[2]) > 1e-3 * np.linalg.norm(canvases[0]), "streams differ"
    streams.reset()
    initial = manifest.initial_state_arrays(1)["canvas"]
    assert all(np.array_equal(r.state("canvas"), initial) for r in streams.runners)
    with pytest.raises(ValueError, match="3 streams: give one scene, centers and scales per stream"):
        streams.step(scenes[:2], [sequences[0][0].centers] * 2, [sequences[0][0].scales] * 2)
    streams.close()
    with pytest.raises(ManifestError, match="is not a stateful OpenVINO IR"):
        OpenVinoStreams(load_manifest(ir(stateful=False)), 2)


def test_bf16_matmul_rows_padded() -> None:
    """pad_rows(kind="bf16"): the two bf16 MatMuls of a toy MLP (71 rows) share one zero padding to 72 rows, sliced off after
    the row-wise bias Add, GELU and Convert; the f32 MatMul with 71 rows and the residual Add are left alone; the output
    is unchanged; a model without bf16 MatMuls is untouched."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import pad_rows

    def toy(narrow: bool) -> ov.Model:
        rng = np.random.default_rng(0)
        x = ops.parameter([1, 71, 64], ov.Type.f32, name="x")
        kind = ov.Type.bf16 if narrow else ov.Type.f32
        h = ops.convert(x, kind)
        w1 = ops.constant(rng.standard_normal((256, 64)).astype(np.float32) * 0.1, kind)
        b1 = ops.constant(rng.standard_normal(256).astype(np.float32), kind)
        h = ops.gelu(ops.add(ops.matmul(h, w1, False, True), b1), "erf")
        w2 = ops.constant(rng.standard_normal((64, 256)).astype(np.float32) * 0.1, kind)
        h = ops.convert(ops.matmul(h, w2, False, True), ov.Type.f32)
        w3 = ops.constant(rng.standard_normal((64, 64)).astype(np.float32))
        return ov.Model([ops.add(ops.matmul(h, w3, False, True), x)], [x])

    x = np.random.default_rng(1).standard_normal((1, 71, 64)).astype(np.float32)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    expected = ov.Core().compile_model(toy(True), "CPU", config)([x])[0]
    model = toy(True)
    assert pad_rows(model, "bf16") == 2
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("Concat") == 1 and kinds.count("Slice") == 1, kinds
    cut = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Slice")
    assert cut.input_value(0).get_node().get_type_name() == "Convert" and list(cut.input_value(0).get_shape()) == [1, 72, 64]
    padded = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert [list(op.input_value(0).get_shape())[1] for op in padded] == [72, 72, 71], "the f32 MatMul is not padded"
    got = ov.Core().compile_model(model, "CPU", config)([x])[0]
    assert got.shape == expected.shape == (1, 71, 64)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-2  # only the accumulation order differs
    plain = toy(False)
    assert pad_rows(plain, "bf16") == 0 and "Concat" not in [op.get_type_name() for op in plain.get_ordered_ops()]


def test_int8_matmul_rows_padded() -> None:
    """pad_rows(kind="int8"): a FakeQuantize read by two MatMuls is padded once at its input (72 rows), a MatMul whose
    quantized input passes a Reshape gets a Pad of its own, an f32 MatMul is left at 71 rows; the compiled INT8
    FullyConnected nodes then read 72 rows as u8 (not i8, not f32), and the output is unchanged."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import pad_rows

    def toy() -> ov.Model:
        rng = np.random.default_rng(0)
        x = ops.parameter([1, 71, 64], ov.Type.f32, name="x")

        def quantized(node: Any) -> Any:  # NNCF's form: an 8-bit FakeQuantize with constant ranges
            lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
            return ops.fake_quantize(node, lo, hi, lo, hi, 256)

        def weights(k: int, n: int) -> Any:
            w = np.round(rng.standard_normal((n, k)) * 40).clip(-127, 127).astype(np.int8)
            return ops.multiply(ops.convert(ops.constant(w), ov.Type.f32), ops.constant(np.full((n, 1), 0.01, np.float32)))

        shared = quantized(x)
        a = ops.matmul(shared, weights(64, 32), False, True)
        b = ops.matmul(shared, weights(64, 32), False, True)
        heads = ops.reshape(quantized(ops.reshape(x, [1, 71, 4, 16], False)), [1, 71, 64], False)
        c = ops.matmul(heads, weights(64, 32), False, True)
        d = ops.matmul(x, ops.constant(rng.standard_normal((32, 64)).astype(np.float32)), False, True)
        return ov.Model([ops.concat([a, b, c, d], 2)], [x])

    x = np.random.default_rng(1).uniform(-3, 3, (1, 71, 64)).astype(np.float32)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    expected = ov.Core().compile_model(toy(), "CPU", config)([x])[0]
    model = toy()
    assert pad_rows(model, "int8") == 3
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("Pad") == 2 and kinds.count("Slice") == 3 and "Concat" not in kinds[:-2], kinds
    rows = [list(op.input_value(0).get_shape())[1] for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert rows == [72, 72, 72, 71], "the f32 MatMul is not padded"
    compiled = ov.Core().compile_model(model, "CPU", config)
    cpu = Path("/proc/cpuinfo").read_text()
    if "avx512_vnni" in cpu or "avx_vnni" in cpu:  # u8 x s8 products: without VNNI OpenVINO may choose otherwise
        runtime = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
        fc = [(i["runtimePrecision"].astype(str), i["layerType"].astype(str)) for i in runtime
              if i["layerType"].astype(str).startswith("FullyConnected")]
        assert fc.count(("u8", "FullyConnected")) == 3 and len(fc) == 4, fc
    got = compiled([x])[0]
    assert got.shape == expected.shape == (1, 71, 128)
    assert np.array_equal(got[..., :96], expected[..., :96]) or \
        np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max(), np.abs(got - expected).max()


def test_identity_layout_chains_dropped() -> None:
    """drop_identity_layouts: K^T written by torch's export (Reshape, Transpose, Reshape) then transposed back (as
    OpenVINO's SDPA conversion does) is bypassed, its reader fed the original tensor; a chain that does reorder the
    data (one transpose, reshaped) and a single transpose are left; the output is unchanged."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import drop_identity_layouts

    def toy() -> ov.Model:
        x = ops.parameter([1, 8, 10, 4], ov.Type.f32, name="x")
        k_t = ops.reshape(ops.transpose(ops.reshape(x, [8, 10, 4], False), [0, 2, 1]), [1, 8, 4, 10], False)
        back = ops.transpose(k_t, [0, 1, 3, 2])  # [1, 8, 10, 4] again, the same elements in the same places
        moved = ops.reshape(ops.transpose(ops.reshape(x, [8, 10, 4], False), [0, 2, 1]), [1, 8, 10, 4], False)
        single = ops.transpose(x, [0, 1, 2, 3])
        return ov.Model([ops.add(ops.add(back, moved), single)], [x])

    x = np.random.default_rng(0).standard_normal((1, 8, 10, 4)).astype(np.float32)
    expected = ov.Core().compile_model(toy(), "CPU")([x])[0]
    model = toy()
    assert drop_identity_layouts(model) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("Transpose") == 2 and kinds.count("Reshape") == 2, kinds  # `moved` and `single` remain
    assert np.array_equal(ov.Core().compile_model(model, "CPU")([x])[0], expected)


def test_probe_convolution_as_matmul() -> None:
    """probe_as_matmul: channels-last tokens -> Transpose to NCHW -> per-channel Multiply, Add -> 1x1 Convolution (the
    segmentation probe as OpenVINO converts it) becomes a MatMul on the tokens and one Transpose of its result; the
    output is the same up to float rounding; a 3x3 convolution is left."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import probe_as_matmul

    rng = np.random.default_rng(0)

    def toy(kernel: int) -> ov.Model:
        x = ops.parameter([1, 6, 6, 8], ov.Type.f32, name="x")
        nchw = ops.transpose(x, ops.constant(np.array([0, 3, 1, 2], np.int64)))
        scaled = ops.multiply(nchw, ops.constant(rng.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32)))
        shifted = ops.add(scaled, ops.constant(rng.standard_normal((1, 8, 1, 1)).astype(np.float32)))
        weights = ops.constant(rng.standard_normal((3, 8, kernel, kernel)).astype(np.float32))
        pad = [kernel // 2] * 2
        conv = ops.convolution(shifted, weights, [1, 1], pad, pad, [1, 1])
        return ov.Model([ops.add(conv, ops.constant(rng.standard_normal((1, 3, 1, 1)).astype(np.float32)))], [x])

    x = rng.standard_normal((1, 6, 6, 8)).astype(np.float32)
    for kernel, replaced in ((1, 1), (3, 0)):
        model = toy(kernel)
        expected = ov.Core().compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x])[0]
        assert probe_as_matmul(model) == replaced
        kinds = [op.get_type_name() for op in model.get_ordered_ops()]
        assert kinds.count("Convolution") == 1 - replaced and kinds.count("MatMul") == replaced, kinds
        got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x])[0]
        assert got.shape == expected.shape == (1, 3, 6, 6)
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_reads_on_matmuls() -> None:
    """reads_on_matmuls: a bf16 ScaledDotProductAttention of 3 queries over 40 keys, as OpenVINO converts the
    exported Canvas Read (q pre-scaled, the op's scale input, an all-zero mask), is left alone below min_keys and
    above it becomes MatMul(Q, K, transpose_b),
    the scale, an f32 Softmax and MatMul(P, V); one of 3 queries over 8 keys (ratio < 4) stays fused, bit for bit;
    the read stays within bf16 rounding of float64 numpy attention and of the fused op, and compiles to MatMul and
    Softmax nodes."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import reads_on_matmuls

    heads, dim = 2, 8
    root = np.float32((1 / np.sqrt(dim)) ** 0.5)

    def toy() -> ov.Model:
        params = [ops.parameter(shape, ov.Type.f32, name=name) for name, shape in
                  (("q", [1, heads, 3, dim]), ("k", [1, heads, 40, dim]), ("k2", [1, heads, 8, dim]))]
        bf = [ops.convert(t, ov.Type.bf16) for t in params]
        q = ops.multiply(bf[0], ops.constant(root, ov.Type.bf16))
        mask, scale = ops.constant(np.float32(0), ov.Type.bf16), ops.constant(np.array([root]), ov.Type.bf16)
        outs = [ops.convert(ops.scaled_dot_product_attention(q, k, k, mask, scale), ov.Type.f32) for k in bf[1:]]
        return ov.Model(outs, params)

    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal(s).astype(np.float32) * 2 for s in ([1, heads, 3, dim], [1, heads, 40, dim],
                                                                   [1, heads, 8, dim])]
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    before = ov.Core().compile_model(toy(), "CPU", config)(feeds)
    model = toy()
    assert reads_on_matmuls(model) == 0, "fewer keys than min_keys (the Reads of canvas 32) stay fused"
    assert reads_on_matmuls(model, min_keys=32) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("ScaledDotProductAttention") == 1 and kinds.count("Softmax") == 1, kinds
    softmax = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax")
    assert softmax.get_input_element_type(0) == ov.Type.f32
    compiled = ov.Core().compile_model(model, "CPU", config)
    layers = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    assert layers.count("MatMul") >= 2 and "Softmax" in layers, layers
    after = compiled(feeds)

    def reference(q: np.ndarray, k: np.ndarray) -> np.ndarray:
        s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(dim)
        p = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), k.astype(np.float64))

    for got, old, k in ((after[0], before[0], feeds[1]), (after[1], before[1], feeds[2])):
        want = reference(feeds[0], k)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2
        assert np.linalg.norm(got - old) / np.linalg.norm(old) < 2e-2
    assert np.array_equal(after[1], before[1]), "the short attention changed"


def test_reads_on_matmuls_read_the_head_split_keys() -> None:
    """The step's Canvas Read reaches OpenVINO as head split (Transpose 0,2,1,3), torch's K^T (Reshape, Transpose,
    Reshape) and OpenVINO's transpose back before ScaledDotProductAttention; drop_identity_layouts leaves that chain
    (it does not return its input as a whole). reads_on_matmuls' score MatMul reads the head split itself
    (transpose_b), so the compiled model moves no [.., dim, keys] K^T; the output is unchanged within bf16 rounding."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import drop_identity_layouts, reads_on_matmuls

    heads, dim, keys = 2, 8, 40

    def toy() -> ov.Model:
        q = ops.parameter([1, heads, 3, dim], ov.Type.f32, name="q")
        tokens = ops.parameter([1, keys, heads, dim], ov.Type.f32, name="tokens")
        split = ops.transpose(ops.convert(tokens, ov.Type.bf16), ops.constant(np.array([0, 2, 1, 3], np.int64)))
        k_t = ops.reshape(ops.transpose(ops.reshape(split, [heads, keys, dim], False), [0, 2, 1]),
                          [1, heads, dim, keys], False)
        k = ops.transpose(k_t, [0, 1, 3, 2])
        out = ops.scaled_dot_product_attention(ops.convert(q, ov.Type.bf16), k, split)
        return ov.Model([ops.convert(out, ov.Type.f32)], [q, tokens])

    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal([1, heads, 3, dim]).astype(np.float32),
             rng.standard_normal([1, keys, heads, dim]).astype(np.float32)]
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    before = ov.Core().compile_model(toy(), "CPU", config)(feeds)[0]
    model = toy()
    assert drop_identity_layouts(model) == 0, "the chain starts at the head split: not an identity as a whole"
    assert reads_on_matmuls(model, min_keys=32) == 1
    scores = next(op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul")
    source = scores.input_value(1).get_node()
    assert source.get_type_name() == "Transpose" and list(source.input_value(1).get_node().get_data()) == [0, 2, 1, 3]
    assert scores.get_attributes()["transpose_b"] is True
    compiled = ov.Core().compile_model(model, "CPU", config)
    moved = [list(op.get_output_partial_shape(0).to_shape()) for op in compiled.get_runtime_model().get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Transpose"]
    assert not [s for s in moved if s[-2:] == [dim, keys]], moved
    after = compiled(feeds)[0]
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 2e-2


def test_layer_norm_per_reader() -> None:
    """layer_norm_per_reader: a LayerNorm (MVN, Multiply gamma, Add beta) read by two ops (a Canvas Read's keys and
    values) gets a second affine for its second reader, which OpenVINO's compilation does not merge back into the
    first; the outputs are unchanged to float32 rounding; a LayerNorm with one reader is left."""
    import openvino.opset13 as ops

    from canvit_export.export.openvino import layer_norm_per_reader

    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2, 32).astype(np.float32), rng.standard_normal(32).astype(np.float32)

    def toy() -> ov.Model:
        x = ops.parameter([1, 64, 32], ov.Type.f32, name="x")
        norms = []
        for source, scale in ((x, 1), (ops.exp(x), 2)):  # two distinct LayerNorms: nothing for OpenVINO to merge
            mvn = ops.mvn(source, ops.constant(np.array([-1], np.int64)), True, 1e-6, "inside_sqrt")
            norms.append(ops.add(ops.multiply(mvn, ops.constant(gamma * scale)), ops.constant(beta)))
        shared, single = norms
        shared.output(0).set_names({"ln_kv"})
        keys = ops.multiply(shared, x)  # not a constant: nothing for OpenVINO to fold the copy into
        values = ops.reshape(shared, [1, 64, 4, 8], False)
        return ov.Model([keys, values, ops.sqrt(ops.abs(single))], [x])

    x = rng.standard_normal((1, 64, 32)).astype(np.float32) * 4 + 1
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    before = ov.Core().compile_model(toy(), "CPU", config)([x])
    model = toy()
    copies = layer_norm_per_reader(model)
    assert copies == {next(iter(copies)): {"ln_kv"}} and len(copies) == 1, copies
    name = next(iter(copies))
    compiled = ov.Core().compile_model(model, "CPU", config)
    originals = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ops()]
    assert any(name in o.split(",") for o in originals), "the copy survives compilation as its own node"
    after = compiled([x])
    for i in range(3):  # the same products; a fused multiply-add in one kernel and not the other moves an ulp
        np.testing.assert_allclose(after[i], before[i], rtol=1e-6, atol=1e-6 * np.abs(before[i]).max())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_canvas_copy_before_the_reads_rope(ir, precision: str) -> None:
    """In the compiled step (ViT-S, canvas 16: 272 canvas tokens) no Reorder reads a canvas LayerNorm's output: a
    Canvas Read's keys have their own LayerNorm affine (layer_norm_per_reader), so the plugin's in-place RoPE no longer
    copies the LayerNorm output the values share (three copies per glimpse before; with the copy's operands in the
    same order as the shared affine's, OpenVINO merges the two back and the copies return)."""
    # stateless: the runtime model of a stateful IR without readouts lists its inputs only
    model = ov.Core().read_model(str(ir(precision, stateful=False) / "step.xml"))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runtime = compiled.get_runtime_model().get_ordered_ops()
    canvas_norms = [op for op in runtime if op.get_output_partial_shape(0).is_static
                    and 272 in list(op.get_output_partial_shape(0).to_shape())
                    and "layer_norm" in op.get_rt_info()["originalLayersNames"].astype(str)]
    assert len(canvas_norms) >= 6, "the canvas LayerNorms (3 Reads, 3 Writes) are there to be checked"
    copies = [target.get_node().get_friendly_name() for norm in canvas_norms for target in norm.output(0).get_target_inputs()
              if target.get_node().get_rt_info()["layerType"].astype(str) == "Reorder"]
    assert not copies, copies
