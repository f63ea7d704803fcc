"""The ONNX target: the glimpse step as a static-shape ONNX graph (torch.onnx dynamo exporter) plus its manifest."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import onnx
import torch

from canvit_export.calibration import refuse_unused_calibration
from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    Geometry,
    architecture_record,
    check_geometry,
    finish_manifest,
    preprocessing_record,
    staged_artifact,
    state_pairs,
    step_tensors,
    write_initial_state,
)
from canvit_export.precision import Precision, audit_onnx, step_precision
from canvit_export.progress import Stages
from canvit_export.readouts import Heads, readout_tensors
from canvit_export.source import LoadedModel
from canvit_export.step import INPUT_NAMES, GlimpseStep
from canvit_runtime.manifest import Manifest, OnnxArtifact, PrecisionRecord
from canvit_runtime.paths import check_out
from canvit_runtime.precision import PRECISIONS

GRAPH_FILE = "step.onnx"
DEFAULT_OPSET = 18
MIN_OPSET = 17
"""LayerNormalization, the single op every LayerNorm exports to, exists from opset 17."""


def export_graph(step: GlimpseStep, geometry: Geometry, path: Path, *, opset: int) -> None:
    """Trace `step` with the dynamo exporter and save a self-contained ONNX file (weights embedded) at `path`."""
    inputs = step.example_inputs(batch=geometry.batch, scene_px=geometry.scene_px)
    save_onnx(step, tuple(inputs), list(INPUT_NAMES), list(step.output_names), path, opset=opset)


def save_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
              output_names: list[str], path: Path, *, opset: int) -> None:
    """torch.onnx.export (dynamo) of `module` on `inputs`, saved self-contained (weights embedded) at `path`, with
    the exporter's step-by-step chatter kept off the console (our stages report progress)."""
    log = io.StringIO()
    with torch.inference_mode(), contextlib.redirect_stdout(log):
        program = torch.onnx.export(module, inputs, input_names=input_names, output_names=output_names,
                                    opset_version=opset, dynamo=True, external_data=False, verbose=False)
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program: {log.getvalue()[-300:]}")
    program.save(str(path), external_data=False)


def precision_record(precision: Precision, audit_violations: list[str]) -> PrecisionRecord:
    """The manifest's precision record of a step exported at `precision` (weights stored in its matmul dtype)."""
    info = PRECISIONS[precision.name]
    return PrecisionRecord(name=precision.name, matmul_dtype=info.matmul_dtype, stream_dtype=info.stream_dtype,
                           weights=info.matmul_dtype, follows_float32_rule=precision.follows_rule,
                           audit_violations=len(audit_violations))


def export_onnx(loaded: LoadedModel, geometry: Geometry, out: Path, *, opset: int = DEFAULT_OPSET, force: bool = False,
                glimpse_output: bool = False, precision: str = "fp32", heads: Heads | None = None,
                calibration: Path | None = None, quiet: bool = False) -> Manifest:
    """Write out/step.onnx, out/initial_state.bin and out/manifest.json atomically; return the manifest.

    precision: fp32, fp16 or bf16 (matmuls/conv/attention narrow, canvas path float32), or fp16-all (the control
    variant with a float16 canvas, exported with its audit findings recorded instead of enforced). heads: the
    readouts (canvit_export.readouts.load_heads) the graph also outputs, computed on the new state in float32.
    Raises ExportError for bad sizes, opset or precision, an existing `out` without force, or a graph failing
    its audit. int8: the fp32 step is exported into a temporary folder, then quantized to a static INT8 Q/DQ graph
    (canvit_export.export.int8.export_onnx_int8) calibrated on rollouts: `calibration` is a recorded calibration
    set, a folder of images, or None for scikit-image's photos.
    """
    if precision == "int8":
        from canvit_export.export.int8 import export_onnx_int8

        check_out(out, force=force, inputs=[i for i in (calibration,) if i is not None])  # before the fp32 export
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".fp32", dir=out.parent) as work:
            export_onnx(loaded, geometry, Path(work) / "fp32", opset=opset, glimpse_output=glimpse_output,
                        precision="fp32", heads=heads, quiet=quiet)
            return export_onnx_int8(Path(work) / "fp32", out, calibration=calibration, force=force, quiet=quiet)
    refuse_unused_calibration(calibration, static_int8=False)  # int8 returned above
    try:
        step_dtypes = step_precision(precision)
    except ValueError as error:
        raise ExportError(str(error)) from error
    canvit = loaded.canvit
    check_geometry(geometry, canvit.patch_size)
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: must be >= {MIN_OPSET} (LayerNormalization)")
    stages = Stages(3, quiet=quiet)
    with staged_artifact(out, force=force) as staging:
        step = GlimpseStep(canvit, glimpse_px=geometry.glimpse_px, canvas_grid=geometry.canvas_grid,
                           glimpse_output=glimpse_output, precision=step_dtypes, heads=heads).eval()
        readout_specs, readout_records = readout_tensors(heads or Heads(), batch=geometry.batch,
                                                         canvas_grid=geometry.canvas_grid)
        readout_text = f", readouts {'+'.join(heads.names)}" if heads is not None and heads.names else ""
        with stages.stage(f"exporting the glimpse step ({precision}, opset {opset}, {canvit.config.backbone_name}, "
                          f"canvas {geometry.canvas_grid}x{geometry.canvas_grid}, batch {geometry.batch}"
                          f"{readout_text})"):
            export_graph(step, geometry, staging / GRAPH_FILE, opset=opset)
        with stages.stage("checking the graph (onnx.checker, precision audit)"):
            onnx.checker.check_model(str(staging / GRAPH_FILE))
            model = onnx.load(str(staging / GRAPH_FILE))
            audit = audit_onnx(model)
            if step_dtypes.follows_rule and not audit.ok:
                raise ExportError(f"the exported graph fails its audit: {audit.violations[0]} "
                                  f"(+{len(audit.violations) - 1} more)")
        with stages.stage("writing the initial state and manifest"):
            inputs, outputs = step_tensors(canvit, geometry, glimpse_output=glimpse_output, readouts=readout_specs)
            manifest = finish_manifest(
                staging, {"graph": GRAPH_FILE, "initial_state": INITIAL_STATE_FILE},
                ("onnx", "onnxscript", "onnxruntime"),
                artifact=OnnxArtifact(target="onnx", opset=opset, ir_version=model.ir_version,
                                      nodes=len(model.graph.node), op_counts=audit.op_counts),
                model=loaded.record, architecture=architecture_record(canvit), geometry=geometry,
                inputs=inputs, outputs=outputs, state=state_pairs(inputs),
                initial_state=write_initial_state(canvit, staging), preprocessing=preprocessing_record(geometry),
                precision=precision_record(step_dtypes, audit.violations), readouts=readout_records)
    return manifest.at(out)
