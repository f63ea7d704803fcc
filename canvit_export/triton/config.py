"""config.pbtxt: Triton's ModelConfig of one model in protobuf text format, written from the manifest (config_text)
and parsed back with Triton's own protobuf to be checked against it (check_config)."""

from __future__ import annotations

from collections.abc import Iterable

from canvit_export.errors import ExportError
from canvit_export.triton.serving import CONTROLS, SCENE_STATE, TRITON_DTYPES, ServeOptions
from canvit_runtime.manifest import ROLE_CENTERS, ROLE_SCALES, ROLE_SCENE, Manifest
from canvit_runtime.paths import printable
from canvit_runtime.triton_model import OPEN_SEQUENCES


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
