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

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

PrecisionName = Literal["fp32", "fp16", "bf16", "fp16-all", "fp32-int8w", "fp16-int8w", "bf16-int8w"]
FloatDType = Literal["float32", "float16", "bfloat16"]
INT8_WEIGHTS_SUFFIX = "-int8w"


@dataclass(frozen=True)
class PrecisionInfo:
    """What one precision word means (see the module table)."""

    name: str
    base: str
    """The compute precision without weight compression: fp32, fp16, bf16 or fp16-all."""
    matmul_dtype: FloatDType
    stream_dtype: FloatDType
    int8_weights: bool
    follows_rule: bool


def _info(name: str) -> PrecisionInfo:
    base = name.removesuffix(INT8_WEIGHTS_SUFFIX)
    matmul = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp16-all": "float16"}[base]
    return PrecisionInfo(name=name, base=base, matmul_dtype=matmul,  # type: ignore[arg-type]
                         stream_dtype="float16" if base == "fp16-all" else "float32",
                         int8_weights=name.endswith(INT8_WEIGHTS_SUFFIX), follows_rule=base != "fp16-all")


PRECISIONS: dict[str, PrecisionInfo] = {name: _info(name) for name in get_args(PrecisionName)}
"""Every precision word, in the order commands list them."""


TARGET_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "bf16", "fp16-all"),  # the step module's own casts (and the fp16-all control)
    "openvino": ("fp32", "fp16", "bf16", "fp32-int8w", "fp16-int8w", "bf16-int8w"),  # the ONNX graph's, +INT8 weights
    "tensorrt": ("fp32", "fp16", "bf16"),  # strongly typed: the ONNX graph's types
    "coreml": ("fp16", "fp32"),
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
