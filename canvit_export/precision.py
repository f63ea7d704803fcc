"""The precision rule, and the audit that proves an ONNX graph keeps it.

The rule (paper App. D.3; docs/design.md, Contracts): whatever the compute precision, these stay float32:
- the state I/O (`canvas`, `recurrent_cls`, `canvas_next`, `recurrent_cls_next`) and the scene and viewpoint inputs;
- the canvas residual stream: `canvas`, every `canvas + write(...)` sum up to `canvas_next`, and each update as it
  is added;
- scene coordinates, RoPE angles/sin/cos and the VPE: every tensor computed from `centers`/`scales` alone
  (the coordinate region below), and every Sin, Cos, Log and GridSample input and output;
- LayerNorm statistics of the canvas (LayerNormalization on a canvas-stream tensor: float32 input, stash_type 1);
- the readouts: every tensor the heads compute from the new state (canvas_next, recurrent_cls_next) up to the
  readout outputs (the probe's LayerNorm of the canvas, the entropy's logsumexp, the classifier, the feature head);
- in Q/DQ (static INT8) graphs, none of the above is the input of a QuantizeLinear, but for the canvas LayerNorm
  outputs: those may be quantized at an INT8 Canvas Read/Write projection's input, as they are cast to bf16/fp16
  at a narrow one's (the LayerNorm itself, statistics included, runs in float32).

`audit_onnx` walks the graph and lists every tensor that breaks the rule; an empty list is a pass.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import onnx
import torch
from canvit_pytorch import CanViT
from onnx import TensorProto
from torch import nn

from canvit_runtime.precision import TARGET_PRECISIONS, precision_info

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """How the step module computes at one word of the vocabulary (canvit_runtime.precision): `compute` for
    matmuls, the patch-embedding conv and attention; `stream` for the residual streams (canvas, glimpse tokens),
    LayerNorm and LayerScale. `follows_rule` is False only for fp16-all, the control variant that measures what the
    float32 canvas buys. INT8-weight words are weight compressions of a compiled graph (OpenVINO), not step
    precisions: `step_precision` refuses them."""

    name: str
    compute: torch.dtype
    stream: torch.dtype
    follows_rule: bool = True


def step_precision(name: str) -> Precision:
    """The step module's dtypes for precision word `name`; ValueError for a word the step cannot be exported at."""
    info = precision_info(name, allowed=TARGET_PRECISIONS["onnx"])
    return Precision(info.name, TORCH_DTYPES[info.matmul_dtype], TORCH_DTYPES[info.stream_dtype], info.follows_rule)


def cast_model(canvit: CanViT, precision: Precision) -> CanViT:
    """The model with its weights in the dtypes the step computes in; `canvit` itself is left untouched.

    Linear and Conv2d weights go to precision.compute. With a narrow stream (fp16-all) LayerNorm, LayerScale and
    the learned tokens go to precision.stream too. The VPE module always stays float32 (paper App. D.3).
    For fp32 the model is returned as is (no copy).
    """
    if precision.compute == torch.float32 and precision.stream == torch.float32:
        return canvit
    model = copy.deepcopy(canvit)
    vpe_modules = set(model.vpe.modules()) if model.vpe is not None else set()
    for module in model.modules():
        if module in vpe_modules:
            continue
        if isinstance(module, nn.Linear | nn.Conv2d):
            module.to(precision.compute)
        elif precision.stream != torch.float32 and isinstance(module, nn.LayerNorm):
            module.to(precision.stream)
    if precision.stream != torch.float32:
        for name, parameter in model.named_parameters():
            if parameter.dtype == torch.float32 and not name.startswith("vpe."):
                parameter.data = parameter.data.to(precision.stream)
    return model
FORBIDDEN_OPS = ("ScatterND",)
"""Ops the exported step must not contain: ScatterND (slice assignment) is slow or unsupported on edge runtimes."""
STATE_IO = ("canvas", "recurrent_cls", "canvas_next", "recurrent_cls_next")
COORDINATE_INPUTS = ("centers", "scales")
FLOAT32_OPS = ("Sin", "Cos", "Log", "GridSample")
DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
               TensorProto.DOUBLE: "float64", TensorProto.INT64: "int64", TensorProto.INT32: "int32",
               TensorProto.BOOL: "bool", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8"}
