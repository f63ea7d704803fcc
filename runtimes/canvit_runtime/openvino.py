"""OpenVINO runners: a stateful IR (the state lives in OpenVINO variables), a stateless IR, or an ONNX artifact.

Device: "CPU" (default), "GPU", "NPU" or "AUTO". Inference precision hint: f32 (the manifest's), under which
OpenVINO executes the graph's own types: bf16/f16 IRs carry their narrow matmuls in the graph, the canvas path
stays f32. (OpenVINO's CPU default is bf16 on CPUs that have it, which would narrow the canvas path too.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvit_runtime.base import HostStateRunner, Runner, StepResult, check_target
from canvit_runtime.manifest import Manifest, ManifestError, verified_onnx


def compile_step(manifest: Manifest, *, device: str, threads: int | None, inference_precision: str | None,
                 requests: int | None = None, profile: bool = False) -> Any:
    """The artifact's graph (IR or ONNX) compiled on `device` with the inference precision hint; OpenVINO's LATENCY
    performance hint, or its THROUGHPUT hint tuned for `requests` concurrent infer requests when given; `profile`:
    per-node performance counters (an infer request's get_profiling_info())."""
    import openvino as ov

    # Read from the checksummed bytes, the IR's weights passed explicitly: OpenVINO would otherwise read the .bin
    # named after the .xml (or an ONNX graph's external data), which the manifest may not list.
    check_target(manifest, "openvino", "OpenVINO runs IR or ONNX artifacts")
    if manifest.target == "openvino":
        model = ov.Core().read_model(manifest.read_verified("ir"), manifest.read_verified("weights"))
    else:
        model = ov.Core().read_model(verified_onnx(manifest))
    # f32: OpenVINO then executes the graph's own types (see the module docstring).
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision or "f32"}
    if requests is not None:
        config.update(PERFORMANCE_HINT="THROUGHPUT", PERFORMANCE_HINT_NUM_REQUESTS=requests)
    if profile:
        config["PERF_COUNT"] = True
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if device != "CPU" and device not in ov.Core().available_devices and device != "AUTO":
        raise ValueError(f"OpenVINO device {device!r} is not available here: {ov.Core().available_devices}")
    return ov.Core().compile_model(model, device, config)


class _CompiledStep:
    """What both OpenVINO runners hold: the compiled step, one infer request, the output names."""

    name = "openvino"

    def _compile(self, manifest: Manifest, device: str, threads: int | None, inference_precision: str | None,
                 compiled: Any = None, profile: bool = False) -> None:
        self.compiled = compiled if compiled is not None else compile_step(
            manifest, device=device, threads=threads, inference_precision=inference_precision, profile=profile)
        self.request = self.compiled.create_infer_request()
        self._output_names = [o.get_any_name() for o in self.compiled.outputs]
        shapes = lambda ports: {p.get_any_name(): [d.get_length() if d.is_static else None for d in p.get_partial_shape()]
                                for p in ports}
        self._check_graph_io(shapes(self.compiled.inputs), shapes(self.compiled.outputs),  # type: ignore[attr-defined]
                             state_inside=manifest.target == "openvino" and manifest.stateful)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: the request reads the (contiguous, checked) host arrays in place during this synchronous call
        # instead of copying the 3 MB scene first.
        results = self.request.infer(feeds, share_inputs=True)
        return {name: np.array(results[i], copy=True) for i, name in enumerate(self._output_names)}


class OpenVinoRunner(_CompiledStep, HostStateRunner):
    """A stateless IR or an ONNX artifact: the state goes in and out of the graph every glimpse. `profile`: per-node
    performance counters (self.request.get_profiling_info() after a step)."""

    released = ("request", "compiled")

    def __init__(self, manifest: Manifest, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = None, profile: bool = False) -> None:
        HostStateRunner.__init__(self, manifest)
        self._compile(manifest, device, threads, inference_precision, profile=profile)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(feeds)


