"""What every export target shares: the atomic artifact folder, the manifest, checksums and tool versions.

An artifact is a folder: the compiled step, initial_state.bin and manifest.json (README, "The manifest"). It is
written into a hidden temporary sibling folder and renamed into place only when complete, so a failed export
leaves nothing behind; an existing folder is replaced only with force.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from canvit_pytorch import CanViT
from pydantic import ValidationError

from canvit_export.errors import ExportError
from canvit_runtime.manifest import (
    ROLE_CENTERS,
    ROLE_EXTRA,
    ROLE_SCALES,
    ROLE_SCENE,
    ROLE_STATE,
    Architecture,
    InitialState,
    InitialStatePart,
    Manifest,
    ManifestError,
    Preprocessing,
    SourceArtifact,
    StatePair,
    TensorSpec,
    file_record,
    load_manifest,
)
from canvit_runtime.manifest import Geometry as GeometryRecord

INITIAL_STATE_FILE = "initial_state.bin"


@dataclass(frozen=True)
class Geometry:
    """Static sizes of an exported step: batch B, scene S px, glimpse g px, canvas grid G (G x G tokens)."""

    batch: int
    scene_px: int
    glimpse_px: int
    canvas_grid: int

    def check(self, patch_px: int) -> None:
        """Raise ExportError for sizes the step cannot take."""
        if self.batch < 1:
            raise ExportError(f"--batch {self.batch}: must be >= 1")
        if self.canvas_grid < 1:
            raise ExportError(f"--canvas {self.canvas_grid}: must be >= 1 (canvas of G x G tokens)")
        if self.glimpse_px < patch_px or self.glimpse_px % patch_px:
            raise ExportError(f"--glimpse {self.glimpse_px}: must be a positive multiple of the {patch_px} px patch")
        if self.scene_px < self.glimpse_px:
            raise ExportError(f"--scene {self.scene_px}: must be at least the glimpse ({self.glimpse_px} px)")

    def record(self) -> GeometryRecord:
        return GeometryRecord(batch=self.batch, scene_px=self.scene_px, glimpse_px=self.glimpse_px,
                              canvas_grid=self.canvas_grid)

    @staticmethod
    def of(manifest: Manifest) -> Geometry:
        return Geometry(**manifest.geometry.model_dump())


def default_out_dir(backbone: str, geometry: Geometry, precision: str, target: str) -> Path:
    """models/canvit-<backbone>-c<G>-g<g>-s<S>-b<B>-<precision>[-<target>]."""
    name = f"canvit-{backbone}-c{geometry.canvas_grid}-g{geometry.glimpse_px}-s{geometry.scene_px}-b{geometry.batch}"
    return Path("models") / f"{name}-{precision}{'' if target == 'onnx' else '-' + target}"


@contextlib.contextmanager
def staged_artifact(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success rename it to `out`, on any error delete it.

    Raises ExportError before any work when `out` exists and force is false.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists: pass --force to overwrite it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield staging
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(trash / out.name)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_initial_state(canvit: CanViT, directory: Path) -> InitialState:
    """Write the learned initial state (CanViT.init_canvas_registers, init_canvas_patch, init_recurrent_cls) as
    little-endian float32 to directory/initial_state.bin; return the manifest's record of its parts."""
    parts = {
        "canvas_registers": canvit.init_canvas_registers.detach()[0],  # [R, Dc]
        "canvas_patch": canvit.init_canvas_patch.detach()[0, 0],  # [Dc]
        "recurrent_cls": canvit.init_recurrent_cls.detach()[0, 0],  # [Db]
    }
    records, offset, chunks = [], 0, []
    for name, tensor in parts.items():
        array = tensor.float().cpu().numpy().astype("<f4")
        records.append(InitialStatePart(name=name, shape=list(array.shape), offset_bytes=offset))
        offset += array.nbytes
        chunks.append(array.ravel())
    np.concatenate(chunks).tofile(directory / INITIAL_STATE_FILE)
    return InitialState(parts=records)


def architecture_record(canvit: CanViT) -> Architecture:
    """Architecture facts a runtime or a reader needs (canvit-pytorch CanViTConfig and ViTSpec)."""
    spec, config = canvit.backbone.spec, canvit.config
    return Architecture(
        backbone=config.backbone_name, backbone_dim=spec.embed_dim, num_heads=spec.num_heads,
        num_blocks=spec.num_blocks, patch_px=spec.patch_size, rope_base=float(spec.rope_base),
        canvas_dim=config.canvas_dim, canvas_num_heads=config.canvas_num_heads,
        canvas_head_dim=config.canvas_head_dim, num_canvas_registers=config.num_canvas_registers,
        num_backbone_registers=config.num_backbone_registers, enable_vpe=config.enable_vpe,
        canvas_projections=str(config.canvas_projections),
        read_after_blocks=list(canvit.read_after_blocks), write_after_blocks=list(canvit.write_after_blocks),
        parameters=sum(p.numel() for p in canvit.parameters()))


