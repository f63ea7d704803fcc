"""Static INT8 (weights and activations) with the canvas path kept float32, by well-kept quantizers only.

- OpenVINO: NNCF post-training quantization (`nncf.quantize`, model type TRANSFORMER with its transformer ignored
  patterns, SmoothQuant off as measured below, fast bias correction) of the fp32 IR, calibrated on a rollout
  calibration set (canvit_export.calibration), with every op that produces or reads an unquantizable tensor
  (precision.AuditReport.unquantizable: canvas stream, coordinates, RoPE, VPE, readouts) in the ignored scope. The
  canvas LayerNorm outputs may be quantized at a Canvas Read/Write projection's input, as the bf16/fp16 exports
  cast them to the matmul dtype there.
- ONNX: ONNX Runtime's static quantization (`onnxruntime.quantization.quantize_static`) into a Q/DQ graph,
  symmetric int8 activations and per-channel int8 weights (S8S8, zero points 0: the Q/DQ form TensorRT's strongly
  typed mode takes), the matmuls with constant weights only (attention's activation x activation matmuls and the
  softmax between them stay float: is_attention_matmul), the same ops excluded. ONNX Runtime's CPU runner turns the
  activations unsigned at load (canvit_runtime.onnxruntime.unsigned_activations), the form its x86 kernels take.
The audit then proves no quantizer sits on a protected tensor (precision.audit_onnx for Q/DQ graphs,
fake_quantize_violations for OpenVINO).

ONNX Runtime's `CalibMaxIntermediateOutputs` option is not used: in onnxruntime 1.32 the MinMax calibrator clears
the collected outputs every N samples without folding them into the ranges, so "No data is collected" (or only
the last partial batch) results. MinMax keeps only ReduceMin/ReduceMax outputs per sample, so memory is small anyway.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from canvit_export.calibration import CalibrationSet, resolve_calibration
from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    copy_initial_state,
    derived_fields,
    finish_manifest,
    load_source_artifact,
    staged_artifact,
)
from canvit_export.precision import audit_onnx
from canvit_export.progress import Stages
from canvit_runtime.manifest import CalibrationRecord, Manifest, OnnxArtifact, PrecisionRecord, a_precision, verified_onnx

GRAPH_FILE = "step.onnx"


class _Samples:
    """A re-iterable of the calibration feeds (NNCF and ONNX Runtime both iterate more than once)."""

    def __init__(self, calibration: CalibrationSet, names: list[str], limit: int | None = None) -> None:
        self.calibration, self.names, self.limit = calibration, names, limit

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for feeds in self.calibration.samples(self.limit):
            yield {name: feeds[name] for name in self.names}

    def __len__(self) -> int:
        return self.calibration.count if self.limit is None else min(self.limit, self.calibration.count)


def ops_touching(model: Any, protected: set[str]) -> set[str]:
    """OpenVINO friendly names of the ops that produce or read a protected tensor (matched by tensor name)."""
    names = set()
    for op in model.get_ops():
        outputs = set().union(*(o.get_names() for o in op.outputs())) if op.get_output_size() else set()
        inputs = set().union(*(i.get_source_output().get_names() for i in op.inputs())) if op.get_input_size() else set()
        if (outputs | inputs) & protected:
            names.add(op.get_friendly_name())
    return names


def fake_quantize_violations(model: Any, protected: set[str]) -> list[str]:
    """FakeQuantize ops of an OpenVINO model whose input is a protected tensor (one line each; empty is a pass)."""
    bad = []
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            names = op.input(0).get_source_output().get_names()
            if hit := names & protected:
                bad.append(f"FakeQuantize {op.get_friendly_name()} quantizes protected tensor {sorted(hit)[0]}")
    return bad


def nncf_static_int8(model: Any, samples: Any, count: int, ignored: list[str] | None = None) -> Any:
    """nncf.quantize of an OpenVINO model as every static INT8 here runs it (the export, bench's INT8 floor): model
    type TRANSFORMER, SmoothQuant off, fast bias correction, the op names `ignored` left float; `samples` an iterable
    of input lists, `count` of them used. ExportError naming the install when NNCF is missing."""
    # NNCF imports torch's extension loader, which warns that this CPU machine has no CUDA runtime.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as error:
        raise ExportError("INT8 (--precision int8) needs NNCF: pip install nncf (or canvit-export[openvino])") from error
    nncf.set_log_level(logging.WARNING)  # its INFO lists every op it leaves unquantized, hundreds of lines
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    # SmoothQuant off: it raised the canvas error of every alpha tried (docs/measurements/2026-12-02-choices.md).
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=count,
                         fast_bias_correction=True, ignored_scope=nncf.IgnoredScope(names=ignored or [], validate=False),
                         advanced_parameters=advanced)


def quantize_openvino(model: Any, calibration: CalibrationSet, protected: set[str]) -> tuple[Any, dict[str, Any]]:
    """NNCF static INT8 of an OpenVINO model (fp32 IR); returns it with what the manifest records."""
    names = [p.get_any_name() for p in model.inputs]
    ignored = sorted(ops_touching(model, protected))
    quantized = nncf_static_int8(model, _Samples(calibration, names), calibration.count, ignored)
    if bad := fake_quantize_violations(quantized, protected):
        raise ExportError(f"NNCF quantized the canvas path: {bad[0]} (+{len(bad) - 1} more); please report this")
    import nncf  # imported by nncf_static_int8

    quantizers = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return quantized, {"quantizer": f"nncf {nncf.__version__} quantize (TRANSFORMER, SmoothQuant off, fast bias "
                                    f"correction)", "quantizers": quantizers, "excluded_ops": len(ignored)}


def is_attention_matmul(node: Any, constants: set[str]) -> bool:
    """A MatMul of two activations (attention's Q K^T and P V): kept float. quantize_static's MatMulConstBOnly does not
    hold in QDQ format (onnxruntime 1.32 quantized them, with the softmax between them: QLinearSoftmax). Float, they
    were both faster and closer to fp32 (docs/measurements/2026-12-02-choices.md)."""
    return node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] not in constants


def quantize_onnx(fp32_graph: Path, out_graph: Path, calibration: CalibrationSet, protected: set[str]) -> dict[str, Any]:
    """ONNX Runtime static Q/DQ INT8 of step.onnx into out_graph; returns what the manifest records."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_graph))
    constants = {init.name for init in model.graph.initializer}
    excluded = sorted(node.name for node in model.graph.node
                      if (set(node.input) | set(node.output)) & protected or is_attention_matmul(node, constants))
    names = [v.name for v in model.graph.input]
    samples = _Samples(calibration, names)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.iterator = iter(samples)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.iterator, None)

        def rewind(self) -> None:
            self.iterator = iter(samples)

    # quantize_static logs "Please consider to run pre-processing" on the root logger: its pre-processing (symbolic
    # shape inference, ONNX Runtime graph optimizations) would rename the tensors the precision audit protects.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32_graph), str(out_graph), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out_graph))
    quantizers = sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    return {"quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, S8S8 symmetric, per-channel "
                         f"weights, MinMax, attention matmuls float)", "quantizers": quantizers, "excluded_ops": len(excluded)}


def export_onnx_int8(artifact: Path, out: Path, *, calibration: Path | None = None, threads: int | None = None,
                     force: bool = False, quiet: bool = False) -> Manifest:
    """Write out/step.onnx, a static INT8 Q/DQ graph quantized from the fp32 ONNX artifact, with its initial state
    and manifest (precision int8 with its calibration record), atomically; return the manifest.

    calibration: a recorded set, a folder of images, or None (scikit-image's photos). Raises ExportError for a
    non-fp32 source, a bad calibration folder, or a quantized graph that fails the precision audit.
    """
    source = load_source_artifact(artifact, target="INT8 quantization")
    if source.precision.name != "fp32":
        raise ExportError(f"{artifact} is {a_precision(source.precision.name)} graph: INT8 is quantized from the fp32 graph "
                          f"(`canvit-export onnx --precision fp32`)")
    stages = Stages(3, quiet=quiet)
    inputs = (artifact,) if calibration is None else (artifact, calibration)
    with staged_artifact(out, force=force, inputs=inputs) as staging, tempfile.TemporaryDirectory(dir=out.parent) as work:
        with stages.stage("calibration set (the step's inputs over rollouts of the fp32 graph)"):
            calib = resolve_calibration(source, calibration, Path(work), threads=threads, quiet=quiet)
        with stages.stage(f"quantizing to INT8 Q/DQ with ONNX Runtime ({calib.count} calibration samples)"):
            graph = Path(work) / "fp32.onnx"  # the checksummed bytes, with no unlisted external data
            graph.write_bytes(verified_onnx(source))
            protected = audit_onnx(onnx.load(str(graph))).unquantizable
            facts = quantize_onnx(graph, staging / GRAPH_FILE, calib, protected)
        with stages.stage("checking the graph (onnx.checker, precision audit incl. Q/DQ) and writing the manifest"):
            onnx.checker.check_model(str(staging / GRAPH_FILE))
            model = onnx.load(str(staging / GRAPH_FILE))
            audit = audit_onnx(model)
            if not audit.ok:
                raise ExportError(f"the INT8 graph fails its audit: {audit.violations[0]} "
                                  f"(+{len(audit.violations) - 1} more)")
            copy_initial_state(source, staging)
            fields = derived_fields(source)
            fields["precision"] = int8_record(calib, facts)
            assert isinstance(source.artifact, OnnxArtifact)
            manifest = finish_manifest(
                staging, {"graph": GRAPH_FILE, "initial_state": INITIAL_STATE_FILE}, ("onnx", "onnxruntime"),
                artifact=OnnxArtifact(target="onnx", opset=source.artifact.opset, ir_version=model.ir_version,
                                      nodes=len(model.graph.node), op_counts=audit.op_counts),
                **fields)
    return manifest.at(out)


def int8_record(calibration: CalibrationSet, facts: dict[str, Any]) -> PrecisionRecord:
    """The manifest's precision record of a static INT8 artifact, with how it was calibrated."""
    index = calibration.index
    return PrecisionRecord(
        name="int8", matmul_dtype="int8", stream_dtype="float32", weights="int8-sym-per-channel",
        follows_float32_rule=True,
        calibration=CalibrationRecord(images=index["images"], policies=index["policies"], glimpses=index["glimpses"],
                                      samples=calibration.count, graph_sha256=index["graph_sha256"], **facts))
