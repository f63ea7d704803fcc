"""The ExecuTorch target: the glimpse step as one `.pte` program for Android, iOS and embedded Linux (docs/executorch.md).

torch.export of the step, lowered with ExecuTorch's XNNPACK partitioner (ARM and x86 CPUs) as far as it goes
(`to_edge_transform_and_lower`); what XNNPACK does not take runs on ExecuTorch's portable kernels, and the manifest
lists those ops.

Stateful (the default): the canvas and the recurrent CLS are float32 mutable buffers of the program, written in
place (`copy_`) at the end of every glimpse, so the state stays in the runtime between glimpses. ExecuTorch starts
mutable buffers at zeros, not at their registered values (measured with executorch 1.5.1), so the learned initial
state is embedded as constants and the `reset` input [B] (1.0 on a scene's first glimpse) selects it instead of the
buffers, per batch row. A separate reset method would not do: ExecuTorch does not share mutable buffers across
methods. The program also outputs `canvas_next` and `recurrent_cls_next` (what the buffers were set to), so a caller
reads the state without feeding it back. `--no-stateful` keeps the state as inputs and outputs, as the ONNX graph.

For XNNPACK, three ops of the step are written in forms it takes, at export time only (`XNNPACK_FORMS`, applied
by `export_program` with torch.export's `run_decompositions`; step.GlimpseStep and canvit-pytorch's parameters are
used as they are): attention as bmm, softmax, bmm (the SDPA's own decomposition brings masking ops XNNPACK refuses),
LayerNorm as two 4-D means (XNNPACK has no LayerNorm; its mean takes 4-D tensors over the two inner dims), and
`unbind` as narrow + reshape (its squeeze is refused). The QKV key-bias mask product of parameters (and its cast
under fp16) is folded into a constant, so those linears keep a static bias. Each op XNNPACK refuses splits the graph
into more delegates (the census before and after: docs/executorch.md).

Precision: the step carries its own casts (step.GlimpseStep); `audit_program` walks the exported program before
partitioning and `audit_delegates` the dtypes at every delegate boundary after it, and the export fails when a
canvas, RoPE, coordinate, VPE or readout tensor is narrower than float32.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from canvit_export.calibration import CalibrationSet, load_calibration, refuse_unused_calibration
from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    Geometry,
    architecture_record,
    check_geometry,
    finish_manifest,
    preprocessing_record,
    pytorch_step,
    staged_artifact,
    write_initial_state,
)
from canvit_export.export.int8 import int8_record
from canvit_export.export.onnx import precision_record
from canvit_export.precision import step_precision
from canvit_export.progress import Stages
from canvit_export.readouts import Heads
from canvit_export.source import LoadedModel
from canvit_export.step import INPUT_NAMES, GlimpseStep
from canvit_runtime.manifest import ROLE_RESET, ExecuTorchArtifact, Manifest, ProgramAudit, TensorSpec
from canvit_runtime.precision import TARGET_PRECISIONS, precision_info

PROGRAM = "step.pte"
STATEFUL_INPUTS = ("scene", "centers", "scales", "reset")
STATE_BUFFERS = {"canvas": "canvas", "recurrent_cls": "recurrent_cls"}
"""State input name -> the program's mutable buffer that holds it."""
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NARROW = (torch.float16, torch.bfloat16, torch.int8, torch.uint8)
"""Narrower than float32: half floats, and the int8 of a quantized tensor (between an INT8 step's Q and DQ)."""
CASTS = ("_to_copy", "_to_dim_order_copy", "to")
TRIG_OPS = ("sin", "cos", "log", "grid_sampler_2d", "grid_sampler")


