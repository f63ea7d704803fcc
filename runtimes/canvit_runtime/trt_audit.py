"""A static TensorRT audit of an ONNX graph: what TensorRT's ONNX parser takes in strongly typed mode, checked without
TensorRT or a GPU, before any engine build.

The support matrix is data, `tensorrt_onnx_support.json` beside this file, built from onnx-tensorrt's
`docs/operators.md` as read (not recalled):

* "10.3": onnx/onnx-tensorrt tag release/10.1-GA, commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c (the nearest
  earlier table: release/10.3-GA's was not reachable here; assuming minor releases only add support, this can refuse
  what 10.3 takes, never pass what it refuses).
* "11.1" and "10.15": the TensorRT 10.15 GA operators.md, the newest table reachable (no 11.x table was; onnx-tensorrt
  has since released 11.5-GA).
* Strong typing: NvInfer.h (NetworkDefinitionCreationFlag::kSTRONGLY_TYPED; IQuantizeLayer/IDequantizeLayer setToType)
  and NvInferRuntimeBase.h (DataType: no DOUBLE; kINT8 is "a quantized floating-point value"); operators.md's notes
  (INT8/INT4/FP8/FP4 only through quantization, UINT8 only as network I/O); TensorRT 11 is strongly typed only.
* BF16 needs compute capability >= 8.0 (TensorRT support matrix, Hardware and Precision; Transformer Engine's support
  matrix): Jetson AGX Orin (8.7) yes, Jetson AGX Xavier (7.2) no.

Each version's entry in the JSON names its document (`doc_release`, `source`) and its caveat. This module imports
`onnx` lazily and numpy only otherwise; it never loads external weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from canvit_runtime.paths import ExportError

if TYPE_CHECKING:
    import onnx

SUPPORT_PATH = Path(__file__).with_name("tensorrt_onnx_support.json")
AUDITED_VERSIONS: Tuple[str, ...] = ("10.3", "11.1", "10.15")
STANDARD_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = ("FP32", "FP16", "BF16")


@dataclass(frozen=True)
class Finding:
    """One thing TensorRT's ONNX parser would refuse: the node, its op, the element type at stake, the version."""

    node: str
    op: str
    dtype: Optional[str]
    version: str
    reason: str
    fix: Optional[str]

    def line(self) -> str:
        """One line naming node, op, dtype and TensorRT version, and the fix when there is one."""
        what = f"{self.op}, {self.dtype}" if self.dtype else self.op
        text = f"node {self.node} ({what}): TensorRT {self.version}'s ONNX parser {self.reason}"
        return f"{text}; fix: {self.fix}" if self.fix else text


@lru_cache(maxsize=1)
def _support() -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(SUPPORT_PATH.read_text(encoding="utf-8"))
    return data


def load_support() -> Dict[str, Any]:
    """The support matrix (tensorrt_onnx_support.json): "sources", "versions" -> {version: {"operators": ...}}."""
    return _support()


def _onnx_type_names() -> Dict[int, str]:
    """TensorProto element type -> the doc's type name (FP32, BF16, INT64...), unknown types by their ONNX name."""
    import onnx

    names = _support()["type_names"]
    table: Dict[int, str] = {}
    for name, number in onnx.TensorProto.DataType.items():
        table[number] = names.get(name, name)
    return table


def _elem_types(model: "onnx.ModelProto") -> Dict[str, int]:
    """Every typed tensor name -> its element type, after shape inference (value_info, I/O, initializers)."""
    import onnx

    types: Dict[str, int] = {}
    # Inference runs on a copy whose large initializers carry type and dims only: infer_shapes serializes its
    # argument, and a 95M-parameter graph's weights would be copied for types that do not depend on them.
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() <= 4096:
            graph.initializer.append(init)
        else:
            graph.initializer.append(_typed_stub(init))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=False)
    except Exception:  # inference is best effort: the declared types below still count
        inferred = light

    def take(graph: "onnx.GraphProto") -> None:
        for init in graph.initializer:
            types[init.name] = init.data_type
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        types.setdefault(node.output[0], attr.t.data_type)
            for attr in node.attribute:
                for sub in _subgraphs(attr):
                    take(sub)

    take(inferred.graph)
    return types


def _typed_stub(init: Any) -> Any:
    """An initializer's name, element type and dims, without its data."""
    import onnx

    stub = onnx.TensorProto()
    stub.name = init.name
    stub.data_type = init.data_type
    stub.dims.extend(init.dims)
    return stub


def _subgraphs(attr: Any) -> List[Any]:
    import onnx

    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _walk(graph: Any) -> List[Tuple[Any, Any]]:
    """(node, graph) for every node, subgraphs of If/Loop/Scan included."""
    out: List[Tuple[Any, Any]] = []
    for node in graph.node:
        out.append((node, graph))
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                out.extend(_walk(sub))
    return out


