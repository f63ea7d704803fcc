"""Parity: a runtime's rollout of an artifact against canvit-pytorch's own CanViT, glimpse by glimpse.

The reference is `CanViT.forward` after `sample_at_viewpoint` (step.reference_step) in float32 on the CPU, with the
weights the manifest names (or --model), the same initial state (CanViT.init_state), the same scene and the same
viewpoints. After every glimpse we compare (DESIGN.md, Contracts):
  canvas spatial tokens [B, G*G, Dc]: rel-L2 = |a - r| / |r|, max-abs, cosine (the smallest over the batch);
  recurrent CLS [B, 1, Db]: rel-L2.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.progress import console
from canvit_export.reference import EagerRunner
from canvit_export.source import LoadedModel, load_from_record
from canvit_runtime.manifest import Manifest
from canvit_runtime.policies import Viewpoints, make_policy
from canvit_runtime.preprocess import scene_batch

TOLERANCES: dict[str, dict[str, float]] = {
    # fp32: rounding differences of correct float32 implementations stay orders of magnitude below 1e-4.
    "fp32": {"canvas_rel_l2": 1e-4, "cls_rel_l2": 1e-4, "canvas_cosine": 0.99999},
    # fp16/bf16 compute with a float32 canvas: measured worst 8.0e-4 (fp16) and 8.2e-3 (bf16) over 200 F-IID
    # glimpses of CanViT-B, so about 2.5x the bf16 figure.
    "fp16": {"canvas_rel_l2": 2e-2, "cls_rel_l2": 5e-2, "canvas_cosine": 0.999},
    "bf16": {"canvas_rel_l2": 2e-2, "cls_rel_l2": 5e-2, "canvas_cosine": 0.999},
    # The control variant is held to fp16's bar: failing it is the measured cost of a float16 canvas.
    "fp16-all": {"canvas_rel_l2": 2e-2, "cls_rel_l2": 5e-2, "canvas_cosine": 0.999},
    # INT8 weight-only compression (NNCF, asymmetric per channel) is a designed approximation: each weight moves
    # by up to half a quantization step, (max - min) / 255 / 2 of its output channel. Measured over 21 C2F
    # glimpses on a photo: canvas rel-L2 1.3e-2, cosine 0.99991 (ViT-S). The bound is about 4x that, so the
    # designed approximation passes and a broken one (wrong zero points, per-tensor scales, a compressed VPE or
    # canvas path) fails.
    "int8w": {"canvas_rel_l2": 5e-2, "cls_rel_l2": 5e-2, "canvas_cosine": 0.998},
}


def tolerances_for(precision: str) -> dict[str, float]:
    """The tolerances of a precision word (canvit_runtime.precision): fp32, fp16, bf16, fp16-all, <any>-int8w."""
    key = "int8w" if precision.endswith("-int8w") else precision
    if key not in TOLERANCES:
        raise ExportError(f"no parity tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[key]


@dataclass(frozen=True)
class GlimpseErrors:
    """Errors after glimpse t (0-based) and the reference canvas's Frobenius norm, for context."""

    t: int
    row: float
    col: float
    scale: float
    canvas_rel_l2: float
    canvas_max_abs: float
    canvas_cosine: float
    cls_rel_l2: float
    reference_canvas_norm: float
    runtime_ms: float
    reference_ms: float
    finite: bool


