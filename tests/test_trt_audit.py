"""The static TensorRT audit (canvit_runtime.trt_audit): every graph our exporters write passes for every audited
TensorRT version, and crafted graphs that TensorRT 10.3's parser refuses are each refused with one line.

Expected values in the refusal tests are literals read in onnx-tensorrt's docs/operators.md at release/10.1-GA
(commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c), the table the JSON records for "10.3":
  `| Bernoulli | N |`; `| MatMul | Y | FP32, FP16, BF16 |`;
  Resize "Supported resize modes: `nearest`, `linear`."; ScatterND "`reduction` is not supported".
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from canvit_export.cli import main
from canvit_runtime.manifest import load_manifest
from canvit_runtime.paths import ExportError
from canvit_runtime.trt_audit import AUDITED_VERSIONS, Finding, audit_graph_file, audit_model, check, load_support
from conftest import invoke

# (precision, readout, opset): fp32 at both opsets, every precision, readouts with fp32 and a narrow precision.
EXPORTS = [
    ("fp32", None, 18),
    ("fp32", None, 17),
    ("fp16", None, 18),
    ("bf16", None, 18),
    ("int8", None, 18),
    ("fp32", "segmentation,classification", 18),
    ("fp16", "segmentation,classification", 18),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """exported(precision, readout, opset) -> the artifact's graph file, each configuration exported once."""
    cache: dict[tuple, Path] = {}

    def make(precision: str, readout: str | None, opset: int) -> Path:
        key = (precision, readout, opset)
        if key not in cache:
            out = tmp_path_factory.mktemp("trt-audit") / f"{precision}-o{opset}{'-r' if readout else ''}"
            args = ["onnx", "--random-weights", "--backbone", "vits16", "--canvas", 8, "--scene", 128,
                    "--precision", precision, "--opset", opset, "--out", out]
            if readout:
                args += ["--readout", readout]
            code, output = invoke(main, *args)
            assert code == 0, output
            cache[key] = load_manifest(out).file("graph")
        return cache[key]

    return make


@pytest.mark.parametrize(("precision", "readout", "opset"), EXPORTS,
                         ids=[f"{p}-opset{o}{'-readouts' if r else ''}" for p, r, o in EXPORTS])
def test_exported_graphs_pass_every_version(exported, precision: str, readout: str | None, opset: int) -> None:
    graph = exported(precision, readout, opset)
    findings = audit_graph_file(graph)
    assert set(findings) == set(AUDITED_VERSIONS)
    assert all(not f for f in findings.values()), "\n".join(x.line() for f in findings.values() for x in f)
    counts = check(graph)
    assert counts["nodes"] > 100 and all(counts[v] > 5 for v in AUDITED_VERSIONS), counts


def test_support_matrix_records_its_sources() -> None:
    support = load_support()
    assert set(AUDITED_VERSIONS) <= set(support["versions"])
    assert support["sources"] and support["bf16"]["min_compute_capability"] == 8.0
    v103 = support["versions"]["10.3"]
    assert v103["source"]["commit"] == "96e781103cfc4adf4a6bb557e94bac8e693f6f4c"
    # Rows as read in operators.md (release/10.1-GA).
    assert v103["operators"]["Bernoulli"]["supported"] is False
    assert v103["operators"]["MatMul"]["types"] == ["FP32", "FP16", "BF16"]
    assert v103["operators"]["GridSample"]["types"] == ["FP32", "FP16"]
    assert v103["quantized_types"] == ["INT8", "INT4", "FP8"]


def _model(node: onnx.NodeProto, inputs: list, outputs: list, initializers: tuple = (),
           extra_opsets: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "crafted", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), *extra_opsets])


def _refused_once(model: onnx.ModelProto, expected: Finding, compute_capability: float | None = None) -> None:
    """The audit finds exactly `expected` under 10.3, and check() raises it as one line."""
    assert audit_model(model, "10.3", compute_capability=compute_capability) == [expected]
    with pytest.raises(ExportError) as caught:
        check(model, versions=("10.3",), compute_capability=compute_capability)
    message = str(caught.value)
    assert message == expected.line() and "\n" not in message
    assert f"node {expected.node} (" in message and expected.op in message and "TensorRT 10.3" in message
    if expected.dtype:
        assert expected.dtype in message


