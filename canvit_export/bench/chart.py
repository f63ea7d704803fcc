"""bench.png: latency and throughput per configuration, coloured by precision, and latency against the canvas grid
when the run has two grids."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from canvit_export.bench.report import BenchRow
from canvit_runtime.paths import write_output

PRECISION_COLOURS = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:green", "int8": "tab:red"}
"""Each precision's fixed colour: a row's precision word by its leading family (fp32-int8w: fp32; bf16-autocast:
bf16); any other word is gray."""


def precision_colour(precision: str) -> str:
    return PRECISION_COLOURS.get(precision.split("-")[0], "tab:gray")


def chart(table: list[BenchRow], path: Path) -> None:
    """Median latency per configuration (bars with p10-p90, each labelled with its median in ms) beside its
    throughput (glimpses/s: a multi-stream row's latency is one round, its throughput all streams'), bars coloured by
    precision (PRECISION_COLOURS, legend) and the floors hatched under their short chart label; and latency vs
    canvas grid per runtime/precision when the run has two grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(4, 0.35 * len(table) + 2)
    two_grids = len({r.canvas for r in table}) >= 2  # latency vs canvas needs two canvas sizes at least
    fig, axes = plt.subplots(1, 3 if two_grids else 2, figsize=(20 if two_grids else 15, height),
                             gridspec_kw={"width_ratios": [3, 2, 2] if two_grids else [3, 2]})
    _bars(axes[0], table, [r.median_ms for r in table], [r.p10_ms for r in table], [r.p90_ms for r in table],
          "step latency, ms (median, p10-p90)")
    _bars(axes[1], table, [r.glimpses_per_s for r in table], None, None, "throughput, glimpses/s (higher is better)")
    axes[1].set_yticklabels([])
    _legend(axes[0], table)
    if two_grids:
        _curves(axes[2], table)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=110, bbox_inches="tight")  # long configuration names would clip the axis label
    write_output(path, picture.getvalue())
    plt.close(fig)


def _bars(bars: Any, table: list[BenchRow], values: list[float], low: list[float] | None, high: list[float] | None,
          label: str) -> None:
    """Horizontal bars of `values` (p10-p90 whiskers when `low` and `high`), one per row, labelled with the value."""
    v = np.array(values)
    errors = None if low is None or high is None else np.array([v - np.array(low), np.array(high) - v])
    bars.barh(range(len(table)), v, xerr=errors, color=[precision_colour(r.precision) for r in table], alpha=0.85,
              hatch=["//" if r.runtime == "floor" else "" for r in table], edgecolor="white")
    ends = v if errors is None else v + errors[1]
    for y, (value, end) in enumerate(zip(v, ends, strict=True)):
        bars.annotate(f"{value:.1f}", (end, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    bars.margins(x=0.1)  # room for the largest bar's figure
    bars.set_yticks(range(len(table)), [r.chart_label or r.config for r in table], fontsize=8)
    bars.invert_yaxis()
    if v.max() > 20 * v.min():  # e.g. batch-8 rows beside batch-1 rows: linear bars would hide the small
        bars.set_xscale("log")
        label += "; log scale"
    bars.set_xlabel(label)
    bars.grid(axis="x", alpha=0.3)


def _legend(bars: Any, table: list[BenchRow]) -> None:
    """One patch per precision family in the table, and the floors' hatching."""
    from matplotlib.patches import Patch

    families = dict.fromkeys(precision_colour(r.precision) for r in table)
    names = {colour: family for family, colour in PRECISION_COLOURS.items()}
    handles = [Patch(color=c, alpha=0.85, label=names.get(c, "other")) for c in families]
    if any(r.runtime == "floor" for r in table):
        handles.append(Patch(facecolor="white", edgecolor="gray", hatch="//", label="floor"))
    bars.legend(handles=handles, fontsize=8, loc="best")


PAPER_CPU_SCALING = {"1 thread": ((32, 224.0), (64, 488.0)), "4 threads": ((32, 90.7), (64, 201.0))}
"""The paper's Table 19: CanViT-B's PyTorch eager step on a CPU at scenes 512 and 1024 px (canvas 32 and 64), in ms,
on one and on four threads (the paper's machine, not this one): drawn beside a run of CanViT-B (vitb16)."""


def curve_label(r: BenchRow) -> str:
    """A line of the latency-vs-canvas panel: runtime, the artifact's form where a runtime reads two (an OpenVINO IR
    or an ONNX graph on OpenVINO), precision and batch."""
    form = {"openvino": " IR", "onnx": " (ONNX)"}.get(r.target or "", "") if r.runtime == "openvino" else ""
    return f"{r.runtime}{form} {r.precision} b{r.batch}" + (" (baseline)" if r.size_mb == 0 else "")


def _curves(curves: Any, table: list[BenchRow]) -> list[str]:
    """Return the lines' labels. One line per configuration (curve_label), its points the canvas sizes it ran at,
    in its precision's colour (a line style per runtime; the floors in their precision's colour); multi-stream rows
    are left out (their latency is a round's). Beside a CanViT-B run, the paper's CPU scaling (PAPER_CPU_SCALING),
    gray."""
    series: dict[str, list[tuple[int, float]]] = {}
    looks: dict[str, tuple[str, str]] = {}  # label -> (colour, line style)
    runtimes = list(dict.fromkeys(r.runtime for r in table))
    for r in table:
        if "throughput hint" in r.config:
            continue
        label = f"floor {r.precision} (matmuls + canvas traffic)" if r.runtime == "floor" else curve_label(r)
        series.setdefault(label, []).append((r.canvas, r.median_ms))
        looks[label] = (precision_colour(r.precision), ("-", "--", ":", "-.")[runtimes.index(r.runtime) % 4])
    for label, points in sorted(series.items()):
        points.sort()
        curves.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=looks[label][0],
                    linestyle=looks[label][1])
    if any(r.backbone == "vitb16" for r in table):
        for (threads, paper), marker in zip(PAPER_CPU_SCALING.items(), ("s", "D"), strict=True):
            curves.plot([p[0] for p in paper], [p[1] for p in paper], marker=marker, color="gray", linestyle=":",
                        label=f"paper Table 19: eager, {threads} (its CPU)")
    grids = sorted({r.canvas for r in table})
    curves.set_xscale("log", base=2)
    curves.set_yscale("log")
    curves.set_xticks(grids, [str(g) for g in grids])
    curves.set_xlabel("canvas grid G (G x G tokens; log scale)")
    curves.set_ylabel("median step latency, ms (one stream; log scale)")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3, which="both")
    return [line.get_label() for line in curves.get_lines()]
