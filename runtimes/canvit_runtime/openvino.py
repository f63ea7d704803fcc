"""OpenVINO runners: a stateful IR (the state lives in OpenVINO variables), a stateless IR, or an ONNX artifact.

Device: "CPU" (default), "GPU", "NPU" or "AUTO". Inference precision hint: f32 (the manifest's), under which
OpenVINO executes the graph's own types: bf16/f16 IRs carry their narrow matmuls in the graph, the canvas path
stays f32. (OpenVINO's CPU default is bf16 on CPUs that have it, which would narrow the canvas path too.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvit_runtime.base import HostStateRunner, Runner
from canvit_runtime.manifest import Manifest, ManifestError, a_target


def compile_step(manifest: Manifest, *, device: str, threads: int | None, inference_precision: str | None) -> Any:
    """The artifact's graph (IR or ONNX) compiled on `device` with the inference precision hint."""
    import openvino as ov

    if manifest.target == "openvino":
        path = manifest.file("ir")
    elif manifest.target == "onnx":
        path = manifest.file("graph")
    else:
        raise ManifestError(f"{manifest.directory} is {a_target(manifest.target)} artifact; OpenVINO runs IR or ONNX artifacts")
    # f32: OpenVINO then executes the graph's own types (see the module docstring).
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision or "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if device != "CPU" and device not in ov.Core().available_devices and device != "AUTO":
        raise ValueError(f"OpenVINO device {device!r} is not available here: {ov.Core().available_devices}")
    return ov.Core().compile_model(str(path), device, config)


class _CompiledStep:
    """What both OpenVINO runners hold: the compiled step, one infer request, the output names."""

    name = "openvino"

    def _compile(self, manifest: Manifest, device: str, threads: int | None, inference_precision: str | None) -> None:
        self.compiled = compile_step(manifest, device=device, threads=threads, inference_precision=inference_precision)
        self.request = self.compiled.create_infer_request()
        self._output_names = [o.get_any_name() for o in self.compiled.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        return {name: np.array(results[i], copy=True) for i, name in enumerate(self._output_names)}


class OpenVinoRunner(_CompiledStep, HostStateRunner):
    """A stateless IR or an ONNX artifact: the state goes in and out of the graph every glimpse."""

    def __init__(self, manifest: Manifest, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = None) -> None:
        HostStateRunner.__init__(self, manifest)
        self._compile(manifest, device, threads, inference_precision)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(feeds)


class OpenVinoStatefulRunner(_CompiledStep, Runner):
    """A stateful IR: canvas and recurrent CLS are OpenVINO variables, read back only when asked for."""

    def __init__(self, manifest: Manifest, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = None) -> None:
        Runner.__init__(self, manifest)
        self._compile(manifest, device, threads, inference_precision)
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


def make_runner(manifest: Manifest, **options: Any) -> Runner:
    """The OpenVINO runner the artifact calls for: stateful IR, or stateless IR / ONNX."""
    if manifest.target == "openvino" and manifest.stateful:
        return OpenVinoStatefulRunner(manifest, **options)
    return OpenVinoRunner(manifest, **options)