def _vi(name: str, elem: int, shape: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def test_unsupported_op_is_refused() -> None:
    # operators.md (10.1-GA): "| Bernoulli | N |".
    model = _model(helper.make_node("Bernoulli", ["x"], ["y"], name="/coin/Bernoulli"),
                   [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    _refused_once(model, Finding(node="/coin/Bernoulli", op="Bernoulli", dtype=None, version="10.3",
                                 reason="does not take Bernoulli (operators.md marks it unsupported (N))",
                                 fix="export it with ops the table marks Y"))


def test_unsupported_attribute_value_is_refused() -> None:
    # operators.md (10.1-GA), Resize: "Supported resize modes: `nearest`, `linear`." -- cubic is not among them.
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="/up/Resize", mode="cubic")
    model = _model(node, [_vi("x", TensorProto.FLOAT, [1, 1, 4, 4])], [_vi("y", TensorProto.FLOAT, None)], (scales,))
    _refused_once(model, Finding(node="/up/Resize", op="Resize", dtype=None, version="10.3",
                                 reason="does not take mode='cubic' (a restriction in operators.md)",
                                 fix="set mode to one of nearest, linear"))
    # The same graph with a documented mode passes.
    model.graph.node[0].attribute[0].s = b"linear"
    assert audit_model(model, "10.3") == []


def test_scatternd_reduction_is_refused() -> None:
    # operators.md (10.1-GA), ScatterND: "`reduction` is not supported".
    indices = helper.make_tensor("i", TensorProto.INT64, [1, 1], [0])
    node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="/scatter", reduction="add")
    model = _model(node, [_vi("x", TensorProto.FLOAT, [4]), _vi("u", TensorProto.FLOAT, [1])],
                   [_vi("y", TensorProto.FLOAT, [4])], (indices,))
    [finding] = audit_model(model, "10.3")
    assert (finding.node, finding.op, finding.reason) == (
        "/scatter", "ScatterND", "does not take reduction='add' (a restriction in operators.md)")


def test_unsupported_dtype_is_refused() -> None:
    # operators.md (10.1-GA): "| MatMul | Y | FP32, FP16, BF16 |" -- no INT32 column.
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="/blocks.0/MatMul")
    model = _model(node, [_vi("a", TensorProto.INT32, [2, 2]), _vi("b", TensorProto.INT32, [2, 2])],
                   [_vi("y", TensorProto.INT32, [2, 2])])
    _refused_once(model, Finding(node="/blocks.0/MatMul", op="MatMul", dtype="INT32", version="10.3",
                                 reason="does not take INT32 MatMul (supported types: FP32, FP16, BF16)",
                                 fix="give MatMul one of FP32, FP16, BF16"))


def test_bf16_on_xavier_is_refused() -> None:
    # BF16 is in MatMul's column, but needs compute capability >= 8.0: Orin (8.7) yes, Xavier (7.2) no.
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="/blocks.3/attn/MatMul")
    model = _model(node, [_vi("a", TensorProto.BFLOAT16, [2, 2]), _vi("b", TensorProto.BFLOAT16, [2, 2])],
                   [_vi("y", TensorProto.BFLOAT16, [2, 2])])
    assert audit_model(model, "10.3", compute_capability=8.7) == []
    assert audit_model(model, "10.3") == []
    _refused_once(model, Finding(node="/blocks.3/attn/MatMul", op="MatMul", dtype="BF16", version="10.3",
                                 reason="cannot run BF16 on compute capability 7.2 (BF16 needs >= 8)",
                                 fix="export fp16 or fp32 for this device"), compute_capability=7.2)


def test_custom_domain_op_is_refused() -> None:
    node = helper.make_node("FusedGelu", ["x"], ["y"], name="/mlp/FusedGelu", domain="com.example")
    model = _model(node, [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])],
                   extra_opsets=(helper.make_opsetid("com.example", 1),))
    _refused_once(model, Finding(node="/mlp/FusedGelu", op="FusedGelu", dtype=None, version="10.3",
                                 reason="has no importer for custom op domain 'com.example'",
                                 fix="export it with standard ONNX ops, or register a TensorRT plugin of that name"))


def test_int8_outside_qdq_is_refused() -> None:
    # operators.md: INT8 is a quantized type, "available only through quantization from a floating-point type".
    node = helper.make_node("Relu", ["x"], ["y"], name="/relu")
    model = _model(node, [_vi("x", TensorProto.INT8, [4])], [_vi("y", TensorProto.INT8, [4])])
    [finding] = audit_model(model, "10.3")
    assert (finding.op, finding.dtype) == ("Relu", "INT8")


def test_check_counts_and_several_findings() -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="/relu")
    model = _model(node, [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    assert check(model) == {**dict.fromkeys(AUDITED_VERSIONS, 1), "nodes": 1}
    bern = _model(helper.make_node("Bernoulli", ["x"], ["y"], name="b"),
                  [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    with pytest.raises(ExportError, match=r"^node b \(Bernoulli\): TensorRT 10\.3's .* \(and 2 more\)$"):
        check(bern)
