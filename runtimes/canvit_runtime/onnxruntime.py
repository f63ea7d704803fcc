"""ONNX Runtime runner: the artifact's step.onnx in an InferenceSession (CPU by default).

ONNX Runtime's CPU execution provider has no bfloat16 kernels (MatMul, Add, Softmax, ...). A bf16 graph is
therefore run through `emulate_bfloat16`: every bfloat16 tensor becomes float32 rounded to bfloat16 where it is
produced (Cast to bfloat16 and back), so storage rounding is exact and arithmetic inside each op is float32, as
on GPUs with float32 accumulation. The report of such a run says "bfloat16 emulated".

A static INT8 graph (canvit-export onnx --precision int8) is S8S8: int8 activations with zero point 0, the only
Q/DQ form TensorRT takes. ONNX Runtime's x86 integer matmuls (MLAS, AVX2/AVX-512 VNNI) take unsigned activations;
ONNX Runtime itself turns S8 activations to U8 on x86 (its QDQS8ToU8Transformer), but not where a
DequantizeLinear feeds several nodes, as in this graph. So on the CPU provider of an x86-64 machine (on ARM ONNX
Runtime runs S8S8 natively) `unsigned_activations` rewrites every activation Q/DQ pair to uint8 with zero point 128,
which represents the same values: the same quantized arithmetic (with ONNX Runtime's own U8S8 caveat: on AVX2
without VNNI its kernels may saturate int16 sums), and faster. The two runs are not bitwise equal: ONNX Runtime
fuses a few matmuls differently (integer instead of float on dequantized weights), and INT8's requantization
amplifies those float roundings; both are as far from the fp32 graph (docs/measurements/2026-12-02-choices.md).
"""

from __future__ import annotations

import platform

import numpy as np

from canvit_runtime.base import HostStateRunner, check_target
from canvit_runtime.manifest import Manifest, verified_onnx


def emulate_bfloat16(model):  # onnx.ModelProto -> onnx.ModelProto
    """A float32 graph equal to `model` with every bfloat16 tensor rounded to bfloat16 where it is produced.

    bfloat16 initializers and Constant values are widened exactly to float32; each node that produced a bfloat16
    output now produces float32 and is followed by Cast(to=BFLOAT16) -> Cast(to=FLOAT), which rounds (round to
    nearest even) and widens back. Casts to bfloat16 keep their rounding the same way.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.input, *inferred.graph.output,
                                                            *inferred.graph.value_info)}
    graph = model.graph

    def widen(tensor: onnx.TensorProto) -> onnx.TensorProto:
        bits = np.frombuffer(tensor.raw_data, dtype=np.uint16) if tensor.raw_data else \
            np.asarray(tensor.int32_data, dtype=np.uint16)
        values = (bits.astype(np.uint32) << 16).view(np.float32).reshape(tuple(tensor.dims))
        return numpy_helper.from_array(values, tensor.name)

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.BFLOAT16:
            graph.initializer[i].CopyFrom(widen(init))
            types[init.name] = TensorProto.BFLOAT16
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.BFLOAT16:
                    attr.t.CopyFrom(widen(attr.t))
                    types[node.output[0]] = TensorProto.BFLOAT16
            nodes.append(node)
            continue
        rounded = [out for out in node.output if out and types.get(out) == TensorProto.BFLOAT16]
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == TensorProto.BFLOAT16:
                nodes.append(node)  # keeps rounding to bfloat16 ...
                widened = helper.make_node("Cast", [node.output[0] + "_bf16"], [node.output[0]], to=TensorProto.FLOAT)
                node.output[0] += "_bf16"
                nodes.append(widened)  # ... and widens back
                continue
        nodes.append(node)
        for out in rounded:
            index = list(node.output).index(out)
            node.output[index] = out + "_f32"
            nodes.append(helper.make_node("Cast", [out + "_f32"], [out + "_bf16"], to=TensorProto.BFLOAT16))
            nodes.append(helper.make_node("Cast", [out + "_bf16"], [out], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    for value in graph.value_info:
        if value.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def unsigned_activations(model):  # onnx.ModelProto -> tuple[onnx.ModelProto, int]
    """`model` with each activation QuantizeLinear -> DequantizeLinear pair of int8, zero point 0 turned into uint8,
    zero point 128; returns it and the number of QuantizeLinear nodes rewritten.

    Exact per op: DQ(Q_u8(x)) = (clamp(round(x / s) + 128, 0, 255) - 128) s = clamp(round(x / s), -128, 127) s = DQ(Q_s8(x)),
    and ONNX Runtime's fused integer matmuls subtract the zero points before accumulating in int32. Weights
    (int8 initializers behind a DequantizeLinear, no QuantizeLinear) stay int8. A QuantizeLinear whose output is a
    graph output or feeds anything but DequantizeLinear nodes with an int8 zero point 0 is left as it is; a graph
    with subgraphs (If, Loop, Scan) is returned unchanged (their reads are not followed here).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in graph.node
           for attr in node.attribute):
        return model, 0
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def signed_zero(name: str) -> bool:
        init = inits.get(name)
        return init is not None and init.data_type == TensorProto.INT8 and not numpy_helper.to_array(init).any()

    unsigned: dict[tuple[int, ...], str] = {}
    rewritten: set[str] = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not signed_zero(node.input[2]):
            continue
        users = consumers.get(node.output[0], [])
        if node.output[0] in outputs or not users or any(
                u.op_type != "DequantizeLinear" or len(u.input) < 3 or u.input[0] != node.output[0]
                or not signed_zero(u.input[2]) for u in users):
            continue
        dims = tuple(inits[node.input[2]].dims)
        if dims not in unsigned:
            unsigned[dims] = f"canvit_u8_zero_point_{len(unsigned)}"
            graph.initializer.append(numpy_helper.from_array(np.full(dims, 128, np.uint8), unsigned[dims]))
        for n in (node, *users):
            n.input[2] = unsigned[dims]
        rewritten.add(node.output[0])
    for value in graph.value_info:
        if value.name in rewritten:
            value.type.tensor_type.elem_type = TensorProto.UINT8
    used = {name for node in graph.node for name in node.input} | {v.name for v in (*graph.input, *graph.output)}
    kept = [init for init in graph.initializer if init.name in used or init.name not in consumers]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # the int8 zero points no node reads now (ONNX Runtime warns of each)
    return model, len(rewritten)


