"""What every export target shares: geometry, the initial state, the architecture and tensor records.

The torch-free half (the atomic artifact folder, the manifest writer, tool versions, the source artifact) lives in
canvit_runtime.artifact, which canvit-runtime's on-device TensorRT engine build uses too; it is re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from canvit_pytorch import CanViT

from canvit_export.errors import ExportError
from canvit_runtime.artifact import (
    INITIAL_STATE_FILE,
    copy_initial_state,
    derived_fields,
    finish_manifest,
    load_source_artifact,
    source_record,
    staged_artifact,
    tool_versions,
)
from canvit_runtime.manifest import (
    ROLE_CENTERS,
    ROLE_EXTRA,
    ROLE_SCALES,
    ROLE_SCENE,
    ROLE_STATE,
    Architecture,
    Geometry,
    InitialState,
    InitialStatePart,
    Preprocessing,
    StatePair,
    TensorSpec,
)

__all__ = [
    "INITIAL_STATE_FILE",
    "Geometry",
    "PyTorchStep",
    "architecture_record",
    "check_geometry",
    "copy_initial_state",
    "default_out_dir",
    "derived_fields",
    "finish_manifest",
    "load_source_artifact",
    "preprocessing_record",
    "pytorch_step",
    "source_record",
    "staged_artifact",
    "state_pairs",
    "step_tensors",
    "tool_versions",
    "write_initial_state",
]


def check_geometry(geometry: Geometry, patch_px: int) -> None:
    """Raise ExportError for sizes CanViT's step cannot take: the glimpse a whole number of `patch_px` patches
    (canvit-pytorch's patch embedding), the scene at least one glimpse. The manifest's Geometry record already caps
    each size (canvit_runtime.manifest.LIMITS)."""
    if geometry.glimpse_px < patch_px or geometry.glimpse_px % patch_px:
        raise ExportError(f"--glimpse {geometry.glimpse_px}: must be a positive multiple of the {patch_px} px patch")
    if geometry.scene_px < geometry.glimpse_px:
        raise ExportError(f"--scene {geometry.scene_px}: must be at least the glimpse ({geometry.glimpse_px} px)")


def default_out_dir(backbone: str, geometry: Geometry, precision: str, target: str) -> Path:
    """models/canvit-<backbone>-c<G>-g<g>-s<S>-b<B>-<precision>[-<target>]."""
    name = f"canvit-{backbone}-c{geometry.canvas_grid}-g{geometry.glimpse_px}-s{geometry.scene_px}-b{geometry.batch}"
    return Path("models") / f"{name}-{precision}{'' if target == 'onnx' else '-' + target}"


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
    """The step's inputs and outputs with static shapes, dtypes (all float32) and roles (docs/design.md, Contracts), in
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


def preprocessing_record(geometry: Geometry) -> Preprocessing:
    return Preprocessing(scene_px=geometry.scene_px)


class PyTorchStep(NamedTuple):
    """What the targets converted from PyTorch (Core ML, ExecuTorch) start from: the step module, its example inputs
    (step.StepInputs), the manifest's inputs, outputs and state pairs, and the readout records."""

    step: Any
    example: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[StatePair]
    readouts: list[Any]


def pytorch_step(canvit: CanViT, geometry: Geometry, precision: Any, heads: Any) -> PyTorchStep:
    """step.GlimpseStep at `precision` (canvit_export.precision.Precision) with readout `heads` (readouts.Heads or
    None), in eval mode, and its records at `geometry` (no glimpse output)."""
    from canvit_export.readouts import Heads, readout_tensors
    from canvit_export.step import GlimpseStep

    step = GlimpseStep(canvit, glimpse_px=geometry.glimpse_px, canvas_grid=geometry.canvas_grid, precision=precision,
                       heads=heads).eval()
    readout_specs, readout_records = readout_tensors(heads or Heads(), batch=geometry.batch,
                                                     canvas_grid=geometry.canvas_grid)
    inputs, outputs = step_tensors(canvit, geometry, glimpse_output=False, readouts=readout_specs)
    return PyTorchStep(step, step.example_inputs(batch=geometry.batch, scene_px=geometry.scene_px), inputs, outputs,
                       state_pairs(inputs), readout_records)
