"""One CanViT glimpse as a module on plain tensors, written for export: `(scene, state, viewpoint) -> state'`.

It computes exactly `CanViT.forward` (canvit-pytorch model/canvit.py) after `sample_at_viewpoint`, on the reference
modules' own parameters, with three export-minded changes that leave the arithmetic as it is:

- SR-RoPE rotation (canvit-pytorch `apply_2d_rope`) writes into slices of an empty tensor, which exports as
  ScatterND, and runs on the head-split tensor; `rotate_tokens` computes the same products (bitwise, tested) on the
  token-major tensor before the head transpose, where a runtime can fold that transpose into attention.
- The tokens canvit-pytorch leaves unrotated (VPE, CLS and registers of the glimpse; the canvas registers) get rows
  of angle 0 (cos 1, sin 0; `with_unrotated_prefix`), x * 1 + y * 0 == x for finite x, so every rotation is one
  element-wise pass with no split into prefix and grid and no concatenation after. The canvas grid's RoPE depends
  only on the canvas size, so its sin/cos are computed once here (float32, `compute_2d_rope` on `grid_coords`) and
  become graph constants (docs/measurements/2026-12-02-choices.md).
- LayerNorm stays `nn.LayerNorm`, which exports as a single LayerNormalization op (opset >= 17).

Precision (paper App. D.3; canvit_export.precision): matmuls, the patch-embedding conv and attention run in
`precision.compute`; the residual streams (the canvas, and the glimpse tokens), LayerNorm and LayerScale in
`precision.stream` (float32 except for the all-fp16 control variant). Scene coordinates, RoPE angles/sin/cos and
the VPE are float32 always. The casts are explicit here, so the exported graph carries the precision decision and
TensorRT's strongly typed mode, ONNX Runtime and OpenVINO execute exactly these types.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from canvit_pytorch import CanViT, Viewpoint, sample_at_viewpoint
from canvit_pytorch.model.attention.base import CanvasAttention, from_multihead, to_multihead
from canvit_pytorch.model.backbone.vit import SelfAttention, ViTBlock
from canvit_pytorch.model.rope import RoPE, compute_2d_rope, make_rope_periods
from canvit_pytorch.viewpoint import grid_coords, viewpoint_grid_coords
from torch import Tensor, nn

from canvit_export.precision import Precision, cast_model, step_precision
from canvit_export.readouts import Heads, ReadoutModule
from canvit_runtime.manifest import READOUT_OUTPUTS

CPU = torch.device("cpu")
"""Where the RoPE period buffers are made (they follow the module on .to())."""

INPUT_NAMES = ("scene", "canvas", "recurrent_cls", "centers", "scales")
STATE_OUTPUT_NAMES = ("canvas_next", "recurrent_cls_next")
GLIMPSE_OUTPUT_NAME = "glimpse"


class StepInputs(NamedTuple):
    """The step's inputs, all float32.

    scene [B, 3, S, S] ImageNet-normalized; canvas [B, R + G*G, Dc]; recurrent_cls [B, 1, Db];
    centers [B, 2] (row, col) in scene coordinates [-1, 1]; scales [B] in (0, 1].
    """

    scene: Tensor
    canvas: Tensor
    recurrent_cls: Tensor
    centers: Tensor
    scales: Tensor


def rotate_tokens(x: Tensor, rope: RoPE, num_heads: int | None = None) -> Tensor:
    """canvit-pytorch `apply_2d_rope` before the head split: SR-RoPE on every token of x, given as
    [B, N, heads * head_dim] (with num_heads) or [B, N, heads, head_dim], each head's head_dim channels rotated as
    `apply_2d_rope` rotates them after `to_multihead`; returns x's shape and dtype. rope.sin/cos:
    [B or 1, 1, N, head_dim] float32, as long as x: the tokens canvit-pytorch leaves unrotated get rows of angle 0
    (`with_unrotated_prefix`).

    `to_multihead(rotate_tokens(x, rope, h), h)` equals `apply_2d_rope(to_multihead(x, h), rope_of_the_grid)`
    bitwise (the same element-wise products on the same numbers, without apply_2d_rope's slice assignment, which
    exports as ScatterND); the head transpose comes after, where a runtime can fold it into attention.

    Raises:
        AssertionError: x's rank, or the rope's length or dtype, does not fit.
    """
    assert x.ndim in (3, 4) and (x.ndim == 4) == (num_heads is None), (x.shape, num_heads)
    B, n = x.shape[:2]
    head_dim = rope.sin.shape[-1]
    assert rope.sin.dtype == torch.float32 and x.shape[-1] * (num_heads or 1) % head_dim == 0, (rope.sin, x.shape)
    assert rope.sin.shape[2] == n, f"RoPE covers {rope.sin.shape[2]} tokens, input has {n}: with_unrotated_prefix"
    half = head_dim // 2
    tokens = x.float().reshape(B, n, -1, head_dim) if x.ndim == 3 else x.float()
    swapped = torch.cat([-tokens[..., half:], tokens[..., :half]], dim=-1)
    cos, sin = rope.cos.transpose(1, 2), rope.sin.transpose(1, 2)  # [B or 1, N, 1, head_dim]
    return (tokens * cos + swapped * sin).to(x.dtype).reshape(x.shape)


def with_unrotated_prefix(rope: RoPE, n_prefix: int) -> RoPE:
    """The rope with n_prefix leading rows of angle 0 (cos 1, sin 0): the tokens canvit-pytorch leaves unrotated
    (VPE, CLS, registers) rotate by nothing, x * 1 + y * 0 == x for finite x, so `rotate_tokens` needs no split.
    sin/cos [B, 1, N, head_dim] float32 -> [B, 1, n_prefix + N, head_dim] float32."""
    if n_prefix == 0:
        return rope
    shape = (*rope.sin.shape[:2], n_prefix, rope.sin.shape[3])
    dtype, device = rope.sin.dtype, rope.sin.device  # torch.zeros/ones: coremltools converts them, not new_zeros
    return RoPE(sin=torch.cat([torch.zeros(shape, dtype=dtype, device=device), rope.sin], dim=2),
                cos=torch.cat([torch.ones(shape, dtype=dtype, device=device), rope.cos], dim=2))


class GlimpseStep(nn.Module):
    """CanViT's glimpse step on plain tensors; see the module docstring.

    forward(scene, canvas, recurrent_cls, centers, scales) -> (canvas_next [B, R + G*G, Dc] float32,
    recurrent_cls_next [B, 1, Db] float32[, glimpse [B, 3, g, g] float32 when glimpse_output][, the readouts of
    `heads` on the new state: seg_logits [B, C, G, G], seg_entropy [B, G, G] (nats), class_logits [B, n],
    teacher_patches [B, G*G, Dt], all float32; canvit_export.readouts]).
    """

    canvas_rope_sin: Tensor
    canvas_rope_cos: Tensor
    backbone_periods: Tensor
    canvas_periods: Tensor

    def __init__(self, canvit: CanViT, *, glimpse_px: int, canvas_grid: int, glimpse_output: bool = False,
                 precision: Precision | None = None, heads: Heads | None = None) -> None:
        super().__init__()
        precision = precision or step_precision("fp32")
        canvit = cast_model(canvit, precision)
        # The readout heads (float32) on the new state; they share this step's CanViT, whose weights they never read.
        self.readouts = ReadoutModule(canvit, heads) if heads is not None and heads.names else None
        self.readout_names: tuple[str, ...] = tuple(
            name for head in (heads.names if heads is not None else []) for name in READOUT_OUTPUTS[head])
        patch = canvit.patch_size
        assert glimpse_px > 0 and glimpse_px % patch == 0, f"glimpse {glimpse_px} px is not whole {patch} px patches"
        assert canvas_grid > 0, canvas_grid
        self.canvit = canvit
        self.glimpse_px = glimpse_px
        self.glimpse_grid = glimpse_px // patch
        self.canvas_grid = canvas_grid
        self.glimpse_output = glimpse_output
        self.precision = precision
        spec, config = canvit.backbone.spec, canvit.config
        self.register_buffer("backbone_periods", make_rope_periods(head_dim=spec.head_dim, base=spec.rope_base,
                                                                   device=CPU), persistent=False)
        self.register_buffer("canvas_periods", make_rope_periods(head_dim=config.canvas_head_dim,
                                                                 base=spec.rope_base, device=CPU), persistent=False)
        # The canvas's SR-RoPE, a constant of the canvas size (module docstring): [1, 1, R + G*G, head_dim] float32
        canvas_positions = grid_coords(size=canvas_grid, device=None).flatten(0, 1).unsqueeze(0)
        canvas_rope = compute_2d_rope(positions=canvas_positions, periods=self.canvas_periods)
        canvas_rope = with_unrotated_prefix(canvas_rope, config.num_canvas_registers)
        self.register_buffer("canvas_rope_sin", canvas_rope.sin, persistent=False)
        self.register_buffer("canvas_rope_cos", canvas_rope.cos, persistent=False)
        self.read_after_block: dict[int, CanvasAttention] = dict(
            zip(canvit.read_after_blocks, cast(list[CanvasAttention], list(canvit.canvas_reads)), strict=True))
        self.write_after_block: dict[int, CanvasAttention] = dict(
            zip(canvit.write_after_blocks, cast(list[CanvasAttention], list(canvit.canvas_writes)), strict=True))

    # --- precision helpers: identities in fp32 --------------------------------------------------------------------
    def _low(self, x: Tensor) -> Tensor:
        """To the compute dtype (matmul, conv and attention inputs)."""
        return x.to(self.precision.compute)

    def _stream(self, x: Tensor) -> Tensor:
        """To the residual-stream dtype (float32 unless fp16-all)."""
        return x.to(self.precision.stream)

    def _linear(self, layer: nn.Module, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """nn.Linear (or nn.Identity) in the compute dtype; `bias` overrides layer.bias."""
        if isinstance(layer, nn.Identity):
            return x
        assert isinstance(layer, nn.Linear), type(layer)
        b = layer.bias if bias is None else bias
        return F.linear(self._low(x), layer.weight, None if b is None else b.to(layer.weight.dtype))

    # --- the blocks, as canvit-pytorch computes them --------------------------------------------------------------
    def _self_attention(self, attn: SelfAttention, x: Tensor, rope: RoPE) -> Tensor:
        """canvit-pytorch SelfAttention.forward: fused QKV without key bias, SR-RoPE on q and k, SDPA, proj."""
        B, N, D = x.shape
        assert attn.qkv.bias is not None
        qkv = self._linear(attn.qkv, x, bias=attn.qkv.bias * attn._bias_mask)
        qkv = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.unbind(2)  # [B, N, heads, head_dim]
        # canvit-pytorch passes scale=head_dim**-0.5, which is SDPA's default; leaving it implicit lets coremltools
        # build the scale in the query's dtype (an explicit fp32 scale breaks its fp16 conversion).
        assert attn.head_dim**-0.5 == 1 / math.sqrt(q.shape[-1]), attn.head_dim
        # SR-RoPE before the head transpose (rotate_tokens), as canvit-pytorch's rotation after it, bitwise
        out = F.scaled_dot_product_attention(rotate_tokens(q, rope).transpose(1, 2),
                                             rotate_tokens(k, rope).transpose(1, 2), v.transpose(1, 2))
        return self._linear(attn.proj, out.transpose(1, 2).reshape(B, N, D))

    def _block(self, block: ViTBlock, x: Tensor, rope: RoPE) -> Tensor:
        """canvit-pytorch ViTBlock.forward: pre-norm attention and MLP, each scaled by LayerScale."""
        x = x + block.ls1(self._stream(self._self_attention(block.attn, block.norm1(x), rope)))
        hidden = F.gelu(self._linear(block.mlp.fc1, block.norm2(x)))
        return x + block.ls2(self._stream(self._linear(block.mlp.fc2, hidden)))

    def _canvas_attention(self, ca: CanvasAttention, *, query: Tensor, kv: Tensor, query_rope: RoPE,
                          kv_rope: RoPE) -> Tensor:
        """canvit-pytorch CanvasAttention.forward: LayerNorm both sides, SR-RoPE on q and k, SDPA at canvas width."""
        heads = ca.num_heads
        q = to_multihead(rotate_tokens(self._linear(ca.q_map, ca.ln_q(query)), query_rope, heads), heads)
        kv = ca.ln_kv(kv)
        k = to_multihead(rotate_tokens(self._linear(ca.k_map, kv), kv_rope, heads), heads)
        v = to_multihead(self._linear(ca.v_map, kv), heads)
        out = F.scaled_dot_product_attention(self._low(q), self._low(k), self._low(v))
        return self._linear(ca.o_map, from_multihead(out))

    def forward(self, scene: Tensor, canvas: Tensor, recurrent_cls: Tensor, centers: Tensor,
                scales: Tensor) -> tuple[Tensor, ...]:
        canvit = self.canvit
        B = scene.shape[0]
        viewpoint = Viewpoint(centers=centers, scales=scales)
        glimpse = sample_at_viewpoint(spatial=scene, viewpoint=viewpoint, glimpse_size_px=self.glimpse_px)

        conv = canvit.backbone.patch_embed.proj
        patches = self._stream(conv(self._low(glimpse)).flatten(2).transpose(1, 2))  # [B, g*g, Db]
        prefix = [self._stream(recurrent_cls), self._stream(canvit.backbone_registers.expand(B, -1, -1))]
        if canvit.vpe is not None:
            prefix.insert(0, self._stream(canvit.vpe(viewpoint).unsqueeze(1)))  # computed in float32
        tokens = torch.cat([*prefix, patches], dim=1)
        canvas = self._stream(canvas)

        glimpse_positions = viewpoint_grid_coords(viewpoint, size=self.glimpse_grid).flatten(1, 2)  # [B, g*g, 2]
        # Angle 0 for the prefix tokens (VPE, CLS, registers), which canvit-pytorch leaves unrotated: no split
        n_prefix = tokens.shape[1] - self.glimpse_grid**2
        glimpse_rope = with_unrotated_prefix(
            compute_2d_rope(positions=glimpse_positions, periods=self.backbone_periods), n_prefix)
        glimpse_rope_canvas = with_unrotated_prefix(
            compute_2d_rope(positions=glimpse_positions, periods=self.canvas_periods), n_prefix)
        canvas_rope = RoPE(sin=self.canvas_rope_sin, cos=self.canvas_rope_cos)
        assert canvas.shape[1] == canvit.config.num_canvas_registers + self.canvas_grid**2, (
            f"canvas has {canvas.shape[1]} tokens, expected {canvit.config.num_canvas_registers} + {self.canvas_grid}²")

        for i, block in enumerate(cast(list[ViTBlock], list(canvit.backbone.blocks))):
            tokens = self._block(block, tokens, glimpse_rope)
            if (read := self.read_after_block.get(i)) is not None:
                tokens = tokens + self._stream(self._canvas_attention(
                    read, query=tokens, kv=canvas, query_rope=glimpse_rope_canvas, kv_rope=canvas_rope))
            if (write := self.write_after_block.get(i)) is not None:
                update = self._canvas_attention(write, query=canvas, kv=tokens, query_rope=canvas_rope,
                                                kv_rope=glimpse_rope_canvas)
                canvas = canvas + self._stream(update)  # the canvas residual stream: float32 (but for fp16-all)

        cls_index = 1 if canvit.vpe is not None else 0
        recurrent_cls_next = tokens[:, cls_index:cls_index + 1].float()
        canvas_next = canvas.float()
        outputs: tuple[Tensor, ...] = (canvas_next, recurrent_cls_next)
        if self.glimpse_output:
            outputs = (*outputs, glimpse)
        if self.readouts is not None:
            outputs = (*outputs, *self.readouts(canvas_next, recurrent_cls_next))
        return outputs

    def example_inputs(self, *, batch: int, scene_px: int) -> StepInputs:
        """Inputs for tracing: a zero scene, the initial state (CanViT.init_state), full-scene viewpoints."""
        state = self.canvit.init_state(batch_size=batch, canvas_grid_size=self.canvas_grid)
        viewpoint = Viewpoint.full_scene(batch_size=batch, device=None)
        return StepInputs(torch.zeros(batch, 3, scene_px, scene_px), state.canvas.detach().float().clone(),
                          state.recurrent_cls.detach().float().clone(), viewpoint.centers, viewpoint.scales)

    @property
    def output_names(self) -> tuple[str, ...]:
        """canvas_next, recurrent_cls_next[, glimpse][, the readouts' outputs (readouts.READOUTS order)]."""
        return (*STATE_OUTPUT_NAMES, *((GLIMPSE_OUTPUT_NAME,) if self.glimpse_output else ()), *self.readout_names)


def reference_step(canvit: CanViT, scene: Tensor, canvas: Tensor, recurrent_cls: Tensor, centers: Tensor,
                   scales: Tensor, *, glimpse_px: int) -> tuple[Tensor, Tensor]:
    """canvit-pytorch's own glimpse step (sample_at_viewpoint, then CanViT.forward): the parity reference."""
    from canvit_pytorch import RecurrentState

    viewpoint = Viewpoint(centers=centers, scales=scales)
    glimpse = sample_at_viewpoint(spatial=scene, viewpoint=viewpoint, glimpse_size_px=glimpse_px)
    state = canvit(glimpse=glimpse, state=RecurrentState(canvas=canvas, recurrent_cls=recurrent_cls),
                   viewpoint=viewpoint).state
    return state.canvas, state.recurrent_cls