def compare(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(rel-L2, max-abs, smallest cosine over the batch) of [B, ...] arrays, computed in float64."""
    a = actual.astype(np.float64).reshape(actual.shape[0], -1)
    r = reference.astype(np.float64).reshape(reference.shape[0], -1)
    diff = a - r
    rel_l2 = float(np.linalg.norm(diff) / np.linalg.norm(r))
    cosine = float(min(np.dot(a[b], r[b]) / (np.linalg.norm(a[b]) * np.linalg.norm(r[b])) for b in range(len(a))))
    return rel_l2, float(np.abs(diff).max()), cosine


def default_image() -> np.ndarray:
    """skimage.data.astronaut(): a real 512 x 512 RGB photograph shipped with scikit-image."""
    try:
        import skimage.data
    except ImportError as error:
        raise ExportError("the default photograph comes from scikit-image: pip install scikit-image, or pass --image PATH"
                          ) from error
    return skimage.data.astronaut()


def run_parity(manifest: Manifest, runner: canvit_runtime.Runner, loaded: LoadedModel, scene: np.ndarray,
               viewpoints: list[Viewpoints], *, tolerances: dict[str, float]) -> dict[str, Any]:
    """Roll out `runner` and the reference (reference.EagerRunner) over `viewpoints` from the initial state;
    return the report dict. Raises ExportError when the artifact's initial state is not the reference model's."""
    reference = EagerRunner(manifest, loaded)
    registers = manifest.num_canvas_registers
    initial = manifest.initial_state_arrays(manifest.batch)
    with torch.no_grad():  # the artifact's initial state must be the model's
        model_state = reference.canvit.init_state(batch_size=manifest.batch, canvas_grid_size=manifest.canvas_grid)
        if not (np.array_equal(model_state.canvas.numpy(), initial["canvas"])
                and np.array_equal(model_state.recurrent_cls.numpy(), initial["recurrent_cls"])):
            raise ExportError("the artifact's initial_state.bin differs from the reference model's init_state: "
                              "the weights differ; pass the exported weights with --model")
    runner.reset()
    reference.reset()
    rows: list[GlimpseErrors] = []
    with console.status("parity rollout ...") as status:
        for t, vp in enumerate(viewpoints):
            start = time.perf_counter()
            result = runner.step(scene, vp.centers, vp.scales)
            runtime_ms = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            expected = reference.step(scene, vp.centers, vp.scales)
            reference_ms = (time.perf_counter() - start) * 1e3
            ref_canvas = expected.canvas[:, registers:]
            got_canvas = result.canvas[:, registers:]
            finite = bool(np.isfinite(result.canvas).all() and np.isfinite(result.recurrent_cls).all())
            rel, max_abs, cosine = compare(got_canvas, ref_canvas)
            cls_rel, _, _ = compare(result.recurrent_cls, expected.recurrent_cls)
            rows.append(GlimpseErrors(t=t, row=float(vp.centers[0, 0]), col=float(vp.centers[0, 1]),
                                      scale=float(vp.scales[0]), canvas_rel_l2=rel, canvas_max_abs=max_abs,
                                      canvas_cosine=cosine, cls_rel_l2=cls_rel,
                                      reference_canvas_norm=float(np.linalg.norm(ref_canvas)),
                                      runtime_ms=runtime_ms, reference_ms=reference_ms, finite=finite))
            status.update(f"parity rollout: glimpse {t + 1}/{len(viewpoints)}, canvas rel-L2 {rel:.2e}")
    worst = {
        "canvas_rel_l2": max(r.canvas_rel_l2 for r in rows),
        "canvas_max_abs": max(r.canvas_max_abs for r in rows),
        "canvas_cosine": min(r.canvas_cosine for r in rows),
        "cls_rel_l2": max(r.cls_rel_l2 for r in rows),
    }
    failures = []
    for r in rows:
        if not r.finite:
            failures.append(f"glimpse {r.t}: non-finite values in the runtime's state")
        # NaN compares False: written so that a NaN error fails.
        if not r.canvas_rel_l2 <= tolerances["canvas_rel_l2"]:
            failures.append(f"glimpse {r.t}: canvas rel-L2 {r.canvas_rel_l2:.3g} > {tolerances['canvas_rel_l2']:g}")
        if not r.cls_rel_l2 <= tolerances["cls_rel_l2"]:
            failures.append(f"glimpse {r.t}: recurrent CLS rel-L2 {r.cls_rel_l2:.3g} > {tolerances['cls_rel_l2']:g}")
        if not r.canvas_cosine >= tolerances["canvas_cosine"]:
            failures.append(f"glimpse {r.t}: canvas cosine {r.canvas_cosine:.6f} < {tolerances['canvas_cosine']:g}")
    return {
        "artifact": str(manifest.directory),
        "runtime": runner.name,
        "emulated": runner.emulated,
        "precision": manifest.precision.name,
        "model": manifest.model.model_dump(mode="json", by_alias=True),
        "geometry": manifest.geometry.model_dump(),
        "glimpses": len(rows),
        "tolerances": tolerances,
        "passed": not failures,
        "failures": failures,
        "worst": worst,
        "median_ms": {"runtime": float(np.median([r.runtime_ms for r in rows[1:] or rows])),
                      "reference": float(np.median([r.reference_ms for r in rows[1:] or rows]))},
        "per_glimpse": [asdict(r) for r in rows],
    }


def print_report(report: dict[str, Any]) -> None:
    """A compact per-glimpse table and the verdict."""
    from rich.table import Table

    emulated = f", {report['emulated']} emulated" if report.get("emulated") else ""
    table = Table(title=f"parity: {report['runtime']} ({report['precision']}{emulated}) vs canvit-pytorch fp32, "
                        f"{report['artifact']}", title_justify="left")
    for column in ("t", "viewpoint (row, col, s)", "canvas rel-L2", "max-abs", "cosine", "CLS rel-L2", "|canvas|"):
        table.add_column(column, justify="right")
    for r in report["per_glimpse"]:
        table.add_row(str(r["t"]), f"({r['row']:+.3f}, {r['col']:+.3f}, {r['scale']:.3f})",
                      f"{r['canvas_rel_l2']:.2e}", f"{r['canvas_max_abs']:.2e}", f"{r['canvas_cosine']:.7f}",
                      f"{r['cls_rel_l2']:.2e}", f"{r['reference_canvas_norm']:.4g}")
    console.print(table)
    w, ms = report["worst"], report["median_ms"]
    console.print(f"worst: canvas rel-L2 {w['canvas_rel_l2']:.2e}, max-abs {w['canvas_max_abs']:.2e}, cosine "
                  f"{w['canvas_cosine']:.7f}, CLS rel-L2 {w['cls_rel_l2']:.2e}; median step {ms['runtime']:.1f} ms "
                  f"({report['runtime']}) vs {ms['reference']:.1f} ms (PyTorch eager)")
    if report["passed"]:
        console.print(f"[green]PASS[/green] within {report['tolerances']} at all {report['glimpses']} glimpses")
    else:
        console.print(f"[red]FAIL[/red] {len(report['failures'])} violation(s); first: {report['failures'][0]}")


def parity_command(*, artifact: Path, runtime: str, loaded: LoadedModel | None, image: Path | np.ndarray | None, policy: str,
                   glimpses: int, seed: int, threads: int | None, report_path: Path | None) -> dict[str, Any]:
    """What `canvit-export parity` does; returns the report (also written to report_path, default
    <artifact>/parity-<runtime>.json)."""
    if glimpses < 1:
        raise ExportError(f"--glimpses {glimpses}: must be >= 1")
    try:
        runner = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
    except (ValueError, canvit_runtime.RuntimeUnavailable) as error:
        raise ExportError(str(error)) from error
    manifest = runner.manifest
    if loaded is None:
        with console.status("loading the reference weights named in the manifest"):
            loaded = load_from_record(manifest.model)
    try:
        scene = scene_batch(default_image() if image is None else image, scene_px=manifest.scene_px,
                            batch=manifest.batch)
        viewpoints = make_policy(policy, batch=manifest.batch, glimpses=glimpses, seed=seed)
    except ValueError as error:
        raise ExportError(str(error)) from error
    tolerances = tolerances_for(manifest.precision.name)
    report = run_parity(manifest, runner, loaded, scene, viewpoints, tolerances=tolerances)
    report["image"] = ("skimage.data.astronaut()" if image is None else
                       str(image) if isinstance(image, Path | str) else f"array {list(image.shape)}")
    report["policy"], report["seed"] = policy, seed
    path = report_path or Path(artifact) / f"parity-{runtime}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    report["report_path"] = str(path)
    return report
