"""The Core ML target: an ML program (.mlpackage) of the glimpse step, for iPhone, iPad, Mac and Vision Pro.

Core ML converts from PyTorch (not from ONNX): the step module (step.GlimpseStep) is traced and converted with
coremltools. Precision: with --precision fp16 the step carries its own casts (matmuls, conv and attention in
fp16; canvas, RoPE, coordinates and VPE in fp32) and is converted with compute_precision=FLOAT32, so that
coremltools keeps exactly those types instead of casting every op to fp16; `audit_mil` proves the canvas path
float32 over the MIL program.

Stateful (--stateful, iOS18/macOS15+): the canvas is a Core ML state, updated in place. coremltools (9.0)
accepts only float16 states ("State only support fp16 dtype"), so the canvas is stored in fp16 between glimpses,
which breaks the float32 rule: each glimpse still computes on a float32 canvas, but it is rounded to fp16 when
written back. The manifest records this (`follows_float32_rule: false`). The state starts at zero; the `reset`
input (1.0 on a scene's first glimpse) makes the step read the learned initial canvas instead.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
from canvit_export.precision import step_precision
from canvit_export.progress import Stages
from canvit_export.readouts import Heads
from canvit_export.source import LoadedModel
from canvit_export.step import INPUT_NAMES, GlimpseStep
from canvit_runtime.manifest import ROLE_RESET, CoreMLArtifact, Manifest, MilAudit, PrecisionRecord, TensorSpec
from canvit_runtime.precision import PRECISIONS, TARGET_PRECISIONS, precision_info

PACKAGE = "step.mlpackage"
MIN_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")
STATEFUL_TARGETS = ("iOS18", "macOS15")
STATE_DTYPE = "float16"
"""The only state dtype coremltools accepts (measured with coremltools 9.0)."""


STATE_ALIGN = 32
"""The Neural Engine runs a stateful program only when the state's dimensions are multiples of 32
(apple/coremltools#2631: CPU and GPU run it, ANE or "all compute units" fail): the canvas state is padded to it."""


def padded_state_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """[B, R + G*G, Dc] -> [B, rows, cols], rows and cols rounded up to multiples of STATE_ALIGN (the batch is not a
    state dimension the ANE tiles): CanViT-B canvas 32, [1, 1040, 1024] -> [1, 1056, 1024]."""
    batch, *rest = shape
    return (batch, *(-(-n // STATE_ALIGN) * STATE_ALIGN for n in rest))


class StatefulStep(nn.Module):
    """The step with the canvas as a Core ML state: forward(scene, recurrent_cls, centers, scales, reset) ->
    recurrent_cls_next [B, 1, Db] float32 (then the step's readouts, if any); the canvas [B, R + G*G, Dc] lives in
    the leading block of the fp16 buffer `canvas`, [B, rows, cols] padded to multiples of 32 (padded_state_shape);
    the padding is never written and stays zero.

    reset [B] float32: 1.0 reads the learned initial canvas (CanViT.init_state) instead of the state."""

    canvas: Tensor
    init_canvas: Tensor

    def __init__(self, step: GlimpseStep, batch: int) -> None:
        super().__init__()
        self.step = step
        init = step.canvit.init_state(batch_size=batch, canvas_grid_size=step.canvas_grid).canvas.detach().float()
        self.rows, self.cols = init.shape[1], init.shape[2]
        self.register_buffer("init_canvas", init.clone())
        self.register_buffer("canvas", torch.zeros(padded_state_shape(tuple(init.shape)), dtype=torch.float16))

    def forward(self, scene: Tensor, recurrent_cls: Tensor, centers: Tensor, scales: Tensor,
                reset: Tensor) -> tuple[Tensor, ...]:
        stored = self.canvas[:, :self.rows, :self.cols].float()
        canvas = torch.where(reset.view(-1, 1, 1) > 0.5, self.init_canvas, stored)
        canvas_next, recurrent_cls_next, *readouts = self.step(scene, canvas, recurrent_cls, centers, scales)
        # coremltools converts slice assignment to a state update (slice_update + write_state), not copy_
        self.canvas[:, :self.rows, :self.cols] = canvas_next.half()
        return (recurrent_cls_next, *readouts)


def _dtype(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype) if var.dtype is not None else "?"


def audit_mil(program: Any, readouts: list[str] | None = None) -> dict[str, Any]:
    """The precision rule over a MIL program: the canvas residual stream (from the canvas input, or the state
    read, through each `add` to the output or state write), each update as added, the tensors computed from
    centers/scales alone (up to a cast), and every sin/cos/log/resample (grid_sample) must be fp32.

    Returns {"canvas_stream": [var names], "coordinate_ops": n, "op_counts": {...}, "violations": [...]}.
    """
    function = program.functions["main"]
    ops = list(function.operations)
    violations: list[str] = []
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    stream = _mil_canvas_stream(function, ops, violations)
    if stream is None:
        return {"canvas_stream": [], "coordinate_ops": 0, "op_counts": counts,
                "violations": ["no canvas input and no state read found"]}
    coordinate_ops = _mil_coordinates(function, ops, violations)
    _mil_readouts(function, stream, readouts or [], violations)
    return {"canvas_stream": [v.name for v in stream], "coordinate_ops": coordinate_ops, "op_counts": counts,
            "violations": violations}


def _mil_canvas_stream(function: Any, ops: list[Any], violations: list[str]) -> list[Any] | None:
    """The canvas stream's vars, from the canvas input (or, stateful, the select() that picks the initial canvas or
    the fp16 state read, widened to fp32) through each Canvas Write `add`; None when no start is found."""
    start = function.inputs.get("canvas")
    if start is None or any(op.op_type == "read_state" for op in start.child_ops):
        selects = [op for op in ops if op.op_type == "select"]
        if not selects:
            return None
        start = selects[0].outputs[0]
    stream = [start]
    while True:
        current = stream[-1]
        adds = [op for op in current.child_ops if op.op_type == "add"]
        casts = [op for op in current.child_ops if op.op_type == "cast"]
        if len(adds) == 1:
            add = adds[0]
            update = add.x if add.y is current else add.y
            if _dtype(update) != "fp32":
                violations.append(f"canvas update {update.name} is added as {_dtype(update)}, must be fp32")
            stream.append(add.outputs[0])
        elif not adds and len(casts) == 1 and len(stream) == 1:
            stream.append(casts[0].outputs[0])  # an input cast on the way in
        else:
            break
    for var in stream:
        if _dtype(var) != "fp32":
            violations.append(f"canvas stream tensor {var.name} is {_dtype(var)}, must be fp32")
    if len(stream) < 2:
        violations.append("the canvas stream has no Canvas Write add")
    return stream


def _mil_coordinates(function: Any, ops: list[Any], violations: list[str]) -> int:
    """Ops computed from centers/scales alone (up to a cast) output fp32 (or int32/bool); every sin/cos/log/resample
    outputs fp32. Returns the number of coordinate ops."""
    region = {function.inputs[name].name for name in ("centers", "scales") if name in function.inputs}
    coordinate_ops = 0
    for op in ops:
        if op.op_type in ("const", "cast"):
            continue
        data = [v for v in op.inputs.values() for v in (v if isinstance(v, list | tuple) else [v])
                if hasattr(v, "op") and (v.op is None or v.op.op_type != "const")]
        if data and all(v.name in region for v in data):
            coordinate_ops += 1
            for out in op.outputs:
                region.add(out.name)
                if _dtype(out) not in ("fp32", "int32", "bool"):
                    violations.append(f"coordinate/RoPE/VPE op {op.name} ({op.op_type}) outputs {_dtype(out)}")
        if op.op_type in ("sin", "cos", "log", "resample"):
            for out in op.outputs:
                if _dtype(out) != "fp32":
                    violations.append(f"{op.op_type} {op.name} outputs {_dtype(out)}, must be fp32")
    return coordinate_ops


def _mil_readouts(function: Any, stream: list[Any], readouts: list[str], violations: list[str]) -> None:
    """The readouts (program outputs named in `readouts`): every op they depend on past the canvas stream and the
    recurrent CLS must be fp32 (the probe's LayerNorm of the canvas, the entropy, the heads)."""
    outputs = {var.name: var for var in function.outputs}
    stops = {id(v) for v in stream} | {id(outputs[n]) for n in ("canvas_next", "recurrent_cls_next") if n in outputs}
    for name in readouts:
        if name not in outputs:
            violations.append(f"readout {name} is not an output of the program")
            continue
        pending, seen = [outputs[name]], set()
        while pending:
            var = pending.pop()
            if id(var) in seen or id(var) in stops or var.op is None or var.op.op_type == "const":
                continue
            seen.add(id(var))
            if _dtype(var) not in ("fp32", "int32", "bool"):
                violations.append(f"readout {name} depends on {var.op.op_type} {var.op.name}, which outputs "
                                  f"{_dtype(var)}: must be fp32")
            pending.extend(v for value in var.op.inputs.values()
                           for v in (value if isinstance(value, list | tuple) else [value]) if hasattr(v, "op"))


def convert(step: nn.Module, example: tuple[Tensor, ...], input_names: list[str], outputs: list[str], *,
            min_target: str, state_shape: tuple[int, ...] | None, compute_precision: Any = None) -> Any:
    """torch.jit.trace + coremltools.convert to an ML program, float32 I/O, compute_precision FLOAT32 by default
    (the step carries its own casts; coremltools' default, FLOAT16, would cast the canvas path too). Not loaded
    (skip_model_load): Core ML predicts on macOS only."""
    import numpy as np

    from canvit_runtime.coreml import import_coremltools

    ct = import_coremltools()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(step, example)
    states = [] if state_shape is None else [
        ct.StateType(wrapped_type=ct.TensorType(shape=state_shape, dtype=np.float16), name="canvas")]
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(traced, convert_to="mlprogram",
                          inputs=[ct.TensorType(name=n, shape=tuple(x.shape), dtype=np.float32)
                                  for n, x in zip(input_names, example, strict=True)],
                          outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
                          states=states or None, compute_precision=compute_precision or ct.precision.FLOAT32,
                          minimum_deployment_target=getattr(ct.target, min_target), skip_model_load=True)


def export_coreml(loaded: LoadedModel, geometry: Geometry, out: Path, *, precision: str = "fp16", stateful: bool = False,
                  min_target: str | None = None, heads: Heads | None = None, force: bool = False,
                  quiet: bool = False) -> Manifest:
    """Write out/step.mlpackage (+ initial_state.bin, manifest.json) atomically; return the manifest.

    Raises ExportError for a bad precision or target, --stateful below iOS18/macOS15, a missing coremltools, or a
    program whose canvas path is not fp32.
    """
    try:
        precision_info(precision, allowed=TARGET_PRECISIONS["coreml"])
    except ValueError as error:
        raise ExportError(f"{error} (the precisions Core ML exports)") from error
    step_dtypes = step_precision(precision)
    min_target = min_target or ("iOS18" if stateful else "iOS17")
    if min_target not in MIN_TARGETS:
        raise ExportError(f"--min-target {min_target}: choose one of {', '.join(MIN_TARGETS)}")
    if stateful and min_target not in STATEFUL_TARGETS:
        raise ExportError("--stateful needs Core ML states, from iOS18/macOS15: pass --min-target iOS18 or macOS15")
    try:
        from canvit_runtime.coreml import import_coremltools

        import_coremltools()
    except ImportError as error:
        raise ExportError("Core ML export needs coremltools: pip install coremltools (canvit-export[coreml])") from error
    canvit = loaded.canvit
    check_geometry(geometry, canvit.patch_size)
    stages = Stages(3, quiet=quiet)
    with staged_artifact(out, force=force) as staging:
        step, example, inputs, outputs, state, readout_records = pytorch_step(canvit, geometry, step_dtypes, heads)
        if stateful:
            module: nn.Module = StatefulStep(step, geometry.batch).eval()
            names = ["scene", "recurrent_cls", "centers", "scales", "reset"]
            args: tuple[torch.Tensor, ...] = (example.scene, example.recurrent_cls, example.centers, example.scales,
                                              torch.ones(geometry.batch))
            out_names = ["recurrent_cls_next", *step.readout_names]
            padded = padded_state_shape(tuple(example.canvas.shape))
            state_shape: tuple[int, ...] | None = padded
            inputs = [t for t in inputs if t.name != "canvas"] + [
                TensorSpec(name="reset", shape=[geometry.batch], dtype="float32", role=ROLE_RESET)]
            outputs = [t for t in outputs if t.name != "canvas_next"]
            state[0] = state[0].model_copy(update={"core_ml_state": "canvas", "storage_dtype": STATE_DTYPE,
                                                   "storage_shape": list(padded)})
        else:
            module, names, state_shape = step, list(INPUT_NAMES), None
            out_names = ["canvas_next", "recurrent_cls_next", *step.readout_names]
            args = tuple(example)
        with stages.stage(f"converting the glimpse step to a Core ML program ({precision}, "
                          f"{'stateful' if stateful else 'stateless'}, {min_target})"):
            mlmodel = convert(module, args, names, out_names, min_target=min_target, state_shape=state_shape)
        with stages.stage("auditing the MIL program (canvas path fp32)"):
            audit = audit_mil(mlmodel._mil_program, readouts=list(step.readout_names))
            if audit["violations"]:
                raise ExportError(f"the Core ML program breaks the float32 rule: {audit['violations'][0]} "
                                  f"(+{len(audit['violations']) - 1} more)")
        with stages.stage("saving the mlpackage and manifest"):
            mlmodel.save(str(staging / PACKAGE))
            info = PRECISIONS[precision]
            manifest = finish_manifest(
                staging, {"package": PACKAGE, "initial_state": INITIAL_STATE_FILE}, ("coremltools",),
                artifact=CoreMLArtifact(target="coreml", min_target=min_target, stateful=stateful,
                                        compute_precision="FLOAT32 (the step's own casts set fp16 where allowed)",
                                        op_counts=audit["op_counts"],
                                        mil_audit=MilAudit(**{k: v for k, v in audit.items() if k != "op_counts"})),
                model=loaded.record, architecture=architecture_record(canvit), geometry=geometry,
                inputs=inputs, outputs=outputs, state=state, initial_state=write_initial_state(canvit, staging),
                preprocessing=preprocessing_record(geometry),
                precision=PrecisionRecord(name=precision, matmul_dtype=info.matmul_dtype,
                                          stream_dtype=info.stream_dtype, weights=info.matmul_dtype,
                                          state_storage=STATE_DTYPE if stateful else "float32",
                                          follows_float32_rule=not stateful),
                readouts=readout_records)
    return manifest.at(out)
