"""The Triton target: a model repository that serves many glimpse sequences (cameras) with the state kept in the server.

`write_repository` turns artifacts into one Triton model repository, one model per artifact and backend:
- `<name>-onnxruntime` (ONNX artifact; ONNX Runtime backend, CPU or CUDA by --device), `<name>-tensorrt` (TensorRT
  engine artifact: model.plan), `<name>-openvino` (stateless OpenVINO IR artifact): `sequence_batching` with the
  oldest (or direct) strategy and implicit state: `canvas` and `recurrent_cls` live in Triton between the requests
  of a sequence, initialized from the artifact's initial state (initial_state/<state>.bin, raw little-endian float32
  of the state's full shape, a `data_file` Triton loads). The state outputs are also listed as outputs, so a client
  can read the canvas; the readouts are outputs.
- `<name>-python` (ONNX or OpenVINO artifact): Triton's Python backend running canvit_runtime
  (canvit_runtime/triton_backend/model.py), one session per CORRID, freed at END or idle timeout; for sites
  without the C++ backends. Its scene input is optional: send it once per frame, then only viewpoints.

Every model has max_batch_size 0 (the step's batch B is static: one request = one glimpse of B scenes) and the
manifest's full shapes as dims. Control inputs START, END, READY (int32 [1]) and CORRID (uint64 [1]) are given to
the Python model and to the ONNX Runtime model, whose repository copy of the graph gets them as (unused) inputs:
that backend wants every configured input in the graph. A TensorRT engine's and an OpenVINO IR's inputs are fixed
where they were built, so their models have no control inputs (the implicit state needs none).

State names. Triton pairs implicit-state inputs and outputs by position after sorting each list by name
(triton-inference-server/server#8586): when the state inputs and outputs sort in different orders, the states are
swapped. `triton_state_names` renames them (s0_canvas / s0_canvas_next, ...) in that case; the ONNX copy's I/O is
renamed with the onnx library and the mapping recorded in <model>/canvit_triton.json. A TensorRT engine or IR can't
be renamed here: such an artifact is refused, naming the fix (serve its ONNX artifact on ONNX Runtime).

Scene per frame: the step graph takes the scene as a plain input, and Triton's implicit state can't be written by a
request, so by default each glimpse request carries the scene: 3 * S * S * 4 * B bytes (3.1 MB at S = 512, B = 1).
The Python model reuses the sequence's last scene when a request has none. With `scene_state` (--scene-state), the
ONNX Runtime model's graph copy keeps the scene as a third implicit state and takes the scene as an optional input
(an overridable NaN initializer when absent: prepare_onnx); that graph is checked with ONNX Runtime here, but no
Triton ONNX Runtime backend ran it here (nvidia-pytriton's server has only the Python backend). A TensorRT engine's
or an IR's graph can't be changed here, so their requests always carry the scene.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canvit_export.errors import ExportError
from canvit_runtime.artifact import staged_artifact
from canvit_runtime.base import check_graph_io, onnx_io
from canvit_runtime.manifest import (
    MANIFEST_NAME,
    ROLE_CENTERS,
    ROLE_SCALES,
    ROLE_SCENE,
    Manifest,
    ManifestError,
    load_manifest,
    verified_onnx,
)
from canvit_runtime.paths import printable
from canvit_runtime.triton_model import OPEN_SEQUENCES

BACKENDS = ("onnxruntime", "tensorrt", "openvino", "python")
TARGET_BACKENDS = {"onnx": ("onnxruntime", "python"), "tensorrt": ("tensorrt",), "openvino": ("openvino", "python")}
"""The Triton backends each artifact target is served by."""
CONTROLS = (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"), ("READY", "CONTROL_SEQUENCE_READY"),
            ("CORRID", "CONTROL_SEQUENCE_CORRID"))
STRATEGIES = ("oldest", "direct")
MAPPING_FILE = "canvit_triton.json"
SCENE_STATE = ("scene_state", "scene_state_next")
"""With --scene-state, the ONNX Runtime model's third implicit state: the last scene sent in the sequence."""
TRITON_DTYPES = {"float32": "TYPE_FP32"}


