"""canvit-export bench: step latency, throughput, memory, size and error of every artifact x runtime, against
PyTorch eager (fp32) and canvit-pytorch's own browser export (viz.live GlimpseStep) on ONNX Runtime.

Every configuration steps through the same C2F rollout of a real photo with its state carried, and the
configurations take their steps in turn (round-robin), so drift of this shared machine hits all of them alike.
PyTorch eager's state at each glimpse is also the parity reference: each configuration's worst canvas rel-L2 and
cosine over the rollout are measured outside the timed region. Peak resident memory is measured per
configuration in a child process (load + 3 glimpses), since one process's peak mixes them all.
GFLOPs per glimpse: canvit_pytorch.flops.glimpse_flops (paper App. G), for the artifact's canvas and glimpse.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.export.artifact import tool_versions
from canvit_export.parity import default_image
from canvit_export.progress import console
from canvit_export.reference import EagerRunner, PeerRunner, export_peer
from canvit_export.source import load_from_record
from canvit_runtime.base import Runner
from canvit_runtime.manifest import Manifest, ManifestError, a_target, load_manifest
from canvit_runtime.paths import report_folder, write_output
from canvit_runtime.policies import Viewpoints, make_policy
from canvit_runtime.preprocess import scene_batch
from canvit_runtime.verdict import compare

COMPATIBLE = {"onnxruntime": {"onnx"}, "openvino": {"onnx", "openvino"}, "tensorrt": {"tensorrt"},
              "executorch": {"executorch"}}
TARGET_NAMES = {"onnxruntime": "ONNX artifacts", "openvino": "ONNX and OpenVINO IR artifacts",
                "tensorrt": "TensorRT engine artifacts", "executorch": "ExecuTorch .pte artifacts"}
COLUMNS = ("config", "runtime", "precision", "canvas", "batch", "median ms", "p10 ms", "p90 ms", "glimpses/s",
           "vs eager", "x floor", "peak RSS MB", "size MB", "worst rel-L2", "worst cosine", "GFLOPs/glimpse", "GFLOP/s")
FLOOR_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""The floors measured, each under its OpenVINO inference precision hint: the step's matmuls in float32, in bfloat16,
and quantized to INT8 by NNCF (weights and activations; the hint then only types what is left between them)."""
FLOOR_OF = {"fp32": "fp32", "fp32-int8w": "fp32", "bf16": "bf16", "bf16-int8w": "bf16", "fp16": "bf16",
            "fp16-int8w": "bf16", "fp16-all": "bf16", "bf16-autocast": "bf16", "int8": "int8"}
"""Which floor a row's precision is held to (fp16 on a CPU without fp16 matmuls: the bf16 rate)."""
FLOOR_ROW_MULTIPLE = 8
"""Rows (M) of a floor matmul are also tried padded to a multiple of this: oneDNN's bf16 and INT8 kernels run
M=71 (a CanViT-B glimpse's tokens) markedly slower than M=72 here (export.openvino.pad_rows); the floor takes
the faster of the two, as an export may pad."""


@dataclass
class Candidate:
    """One configuration being timed: its runner, facts for the table, and what it measured."""

    name: str
    runtime: str
    precision: str
    group: str  # weights fingerprint + geometry: candidates of one group share a reference
    manifest: Manifest
    runner: Runner
    size_bytes: int
    child: list[str]  # argv of the child process that measures peak RSS
    times_ms: list[float] = field(default_factory=list)
    rel_l2: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    canvas: np.ndarray | None = None  # eager only: the reference canvas of the current glimpse
    reference: bool = False  # PyTorch eager fp32: the group's reference (errors, "vs eager")