def step_tensors(canvit: CanViT, geometry: Geometry, *, glimpse_output: bool,
                 readouts: list[TensorSpec] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The step's inputs and outputs with static shapes, dtypes (all float32) and roles (DESIGN.md, Contracts), in
    GlimpseStep's output order; `readouts` (readouts.readout_tensors) come last."""
    B, S, g = geometry.batch, geometry.scene_px, geometry.glimpse_px
    canvas = [B, canvit.config.num_canvas_registers + geometry.canvas_grid**2, canvit.config.canvas_dim]
    cls = [B, 1, canvit.backbone.spec.embed_dim]
    inputs = [TensorSpec(name="scene", shape=[B, 3, S, S], dtype="float32", role=ROLE_SCENE),
              TensorSpec(name="canvas", shape=canvas, dtype="float32", role=ROLE_STATE),
              TensorSpec(name="recurrent_cls", shape=cls, dtype="float32", role=ROLE_STATE),
              TensorSpec(name="centers", shape=[B, 2], dtype="float32", role=ROLE_CENTERS),
              TensorSpec(name="scales", shape=[B], dtype="float32", role=ROLE_SCALES)]
    outputs = [TensorSpec(name="canvas_next", shape=canvas, dtype="float32", role=ROLE_STATE),
               TensorSpec(name="recurrent_cls_next", shape=cls, dtype="float32", role=ROLE_STATE)]
    if glimpse_output:
        outputs.append(TensorSpec(name="glimpse", shape=[B, 3, g, g], dtype="float32", role=ROLE_EXTRA))
    return inputs, outputs + list(readouts or [])


def state_pairs(inputs: list[TensorSpec]) -> list[StatePair]:
    """canvas -> canvas_next and recurrent_cls -> recurrent_cls_next, with the state inputs' shapes."""
    shapes = {t.name: t.shape for t in inputs}
    return [StatePair(input="canvas", output="canvas_next", shape=shapes["canvas"]),
            StatePair(input="recurrent_cls", output="recurrent_cls_next", shape=shapes["recurrent_cls"])]


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in ("canvit-export", "canvit-runtime", "canvit-pytorch", "torch", *packages):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def command_line() -> str | None:
    """The canvit-export command line being run, for the manifest's `command` (None outside the CLI)."""
    return shlex.join(["canvit-export", *sys.argv[1:]]) if Path(sys.argv[0]).name == "canvit-export" else None


def finish_manifest(directory: Path, files: dict[str, str], packages: tuple[str, ...], **fields: Any) -> Manifest:
    """Validate the manifest of the artifact being written in `directory` (the typed fields, plus each file's size
    and SHA-256 from files: key -> name, tool versions, the time and the command line) and write manifest.json.

    Raises ExportError when the fields do not make a valid manifest (a bug of the exporter: nothing is written).
    """
    try:
        manifest = Manifest(created=datetime.now(UTC).isoformat(timespec="seconds"), command=command_line(),
                            files={key: file_record(directory, name) for key, name in files.items()},
                            tools=tool_versions(*packages), **fields)
    except ValidationError as error:
        raise ExportError(f"the exporter built an invalid manifest ({error.errors()[0]['loc']}: "
                          f"{error.errors()[0]['msg']}); please report this") from error
    manifest.write(directory)
    return manifest


def preprocessing_record(geometry: Geometry) -> Preprocessing:
    return Preprocessing(scene_px=geometry.scene_px)


def derived_fields(source: Manifest) -> dict[str, Any]:
    """The fields an artifact compiled from the ONNX artifact `source` (TensorRT engine, OpenVINO IR) keeps: model,
    architecture, geometry, tensors, state, initial state, preprocessing, viewpoint rule, precision and readouts."""
    keep = ("model", "architecture", "geometry", "inputs", "outputs", "state", "initial_state", "preprocessing",
            "viewpoint", "precision", "readouts")
    return {key: getattr(source, key) for key in keep}


def source_record(source: Manifest) -> SourceArtifact:
    """Where a derived artifact came from: the ONNX artifact's folder, graph SHA-256 and precision."""
    return SourceArtifact(path=str(source.directory.resolve()), graph_sha256=source.files["graph"].sha256,
                          precision=source.precision.name)


def copy_initial_state(source: Manifest, directory: Path) -> None:
    """Copy the source artifact's initial_state.bin into directory."""
    shutil.copyfile(source.file("initial_state"), directory / INITIAL_STATE_FILE)


def load_source_artifact(path: Path, *, target: str) -> Manifest:
    """The ONNX artifact another target compiles from; ExportError if it is missing, altered or not ONNX."""
    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise ExportError(str(error)) from error
    if manifest.target != "onnx":
        raise ExportError(f"{path} is a {manifest.target} artifact; {target} builds from an ONNX artifact "
                          f"(canvit-export onnx --out DIR)")
    return manifest