@dataclass(frozen=True)
class ServeOptions:
    """How the models serve: `device` gpu | cpu (instance kind of the C++ backends; the Python model runs on the CPU),
    `strategy` oldest | direct, `max_sequences` (oldest: candidate sequences), `instances` per model, `idle_us`
    (max_sequence_idle_microseconds), `runtime` of the Python model for ONNX artifacts (onnxruntime | openvino),
    `threads` of the Python model's runner (None: the runtime's default), `scene_state` (below)."""

    device: str = "gpu"
    strategy: str = "oldest"
    max_sequences: int = 8
    instances: int = 1
    idle_us: int = 5_000_000
    runtime: str = "onnxruntime"
    threads: int | None = None
    scene_state: bool = False
    """ONNX Runtime model: keep the scene as a third implicit state, so a request may omit it (see prepare_onnx)."""

    def check(self) -> None:
        if self.device not in ("gpu", "cpu"):
            raise ExportError(f"--device {self.device}: choose gpu or cpu")
        if self.strategy not in STRATEGIES:
            raise ExportError(f"--strategy {self.strategy}: choose {' or '.join(STRATEGIES)}")
        for name, value in (("--max-sequences", self.max_sequences), ("--instances", self.instances),
                            ("--idle-ms", self.idle_us)):
            if value < 1:
                raise ExportError(f"{name} {value}: must be at least 1")
        if self.runtime not in ("onnxruntime", "openvino"):
            raise ExportError(f"--python-runtime {self.runtime}: choose onnxruntime or openvino")


@dataclass
class TritonModel:
    """One model written into the repository: its name, backend, the artifact it serves and its state names
    (manifest input/output -> Triton input/output)."""

    name: str
    backend: str
    artifact: Path
    state_names: dict[str, str] = field(default_factory=dict)


