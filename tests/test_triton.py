"""canvit-export triton: model repositories for Triton (ONNX Runtime, TensorRT, OpenVINO, Python backends).

Every config.pbtxt is parsed by Triton's own ModelConfig protobuf (tritonclient) and checked field by field against
the manifest; the ONNX Runtime model's renamed, control-augmented graph is run against the artifact's own graph;
the Python-backend repository is served by nvidia-pytriton's tritonserver (CPU, loopback) and each of several
concurrent sequences is compared with a single-stream canvit_runtime rollout of the same inputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from canvit_runtime.manifest import load_manifest
from canvit_runtime.paths import MARKER
from canvit_runtime.policies import full_then_random


def _local_triton():  # -> the module scripts/local_triton.py: the tritonserver harness, outside canvit-export
    spec = importlib.util.spec_from_file_location("local_triton", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "local_triton.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_triton = _local_triton()
glimpse_inputs = local_triton.glimpse_inputs

HAS_TRITONCLIENT = importlib.util.find_spec("tritonclient") is not None
needs_client = pytest.mark.skipif(not HAS_TRITONCLIENT, reason="tritonclient is not installed (pip install -e '.[triton]')")
DTYPES = {"float32": "TYPE_FP32"}


def parse_config(model_dir: Path):  # -> model_config_pb2.ModelConfig
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# --- names ------------------------------------------------------------------------------------------------------
def test_backends_per_target_come_from_the_runtime_table(monkeypatch) -> None:
    """Each target is served by the C++ backend of the runtime whose own format it is and, when a runtime the Python
    model runs can run it, by the Python model; Core ML by none. The rule reads canvit_runtime.base.TARGETS: a runtime
    that stopped running ONNX would take the Python model away from ONNX artifacts."""
    from canvit_export.triton import backends_of
    from canvit_runtime import base

    assert {t: backends_of(t) for t in ("onnx", "openvino", "tensorrt", "coreml")} == {
        "onnx": ("onnxruntime", "python"), "openvino": ("openvino", "python"), "tensorrt": ("tensorrt",), "coreml": ()}
    monkeypatch.setitem(base.TARGETS, "onnxruntime", ("tensorrt",))
    monkeypatch.setitem(base.TARGETS, "openvino", ("openvino",))
    assert backends_of("onnx") == () and backends_of("tensorrt") == ("onnxruntime", "tensorrt", "python")


def triton_pairs(inputs: list[str], outputs: list[str]) -> list[tuple[str, str]]:
    """How Triton (server#8586) pairs implicit states: the i-th input by name with the i-th output by name."""
    return list(zip(sorted(inputs), sorted(outputs), strict=True))


@pytest.mark.parametrize("pairs", [
    [("canvas", "canvas_next"), ("recurrent_cls", "recurrent_cls_next")],
    [("canvas", "z_canvas_out"), ("recurrent_cls", "a_cls_out")],
    [("b", "x"), ("a", "z"), ("c", "y")],
])
def test_state_names_pair_as_triton_sorts_them(pairs: list[tuple[str, str]]) -> None:
    from canvit_export.triton import triton_state_names

    renames = triton_state_names(pairs)
    ins, outs = [renames.get(i, i) for i, _ in pairs], [renames.get(o, o) for _, o in pairs]
    assert sorted(triton_pairs(ins, outs)) == sorted(zip(ins, outs, strict=True)), renames
    if sorted(range(len(pairs)), key=lambda k: pairs[k][0]) == sorted(range(len(pairs)), key=lambda k: pairs[k][1]):
        assert renames == {}, "names that already pair correctly stay as they are"
    else:
        assert triton_pairs([i for i, _ in pairs], [o for _, o in pairs]) != pairs or len(pairs) > 2  # the bug bites


# --- repositories and configs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(export_artifact, tmp_path_factory) -> dict[str, Path]:
    """An ONNX artifact with readouts, its stateless OpenVINO IR, and a TensorRT engine artifact adopted from a
    trtexec log (placeholder engine bytes: nothing loads it here)."""
    from test_tensorrt import jetson_build

    from canvit_export.export.openvino import export_openvino
    from canvit_runtime.engine import adopt_engine

    onnx_dir = export_artifact("vits16", canvas=16, readout="segmentation,classification")
    root = tmp_path_factory.mktemp("triton-artifacts")
    found = {"onnx": onnx_dir}
    if importlib.util.find_spec("openvino") is not None:
        found["openvino"] = root / "ir"
        export_openvino(onnx_dir, found["openvino"], stateful=False, quiet=True)
    engine, log = jetson_build(onnx_dir, root)
    found["tensorrt"] = root / "trt"
    adopt_engine(onnx_dir, engine, found["tensorrt"], trtexec_log=log, stage=lambda label: contextlib.nullcontext())
    return found


@pytest.fixture(scope="module")
def repository(artifacts, tmp_path_factory) -> Path:
    from canvit_export.triton import ServeOptions, write_repository

    out = tmp_path_factory.mktemp("triton-repo") / "repo"
    write_repository(list(artifacts.values()), out, options=ServeOptions(idle_us=2_000_000, max_sequences=6))
    return out


def expected_models(artifacts: dict[str, Path]) -> dict[str, tuple[str, Path]]:
    backends = {"onnx": ("onnxruntime", "python"), "openvino": ("openvino", "python"), "tensorrt": ("tensorrt",)}
    safe = lambda path: path.name.replace("+", "_")  # model names keep letters, digits, '.', '_', '-'
    return {f"{safe(path)}-{b}": (b, path) for target, path in artifacts.items() for b in backends[target]}


@needs_client
def test_every_config_parses_and_matches_the_manifest(artifacts, repository) -> None:
    from tritonclient.grpc import model_config_pb2

    models = expected_models(artifacts)
    # the models, and this tool's marker (what --force may replace; Triton loads folders only)
    assert sorted(p.name for p in repository.iterdir()) == sorted([*models, MARKER])
    for name, (backend, artifact) in models.items():
        manifest = load_manifest(artifact)
        config = parse_config(repository / name)
        assert (config.name, config.backend, config.max_batch_size) == (name, backend, 0)
        roles = {t.role: t for t in manifest.inputs}
        want_inputs = [roles[r] for r in ("scene", "viewpoint_centers", "viewpoint_scales")]
        assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
            (t.name, t.shape, model_config_pb2.DataType.Value(DTYPES[t.dtype])) for t in want_inputs], name
        assert [i.optional for i in config.input] == [backend == "python", False, False], "scene optional in python"
        outputs = {o.name: o for o in config.output}
        mapping = json.loads((repository / name / "canvit_triton.json").read_text())
        renamed = {s["output"]: s["triton_output"] for s in mapping["state"]}
        for t in manifest.outputs:
            out = outputs[renamed.get(t.name, t.name)]
            assert (list(out.dims), out.data_type) == (t.shape, model_config_pb2.DataType.Value(DTYPES[t.dtype])), (name, t.name)
        for r in manifest.readouts:
            assert set(r.outputs) <= set(outputs), f"{name} lacks readout outputs {r.outputs}"
        batching = config.sequence_batching
        assert config.WhichOneof("scheduling_choice") == "sequence_batching"
        assert batching.max_sequence_idle_microseconds == 2_000_000
        assert batching.WhichOneof("strategy_choice") == "oldest" and batching.oldest.max_candidate_sequences == 6
        controls = {c.name: c.control[0] for c in batching.control_input}
        if backend in ("python", "onnxruntime"):
            kinds = {n: batching.Control.Kind.Name(c.kind) for n, c in controls.items()}
            assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                             "READY": "CONTROL_SEQUENCE_READY", "CORRID": "CONTROL_SEQUENCE_CORRID"}
            assert list(controls["START"].int32_false_true) == [0, 1]
        else:
            assert not controls, "an engine's or IR's inputs are fixed: no control inputs"
        if backend == "python":
            assert not batching.state and (repository / name / "1" / "model.py").is_file()
            assert load_manifest(repository / name / "1" / "artifact").files == manifest.files
            assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
            continue
        assert [(s.input_name, s.output_name) for s in batching.state] == [
            (s["triton_input"], s["triton_output"]) for s in mapping["state"]]
        assert [(s["input"], s["output"]) for s in mapping["state"]] == list(manifest.state_pairs)
        triton_order = triton_pairs([s.input_name for s in batching.state], [s.output_name for s in batching.state])
        assert sorted(triton_order) == sorted((s.input_name, s.output_name) for s in batching.state), "server#8586"
        initial = manifest.initial_state_arrays(manifest.batch)
        for state, pair in zip(batching.state, manifest.state, strict=True):
            assert list(state.dims) == pair.shape and state.data_type == model_config_pb2.TYPE_FP32
            (init,) = state.initial_state
            assert list(init.dims) == pair.shape and init.WhichOneof("state_data") == "data_file"
            data = np.fromfile(repository / name / "initial_state" / init.data_file, dtype="<f4")
            np.testing.assert_array_equal(data.reshape(pair.shape), initial[pair.input])
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        model_file = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": "model.xml"}[backend]
        assert (repository / name / "1" / model_file).is_file()


