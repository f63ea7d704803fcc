"""The export-friendly step computes what canvit-pytorch computes, in PyTorch, before any export."""

from __future__ import annotations

import pytest
import torch
from canvit_pytorch.model.attention.base import to_multihead
from canvit_pytorch.model.rope import RoPE, apply_2d_rope

from canvit_export.step import GlimpseStep, reference_step, rotate_tokens, with_unrotated_prefix


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_split", [False, True])
def test_rotate_tokens_equals_apply_2d_rope_after_the_head_split(dtype, head_split: bool) -> None:
    """SR-RoPE before the head split, on [B, N, heads * head_dim] and on [B, N, heads, head_dim], with the unrotated
    prefix (VPE, CLS, registers) given rows of angle 0 (with_unrotated_prefix), is canvit-pytorch's apply_2d_rope
    after the head split, which leaves the prefix out: bitwise."""
    generator = torch.Generator().manual_seed(0)
    heads, head_dim, prefix = 4, 32, 7
    x = (torch.randn(2, prefix + 16, heads * head_dim, generator=generator) * 50).to(dtype)
    rope = RoPE(sin=torch.randn(2, 1, 16, head_dim, generator=generator),
                cos=torch.randn(2, 1, 16, head_dim, generator=generator))
    full = with_unrotated_prefix(rope, prefix)
    assert full.sin.shape == (2, 1, prefix + 16, head_dim)
    assert not full.sin[:, :, :prefix].any() and bool((full.cos[:, :, :prefix] == 1).all())
    expected = apply_2d_rope(to_multihead(x, heads), rope)
    if head_split:
        ours = rotate_tokens(x.reshape(2, prefix + 16, heads, head_dim), full).transpose(1, 2)
    else:
        ours = to_multihead(rotate_tokens(x, full, heads), heads)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert with_unrotated_prefix(rope, 0) is rope
    with pytest.raises(AssertionError, match="RoPE covers 16 tokens, input has 23"):
        rotate_tokens(x, rope, heads)


def test_canvas_registers_rotate_by_angle_zero(vits16) -> None:
    """The canvas's RoPE constant covers registers and grid: angle 0 (cos 1, sin 0) for the R registers, which
    canvit-pytorch leaves unrotated, then compute_2d_rope of the grid; applied to the canvas it equals
    apply_2d_rope on the grid with the registers passed through, bitwise."""
    step = GlimpseStep(vits16.canvit, glimpse_px=128, canvas_grid=8)
    registers = vits16.canvit.config.num_canvas_registers
    assert step.canvas_rope_sin.shape[2] == registers + 64
    assert torch.equal(step.canvas_rope_cos[:, :, :registers], torch.ones_like(step.canvas_rope_cos[:, :, :registers]))
    assert not step.canvas_rope_sin[:, :, :registers].any()
    generator = torch.Generator().manual_seed(0)
    canvas = torch.randn(1, registers + 64, 1024, generator=generator) * 100
    heads = 1024 // step.canvas_rope_sin.shape[-1]
    grid_rope = RoPE(sin=step.canvas_rope_sin[:, :, registers:], cos=step.canvas_rope_cos[:, :, registers:])
    full = RoPE(sin=step.canvas_rope_sin, cos=step.canvas_rope_cos)
    torch.testing.assert_close(to_multihead(rotate_tokens(canvas, full, heads), heads),
                               apply_2d_rope(to_multihead(canvas, heads), grid_rope), rtol=0, atol=0)


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