NARROW = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8,
          TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}


@dataclass
class AuditReport:
    """What audit_onnx checked and what broke the rule (`violations`, one line each; empty is a pass)."""

    canvas_stream: list[str] = field(default_factory=list)
    protected: set[str] = field(default_factory=set)
    """Every tensor the rule keeps float32: the canvas stream, the coordinate region, Sin/Cos/Log/GridSample
    outputs and canvas LayerNorm outputs (what other compilers, e.g. OpenVINO, must keep in f32)."""
    canvas_norm_outputs: set[str] = field(default_factory=set)
    """Outputs of the canvas LayerNorms: computed in float32 (statistics included) and kept float32 in the graph,
    but, like the Cast to bf16/fp16 that feeds a narrow Canvas Read/Write projection, they may be quantized at the
    input of an INT8 matmul: they are not in `unquantizable`."""
    coordinate_tensors: int = 0
    readout_tensors: int = 0
    float32_op_tensors: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    tensor_dtypes: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def unquantizable(self) -> set[str]:
        """The tensors no quantizer may read (QuantizeLinear, FakeQuantize): `protected` but the canvas LayerNorm
        outputs, i.e. the canvas stream, coordinates, RoPE, VPE, Sin/Cos/Log/GridSample outputs and readouts."""
        return self.protected - self.canvas_norm_outputs


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto enum) of every named tensor: inputs, outputs, initializers, inferred values."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


DTYPE_NAME_OF: dict[int, str] = {int(k): v for k, v in DTYPE_NAMES.items()}


def _dtype(types: dict[str, int], name: str) -> str:
    return DTYPE_NAME_OF.get(types.get(name, 0), f"type {types.get(name, 'unknown')}")


def audit_onnx(model: onnx.ModelProto) -> AuditReport:
    """Check the precision rule and the forbidden ops on an exported step graph (see the module docstring): the
    canvas stream, the coordinate region, the readout region, the float32 ops and the Q/DQ placement, in turn."""
    graph = model.graph
    types = tensor_types(model)
    report = AuditReport()
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        counts[node.op_type] += 1
    report.op_counts = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    report.tensor_dtypes = {DTYPE_NAME_OF.get(t, str(t)): 0 for t in set(types.values())}
    for t in types.values():
        report.tensor_dtypes[DTYPE_NAME_OF.get(t, str(t))] += 1
    for op in FORBIDDEN_OPS:
        if counts.get(op):
            report.violations.append(f"{counts[op]} {op} node(s): the step must be built without slice assignment")
    io_names = {v.name for v in (*graph.input, *graph.output)}
    for name in (*STATE_IO, *COORDINATE_INPUTS, "scene"):
        if name in io_names and types.get(name) != TensorProto.FLOAT:
            report.violations.append(f"graph I/O {name} is {_dtype(types, name)}, must be float32")
    _audit_canvas_stream(graph, types, report)
    _audit_coordinates(graph, types, io_names, report)
    _audit_readouts(graph, types, io_names, report)
    _audit_float32_ops(graph, types, report)
    # Q/DQ graphs (static INT8): a QuantizeLinear on an unquantizable tensor would round the canvas stream, the
    # coordinates, RoPE, the VPE or a readout to 8 bits even though the tensors around it stay float32.
    unquantizable = report.unquantizable
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in unquantizable:
            report.violations.append(f"QuantizeLinear {node.name} quantizes protected tensor {node.input[0]}")
    return report


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def _audit_canvas_stream(graph: onnx.GraphProto, types: dict[str, int], report: AuditReport) -> None:
    """The canvas residual stream: canvas -> Add (one per Canvas Write) -> ... -> canvas_next, through any Cast on
    the way (a Cast to a narrower type is then reported as a narrow stream tensor); its LayerNorms in float32."""
    bad, consumers, stream = report.violations, _consumers(graph), ["canvas"]
    while stream[-1] != "canvas_next":
        adds = [n for n in consumers[stream[-1]] if n.op_type == "Add"]
        casts = [n for n in consumers[stream[-1]] if n.op_type == "Cast"]
        if len(adds) == 1:
            add = adds[0]
            update = add.input[1] if add.input[0] == stream[-1] else add.input[0]
            if types.get(update) != TensorProto.FLOAT:
                bad.append(f"canvas update {update} is added as {_dtype(types, update)}, must be float32")
            stream.append(add.output[0])
        elif not adds and len(casts) == 1:
            stream.append(casts[0].output[0])
        else:
            bad.append(f"canvas stream breaks after {stream[-1]}: {len(adds)} Add and {len(casts)} Cast consumers")
            break
        if len(stream) > len(graph.node):
            bad.append("canvas stream does not reach canvas_next")
            break
    report.canvas_stream = stream
    report.protected.update(stream)
    for name in stream:
        if types.get(name) != TensorProto.FLOAT:
            bad.append(f"canvas stream tensor {name} is {_dtype(types, name)}, must be float32")
        for node in consumers[name]:
            if node.op_type == "LayerNormalization":
                report.protected.update(node.output)
                report.canvas_norm_outputs.update(node.output)
                stash = next((a.i for a in node.attribute if a.name == "stash_type"), 1)
                if stash != 1:
                    bad.append(f"LayerNormalization {node.name} on the canvas has stash_type {stash}, must be 1 (float32)")