def test_onnxruntime_model_graph_runs_like_the_artifact(artifacts, repository) -> None:
    """The repository's model.onnx (control inputs added, names as configured) computes the artifact's step."""
    import onnxruntime as ort

    import canvit_runtime

    artifact = artifacts["onnx"]
    manifest = load_manifest(artifact)
    name = f"{artifact.name.replace('+', '_')}-onnxruntime"
    mapping = json.loads((repository / name / "canvit_triton.json").read_text())
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    scene = rng.standard_normal(manifest.input("scene").shape).astype(np.float32)
    centers, scales = np.array([[0.25, -0.25]], np.float32), np.array([0.5], np.float32)
    state = manifest.initial_state_arrays(1)
    feeds = {"scene": scene, "centers": centers, "scales": scales, "START": np.array([1], np.int32),
             "END": np.array([0], np.int32), "READY": np.array([1], np.int32), "CORRID": np.array([7], np.uint64)}
    feeds.update({s["triton_input"]: state[s["input"]] for s in mapping["state"]})
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    runner = canvit_runtime.open(artifact, runtime="onnxruntime")
    result = runner.step(scene, centers, scales)
    canvas_out = next(s["triton_output"] for s in mapping["state"] if s["input"] == "canvas")
    np.testing.assert_allclose(got[canvas_out], result.canvas, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["seg_logits"], result.extras["seg_logits"], rtol=1e-4, atol=1e-4)


