"""Where a glimpse's time goes: per-node-type time of the step on OpenVINO (its per-node performance counters) or ONNX
Runtime (its profiler), over a C2F rollout of a photo, with the share of matmuls, of data movement ("glue": the
Slice/Concat/Gather chains of the RoPE rotation, transposes and reshapes around attention, casts and reorders) and of
the rest, and the split between the canvas side (nodes whose output is canvas-sized: canvas_sized) and the glimpse
side (the rest). Issue 13's "closer to the floor" starts from this table (`canvit-export profile`)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_runtime.manifest import Manifest
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch

MATMUL_TYPES = {"MatMul", "FullyConnected", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "ScaledDotProductAttention", "Attention",
                "MultiHeadAttention", "FullyConnectedCompressed", "FullyConnectedQuantizedLegacy", "QGemm",
                "QAttention", "MatMulNBits"}
"""Node types whose time is matrix multiplication (ONNX Runtime's and OpenVINO's CPU names)."""
GLUE_TYPES = {"Slice", "StridedSlice", "Concat", "Gather", "GatherElements", "GatherND", "Transpose", "Reshape",
              "Squeeze", "Unsqueeze", "Split", "VariadicSplit", "Expand", "Broadcast", "Tile", "Pad", "ShapeOf",
              "Cast", "Convert", "Reorder", "Identity", "Flatten", "Range", "ScatterUpdate", "ScatterND", "Shape",
              "QuantizeLinear", "DequantizeLinear", "FakeQuantize", "DynamicQuantizeLinear", "ReadValue", "Assign"}
"""Node types that move, reshape, re-type or (de)quantize data, or read and write the state, without arithmetic of
the model's own."""
FUSED_TYPES = {"Subgraph"}
"""OpenVINO CPU's Snippets kernels: several ops fused into one node (e.g. attention's MatMul-Softmax-MatMul, or a
chain of element-wise ops), so neither matmul nor the rest alone."""


@dataclass
class NodeType:
    """One node type's time per glimpse: `ms` (mean over the profiled glimpses), `nodes` (executed nodes of that
    type per glimpse), `kind` (matmul | glue | fused | other) and `kernels`: on OpenVINO the kernels that ran it
    (exec types), on ONNX Runtime its execution provider."""

    name: str
    kind: str
    ms: float
    nodes: int
    kernels: list[str]


def kind_of(node_type: str) -> str:
    if node_type in MATMUL_TYPES:
        return "matmul"
    if node_type in FUSED_TYPES:
        return "fused"
    return "glue" if node_type in GLUE_TYPES else "other"


Executed = tuple[str, float, str, str]
"""One node executed in a profiled glimpse: (node type, ms, kernel or execution provider, side: canvas | glimpse)."""


@dataclass(frozen=True)
class CanvasSize:
    """What makes a node's output canvas-sized: `tokens` = canvas registers + G x G, the `grid` G, the canvas `width`,
    and the glimpse's own patch grid (glimpse px / patch px), which a G-sized dimension is told apart from."""

    tokens: int
    grid: int
    width: int
    glimpse_grid: int

    @classmethod
    def of(cls, manifest: Manifest) -> CanvasSize:
        arch = manifest.architecture
        return cls(tokens=arch.num_canvas_registers + manifest.canvas_grid ** 2, grid=manifest.canvas_grid,
                   width=arch.canvas_dim, glimpse_grid=manifest.glimpse_px // arch.patch_px)


def canvas_sized(shapes: list[tuple[int, ...]], canvas: CanvasSize) -> bool:
    """True when one of a node's output `shapes` is canvas-sized: a dimension of the canvas's token count (registers
    + G x G: the canvas, its K/V, its norms), or G x G cells at the canvas width last ([.., G*G, Dc]: the canvas patches
    a readout takes), or, when G differs from the glimpse's patch grid (so that the glimpse's own G x G patches are not
    taken for it), a dimension of G x G cells or two consecutive dimensions G, G (the segmentation probe's grid)."""
    cells = canvas.grid ** 2
    distinct = canvas.grid != canvas.glimpse_grid
    for shape in shapes:
        if canvas.tokens in shape or shape[-2:] == (cells, canvas.width):
            return True
        if distinct and (cells in shape or any(shape[i:i + 2] == (canvas.grid, canvas.grid)
                                               for i in range(len(shape) - 1))):
            return True
    return False


def openvino_shapes(runner: Any) -> dict[str, list[tuple[int, ...]]]:
    """Each node's static output shapes by name: the compiled model's runtime model (CompiledModel.get_runtime_model,
    whose names the performance counters use), then the IR's own ops for names it lacks (a stateful IR's runtime
    model holds only its Parameters: it has no Result); dynamic dimensions are left out."""
    import openvino as ov

    shapes: dict[str, list[tuple[int, ...]]] = {}
    graph = runner.manifest.file("ir" if runner.manifest.target == "openvino" else "graph")
    for model in (runner.compiled.get_runtime_model(), ov.Core().read_model(graph)):
        for op in model.get_ops():
            shapes.setdefault(op.get_friendly_name(), [
                tuple(d.get_length() for d in op.get_output_partial_shape(i) if d.is_static)
                for i in range(op.get_output_size()) if op.get_output_partial_shape(i).rank.is_static])
    return shapes


def _openvino(artifact: Path, glimpses: int, warmup: int, threads: int | None, scene: np.ndarray) -> list[Executed]:
    runner = canvit_runtime.open(artifact, runtime="openvino", threads=threads, profile=True)
    shapes, canvas = openvino_shapes(runner), CanvasSize.of(runner.manifest)
    executed = []
    for t, v in enumerate(make_policy("c2f", batch=runner.manifest.batch, glimpses=warmup + glimpses)):
        runner.step(scene, v.centers, v.scales)
        if t >= warmup:
            executed += [(info.node_type, info.real_time.total_seconds() * 1e3, info.exec_type,
                          "canvas" if canvas_sized(shapes.get(info.node_name, []), canvas) else "glimpse")
                         for info in runner.request.get_profiling_info()  # type: ignore[attr-defined]
                         if str(info.status).endswith("EXECUTED")]
    return executed


def _onnxruntime(artifact: Path, glimpses: int, warmup: int, threads: int | None, scene: np.ndarray
                 ) -> list[Executed]:
    with tempfile.TemporaryDirectory(prefix="canvit-profile-") as tmp:
        runner = canvit_runtime.open(artifact, runtime="onnxruntime", threads=threads, profile=str(Path(tmp) / "ort"))
        policy = make_policy("c2f", batch=runner.manifest.batch, glimpses=warmup + glimpses)
        for v in policy:
            runner.step(scene, v.centers, v.scales)
        trace = json.loads(Path(runner.session.end_profiling()).read_text())  # type: ignore[attr-defined]
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) != len(policy):  # the profiler stops recording at its event cap
        raise ExportError(f"ONNX Runtime's profile holds {len(runs)} runs for {len(policy)} glimpses (its profiler "
                          f"stops at a fixed number of events): profile fewer --glimpses")
    start = runs[warmup]["ts"]  # the first profiled glimpse's run begins here
    canvas = CanvasSize.of(runner.manifest)
    return [(event["args"]["op_name"], event["dur"] / 1e3, event["args"].get("provider", ""),
             "canvas" if canvas_sized([tuple(shape) for output in event["args"].get("output_type_shape", [])
                                       for shape in output.values()], canvas) else "glimpse") for event in trace
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start]