def glimpse_gflops(manifest: Manifest) -> float:
    """Analytic GFLOPs of one glimpse per scene x batch (canvit_pytorch.flops.glimpse_flops; paper App. G)."""
    from canvit_pytorch import CanViTConfig
    from canvit_pytorch.flops import glimpse_flops

    arch = manifest.architecture
    config = CanViTConfig(backbone_name=arch.backbone,  # type: ignore[arg-type]  # CanViTConfig checks the word
                          canvas_num_heads=arch.canvas_num_heads, canvas_head_dim=arch.canvas_head_dim,
                          num_canvas_registers=arch.num_canvas_registers,
                          num_backbone_registers=arch.num_backbone_registers, enable_vpe=arch.enable_vpe,
                          canvas_projections=arch.canvas_projections)  # type: ignore[arg-type]
    return glimpse_flops(config, glimpse_size_px=manifest.glimpse_px, canvas_grid_size=manifest.canvas_grid) \
        * manifest.batch / 1e9


def peak_rss_mb(argv: list[str]) -> float | None:
    """Peak resident memory (MB) of a child process: `python -m canvit_export.bench_child ...`."""
    result = subprocess.run([sys.executable, "-m", "canvit_export.bench_child", *argv], capture_output=True,
                            text=True, timeout=900, check=False)
    if result.returncode != 0:
        console.print(f"[yellow]peak RSS of {argv} not measured[/yellow]: {result.stderr.strip()[-200:]}")
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def machine_facts(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "versions": tool_versions("onnx", "onnxruntime", "openvino", "nncf", "tensorrt")}


BASELINES = ("bf16-autocast", "compile")
"""PyTorch baselines a user would pick instead of an export (reference.EagerRunner modes), besides eager fp32 and
the peer export: torch.autocast bfloat16 on the CPU, and torch.compile (inductor) in float32."""


def build_candidates(artifacts: list[Path], runtimes: list[str], threads: int | None, workdir: Path,
                     peer: bool, baselines: tuple[str, ...] = ()) -> list[Candidate]:
    """Every compatible artifact x runtime, plus per group (weights + geometry) the eager reference, the PyTorch
    `baselines` (BASELINES) and the peer baseline."""
    candidates: list[Candidate] = []
    groups: dict[str, Manifest] = {}
    thread_arg = str(threads) if threads is not None else "-"
    for artifact in artifacts:
        try:
            manifest = load_manifest(artifact)
        except ValueError as error:
            raise ExportError(str(error)) from error
        group = f"{manifest.model.weights_fingerprint[:12]}-{manifest.geometry.model_dump_json()}"
        groups.setdefault(group, manifest)
        for runtime in runtimes:
            if manifest.target not in COMPATIBLE.get(runtime, set()):
                continue
            try:
                runner = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
            except (ValueError, canvit_runtime.RuntimeUnavailable) as error:
                console.print(f"[yellow]skipping {artifact} on {runtime}[/yellow]: {error}")
                continue
            candidates.append(Candidate(f"{artifact.name} [{runtime}]", runtime, manifest.precision.name, group,
                                        manifest, runner, manifest.size_bytes,
                                        ["runtime", str(artifact), runtime, thread_arg]))
    if idle := [r for r in runtimes if not any(c.runtime == r for c in candidates)]:  # e.g. the default tensorrt
        console.print(f"[yellow]note[/yellow]: no configuration on {', '.join(idle)} (it runs "
                      f"{'; '.join(f'{r}: {TARGET_NAMES[r]}' for r in idle)}, and none of --artifacts is one, or its "
                      f"package is missing)")
    if not candidates:
        raise ExportError(f"no artifact runs on {', '.join(runtimes)}: pass --artifacts of matching targets "
                          f"(onnxruntime: ONNX; openvino: ONNX or OpenVINO IR; tensorrt: TensorRT engine)")
    for group, manifest in groups.items():
        with console.status(f"preparing the baselines of {manifest.directory.name}"):
            loaded = load_from_record(manifest.model)
            candidates.insert(0, Candidate(f"PyTorch eager ({manifest.directory.name})", "pytorch", "fp32", group,
                                           manifest, EagerRunner(manifest, loaded, threads=threads), 0,
                                           ["eager", str(manifest.directory), "pytorch", thread_arg], reference=True))
            for position, mode in enumerate(baselines, start=1):
                runner = EagerRunner(manifest, loaded, threads=threads, mode=mode)
                label = {"bf16-autocast": "PyTorch eager, bf16 autocast", "compile": "torch.compile (inductor)"}[mode]
                candidates.insert(position, Candidate(
                    f"{label} ({manifest.directory.name})", runner.name, "fp32" if mode == "compile" else mode,
                    group, manifest, runner, 0, ["eager", str(manifest.directory), "pytorch", thread_arg, mode]))
            if peer:
                path = export_peer(loaded, manifest, workdir)
                candidates.insert(1 + len(baselines), Candidate(
                    f"canvit-pytorch live export ({manifest.directory.name}) [onnxruntime]", "onnxruntime", "fp32",
                    group, manifest, PeerRunner(manifest, path, threads=threads), path.stat().st_size,
                    ["peer", str(manifest.directory), "onnxruntime", thread_arg, str(path)]))
    return candidates


