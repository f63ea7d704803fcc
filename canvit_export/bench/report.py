"""The bench's results as types: one BenchRow per configuration (and per floor), the BenchReport of a run, and
bench.json and bench.md written from them. bench.json's keys are the table's column names (COLUMNS), stable for its
readers (scripts/gen_docs.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from canvit_export.bench.configs import Candidate, Machine
from canvit_export.bench.flops import FLOOR_ROW_MULTIPLE, glimpse_gflops
from canvit_export.bench.traffic import CanvasTraffic

FLOOR_OF = {"fp32": "fp32", "fp32-int8w": "fp32", "bf16": "bf16", "bf16-int8w": "bf16", "fp16": "bf16",
            "fp16-int8w": "bf16", "fp16-all": "bf16", "bf16-autocast": "bf16", "int8": "int8"}
"""Which floor a row's precision is held to (fp16 on a CPU without fp16 matmuls: the bf16 rate)."""


def _column(key: str) -> Any:
    """A BenchRow field written to bench.json and bench.md under `key`."""
    return field(metadata={"key": key, "column": True})


def _extra(key: str) -> Any:
    """A BenchRow field written to bench.json under `key` when set (floor rows), not a table column."""
    return field(default=None, metadata={"key": key})


@dataclass(frozen=True)
class BenchRow:
    """One row of the table. Latencies in ms of one step of `batch` scenes (median, 10th and 90th percentile);
    glimpses_per_s = 1000 x batch / the machine time per step; vs_eager = the group's eager median / that time (None
    for floors); x_floor = that time / the row's floor (FLOOR_OF; None without one): its matmuls alone plus its canvas
    traffic at the measured bandwidth (floor_row); x_matmul_floor = that time / the matmuls alone; peak RSS and size in MB (1e6
    bytes; None: not measured); the worst canvas rel-L2 and cosine against eager over the rollout (None: not
    measured); GFLOPs per glimpse of `batch` scenes (flops.glimpse_gflops, or the floor's matmuls) and GFLOP/s
    at the machine time per step."""

    config: str = _column("config")
    runtime: str = _column("runtime")
    precision: str = _column("precision")
    canvas: int = _column("canvas")
    batch: int = _column("batch")
    median_ms: float = _column("median ms")
    p10_ms: float = _column("p10 ms")
    p90_ms: float = _column("p90 ms")
    glimpses_per_s: float = _column("glimpses/s")
    vs_eager: float | None = _column("vs eager")
    x_floor: float | None = _column("x floor")
    x_matmul_floor: float | None = _column("x matmul floor")
    peak_rss_mb: float | None = _column("peak RSS MB")
    size_mb: float | None = _column("size MB")
    worst_rel_l2: float | None = _column("worst rel-L2")
    worst_cosine: float | None = _column("worst cosine")
    gflops_per_glimpse: float = _column("GFLOPs/glimpse")
    gflop_per_s: float = _column("GFLOP/s")
    chart_label: str | None = _extra("chart label")
    rows_as_in_graph_ms: float | None = _extra("rows as in the graph ms")
    rows_padded_ms: float | None = _extra(f"rows padded to {FLOOR_ROW_MULTIPLE} ms")
    matmuls_ms: float | None = _extra("matmuls ms")
    canvas_mb_moved: float | None = _extra("canvas MB moved")
    canvas_ms: float | None = _extra("canvas traffic ms")
    bandwidth_gbs: float | None = _extra("bandwidth GB/s")
    bandwidth_array_mb: float | None = _extra("bandwidth array MB")
    target: str | None = _extra("target")
    """The artifact's target (onnx, openvino, ...): an ONNX graph and an IR on one runtime are different curves."""
    backbone: str | None = _extra("backbone")
    """The artifact's backbone (canvit-pytorch's name, e.g. vitb16): which published figures the chart sets beside."""
    group: str | None = None
    """The configuration's group (weights + geometry): which floor it is held to; not written."""

    def to_json(self) -> dict[str, Any]:
        """The row as bench.json holds it: every column, then the extras that are set."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if "key" in f.metadata and (f.metadata.get("column") or value is not None):
                out[f.metadata["key"]] = value
        return out

    def cell(self, column: str) -> str:
        """The bench.md cell of `column` (a COLUMNS key): n/a when not measured."""
        value = getattr(self, FIELD_OF[column])
        if value is None:
            return "n/a"
        if column == "worst rel-L2":
            return f"{value:.1e}"
        if column == "worst cosine":
            return f"{value:.6f}"
        if column in ("vs eager", "x floor", "x matmul floor"):
            return f"{value:.2f}x"
        return f"{value:.1f}" if isinstance(value, float) else str(value)


COLUMNS = tuple(f.metadata["key"] for f in fields(BenchRow) if f.metadata.get("column"))
"""The table's columns, in order: bench.md's header and bench.json's row keys."""
FIELD_OF = {f.metadata["key"]: f.name for f in fields(BenchRow) if "key" in f.metadata}