def summarize(executed: list[Executed], glimpses: int
              ) -> tuple[float, dict[str, float], list[NodeType], dict[str, float]]:
    """The nodes executed over `glimpses` glimpses, per glimpse: (summed ms, {matmul, glue, fused, other}: the share of
    that time each kind of node took, node types slowest first with their mean ms, node count and kernels,
    {canvas, glimpse}: the ms of each side; the two sum to the total)."""
    ms: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    kernels: dict[str, set[str]] = defaultdict(set)
    sides = {"canvas": 0.0, "glimpse": 0.0}
    for node_type, time_ms, kernel, side in executed:
        ms[node_type] += time_ms
        nodes[node_type] += 1
        kernels[node_type].add(kernel)
        sides[side] += time_ms / glimpses
    total = sum(ms.values()) / glimpses
    types = sorted((NodeType(name, kind_of(name), value / glimpses, nodes[name] // glimpses, sorted(kernels[name]))
                    for name, value in ms.items()), key=lambda r: -r.ms)
    shares = {kind: sum(r.ms for r in types if r.kind == kind) / total for kind in ("matmul", "glue", "fused", "other")}
    return total, shares, types, sides


def profile_step(artifact: Path, runtime: str, *, glimpses: int = 21, warmup: int = 3, threads: int | None = None,
                 image: Any = None) -> dict[str, Any]:
    """Profile `glimpses` glimpses of a C2F rollout of `image` (a photo's path or an RGB array, as
    canvit_runtime.preprocess.scene_batch takes; default skimage astronaut)
    after `warmup` untimed ones. Returns {"runtime", "artifact", "precision", "glimpses", "ms_per_glimpse" (the nodes'
    summed time per glimpse), "shares" ({matmul, glue, fused, other}: fractions of it), "sides" ({canvas, glimpse}:
    {"ms", "share"} of each side, canvas_sized telling them apart), "types" (NodeType rows as dicts, slowest
    first)}. Raises ExportError for a runtime other than openvino / onnxruntime, too few glimpses, or
    a runtime that is not installed."""
    if runtime not in ("openvino", "onnxruntime"):
        raise ExportError(f"--runtime {runtime}: profile reads OpenVINO's performance counters or ONNX Runtime's "
                          f"profiler: choose openvino or onnxruntime")
    if glimpses < 1 or warmup < 0:
        raise ExportError(f"--glimpses {glimpses} / --warmup {warmup}: need glimpses >= 1 and warmup >= 0")
    from canvit_export.parity import default_image

    manifest = canvit_runtime.load_manifest(artifact)
    scene = scene_batch(default_image() if image is None else image, scene_px=manifest.scene_px, batch=manifest.batch)
    measure = _openvino if runtime == "openvino" else _onnxruntime
    try:
        executed = measure(artifact, glimpses, warmup, threads, scene)
    except canvit_runtime.RuntimeUnavailable as error:
        raise ExportError(str(error)) from error
    total, shares, types, sides = summarize(executed, glimpses)
    return {"runtime": runtime, "artifact": str(artifact), "precision": manifest.precision.name, "glimpses": glimpses,
            "ms_per_glimpse": total, "shares": shares,
            "sides": {side: {"ms": ms, "share": ms / total} for side, ms in sides.items()},
            "types": [r.__dict__ for r in types]}
