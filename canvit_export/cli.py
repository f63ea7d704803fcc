"""canvit-export: the command line. Each target is one command; every error is one line and a non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from canvit_export.errors import ExportError
from canvit_runtime.cli import OneLineGroup, one_line_errors, precision_options
from canvit_runtime.cli import info as runtime_info
from canvit_runtime.manifest import (
    CoreMLArtifact,
    ExecuTorchArtifact,
    Manifest,
    OnnxArtifact,
    OpenVinoArtifact,
    TensorRtArtifact,
)
from canvit_runtime.paths import check_out, check_output_file, write_output

EXIT_PARITY_FAILED = 1


FORCE_HELP = "Replace --out if it exists and canvit-export wrote it (never a folder this tool did not write)."

RELEASED_MODEL = "canvit/canvitb16-add-vpe-pretrain-g128px-s512px-in21k-dv3b16-2026-02-02"
"""--model's default (canvit_export.source.DEFAULT_MODEL, not imported here: the CLI starts without torch)."""
WEIGHTS_EPILOG = f"\b\n--model's default, the released CanViT-B:\n{RELEASED_MODEL}"
"""The help's last lines on the commands with weight options: click's wrapper would break the id at its hyphens."""


def weight_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--model / --revision / --random-weights / --backbone / --seed (source.load)."""
    for option in reversed([
        click.option("--model", "model", default=None, metavar="ID|DIR",
                     help="Hugging Face Hub id or local canvit-pytorch checkpoint folder [default: the released "
                          "CanViT-B, named at the end]."),
        click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model."),
        click.option("--random-weights", is_flag=True, help="Seeded random weights of the exact architecture (offline)."),
        click.option("--backbone", type=click.Choice(["vitb16", "vits16"]), default="vitb16", show_default=True,
                     help="Backbone for --random-weights."),
        click.option("--seed", "weight_seed", type=int, default=0, show_default=True, help="Seed for --random-weights."),
    ]):
        command = option(command)
    return command


def geometry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--canvas / --glimpse / --scene / --batch, passed on as one Geometry named `geometry`."""

    @functools.wraps(command)
    def wrapper(*args: Any, canvas_grid: int, glimpse_px: int, scene_px: int, batch: int, **kwargs: Any) -> Any:
        from canvit_export.export.artifact import Geometry

        geometry = Geometry(batch=batch, scene_px=scene_px, glimpse_px=glimpse_px, canvas_grid=canvas_grid)
        return command(*args, geometry=geometry, **kwargs)

    from canvit_runtime.manifest import LIMITS

    for option in reversed([
        click.option("--canvas", "canvas_grid", type=click.IntRange(1, LIMITS["canvas_grid"]), default=32,
                     show_default=True, help="Canvas grid G (G x G tokens)."),
        click.option("--glimpse", "glimpse_px", type=click.IntRange(1, LIMITS["glimpse_px"]), default=128,
                     show_default=True, help="Glimpse size in px."),
        click.option("--scene", "scene_px", type=click.IntRange(1, LIMITS["scene_px"]), default=512,
                     show_default=True, help="Scene size in px (square)."),
        click.option("--batch", type=click.IntRange(1, LIMITS["batch"]), default=1, show_default=True,
                     help="Static batch size."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def readout_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--readout / --probe: the readout heads the step graph also computes on the new state."""
    for option in reversed([
        click.option("--readout", "readout", default=None, metavar="NAMES",
                     help="Comma-separated readouts computed on the new state: segmentation (seg_logits, "
                          "seg_entropy), classification (class_logits), features (teacher_patches)."),
        click.option("--probe", default=None, metavar="ID|DIR",
                     help="Segmentation probe: Hub id or SegmentationProbe save_pretrained folder (a seeded "
                          "random probe when the weights are random)."),
    ]):
        command = option(command)
    return command


def load_readouts(loaded: Any, readout: str | None, probe: str | None, seed: int) -> Any:
    """The heads of --readout (canvit_export.readouts.load_heads), or None."""
    from canvit_export.readouts import load_heads, parse_readouts

    names = parse_readouts(readout)
    if not names and probe is None:
        return None
    return load_heads(loaded, names, probe=probe, seed=seed)


def calibration_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--calibration DIR: for --precision int8, a recorded calibration set or a folder of images."""
    return click.option(
        "--calibration", type=click.Path(path_type=Path), default=None, metavar="DIR",
        help="With --precision int8: a calibration set recorded by `canvit-export calibrate`, or a folder of images "
             "to record one from [default: scikit-image's four photos].")(command)


def refuse_existing(out: Path | None, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """Fail before loading anything when --out breaks the replacement rule (canvit_runtime.paths.check_out): exists
    without --force, is not this tool's with it, is a symlink, a protected folder, or overlaps one of `inputs`."""
    if out is not None:
        check_out(out, force=force, inputs=[i for i in inputs if i is not None])


def load_weights(model: str | None, revision: str | None, random_weights: bool, backbone: str, weight_seed: int):
    from canvit_export import source
    from canvit_export.progress import console

    with console.status("loading weights"):
        return source.load(model, random_weights=random_weights, backbone=backbone, seed=weight_seed,
                           revision=revision)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="canvit-export")
def main() -> None:
    """Export CanViT's glimpse step (scene, state, viewpoint) -> state' and prove it matches canvit-pytorch."""


@main.command(epilog=WEIGHTS_EPILOG)
@weight_options
@geometry_options
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (>= 17).")
@precision_options("onnx", default="fp32",
                   help="Matmul/conv/attention precision; the canvas, RoPE, coordinates and VPE stay float32 "
                        "(fp16-all: canvas in fp16 too, a control experiment; int8: static Q/DQ, calibrated on "
                        "rollouts).")
@click.option("--glimpse-output", is_flag=True, help="Also output the sampled glimpse [B, 3, g, g].")
@readout_options
@calibration_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Artifact folder [default: models/canvit-<backbone>-c<G>-g<g>-s<S>-b<B>-<precision>].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def onnx(model, revision, random_weights, backbone, weight_seed, geometry, opset, precision, glimpse_output, readout,
         probe, calibration, out, force) -> None:
    """Export the glimpse step as DIR/step.onnx + DIR/manifest.json (+ initial_state.bin)."""
    from canvit_export.export.artifact import default_out_dir
    from canvit_export.export.onnx import export_onnx
    from canvit_export.progress import console

    refuse_existing(out, force, (calibration,))
    loaded = load_weights(model, revision, random_weights, backbone, weight_seed)
    heads = load_readouts(loaded, readout, probe, weight_seed)
    out = out or default_out_dir(loaded.canvit.config.backbone_name, geometry, precision, "onnx")
    start = time.perf_counter()
    manifest = export_onnx(loaded, geometry, out, opset=opset, force=force, glimpse_output=glimpse_output,
                           precision=precision, heads=heads, calibration=calibration)
    assert isinstance(manifest.artifact, OnnxArtifact)
    console.print(f"wrote {out}: step.onnx {manifest.files['graph'].bytes / 1e6:.1f} MB, {manifest.artifact.nodes} "
                  f"nodes, opset {opset}, {precision}, {time.perf_counter() - start:.1f} s" +
                  "".join(f"; readout {r.name} -> {', '.join(r.outputs)}" for r in manifest.readouts))
    if violations := manifest.precision.audit_violations:
        console.print(f"[yellow]note[/yellow]: {precision} breaks the float32 rule by design ({violations} audit findings)")


@main.command()
@click.option("--artifact", type=click.Path(path_type=Path), required=True, help="ONNX artifact folder to convert.")
@precision_options("openvino", default=None,
                   help="The artifact's own precision (the default), or it with -int8w: matmul weights compressed to "
                        "INT8 with NNCF, or int8 (from an fp32 artifact): NNCF static INT8 calibrated on rollouts. "
                        "The canvas path, RoPE, coordinates and VPE stay f32.")
@click.option("--stateful/--no-stateful", default=True, show_default=True,
              help="Canvas and recurrent CLS as OpenVINO state variables, or as graph I/O.")
@calibration_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="IR artifact folder [default: <artifact>-openvino-<precision>].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def openvino(artifact, precision, stateful, calibration, out, force) -> None:
    """Convert an ONNX artifact to OpenVINO IR (step.xml/bin + manifest) at its own precision, stateful by default."""
    from canvit_export.export.openvino import export_openvino
    from canvit_export.progress import console

    refuse_existing(out, force, (artifact, calibration))
    manifest = export_openvino(artifact, out, precision=precision, stateful=stateful, calibration=calibration,
                               force=force)
    facts = manifest.artifact
    assert isinstance(facts, OpenVinoArtifact)
    console.print(f"wrote {manifest.directory}: OpenVINO IR ({manifest.precision.name}, "
                  f"{'stateful' if stateful else 'stateless'}, {manifest.size_bytes / 1e6:.1f} MB); compiled-model "
                  f"audit: {facts.compiled_audit.checked} protected nodes run in f32")


@main.command(epilog=WEIGHTS_EPILOG)
@weight_options
@geometry_options
@precision_options("coreml", default="fp16",
                   help="Matmul/conv/attention precision; the canvas path, RoPE, coordinates and VPE stay float32.")
@click.option("--stateful", is_flag=True, help="Canvas as a Core ML state (iOS18/macOS15+; stored as float16).")
@click.option("--min-target", type=click.Choice(["iOS17", "iOS18", "macOS14", "macOS15"]), default=None,
              help="Minimum deployment target [default: iOS17, iOS18 with --stateful].")
@readout_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Artifact folder [default: models/canvit-<backbone>-c<G>-g<g>-s<S>-b<B>-<precision>-coreml].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def coreml(model, revision, random_weights, backbone, weight_seed, geometry, precision, stateful, min_target, readout,
           probe, out, force) -> None:
    """Export the glimpse step as a Core ML ML program (DIR/step.mlpackage + manifest), converted from PyTorch."""
    from canvit_export.export.artifact import default_out_dir
    from canvit_export.export.coreml import export_coreml
    from canvit_export.progress import console

    refuse_existing(out, force)
    loaded = load_weights(model, revision, random_weights, backbone, weight_seed)
    out = out or default_out_dir(loaded.canvit.config.backbone_name, geometry, precision,
                                 "coreml-stateful" if stateful else "coreml")
    heads = load_readouts(loaded, readout, probe, weight_seed)
    manifest = export_coreml(loaded, geometry, out, precision=precision, stateful=stateful, min_target=min_target,
                             heads=heads, force=force)
    facts = manifest.artifact
    assert isinstance(facts, CoreMLArtifact)
    console.print(f"wrote {out}: step.mlpackage {manifest.files['package'].bytes / 1e6:.1f} MB, "
                  f"{sum(facts.op_counts.values())} MIL ops, canvas stream of {len(facts.mil_audit.canvas_stream) - 1} "
                  f"fp32 adds, {facts.mil_audit.coordinate_ops} fp32 coordinate ops")
    if stateful:
        console.print("[yellow]note[/yellow]: Core ML states are float16: the canvas is stored in fp16 between glimpses")


@main.command(epilog=WEIGHTS_EPILOG)
@weight_options
@geometry_options
@precision_options("executorch", default="fp32",
                   help="Matmul/conv/attention precision; the canvas path, RoPE, coordinates and VPE stay float32 "
                        "(int8: the glimpse backbone's matmuls static INT8 with XNNPACK's quantizer, calibrated on "
                        "--calibration).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="With --precision int8 (required): a calibration set recorded by `canvit-export calibrate` from the "
                   "fp32 ONNX artifact of the same geometry.")
@click.option("--stateful/--no-stateful", default=True, show_default=True,
              help="Canvas and recurrent CLS as float32 mutable buffers of the program (with a reset input), or as "
                   "inputs and outputs.")
@readout_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Artifact folder [default: models/canvit-<backbone>-c<G>-g<g>-s<S>-b<B>-<precision>-executorch].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def executorch(model, revision, random_weights, backbone, weight_seed, geometry, precision, calibration, stateful,
               readout, probe, out, force) -> None:
    """Export the glimpse step as an ExecuTorch program (DIR/step.pte + manifest), lowered with XNNPACK, for phones."""
    from canvit_export.export.artifact import default_out_dir
    from canvit_export.export.executorch import check_precision, export_executorch
    from canvit_export.progress import console

    refuse_existing(out, force, (calibration,))
    check_precision(precision, calibration)  # before loading weights
    loaded = load_weights(model, revision, random_weights, backbone, weight_seed)
    heads = load_readouts(loaded, readout, probe, weight_seed)
    out = out or default_out_dir(loaded.canvit.config.backbone_name, geometry, precision,
                                 "executorch" if stateful else "executorch-stateless")
    start = time.perf_counter()
    manifest = export_executorch(loaded, geometry, out, precision=precision, stateful=stateful, heads=heads,
                                 calibration=calibration, force=force)
    facts = manifest.artifact
    assert isinstance(facts, ExecuTorchArtifact)
    portable = ", ".join(f"{name} x{n}" for name, n in sorted(facts.portable_ops.items(), key=lambda kv: -kv[1]))
    console.print(f"wrote {out}: step.pte {manifest.files['program'].bytes / 1e6:.1f} MB, {precision}, "
                  f"{'stateful' if stateful else 'stateless'}, {time.perf_counter() - start:.1f} s; XNNPACK took "
                  f"{facts.delegated_ops} ops in {facts.delegates} delegates; on portable kernels: {portable or 'none'}")


@main.command(epilog=WEIGHTS_EPILOG)
@click.option("--artifact", type=click.Path(path_type=Path), required=True, help="Artifact folder (with manifest.json).")
@click.option("--runtime", default="onnxruntime", show_default=True,
              help="Runtime to check: onnxruntime, openvino, tensorrt, coreml (macOS), executorch.")
@weight_options
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Photograph to roll out on [default: skimage.data.astronaut()].")
@click.option("--policy", default="c2f", show_default=True,
              help="Viewpoints: full, c2f, f-iid, r-iid, eg-c2f (needs a segmentation readout), or a viewpoints "
                   "JSON file.")
@click.option("--glimpses", type=int, default=21, show_default=True, help="Glimpses of the rollout (>= 1).")
@click.option("--policy-seed", "seed", type=int, default=0, show_default=True, help="Seed of c2f / f-iid / r-iid.")
@click.option("--threads", type=int, default=None, help="Runtime threads [default: the runtime's].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="JSON report path [default: reports/parity-<artifact name>-<runtime>.json].")
@click.option("--pictures", type=click.Path(path_type=Path), default=None,
              help="Folder for viewpoints.png (+ segmentation.png, entropy.png with a segmentation readout).")
@one_line_errors
def parity(artifact, runtime, model, revision, random_weights, backbone, weight_seed, image, policy, glimpses, seed,
           threads, report_path, pictures) -> None:
    """Roll out an artifact on a runtime and canvit-pytorch (fp32, CPU) side by side; exit 1 past tolerance.

    The reference weights are those the manifest names; pass --model (a Hub id or checkpoint folder) or
    --random-weights to override them.
    """
    from canvit_export.parity import parity_command, print_report
    from canvit_export.progress import console

    loaded = None
    if model is not None or random_weights:
        loaded = load_weights(model, revision, random_weights, backbone, weight_seed)
    report = parity_command(artifact=artifact, runtime=runtime, loaded=loaded, image=image, policy=policy,
                            glimpses=glimpses, seed=seed, threads=threads, report_path=report_path, pictures=pictures)
    print_report(report)
    console.print(f"report: {report.report_path}")
    if not report.passed:
        sys.exit(EXIT_PARITY_FAILED)


FROM_WEIGHTS = ("model", "revision", "random_weights", "backbone", "weight_seed", "canvas_grid", "glimpse_px",
                "scene_px", "batch", "readout", "opset")
"""trt's options that describe an export from weights: an --artifact has its own (checked by their source)."""


@main.command(epilog=WEIGHTS_EPILOG)
@weight_options
@geometry_options
@click.option("--artifact", type=click.Path(path_type=Path), default=None,
              help="Build from this ONNX artifact instead of weights (re-exported when --precision differs).")
@precision_options("tensorrt", default=None,
                   help="The graph's precision: strongly typed engines keep its types (the canvas path float32) "
                        "[default: the artifact's, fp32 from weights].")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset of the export (>= 17).")
@readout_options
@calibration_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="ONNX artifact folder [default: the one onnx would write, under models/].")
@click.option("--engine-out", type=click.Path(path_type=Path), default=None,
              help="Engine artifact folder [default: <ONNX artifact>-trt].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--workspace", "workspace_gib", type=float, default=4.0, show_default=True, help="Builder workspace, GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="Timing cache file (read and updated).")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write a device bundle instead of building here: the ONNX artifact, the canvit-runtime wheel, the "
                   "build commands, a PyTorch reference and run-on-device.sh, which builds the engine on the device "
                   "and prints the parity verdict.")
@click.option("--policy", type=click.Choice(["c2f", "f-iid"]), default="c2f", show_default=True,
              help="With --bundle: the reference's fixed viewpoints.")
@click.option("--glimpses", type=click.IntRange(1, 1000), default=21, show_default=True,
              help="With --bundle: glimpses of the reference.")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="With --bundle: the reference's photograph [default: skimage astronaut].")
@click.option("--print-trtexec", is_flag=True, help="Export (if needed) and print the equivalent trtexec build only.")
@click.option("--adopt-engine", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --artifact: adopt FILE, an engine trtexec built from its step.onnx, instead of building "
                   "(canvit-runtime trt's option, see there).")
@click.option("--trtexec-log", type=click.Path(path_type=Path), default=None, metavar="LOG",
              help="With --adopt-engine: trtexec's build log, the GPU and TensorRT facts where TensorRT is missing.")
@one_line_errors
def trt(model, revision, random_weights, backbone, weight_seed, geometry, artifact, precision, opset, readout, probe,
        calibration, out, engine_out, force, workspace_gib, timing_cache, bundle, policy, glimpses, image,
        print_trtexec, adopt_engine, trtexec_log) -> None:
    """Export the glimpse step at a precision and build its strongly typed TensorRT engine (-> <artifact>-trt), on the
    GPU it will run on; or write a --bundle for a device to build and check its own; or --print-trtexec."""
    from canvit_export.export.artifact import default_out_dir
    from canvit_export.progress import console
    from canvit_export.trt import bundle_size, describe, heads_of, weights_of, write_bundle

    ctx = click.get_current_context()
    typed_one = _typed_options(ctx)
    if bundle is not None and print_trtexec:
        raise ExportError("--bundle and --print-trtexec exclude each other: the bundle holds the build commands")
    if artifact is not None and (option := typed_one(*(n for n in FROM_WEIGHTS if n not in ("model", "revision")))):
        raise ExportError(f"{option} describes an export from weights, and --artifact {artifact} has its own: drop one")
    if adopt_engine is not None or trtexec_log is not None:
        if artifact is None or bundle is not None or out is not None:
            raise ExportError("--adopt-engine takes the --artifact its engine was built from (and --engine-out), "
                              "without --bundle or --out")
        from canvit_runtime.cli import trt as runtime_trt

        return ctx.invoke(runtime_trt, artifact=artifact, precision=precision, workspace_gib=workspace_gib,
                          timing_cache=timing_cache, out=engine_out, force=force, print_trtexec=print_trtexec,
                          adopt_engine=adopt_engine, trtexec_log=trtexec_log)
    inputs = [i for i in (artifact, calibration, image) if i is not None]
    _refuse_for_mode(typed_one, bundle=bundle, print_trtexec=print_trtexec, inputs=inputs, force=force,
                     folders={"--out": out, "--engine-out": engine_out, "--bundle": bundle})
    source: Manifest | None = None
    if artifact is not None:
        from canvit_runtime.artifact import load_source_artifact

        source = load_source_artifact(artifact, target="TensorRT")
        if precision in (None, source.precision.name):
            if out is not None:
                raise ExportError(f"--out names the ONNX artifact to export, and {artifact} is {source.precision.name} "
                                  f"already: nothing is exported (--engine-out names the engine folder)")
            if bundle is None:
                if option := typed_one("probe", "calibration", "model", "revision"):
                    raise ExportError(f"{option} is for an export, and {artifact} is {source.precision.name} already: "
                                      f"nothing is exported")
                return _build_or_print(artifact, engine_out, workspace_gib, timing_cache, force, print_trtexec)
        loaded = weights_of(source, model, revision)
        heads = heads_of(source, loaded, probe)
        if precision not in (None, source.precision.name):
            console.print(f"{artifact} is {source.precision.name}: re-exporting it at {precision} (its weights, "
                          f"geometry and readouts)")
        geometry = source.geometry
        opset = getattr(source.artifact, "opset", opset)
    else:
        if random_weights and out is None and bundle is None:  # the default --out, known before loading anything
            check_out(default_out_dir(backbone, geometry, precision or "fp32", "onnx"), force=force, inputs=inputs)
        loaded = load_weights(model, revision, random_weights, backbone, weight_seed)
        heads = load_readouts(loaded, readout, probe, weight_seed)
    reuse = source is not None and precision in (None, source.precision.name)
    precision = precision or (source.precision.name if source is not None else "fp32")
    name = default_out_dir(loaded.canvit.config.backbone_name, geometry, precision, "onnx").name

    def export(parent: Path | None) -> Path:
        from canvit_export.export.onnx import export_onnx

        target = (parent / name) if parent is not None else (out or Path("models") / name)
        start = time.perf_counter()
        manifest = export_onnx(loaded, geometry, target, opset=opset, force=force, precision=precision, heads=heads,
                               calibration=calibration)
        assert isinstance(manifest.artifact, OnnxArtifact)
        where = target if parent is None else f"{target.name} into the bundle"
        console.print(f"exported {where}: step.onnx {manifest.files['graph'].bytes / 1e6:.1f} MB, "
                      f"{manifest.artifact.nodes} nodes, {precision}, {time.perf_counter() - start:.1f} s")
        return target

    if bundle is not None:
        write_bundle(bundle, manifest_source=source if reuse else None, loaded=loaded, heads=heads, export=export,
                     force=force, policy=policy, glimpses=glimpses, seed=0, image=image, inputs=tuple(inputs))
        console.print(f"wrote {bundle} ({bundle_size(bundle) / 1e6:.0f} MB): copy it to the device (rsync -a "
                      f"{describe(bundle)} device:) and run {describe(bundle.name)}/run-on-device.sh there "
                      f"(add --runtime onnxruntime where TensorRT is missing)", soft_wrap=True)
        return None
    return _build_or_print(export(None), engine_out, workspace_gib, timing_cache, force, print_trtexec)


def _typed_options(ctx: click.Context) -> Callable[..., str | None]:
    """typed_one(*parameter names): the first of them the user typed on the command line, as typed (e.g. --canvas),
    or None; the flags come from click's own parameters."""
    typed = [p.name for p in ctx.command.params if ctx.get_parameter_source(p.name or "") ==
             click.core.ParameterSource.COMMANDLINE]
    flag = {p.name: p.opts[0] for p in ctx.command.params}

    def typed_one(*names: str) -> str | None:
        return next((flag[name] for name in names if name in typed), None)

    return typed_one


def _refuse_for_mode(typed_one: Callable[..., str | None], *, bundle: Path | None, print_trtexec: bool,
                     inputs: list[Path], force: bool, folders: dict[str, Path | None]) -> None:
    """Raise ExportError, before any work, for options the chosen mode (bundle, build here, --print-trtexec) would
    ignore, for a build here without TensorRT and a GPU, and for an output folder check_out refuses."""
    from canvit_runtime.engine import tensorrt_missing

    if bundle is None and (option := typed_one("policy", "glimpses", "image")):
        raise ExportError(f"{option} describes the bundle's reference: pass it with --bundle DIR")
    if bundle is not None and (option := typed_one("workspace_gib", "timing_cache", "engine_out", "out")):
        raise ExportError(f"{option} is for a build here; with --bundle the device builds (BUILD.md holds its "
                          f"commands) and the ONNX artifact goes inside the bundle: drop {option}")
    if bundle is None and not print_trtexec and (missing := tensorrt_missing()):
        raise ExportError(f"{missing}: engines are built on the GPU that runs them; pass --bundle DIR to write what "
                          f"the device needs (it builds and checks the engine there), or --print-trtexec")
    for option, folder in folders.items():
        if folder is not None:
            check_out(folder, force=force, inputs=inputs, option=option)


def _build_or_print(source: Path, engine_out: Path | None, workspace_gib: float, timing_cache: Path | None,
                    force: bool, print_trtexec: bool) -> None:
    """The engine of the ONNX artifact `source` built here, or trtexec's command printed, each after the TensorRT audit
    of its graph (canvit_runtime.engine reads and verifies the artifact)."""
    from canvit_export.progress import console
    from canvit_export.trt import stage
    from canvit_runtime.engine import build_tensorrt, trtexec_for

    if print_trtexec:
        click.echo(trtexec_for(source, engine_out, workspace_gib=workspace_gib, timing_cache=timing_cache))
        return
    manifest = build_tensorrt(source, engine_out, workspace_gib=workspace_gib, timing_cache=timing_cache,
                              force=force, stage=stage)
    facts = manifest.artifact
    assert isinstance(facts, TensorRtArtifact)
    console.print(f"wrote {manifest.directory}: TensorRT {facts.tensorrt} engine for {facts.gpu} (compute capability "
                  f"{facts.compute_capability}), {manifest.files['engine'].bytes / 1e6:.1f} MB")


@main.command()
@click.option("--artifacts", "artifacts", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Artifact folders (repeat the option, or give several after one --artifacts).")
@click.argument("more_artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--runtimes", default="onnxruntime,openvino,tensorrt", show_default=True,
              help="Comma-separated runtimes; each runs the artifacts of its targets.")
@click.option("--threads", type=int, default=None, help="Threads for every runtime and PyTorch [default: each one's].")
@click.option("--iters", type=int, default=50, show_default=True, help="Timed glimpses per configuration.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed glimpses first.")
@click.option("--quick", is_flag=True, help="Smoke run: 2 timed glimpses after 1 warm-up.")
@click.option("--no-peer", is_flag=True, help="Skip the canvit-pytorch live-export baseline (it exports once per group).")
@click.option("--baselines", default="bf16-autocast", show_default=True,
              help="PyTorch baselines besides eager fp32, comma-separated: bf16-autocast (torch.autocast bfloat16), "
                   "compile (torch.compile, inductor: compiles in the warm-up, minutes for CanViT-B); '' for none.")
@click.option("--streams", type=int, default=1, show_default=True,
              help="With N > 1, also N concurrent C2F streams of each stateful OpenVINO IR under OpenVINO's throughput "
                   "hint (one infer request and state per stream), as glimpses/s.")
@click.option("--groups-in-turn", is_flag=True,
              help="Time one group (weights + geometry, e.g. one canvas size) at a time, its configurations "
                   "interleaved, and release it before the next: a canvas series of CanViT-B fits in memory.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Photograph [default: skimage astronaut].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench"), show_default=True,
              help="Folder for bench.json, bench.md and bench.png.")
@one_line_errors
def bench(artifacts, more_artifacts, runtimes, threads, iters, warmup, quick, no_peer, baselines, streams,
          groups_in_turn, image, out) -> None:
    """Latency, throughput, memory, size and error of every artifact x runtime vs PyTorch eager, in one run."""
    from canvit_export.bench.command import bench_command
    from canvit_export.progress import console

    if quick:
        iters, warmup = 2, 1
    report = bench_command(artifacts=[*artifacts, *more_artifacts], runtimes=[r for r in runtimes.split(",") if r],
                           threads=threads, iters=iters, warmup=warmup, out=out, peer=not no_peer, image=image,
                           baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()), streams=streams,
                           groups_in_turn=groups_in_turn)
    console.print((out / "bench.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} ({len(report.rows)} rows)")


# `info` is canvit-runtime's own command: the same summary (or --json) on a workstation and on a device.
@main.command()
@click.option("--artifact", type=click.Path(path_type=Path), required=True,
              help="The fp32 ONNX artifact whose rollouts are recorded.")
@click.option("--images", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder of photos [default: scikit-image's chelsea, astronaut, coffee, rocket].")
@click.option("--policies", default="c2f,f-iid,eg-c2f", show_default=True,
              help="Viewing policies to roll out (eg-c2f is skipped without a segmentation readout).")
@click.option("--glimpses", type=int, default=8, show_default=True, help="Glimpses recorded per image and policy.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of c2f / f-iid.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads [default: its own].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Calibration set folder to write.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def calibrate(artifact, images, policies, glimpses, seed, threads, out, force) -> None:
    """Record an INT8 calibration set: the step's inputs (scene, canvas, recurrent CLS, viewpoint) at every glimpse of
    rollouts of the fp32 graph on real photos, for `onnx|openvino --precision int8 --calibration DIR`."""
    from canvit_export.calibration import record_calibration
    from canvit_export.progress import console

    refuse_existing(out, force, (artifact, images))
    chosen = tuple(p.strip() for p in policies.split(",") if p.strip())
    calibration = record_calibration(artifact, out, images=images, policies=chosen, glimpses=glimpses, seed=seed,
                                     threads=threads, force=force)
    index = calibration.index
    console.print(f"wrote {out}: {calibration.count} samples ({len(index['images'])} images x "
                  f"{', '.join(index['policies'])} x {index['glimpses']} glimpses), {calibration.bytes / 1e6:.1f} MB")


@main.command()
@click.option("--artifact", type=click.Path(path_type=Path), required=True,
              help="Artifact folder: ONNX (either runtime) or OpenVINO IR (openvino).")
@click.option("--runtime", type=click.Choice(["openvino", "onnxruntime"]), default="openvino", show_default=True,
              help="Whose per-node times: OpenVINO's performance counters or ONNX Runtime's profiler.")
@click.option("--glimpses", type=int, default=21, show_default=True, help="Profiled glimpses of a C2F rollout.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed glimpses first.")
@click.option("--threads", type=int, default=None, help="Runtime threads [default: its own choice].")
@click.option("--top", type=int, default=15, show_default=True, help="Node types listed, slowest first.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the whole profile (every node type) to this JSON file.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Photograph [default: skimage astronaut].")
@one_line_errors
def profile(artifact, runtime, glimpses, warmup, threads, top, json_out, image) -> None:
    """Where a glimpse's time goes: time per node type, the shares of matmuls, of data movement (slices, concats,
    gathers, transposes, casts, reorders, Q/DQ) and of the rest, and the canvas side against the glimpse side."""
    import json

    from rich.table import Table

    from canvit_export.profile import profile_step
    from canvit_export.progress import console

    if top < 1:
        raise ExportError(f"--top {top}: list at least one node type")
    if json_out is not None and (os.path.lexists(json_out) or not json_out.parent.is_dir()):
        raise ExportError(f"--json {json_out}: " + ("it exists; choose another file" if os.path.lexists(json_out) else
                                                    "its folder does not exist; create it or choose another file"))
    if json_out is not None:
        check_output_file(json_out, inputs=[artifact], option="--json")
    with console.status(f"profiling {glimpses} glimpses of {artifact} on {runtime}"):
        report = profile_step(artifact, runtime, glimpses=glimpses, warmup=warmup, threads=threads, image=image)
    table = Table(title=f"{artifact} on {runtime} ({report['precision']}): {report['ms_per_glimpse']:.1f} ms of nodes "
                        f"per glimpse, mean of {glimpses}")
    for column in ("node type", "kind", "ms/glimpse", "share", "nodes", "kernels"):
        table.add_column(column, justify="right" if column in ("ms/glimpse", "share", "nodes") else "left")
    for row in report["types"][:top]:
        table.add_row(row["name"], row["kind"], f"{row['ms']:.2f}", f"{row['ms'] / report['ms_per_glimpse']:.1%}",
                      str(row["nodes"]), ", ".join(row["kernels"])[:60])
    console.print(table)
    console.print("shares: " + ", ".join(f"{kind} {share:.1%}" for kind, share in report["shares"].items()))
    console.print("sides: " + ", ".join(f"{side} {split['ms']:.2f} ms ({split['share']:.1%})"
                                        for side, split in report["sides"].items())
                  + " (canvas: nodes whose output is canvas-sized; glimpse: the rest)")
    if json_out is not None:
        write_output(json_out, json.dumps(report, indent=1) + "\n", inputs=[artifact], option="--json")
        console.print(f"wrote {json_out}")


main.add_command(runtime_info, name="info")


@main.command()
@click.option("--artifact", "artifacts", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Artifact folder: ONNX (onnxruntime + python models), stateless OpenVINO IR (openvino + python), "
                   "TensorRT engine (tensorrt). Repeat for several.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model repository folder to write.")
@click.option("--backends", default=None, metavar="NAMES",
              help="Comma-separated subset of onnxruntime, tensorrt, openvino, python [default: every backend each "
                   "artifact can use].")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance kind of the C++ backends' models (ONNX Runtime: CUDA or CPU); the Python model runs on "
                   "the CPU.")
@click.option("--strategy", default="oldest", show_default=True, help="Sequence batcher strategy: oldest or direct.")
@click.option("--max-sequences", type=int, default=8, show_default=True,
              help="Oldest strategy: sequences served at once (more wait in Triton's backlog).")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (the Python model "
              "switches to the direct strategy with more than one).")
@click.option("--idle-ms", type=int, default=5000, show_default=True,
              help="A sequence idle this long is dropped with its state (max_sequence_idle_microseconds).")
@click.option("--python-runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
              show_default=True, help="Runtime of the Python model for ONNX artifacts (IR artifacts: openvino).")
@click.option("--threads", type=int, default=None, help="Threads of the Python model's runtime [default: its own].")
@click.option("--scene-state", is_flag=True,
              help="ONNX Runtime model: keep the scene as an implicit state too, so only a frame's first glimpse "
                   "sends it (checked with ONNX Runtime, not yet on a Triton ONNX Runtime backend).")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@one_line_errors
def triton(artifacts, out, backends, device, strategy, max_sequences, instances, idle_ms, python_runtime, threads,
           scene_state, force) -> None:
    """Write a Triton model repository serving many glimpse sequences, the state kept in the server."""
    from canvit_export.progress import console
    from canvit_export.triton import ServeOptions, write_repository

    refuse_existing(out, force, tuple(artifacts))
    options = ServeOptions(device=device, strategy=strategy, max_sequences=max_sequences, instances=instances,
                           idle_us=idle_ms * 1000, runtime=python_runtime, threads=threads, scene_state=scene_state)
    chosen = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    models = write_repository(list(artifacts), out, options=options, backends=chosen, force=force,
                              progress=lambda label: console.print(f"writing {label}"))
    console.print(f"wrote {out}: " + ", ".join(f"{m.name}" + (f" (states renamed: {m.state_names})" if m.state_names
                                                               else "") for m in models))


if __name__ == "__main__":
    main()
