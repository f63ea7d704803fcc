"""What every export target shares: the atomic artifact folder, the manifest, checksums and tool versions.

An artifact is a folder: the compiled step, initial_state.bin and manifest.json (README, "The manifest"). It is
written into a hidden temporary sibling folder and renamed into place only when complete, so a failed export
leaves nothing behind; an existing folder is replaced only with force.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from canvit_core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from canvit_pytorch import CanViT
from canvit_runtime.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ROLE_CENTERS,
    ROLE_EXTRA,
    ROLE_SCALES,
    ROLE_SCENE,
    ROLE_STATE,
    TensorSpec,
    sha256_file,
    size_bytes,
)
from canvit_runtime.policies import MIN_SCALE

from canvit_export.errors import ExportError

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

    def to_json(self) -> dict[str, int]:
        return {"batch": self.batch, "scene_px": self.scene_px, "glimpse_px": self.glimpse_px,
                "canvas_grid": self.canvas_grid}


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


def write_initial_state(canvit: CanViT, directory: Path) -> dict[str, Any]:
    """Write the learned initial state (CanViT.init_canvas_registers, init_canvas_patch, init_recurrent_cls) as
    little-endian float32 to directory/initial_state.bin; return the manifest's "initial_state" record."""
    parts = {
        "canvas_registers": canvit.init_canvas_registers.detach()[0],  # [R, Dc]
        "canvas_patch": canvit.init_canvas_patch.detach()[0, 0],  # [Dc]
        "recurrent_cls": canvit.init_recurrent_cls.detach()[0, 0],  # [Db]
    }
    records, offset, chunks = [], 0, []
    for name, tensor in parts.items():
        array = tensor.float().cpu().numpy().astype("<f4")
        records.append({"name": name, "shape": list(array.shape), "offset_bytes": offset})
        offset += array.nbytes
        chunks.append(array.ravel())
    np.concatenate(chunks).tofile(directory / INITIAL_STATE_FILE)
    return {
        "dtype": "float32", "byte_order": "little", "parts": records,
        "rule": "canvas[b] = concat(canvas_registers [R, Dc], canvas_patch repeated G*G times) -> [R + G*G, Dc]; "
                "recurrent_cls[b] = recurrent_cls [1, Db]; the same for every b (canvit-pytorch CanViT.init_state)",
    }


def architecture_record(canvit: CanViT) -> dict[str, Any]:
    """Architecture facts a runtime or a reader needs (canvit-pytorch CanViTConfig and ViTSpec)."""
    spec, config = canvit.backbone.spec, canvit.config
    return {
        "backbone": config.backbone_name, "backbone_dim": spec.embed_dim, "num_heads": spec.num_heads,
        "num_blocks": spec.num_blocks, "patch_px": spec.patch_size, "rope_base": spec.rope_base,
        "canvas_dim": config.canvas_dim, "canvas_num_heads": config.canvas_num_heads,
        "canvas_head_dim": config.canvas_head_dim, "num_canvas_registers": config.num_canvas_registers,
        "num_backbone_registers": config.num_backbone_registers, "enable_vpe": config.enable_vpe,
        "canvas_projections": config.canvas_projections,
        "read_after_blocks": list(canvit.read_after_blocks), "write_after_blocks": list(canvit.write_after_blocks),
        "parameters": sum(p.numel() for p in canvit.parameters()),
    }


