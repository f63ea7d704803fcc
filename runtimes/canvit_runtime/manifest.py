"""The manifest, schema version 1: the typed contract between the exporter, the runtimes and the C++ demo.

An artifact is a folder: the compiled step, `initial_state.bin` and `manifest.json`. `Manifest` (pydantic) is the
only way Python writes or reads a manifest.json; `manifest.schema.json` beside this file is generated from it
(`canvit-runtime schema --out PATH`; a test keeps the two equal), and the C++ demo validates every
manifest against that same file. Beyond what a JSON Schema can say, `Manifest` checks the manifest against itself
(roles, float32 I/O, every shape against the geometry and the initial state), as the C++ demo does.

Versions: `format_version` 1 is the only one. A newer one is refused with the upgrade to install; an older layout
(or one that does not validate) is refused with the re-export to run.
This module imports numpy and pydantic only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from canvit_runtime.contract import (
    ALWAYS_FILES,
    FILE_NAMES,
    GENERATOR,
    INITIAL_STATE_PARTS,
    INPUT_ROLES,
    IO_DTYPE,
    MESSAGES,
    READOUT_SHAPES,
    ROLE_SHAPES,
    STATE_PAIRS,
    STATE_SHAPES,
    SYMBOLS,
    py_list,
    say,
    shape_of,
)
from canvit_runtime.paths import (
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    bad_tree,
    json_depth_ok,
    plain_member,
    printable,
    read_regular,
    regular_file,
)
from canvit_runtime.precision import PRECISIONS, TARGET_PRECISIONS, FloatDType, MatmulDType, PrecisionName

FORMAT = "canvit-export-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")

Role = Literal["scene", "state", "viewpoint_centers", "viewpoint_scales", "reset", "readout", "extra"]
"""What a graph input/output means to a runner: scene [B, 3, S, S] (ImageNet-normalized); state (carried from one
glimpse to the next: canvas, recurrent CLS); viewpoint_centers [B, 2] (row, col) in scene coordinates [-1, 1];
viewpoint_scales [B] in (0, 1]; reset [B] (Core ML and ExecuTorch stateful: 1.0 reads the initial state); readout (a
head's output on the new state); extra (an output nobody feeds back, e.g. the glimpse)."""
ROLE_SCENE: Role = "scene"
ROLE_STATE: Role = "state"
ROLE_CENTERS: Role = "viewpoint_centers"
ROLE_SCALES: Role = "viewpoint_scales"
ROLE_RESET: Role = "reset"
ROLE_EXTRA: Role = "extra"
DType = Literal["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]
FileKey = Literal["graph", "ir", "weights", "engine", "package", "program", "initial_state"]
TARGET_FILES: dict[str, tuple[str, ...]] = {"onnx": ("graph",), "openvino": ("ir", "weights"), "tensorrt": ("engine",),
                                            "coreml": ("package",), "executorch": ("program",)}
"""The files each target's artifact must list, beside initial_state."""


TARGET_NAMES = {"onnx": "an ONNX", "openvino": "an OpenVINO IR", "tensorrt": "a TensorRT engine", "coreml": "a Core ML",
                "executorch": "an ExecuTorch"}


def a_target(target: str) -> str:
    """"an ONNX", "an OpenVINO IR", "a TensorRT engine", "a Core ML" (for messages: "DIR is an ONNX artifact")."""
    return TARGET_NAMES.get(target, f"a {target}")


def a_precision(word: str) -> str:
    """"an fp32", "a bf16", "an int8" (for messages: "DIR is an fp32 graph")."""
    return ("an " if word[:1] in "fi" else "a ") + word


class ManifestError(ValueError):
    """The artifact folder or its manifest is missing, malformed, of another version, inconsistent, or altered."""


class Inconsistent(ValueError):
    """A manifest that breaks a rule of manifest.contract.json (raised inside validation; parse_manifest turns it into
    a ManifestError line worded as the C++ demo words it)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
"""Graph input/output names: letters, digits and underscores (they reach Triton's config.pbtxt, file names and logs)."""


# --- tensors, state, initial state ------------------------------------------------------------------------------
class TensorSpec(_Record):
    """One graph input or output: name, static shape, dtype and role (`unit` for readouts, e.g. "nats")."""

    name: str = Field(pattern=TENSOR_NAME)
    shape: list[PositiveInt]
    dtype: DType
    role: Role
    unit: str | None = None


class StatePair(_Record):
    """A state tensor: the graph input it is fed to, the output that replaces it, its shape and dtype. `variable`
    names the OpenVINO state variable of a stateful IR; `core_ml_state` the Core ML state, stored as
    `storage_dtype` between glimpses (float16 for Core ML states, else float32). `storage_shape`: the shape of the
    stored Core ML state, padded to multiples of 32 rows and columns, which the Neural Engine
    needs of a state (apple/coremltools#2631); the state is its leading `shape` block, the padding stays zero."""

    input: str
    output: str
    shape: list[PositiveInt]
    dtype: Literal["float32"] = "float32"
    storage_dtype: FloatDType = "float32"
    variable: str | None = None
    core_ml_state: str | None = None
    storage_shape: list[PositiveInt] | None = None


class InitialStatePart(_Record):
    name: Literal["canvas_registers", "canvas_patch", "recurrent_cls"]
    shape: list[PositiveInt]
    offset_bytes: NonNegativeInt


class InitialState(_Record):
    """How to build the state before the first glimpse from initial_state.bin (canvit-pytorch CanViT.init_state):
    canvas[b] = canvas_registers [R, Dc] then canvas_patch [Dc] repeated G*G times; recurrent_cls[b] = [1, Db]."""

    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    parts: list[InitialStatePart]
    rule: str = ("canvas[b] = concat(canvas_registers [R, Dc], canvas_patch repeated G*G times) -> [R + G*G, Dc]; "
                 "recurrent_cls[b] = recurrent_cls [1, Db]; the same for every b (canvit-pytorch CanViT.init_state)")

    def part(self, name: str) -> InitialStatePart:
        return next(p for p in self.parts if p.name == name)


# --- where the weights came from --------------------------------------------------------------------------------
class RandomWeights(_Record):
    """Seeded random weights of the exact architecture, LayerScale gammas ~ N(0, layerscale_std), LayerNorm gains
    ~ 1 + N(0, layernorm_std) and biases ~ N(0, layernorm_std) (0: canvit-pytorch's gain 1, bias 0, as artifacts
    written before the field was added have it)."""

    kind: Literal["random"]
    backbone: str
    seed: int
    layerscale_std: float
    layernorm_std: float = 0.0
    torch: str
    weights_fingerprint: str


class CheckpointWeights(_Record):
    """A local canvit-pytorch save_pretrained folder (config.json + model.safetensors, their SHA-256s)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    kind: Literal["checkpoint"]
    path: str
    class_name: str = Field(alias="class")
    sha256: dict[str, str]
    weights_fingerprint: str


class HubWeights(_Record):
    """A Hugging Face Hub repository at a resolved revision (commit)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    kind: Literal["hub"]
    repo: str
    revision: str
    class_name: str = Field(alias="class")
    sha256: dict[str, str]
    weights_fingerprint: str


WeightSource = Annotated[RandomWeights | CheckpointWeights | HubWeights, Field(discriminator="kind")]


# --- architecture, geometry, preprocessing, viewpoints, precision -----------------------------------------------
class Architecture(_Record):
    """canvit-pytorch's CanViTConfig and the backbone's ViTSpec, as a reader or a runtime needs them."""

    backbone: str
    backbone_dim: WidthInt
    num_heads: PositiveInt
    num_blocks: PositiveInt
    patch_px: PositiveInt
    rope_base: float
    canvas_dim: WidthInt
    canvas_num_heads: PositiveInt
    canvas_head_dim: PositiveInt
    num_canvas_registers: RegistersInt
    num_backbone_registers: NonNegativeInt
    enable_vpe: bool
    canvas_projections: str
    read_after_blocks: list[NonNegativeInt]
    write_after_blocks: list[NonNegativeInt]
    parameters: PositiveInt


LIMITS = {"batch": 64, "scene_px": 2048, "glimpse_px": 1024, "canvas_grid": 256, "width": 8192, "registers": 1024,
          "tensor_elements": 1 << 30}
"""Caps on what a manifest may ask a runtime to allocate (an artifact is untrusted input): above canvas 128 and scene
2048 at batch 8, CanViT-B's largest; `width`: backbone and canvas dims; `tensor_elements`: any one tensor (4 GiB of
float32). The JSON Schema carries the per-field caps, so the C++ demo enforces them too."""


BatchInt = Annotated[int, Field(gt=0, le=LIMITS["batch"])]
ScenePx = Annotated[int, Field(gt=0, le=LIMITS["scene_px"])]
GlimpsePx = Annotated[int, Field(gt=0, le=LIMITS["glimpse_px"])]
GridInt = Annotated[int, Field(gt=0, le=LIMITS["canvas_grid"])]
WidthInt = Annotated[int, Field(gt=0, le=LIMITS["width"])]
RegistersInt = Annotated[int, Field(ge=0, le=LIMITS["registers"])]


class Geometry(_Record):
    """Static sizes: batch B, scene S px (square), glimpse g px, canvas grid G (G x G tokens); each capped (LIMITS)."""

    batch: BatchInt
    scene_px: ScenePx
    glimpse_px: GlimpsePx
    canvas_grid: GridInt


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(_Record):
    """Image -> scene: short side to scene_px (PIL bilinear), center crop, /255, (x - mean) / std (canvit_core)."""

    scene_px: PositiveInt
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"
    resize: str = "short side to scene_px, bilinear (PIL), then center crop (canvit_core.preprocess)"
    scale: str = "pixel / 255"
    mean: list[float] = Field(default=list(IMAGENET_MEAN), min_length=3, max_length=3)
    std: list[float] = Field(default=list(IMAGENET_STD), min_length=3, max_length=3)


class ViewpointRule(_Record):
    """The viewpoint convention and validity rule (paper App. C.1), and the smallest scale CanViT was trained on."""

    centers: str = "(row, col) in scene coordinates [-1, 1]; (-1, -1) is the top-left corner"
    scales: str = "half side of the square crop, in (0, 1]; a glimpse covers scale^2 of the scene"
    valid: str = "finite, 0 < scale <= 1 and |row|, |col| <= 1 - scale (paper App. C.1)"
    min_trained_scale: float = 0.05
    sampling: str = "bilinear, align_corners=False, zero padding (canvit-pytorch sample_at_viewpoint)"


class CalibrationRecord(_Record):
    """How a static INT8 artifact was calibrated (canvit_export.calibration): the step's inputs recorded at every
    glimpse of rollouts of the fp32 graph (`graph_sha256`) on `images` under `policies`, `glimpses` each."""

    images: list[str]
    policies: list[str]
    glimpses: PositiveInt
    samples: PositiveInt
    graph_sha256: str
    quantizer: str
    quantizers: NonNegativeInt
    """Quantizer nodes in the graph (QuantizeLinear for ONNX Q/DQ, FakeQuantize for OpenVINO)."""
    excluded_ops: NonNegativeInt
    """Ops kept in float32 because they produce or read a protected tensor (canvas path, RoPE, VPE, readouts)."""


class PrecisionRecord(_Record):
    """The artifact's precision word (canvit_runtime.precision) and what it means here: matmul and residual-stream
    dtypes, weight storage, the state's storage, whether the float32 rule holds and how many audit findings the
    export recorded (non-zero only for fp16-all, whose findings are recorded instead of enforced)."""

    name: PrecisionName
    matmul_dtype: MatmulDType
    stream_dtype: FloatDType
    weights: Literal["float32", "float16", "bfloat16", "int8-asym-per-channel", "int8-sym-per-channel"]
    state_storage: FloatDType = "float32"
    follows_float32_rule: bool
    audit_violations: NonNegativeInt = 0
    emulation: str | None = None
    calibration: CalibrationRecord | None = None
    """Static INT8 only: the rollout calibration set its scales came from, and the quantizer."""

    @property
    def int8_weights(self) -> bool:
        return self.weights.startswith("int8")


# --- what the artifact holds, per target ------------------------------------------------------------------------
class SourceArtifact(_Record):
    """The ONNX artifact a derived artifact (OpenVINO IR, TensorRT engine) was compiled from."""

    path: str
    graph_sha256: str
    target: Literal["onnx"] = "onnx"
    precision: PrecisionName


class OnnxArtifact(_Record):
    target: Literal["onnx"]
    opset: PositiveInt
    ir_version: PositiveInt
    nodes: PositiveInt
    op_counts: dict[str, int]


class CompiledAudit(_Record):
    """OpenVINO's compiled-model runtime info: protected nodes checked, violations, a census of runtime precisions."""

    checked: NonNegativeInt
    violations: list[str]
    runtime_precisions: dict[str, int]
    compiled: str


class OpenVinoArtifact(_Record):
    target: Literal["openvino"]
    stateful: bool
    inference_precision: Literal["f32"] = "f32"
    openvino: str
    compiled_audit: CompiledAudit
    source: SourceArtifact


class TensorRtArtifact(_Record):
    """A strongly typed engine. `builder`: what built it (TensorRT's Python builder in canvit-export / canvit-runtime
    `trt`, or trtexec, adopted with `trt --adopt-engine`). `checked_with`: "tensorrt" when the engine was deserialized
    where the manifest was written and its I/O names and dtypes matched the manifest; "trtexec-log" when the GPU and
    TensorRT facts were read from trtexec's build log (the I/O is then checked when a runner loads the engine)."""

    target: Literal["tensorrt"]
    strongly_typed: Literal[True] = True
    workspace_gib: float | None
    builder: Literal["tensorrt-python", "trtexec"] = "tensorrt-python"
    checked_with: Literal["tensorrt", "trtexec-log"] = "tensorrt"
    trtexec_command: str | None = None
    gpu: str
    compute_capability: str
    tensorrt: str
    runs_on: str = "this GPU model and TensorRT version only"
    source: SourceArtifact


class MilAudit(_Record):
    canvas_stream: list[str]
    coordinate_ops: NonNegativeInt
    violations: list[str]


class CoreMLArtifact(_Record):
    target: Literal["coreml"]
    format: Literal["mlprogram"] = "mlprogram"
    min_target: Literal["iOS17", "iOS18", "macOS14", "macOS15"]
    stateful: bool
    compute_precision: str
    op_counts: dict[str, int]
    mil_audit: MilAudit


class ProgramAudit(_Record):
    """The float32 rule over an ExecuTorch program (canvit_export.export.executorch): the canvas stream's nodes
    before partitioning, the coordinate-region ops checked, the tensors seen at delegate boundaries, violations."""

    canvas_stream: list[str]
    coordinate_ops: NonNegativeInt
    delegate_boundaries: NonNegativeInt
    violations: list[str]


class ExecuTorchArtifact(_Record):
    """A .pte program. `inputs`: the method's inputs in order (the runtime feeds them by position). Stateful: the
    state lives in the program's float32 mutable buffers (`state_buffers`: state input -> buffer), the `reset` input
    selects the embedded initial state; the program still outputs the new state. `delegates`: XNNPACK partitions,
    `delegated_ops` the ops inside them, `portable_ops` the ops left to ExecuTorch's own kernels (name -> count)."""

    target: Literal["executorch"]
    stateful: bool
    executorch: str
    backend: Literal["xnnpack"] = "xnnpack"
    inputs: list[str]
    state_buffers: dict[str, str]
    delegates: NonNegativeInt
    delegated_ops: NonNegativeInt
    portable_ops: dict[str, int]
    op_counts: dict[str, int]
    program_audit: ProgramAudit


ArtifactRecord = Annotated[OnnxArtifact | OpenVinoArtifact | TensorRtArtifact | CoreMLArtifact | ExecuTorchArtifact,
                           Field(discriminator="target")]


class HeadSource(_Record):
    """Where a readout head's weights came from: `random` (seeded, trained-like: canvit_export.readouts), `model` (the
    exported checkpoint's own head), `checkpoint` (a save_pretrained folder) or `hub` (a Hub id); its fingerprint."""

    kind: Literal["random", "model", "checkpoint", "hub"]
    seed: int | None = None
    location: str | None = None
    sha256: dict[str, str] | None = None
    weights_fingerprint: str


ReadoutName = Literal["segmentation", "classification", "features"]
READOUT_OUTPUTS: dict[str, tuple[str, ...]] = {"segmentation": ("seg_logits", "seg_entropy"),
                                               "classification": ("class_logits",),
                                               "features": ("teacher_patches",)}
"""The outputs each readout adds to the step graph, computed on the new state (docs/export.md, "Readouts")."""


class ReadoutRecord(_Record):
    """A readout head the step computes on the new state: its outputs (role readout), the source of its weights,
    the canvit-pytorch function that defines it, and for the classifiers their class names (and a colour per class,
    RGB 0-255, for segmentation overlays)."""

    name: ReadoutName
    outputs: list[str]
    source: HeadSource
    computed_by: str
    class_names: list[str] | None = None
    palette: list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]] | None = None


class FileRecord(_Record):
    """One file (or folder, for an .mlpackage) of the artifact: relative path, size in bytes, SHA-256 (sha256_file)."""

    path: str
    bytes: NonNegativeInt
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


# --- the manifest -----------------------------------------------------------------------------------------------
class Manifest(_Record):
    """manifest.json, schema version 1. After load_manifest, `directory` is the artifact folder it describes."""

    format: Literal["canvit-export-manifest"] = "canvit-export-manifest"
    format_version: Literal[1] = 1
    created: str
    command: str | None = None
    """The command line that wrote the artifact (to re-export it)."""
    artifact: ArtifactRecord
    model: WeightSource
    architecture: Architecture
    geometry: Geometry
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[StatePair]
    initial_state: InitialState
    preprocessing: Preprocessing
    viewpoint: ViewpointRule = ViewpointRule()
    precision: PrecisionRecord
    readouts: list[ReadoutRecord] = []
    files: dict[FileKey, FileRecord]
    tools: dict[str, str]

    _directory: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """The checks a JSON Schema cannot state, in the order the C++ demo makes them, with the rules and messages
        of manifest.contract.json (canvit_runtime.contract): plain file names, unique names, one input per role
        scene / viewpoint_centers / viewpoint_scales, float32 I/O, the state pairs, every shape against the geometry
        and the initial state, the readouts, the target's files listed, and a precision word matching its dtypes.
        Raises Inconsistent (a ValueError) with the rule's one-line message."""
        for key, record in sorted(self.files.items()):  # in key order, as the C++ demo reads them
            if not plain_member(record.path):
                raise Inconsistent(say("file_not_plain", key=key, name=printable(record.path)))
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if repeated := next((n for i, n in enumerate(names) if n in names[:i]), None):
            raise Inconsistent(say("name_repeats", name=repeated))
        for role in INPUT_ROLES:
            if sum(t.role == role for t in self.inputs) != 1:
                raise Inconsistent(say("role_count", role=role))
        for t in (*self.inputs, *self.outputs):
            if t.dtype != IO_DTYPE:
                raise Inconsistent(say("io_dtype", name=t.name, dtype=t.dtype, io_dtype=IO_DTYPE))
        if tuple((p.input, p.output) for p in self.state) != STATE_PAIRS:
            raise Inconsistent(say("state_pairs", pairs=", ".join(f"{i} -> {o}" for i, o in STATE_PAIRS)))
        symbols = {name: int(getattr(getattr(self, section), key)) for name, (section, key) in SYMBOLS.items()}
        self._check_initial_state(symbols)
        self._check_shapes(symbols)
        self._check_readouts({t.name: t for t in (*self.inputs, *self.outputs)}, symbols)
        missing = [k for k in (*ALWAYS_FILES, *TARGET_FILES[self.artifact.target]) if k not in self.files]
        if missing:
            raise Inconsistent(say("files_lacking", keys=py_list(missing), a_target=a_target(self.artifact.target)))
        info, stated = PRECISIONS[self.precision.name], self.precision
        if (info.matmul_dtype, info.stream_dtype) != (stated.matmul_dtype, stated.stream_dtype):
            raise Inconsistent(say("precision_dtypes", name=info.name, matmul=info.matmul_dtype,
                                   stream=info.stream_dtype, record_matmul=stated.matmul_dtype,
                                   record_stream=stated.stream_dtype))
        return self

    def _check_initial_state(self, symbols: dict[str, int]) -> None:
        """initial_state has the contract's parts, each of the shape the architecture gives it."""
        parts: dict[str, InitialStatePart] = {p.name: p for p in self.initial_state.parts}
        if any(name not in parts for name in INITIAL_STATE_PARTS):
            raise Inconsistent(say("initial_parts", parts=", ".join(sorted(INITIAL_STATE_PARTS))))
        for name in sorted(INITIAL_STATE_PARTS):  # in the contract file's order, as the C++ demo reads it
            if parts[name].shape != (want := shape_of(INITIAL_STATE_PARTS[name], symbols)):
                raise Inconsistent(say("initial_part_shape", part=name, shape=parts[name].shape, expected=want))

    def _check_shapes(self, symbols: dict[str, int]) -> None:
        """Every tensor under the element cap and of its role's shape (a state tensor: its name's), the state pairs'
        shapes, their tensors' roles, and a stateless graph taking and returning every state tensor."""
        by_state = {name: shape_of(e, symbols) for name, e in STATE_SHAPES.items()}
        geometry = {name: symbols[name] for name in ("B", "S", "G")}
        for t in (*self.inputs, *self.outputs):
            if int(np.prod(t.shape, dtype=np.float64)) > LIMITS["tensor_elements"]:
                raise Inconsistent(say("tensor_elements", name=t.name, shape=t.shape, limit=LIMITS["tensor_elements"]))
            if t.role == ROLE_STATE and t.name not in by_state:
                raise Inconsistent(say("state_name", name=t.name, names=py_list(sorted(by_state))))
            want = by_state[t.name] if t.role == ROLE_STATE else (
                shape_of(ROLE_SHAPES[t.role], symbols) if t.role in ROLE_SHAPES else None)
            if want is not None and t.shape != want:
                raise Inconsistent(say("tensor_shape", name=t.name, shape=t.shape, expected=want, **geometry))
        io = {t.name: t for t in (*self.inputs, *self.outputs)}
        for p in self.state:
            if p.shape != by_state[p.input]:
                raise Inconsistent(say("state_shape", name=p.input, shape=p.shape, expected=by_state[p.input]))
            for name in (p.input, p.output):
                if name in io and io[name].role != ROLE_STATE:
                    raise Inconsistent(say("state_role", name=name, role=io[name].role))
        stateful = getattr(self.artifact, "stateful", False)
        if not stateful and not all(n in io for p in self.state for n in (p.input, p.output)):
            raise Inconsistent(say("stateless_state"))

    def _check_readouts(self, io: dict[str, TensorSpec], symbols: dict[str, int]) -> None:
        """Each readout's outputs exist with role readout and the shapes of the geometry (the contract's
        READOUT_SHAPES); class names and palette match the class count; no readout output is left undeclared."""
        declared = [name for r in self.readouts for name in r.outputs]
        if len(set(r.name for r in self.readouts)) != len(self.readouts):
            raise Inconsistent(say("readouts_repeat"))
        undeclared = sorted(t.name for t in self.outputs if t.role == "readout" and t.name not in declared)
        if undeclared:
            raise Inconsistent(say("readout_undeclared", names=py_list(undeclared)))
        for r in self.readouts:
            if tuple(r.outputs) != READOUT_OUTPUTS[r.name]:
                raise Inconsistent(say("readout_outputs", readout=r.name, expected=py_list(READOUT_OUTPUTS[r.name]),
                                       outputs=py_list(r.outputs)))
            for name in r.outputs:
                if name not in io or io[name].role != "readout":
                    raise Inconsistent(say("readout_role", readout=r.name, name=name))
            rule, first = READOUT_SHAPES[r.name], io[r.outputs[0]].shape
            bound = dict(symbols)
            for symbol, axis in rule["free"].items():  # a shape too short reads 0, refused below as the C++ does
                bound[symbol] = first[axis] if -len(first) <= axis < len(first) else 0
            for name, expressions in zip(r.outputs, rule["shapes"], strict=True):
                if io[name].shape != (want := shape_of(expressions, bound)):
                    raise Inconsistent(say("readout_shape", name=name, shape=io[name].shape, expected=want))
            classes = bound[rule["classes"]] if rule["classes"] else "no"
            for field in ("class_names", "palette"):
                values = getattr(r, field)
                if values is not None and (rule["classes"] is None or len(values) != classes):
                    raise Inconsistent(say("readout_classes", readout=r.name, count=len(values),
                                           field=field.replace("_", " "), classes=classes))

    # --- convenience ------------------------------------------------------------------------------------------
    def readout(self, name: str) -> ReadoutRecord | None:
        """The readout record `name` (segmentation, classification, features), or None when not exported."""
        return next((r for r in self.readouts if r.name == name), None)

    @property
    def directory(self) -> Path:
        return self._directory

    def at(self, directory: str | Path) -> Manifest:
        """This manifest bound to the artifact folder `directory` (for file paths and the initial state)."""
        bound = self.model_copy()
        bound._directory = Path(directory)
        return bound

    @property
    def target(self) -> str:
        return self.artifact.target

    @property
    def stateful(self) -> bool:
        return bool(getattr(self.artifact, "stateful", False))

    def input(self, role: str) -> TensorSpec:
        """The single input with this role (scene, viewpoint_centers, viewpoint_scales)."""
        found = [t for t in self.inputs if t.role == role]
        if len(found) != 1:
            raise ManifestError(f"{self.directory}: expected one input with role {role!r}, found {len(found)}")
        return found[0]

    @property
    def state_pairs(self) -> tuple[tuple[str, str], ...]:
        """(input name, output name) for each state tensor: ("canvas", "canvas_next"), ("recurrent_cls", ...)."""
        return tuple((p.input, p.output) for p in self.state)

    @property
    def batch(self) -> int:
        return self.geometry.batch

    @property
    def scene_px(self) -> int:
        return self.geometry.scene_px

    @property
    def glimpse_px(self) -> int:
        return self.geometry.glimpse_px

    @property
    def canvas_grid(self) -> int:
        return self.geometry.canvas_grid

    @property
    def num_canvas_registers(self) -> int:
        return self.architecture.num_canvas_registers

    def file(self, key: str) -> Path:
        """Path of one of the artifact's files by its key in `files` (graph, ir, weights, engine, package,
        initial_state); ManifestError when the manifest lists none, or not under a plain name (member)."""
        return self.member(key)

    @property
    def size_bytes(self) -> int:
        """Total size of the artifact's files, in bytes."""
        return sum(f.bytes for f in self.files.values())

    def to_json(self) -> str:
        """The manifest.json text (fields left at None are omitted)."""
        return self.model_dump_json(indent=1, by_alias=True, exclude_none=True) + "\n"

    def write(self, directory: str | Path) -> Path:
        """Write directory/manifest.json; return its path."""
        path = Path(directory) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    # --- checks -----------------------------------------------------------------------------------------------
    def verify_checksums(self) -> None:
        """Raise ManifestError unless every listed file is a plain name inside the folder, a regular file (an
        .mlpackage: a real folder of regular files) with no symlink, device or FIFO, and has its size and SHA-256.
        Sizes are compared before any byte is read, so a hostile entry cannot hang or exhaust the check."""
        for key, record in self.files.items():
            path = self.member(key)
            if not os.path.lexists(path):
                raise ManifestError(f"{printable(path)}: missing from the artifact ({key}); re-export it or copy the whole "
                                    f"folder")
            if key == "package":
                info = path.lstat()
                if not stat.S_ISDIR(info.st_mode) or (bad := bad_tree(path)) is not None:
                    what = printable(path if not stat.S_ISDIR(info.st_mode) else bad)
                    raise ManifestError(f"{what}: not a regular file or folder (a symlink, device or FIFO); artifacts "
                                        f"hold only plain files: re-export or re-copy it")
            elif regular_file(path) is None:
                raise ManifestError(f"{printable(path)}: not a regular file (a symlink, folder, device or FIFO); "
                                    f"artifacts hold only plain files: re-export or re-copy it")
            if size_bytes(path) != record.bytes or sha256_file(path) != record.sha256:
                raise ManifestError(f"{printable(path)}: SHA-256 mismatch, the file was altered or truncated; re-export "
                                    f"or re-copy it")

    def member(self, key: str) -> Path:
        """The path of listed file `key`; ManifestError unless the manifest lists it under a plain relative name (no
        absolute path, `..`, backslash or control character)."""
        if key not in self.files:
            raise ManifestError(f"{self.directory}: the manifest lists no {key!r} file")
        name = self.files[key].path
        if not plain_member(name):
            raise ManifestError(f"{self.directory}: file {key!r} is listed as {printable(name, 80)!r}, not a plain name "
                                f"inside the artifact folder; re-export the artifact")
        return self.directory / name

    def read_verified(self, key: str) -> bytes:
        """The bytes of listed file `key`, read once and checked against its size and SHA-256: what a runner hands to
        its runtime, so that the bytes that run are the bytes checksummed. Raises ManifestError."""
        path, record = self.member(key), self.files[key]  # type: ignore[index]
        try:
            data = read_regular(path, record.bytes)
        except (OSError, ValueError) as error:
            raise ManifestError(f"{printable(path)}: cannot be read as the plain file the manifest lists ({error}); "
                                f"re-export or re-copy it") from error
        if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
            raise ManifestError(f"{printable(path)}: SHA-256 mismatch, the file was altered or truncated; re-export or "
                                f"re-copy it")
        return data

    # --- state ------------------------------------------------------------------------------------------------
    def initial_state_arrays(self, batch_size: int) -> dict[str, np.ndarray]:
        """The state before the first glimpse, keyed by state input name, for batch_size scenes.

        canvas [B, R + G*G, Dc] float32: the R canvas registers, then the learned canvas patch token repeated over
        the G*G grid (canvit-pytorch CanViT.init_state); recurrent_cls [B, 1, Db] float32: the learned initial CLS.
        Read from initial_state.bin (little-endian float32, parts at the manifest's byte offsets). Raises
        ManifestError when the file is too short.
        """
        path = self.file("initial_state")
        flat = np.frombuffer(self.read_verified("initial_state"), dtype="<f4")
        parts: dict[str, np.ndarray] = {}
        for part in self.initial_state.parts:
            count = int(np.prod(part.shape))
            start = part.offset_bytes // 4
            if start + count > flat.size:
                raise ManifestError(f"{path}: too short for part {part.name} {part.shape}; re-export the artifact")
            parts[part.name] = flat[start:start + count].reshape(part.shape)
        registers, patch, cls = parts["canvas_registers"], parts["canvas_patch"], parts["recurrent_cls"]
        grid_tokens = np.broadcast_to(patch, (self.canvas_grid**2, patch.shape[-1]))
        canvas = np.concatenate([registers, grid_tokens])[None]
        return {  # fresh, writable arrays: runners may hand them to frameworks that write in place
            "canvas": np.array(np.broadcast_to(canvas, (batch_size, *canvas.shape[1:])), dtype=np.float32),
            "recurrent_cls": np.array(np.broadcast_to(cls, (batch_size, 1, cls.shape[-1])), dtype=np.float32),
        }


def verified_onnx(manifest: Manifest) -> bytes:
    """The ONNX artifact's graph bytes, read once and checksummed (Manifest.read_verified), for a runtime to load from
    memory. Raises ManifestError when they are not an ONNX model, or when the graph loads external data (a file the
    manifest neither lists nor checksums: runtimes would read it from beside the graph, or from the current folder).
    Needs the onnx package (in canvit-runtime's onnxruntime and openvino extras)."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    data = manifest.read_verified("graph")
    where = printable(manifest.file("graph"))
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise ManifestError(f"{where}: not an ONNX model ({printable(error, 80)}); re-export the artifact") from error
    if external := [t.name for t in _get_all_tensors(model) if uses_external_data(t)]:
        raise ManifestError(f"{where}: tensor {printable(external[0], 60)!r} loads external data that the manifest "
                            f"does not checksum; re-export the artifact (canvit-export writes the graph in one file)")
    return data


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 16 MiB blocks; of a folder (an .mlpackage), the digest of its files'
    relative paths and digests, in path order."""
    if path.is_dir():
        lines = [f"{f.relative_to(path).as_posix()} {sha256_file(f)}\n" for f in sorted(path.rglob("*")) if f.is_file()]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def size_bytes(path: Path) -> int:
    """A file's size, or the total size of a folder's files, in bytes."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def file_record(directory: Path, name: str) -> FileRecord:
    """The `files` record of directory/name: its relative path, size and SHA-256."""
    return FileRecord(path=name, bytes=size_bytes(directory / name), sha256=sha256_file(directory / name))


def _first_error(error: ValidationError) -> str:
    """One line for a pydantic ValidationError: where (a JSON path) and what."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "manifest"
    message = first["msg"].removeprefix("Value error, ")
    extra = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {message}{extra}"


def parse_manifest(text: str, *, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate manifest.json text. Raises ManifestError with one line: not JSON, not a canvit-export
    manifest, a newer version (upgrade), an older or invalid layout (re-export), or an inconsistency."""
    if not json_depth_ok(text):
        raise ManifestError(say("json_depth", source=source, limit=MAX_JSON_DEPTH))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{source}: not valid JSON ({error}); re-export the artifact") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ManifestError(f"{source}: not a canvit-export manifest (format {printable(repr(found), 60)}, expected "
                            f"{FORMAT!r})")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ManifestError(f"{source}: manifest version {version} is newer than this canvit-runtime reads "
                            f"({FORMAT_VERSION}): upgrade with `pip install -U canvit-runtime` (or canvit-export)")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{source}: manifest version {printable(repr(version), 60)} is not readable by this "
                            f"canvit-runtime (reads "
                            f"{FORMAT_VERSION}): re-export the artifact with this canvit-export")
    try:
        return Manifest.model_validate_json(text, strict=True)
    except ValidationError as error:
        if isinstance(rule := error.errors()[0].get("ctx", {}).get("error"), Inconsistent):
            raise ManifestError(say("inconsistent", source=source, message=printable(rule, 4096))) from error
        command = our_command(data.get("command"))
        fix = f"re-export it: {command}" if command else "re-export it with this canvit-export"
        raise ManifestError(f"{source}: not a valid version-{FORMAT_VERSION} manifest, {printable(_first_error(error))}; "
                            f"{fix}") from error


def our_command(field: object) -> str | None:
    """A manifest's `command` field as a re-export command to recommend: only a canvit-export / canvit-runtime
    command line of plain printable words, rebuilt (shlex-quoted) from its parsed words; None for anything else (the
    field is written by whoever wrote the manifest)."""
    if not isinstance(field, str) or len(field) > 2000:
        return None
    try:
        words = shlex.split(field)
    except ValueError:
        return None
    if not words or words[0] not in ("canvit-export", "canvit-runtime") or any(printable(w) != w for w in words):
        return None
    return shlex.join(words)


def load_manifest(artifact_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Read artifact_dir/manifest.json (parse_manifest) and, with verify, every listed file's size and SHA-256.

    Raises ManifestError (a ValueError) with one line naming the problem and the fix.
    """
    directory = Path(artifact_dir)
    if not directory.exists():
        raise ManifestError(f"{directory}: no such artifact folder; export one with `canvit-export onnx --out "
                            f"{directory}` (or openvino, trt, coreml)")
    if not directory.is_dir():
        raise ManifestError(f"{directory} is a file; pass the artifact folder that holds manifest.json")
    path = directory / MANIFEST_NAME
    if not os.path.lexists(path):
        raise ManifestError(f"{directory}: no {MANIFEST_NAME}; this is not a canvit-export artifact (re-export it)")
    if (info := regular_file(path)) is not None and info.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(say("manifest_bytes", source=printable(path), size=info.st_size, limit=MAX_MANIFEST_BYTES))
    try:
        text = read_regular(path, MAX_MANIFEST_BYTES).decode("utf-8")
    except (OSError, ValueError) as error:
        raise ManifestError(f"{printable(path)}: not a plain manifest file ({printable(error)}); re-export the "
                            f"artifact") from error
    manifest = parse_manifest(text, source=str(path)).at(directory)
    if verify:
        manifest.verify_checksums()
    return manifest


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of manifest.json, generated from `Manifest` (as written: by alias)."""
    schema = Manifest.model_json_schema(by_alias=True, mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://github.com/canvit-export/manifest.schema.json", **schema}


def contract_document() -> dict[str, Any]:
    """The content of manifest.contract.json: canvit_runtime.contract's tables with the manifest's own (target files
    and names, readout outputs, caps, the tensor-name pattern) and the precision vocabulary's dtypes."""
    assert set(READOUT_SHAPES) == set(READOUT_OUTPUTS), "a readout without its shapes"
    return {
        "$comment": f"Generated by `{GENERATOR}` from canvit_runtime.contract; do not edit. What canvit_runtime and "
                    f"cpp_demo both check beyond manifest.schema.json.",
        "generator": GENERATOR,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "symbols": {name: ".".join(field) for name, field in SYMBOLS.items()},
        "io_dtype": IO_DTYPE,
        "input_roles": list(INPUT_ROLES),
        "role_shapes": ROLE_SHAPES,
        "state_pairs": [list(pair) for pair in STATE_PAIRS],
        "state_shapes": STATE_SHAPES,
        "initial_state_parts": INITIAL_STATE_PARTS,
        "readouts": {name: {"outputs": list(outputs), **READOUT_SHAPES[name]}
                     for name, outputs in READOUT_OUTPUTS.items()},
        "always_files": list(ALWAYS_FILES),
        "target_files": {target: list(keys) for target, keys in TARGET_FILES.items()},
        "target_names": dict(TARGET_NAMES),
        "precisions": {word: {"base": info.base, "matmul_dtype": info.matmul_dtype, "stream_dtype": info.stream_dtype,
                              "int8_weights": info.int8_weights, "int8_static": info.int8_static,
                              "follows_float32_rule": info.follows_rule} for word, info in PRECISIONS.items()},
        "target_precisions": {target: list(words) for target, words in TARGET_PRECISIONS.items()},
        "limits": {**LIMITS, "manifest_bytes": MAX_MANIFEST_BYTES, "json_depth": MAX_JSON_DEPTH},
        "names": {"tensor": TENSOR_NAME, "file": FILE_NAMES},
        "messages": MESSAGES,
    }


def contract_text() -> str:
    """manifest.contract.json's text, as written (sorted keys: the same file for the same contract)."""
    return json.dumps(contract_document(), indent=1, sort_keys=True) + "\n"