class OpenVinoStatefulRunner(_CompiledStep, Runner):
    """A stateful IR: canvas and recurrent CLS are OpenVINO variables, read back only when asked for.

    `compiled`: an OpenVINO CompiledModel of this IR to share (OpenVinoStreams): this runner then owns one more infer
    request of it, and with it its own state variables (threads, device, inference_precision and profile are then
    the compiled model's). `profile`: per-node performance counters, as OpenVinoRunner.
    """

    released = ("request", "compiled")

    def __init__(self, manifest: Manifest, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = None, compiled: Any = None, profile: bool = False) -> None:
        Runner.__init__(self, manifest)
        self._compile(manifest, device, threads, inference_precision, compiled, profile)
        by_variable = {state.name: state for state in self.request.query_state()}
        self._states = {}
        for record in manifest.state:
            if record.variable not in by_variable:
                raise ManifestError(f"{manifest.file('ir')} has no state variable {record.variable!r} "
                                    f"(has {sorted(by_variable)}); re-export the artifact")
            self._states[record.input] = by_variable[record.variable]

    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        import openvino as ov

        for name, variable in self._states.items():
            variable.state = ov.Tensor(np.ascontiguousarray(state[name]).copy())

    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(inputs)

    def _read_state(self, name: str) -> np.ndarray:
        return np.array(self._states[name].state.data, copy=True)


class OpenVinoStreams:
    """`streams` independent rollouts of one stateful IR, e.g. one per camera, served by one compiled model under
    OpenVINO's THROUGHPUT hint (it picks the number of CPU streams and their threads): one infer request, hence one
    canvas and recurrent CLS, per stream, all stepped at once.

    runners: one OpenVinoStatefulRunner per stream (reset() or state() one stream through it). A context manager
    (close() on exit). Raises ManifestError for an artifact that is not a stateful IR, ValueError for streams < 1.
    """

    def __init__(self, manifest: Manifest, streams: int, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if streams < 1:
            raise ValueError(f"streams {streams}: need at least one")
        if not (manifest.target == "openvino" and manifest.stateful):
            raise ManifestError(f"{manifest.directory} is not a stateful OpenVINO IR: export one with canvit-export "
                                f"openvino (streams keep their state in the IR's variables)")
        self.compiled = compile_step(manifest, device=device, threads=threads, inference_precision=inference_precision,
                                     requests=streams)
        self.runners = [OpenVinoStatefulRunner(manifest, compiled=self.compiled) for _ in range(streams)]
        self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="canvit-stream")

    def reset(self) -> None:
        """Every stream back to the initial state."""
        for runner in self.runners:
            runner.reset()

    def step(self, scenes: list[np.ndarray], centers: list[np.ndarray], scales: list[np.ndarray]) -> list[StepResult]:
        """One glimpse of every stream at once: stream i runs Runner.step(scenes[i], centers[i], scales[i]) (shapes
        and units as there) on its own infer request; OpenVINO runs the requests concurrently (the GIL is released
        while they infer). Returns the streams' results in order; raises ValueError as Runner.step does."""
        if not len(scenes) == len(centers) == len(scales) == len(self.runners):
            raise ValueError(f"{len(self.runners)} streams: give one scene, centers and scales per stream "
                             f"(got {len(scenes)}, {len(centers)}, {len(scales)})")
        return list(self._pool.map(lambda i: self.runners[i].step(scenes[i], centers[i], scales[i]),
                                   range(len(self.runners))))

    def close(self) -> None:
        """Stop the stepping threads."""
        self._pool.shutdown()

    def __enter__(self) -> OpenVinoStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_runner(manifest: Manifest, **options: Any) -> Runner:
    """The OpenVINO runner the artifact calls for: stateful IR, or stateless IR / ONNX."""
    if manifest.target == "openvino" and manifest.stateful:
        return OpenVinoStatefulRunner(manifest, **options)
    return OpenVinoRunner(manifest, **options)
