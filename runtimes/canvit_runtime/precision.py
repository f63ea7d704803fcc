"""The one precision vocabulary: every command, the manifest, the runners, the bench and the C++ demo use these
words (the manifest schema lists them as an enum, so the C++ demo validates the same set).

A precision names what the step's matmuls, the patch-embedding conv and attention compute in, and how the weights
are stored. Whatever the word, the canvas residual stream, RoPE, scene coordinates and the VPE stay float32 (paper
App. D.3), except in `fp16-all`, the control variant that narrows the canvas too to measure what float32 buys.

| word        | matmul dtype | residual streams | weights                  | keeps the float32 rule |
|-------------|--------------|------------------|--------------------------|------------------------|
| fp32        | float32      | float32          | float32                  | yes                    |
| fp16        | float16      | float32          | float16                  | yes                    |
| bf16        | bfloat16     | float32          | bfloat16                 | yes                    |
| fp16-all    | float16      | float16          | float16                  | no (control only)      |
| fp32-int8w  | float32      | float32          | int8, per output channel | yes                    |
| fp16-int8w  | float16      | float32          | int8, per output channel | yes                    |
| bf16-int8w  | bfloat16     | float32          | int8, per output channel | yes                    |
| int8        | int8 (static, calibrated activations) | float32 | int8, symmetric per output channel | yes |

`int8` quantizes the weight matmuls' activations and weights (static: scales calibrated on rollouts, see
canvit_export.calibration); every other op, the canvas path included, runs the fp32 graph's float32.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

PrecisionName = Literal["fp32", "fp16", "bf16", "fp16-all", "fp32-int8w", "fp16-int8w", "bf16-int8w", "int8"]
FloatDType = Literal["float32", "float16", "bfloat16"]
MatmulDType = Literal["float32", "float16", "bfloat16", "int8"]
INT8_WEIGHTS_SUFFIX = "-int8w"


@dataclass(frozen=True)
class PrecisionInfo:
    """What one precision word means (see the module table)."""

    name: str
    base: str
    """The compute precision without weight compression: fp32, fp16, bf16, fp16-all, or int8."""
    matmul_dtype: MatmulDType
    stream_dtype: FloatDType
    int8_weights: bool
    """Weight-only INT8 compression of a float graph (the -int8w words)."""
    follows_rule: bool
    int8_static: bool = False
    """Static INT8: activations and weights of the weight matmuls quantized with calibrated scales (`int8`)."""


def _info(name: str) -> PrecisionInfo:
    if name == "int8":
        return PrecisionInfo(name=name, base=name, matmul_dtype="int8", stream_dtype="float32", int8_weights=False,
                             follows_rule=True, int8_static=True)
    base = name.removesuffix(INT8_WEIGHTS_SUFFIX)
    matmul = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp16-all": "float16"}[base]
    return PrecisionInfo(name=name, base=base, matmul_dtype=matmul,  # type: ignore[arg-type]
                         stream_dtype="float16" if base == "fp16-all" else "float32",
                         int8_weights=name.endswith(INT8_WEIGHTS_SUFFIX), follows_rule=base != "fp16-all")


PRECISIONS: dict[str, PrecisionInfo] = {name: _info(name) for name in get_args(PrecisionName)}
"""Every precision word, in the order commands list them."""


TARGET_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "bf16", "fp16-all", "int8"),  # the step module's own casts (+ fp16-all), Q/DQ int8
    "openvino": ("fp32", "fp16", "bf16", "fp32-int8w", "fp16-int8w", "bf16-int8w", "int8"),  # +INT8 weights, NNCF int8
    "tensorrt": ("fp32", "fp16", "bf16", "int8"),  # strongly typed: the ONNX graph's types (int8: its Q/DQ)
    "coreml": ("fp16", "fp32"),
    "executorch": ("fp32", "fp16", "int8"),  # the step module's own casts, lowered with XNNPACK; XNNPACKQuantizer int8
}
"""Which words each target (and its command) takes."""


def precision_info(name: str, *, allowed: tuple[str, ...] | None = None, option: str = "--precision") -> PrecisionInfo:
    """The facts of precision `name`; ValueError naming the choices when it is not a word of the vocabulary (or not
    one of `allowed`, a command's subset)."""
    choices = allowed or tuple(PRECISIONS)
    if name not in choices:
        raise ValueError(f"{option} {name}: choose one of {', '.join(choices)}")
    return PRECISIONS[name]


def with_int8_weights(base: str) -> str:
    """The word for `base` (fp32, fp16, bf16) with INT8-compressed weights, e.g. bf16 -> bf16-int8w."""
    return precision_info(base + INT8_WEIGHTS_SUFFIX).name