def _attr(node: Any, name: str) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _constant_names(model: "onnx.ModelProto") -> Tuple[set, set]:
    """(strict, folded): names that are initializers or Constant outputs; and those plus anything computed only from
    constants (what "resolvable to a constant" admits once the parser folds them)."""
    strict: set = set()
    folded: set = set()
    graph_inputs: set = set()
    for node, graph in _walk(model.graph):
        strict.update(i.name for i in graph.initializer)
        graph_inputs.update(i.name for i in graph.input)
        if node.op_type in ("Constant",):
            strict.update(node.output)
    folded.update(strict)
    folded.difference_update(graph_inputs - {i.name for i in model.graph.initializer})
    for node, _ in _walk(model.graph):
        if node.op_type.startswith("Random"):
            continue
        if all((not name) or name in folded for name in node.input) and node.input:
            folded.update(node.output)
    return strict, folded


def _constant_tensors(model: "onnx.ModelProto") -> Dict[str, Any]:
    """Name -> TensorProto of every initializer and Constant value (indexed once: Q/DQ graphs have hundreds)."""
    tensors: Dict[str, Any] = {}
    for node, graph in _walk(model.graph):
        for init in graph.initializer:
            tensors.setdefault(init.name, init)
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value")
            if value is not None:
                tensors[node.output[0]] = value
    for init in model.graph.initializer:
        tensors[init.name] = init
    return tensors


def _is_zero(tensors: Dict[str, Any], name: str) -> Optional[bool]:
    """Whether the inline constant `name` is all zeros; None when unknown (not a constant, or external data)."""
    import onnx.numpy_helper

    tensor = tensors.get(name)
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return bool((onnx.numpy_helper.to_array(tensor) == 0).all())


def _fix_for_type(op: str, dtype: str, allowed: Sequence[str]) -> str:
    floats = [t for t in allowed if t in FLOAT_TYPES]
    if dtype in ("INT8", "INT4", "FP8", "FP4"):
        return f"keep {dtype} between QuantizeLinear and DequantizeLinear (explicit Q/DQ); feed {op} {'/'.join(floats)}"
    if dtype == "DOUBLE":
        return "export float32 (TensorRT has no DOUBLE type)"
    if floats and dtype in FLOAT_TYPES:
        return f"export {op} in {' or '.join(floats)}"
    return f"give {op} one of {', '.join(allowed)}" if allowed else f"replace {op}"


def audit_model(model: "onnx.ModelProto", version: str, *,
                compute_capability: Optional[float] = None) -> List[Finding]:
    """Every finding for `model` under TensorRT `version` (a key of AUDITED_VERSIONS); [] when the parser takes it."""
    support = _support()
    if version not in support["versions"]:
        raise ExportError(f"no TensorRT support data for version {version!r}: audited versions are "
                          f"{', '.join(support['versions'])}")
    spec = support["versions"][version]
    operators: Dict[str, Any] = spec["operators"]
    quantized = set(spec["quantized_types"])
    io_only = set(spec["io_only_types"])
    bf16_min = float(support["bf16"]["min_compute_capability"])
    names = _onnx_type_names()
    types = _elem_types(model)
    strict, folded = _constant_names(model)
    tensors = _constant_tensors(model)
    io_names = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    producers = {out: node.op_type for node, _ in _walk(model.graph) for out in node.output}
    findings: List[Finding] = []

    for node, _graph in _walk(model.graph):
        name = node.name or (node.output[0] if node.output else node.op_type)
        op = node.op_type

        def add(reason: str, fix: Optional[str], dtype: Optional[str] = None, node_name: str = name,
                op_type: str = op) -> None:
            findings.append(Finding(node=node_name, op=op_type, dtype=dtype, version=version, reason=reason, fix=fix))

        if node.domain not in STANDARD_DOMAINS:
            add(f"has no importer for custom op domain {node.domain!r}",
                "export it with standard ONNX ops, or register a TensorRT plugin of that name")
            continue
        entry = operators.get(op)
        if entry is None or not entry["supported"]:
            listed = "marks it unsupported (N)" if entry is not None else "does not list it"
            add(f"does not take {op} (operators.md {listed})", "export it with ops the table marks Y")
            continue
        allowed: List[str] = entry["types"]
        checked = entry.get("checked", {})
        in_idx = checked.get("inputs", list(range(len(node.input))))
        out_idx = checked.get("outputs", [])
        met: List[Tuple[str, str]] = []
        for i in in_idx:
            if i < len(node.input) and node.input[i] and node.input[i] in types:
                met.append((node.input[i], names.get(types[node.input[i]], str(types[node.input[i]]))))
        for i in out_idx:
            if i < len(node.output) and node.output[i] and node.output[i] in types:
                met.append((node.output[i], names.get(types[node.output[i]], str(types[node.output[i]]))))
        seen: set = set()
        for tensor, dtype in met:
            if dtype in seen:
                continue
            seen.add(dtype)
            if dtype in io_only and tensor in io_names and op in ("Cast", "CastLike", "Identity"):
                continue
            if dtype not in allowed:
                add(f"does not take {dtype} {op} (supported types: {', '.join(allowed)})",
                    _fix_for_type(op, dtype, allowed), dtype)
            elif dtype in quantized and op not in ("DequantizeLinear", "Constant", "ConstantOfShape") \
                    and producers.get(tensor) != "QuantizeLinear":
                add(f"takes {dtype} only as a quantized type, from QuantizeLinear (no implicit quantization)",
                    "insert QuantizeLinear/DequantizeLinear around it", dtype)
            elif dtype == "BF16" and compute_capability is not None and compute_capability < bf16_min:
                add(f"cannot run BF16 on compute capability {compute_capability:g} (BF16 needs >= {bf16_min:g})",
                    "export fp16 or fp32 for this device", dtype)
        if op == "QuantizeLinear" and len(node.output) and node.output[0] in types:
            qtype = names.get(types[node.output[0]], "")
            if qtype not in quantized:
                add(f"quantizes only to {', '.join(sorted(quantized))}, not {qtype}", "quantize to INT8", qtype)
        for rule in entry.get("rules", []):
            problem = _check_rule(tensors, node, rule, strict, folded)
            if problem:
                add(f"{problem} (a restriction in operators.md)", _rule_fix(rule))
    return findings