# --- names ------------------------------------------------------------------------------------------------------
def triton_state_names(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Names for the state tensors such that sorting the inputs and sorting the outputs pair them correctly
    (triton-inference-server/server#8586): {} when the manifest's names already sort in the same order, else
    {name: f"s{i}_{name}"} for both names of every pair i (the prefix orders both lists by pair)."""
    inputs, outputs = [p[0] for p in pairs], [p[1] for p in pairs]
    if sorted(range(len(pairs)), key=inputs.__getitem__) == sorted(range(len(pairs)), key=outputs.__getitem__):
        return {}
    width = len(str(len(pairs) - 1))
    return {name: f"s{i:0{width}d}_{name}" for i, pair in enumerate(pairs) for name in pair}


def model_name(artifact: Path, backend: str) -> str:
    """`<artifact folder name>-<backend>`, with characters other than letters, digits, '.', '_', '-' replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", artifact.resolve().name) + f"-{backend}"


# --- the ONNX copy ----------------------------------------------------------------------------------------------
def prepare_onnx(source: Path | bytes, destination: Path, renames: dict[str, str], *, controls: bool,
                 scene: str | None = None) -> None:
    """Copy the step graph `source` (a path, or the checksummed bytes: manifest.verified_onnx) to `destination`
    with graph inputs/outputs renamed (`renames`, in every node that reads or writes them) and, with controls, the
    inputs START, END, READY int32 [1] and CORRID uint64 [1] added (unused by the graph: Triton feeds them, ONNX
    Runtime ignores them).

    With `scene` (the scene input's name), the scene becomes optional and is also kept as a state: inputs `scene`
    [B, 3, S, S] (an overridable initializer of NaNs: ONNX Runtime uses it when a request omits the scene) and
    `scene_state` (same shape), output `scene_state_next`; the step sees `scene_state` when the scene's first value is
    NaN, else the scene, and returns what it saw as `scene_state_next` (names after `renames`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    graph = model.graph
    if scene is not None:
        used = "canvit_scene_used"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == scene:
                    node.input[i] = used
        spec = next(v for v in graph.input if v.name == scene)
        shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
        state_in, state_out = (renames.get(n, n) for n in SCENE_STATE)
        graph.input.append(helper.make_tensor_value_info(state_in, TensorProto.FLOAT, shape))
        graph.output.append(helper.make_tensor_value_info(state_out, TensorProto.FLOAT, shape))
        graph.initializer.append(numpy_helper.from_array(np.full(shape, np.nan, np.float32), scene))
        graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "canvit_flat"),
                                  numpy_helper.from_array(np.array([0], np.int64), "canvit_zero"),
                                  numpy_helper.from_array(np.array([1], np.int64), "canvit_one")])
        choose = [helper.make_node("Reshape", [scene, "canvit_flat"], ["canvit_scene_flat"]),
                  helper.make_node("Slice", ["canvit_scene_flat", "canvit_zero", "canvit_one"], ["canvit_scene_first"]),
                  helper.make_node("IsNaN", ["canvit_scene_first"], ["canvit_scene_absent"]),
                  helper.make_node("Where", ["canvit_scene_absent", state_in, scene], [used]),
                  helper.make_node("Identity", [used], [state_out])]
        nodes = [*choose, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    if renames:
        for value in (*graph.input, *graph.output):
            value.name = renames.get(value.name, value.name)
        for node in graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renames.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = renames.get(name, name)
        for value in graph.value_info:
            value.name = renames.get(value.name, value.name)
    if controls:
        existing = {v.name for v in graph.input}
        for name, kind in CONTROLS:
            if name not in existing:
                dtype = TensorProto.UINT64 if kind == "CONTROL_SEQUENCE_CORRID" else TensorProto.INT32
                graph.input.append(helper.make_tensor_value_info(name, dtype, [1]))
    onnx.save(model, str(destination))


# --- config.pbtxt -----------------------------------------------------------------------------------------------
def _dims(shape: Iterable[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor(name: str, shape: list[int], *, optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: {_dims(shape)}{extra} }}'


def _controls() -> str:
    lines = []
    for name, kind in CONTROLS:
        value = "data_type: TYPE_UINT64" if kind == "CONTROL_SEQUENCE_CORRID" else "int32_false_true: [ 0, 1 ]"
        lines.append(f'    {{ name: "{name}" control [ {{ kind: {kind} {value} }} ] }}')
    return "  control_input [\n" + ",\n".join(lines) + "\n  ]\n"


def _strategy(options: ServeOptions, strategy: str) -> str:
    if strategy == "oldest":
        return f"  oldest {{ max_candidate_sequences: {options.max_sequences} max_queue_delay_microseconds: 0 }}\n"
    return "  direct { max_queue_delay_microseconds: 0 }\n"


def config_text(manifest: Manifest, name: str, backend: str, options: ServeOptions,
                renames: dict[str, str] | None = None, *, controls: bool, comment: str = "") -> str:
    """The config.pbtxt of one model (Triton's ModelConfig in protobuf text format).

    Inputs: the scene [B, 3, S, S], centers [B, 2], scales [B] (float32; the Python model's scene is optional).
    Outputs: the state outputs (canvas_next [B, R + G*G, Dc], recurrent_cls_next [B, 1, Db]), the readouts and
    extras, and for the Python model open_sequences int32 [1]. The C++ backends' states are implicit states with
    initial_state data files initial_state/<state input>.bin (float32, the full shape).
    """
    renames = renames or {}
    python = backend == "python"
    stateful = {p.input for p in manifest.state} | {p.output for p in manifest.state}
    inputs = [t for t in manifest.inputs if t.role in (ROLE_SCENE, ROLE_CENTERS, ROLE_SCALES)]
    scene_state = backend == "onnxruntime" and options.scene_state
    input_lines = [_tensor(t.name, t.shape, optional=(python or scene_state) and t.role == ROLE_SCENE) for t in inputs]
    # The state outputs from the state pairs: a stateful IR's graph has none, its Python model still returns them.
    output_lines = [_tensor(renames.get(p.output, p.output), p.shape) for p in manifest.state]
    output_lines += [_tensor(t.name, t.shape) for t in manifest.outputs if t.name not in stateful]
    if python:
        output_lines.append(f'  {{ name: "{OPEN_SEQUENCES}" data_type: TYPE_INT32 dims: [ 1 ] }}')
    # The Python model keeps its sessions in one instance: more instances need the direct strategy, which pins a
    # sequence to one instance's slot for its lifetime (oldest does not).
    strategy = "direct" if python and options.instances > 1 else options.strategy
    batching = f"sequence_batching {{\n  max_sequence_idle_microseconds: {options.idle_us}\n"
    batching += _strategy(options, strategy)
    if controls:
        batching += _controls()
    if not python:
        states = []
        for pair in manifest.state:
            states.append(
                f'    {{\n      input_name: "{renames.get(pair.input, pair.input)}"\n'
                f'      output_name: "{renames.get(pair.output, pair.output)}"\n'
                f"      data_type: {TRITON_DTYPES[pair.dtype]}\n      dims: {_dims(pair.shape)}\n"
                f'      initial_state [ {{ name: "{pair.input}" data_type: {TRITON_DTYPES[pair.dtype]} '
                f'dims: {_dims(pair.shape)} data_file: "{pair.input}.bin" }} ]\n    }}')
        if scene_state:
            shape = manifest.input(ROLE_SCENE).shape
            states.append(
                f'    {{\n      input_name: "{renames.get(SCENE_STATE[0], SCENE_STATE[0])}"\n'
                f'      output_name: "{renames.get(SCENE_STATE[1], SCENE_STATE[1])}"\n'
                f"      data_type: TYPE_FP32\n      dims: {_dims(shape)}\n"
                f'      initial_state [ {{ name: "{SCENE_STATE[0]}" data_type: TYPE_FP32 dims: {_dims(shape)} '
                f"zero_data: true }} ]\n    }}")
        batching += "  state [\n" + ",\n".join(states) + "\n  ]\n"
    batching += "}\n"
    kind = "KIND_CPU" if python or options.device == "cpu" else "KIND_GPU"
    header = f"# Written by canvit-export triton from {printable(manifest.directory.resolve())} ({manifest.target}, " \
             f"{manifest.precision.name}, batch {manifest.batch}).\n"
    header += "".join(f"# {line}\n" for line in comment.splitlines())
    text = header + f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: 0\n'
    if backend == "tensorrt":
        text += 'default_model_filename: "model.plan"\n'
    text += "input [\n" + ",\n".join(input_lines) + "\n]\n"
    text += "output [\n" + ",\n".join(output_lines) + "\n]\n"
    text += batching
    text += f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]\n"
    if python:
        parameters = [("runtime", options.runtime if manifest.target == "onnx" else "openvino")]
        if options.threads is not None:
            parameters.append(("threads", str(options.threads)))
        text += "parameters [\n" + ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                                               for k, v in parameters) + "\n]\n"
    return text


def check_config(text: str, manifest: Manifest, name: str, backend: str, renames: dict[str, str], *,
                 controls: bool) -> None:
    """Parse a written config.pbtxt back with Triton's own ModelConfig protobuf (tritonclient) and compare it with
    what the manifest asks for: the model's name and backend, its inputs, outputs, implicit states, control inputs
    and parameters, nothing more. Raises ExportError (a name or value that broke out of its field) before the
    repository is kept."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:
        raise ExportError(f"checking config.pbtxt needs tritonclient ({error}): pip install 'canvit-export[triton]'") from error
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ExportError(f"{manifest.directory}: the config.pbtxt written for {name} does not parse as Triton's "
                          f"ModelConfig ({printable(error, 120)}); a manifest name breaks it: re-export the artifact") from error
    stateful = {p.input for p in manifest.state} | {p.output for p in manifest.state}
    inputs = {t.name for t in manifest.inputs if t.role in (ROLE_SCENE, ROLE_CENTERS, ROLE_SCALES)}
    outputs = {renames.get(p.output, p.output) for p in manifest.state}
    outputs |= {t.name for t in manifest.outputs if t.name not in stateful}
    if backend == "python":
        outputs.add(OPEN_SEQUENCES)
    states = set() if backend == "python" else {renames.get(p.input, p.input) for p in manifest.state}
    scene_state = {renames.get(SCENE_STATE[0], SCENE_STATE[0])}  # --scene-state: the scene as a third state
    checks = [("name", config.name, name, config.name == name),
              ("backend", config.backend, backend, config.backend == backend),
              ("inputs", {i.name for i in config.input}, inputs, {i.name for i in config.input} == inputs),
              ("outputs", {o.name for o in config.output}, outputs, {o.name for o in config.output} == outputs)]
    found_states = {state.input_name for state in config.sequence_batching.state}
    checks.append(("states", found_states, states, found_states - scene_state == states))
    found_controls = {c.name for c in config.sequence_batching.control_input}
    controls_wanted = {c for c, _ in CONTROLS} if controls else set()
    checks.append(("control inputs", found_controls, controls_wanted, found_controls == controls_wanted))
    parameters_allowed = {"runtime", "threads"} if backend == "python" else set()
    checks.append(("parameters", set(config.parameters), parameters_allowed, set(config.parameters) <= parameters_allowed))
    for what, have, want, ok in checks:
        if not ok:
            shown = lambda v: printable(sorted(v) if isinstance(v, set) else v, 160)
            raise ExportError(f"{manifest.directory}: the config.pbtxt written for {name} has {what} {shown(have)}, "
                              f"the manifest asks for {shown(want)}; re-export the artifact")


def copy_listed(manifest: Manifest, folder: Path) -> None:
    """Copy into `folder` the artifact's manifest.json and the files it lists, from their checksummed bytes (an
    .mlpackage folder: its regular files), never following a link and taking nothing else from the folder."""
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    for key, record in manifest.files.items():
        if key == "package":
            shutil.copytree(manifest.file(key), folder / record.path, symlinks=True)
        else:
            (folder / record.path).write_bytes(manifest.read_verified(key))


# --- the repository ---------------------------------------------------------------------------------------------
def _write_initial_state(manifest: Manifest, folder: Path) -> None:
    folder.mkdir()
    for name, array in manifest.initial_state_arrays(manifest.batch).items():
        np.ascontiguousarray(array, dtype="<f4").tofile(folder / f"{name}.bin")


def _write_model(manifest: Manifest, backend: str, name: str, root: Path, options: ServeOptions) -> TritonModel:
    model_dir, version = root / name, root / name / "1"
    version.mkdir(parents=True)
    scene_state = backend == "onnxruntime" and options.scene_state
    pairs = [*manifest.state_pairs, SCENE_STATE] if scene_state else list(manifest.state_pairs)
    renames = triton_state_names(pairs) if backend != "python" else {}
    comment = ""
    if backend == "python":
        from canvit_runtime.triton_backend import MODEL_PY

        shutil.copyfile(MODEL_PY, version / "model.py")
        copy_listed(manifest, version / "artifact")
        comment = ("Python backend: canvit_runtime in the server's Python (pip install 'canvit-runtime[onnxruntime]' "
                   "or [openvino]); one session per CORRID.\nThe scene input is optional: omit it to reuse the "
                   "sequence's last scene (send it once per frame).")
    elif backend == "onnxruntime":
        graph = verified_onnx(manifest)
        import onnx

        check_graph_io(manifest, *onnx_io(onnx.load_model_from_string(graph)))
        prepare_onnx(graph, version / "model.onnx", renames, controls=True,
                     scene=manifest.input(ROLE_SCENE).name if scene_state else None)
        comment = ("Implicit state, the scene too: send it with a frame's first glimpse, omit it after (optional input)."
                   if scene_state else
                   "Implicit state; the scene travels with every request (the graph takes it as a plain input).")
    else:
        if renames:
            raise ExportError(f"{manifest.directory}: its state names {manifest.state_pairs} sort in different orders, "
                              f"which Triton pairs wrongly (server#8586), and a {backend} model can't be renamed here: "
                              f"serve its ONNX artifact with the onnxruntime backend")
        if backend == "tensorrt":
            (version / "model.plan").write_bytes(manifest.read_verified("engine"))
        else:
            (version / "model.xml").write_bytes(manifest.read_verified("ir"))
            (version / "model.bin").write_bytes(manifest.read_verified("weights"))
        comment = (f"Implicit state; no control inputs (the {backend} model's inputs are fixed where it was built).\n"
                   f"The scene travels with every request (the graph takes it as a plain input).")
    if backend != "python":
        _write_initial_state(manifest, model_dir / "initial_state")
    controls = backend in ("python", "onnxruntime")
    config = config_text(manifest, name, backend, options, renames, controls=controls, comment=comment)
    check_config(config, manifest, name, backend, renames, controls=controls)
    (model_dir / "config.pbtxt").write_text(config)
    record = {"artifact": str(manifest.directory.resolve()), "backend": backend, "target": manifest.target,
              "state": [{"input": p.input, "output": p.output, "triton_input": renames.get(p.input, p.input),
                         "triton_output": renames.get(p.output, p.output)} for p in manifest.state],
              "controls": [c for c, _ in CONTROLS] if controls else [],
              "scene_per_request_bytes": 4 * int(np.prod(manifest.input(ROLE_SCENE).shape)),
              "scene_optional": backend == "python" or scene_state,
              "scene_state": {"triton_input": renames.get(SCENE_STATE[0], SCENE_STATE[0]),
                              "triton_output": renames.get(SCENE_STATE[1], SCENE_STATE[1])} if scene_state else None}
    (model_dir / MAPPING_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return TritonModel(name=name, backend=backend, artifact=manifest.directory, state_names=renames)


def plan_models(artifacts: Sequence[Path], backends: Sequence[str] | None) -> list[tuple[Manifest, str, str]]:
    """(manifest, backend, model name) for every artifact and each of its target's backends (restricted to
    `backends` when given). Raises ExportError for a missing or altered artifact, a target Triton can't serve, a
    stateful IR on the OpenVINO backend, names that repeat, or a backend no artifact can use."""
    if not artifacts:
        raise ExportError("no --artifact given: pass at least one artifact folder")
    unknown = sorted(set(backends or ()) - set(BACKENDS))
    if unknown:
        raise ExportError(f"--backends {','.join(unknown)}: unknown; choose from {', '.join(BACKENDS)}")
    plan, names = [], set()
    for path in artifacts:
        try:
            manifest = load_manifest(path)
        except ManifestError as error:
            raise ExportError(str(error)) from error
        if manifest.target not in TARGET_BACKENDS:
            raise ExportError(f"{path} is a {manifest.target} artifact: Triton has no backend for it; pass an ONNX, "
                              f"OpenVINO IR or TensorRT engine artifact")
        for backend in TARGET_BACKENDS[manifest.target]:
            if backends and backend not in backends:
                continue
            if backend == "openvino" and manifest.stateful:
                if backends:
                    raise ExportError(f"{path} is a stateful IR: Triton's implicit state needs the state as graph I/O; "
                                      f"convert with `canvit-export openvino --no-stateful`, or serve it with --backends "
                                      f"python")
                continue
            name = model_name(path, backend)
            if name in names:
                raise ExportError(f"two artifacts would both be model {name!r}: give them folders of different names")
            names.add(name)
            plan.append((manifest, backend, name))
    if not plan:
        raise ExportError(f"no model to write: --backends {','.join(backends or ())} serves none of these artifacts' "
                          f"targets ({', '.join(sorted({load_manifest(p, verify=False).target for p in artifacts}))})")
    return plan


def write_repository(artifacts: Sequence[Path], out: Path, *, options: ServeOptions = ServeOptions(),
                     backends: Sequence[str] | None = None, force: bool = False,
                     progress: Any = None) -> list[TritonModel]:
    """Write the Triton model repository `out` serving `artifacts` (see the module docstring); return its models.

    Written into a staging folder and renamed into place when complete (nothing half-written). `progress(label)`
    is called before each model. Raises ExportError for bad input (one line, naming the fix) before writing.
    """
    options.check()
    plan = plan_models(artifacts, backends)
    models = []
    with staged_artifact(Path(out), force=force, inputs=tuple(artifacts), kind="Triton repository") as staging:
        for manifest, backend, name in plan:
            if progress is not None:
                progress(f"{name} ({backend})")
            models.append(_write_model(manifest, backend, name, staging, options))
    return models


# --- a local server (tests, serve-bench) ------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_tritonserver(python_env: Path) -> tuple[Path, Path]:
    """(tritonserver binary, the Python backend stub for the env's Python) of the nvidia-pytriton wheel installed in
    the virtual environment `python_env`. Raises FileNotFoundError naming what to install."""
    found = sorted(python_env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise FileNotFoundError(f"no tritonserver in {python_env}: create it with scripts/setup.sh (a venv with "
                                f"nvidia-pytriton, numpy<2 and canvit-runtime)")
    server = found[0]
    version = server.parents[4].name.removeprefix("python")  # lib/python3.12/site-packages/pytriton/...
    stub = server.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"{stub}: nvidia-pytriton ships no Python backend stub for Python {version}")
    return server, stub


class LocalTriton:
    """The tritonserver of nvidia-pytriton, on the loopback interface only, serving `repository` (CPU).

    Its Python backend runs the stub with `python_env`'s interpreter (put first on PATH; the stub finds its
    site-packages from it). Ports are chosen free unless given. Use as a context manager, or start()/stop().
    """

    def __init__(self, repository: Path, python_env: Path, *, workdir: Path, grpc_port: int | None = None,
                 http_port: int | None = None) -> None:
        self.repository, self.python_env, self.workdir = Path(repository), Path(python_env), Path(workdir)
        self.grpc_port, self.http_port = grpc_port or free_port(), http_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "tritonserver.log"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _layout(self) -> Path:
        """A server folder: the wheel's tritonserver tree with the stub in backends/python (as PyTriton lays it)."""
        server, stub = find_tritonserver(self.python_env)
        root = self.workdir / "tritonserver"
        if not root.exists():
            shutil.copytree(server.parents[1], root, ignore=shutil.ignore_patterns("python_backend_stubs"))
            shutil.copy(stub, root / "backends" / "python" / "triton_python_backend_stub")
        return root

    def start(self, timeout_s: float = 120.0) -> LocalTriton:
        """Start the server and wait until it is ready; RuntimeError with the log's last lines if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = self._layout()
        python = self.python_env / "bin" / "python"
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        libs = next(self.python_env.glob("lib/python3.*/site-packages/nvidia_pytriton.libs"))
        env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
               "PATH": f"{self.python_env / 'bin'}:{os.environ['PATH']}"}
        env.pop("PYTHONPATH", None)
        command = [str(root / "bin" / "tritonserver"), "--model-repository", str(self.repository),
                   "--backend-directory", str(root / "backends"), "--cache-directory", str(root / "caches"),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--allow-metrics", "false", "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
                   "--exit-timeout-secs", "5"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.process.returncode}): {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            return bool(grpcclient.InferenceServerClient(self.grpc_url).is_server_ready())
        except Exception:
            return False

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(line for line in text.splitlines()[-lines:] if line.strip())

    def kill(self) -> None:
        """SIGKILL the server (a crash, for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the server (its process group: the Python backend stubs too), SIGKILL after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_python_env() -> Path:
    """The Triton server's Python environment: $CANVIT_TRITON_ENV, else .venv/triton beside this checkout's .venv
    (scripts/setup.sh makes it: nvidia-pytriton's Python backend needs numpy < 2, canvit-pytorch numpy >= 2.2)."""
    if "CANVIT_TRITON_ENV" in os.environ:
        return Path(os.environ["CANVIT_TRITON_ENV"])
    return Path(sys.prefix) / "triton"


def glimpse_inputs(scene: np.ndarray | None, center: tuple[float, float], scale: float) -> list[Any]:
    """A glimpse request's inputs for tritonclient.grpc: scene [1, 3, S, S] float32 (None: the Python model reuses the
    sequence's last scene), centers [1, 2] and scales [1] float32 (scene coordinates in [-1, 1]; scale in (0, 1])."""
    import tritonclient.grpc as grpcclient

    arrays = ([] if scene is None else [("scene", scene)]) + [("centers", np.array([center], np.float32)),
                                                               ("scales", np.array([scale], np.float32))]
    tensors = []
    for name, array in arrays:
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32))
        tensors.append(tensor)
    return tensors


def random_viewpoints(seed: int, count: int) -> list[tuple[tuple[float, float], float]]:
    """F-IID (canvit_runtime.policies.full_then_random, the one random-viewpoint generator) as ((row, col), scale)
    pairs of one stream: the full scene, then seeded random valid viewpoints. For load tests and the serving tests."""
    from canvit_runtime.policies import full_then_random

    return [((float(v.centers[0, 0]), float(v.centers[0, 1])), float(v.scales[0]))
            for v in full_then_random(batch=1, glimpses=count, seed=seed)]