def test_scene_state_model_sends_the_scene_once_per_frame(export_artifact, tmp_path: Path) -> None:
    """--scene-state: the ONNX Runtime model keeps the scene as a third implicit state. Run as Triton would (state
    outputs fed back, the scene omitted after a frame's first glimpse), it equals the artifact's rollout."""
    import onnxruntime as ort

    import canvit_runtime
    from canvit_export.triton import ServeOptions, write_repository

    artifact = export_artifact("vits16", canvas=16)
    manifest = load_manifest(artifact)
    write_repository([artifact], tmp_path / "repo", backends=["onnxruntime"], options=ServeOptions(scene_state=True))
    model_dir = tmp_path / "repo" / f"{artifact.name}-onnxruntime"
    scene_shape = manifest.input("scene").shape
    if HAS_TRITONCLIENT:
        config = parse_config(model_dir)
        assert config.input[0].name == "scene" and config.input[0].optional
        states = {s.input_name: s for s in config.sequence_batching.state}
        assert sorted(states) == ["canvas", "recurrent_cls", "scene_state"]
        assert states["scene_state"].output_name == "scene_state_next"
        assert list(states["scene_state"].dims) == scene_shape
        assert states["scene_state"].initial_state[0].WhichOneof("state_data") == "zero_data"
        ins, outs = [s.input_name for s in states.values()], [s.output_name for s in states.values()]
        assert sorted(triton_pairs(ins, outs)) == sorted(zip(ins, outs, strict=True)), "server#8586"
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    frames = [rng.standard_normal(scene_shape).astype(np.float32) for _ in range(2)]
    plan = [(frames[0], True), (frames[0], False), (frames[0], False), (frames[1], True), (frames[1], False)]
    views = full_then_random(batch=1, glimpses=len(plan), seed=3)
    state = {**manifest.initial_state_arrays(1), "scene_state": np.zeros(scene_shape, np.float32)}
    runner = canvit_runtime.open(artifact)
    controls = {"START": np.zeros(1, np.int32), "END": np.zeros(1, np.int32), "READY": np.ones(1, np.int32),
                "CORRID": np.ones(1, np.uint64)}
    for (scene, send), view in zip(plan, views, strict=True):
        centers, scales = view.centers, view.scales
        feeds = {"centers": centers, "scales": scales, **controls, **state}
        if send:
            feeds["scene"] = scene
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        state = {"canvas": got["canvas_next"], "recurrent_cls": got["recurrent_cls_next"],
                 "scene_state": got["scene_state_next"]}
        want = runner.step(scene, centers, scales)
        np.testing.assert_array_equal(state["scene_state"], scene)
        np.testing.assert_allclose(state["canvas"], want.canvas, rtol=1e-5, atol=1e-5)