def step_tensors(canvit: CanViT, geometry: Geometry, *, glimpse_output: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The step's inputs and outputs with static shapes, dtypes (all float32) and roles (DESIGN.md, Contracts)."""
    B, S, g = geometry.batch, geometry.scene_px, geometry.glimpse_px
    canvas = (B, canvit.config.num_canvas_registers + geometry.canvas_grid**2, canvit.config.canvas_dim)
    cls = (B, 1, canvit.backbone.spec.embed_dim)
    inputs = [TensorSpec("scene", (B, 3, S, S), "float32", ROLE_SCENE),
              TensorSpec("canvas", canvas, "float32", ROLE_STATE),
              TensorSpec("recurrent_cls", cls, "float32", ROLE_STATE),
              TensorSpec("centers", (B, 2), "float32", ROLE_CENTERS),
              TensorSpec("scales", (B,), "float32", ROLE_SCALES)]
    outputs = [TensorSpec("canvas_next", canvas, "float32", ROLE_STATE),
               TensorSpec("recurrent_cls_next", cls, "float32", ROLE_STATE)]
    if glimpse_output:
        outputs.append(TensorSpec("glimpse", (B, 3, g, g), "float32", ROLE_EXTRA))
    return inputs, outputs


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in ("canvit-export", "canvit-pytorch", "torch", *packages):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def base_manifest(*, canvit: CanViT, source_record: dict[str, Any], geometry: Geometry, inputs: list[TensorSpec],
                  outputs: list[TensorSpec], initial_state: dict[str, Any], precision: dict[str, Any],
                  artifact: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields every target shares; `files` and `tools` are added by finish_manifest."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": artifact,
        "model": source_record,
        "architecture": architecture_record(canvit),
        "geometry": geometry.to_json(),
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        "state": [{"input": "canvas", "output": "canvas_next"},
                  {"input": "recurrent_cls", "output": "recurrent_cls_next"}],
        "initial_state": initial_state,
        "preprocessing": {
            "scene_px": geometry.scene_px, "layout": "NCHW", "color": "RGB",
            "resize": "short side to scene_px, bilinear (PIL), then center crop (canvit_core.preprocess)",
            "scale": "pixel / 255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        },
        "viewpoint": {
            "centers": "(row, col) in scene coordinates [-1, 1]; (-1, -1) is the top-left corner",
            "scales": "half side of the square crop, in (0, 1]; a glimpse covers scale^2 of the scene",
            "valid": "finite, 0 < scale <= 1 and |row|, |col| <= 1 - scale (paper App. C.1)",
            "min_trained_scale": MIN_SCALE,
            "sampling": "bilinear, align_corners=False, zero padding (canvit-pytorch sample_at_viewpoint)",
        },
        "precision": precision,
    }


def finish_manifest(directory: Path, manifest: dict[str, Any], files: dict[str, str], *packages: str) -> dict[str, Any]:
    """Add each file's size and SHA-256 (files: key -> name in directory) and tool versions; write manifest.json."""
    manifest["files"] = {key: {"path": name, "bytes": size_bytes(directory / name),
                               "sha256": sha256_file(directory / name)} for key, name in files.items()}
    manifest["tools"] = tool_versions(*packages)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def derived_manifest(source: Manifest, artifact: dict[str, Any]) -> dict[str, Any]:
    """A manifest for an artifact compiled from the ONNX artifact `source` (TensorRT engine, OpenVINO IR): the
    same model, geometry, tensors, state, preprocessing, viewpoint and precision records, with a new `artifact`
    (which records the source graph's SHA-256). `files` and `tools` are then set by finish_manifest."""
    data = {key: value for key, value in source.data.items() if key not in ("files", "tools", "created", "artifact")}
    source_graph = source.data["files"]["graph"]
    return {**data, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "artifact": {**artifact, "source": {"path": str(source.directory.resolve()),
                                                "graph_sha256": source_graph["sha256"],
                                                "target": source.data["artifact"]["target"]}}}


def copy_initial_state(source: Manifest, directory: Path) -> None:
    """Copy the source artifact's initial_state.bin into directory."""
    shutil.copyfile(source.file("initial_state"), directory / INITIAL_STATE_FILE)


def load_source_artifact(path: Path, *, target: str) -> Manifest:
    """The ONNX artifact another target compiles from; ExportError if it is missing, altered or not ONNX."""
    from canvit_runtime.manifest import load_manifest

    try:
        manifest = load_manifest(path)
    except ValueError as error:
        raise ExportError(str(error)) from error
    if manifest.data["artifact"]["target"] != "onnx":
        raise ExportError(f"{path} is a {manifest.data['artifact']['target']} artifact; {target} builds from an ONNX "
                          f"artifact (canvit-export onnx --out DIR)")
    return manifest