class StatefulStep(nn.Module):
    """The step with its state as float32 mutable buffers: forward(scene [B,3,S,S], centers [B,2], scales [B],
    reset [B]) -> (canvas_next [B, R+G*G, Dc], recurrent_cls_next [B,1,Db], *the step's readouts), all float32.

    reset[b] > 0.5 reads the learned initial state (CanViT.init_state, embedded as the constants init_canvas and
    init_recurrent_cls) for row b instead of the buffers. `carry=False` leaves the buffers unwritten: a program whose
    state does not carry, which the state tests must catch. `compute`: a module of the step's signature run in its
    place (the INT8 step, quantize_step); the initial state still comes from `step`'s CanViT."""

    canvas: Tensor
    recurrent_cls: Tensor
    init_canvas: Tensor
    init_recurrent_cls: Tensor

    def __init__(self, step: GlimpseStep, batch: int, *, carry: bool = True, compute: nn.Module | None = None) -> None:
        super().__init__()
        self.step, self.carry = (step if compute is None else compute), carry
        init = step.canvit.init_state(batch_size=batch, canvas_grid_size=step.canvas_grid)
        self.register_buffer("init_canvas", init.canvas.detach().float().clone())
        self.register_buffer("init_recurrent_cls", init.recurrent_cls.detach().float().clone())
        self.register_buffer("canvas", torch.zeros_like(self.init_canvas))
        self.register_buffer("recurrent_cls", torch.zeros_like(self.init_recurrent_cls))

    def forward(self, scene: Tensor, centers: Tensor, scales: Tensor, reset: Tensor) -> tuple[Tensor, ...]:
        first = reset.view(-1, 1, 1) > 0.5
        canvas = torch.where(first, self.init_canvas, self.canvas)
        recurrent_cls = torch.where(first, self.init_recurrent_cls, self.recurrent_cls)
        canvas_next, recurrent_cls_next, *rest = self.step(scene, canvas, recurrent_cls, centers, scales)
        if self.carry:
            self.canvas.copy_(canvas_next)
            self.recurrent_cls.copy_(recurrent_cls_next)
        # The outputs are the written tensors themselves: an extra clone makes XNNPACK's delegate return one value
        # twice, which its preprocess refuses ("pass through arguments").
        return (canvas_next, recurrent_cls_next, *rest)


# --- the precision audit --------------------------------------------------------------------------------------
def _dtype(node: Any) -> torch.dtype | None:
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _op_name(node: Any) -> str:
    """aten.add.Tensor, for edge ops (EdgeOpOverload) and aten ops alike; a Python callable's own name (getitem)."""
    target = node.target
    if hasattr(target, "name") and callable(target.name):
        return str(target.name()).replace("::", ".")
    return getattr(target, "__name__", str(target))


def _base_op(node: Any) -> str:
    """The op's name without namespace and overload: add, sin, _to_dim_order_copy."""
    parts = _op_name(node).split(".")
    return parts[1] if len(parts) > 2 else parts[-1]


def _tensor_args(node: Any) -> list[Any]:
    found: list[Any] = []
    for arg in (*node.args, *node.kwargs.values()):
        for item in (arg if isinstance(arg, list | tuple) else [arg]):
            if hasattr(item, "op") and hasattr(item, "meta"):
                found.append(item)
    return found


def audit_program(program: Any, *, readouts: list[str]) -> dict[str, Any]:
    """The float32 rule over the torch.export program (or its edge dialect) before partitioning, as audit_mil does
    over Core ML's MIL.

    - the canvas residual stream, from the canvas input (stateless) or the select of the initial canvas or the
      buffer (stateful), through at most one cast and then each Canvas Write `add`: every tensor on it, and every
      update added to it, float32;
    - the coordinate region, every tensor computed from `centers`/`scales` alone (scene coordinates, RoPE angles,
      the VPE's input), and every sin/cos/log/grid sample: float32 (or an integer or bool);
    - every readout output and what it depends on past the state: float32.

    Returns {"canvas_stream": [node names], "coordinate_ops": n, "op_counts": {op: n}, "violations": [...]}.
    """
    graph = program.graph
    nodes = list(graph.nodes)
    counts: collections.Counter[str] = collections.Counter(_op_name(n) for n in nodes if n.op == "call_function")
    violations: list[str] = []
    placeholders = {n.name: n for n in nodes if n.op == "placeholder"}
    user_inputs = list(program.graph_signature.user_inputs)
    by_input = {name: placeholders[name] for name in user_inputs if name in placeholders}

    stream = _program_canvas_stream(program, placeholders, by_input, violations)
    if stream is None:
        return {"canvas_stream": [], "coordinate_ops": 0, "op_counts": dict(counts),
                "violations": ["no canvas input and no single select of the canvas buffer found"]}
    coordinate_ops = _program_coordinates(nodes, by_input, violations)
    _program_readouts(program, nodes, stream, readouts, violations)
    return {"canvas_stream": [n.name for n in stream], "coordinate_ops": coordinate_ops, "op_counts": dict(counts),
            "violations": violations}


