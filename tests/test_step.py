"""The export-friendly step computes what canvit-pytorch computes, in PyTorch, before any export."""

from __future__ import annotations

import pytest
import torch
from canvit_pytorch.model.rope import RoPE, apply_2d_rope

from canvit_export.step import GlimpseStep, reference_step, rotate


def test_rotate_equals_apply_2d_rope() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7 + 16, 32, generator=generator)
    rope = RoPE(sin=torch.randn(2, 1, 16, 32, generator=generator), cos=torch.randn(2, 1, 16, 32, generator=generator))
    torch.testing.assert_close(rotate(x, rope), apply_2d_rope(x, rope), rtol=0, atol=0)
    no_prefix = x[:, :, 7:]
    torch.testing.assert_close(rotate(no_prefix, rope), apply_2d_rope(no_prefix, rope), rtol=0, atol=0)


@pytest.mark.parametrize("canvas_grid", [8, 32])
def test_step_equals_canvit_forward(vits16, canvas_grid: int) -> None:
    step = GlimpseStep(vits16.canvit, glimpse_px=128, canvas_grid=canvas_grid, glimpse_output=True).eval()
    inputs = step.example_inputs(batch=2, scene_px=256)
    generator = torch.Generator().manual_seed(1)
    scene = torch.randn(2, 3, 256, 256, generator=generator)
    canvas, cls = inputs.canvas, inputs.recurrent_cls
    viewpoints = [([0.0, 0.0], 1.0), ([0.5, -0.5], 0.5), ([-0.7, 0.2], 0.3)]
    with torch.no_grad():
        for (row, col), scale in viewpoints:
            centers = torch.tensor([[row, col], [-row, col]])
            scales = torch.tensor([scale, scale])
            ours = step(scene, canvas, cls, centers, scales)
            reference = reference_step(vits16.canvit, scene, canvas, cls, centers, scales, glimpse_px=128)
            torch.testing.assert_close(ours[0], reference[0], rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(ours[1], reference[1], rtol=1e-6, atol=1e-5)
            assert ours[2].shape == (2, 3, 128, 128)
            canvas, cls = reference
    assert canvas.shape == (2, 16 + canvas_grid**2, 1024)