def _check_rule(tensors: Dict[str, Any], node: Any, rule: Dict[str, Any], strict: set, folded: set) -> Optional[str]:
    """The rule's violation in words, or None."""
    kind = rule["kind"]
    if kind == "attr_in":
        value = _attr(node, rule["attr"])
        value = rule["default"] if value is None else value
        if value not in rule["allowed"]:
            return f"does not take {rule['attr']}={value!r}"
    elif kind == "attr_all_ones":
        value = _attr(node, rule["attr"])
        if value and any(v != 1 for v in value):
            return f"takes only {rule['attr']} of all ones, not {list(value)}"
    elif kind == "attr_len_in":
        value = _attr(node, rule["attr"])
        if value is not None and len(value) not in rule["allowed"]:
            return f"takes only {rule['attr']} of length {rule['allowed']}, not {len(value)}"
    elif kind == "attr_absent":
        present = [a.name for a in node.attribute if a.name in rule["attrs"]]
        if present:
            return f"does not take attribute {present[0]}"
    elif kind == "output_absent":
        i = rule["index"]
        if i < len(node.output) and node.output[i]:
            return f"does not produce output #{i}"
    elif kind == "const_input":
        i = rule["index"]
        if i < len(node.input) and node.input[i]:
            ok = folded if rule.get("folded_ok") else strict
            if node.input[i] not in ok:
                return f"needs input #{i} ({node.input[i]}) to be an initializer or Constant"
    elif kind == "zero_input":
        i = rule["index"]
        if i < len(node.input) and node.input[i] and _is_zero(tensors, node.input[i]) is False:
            return f"needs zero point {node.input[i]} to be zero"
    return None


def _rule_fix(rule: Dict[str, Any]) -> Optional[str]:
    kind = rule["kind"]
    if kind == "attr_in":
        return f"set {rule['attr']} to one of {', '.join(map(str, rule['allowed']))}"
    if kind == "attr_all_ones":
        return f"drop {rule['attr']} or make it all ones"
    if kind == "const_input":
        return "fold that input to a constant at export (constant folding)"
    if kind == "zero_input":
        return "quantize symmetrically (zero point 0)"
    if kind == "output_absent":
        return "leave that output unused (empty name)"
    return None


def _load(path: Path) -> "onnx.ModelProto":
    import onnx

    # External weights stay on disk: the audit reads types and attributes, never the weights themselves.
    return onnx.load(str(path), load_external_data=False)


def audit_graph_file(path: Path, versions: Sequence[str] = AUDITED_VERSIONS,
                     compute_capability: Optional[float] = None) -> Dict[str, List[Finding]]:
    """{version: findings} for the ONNX graph at `path` (external data is not loaded)."""
    model = _load(Path(path))
    return {v: audit_model(model, v, compute_capability=compute_capability) for v in versions}


def check(path_or_model: Union[Path, str, "onnx.ModelProto"], versions: Sequence[str] = AUDITED_VERSIONS,
          compute_capability: Optional[float] = None) -> Dict[str, int]:
    """{version: distinct op types checked, ..., "nodes": nodes checked}; raises ExportError with the first finding's
    one line (plus " (and N more)") when any version refuses anything."""
    model = path_or_model if not isinstance(path_or_model, (str, Path)) else _load(Path(path_or_model))
    findings: List[Finding] = []
    for v in versions:
        findings.extend(audit_model(model, v, compute_capability=compute_capability))
    if findings:
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise ExportError(findings[0].line() + more)
    nodes = _walk(model.graph)
    counts = {v: len({(n.domain, n.op_type) for n, _ in nodes}) for v in versions}
    counts["nodes"] = len(nodes)
    return counts