def _program_canvas_stream(program: Any, placeholders: dict[str, Any], by_input: dict[str, Any],
                           violations: list[str]) -> list[Any] | None:
    """audit_program's canvas stream: its nodes from the canvas input (or the stateful select) through each Canvas
    Write `add`, each checked float32; None when no start is found."""
    start = by_input.get("canvas")
    if start is None:  # stateful: the where() that reads the initial canvas or the buffer
        buffer = {v: k for k, v in program.graph_signature.inputs_to_buffers.items()}.get(STATE_BUFFERS["canvas"])
        selects = [u for u in (placeholders[buffer].users if buffer in placeholders else ())
                   if _base_op(u) == "where"]
        if len(selects) != 1:
            return None
        start = selects[0]
    stream = [start]
    while True:
        current = stream[-1]
        users = list(current.users)
        adds = [u for u in users if _base_op(u) == "add"]
        casts = [u for u in users if _base_op(u) in CASTS]
        if len(adds) == 1:
            add = adds[0]
            update = next((a for a in _tensor_args(add) if a is not current), None)
            if update is not None and _dtype(update) != torch.float32:
                violations.append(f"canvas update {update.name} is added as {_dtype(update)}, must be float32")
            stream.append(add)
        elif not adds and len(casts) == 1 and len(stream) == 1:
            stream.append(casts[0])  # a cast on the way in
        else:
            break
    for node in stream:
        if _dtype(node) != torch.float32:
            violations.append(f"canvas stream tensor {node.name} is {_dtype(node)}, must be float32")
    if len(stream) < 2:
        violations.append("the canvas stream has no Canvas Write add")

    return stream


def _program_coordinates(nodes: list[Any], by_input: dict[str, Any], violations: list[str]) -> int:
    """audit_program's coordinate region (computed from centers/scales alone) and trig ops, float32; its op count."""
    region = {by_input[name] for name in ("centers", "scales") if name in by_input}
    coordinate_ops = 0
    for node in nodes:
        if node.op != "call_function":
            continue
        # weights, buffers and lifted constants are placeholders too: only the user inputs vary
        inputs = set(by_input.values())
        non_constant = [a for a in _tensor_args(node) if a.op != "get_attr" and not (a.op == "placeholder" and a not in inputs)]
        if non_constant and all(a in region for a in non_constant):
            region.add(node)
            coordinate_ops += 1
            if _dtype(node) in NARROW:
                violations.append(f"coordinate/RoPE/VPE op {node.name} ({_op_name(node)}) outputs {_dtype(node)}")
        if _base_op(node) in TRIG_OPS and _dtype(node) in NARROW:
            violations.append(f"{_base_op(node)} {node.name} outputs {_dtype(node)}, must be float32")

    return coordinate_ops


def _program_readouts(program: Any, nodes: list[Any], stream: list[Any], readouts: list[str],
                      violations: list[str]) -> None:
    """audit_program's readouts: every op a readout output depends on past the state, float32."""
    output = next(n for n in nodes if n.op == "output")
    returned = list(output.args[0])
    specs = program.graph_signature.output_specs
    user_outputs = [node for node, spec in zip(returned, specs, strict=True) if spec.kind.name == "USER_OUTPUT"]
    stops = {id(n) for n in stream} | {id(n) for n in user_outputs[:2]}
    for name, node in zip(readouts, user_outputs[2:], strict=False):
        pending, seen = [node], set()
        while pending:
            current = pending.pop()
            if id(current) in seen or id(current) in stops or current.op != "call_function":
                continue
            seen.add(id(current))
            if _dtype(current) in NARROW:
                violations.append(f"readout {name} depends on {_op_name(current)} {current.name}, which outputs "
                                  f"{_dtype(current)}: must be float32")
            pending.extend(_tensor_args(current))