SETTLE_SECONDS = 0.02
"""Untimed pause before each timed step: runtimes' worker threads (OpenMP, TBB) may spin for a while after a run,
and on a 2-core machine they would slow whichever configuration runs next. ONNX Runtime's spin outlasted it (its
workers slowed the configurations after them by ~20%): its runners here do not spin (OnnxRuntimeRunner's
`spinning`), and the errors computed between steps stay off BLAS (canvit_runtime.verdict.l2)."""


def run_bench(candidates: list[Candidate], image: Any, *, iters: int, warmup: int, seed: int = 0) -> None:
    """Round-robin rollout: every candidate takes glimpse t before any takes glimpse t + 1, in an order shuffled
    each round (seeded), each after a short untimed pause, so that no configuration always follows the same one."""
    total = warmup + iters
    batch_of = {c.group: c.manifest.batch for c in candidates}
    scenes = {g: scene_batch(image, scene_px=next(c.manifest.scene_px for c in candidates if c.group == g), batch=b)
              for g, b in batch_of.items()}
    policies: dict[str, list[Viewpoints]] = {}
    for group, batch in batch_of.items():  # C2F, repeated: 21 glimpses per scene, reset in between
        policies[group] = make_policy("c2f", batch=batch, glimpses=21, seed=seed)
    eager = {c.group: c for c in candidates if c.reference}  # each group's reference
    for c in candidates:
        c.runner.reset()
    rng = np.random.default_rng(seed)
    with console.status("benchmark") as status:
        for t in range(total):
            order = [candidates[i] for i in rng.permutation(len(candidates))]
            order.sort(key=lambda c: not c.reference)  # the reference first: the others compare with it
            for c in order:
                if t % 21 == 0 and t:
                    c.runner.reset()
                v = policies[c.group][t % 21]
                time.sleep(SETTLE_SECONDS)
                start = time.perf_counter()
                result = c.runner.step(scenes[c.group], v.centers, v.scales)
                elapsed = (time.perf_counter() - start) * 1e3
                canvas = result.canvas  # a device-resident state is read back here, outside the timed region
                if c.reference:
                    c.canvas = canvas
                else:
                    reference = eager[c.group].canvas
                    assert reference is not None, "the reference steps first"
                    registers = c.manifest.num_canvas_registers
                    rel, _, cosine = compare(canvas[:, registers:], reference[:, registers:])
                    c.rel_l2.append(rel)
                    c.cosine.append(cosine)
                if t >= warmup:
                    c.times_ms.append(elapsed)
            status.update(f"benchmark: glimpse {t + 1}/{total} of {len(candidates)} configurations")