def session_options(threads: int | None = None, *, spinning: bool = False):  # -> onnxruntime.SessionOptions
    """The options of every ONNX Runtime session here (OnnxRuntimeRunner, canvit-export's peer baseline): `threads`
    intra-op threads (None: ONNX Runtime's default), every graph optimization, and the intra-op workers spinning
    between runs only with `spinning` (why: OnnxRuntimeRunner)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntimeRunner(HostStateRunner):
    """Runs step.onnx with ONNX Runtime; `providers` defaults to ["CPUExecutionProvider"], `threads` sets
    intra-op threads (None: ONNX Runtime's default, one per physical core). A bfloat16 graph on the CPU
    provider (the manifest's matmul dtype) runs through emulate_bfloat16 (`self.emulated` is then "bfloat16"),
    which needs the onnx package; an int8 graph on it runs on x86-64 with unsigned activations
    (`unsigned_activations`: the same quantized values, not bitwise the same step; `self.activations` is then
    "uint8"). `profile`: a file-name prefix: ONNX Runtime's profiler
    records every node's time (Chrome trace JSON, written by `self.session.end_profiling()`). `spinning`: let the
    intra-op workers spin between steps (ONNX Runtime's default). Off here: on 2 cores their spinning, long after a
    step, slowed whatever ran next, and the step was no faster with it (docs/measurements/2026-12-02-choices.md)."""

    name = "onnxruntime"

    released = ("session",)

    def __init__(self, manifest: Manifest, *, threads: int | None = None, providers: list[str] | None = None,
                 profile: str | None = None, spinning: bool = False) -> None:
        import onnxruntime as ort

        super().__init__(manifest)
        check_target(manifest, self.name, "ONNX Runtime runs ONNX artifacts (canvit-export onnx)")
        providers = providers or ["CPUExecutionProvider"]
        options = session_options(threads, spinning=spinning)
        if profile is not None:
            options.enable_profiling, options.profile_file_prefix = True, profile
        graph = verified_onnx(manifest)  # the checksummed bytes run, and no unlisted external data
        if providers == ["CPUExecutionProvider"] and manifest.precision.matmul_dtype == "bfloat16":
            import onnx

            graph, self.emulated = emulate_bfloat16(onnx.load_model_from_string(graph)).SerializeToString(), "bfloat16"
        elif (providers == ["CPUExecutionProvider"] and manifest.precision.matmul_dtype == "int8"
              and platform.machine().lower() in ("x86_64", "amd64")):
            from onnx import load_model_from_string

            model, rewritten = unsigned_activations(load_model_from_string(graph))
            if rewritten:
                graph, self.activations = model.SerializeToString(), "uint8"
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._check_graph_io({i.name: i.shape for i in self.session.get_inputs()},
                             {o.name: o.shape for o in self.session.get_outputs()})

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds), strict=True))