def _is_cast(node: Any, *, to: torch.dtype | None = None, source: torch.dtype | None = None) -> bool:
    """node is a dtype cast (to `to`, from `source`, where given)."""
    if getattr(node, "op", None) != "call_function" or _base_op(node) not in CASTS:
        return False
    args = _tensor_args(node)
    return (to is None or _dtype(node) == to) and (source is None or (bool(args) and _dtype(args[0]) == source))


def audit_delegates(program: Any, *, state_shapes: list[list[int]]) -> tuple[int, list[str]]:
    """The dtypes at every delegate boundary of a lowered program: each tensor entering or leaving a delegate with a
    state's shape (the canvas [B, R+G*G, Dc], the CLS [B, 1, Db]) must be float32, unless it is a compute-dtype copy
    the precision rule allows: made by a cast from float32 (a matmul input) or only ever cast back to float32 (an
    update widened before it joins the stream; audit_program checks the stream itself). Returns (boundary tensors
    seen, violations)."""
    seen, violations = 0, []
    shapes = [tuple(s) for s in state_shapes]
    for node in program.graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" not in str(node.target):
            continue
        inner = getattr(program.graph_module, node.args[0].target).original_module.graph
        inner_outputs = list(next(n for n in inner.nodes if n.op == "output").args[0])
        crossing = [*_tensor_args(node), *[u for u in node.users if _op_name(u).endswith("getitem")]]
        for tensor in crossing:
            value = tensor.meta.get("val")
            if not isinstance(value, torch.Tensor):
                continue
            seen += 1
            if tuple(value.shape) not in shapes or value.dtype == torch.float32:
                continue
            maker = inner_outputs[tensor.args[1]] if tensor in node.users else tensor
            widened = bool(tensor.users) and all(_is_cast(u, to=torch.float32) for u in tensor.users)
            if not (widened or _is_cast(maker, source=torch.float32)):
                violations.append(f"delegate boundary {node.name}: {tensor.name} {list(value.shape)} is {value.dtype}, "
                                  f"must be float32")
    return seen, violations


def delegation_census(program: Any) -> tuple[int, int, dict[str, int]]:
    """(delegates, ops inside them, ops left outside: name -> count) of a lowered program; the ops outside run on
    ExecuTorch's portable (or optimized) kernels."""
    delegates, inside = 0, 0
    outside: collections.Counter[str] = collections.Counter()
    module = program.graph_module
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
            lowered = getattr(module, node.args[0].target)
            inside += sum(n.op == "call_function" for n in lowered.original_module.graph.nodes)
        elif not _op_name(node).endswith("getitem"):
            outside[_op_name(node)] += 1
    return delegates, inside, dict(sorted(outside.items()))