@dataclass(frozen=True)
class StepMatMul:
    """One matrix product of the step: `a` [..., M, K] times `b` [..., K, N] (shapes before the transposes, as in the
    graph), `weights` when b is a constant of the graph (a weight matrix) and not an activation (attention's Q K^T and
    P V)."""

    a: tuple[int, ...]
    b: tuple[int, ...]
    transpose_a: bool
    transpose_b: bool
    weights: bool

    @property
    def flops(self) -> int:
        """2 x M x K x N x the batch dimensions: one multiply-accumulate counts two FLOPs (canvit_pytorch.flops)."""
        k = self.a[-2] if self.transpose_a else self.a[-1]
        m = self.a[-1] if self.transpose_a else self.a[-2]
        n = self.b[-2] if self.transpose_b else self.b[-1]
        return 2 * int(np.prod(self.a[:-2], dtype=np.int64)) * m * k * n


def step_matmuls(manifest: Manifest) -> list[StepMatMul]:
    """Every matrix product of the artifact's step graph (its ONNX graph or OpenVINO IR, read with OpenVINO), in graph
    order: the MatMuls, the two products of each ScaledDotProductAttention (Q K^T, P V), and the convolutions as the
    matmuls they compute (patch embedding: [M = patches, K = 3 x p x p]
    x [K, N = backbone width]; the segmentation probe's 1x1 convolution). ManifestError for other targets (a TensorRT
    engine or Core ML package cannot be read back as a graph)."""
    import openvino as ov

    from canvit_export.export.openvino import from_constant

    key = {"onnx": "graph", "openvino": "ir"}.get(manifest.artifact.target)
    if key is None:
        raise ManifestError(f"{manifest.directory} is {a_target(manifest.artifact.target)} artifact: the floor reads the "
                            f"step's matmuls from an ONNX graph or OpenVINO IR")
    model = ov.Core().read_model(manifest.file(key))
    out = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            flags = op.get_attributes()
            out.append(StepMatMul(tuple(int(d) for d in op.input(0).get_shape()),
                                  tuple(int(d) for d in op.input(1).get_shape()),
                                  bool(flags["transpose_a"]), bool(flags["transpose_b"]),
                                  from_constant(op.input_value(1))))
        elif kind == "ScaledDotProductAttention":  # attention fused by OpenVINO's conversion: its two products
            queries, keys, values = (tuple(int(d) for d in op.input(i).get_shape()) for i in range(3))
            out.append(StepMatMul(queries, keys, False, True, False))
            out.append(StepMatMul((*queries[:-1], keys[-2]), values, False, False, False))
        elif kind == "Convolution":
            weight, result = [int(d) for d in op.input(1).get_shape()], [int(d) for d in op.output(0).get_shape()]
            rows, depth = int(np.prod(result[:1] + result[2:])), int(np.prod(weight[1:]))
            out.append(StepMatMul((rows, depth), (depth, weight[0]), False, False, True))
    return out


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


