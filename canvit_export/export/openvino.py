"""The OpenVINO target: IR (step.xml/.bin) converted from an ONNX artifact, stateful by default.

Stateful: `canvas` and `recurrent_cls` become OpenVINO state variables (MakeStateful: Parameter/Result pairs
replaced by ReadValue/Assign), so the canvas never leaves the runtime between glimpses; a reset writes the learned
initial state into the variables.

Precision. OpenVINO's own reduced precision (INFERENCE_PRECISION_HINT bf16 on the fp32 graph) narrows the canvas
LayerNorm, the VPE and the RoPE tables too, and the `disable_fp16_compression` rt_info does not stop the CPU plugin
from doing so (measured on OpenVINO 2026.4, and that rt_info is not serialized into IR). So, as for TensorRT, the
precision comes from our typed graph: the IR runs the ONNX artifact's own types, and a bf16/fp16 IR is converted
from the mixed-precision ONNX export (`canvit-export onnx --precision bf16|fp16`), compiled with the f32 hint,
under which OpenVINO executes the graph's own types (its bf16 matmuls in bf16). Conversion never goes back to
PyTorch: asking for another compute precision than the artifact's is refused with the export to run first. The
export compiles the IR on the CPU and audits the compiled model's runtime info (`audit_compiled`): every node fused
from a protected op (precision.audit_onnx's `protected`: canvas stream, coordinates, RoPE, VPE, canvas LayerNorm)
must output f32. A bf16 IR's bf16 MatMuls and a static INT8 IR's INT8 MatMuls get their rows padded to a multiple
of 8 (`pad_rows`: 1.24x and 1.14x on CanViT-B). Every IR also drops the layout chains that return their input
(`drop_identity_layouts`: attention's K transposed twice) and runs the segmentation probe's 1x1 convolution as a
MatMul on the channels-last canvas tokens (`probe_as_matmul`), and gives the keys of each Canvas Read a LayerNorm
affine of their own (`layer_norm_per_reader`: no copy of the shared LayerNorm output before their in-place RoPE),
all pure data movement saved.
A bf16 IR runs its Canvas Reads' attention (71 queries over >= 2,048 canvas tokens) as two MatMuls around a
float32 Softmax (`reads_on_matmuls`, the keys read at their head split: no K^T moved): the CPU plugin's AMX
kernels, where its fused attention ran on AVX-512.
`--precision <its precision>-int8w` compresses the matmul weights to INT8 (asymmetric, per channel) with NNCF,
leaving the protected ops (the VPE's Fourier features) untouched.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from canvit_export.calibration import refuse_unused_calibration, resolve_calibration
from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    copy_initial_state,
    derived_fields,
    finish_manifest,
    load_source_artifact,
    source_record,
    staged_artifact,
)
from canvit_export.export.int8 import int8_record, quantize_openvino
from canvit_export.precision import audit_onnx
from canvit_export.progress import Stages
from canvit_runtime.base import check_graph_io, onnx_io
from canvit_runtime.manifest import ROLE_STATE, CompiledAudit, Manifest, OpenVinoArtifact, a_precision, verified_onnx
from canvit_runtime.precision import PRECISIONS, precision_info, with_int8_weights

IR_FILE, WEIGHTS_FILE = "step.xml", "step.bin"


def protected_ops(model: Any, protected_tensors: set[str]) -> set[str]:
    """Friendly names of the ops that produce a protected tensor (matched by tensor name, which IR keeps)."""
    names = set()
    for op in model.get_ops():
        outputs = set().union(*(o.get_names() for o in op.outputs())) if op.get_output_size() else set()
        if outputs & protected_tensors:
            names.add(op.get_friendly_name())
    return names


def audit_compiled(compiled: Any, protected: set[str]) -> dict[str, Any]:
    """Read the compiled model's runtime info: every runtime node fused from a protected op must output f32
    (integer shape tensors aside). Returns {"checked", "violations", "runtime_precisions"} (a census of the
    runtime nodes' precisions)."""
    checked, violations, census = 0, [], Counter[str]()
    for op in compiled.get_runtime_model().get_ops():
        info = {key: value.value for key, value in op.get_rt_info().items()}
        census[str(info.get("runtimePrecision", ""))] += 1
        originals = set(str(info.get("originalLayersNames", "")).split(",")) & protected
        if not originals:
            continue
        checked += 1
        outputs = [p for p in str(info.get("outputPrecisions", "")).replace(",", " ").split() if p]
        if narrow := [p for p in outputs if p not in ("f32", "i32", "i64", "u8", "boolean")]:
            violations.append(f"{info.get('layerType')} {op.get_friendly_name()} (from {sorted(originals)[0]}) "
                              f"outputs {', '.join(narrow)}")
    return {"checked": checked, "violations": violations, "runtime_precisions": dict(census)}


def compress_int8(model: Any, protected: set[str]) -> Any:
    """INT8 asymmetric per-channel weight compression with NNCF, ignoring the protected ops."""
    try:
        import nncf
    except ImportError as error:
        raise ExportError("INT8 weights (--precision *-int8w) need NNCF: pip install nncf (or canvit-export[openvino])"
                          ) from error
    ignored = nncf.IgnoredScope(names=sorted(protected), validate=False)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


ROW_MULTIPLE = 8
"""pad_rows pads a bf16 or INT8 MatMul's rows to a multiple of this."""
ROW_WISE_UNARY = {"Gelu", "Relu", "Sigmoid", "Tanh", "Swish", "HSwish", "Convert", "Erf", "Clamp"}
ROW_WISE_BINARY = {"Add", "Multiply", "Subtract"}


def from_constant(output: Any) -> bool:
    """Whether `output` is computed from Constants alone (weights, biases, scales: a Constant, possibly behind
    Convert/Reshape/Transpose, or a decompression Subtract/Multiply or FakeQuantize of constants)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if kind in ("Convert", "Reshape", "Transpose", "Subtract", "Multiply", "FakeQuantize"):
        return all(from_constant(node.input_value(i)) for i in range(node.get_input_size()))
    return False


def _quantizer(output: Any) -> Any:
    """The FakeQuantize producing `output` when its ranges are constants and every reader of it is a MatMul with
    constant weights (its input may then be padded for all of them), else None."""
    node = output.get_node()
    if node.get_type_name() != "FakeQuantize" or not all(from_constant(node.input_value(i)) for i in range(1, 5)):
        return None
    for target in output.get_target_inputs():
        reader = target.get_node()
        if reader.get_type_name() != "MatMul" or target.get_index() != 0 or not from_constant(reader.input_value(1)) \
                or reader.get_attributes().get("transpose_a"):
            return None
    return node


def _behind_layout(output: Any) -> bool:
    """Whether `output` is a FakeQuantize's, through Reshape/Transpose nodes (attention's heads merged before the output
    projection): the MatMul then runs in INT8, and its input is padded (a Pad there keeps it INT8)."""
    node = output.get_node()
    while node.get_type_name() in ("Reshape", "Transpose"):
        node = node.input_value(0).get_node()
    return bool(node.get_type_name() == "FakeQuantize")


def pad_rows(model: Any, kind: str, multiple: int = ROW_MULTIPLE) -> int:
    """Pad the rows of every MatMul with constant weights whose activation [B, M, K] has M % multiple != 0
    (the glimpse's 71 tokens) with zero rows, and slice them off after the row-wise ops that follow it (bias Add,
    GELU, Convert): the MLP's two matmuls share one padding. kind "bf16": the MatMuls of a bf16 activation; "int8": the
    MatMuls of an activation quantized by a FakeQuantize (NNCF's static INT8), padded at the FakeQuantize's input so
    that the quantizer still feeds the MatMul (OpenVINO fuses the pair into one INT8 FullyConnected; padding between
    them left the MatMuls in f32). Rows are independent in these ops, so the result is the same but for the kernels'
    accumulation order. Why: OpenVINO's CPU brgemm runs bf16 and INT8 rows faster at a multiple of 8 (f32 gains
    nothing; docs/measurements/2026-12-02-choices.md). Returns how many MatMuls were padded; the model is changed in
    place."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    padded, slices, pads = 0, set(), set()
    element = ov.Type.bf16 if kind == "bf16" else ov.Type.f32
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "MatMul" or not from_constant(op.input_value(1)) \
                or op.get_attributes().get("transpose_a"):
            continue
        port = op.input(0)  # where the padded rows enter: the MatMul, or the FakeQuantize feeding it
        if kind == "int8":
            quantizer = _quantizer(op.input_value(0))
            if quantizer is not None:
                port = quantizer.input(0)
            elif not _behind_layout(op.input_value(0)):  # an f32 MatMul: no gain padded
                continue
        source = port.get_source_output()
        if source.get_node().get_friendly_name() in pads:  # a quantizer shared with an earlier MatMul: padded
            rows = source.get_node().input_value(0).get_partial_shape()[1].get_length()
            op.validate_and_infer_types()
        else:
            shape = source.get_partial_shape()
            if source.get_element_type() != element or not shape.is_static or len(shape) != 3:
                continue
            batch, rows, width = (d.get_length() for d in shape)
            if rows % multiple == 0:
                continue
            if source.get_node().get_friendly_name() in slices:  # rows already padded upstream: the padded tensor
                wide = source.get_node().input_value(0)
            elif kind == "bf16":
                zeros = ops.constant(np.zeros((batch, -rows % multiple, width), np.float32), element)
                wide = ops.concat([source, zeros], 1).output(0)
            else:  # Pad, not Concat: OpenVINO quantized a Concat's rows to i8 and ran those MatMuls in f32
                pad = ops.pad(source, np.array([0, 0, 0]), np.array([0, -rows % multiple, 0]), "constant",
                              ops.constant(np.zeros((), np.float32), element))
                pads.add(pad.get_friendly_name())
                wide = pad.output(0)
            port.replace_source_output(wide)
            port.get_node().validate_and_infer_types()
            op.validate_and_infer_types()
        tail = op
        while len(targets := list(tail.output(0).get_target_inputs())) == 1:
            following, kind_of = targets[0].get_node(), targets[0].get_node().get_type_name()
            if kind_of in ROW_WISE_BINARY:  # the other operand must be a constant that broadcasts over the rows
                other = following.input_value(1 - targets[0].get_index())
                other_shape = other.get_partial_shape()
                if not from_constant(other) or (len(other_shape) >= 2 and other_shape[len(other_shape) - 2] != 1):
                    break
            elif kind_of not in ROW_WISE_UNARY:
                break
            tail = following
            tail.validate_and_infer_types()
        targets = list(tail.output(0).get_target_inputs())
        cut = ops.slice(tail.output(0), np.array([0]), np.array([rows]), np.array([1]), np.array([1]))
        slices.add(cut.get_friendly_name())
        for target in targets:
            target.replace_source_output(cut.output(0))
        padded += 1
    model.validate_nodes_and_infer_types()
    return padded


LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze"}


def _layout_chain(end: Any) -> list[Any]:
    """The layout ops (LAYOUT_OPS, static shapes) that lead to the output `end`, nearest first."""
    chain, start = [], end
    while start.get_node().get_type_name() in LAYOUT_OPS and start.get_partial_shape().is_static:
        chain.append(start.get_node())
        start = start.get_node().input_value(0)
    return chain


def _returns_its_input(chain: list[Any]) -> bool:
    """Whether the layout ops `chain` (nearest the end first) return their input unchanged: applied with numpy to an
    index tensor of the input's shape (a bijection: any reordering shows), not inferred."""
    import numpy as np

    start, end = chain[-1].input_value(0), chain[0].output(0)
    if not start.get_partial_shape().is_static or start.get_shape() != end.get_shape():
        return False
    index = np.arange(int(np.prod(list(start.get_shape())))).reshape(list(start.get_shape()))
    for node in reversed(chain):
        if node.get_type_name() == "Transpose":
            perm = node.input_value(1).get_node()
            if perm.get_type_name() != "Constant":
                return False
            index = np.transpose(index, [int(p) for p in perm.get_vector()])
        else:
            index = index.reshape([int(d) for d in node.get_output_shape(0)])
    return bool(np.array_equal(index.ravel(), np.arange(index.size)))


