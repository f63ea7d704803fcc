"""bench.png: median latency per configuration, and latency against the canvas grid when the run has two grids."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from canvit_export.bench.report import BenchRow
from canvit_runtime.paths import write_output


def chart(table: list[BenchRow], path: Path) -> None:
    """Median latency per configuration (bars with p10-p90, each labelled with its median in ms; the floors gray, under
    their short chart label), and latency vs canvas grid per runtime/precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(4, 0.35 * len(table) + 2)
    if len({r.canvas for r in table}) < 2:  # latency vs canvas needs two canvas sizes at least
        fig, bars = plt.subplots(1, 1, figsize=(9, height))
        curves = None
    else:
        fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [3, 2]})
    _bars(bars, table)
    if curves is not None:
        _curves(curves, table)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=110, bbox_inches="tight")  # long configuration names would clip the axis label
    write_output(path, picture.getvalue())
    plt.close(fig)


def _bars(bars: Any, table: list[BenchRow]) -> None:
    medians = np.array([r.median_ms for r in table])
    errors = np.array([[r.median_ms - r.p10_ms for r in table], [r.p90_ms - r.median_ms for r in table]])
    colors = ["tab:gray" if r.runtime == "floor" else "tab:blue" for r in table]
    bars.barh(range(len(table)), medians, xerr=errors, color=colors, alpha=0.8)
    for y, (median, high) in enumerate(zip(medians, medians + errors[1], strict=True)):
        bars.annotate(f"{median:.1f}", (high, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    bars.margins(x=0.08)  # room for the largest bar's figure
    bars.set_yticks(range(len(table)), [r.chart_label or r.config for r in table], fontsize=8)
    bars.invert_yaxis()
    if medians.max() > 20 * medians.min():  # e.g. batch-8 rows beside batch-1 rows: linear bars would hide the small
        bars.set_xscale("log")
        bars.set_xlabel("step latency, ms (median, p10-p90; log scale)")
    else:
        bars.set_xlabel("step latency, ms (median, p10-p90)")
    bars.grid(axis="x", alpha=0.3)


def _curves(curves: Any, table: list[BenchRow]) -> None:
    """One line per configuration (runtime, precision, batch), its points the canvas sizes it ran at."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in table:
        label = f"{r.runtime} {r.precision} b{r.batch}" + (" (baseline)" if r.size_mb == 0 else "")
        series.setdefault(label, []).append((r.canvas, r.median_ms))
    for label, points in sorted(series.items()):
        points.sort()
        curves.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    curves.set_xlabel("canvas grid G (G x G tokens)")
    curves.set_ylabel("median step latency, ms")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