def floor_rows(candidates: list[Candidate], threads: int | None) -> list[dict[str, Any]]:
    """Per group and floor precision (FLOOR_HINTS): the latency of the step's own matmuls alone (step_matmuls of the
    group's first artifact, timed as floor_model: every product, its shapes, its weight bytes), the faster of their
    rows as in the graph and padded to FLOOR_ROW_MULTIPLE. A group whose first artifact is not a graph (TensorRT,
    Core ML) has no floor."""
    out = []
    groups: dict[str, Manifest] = {}
    for c in candidates:  # each group named by its first configuration (its eager reference's artifact)
        groups.setdefault(c.group, c.manifest)
    for group, manifest in groups.items():
        try:
            matmuls = step_matmuls(manifest)
        except ManifestError as error:
            console.print(f"[yellow]note[/yellow]: no floor for {manifest.directory.name}: {error}")
            continue
        gflops = sum(mm.flops for mm in matmuls) / 1e9
        weights = sum(mm.weights for mm in matmuls)
        for precision in FLOOR_HINTS:
            console.print(f"floor ({manifest.directory.name}): {len(matmuls)} matmuls in {precision}, rows as in the "
                          f"graph and padded to {FLOOR_ROW_MULTIPLE}")
            timed = {multiple: floor_latency_ms(matmuls, precision, threads, multiple)
                     for multiple in (1, FLOOR_ROW_MULTIPLE)}
            multiple = min(timed, key=lambda k: timed[k])
            ms = timed[multiple]
            rows_note = f", rows padded to {multiple}" if multiple > 1 else ""
            out.append({
                "config": f"floor ({manifest.directory.name}): the step's {len(matmuls)} matmuls alone ({weights} of "
                          f"weights, {gflops:.1f} GFLOPs), {precision} on OpenVINO{rows_note}",
                "runtime": "floor", "precision": precision,
                "canvas": manifest.canvas_grid, "batch": manifest.batch, "median ms": ms, "p10 ms": ms, "p90 ms": ms,
                "glimpses/s": 1e3 * manifest.batch / ms, "vs eager": None, "x floor": 1.0, "peak RSS MB": None,
                "size MB": None, "worst rel-L2": None, "worst cosine": None, "GFLOPs/glimpse": gflops,
                "GFLOP/s": gflops / (ms / 1e3), "group": group,
                "chart label": f"floor {precision}: the step's matmuls alone ({manifest.directory.name})",
                "rows as in the graph ms": timed[1], f"rows padded to {FLOOR_ROW_MULTIPLE} ms": timed[FLOOR_ROW_MULTIPLE]})
    return out