def drop_identity_layouts(model: Any) -> int:
    """Bypass every chain of two or more layout ops (Reshape/Transpose/Squeeze/Unsqueeze with constant shapes) that
    returns its input unchanged: each reader of the chain's end then reads the chain's start. Why: converting the
    exported attention into ScaledDotProductAttention, OpenVINO 2026.4 transposes K back for the SDPA op after the
    graph's own K^T (torch's export: Reshape, Transpose, Reshape), and the CPU plugin ran both; on the canvas reads
    that is [8, 1040, 128] moved twice per read. Only whole chains (back to a non-layout op) are bypassed: a fused
    attention's keys keep their head split in front of the pair (the plugin's own K^T, merged with a bare head split,
    ran slower: docs/measurements/2026-12-03-canvas-passes.md). Returns how many readers were rewired; the model is
    changed in place."""
    rewired = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() in LAYOUT_OPS:
            continue
        for port in op.inputs():
            chain = _layout_chain(port.get_source_output())
            if len(chain) >= 2 and _returns_its_input(chain):
                port.replace_source_output(chain[-1].input_value(0))
                rewired += 1
    model.validate_nodes_and_infer_types()
    return rewired


def _without_identity_tail(end: Any) -> Any:
    """`end` read past the longest run of layout ops just before it that returns its input (the export's K^T and
    OpenVINO's transpose back, behind a head split that stays): the output that run starts from, else `end`."""
    chain = _layout_chain(end)
    for length in range(len(chain), 1, -1):
        if _returns_its_input(chain[:length]):
            return chain[length - 1].input_value(0)
    return end


