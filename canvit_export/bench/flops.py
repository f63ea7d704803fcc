"""FLOPs of a glimpse: canvit-pytorch's analytic count for the artifact's model (glimpse_gflops), and the step's matrix
products read off its exported graph (step_matmuls), which the floor times alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from canvit_runtime.manifest import Manifest, ManifestError, a_target

FLOOR_ROW_MULTIPLE = 8
"""Rows (M) of a floor matmul are also tried padded to a multiple of this: oneDNN's bf16 and INT8 kernels run
M=71 (a CanViT-B glimpse's tokens) markedly slower than M=72 here (export.openvino.pad_rows); the floor takes
the faster of the two, as an export may pad."""


def glimpse_gflops(manifest: Manifest) -> float:
    """Analytic GFLOPs of one glimpse per scene x batch (canvit_pytorch.flops.glimpse_flops; paper App. G), of the
    CanViTConfig the manifest's architecture describes."""
    from canvit_pytorch import CanViTConfig
    from canvit_pytorch.flops import glimpse_flops

    arch = manifest.architecture
    config = CanViTConfig(backbone_name=arch.backbone,  # type: ignore[arg-type]  # CanViTConfig checks the word
                          canvas_num_heads=arch.canvas_num_heads,
                          canvas_head_dim=arch.canvas_head_dim,
                          num_canvas_registers=arch.num_canvas_registers,
                          num_backbone_registers=arch.num_backbone_registers,
                          enable_vpe=arch.enable_vpe,
                          canvas_projections=arch.canvas_projections)  # type: ignore[arg-type]
    return glimpse_flops(config, glimpse_size_px=manifest.glimpse_px, canvas_grid_size=manifest.canvas_grid) \
        * manifest.batch / 1e9


@dataclass(frozen=True)
class StepMatMul:
    """One matrix product of the step: `a` [..., M, K] times `b` [..., K, N] (shapes before the transposes, as in the
    graph), `weights` when b is a constant of the graph (a weight matrix) and not an activation (attention's Q K^T and
    P V)."""

    a: tuple[int, ...]
    b: tuple[int, ...]
    transpose_a: bool
    transpose_b: bool
    weights: bool

    @property
    def flops(self) -> int:
        """2 x M x K x N x the batch dimensions: one multiply-accumulate counts two FLOPs (canvit_pytorch.flops)."""
        k = self.a[-2] if self.transpose_a else self.a[-1]
        m = self.a[-1] if self.transpose_a else self.a[-2]
        n = self.b[-2] if self.transpose_b else self.b[-1]
        return 2 * int(np.prod(self.a[:-2], dtype=np.int64)) * m * k * n


def step_matmuls(manifest: Manifest) -> list[StepMatMul]:
    """Every matrix product of the artifact's step graph (its ONNX graph or OpenVINO IR, read with OpenVINO), in graph
    order: the MatMuls, the two products of each ScaledDotProductAttention (Q K^T, P V), and the convolutions as the
    matmuls they compute (patch embedding: [M = patches, K = 3 x p x p]
    x [K, N = backbone width]; the segmentation probe's 1x1 convolution). ManifestError for other targets (a TensorRT
    engine or Core ML package cannot be read back as a graph)."""
    import openvino as ov

    key = {"onnx": "graph", "openvino": "ir"}.get(manifest.artifact.target)
    if key is None:
        raise ManifestError(f"{manifest.directory} is {a_target(manifest.artifact.target)} artifact: the floor reads the "
                            f"step's matmuls from an ONNX graph or OpenVINO IR")
    model = ov.Core().read_model(manifest.file(key))
    return [mm for op in model.get_ordered_ops() for mm in _products(op)]


def _products(op: Any) -> list[StepMatMul]:
    """The matrix products one OpenVINO op computes (none for ops other than MatMul, attention and convolution)."""
    from canvit_export.export.openvino import from_constant

    kind = op.get_type_name()

    def shape(port: Any) -> tuple[int, ...]:
        return tuple(int(d) for d in port.get_shape())

    if kind == "MatMul":
        flags = op.get_attributes()
        return [StepMatMul(shape(op.input(0)), shape(op.input(1)),
                           bool(flags["transpose_a"]), bool(flags["transpose_b"]),
                           from_constant(op.input_value(1)))]
    if kind == "ScaledDotProductAttention":  # attention fused by OpenVINO's conversion: its two products
        queries, keys, values = (shape(op.input(i)) for i in range(3))
        return [StepMatMul(queries, keys, False, True, False),
                StepMatMul((*queries[:-1], keys[-2]), values, False, False, False)]
    if kind == "Convolution":
        weight, result = list(shape(op.input(1))), list(shape(op.output(0)))
        rows, depth = int(np.prod(result[:1] + result[2:])), int(np.prod(weight[1:]))
        return [StepMatMul((rows, depth), (depth, weight[0]), False, False, True)]
    return []