def _region(graph: onnx.GraphProto, types: dict[str, int], seeds: set[str], *, stop_at_cast: bool) -> set[str]:
    """The tensors computed from `seeds` and constants alone (nodes are topologically sorted); a node that also
    reads a tensor from outside ends the region, and so does a Cast where `stop_at_cast`."""
    initializers = {init.name for init in graph.initializer}
    region = set(seeds)
    for node in graph.node:
        data_inputs = [name for name in node.input if name and name not in initializers and types.get(name) is not None]
        if node.op_type == "Constant" or (stop_at_cast and node.op_type == "Cast") or not data_inputs:
            continue
        if all(name in region for name in data_inputs):
            region.update(out for out in node.output if out)
    return region


def _audit_coordinates(graph: onnx.GraphProto, types: dict[str, int], io_names: set[str], report: AuditReport) -> None:
    """The coordinate region (centers, scales -> RoPE, VPE): it ends at Cast nodes (a deliberate hand-over, e.g. the
    VPE token entering a narrower backbone stream) and at nodes that also read features (RoPE times queries)."""
    region = _region(graph, types, set(COORDINATE_INPUTS) & io_names, stop_at_cast=True)
    report.coordinate_tensors = len(region)
    report.protected.update(region)
    for name in sorted(region):
        if types.get(name) in NARROW:
            report.violations.append(f"coordinate/RoPE/VPE tensor {name} is {_dtype(types, name)}, must be float32")


def _audit_readouts(graph: onnx.GraphProto, types: dict[str, int], io_names: set[str], report: AuditReport) -> None:
    """The readout region: what the heads compute from the new state (canvas_next, recurrent_cls_next) and constants
    alone, up to the readout outputs; all of it float32, Casts included (a narrowing Cast is itself a finding)."""
    bad = report.violations
    readout_outputs = [v.name for v in graph.output if v.name not in STATE_IO and v.name != "glimpse"]
    seeds = {"canvas_next", "recurrent_cls_next"} & io_names if readout_outputs else set()
    readouts = _region(graph, types, seeds, stop_at_cast=False) - {"canvas_next", "recurrent_cls_next"}
    report.readout_tensors = len(readouts)
    report.protected.update(readouts)
    for name in readout_outputs:
        if name not in readouts:
            bad.append(f"readout {name} is not computed from the new state alone")
        elif types.get(name) != TensorProto.FLOAT:
            bad.append(f"readout {name} is {_dtype(types, name)}, must be float32")
    for name in sorted(readouts):
        if types.get(name) in NARROW:
            bad.append(f"readout tensor {name} is {_dtype(types, name)}, must be float32")


def _audit_float32_ops(graph: onnx.GraphProto, types: dict[str, int], report: AuditReport) -> None:
    """Every input and output of FLOAT32_OPS (Sin, Cos, Log, GridSample...) float32."""
    for node in graph.node:
        if node.op_type in FLOAT32_OPS:
            report.protected.update(node.output)
            for name in (*node.input, *node.output):
                report.float32_op_tensors += 1
                if types.get(name) in NARROW:
                    report.violations.append(f"{node.op_type} tensor {name} is {_dtype(types, name)}, must be float32")
