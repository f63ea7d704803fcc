"""The floor (issue 29's honest floor): the step's own matrix products (flops.step_matmuls) alone, side by side in one
OpenVINO model, timed per precision, plus the glimpse's canvas traffic (traffic.canvas_traffic) at the memory bandwidth
measured in the same run (traffic.triad_bandwidth). A configuration's "x floor" is its step time over its precision's
floor, its "x matmul floor" over the matmuls alone."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from canvit_export.bench.configs import Candidate
from canvit_export.bench.flops import FLOOR_ROW_MULTIPLE, StepMatMul, step_matmuls
from canvit_export.bench.report import BenchRow, floor_row
from canvit_export.bench.traffic import canvas_traffic, triad_bandwidth
from canvit_export.progress import console
from canvit_runtime.manifest import Manifest, ManifestError

FLOOR_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""The floors measured, each under its OpenVINO inference precision hint: the step's matmuls in float32, in bfloat16,
and quantized to INT8 by NNCF (weights and activations; the hint then only types what is left between them)."""


def floor_model(matmuls: list[StepMatMul], kind: str, rows_multiple: int = 1) -> tuple[Any, list[Any]]:
    """An OpenVINO model of the step's matmuls alone, side by side (their shapes, each weight matrix its own constant,
    so the step's weight bytes stream through memory as in the step), typed `kind` (f32, bf16), rows padded to a
    multiple of `rows_multiple`; activations are Parameters (one per shape), fed zeros. Returns (model, feeds)."""
    import openvino as ov
    import openvino.opset13 as ops

    element = ov.Type.bf16 if kind == "bf16" else ov.Type.f32
    rng = np.random.default_rng(0)
    parameters: dict[tuple[int, ...], Any] = {}

    def activation(shape: tuple[int, ...]) -> Any:
        if shape not in parameters:
            parameters[shape] = ops.parameter(list(shape), element)
        return parameters[shape]

    outputs = []
    for mm in matmuls:
        a = mm.a
        if not mm.transpose_a:
            a = (*a[:-2], -(-a[-2] // rows_multiple) * rows_multiple, a[-1])
        b = ops.constant((0.02 * rng.standard_normal(mm.b)).astype(np.float32), element) if mm.weights \
            else activation(mm.b)
        outputs.append(ops.matmul(activation(a), b, mm.transpose_a, mm.transpose_b))
    model = ov.Model(outputs, list(parameters.values()))
    feeds = []
    for p in parameters.values():
        tensor = ov.Tensor(element, list(p.get_output_shape(0)))
        tensor.data[...] = 0
        feeds.append(tensor)
    return model, feeds


def floor_latency_ms(matmuls: list[StepMatMul], precision: str, threads: int | None, rows_multiple: int = 1,
                     repeats: int = 50) -> float:
    """Median latency (ms) of floor_model(matmuls, rows_multiple) on OpenVINO's CPU plugin at `precision` (FLOOR_HINTS;
    int8: the f32 model quantized by nncf.quantize, weights and activations, attention's products included, from one
    random sample), `repeats` runs after 10 warm-ups."""
    import openvino as ov

    model, feeds = floor_model(matmuls, "bf16" if precision == "bf16" else "f32", rows_multiple)
    if precision == "int8":
        model = quantized_floor(model)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": FLOOR_HINTS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    times = []
    for i in range(repeats + 10):
        start = time.perf_counter()
        request.infer(feeds, share_inputs=True, share_outputs=True)
        if i >= 10:
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def quantized_floor(model: Any) -> Any:
    """floor_model's f32 model with every matmul INT8, quantized as the INT8 export quantizes
    (export.int8.nncf_static_int8), calibrated on one random sample: only its speed is used."""
    from canvit_export.export.int8 import nncf_static_int8

    rng = np.random.default_rng(0)
    sample = [rng.standard_normal(list(p.get_output_shape(0))).astype(np.float32) for p in model.get_parameters()]
    return nncf_static_int8(model, [sample], 1)


def floor_rows(candidates: list[Candidate], threads: int | None) -> list[BenchRow]:
    """Per group and floor precision (FLOOR_HINTS): the latency of the step's own matmuls alone (step_matmuls of the
    group's first artifact, timed as floor_model: every product, its shapes, its weight bytes), the faster of their
    rows as in the graph and padded to FLOOR_ROW_MULTIPLE, plus its canvas traffic at the triad bandwidth over arrays
    of its canvas's size on `threads` (measured once per canvas size). A group whose first artifact is not a graph
    (TensorRT, Core ML) has no floor."""
    out = []
    bandwidths: dict[int, float] = {}  # canvas bytes -> bytes/s
    groups: dict[str, Manifest] = {}
    for c in candidates:  # each group named by its first configuration (its eager reference's artifact)
        groups.setdefault(c.group, c.manifest)
    for group, manifest in groups.items():
        try:
            matmuls = step_matmuls(manifest)
        except ManifestError as error:
            console.print(f"[yellow]note[/yellow]: no floor for {manifest.directory.name}: {error}")
            continue
        traffic = canvas_traffic(manifest)
        if traffic.canvas_bytes not in bandwidths:
            bandwidths[traffic.canvas_bytes] = triad_bandwidth(traffic.canvas_bytes, threads)
            console.print(f"memory bandwidth: {bandwidths[traffic.canvas_bytes] / 1e9:.1f} GB/s (best of 5 triads "
                          f"a = b + s x c over {traffic.canvas_bytes / 1e6:.2f} MB arrays, the canvas's size)")
        for precision in FLOOR_HINTS:
            console.print(f"floor ({manifest.directory.name}): {len(matmuls)} matmuls in {precision}, rows as in the "
                          f"graph and padded to {FLOOR_ROW_MULTIPLE}")
            timed = {multiple: floor_latency_ms(matmuls, precision, threads, multiple)
                     for multiple in (1, FLOOR_ROW_MULTIPLE)}
            out.append(floor_row(artifact_name=manifest.directory.name, group=group, canvas=manifest.canvas_grid,
                                 batch=manifest.batch, precision=precision, products=len(matmuls),
                                 weights=sum(mm.weights for mm in matmuls),
                                 gflops=sum(mm.flops for mm in matmuls) / 1e9, timed=timed, traffic=traffic,
                                 bandwidth=bandwidths[traffic.canvas_bytes]))
    return out


def measured_bandwidth(floors: list[BenchRow]) -> list[dict[str, float]]:
    """The bandwidths the floors were priced at, one {"array MB", "GB/s"} per canvas size, for the machine's facts."""
    seen = {(f.bandwidth_array_mb, f.bandwidth_gbs) for f in floors if f.bandwidth_gbs is not None}
    return [{"array MB": mb, "GB/s": gbs} for mb, gbs in sorted(seen) if mb is not None and gbs is not None]