@dataclass(frozen=True)
class BenchReport:
    """One run: the machine, timed glimpses per configuration (`iters`, after `warmup`), the photo and the viewpoint
    policy, and the rows (configurations, then floors, then multi-stream rows)."""

    machine: Machine
    iters: int
    warmup: int
    image: str
    policy: str
    rows: list[BenchRow]

    def to_json(self) -> dict[str, Any]:
        """bench.json: {"machine", "iters", "warmup", "image", "policy", "columns", "rows"}."""
        return {"machine": dataclasses.asdict(self.machine), "iters": self.iters, "warmup": self.warmup,
                "image": self.image, "policy": self.policy, "columns": list(COLUMNS),
                "rows": [r.to_json() for r in self.rows]}

    def markdown(self) -> str:
        """bench.md: the machine in one line (configs.Machine.describe), then the table (COLUMNS)."""
        lines = [f"Machine: {self.machine.describe()}; median of {self.iters} glimpses per configuration, interleaved.",
                 "",
                 "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r.cell(k) for k in COLUMNS) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def latency_row(*, config: str, runtime: str, precision: str, canvas: int, batch: int, size_mb: float | None,
                gflops: float, times_ms: Sequence[float], per_step_ms: float, eager_ms: float | None,
                floor_ms: float | None, rss: float | None, rel_l2: float | None, cosine: float | None,
                matmul_floor_ms: float | None = None) -> BenchRow:
    """A configuration's row from its step times `times_ms` (ms; the latency columns) and `per_step_ms`, the machine
    time per step of `batch` scenes (glimpses/s, vs eager against `eager_ms`, x floor against `floor_ms`, x matmul
    floor against `matmul_floor_ms`, GFLOP/s from `gflops` per glimpse)."""
    return BenchRow(config=config, runtime=runtime, precision=precision, canvas=canvas, batch=batch,
                    median_ms=float(np.median(times_ms)), p10_ms=float(np.percentile(times_ms, 10)),
                    p90_ms=float(np.percentile(times_ms, 90)), glimpses_per_s=1e3 * batch / per_step_ms,
                    vs_eager=eager_ms / per_step_ms if eager_ms else None,
                    x_floor=per_step_ms / floor_ms if floor_ms else None,
                    x_matmul_floor=per_step_ms / matmul_floor_ms if matmul_floor_ms else None, peak_rss_mb=rss, size_mb=size_mb,
                    worst_rel_l2=rel_l2, worst_cosine=cosine, gflops_per_glimpse=gflops,
                    gflop_per_s=gflops / (per_step_ms / 1e3))