# --- lowering -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Any:
    """ExecuTorch's and torch.export's Python warnings and INFO logs off the console (our stages report progress)."""
    loggers = [logging.getLogger(n) for n in ("executorch", "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """F.scaled_dot_product_attention without mask, dropout or causality as softmax(q k^T * scale) v (Vaswani et
    al. 2017, eq. 1; scale defaults to head_dim ** -0.5 as SDPA's) in bmm, softmax over the last dim, bmm, which
    XNNPACK takes. q [..., Nq, d], k [..., Nk, d], v [..., Nk, dv] -> [..., Nq, dv], q's dtype.

    Raises:
        AssertionError: a mask, dropout, causality or grouped-query attention (the step uses none).
    """
    assert attn_mask is None and dropout_p == 0.0 and not is_causal and not enable_gqa, "plain attention only"
    *batch, n, d = query.shape
    q = query.reshape(-1, n, d) * (scale if scale is not None else 1.0 / math.sqrt(d))
    k = key.reshape(-1, key.shape[-2], d)
    v = value.reshape(-1, value.shape[-2], value.shape[-1])
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
    return torch.bmm(weights, v).reshape(*batch, n, value.shape[-1])


def _inner_mean(x: Tensor) -> Tensor:
    """x [..., D] -> its mean over D, [..., 1], as a 4-D mean over the two inner dims (XNNPACK's only mean)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1], 1).mean(dim=(2, 3), keepdim=True).reshape(*x.shape[:-1], 1)


def _layer_norm(x: Tensor, normalized_shape: list[int], weight: Tensor | None = None, bias: Tensor | None = None,
                eps: float = 1e-5, cudnn_enable: bool = True) -> Tensor:
    """F.layer_norm over the last dim, (x - mean) / sqrt(var + eps) * weight + bias with the biased variance
    (torch.nn.LayerNorm's definition; Ba et al. 2016), in x's dtype. x [..., D] (rank >= 2) -> x's shape.

    Raises:
        AssertionError: normalization over more than the last dim.
    """
    assert len(normalized_shape) == 1 and x.ndim >= 2, (normalized_shape, x.shape)
    centered = x - _inner_mean(x)
    y = centered * torch.rsqrt(_inner_mean(centered * centered) + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _unbind(x: Tensor, dim: int = 0) -> list[Tensor]:
    """torch.unbind as narrow + reshape (the select it becomes lowers to a squeeze XNNPACK refuses)."""
    rest = [size for i, size in enumerate(x.shape) if i != dim % x.ndim]
    return [x.narrow(dim, i, 1).reshape(rest) for i in range(x.shape[dim])]


XNNPACK_FORMS = {torch.ops.aten.scaled_dot_product_attention.default: _attention,
                 torch.ops.aten.layer_norm.default: _layer_norm,
                 torch.ops.aten.unbind.int: _unbind}
"""The step's ops rewritten, at export, in forms the XNNPACK partitioner takes (module docstring)."""


FOLDED = {torch.ops.aten.mul.Tensor, torch.ops.aten._to_copy.default}
"""Ops folded when every input is a constant: the QKV key-bias mask product, and its cast to float16 under fp16
(an unfolded bias leaves the linear to a portable addmm)."""


def export_program(module: nn.Module, args: tuple[Tensor, ...]) -> Any:
    """torch.export.export(module, args) (non-strict), under no_grad (ExecuTorch's buffer write-back refuses tensors
    that require grad), with XNNPACK_FORMS decomposed and FOLDED ops of constants folded."""
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    with torch.no_grad(), _quiet():
        exported = torch.export.export(module, args, strict=False).run_decompositions(XNNPACK_FORMS)
        # Only products and casts: folding everything (the RoPE tables, the registers' expand) makes a program
        # XNNPACK's runtime refuses to run (shape propagation fails, executorch 1.5.1).
        keep = {n.target for n in exported.graph.nodes if n.op == "call_function"} - FOLDED
        return constant_prop_pass(exported, custom_skip_targets=keep)


QUANTIZED_SCOPE = "backbone.blocks"
"""INT8 quantizes the Linear modules under this path of the step's CanViT: each glimpse backbone block's QKV, attention
output and MLP matmuls. Canvas Read/Write (their projections too), LayerNorms, RoPE, the VPE, coordinates and the
readout heads stay float32, and so does the patch embedding (quantized, it failed the int8 gate: docs/executorch.md)."""


QUANTIZE_OP = "quantized_decomposed.quantize_per_tensor"
"""The activation quantizer a converted INT8 program holds, one per quantized matmul input (and output)."""


def matmuls(step: nn.Module) -> list[str]:
    """The qualified names of the step's Linear and Conv2d modules (its weight matmuls, readout heads included)."""
    return [name for name, module in step.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)]


def glimpse_matmuls(step: GlimpseStep) -> dict[str, nn.Module]:
    """The modules INT8 quantizes (QUANTIZED_SCOPE's Linear and Conv2d modules) under every qualified name the step
    reaches them by (with readouts, the heads' wrapper holds the CanViT too, and torch.export may use either path)."""
    chosen = {id(m) for m in step.canvit.get_submodule(QUANTIZED_SCOPE).modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    return {name: module for name, module in step.named_modules(remove_duplicate=False) if id(module) in chosen}


def quantize_step(step: GlimpseStep, args: tuple[Tensor, ...], calibration: CalibrationSet) -> tuple[nn.Module, int]:
    """The stateless step with its glimpse matmuls (glimpse_matmuls) static INT8: ExecuTorch's XNNPACKQuantizer
    (symmetric int8 activations per tensor, HistogramObserver; symmetric per-output-channel int8 weights) on the
    linears and convs whose weight is one of theirs, torchao's prepare_pt2e, every sample of `calibration` run
    through it, convert_pt2e. `args`: the step's example inputs (INPUT_NAMES order). Returns the converted graph
    module (the step's signature, Q/DQ ops around each quantized matmul) and how many matmuls it quantized.

    The stateless step is calibrated, each sample's recorded state fed as the input it was in the rollout (first
    glimpses read the initial state); the stateful program then wraps the result (StatefulStep(compute=...)), so
    both forms hold the same scales."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True)
    names = glimpse_matmuls(step)
    expected = len({id(module) for module in names.values()})
    parameters = {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}

    def chosen(node: Any) -> bool:
        # GlimpseStep calls F.linear on the modules' weights (no module stack on the node): match the weight itself.
        # The conv annotator asks about its weight and bias nodes too.
        if node.op == "get_attr":
            return node.target in parameters
        weight = node.args[1] if len(node.args) > 1 else None
        return getattr(weight, "op", None) == "get_attr" and getattr(weight, "target", None) in parameters

    quantizer = XNNPACKQuantizer().set_filter_function(chosen)
    for op in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default):
        quantizer.set_operator_type(op, config)
    with torch.no_grad(), _quiet():
        prepared = prepare_pt2e(torch.export.export(step, args, strict=False).module(), quantizer)
        for feeds in calibration.samples():
            prepared(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES))
        converted = convert_pt2e(prepared)
    quantized = sum(n.op == "call_function" and _base_op(n) in ("linear", "conv2d") and len(n.args) > 1
                    and _base_op(n.args[1]).startswith("dequantize") for n in converted.graph.nodes)
    if quantized != expected or not expected:
        raise ExportError(f"the XNNPACK quantizer took {quantized} of the glimpse backbone's {expected} matmuls "
                          f"(torchao {_version('torchao')}): please report this")
    return converted, quantized


def lower(exported: Any) -> Any:
    """The edge program manager of `exported` lowered with `to_edge_transform_and_lower` and the XNNPACK partitioner."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad(), _quiet():
        return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])


def serialize(lowered: Any) -> bytes:
    """The lowered program as .pte bytes (ExecuTorch's default memory planning; mutable buffers written back)."""
    from executorch.exir import ExecutorchBackendConfig

    with torch.no_grad(), _quiet():
        return bytes(lowered.to_executorch(ExecutorchBackendConfig()).buffer)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def executorch_version() -> str:
    return _version("executorch")


def check_precision(precision: str, calibration: Path | None) -> None:
    """ExportError for a precision the target does not take, int8 without a calibration set, or one without int8."""
    try:
        precision_info(precision, allowed=TARGET_PRECISIONS["executorch"])
    except ValueError as error:
        raise ExportError(f"{error} (the precisions the ExecuTorch target exports)") from error
    if precision == "int8" and calibration is None:
        raise ExportError("--precision int8 needs --calibration DIR: a set recorded by `canvit-export calibrate "
                          "--artifact <fp32 ONNX artifact of the same geometry>`")
    refuse_unused_calibration(calibration, precision == "int8")


def export_executorch(loaded: LoadedModel, geometry: Geometry, out: Path, *, precision: str = "fp32",
                      stateful: bool = True, heads: Heads | None = None, calibration: Path | None = None,
                      force: bool = False, quiet: bool = False) -> Manifest:
    """Write out/step.pte, out/initial_state.bin and out/manifest.json atomically; return the manifest.

    precision: fp32 or fp16 (matmuls, conv and attention narrow; the canvas path float32), or int8: the glimpse
    backbone's matmuls static INT8 (quantize_step), calibrated on `calibration`, a set recorded by `canvit-export
    calibrate` for this step's input shapes. stateful: the state as mutable buffers with a `reset` input (module
    docstring), or as inputs and outputs. Raises ExportError for a precision the target does not take, int8 without
    a calibration set (or a calibration set without int8), bad sizes, a missing executorch package, an existing
    `out` without force, or a program that fails its audit.
    """
    check_precision(precision, calibration)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import: a torch deprecation, not ours
    try:
        import executorch.exir  # noqa: F401
    except ImportError as error:
        raise ExportError("the ExecuTorch target needs executorch: pip install 'canvit-export[executorch]'") from error
    step_dtypes = step_precision("fp32" if precision == "int8" else precision)  # int8: quantized from fp32
    canvit = loaded.canvit
    check_geometry(geometry, canvit.patch_size)
    stages = Stages(5 if calibration is not None else 4, quiet=quiet)
    with staged_artifact(out, force=force, inputs=(calibration,) if calibration is not None else ()) as staging:
        step, example, inputs, outputs, state, readout_records = pytorch_step(canvit, geometry, step_dtypes, heads)
        compute = step
        if calibration is not None:
            calib = load_calibration(calibration, inputs=inputs)
            with stages.stage(f"quantizing the glimpse backbone to INT8 (XNNPACKQuantizer, {calib.count} calibration "
                              f"samples)"):
                compute, quantized = quantize_step(step, tuple(example), calib)
        if stateful:
            # `step` is in eval mode already; a quantized graph module refuses .eval() (torchao), so none is called
            module: nn.Module = StatefulStep(step, geometry.batch, compute=compute)
            args: tuple[Tensor, ...] = (example.scene, example.centers, example.scales, torch.ones(geometry.batch))
            inputs = [t for t in inputs if t.name not in STATE_BUFFERS] + [
                TensorSpec(name="reset", shape=[geometry.batch], dtype="float32", role=ROLE_RESET)]
        else:
            module, args = compute, tuple(example)
        readout_text = f", readouts {'+'.join(heads.names)}" if heads is not None and heads.names else ""
        with stages.stage(f"torch.export of the glimpse step ({precision}, {canvit.config.backbone_name}, canvas "
                          f"{geometry.canvas_grid}x{geometry.canvas_grid}, batch {geometry.batch}, "
                          f"{'stateful' if stateful else 'stateless'}{readout_text})"):
            exported = export_program(module, args)
            audit = audit_program(exported, readouts=list(step.readout_names))  # before partitioning
        with stages.stage("lowering to ExecuTorch with the XNNPACK partitioner (a minute or more)"):
            lowered = lower(exported)
        with stages.stage("auditing the program (canvas path, coordinates, readouts, every delegate boundary)"):
            lowered_program = lowered.exported_program()
            boundaries, boundary_violations = audit_delegates(
                lowered_program, state_shapes=[p.shape for p in state])
            violations = audit["violations"] + boundary_violations
            if step_dtypes.follows_rule and violations:
                raise ExportError(f"the ExecuTorch program breaks the float32 rule: {violations[0]} "
                                  f"(+{len(violations) - 1} more)")
            delegates, delegated, portable = delegation_census(lowered_program)
            if calibration is not None:
                record = int8_record(calib, {
                    "quantizer": f"executorch {executorch_version()} XNNPACKQuantizer (symmetric int8, per-channel "
                                 f"weights, HistogramObserver activations), torchao prepare_pt2e/convert_pt2e",
                    "quantizers": audit["op_counts"].get(QUANTIZE_OP, 0), "excluded_ops": len(matmuls(step)) - quantized})
            else:
                record = precision_record(step_dtypes, violations)
        with stages.stage(f"serializing {PROGRAM} and writing the manifest"):
            (staging / PROGRAM).write_bytes(serialize(lowered))
            manifest = finish_manifest(
                staging, {"program": PROGRAM, "initial_state": INITIAL_STATE_FILE}, ("executorch", "torchao"),
                artifact=ExecuTorchArtifact(
                    target="executorch", stateful=stateful, executorch=executorch_version(), backend="xnnpack",
                    inputs=list(STATEFUL_INPUTS if stateful else INPUT_NAMES),
                    state_buffers=dict(STATE_BUFFERS) if stateful else {},
                    delegates=delegates, delegated_ops=delegated, portable_ops=portable,
                    op_counts=audit["op_counts"],
                    program_audit=ProgramAudit(canvas_stream=audit["canvas_stream"],
                                               coordinate_ops=audit["coordinate_ops"],
                                               delegate_boundaries=boundaries, violations=violations)),
                model=loaded.record, architecture=architecture_record(canvit), geometry=geometry,
                inputs=inputs, outputs=outputs, state=state, initial_state=write_initial_state(canvit, staging),
                preprocessing=preprocessing_record(geometry), precision=record,
                readouts=readout_records)
    return manifest.at(out)
