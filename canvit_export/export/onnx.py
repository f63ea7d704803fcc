"""The ONNX target: the glimpse step as a static-shape ONNX graph (torch.onnx dynamo exporter) plus its manifest."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import onnx
import torch

from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    Geometry,
    base_manifest,
    finish_manifest,
    staged_artifact,
    step_tensors,
    write_initial_state,
)
from canvit_export.precision import audit_onnx
from canvit_export.progress import Stages
from canvit_export.source import LoadedModel
from canvit_export.step import INPUT_NAMES, GlimpseStep

GRAPH_FILE = "step.onnx"
DEFAULT_OPSET = 18
MIN_OPSET = 17
"""LayerNormalization, the single op every LayerNorm exports to, exists from opset 17."""


def export_graph(step: GlimpseStep, geometry: Geometry, path: Path, *, opset: int) -> None:
    """Trace `step` with the dynamo exporter and save a self-contained ONNX file (weights embedded) at `path`."""
    inputs = step.example_inputs(batch=geometry.batch, scene_px=geometry.scene_px)
    log = io.StringIO()  # the exporter's own step-by-step chatter; our stages report progress
    with torch.inference_mode(), contextlib.redirect_stdout(log):
        program = torch.onnx.export(step, tuple(inputs), input_names=list(INPUT_NAMES),
                                    output_names=list(step.output_names), opset_version=opset, dynamo=True,
                                    external_data=False, verbose=False)
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program: {log.getvalue()[-300:]}")
    program.save(str(path), external_data=False)


def export_onnx(loaded: LoadedModel, geometry: Geometry, out: Path, *, opset: int = DEFAULT_OPSET, force: bool = False,
                glimpse_output: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Write out/step.onnx, out/initial_state.bin and out/manifest.json atomically; return the manifest.

    Raises ExportError for bad sizes or opset, an existing `out` without force, or a graph failing its audit.
    """
    canvit = loaded.canvit
    geometry.check(canvit.patch_size)
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: must be >= {MIN_OPSET} (LayerNormalization)")
    stages = Stages(3, quiet=quiet)
    with staged_artifact(out, force=force) as staging:
        step = GlimpseStep(canvit, glimpse_px=geometry.glimpse_px, canvas_grid=geometry.canvas_grid,
                           glimpse_output=glimpse_output).eval()
        with stages.stage(f"exporting the glimpse step (opset {opset}, {canvit.config.backbone_name}, "
                          f"canvas {geometry.canvas_grid}x{geometry.canvas_grid}, batch {geometry.batch})"):
            export_graph(step, geometry, staging / GRAPH_FILE, opset=opset)
        with stages.stage("checking the graph (onnx.checker, precision audit)"):
            onnx.checker.check_model(str(staging / GRAPH_FILE))
            model = onnx.load(str(staging / GRAPH_FILE))
            audit = audit_onnx(model)
            if not audit.ok:
                raise ExportError(f"the exported graph fails its audit: {audit.violations[0]} "
                                  f"(+{len(audit.violations) - 1} more)")
        with stages.stage("writing the initial state and manifest"):
            inputs, outputs = step_tensors(canvit, geometry, glimpse_output=glimpse_output)
            manifest = base_manifest(
                canvit=canvit, source_record=loaded.record, geometry=geometry, inputs=inputs, outputs=outputs,
                initial_state=write_initial_state(canvit, staging),
                precision={"compute": "fp32", "state": "float32", "canvas_path": "float32",
                           "tensors": {t.name: t.dtype for t in (*inputs, *outputs)}},
                artifact={"target": "onnx", "opset": opset, "ir_version": model.ir_version,
                          "nodes": len(model.graph.node), "op_counts": audit.op_counts},
            )
            finish_manifest(staging, manifest, {"graph": GRAPH_FILE, "initial_state": INITIAL_STATE_FILE},
                            "onnx", "onnxscript", "onnxruntime")
    manifest["export_seconds"] = sum(stages.seconds.values())
    return manifest
