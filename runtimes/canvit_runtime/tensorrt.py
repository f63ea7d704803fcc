"""TensorRT runner: a step.engine on the GPU, the state resident in device memory.

The canvas and recurrent CLS live in two device buffers each (ping-pong): a glimpse reads one and writes the other,
then they swap, so no canvas crosses PCIe between glimpses; `StepResult.canvas` copies it to the host only when
read. With cuda_graph=True the step is captured once per buffer assignment (two CUDA graphs) and replayed; a capture
that fails falls back to plain enqueues.
Needs `tensorrt` and `cuda-python` (cuda.bindings.runtime; older releases: cuda.cudart).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvit_runtime.base import Runner, check_target
from canvit_runtime.manifest import Manifest, ManifestError, TensorRtArtifact

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
# Manifest dtypes -> TensorRT DataType member names (tensorrt.DataType.<name>).
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16"}


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as error:
            raise ImportError("cuda-python is not installed (pip install cuda-python)") from error
    return cudart


def cuda_call(result: Any) -> Any:
    """Unwrap a cuda-python call's (error, value...) tuple; RuntimeError on a CUDA error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def engine_io_mismatch(engine: Any, manifest: Manifest) -> str | None:
    """Why a deserialized ICudaEngine does not fit the manifest (I/O names, then dtypes), or None when it does."""
    io = {name: str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
          for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))}
    expected = {t.name: t.dtype for t in (*manifest.inputs, *manifest.outputs)}
    if set(io) != set(expected):
        return f"the engine's I/O {sorted(io)} differs from the manifest's {sorted(expected)}"
    if wrong := [name for name, dtype in io.items() if TRT_DTYPES.get(expected[name]) != dtype]:
        return f"the engine's tensor {wrong[0]} is {io[wrong[0]]}, the manifest says {expected[wrong[0]]}"
    return None


class TensorRtRunner(Runner):
    """Runs step.engine with TensorRT on CUDA device `device` (default 0)."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, *, threads: int | None = None, device: int = 0,
                 cuda_graph: bool = False) -> None:
        super().__init__(manifest)
        check_target(manifest, self.name, f"TensorRT runs engine artifacts: build one with `canvit-export trt "
                                          f"--artifact {manifest.directory}`")
        assert isinstance(manifest.artifact, TensorRtArtifact)  # the manifest's target names its artifact's type
        import tensorrt as trt

        self.cudart = cudart = import_cudart()
        cuda_call(cudart.cudaSetDevice(device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(manifest.read_verified("engine"))
        if self.engine is None:
            raise ManifestError(f"{manifest.file('engine')}: TensorRT cannot load this engine here (built with "
                                f"TensorRT {manifest.artifact.tensorrt} on {manifest.artifact.gpu}); rebuild it on "
                                f"this device")
        if problem := engine_io_mismatch(self.engine, manifest):  # adopted engines are checked here first
            raise ManifestError(f"{manifest.file('engine')}: {problem}; rebuild it from the artifact's step.onnx")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_call(cudart.cudaStreamCreate())
        self.cuda_graph = cuda_graph
        self._graphs: dict[int, Any] = {}
        self._buffers: dict[str, int] = {}
        self._sizes: dict[str, tuple[list[int], type]] = {}
        for spec in (*manifest.inputs, *manifest.outputs):
            dtype = NUMPY_DTYPES[spec.dtype]
            nbytes = int(np.prod(spec.shape)) * np.dtype(dtype).itemsize
            self._buffers[spec.name] = cuda_call(cudart.cudaMalloc(nbytes))
            self._sizes[spec.name] = (spec.shape, dtype)
        # State ping-pong: parity 0 reads the input buffers and writes the output buffers; parity 1 the reverse.
        self._pairs = manifest.state_pairs
        self._parity = 0

    def _addresses(self, parity: int) -> dict[str, int]:
        addresses = dict(self._buffers)
        if parity == 1:
            for inp, out in self._pairs:
                addresses[inp], addresses[out] = self._buffers[out], self._buffers[inp]
        return addresses

    def _copy(self, name: str, array: np.ndarray, kind: str) -> None:
        cudart = self.cudart
        if kind == "h2d":
            cuda_call(cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        else:
            cuda_call(cudart.cudaMemcpyAsync(array.ctypes.data, self._buffers[name], array.nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        self._parity = 0
        for name, array in state.items():
            self._copy(name, np.ascontiguousarray(array, dtype=self._sizes[name][1]), "h2d")
        cuda_call(self.cudart.cudaStreamSynchronize(self.stream))

    def _enqueue(self) -> None:
        """Run the step on the stream for the current buffer assignment. With cuda_graph, the first glimpse of each
        assignment runs as a plain launch (TensorRT wants one before capture) and is then captured, not run again,
        as a CUDA graph that later glimpses of that assignment replay. A capture that fails (e.g. a TensorRT build
        or plugin that cannot be captured) turns the graphs off for this runner, with a warning, as the C++ demo
        does."""
        for name, address in self._addresses(self._parity).items():
            self.context.set_tensor_address(name, address)
        if self.cuda_graph and self._parity in self._graphs:
            cuda_call(self.cudart.cudaGraphLaunch(self._graphs[self._parity], self.stream))
            return
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        if self.cuda_graph:
            self._capture()

    def _capture(self) -> None:
        """Capture the current assignment's step as a CUDA graph (recorded, not executed) and keep its executable."""
        cudart = self.cudart
        try:
            cuda_call(cudart.cudaStreamBeginCapture(self.stream,
                                                    cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            launched = self.context.execute_async_v3(self.stream)
            graph = cuda_call(cudart.cudaStreamEndCapture(self.stream))  # ends the capture even after a failure
            if not launched:
                raise RuntimeError("execute_async_v3 failed during capture")
            try:
                self._graphs[self._parity] = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
            finally:
                cudart.cudaGraphDestroy(graph)  # the executable keeps what it needs
        except RuntimeError as error:
            import warnings

            warnings.warn(f"CUDA graph capture failed ({error}); running the step with plain enqueues", stacklevel=3)
            self.cuda_graph = False
            self._destroy_graphs()

    def _destroy_graphs(self) -> None:
        for executable in self._graphs.values():
            self.cudart.cudaGraphExecDestroy(executable)
        self._graphs.clear()

    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, array in inputs.items():
            self._copy(name, array, "h2d")
        self._enqueue()
        extras = {}
        state_outputs = {out for _, out in self._pairs}
        for spec in self.manifest.outputs:
            if spec.name not in state_outputs:
                extras[spec.name] = np.empty(spec.shape, NUMPY_DTYPES[spec.dtype])
                self._copy(spec.name, extras[spec.name], "d2h")
        self._parity ^= 1  # the outputs just written are the next glimpse's state inputs
        cuda_call(self.cudart.cudaStreamSynchronize(self.stream))
        return extras

    def _read_state(self, name: str) -> np.ndarray:
        # After a step (parity flipped), the current state sits where the buffer map of the current parity
        # has its input `name`.
        shape, dtype = self._sizes[name]
        host: np.ndarray = np.empty(shape, dtype)
        address = self._addresses(self._parity)[name]
        cuda_call(self.cudart.cudaMemcpy(host.ctypes.data, address, host.nbytes,
                                         self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return host

    def _release(self) -> None:
        """Free what the runner holds on the GPU: graph executables, device buffers, the stream (once)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if getattr(self, "_graphs", None):
            self._destroy_graphs()
        for address in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(address)
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None

    def __del__(self) -> None:
        self.close()