def test_renamed_states_are_renamed_in_the_graph(tmp_path: Path) -> None:
    """prepare_onnx renames graph I/O (and the nodes that use them): a two-state toy graph, run by ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from canvit_export.triton import prepare_onnx, triton_state_names

    pairs = [("canvas", "z_canvas"), ("recurrent_cls", "a_cls")]
    nodes = [helper.make_node("Neg", ["canvas"], ["z_canvas"]), helper.make_node("Abs", ["recurrent_cls"], ["a_cls"])]
    value = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])
    graph = helper.make_graph(nodes, "toy", [value("canvas"), value("recurrent_cls")], [value("z_canvas"), value("a_cls")])
    source, copy = tmp_path / "toy.onnx", tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    renames = triton_state_names(pairs)
    assert renames, "these names sort in different orders"
    prepare_onnx(source, copy, renames, controls=True)
    session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [renames["canvas"], renames["recurrent_cls"], "START", "END",
                                                      "READY", "CORRID"]
    x = np.array([-1.0, 2.0], np.float32)
    out = session.run(None, {renames["canvas"]: x, renames["recurrent_cls"]: x, "START": np.ones(1, np.int32),
                             "END": np.zeros(1, np.int32), "READY": np.ones(1, np.int32), "CORRID": np.ones(1, np.uint64)})
    names = [o.name for o in session.get_outputs()]
    assert dict(zip(names, [o.tolist() for o in out], strict=True)) == {renames["z_canvas"]: [1.0, -2.0],
                                                                         renames["a_cls"]: [1.0, 2.0]}


@pytest.mark.parametrize(("args", "needle"), [
    (["--artifact", "{missing}"], "no such artifact folder"),
    (["--artifact", "{onnx}", "--backends", "coreml"], "--backends coreml: unknown"),
    (["--artifact", "{onnx}", "--backends", "tensorrt"], "no model to write"),
    (["--artifact", "{onnx}", "--strategy", "newest"], "--strategy newest"),
    (["--artifact", "{onnx}", "--idle-ms", "0"], "--idle-ms 0"),
    (["--artifact", "{onnx}", "--artifact", "{onnx}"], "would both be model"),
    (["--artifact", "{onnx}", "--out", "{existing}"], "already exists: pass --force"),
])
def test_cli_refusals_are_one_line(export_artifact, tmp_path: Path, args: list[str], needle: str) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    paths = {"missing": str(tmp_path / "nothing"), "onnx": str(export_artifact("vits16", canvas=16)),
             "existing": str(existing)}
    args = [a.format(**paths) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "repo")]
    code, output = run_cli("triton", *args)
    assert code == 2, output
    assert output.startswith("error: ") and len(output.strip().splitlines()) == 1 and needle in output, output
    assert not (tmp_path / "repo").exists() and list(existing.iterdir()) == [], "nothing half-written"


def test_cli_writes_a_python_repository(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16)
    code, output = run_cli("triton", "--artifact", str(artifact), "--backends", "python", "--device", "cpu",
                           "--out", str(tmp_path / "repo"))
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [MARKER, f"{artifact.name}-python"]
    assert f"{artifact.name}-python" in output


# --- the sequence store (no server) -----------------------------------------------------------------------------
def test_sequence_store_sessions(export_artifact) -> None:
    import canvit_runtime
    from canvit_runtime.triton_model import SequenceStore, UnknownSequence

    artifact = export_artifact("vits16", canvas=16)
    now = [0.0]
    store = SequenceStore(canvit_runtime.open(artifact), idle_s=5.0, clock=lambda: now[0])
    scene = np.random.default_rng(2).standard_normal((1, 3, 512, 512)).astype(np.float32)
    full, half = (np.zeros((1, 2), np.float32), np.ones(1, np.float32)), (np.full((1, 2), 0.5, np.float32),
                                                                          np.full(1, 0.5, np.float32))
    with pytest.raises(UnknownSequence, match=r"sequence 1 has no state .* sequence_start=True"):
        store.step(1, start=False, end=False, scene=scene, centers=full[0], scales=full[1])
    with pytest.raises(ValueError, match="must carry the scene"):
        store.step(1, start=True, end=False, scene=None, centers=full[0], scales=full[1])
    assert len(store) == 0
    store.step(1, start=True, end=False, scene=scene, centers=full[0], scales=full[1])
    out = store.step(1, start=False, end=False, scene=None, centers=half[0], scales=half[1])
    reference = canvit_runtime.open(artifact)
    reference.step(scene, *full)
    np.testing.assert_array_equal(out["canvas_next"], reference.step(scene, *half).canvas)
    now[0] = 6.0  # idle past 5 s: freed at the next request
    with pytest.raises(UnknownSequence):
        store.step(1, start=False, end=False, scene=None, centers=half[0], scales=half[1])
    out = store.step(2, start=True, end=True, scene=scene, centers=full[0], scales=full[1])
    assert out["open_sequences"].tolist() == [0] and len(store) == 0


# --- a live server ----------------------------------------------------------------------------------------------
def server_skip_reason() -> str | None:
    if not HAS_TRITONCLIENT:
        return "tritonclient is not installed (pip install -e '.[triton]')"
    try:
        local_triton.find_tritonserver(local_triton.default_python_env())
    except FileNotFoundError as error:
        return str(error)
    return None


IDLE_S = 2.0


@pytest.fixture(scope="module")
def server(export_artifact, tmp_path_factory):
    """The Python-backend models of an ONNX artifact (ONNX Runtime) and of its stateful OpenVINO IR (OpenVINO, the
    state in OpenVINO variables, swapped per sequence), served by one local tritonserver: (server, {runtime: (model
    name, artifact)})."""
    from canvit_export.export.openvino import export_openvino
    from canvit_export.triton import ServeOptions, write_repository

    if reason := server_skip_reason():
        pytest.skip(reason)
    artifact = export_artifact("vits16", canvas=16, readout="segmentation")
    root = tmp_path_factory.mktemp("triton-server")
    served = {"onnxruntime": artifact}
    if importlib.util.find_spec("openvino") is not None:
        served["openvino"] = root / "ir-stateful"
        export_openvino(artifact, served["openvino"], stateful=True, quiet=True)
    models = write_repository(list(served.values()), root / "repo", backends=["python"],
                              options=ServeOptions(idle_us=int(IDLE_S * 1e6), threads=1))
    names = {m.artifact.resolve(): m.name for m in models}
    triton = local_triton.LocalTriton(root / "repo", local_triton.default_python_env(), workdir=root / "server")
    try:
        triton.start()
    except RuntimeError as error:
        triton.stop()
        pytest.skip(f"the local tritonserver did not start: {error}")
    try:
        yield triton, {runtime: (names[path.resolve()], path) for runtime, path in served.items()}
    finally:
        triton.stop()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_concurrent_sequences_match_single_stream_runs(server, runtime: str) -> None:
    """4 sequences x 8 glimpses at once (two send the scene once, two with every glimpse): each one's canvas and
    readouts equal a single-stream canvit_runtime rollout of its own inputs on the same runtime."""
    import tritonclient.grpc as grpcclient

    import canvit_runtime

    triton, models = server
    if runtime not in models:
        pytest.skip("openvino is not installed: no IR to serve")
    model, artifact = models[runtime]
    streams, glimpses = 4, 8
    scenes = [np.random.default_rng(10 + s).standard_normal((1, 3, 512, 512)).astype(np.float32) for s in range(streams)]
    plans = [full_then_random(batch=1, glimpses=glimpses, seed=20 + s) for s in range(streams)]
    results: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def run(stream: int) -> None:
        try:
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            for g, view in enumerate(plans[stream]):
                scene = scenes[stream] if g == 0 or stream % 2 else None
                response = client.infer(model, glimpse_inputs(scene, view.centers, view.scales),
                                        sequence_id=100 + stream, sequence_start=g == 0,
                                        sequence_end=g == glimpses - 1)
            results[stream] = {n: response.as_numpy(n) for n in ("canvas_next", "recurrent_cls_next", "seg_logits")}
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    reference = canvit_runtime.open(artifact, runtime=runtime, threads=1)
    canvases = []
    for stream in range(streams):
        reference.reset()
        for view in plans[stream]:
            result = reference.step(scenes[stream], view.centers, view.scales)
        np.testing.assert_allclose(results[stream]["canvas_next"], result.canvas, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(results[stream]["recurrent_cls_next"], result.recurrent_cls, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(results[stream]["seg_logits"], result.extras["seg_logits"], rtol=1e-4, atol=1e-4)
        canvases.append(result.canvas)
    assert min(np.abs(a - b).max() for i, a in enumerate(canvases) for b in canvases[i + 1:]) > 1e-3, \
        "the streams must differ for cross-talk to show"


def test_end_frees_the_sequence(server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton, models = server
    model, _ = models["onnxruntime"]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    scene = np.zeros((1, 3, 512, 512), np.float32)
    first = client.infer(model, glimpse_inputs(scene, [[0, 0]], [1.0]), sequence_id=201, sequence_start=True)
    opened = int(first.as_numpy("open_sequences")[0])
    client.infer(model, glimpse_inputs(scene, [[0, 0]], [1.0]), sequence_id=202, sequence_start=True)
    ended = client.infer(model, glimpse_inputs(None, [[0.5, 0.5]], [0.5]), sequence_id=201, sequence_end=True)
    assert int(ended.as_numpy("open_sequences")[0]) == opened, "END freed sequence 201's session (202 opened)"
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        client.infer(model, glimpse_inputs(None, [[0, 0]], [1.0]), sequence_id=201)
    client.infer(model, glimpse_inputs(None, [[0, 0]], [1.0]), sequence_id=202, sequence_end=True)


def test_idle_sequence_times_out(server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton, models = server
    model, _ = models["onnxruntime"]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    scene = np.zeros((1, 3, 512, 512), np.float32)
    client.infer(model, glimpse_inputs(scene, [[0, 0]], [1.0]), sequence_id=301, sequence_start=True)
    time.sleep(IDLE_S + 1.5)
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        client.infer(model, glimpse_inputs(None, [[0, 0]], [1.0]), sequence_id=301)
    fresh = client.infer(model, glimpse_inputs(scene, [[0, 0]], [1.0]), sequence_id=302, sequence_start=True,
                         sequence_end=True)
    assert int(fresh.as_numpy("open_sequences")[0]) == 0, "the idle sequence's session was freed"


def test_unknown_sequence_and_bad_requests_are_refused(server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton, models = server
    model, _ = models["onnxruntime"]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException, match=r"sequence 999 .* must specify the START flag"):
        client.infer(model, glimpse_inputs(np.zeros((1, 3, 512, 512), np.float32), [[0, 0]], [1.0]), sequence_id=999)
    with pytest.raises(InferenceServerException, match="must carry the scene"):
        client.infer(model, glimpse_inputs(None, [[0, 0]], [1.0]), sequence_id=401, sequence_start=True, sequence_end=True)
    with pytest.raises(InferenceServerException, match=r"scale 2\.0 is outside"):
        client.infer(model, glimpse_inputs(np.zeros((1, 3, 512, 512), np.float32), [[0, 0]], [2.0]), sequence_id=402,
                     sequence_start=True, sequence_end=True)


def test_server_restart_mid_sequence(server) -> None:
    """The server killed mid-sequence: the client is told it is unavailable; after a restart the sequence's state is
    gone (continuing is refused: START required), and the sequence started again matches a single-stream run."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    import canvit_runtime

    triton, models = server
    model, artifact = models["onnxruntime"]
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    scene = np.random.default_rng(5).standard_normal((1, 3, 512, 512)).astype(np.float32)
    plan = full_then_random(batch=1, glimpses=4, seed=5)
    for g in range(2):
        client.infer(model, glimpse_inputs(scene if g == 0 else None, plan[g].centers, plan[g].scales), sequence_id=501,
                     sequence_start=g == 0)
    triton.kill()
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        client.infer(model, glimpse_inputs(None, plan[2].centers, plan[2].scales), sequence_id=501)
    triton.start()
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        client.infer(model, glimpse_inputs(None, plan[2].centers, plan[2].scales), sequence_id=501)
    for g, view in enumerate(plan):
        response = client.infer(model, glimpse_inputs(scene if g == 0 else None, view.centers, view.scales), sequence_id=501,
                                sequence_start=g == 0, sequence_end=g == len(plan) - 1)
    reference = canvit_runtime.open(artifact, threads=1)
    for view in plan:
        result = reference.step(scene, view.centers, view.scales)
    np.testing.assert_allclose(response.as_numpy("canvas_next"), result.canvas, rtol=1e-5, atol=1e-5)