def reads_on_matmuls(model: Any, min_ratio: int = 4, min_keys: int = 2048) -> int:
    """Run every bf16 ScaledDotProductAttention with at least min_ratio times more keys than queries and at least
    min_keys keys (the Canvas Reads from canvas 46 up: 71 glimpse queries over the R + G*G canvas tokens) as
    MatMul(Q, K, transpose_b) (times the op's scale, plus its mask), a float32 Softmax (Convert before and after it)
    and MatMul(P, V), instead of the CPU plugin's fused attention: the plugin runs the fused SDPA as a
    `jit_avx512_bf16` Snippets subgraph and these two MatMuls on its AMX brgemm kernels, and the f32 Softmax keeps
    its Snippets from fusing the three back. The same products; the softmax's exponentials and sum in f32 (the fused
    kernel's P is bf16 before P.V, as here). Attention with about as many keys as queries (self-attention) or fewer
    (the Canvas Writes) keeps the fused kernel, faster there, and so do the Reads of small canvases (the CanViT-B
    step was no faster at canvas 32, 1,040 keys; 1.06-1.08x at canvas 64, 4,112 keys). The score MatMul reads the
    keys at their head split, past torch's K^T and OpenVINO's transpose back (_without_identity_tail), so that no
    [8, 128, keys] K^T is moved (0.91x the step's time at canvas 64 on an AMD EPYC).
    Why: docs/measurements/2026-12-03-canvas-passes.md. Returns how many attentions were rewritten; the model is
    changed in place."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rewritten = 0
    for sdpa in list(model.get_ordered_ops()):
        if sdpa.get_type_name() != "ScaledDotProductAttention" or sdpa.get_attributes().get("causal") \
                or sdpa.get_input_element_type(0) != ov.Type.bf16 or not sdpa.get_input_partial_shape(0).is_static \
                or not sdpa.get_input_partial_shape(1).is_static:
            continue
        queries, keys = sdpa.get_input_shape(0)[-2], sdpa.get_input_shape(1)[-2]
        extras = [sdpa.input_value(i) for i in range(3, sdpa.get_input_size())]  # attention mask, then scale
        if keys < min_ratio * queries or keys < min_keys \
                or any(e.get_node().get_type_name() != "Constant" for e in extras):
            continue
        scores = ops.matmul(sdpa.input_value(0), _without_identity_tail(sdpa.input_value(1)), False, True).output(0)
        head_dim = sdpa.get_input_shape(0)[-1]
        scale = extras[1] if len(extras) > 1 else ops.constant(np.float32(head_dim ** -0.5), ov.Type.bf16).output(0)
        scores = ops.multiply(scores, scale).output(0)
        if extras and (extras[0].get_element_type() == ov.Type.boolean or extras[0].get_node().get_data().any()):
            mask = extras[0]  # an all-zero additive mask (torch's export passes one) is left out
            if mask.get_element_type() == ov.Type.boolean:  # True keeps a key, False drops it (the op's rule)
                mask = ops.select(mask, ops.constant(np.float32(0), ov.Type.bf16),
                                  ops.constant(np.float32(-np.inf), ov.Type.bf16)).output(0)
            scores = ops.add(scores, mask).output(0)
        weights = ops.convert(ops.softmax(ops.convert(scores, ov.Type.f32), -1), ov.Type.bf16)
        out = ops.matmul(weights, sdpa.input_value(2), False, False)
        out.set_friendly_name(sdpa.get_friendly_name())  # profiles keep the attention's name
        for target in list(sdpa.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


def layer_norm_per_reader(model: Any) -> dict[str, set[str]]:
    """Give each reader of a LayerNorm's output beyond the first its own affine: MVN -> Multiply(gamma) -> Add(beta)
    read by N ops becomes N affines over the one MVN. Why: a Canvas Read's keys and values both read ln_kv(canvas),
    and the CPU plugin rotates the keys in place (its RoPE node), so it copied the whole shared LayerNorm output for
    them first (a canvas-sized Reorder per Read, 1.2-1.3 ms at canvas 64); with an affine of their own the keys'
    RoPE rotates that, and the Reorder is gone (0.97x the step at canvas 64 on an AMD EPYC: the copy cost more than
    the second affine pass). The same products in the same order (the CanViT-B step's outputs were bitwise those
    of the shared form; a kernel that fuses the multiply-add may move an ulp).
    The copy multiplies gamma by the normalized tensor (operands swapped) so that OpenVINO's merge of identical ops
    does not fold it back. Returns {each copy's output tensor name: the LayerNorm output's tensor names} (so that the
    compiled-model audit protects a copy of a protected op); the model is changed in place."""
    import openvino.opset13 as ops

    copies: dict[str, set[str]] = {}
    for add in list(model.get_ordered_ops()):
        if add.get_type_name() != "Add" or len(add.output(0).get_target_inputs()) < 2:
            continue
        mul, beta = add.input_value(0).get_node(), add.input_value(1)
        if mul.get_type_name() != "Multiply" or mul.input_value(0).get_node().get_type_name() != "MVN" \
                or mul.input_value(1).get_node().get_type_name() != "Constant" \
                or beta.get_node().get_type_name() != "Constant":
            continue
        readers = sorted(add.output(0).get_target_inputs(),  # a set: sorted, so the IR is the same every time
                         key=lambda r: (r.get_node().get_friendly_name(), r.get_index()))
        for k, reader in enumerate(readers[1:], 1):
            own = ops.add(ops.multiply(mul.input_value(1), mul.input_value(0)), beta)
            name = f"{add.get_friendly_name()}/reader{k}"
            own.set_friendly_name(name)
            own.output(0).set_names({name})
            copies[name] = set(add.output(0).get_names())
            reader.replace_source_output(own.output(0))
    model.validate_nodes_and_infer_types()
    return copies


def probe_as_matmul(model: Any) -> int:
    """Run every 1x1 Convolution that reads channels-last tokens through a Transpose to NCHW (the segmentation probe:
    canvas tokens [B, G, G, C] -> permute -> BatchNorm, folded by OpenVINO into a per-channel Multiply and Add -> 1x1
    conv, canvit_pytorch.probes.SegmentationProbe) as a MatMul on the channels-last tokens instead, transposing its
    [B, G, G, classes] result to NCHW: the same products, but the CPU plugin no longer moves the [B, C, G, G] canvas
    grid twice (the graph's permute, then its reorder back to channels-last for the convolution) per glimpse. The
    per-channel Multiply/Add between them are kept, on the last axis. Returns how many convolutions were replaced;
    the model is changed in place."""
    import numpy as np
    import openvino.opset13 as ops

    replaced = 0
    for conv in list(model.get_ordered_ops()):
        if conv.get_type_name() != "Convolution" or conv.input_value(1).get_node().get_type_name() != "Constant":
            continue
        weights = conv.input_value(1).get_node().get_data()
        flags = conv.get_attributes()
        if weights.shape[2:] != (1, 1) or list(flags["strides"]) != [1, 1] or list(flags["dilations"]) != [1, 1] \
                or any(flags["pads_begin"]) or any(flags["pads_end"]):
            continue
        channels = weights.shape[1]
        affine, node = [], conv.input_value(0).get_node()
        while node.get_type_name() in ("Multiply", "Add") and len(node.output(0).get_target_inputs()) == 1:
            constant = node.input_value(1).get_node()
            if constant.get_type_name() != "Constant" or constant.get_data().size != channels \
                    or list(constant.get_output_shape(0)) != [1, channels, 1, 1]:
                break
            affine.append((node.get_type_name(), constant.get_data().reshape(channels)))
            node = node.input_value(0).get_node()
        else:
            if node.get_type_name() != "Transpose" or node.input_value(1).get_node().get_type_name() != "Constant" \
                    or [int(p) for p in node.input_value(1).get_node().get_vector()] != [0, 3, 1, 2]:
                continue
            tokens = node.input_value(0)
            for kind, values in reversed(affine):
                operand = ops.constant(values.astype(np.float32))
                tokens = (ops.multiply if kind == "Multiply" else ops.add)(tokens, operand).output(0)
            product = ops.matmul(tokens, ops.constant(weights.reshape(weights.shape[0], channels)), False, True)
            nchw = ops.transpose(product, ops.constant(np.array([0, 3, 1, 2], np.int64)))
            product.set_friendly_name(conv.get_friendly_name())  # the audit and NNCF know the probe by these names
            nchw.output(0).set_names(conv.output(0).get_names())
            for target in list(conv.output(0).get_target_inputs()):
                target.replace_source_output(nchw.output(0))
            replaced += 1
    model.validate_nodes_and_infer_types()
    return replaced


def choose_precision(source: Manifest, precision: str | None) -> str:
    """The IR's precision word: the ONNX artifact's own (OpenVINO runs the graph's types), optionally with INT8
    weights (`<its precision>-int8w`). ExportError for another compute precision, naming the export to run first:
    converting never goes back to PyTorch."""
    own = source.precision.name
    allowed: tuple[str, ...] = (own, with_int8_weights(own)) if own in ("fp32", "fp16", "bf16") else (own,)
    if own == "fp32":
        allowed += ("int8",)  # static INT8 is quantized from the fp32 graph
    if precision is None:
        return own
    try:
        precision_info(precision)
    except ValueError as error:
        raise ExportError(str(error)) from error
    if precision not in allowed:
        base = "fp32" if precision == "int8" else PRECISIONS[precision].base
        raise ExportError(f"{source.directory} is {a_precision(own)} graph and OpenVINO keeps the graph's types, so "
                          f"the IR can be {', '.join(allowed[:-1])} or {allowed[-1]}; for {precision}, export the {base} "
                          f"graph first (`canvit-export onnx --precision {base} ...`) and convert that")
    return precision


def export_openvino(artifact: Path, out: Path | None, *, precision: str | None = None, stateful: bool = True,
                    calibration: Path | None = None, force: bool = False, quiet: bool = False) -> Manifest:
    """Write out/step.xml + step.bin (+ initial_state.bin, manifest.json) atomically; return the manifest.

    The IR runs the ONNX artifact's own types (fp32, or the fp16/bf16 mixed graph whose canvas path is float32);
    precision None keeps them, `<its precision>-int8w` also compresses the matmul weights to INT8 with NNCF.
    Default out: <artifact>-openvino-<precision>[-stateless]. Raises ExportError when the artifact is missing or
    altered, the precision is another compute precision, NNCF is missing for INT8 weights, or a protected node of
    the compiled model outputs less than f32.
    """
    import openvino as ov

    source = load_source_artifact(artifact, target="OpenVINO")
    label = choose_precision(source, precision)
    int8_weights, int8_static = PRECISIONS[label].int8_weights, PRECISIONS[label].int8_static
    refuse_unused_calibration(calibration, int8_static)
    out = out or artifact.with_name(f"{artifact.name}-openvino-{label}{'' if stateful else '-stateless'}")
    stages = Stages(4 if int8_weights else 5 if int8_static else 3, quiet=quiet)
    inputs = (artifact,) if calibration is None else (artifact, calibration)
    with staged_artifact(out, force=force, inputs=inputs) as staging, tempfile.TemporaryDirectory(dir=staging.parent) as work:
        calib = None
        if int8_static:
            with stages.stage("calibration set (the step's inputs over rollouts of the fp32 graph)"):
                calib = resolve_calibration(source, calibration, Path(work), quiet=quiet)
        with stages.stage(f"converting the {source.precision.name} ONNX graph to OpenVINO"):
            model, protected = _convert(ov, source, artifact, Path(work), int8_static=int8_static)
            if label == "bf16":
                pad_rows(model, "bf16")
                reads_on_matmuls(model)
        if int8_weights:
            with stages.stage("compressing weights to INT8 (NNCF)"):
                model = compress_int8(model, protected_ops(model, protected))
        int8_facts: dict[str, Any] = {}
        if calib is not None:
            with stages.stage(f"quantizing to static INT8 with NNCF ({calib.count} calibration samples)"):
                model, int8_facts = quantize_openvino(model, calib, protected)
                padded = pad_rows(model, "int8")
                int8_facts["quantizer"] += f"; rows of {padded} INT8 MatMuls padded to a multiple of {ROW_MULTIPLE}"
        probe_as_matmul(model)  # after NNCF, which leaves the probe's convolution float (a readout is protected)
        protected = protected | {copy for copy, of in layer_norm_per_reader(model).items() if of & protected}
        with stages.stage("compiling on CPU and auditing the canvas path in the compiled model's runtime info"):
            audit = _audit_compiled(ov, model, protected)
        with stages.stage("making the state variables and saving the IR" if stateful else "saving the stateless IR"):
            variables = _make_stateful(model, source) if stateful else {}
            save_ir(ov, model, staging / IR_FILE)
            copy_initial_state(source, staging)
            fields = derived_fields(source)
            if stateful:  # the state is no longer graph I/O: it lives in the variables
                fields["inputs"] = [t for t in source.inputs if t.role != ROLE_STATE]
                fields["outputs"] = [t for t in source.outputs if t.role != ROLE_STATE]
            fields["state"] = [p.model_copy(update={"variable": variables.get(p.input)}) for p in source.state]
            if int8_weights:
                fields["precision"] = source.precision.model_copy(update={"name": label,
                                                                          "weights": "int8-asym-per-channel"})
            if calib is not None:
                fields["precision"] = int8_record(calib, int8_facts)
            manifest = finish_manifest(
                staging, {"ir": IR_FILE, "weights": WEIGHTS_FILE, "initial_state": INITIAL_STATE_FILE},
                ("openvino", "nncf"),
                artifact=OpenVinoArtifact(
                    target="openvino", stateful=stateful, openvino=ov.get_version(), source=source_record(source),
                    compiled_audit=CompiledAudit(**audit, compiled="the stateless twin on CPU, f32 hint")),
                **fields)
    return manifest.at(out)


def _convert(ov: Any, source: Manifest, artifact: Path, work: Path, *, int8_static: bool) -> tuple[Any, set[str]]:
    """The artifact's checksummed ONNX graph converted to an OpenVINO model (identity layouts dropped), and the
    tensors the compiled audit holds to f32: static INT8 may quantize the canvas LayerNorm outputs at a projection's
    input (as bf16 casts them), so it holds the unquantizable tensors, the others everything protected."""
    graph = work / "step.onnx"  # the checksummed bytes, with no unlisted external data
    graph.write_bytes(verified_onnx(source))
    source_model = onnx.load(str(graph))
    check_graph_io(source, *onnx_io(source_model))
    source_audit = audit_onnx(source_model)
    protected = source_audit.unquantizable if int8_static else source_audit.protected
    try:
        model = ov.convert_model(str(graph))
    except Exception as error:  # OpenVINO's frontends refuse an op they do not know, in many lines
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise ExportError(f"{artifact}: OpenVINO cannot convert this graph ({lines[-1][:160] if lines else error}); "
                          f"re-export the ONNX artifact with canvit-export") from error
    drop_identity_layouts(model)
    return model, protected


def _audit_compiled(ov: Any, model: Any, protected: set[str]) -> dict[str, Any]:
    """Compile a clone on CPU (f32 hint) and audit the canvas path in its runtime info; raise ExportError on a
    narrowed protected node or when too few are found to vouch for it. Audited before MakeStateful: OpenVINO's
    runtime model of a result-less stateful graph lists only its inputs, and MakeStateful changes nothing else."""
    twin = model.clone()
    compiled = ov.Core().compile_model(twin, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    audit = audit_compiled(compiled, protected_ops(twin, protected))
    if audit["violations"]:
        raise ExportError(f"the compiled model breaks the float32 rule: {audit['violations'][0]} "
                          f"(+{len(audit['violations']) - 1} more)")
    if audit["checked"] < 10:
        raise ExportError(f"only {audit['checked']} protected nodes found in the compiled model: the audit "
                          f"cannot vouch for the canvas path")
    return audit


def _make_stateful(model: Any, source: Manifest) -> dict[str, str]:
    """Swap the state's Parameter/Result pairs for ReadValue/Assign variables (MakeStateful); return {state input:
    variable id}, OpenVINO naming each variable by the two tensor names joined. Raises ExportError otherwise."""
    from openvino import passes

    pairs = dict(source.state_pairs)
    manager = passes.Manager()
    manager.register_pass(passes.MakeStateful(pairs))
    manager.run_passes(model)
    found = {op.get_variable_id() for op in model.get_ops() if op.get_type_name() == "ReadValue"}
    variables = {inp: inp + out for inp, out in pairs.items()}
    if set(variables.values()) != found:
        raise ExportError(f"MakeStateful made variables {sorted(found)}, expected {sorted(variables.values())}")
    return variables


def save_ir(ov: Any, model: Any, path: Path) -> None:
    """ov.save_model (no fp16 compression), its write failures made errors a user can act on: OpenVINO's writer reports a
    full disk as RuntimeError "basic_ios::clear: iostream error" (and deletes what it wrote), raised here as OSError
    ENOSPC when the disk has less room than the model's constants take (the CLI names the --out and the fix), else
    ExportError with OpenVINO's words.

    Raises:
        OSError: ENOSPC, the disk holding `path` is full.
        ExportError: OpenVINO failed to write the IR for another reason.
    """
    import errno
    import os
    import shutil

    try:
        ov.save_model(model, str(path), compress_to_fp16=False)
    except RuntimeError as error:
        weights = sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant")
        if shutil.disk_usage(path.parent).free < weights:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise ExportError(f"OpenVINO could not write the IR {path.name}: {error}") from None