def floor_row(*, artifact_name: str, group: str, canvas: int, batch: int, precision: str, products: int,
              weights: int, gflops: float, timed: dict[int, float], traffic: CanvasTraffic,
              bandwidth: float) -> BenchRow:
    """A floor's row (issue 29's honest floor): the step's `products` matmuls (`weights` of them weight matrices,
    `gflops` in all) timed alone at `precision`, `timed` = {rows multiple: median ms} for rows as in the graph (1) and
    padded (FLOOR_ROW_MULTIPLE), the faster of the two, plus the glimpse's canvas traffic (`traffic.bytes_moved`
    bytes) at `bandwidth` bytes/s (traffic.triad_bandwidth): floor ms = matmuls ms + 1e3 x bytes moved / bandwidth."""
    multiple = min(timed, key=lambda k: timed[k])
    matmuls_ms = timed[multiple]
    canvas_ms = 1e3 * traffic.bytes_moved / bandwidth
    ms = matmuls_ms + canvas_ms
    rows_note = f", rows padded to {multiple}" if multiple > 1 else ""
    return BenchRow(
        config=f"floor ({artifact_name}): the step's {products} matmuls alone ({weights} of weights, {gflops:.1f} "
               f"GFLOPs), {precision} on OpenVINO{rows_note}, + canvas traffic ({traffic.describe()} at "
               f"{bandwidth / 1e9:.1f} GB/s)",
        runtime="floor", precision=precision, canvas=canvas, batch=batch, median_ms=ms, p10_ms=ms, p90_ms=ms,
        glimpses_per_s=1e3 * batch / ms, vs_eager=None, x_floor=1.0, x_matmul_floor=ms / matmuls_ms, peak_rss_mb=None,
        size_mb=None, worst_rel_l2=None, worst_cosine=None, gflops_per_glimpse=gflops, gflop_per_s=gflops / (ms / 1e3),
        chart_label=f"floor {precision}: the step's matmuls + canvas traffic ({artifact_name})",
        rows_as_in_graph_ms=timed[1], rows_padded_ms=timed[FLOOR_ROW_MULTIPLE], matmuls_ms=matmuls_ms,
        canvas_mb_moved=traffic.bytes_moved / 1e6, canvas_ms=canvas_ms, bandwidth_gbs=bandwidth / 1e9,
        bandwidth_array_mb=traffic.canvas_bytes / 1e6, group=group)


def timed_row(candidates: list[Candidate], floors: list[BenchRow], c: Candidate, config: str,
              times_ms: list[float], per_step: float, *, rss: float | None, rel_l2: float | None,
              cosine: float | None) -> BenchRow:
    """latency_row of configuration `c` named `config`, against its group's eager median and its precision's floor
    in `floors` (FLOOR_OF): the honest floor and its matmuls alone."""
    eager = next(float(np.median(e.times_ms)) for e in candidates if e.reference and e.group == c.group)
    floor = next((f for f in floors if (f.group, f.precision) == (c.group, FLOOR_OF.get(c.precision, ""))), None)
    row = latency_row(config=config, runtime=c.runtime, precision=c.precision, canvas=c.manifest.canvas_grid,
                      batch=c.manifest.batch, size_mb=c.size_bytes / 1e6, gflops=glimpse_gflops(c.manifest),
                      times_ms=times_ms, per_step_ms=per_step, eager_ms=eager,
                      floor_ms=floor.median_ms if floor else None, rss=rss, rel_l2=rel_l2, cosine=cosine,
                      matmul_floor_ms=floor.matmuls_ms if floor else None)
    return dataclasses.replace(row, target=c.manifest.target, backbone=c.manifest.architecture.backbone)


def candidate_rows(candidates: list[Candidate], rss: dict[str, float | None], floors: list[BenchRow]) -> list[BenchRow]:
    """Each configuration's row (its median step as the machine time per step), then the floors."""
    out = [timed_row(candidates, floors, c, c.name, c.times_ms, float(np.median(c.times_ms)),
                     rss=rss.get(c.name), rel_l2=max(c.rel_l2) if c.rel_l2 else 0.0,
                     cosine=min(c.cosine) if c.cosine else 1.0) for c in candidates]
    return out + floors