def stream_rows(candidates: list[Candidate], streams: int, image: Any, *, iters: int, warmup: int,
                threads: int | None, floors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Multi-stream throughput of every stateful IR on OpenVINO (canvit_runtime.openvino.OpenVinoStreams: the
    THROUGHPUT hint, one infer request and state per stream, `streams` C2F rollouts of the scene stepped at once),
    measured alone after the interleaved run (it occupies every core). median/p10/p90 ms: one round, i.e. each
    stream's step latency under that load; glimpses/s: streams x batch x rounds / their time; "vs eager", "x floor"
    and GFLOP/s use the machine time per step (a round's time / streams), as the other rows use their step."""
    from canvit_runtime.openvino import OpenVinoStreams

    out = []
    for c in candidates:
        if not (c.runtime == "openvino" and c.manifest.target == "openvino" and c.manifest.stateful):
            continue
        scene = scene_batch(image, scene_px=c.manifest.scene_px, batch=c.manifest.batch)
        policy = make_policy("c2f", batch=c.manifest.batch, glimpses=21)
        rounds_ms = []
        with OpenVinoStreams(c.manifest, streams, threads=threads) as runner, \
                console.status(f"{c.name}: {streams} streams under OpenVINO's throughput hint"):
            for t in range(warmup + iters):
                if t % 21 == 0:
                    runner.reset()
                v = policy[t % 21]
                start = time.perf_counter()
                runner.step([scene] * streams, [v.centers] * streams, [v.scales] * streams)
                if t >= warmup:
                    rounds_ms.append((time.perf_counter() - start) * 1e3)
        per_step = sum(rounds_ms) / (len(rounds_ms) * streams)  # ms of machine time per step (batch scenes)
        out.append(timed_row(candidates, floors, c, f"{c.name.removesuffix(' [openvino]')} [openvino, throughput "
                             f"hint, {streams} streams]", rounds_ms, per_step, rss=None, rel_l2=None, cosine=None))
    return out


def timed_row(candidates: list[Candidate], floors: list[dict[str, Any]], c: Candidate, config: str,
              times_ms: list[float], per_step: float, *, rss: float | None, rel_l2: float | None,
              cosine: float | None) -> dict[str, Any]:
    """The table row of configuration `c` named `config`: latency columns from `times_ms`; glimpses/s, "vs eager"
    (its group's eager median), "x floor" (its precision's floor in `floors`) and GFLOP/s from `per_step`, the machine
    time per step of `batch` scenes in ms; memory and error as measured (None: not measured)."""
    eager = next(float(np.median(e.times_ms)) for e in candidates if e.reference and e.group == c.group)
    floor = next((f["median ms"] for f in floors
                  if (f["group"], f["precision"]) == (c.group, FLOOR_OF.get(c.precision, ""))), None)
    gflops = glimpse_gflops(c.manifest)
    return {
        "config": config, "runtime": c.runtime, "precision": c.precision, "canvas": c.manifest.canvas_grid,
        "batch": c.manifest.batch, "median ms": float(np.median(times_ms)),
        "p10 ms": float(np.percentile(times_ms, 10)), "p90 ms": float(np.percentile(times_ms, 90)),
        "glimpses/s": 1e3 * c.manifest.batch / per_step, "vs eager": eager / per_step,
        "x floor": per_step / floor if floor else None, "peak RSS MB": rss, "size MB": c.size_bytes / 1e6,
        "worst rel-L2": rel_l2, "worst cosine": cosine, "GFLOPs/glimpse": gflops, "GFLOP/s": gflops / (per_step / 1e3),
    }


def rows(candidates: list[Candidate], rss: dict[str, float | None],
         floors: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    out = [timed_row(candidates, floors or [], c, c.name, c.times_ms, float(np.median(c.times_ms)),
                     rss=rss.get(c.name), rel_l2=max(c.rel_l2) if c.rel_l2 else 0.0,
                     cosine=min(c.cosine) if c.cosine else 1.0) for c in candidates]
    for f in floors or []:
        out.append({key: value for key, value in f.items() if key != "group"})
    return out


def markdown(table: list[dict[str, Any]], facts: dict[str, Any], iters: int) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return "n/a"
        if key in ("worst rel-L2",):
            return f"{value:.1e}"
        if key == "worst cosine":
            return f"{value:.6f}"
        if key in ("vs eager", "x floor"):
            return f"{value:.2f}x"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = [f"Machine: {facts['cpu']}, {facts['cores']} cores, threads {facts['threads'] or 'default'}; "
             f"median of {iters} glimpses per configuration, interleaved.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r[k]) for k in COLUMNS) + " |" for r in table]
    return "\n".join(lines) + "\n"


def chart(table: list[dict[str, Any]], path: Path) -> None:
    """Median latency per configuration (bars with p10-p90, each labelled with its median in ms; the floors gray, under
    their short "chart label"), and latency vs canvas grid per runtime/precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvases = {r["canvas"] for r in table}
    if len(canvases) < 2:  # latency vs canvas needs two canvas sizes at least
        fig, bars = plt.subplots(1, 1, figsize=(9, max(4, 0.35 * len(table) + 2)))
        curves = None
    else:
        fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, max(4, 0.35 * len(table) + 2)),
                                           gridspec_kw={"width_ratios": [3, 2]})
    names = [r.get("chart label", r["config"]) for r in table]
    medians = np.array([r["median ms"] for r in table])
    errors = np.array([[r["median ms"] - r["p10 ms"] for r in table], [r["p90 ms"] - r["median ms"] for r in table]])
    colors = ["tab:gray" if r["runtime"] == "floor" else "tab:blue" for r in table]
    bars.barh(range(len(table)), medians, xerr=errors, color=colors, alpha=0.8)
    for y, (median, high) in enumerate(zip(medians, medians + errors[1], strict=True)):
        bars.annotate(f"{median:.1f}", (high, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    bars.margins(x=0.08)  # room for the largest bar's figure
    bars.set_yticks(range(len(table)), names, fontsize=8)
    bars.invert_yaxis()
    if medians.max() > 20 * medians.min():  # e.g. batch-8 rows beside batch-1 rows: linear bars would hide the small
        bars.set_xscale("log")
        bars.set_xlabel("step latency, ms (median, p10-p90; log scale)")
    else:
        bars.set_xlabel("step latency, ms (median, p10-p90)")
    bars.grid(axis="x", alpha=0.3)
    if curves is not None:
        # One line per configuration (runtime, precision, target, batch), its points the canvas sizes it ran at.
        series: dict[str, list[tuple[int, float]]] = {}
        for r in table:
            label = f"{r['runtime']} {r['precision']} b{r['batch']}" + (" (baseline)" if r["size MB"] == 0 else "")
            series.setdefault(label, []).append((r["canvas"], r["median ms"]))
        for label, points in sorted(series.items()):
            points.sort()
            curves.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        curves.set_xlabel("canvas grid G (G x G tokens)")
        curves.set_ylabel("median step latency, ms")
        curves.legend(fontsize=7)
        curves.grid(alpha=0.3)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=110, bbox_inches="tight")  # long configuration names would clip the axis label
    write_output(path, picture.getvalue())
    plt.close(fig)


def bench_command(*, artifacts: list[Path], runtimes: list[str], threads: int | None, iters: int, warmup: int,
                  out: Path, peer: bool, image: Path | None, baselines: tuple[str, ...] = (),
                  streams: int = 1) -> dict[str, Any]:
    """Run the benchmark and write out/bench.json, out/bench.md and out/bench.png; return the JSON.
    `baselines`: PyTorch baselines besides eager fp32 (BASELINES); `streams` > 1 adds the multi-stream throughput
    rows of stateful IRs on OpenVINO (stream_rows)."""
    if iters < 1 or warmup < 0:
        raise ExportError(f"--iters {iters} / --warmup {warmup}: need iters >= 1 and warmup >= 0")
    if streams < 1:
        raise ExportError(f"--streams {streams}: need 1 (no multi-stream rows) or more")
    if not runtimes:
        raise ExportError(f"--runtimes is empty: choose from {', '.join(COMPATIBLE)}")
    if unknown := [r for r in runtimes if r not in COMPATIBLE]:
        raise ExportError(f"unknown runtime{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from "
                          f"{', '.join(COMPATIBLE)}")
    if unknown := [b for b in baselines if b not in BASELINES]:
        raise ExportError(f"unknown baseline{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from "
                          f"{', '.join(BASELINES)} (or '' for none)")
    try:  # before the work: a benchmark is not lost to a bad --out
        report_folder(out, inputs=artifacts, option="--out")
    except OSError as error:
        raise ExportError(f"--out {out}: cannot create it ({error.strerror}); choose another --out") from error
    with tempfile.TemporaryDirectory(prefix="canvit-bench-") as tmp:
        workdir = Path(tmp)
        candidates = build_candidates(artifacts, runtimes, threads, workdir, peer, baselines)
        photo = default_image() if image is None else image
        run_bench(candidates, photo, iters=iters, warmup=warmup)
        floors = floor_rows(candidates, threads)
        streamed = []
        if streams > 1:
            streamed = stream_rows(candidates, streams, photo, iters=iters, warmup=warmup, threads=threads,
                                   floors=floors)
            if not streamed:
                console.print(f"[yellow]note[/yellow]: --streams {streams} measures stateful OpenVINO IRs on "
                              f"openvino, and none of --artifacts is one")
        rss = {}
        with console.status("measuring peak resident memory, one child process per configuration"):
            for c in candidates:
                rss[c.name] = peak_rss_mb(c.child)
    facts = machine_facts(threads)
    table = rows(candidates, rss, floors) + streamed  # out was created by report_folder, before the work
    report = {"machine": facts, "iters": iters, "warmup": warmup, "image": str(image or "skimage.data.astronaut()"),
              "policy": "c2f (21 glimpses, reset after each 21)", "columns": list(COLUMNS), "rows": table}
    write_output(out / "bench.json", json.dumps(report, indent=1) + "\n")
    write_output(out / "bench.md", markdown(table, facts, iters))
    chart(table, out / "bench.png")
    return report


