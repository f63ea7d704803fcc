"""ONNX Runtime runner: the artifact's step.onnx in an InferenceSession (CPU by default)."""

from __future__ import annotations

import numpy as np

from canvit_runtime.base import Runner
from canvit_runtime.manifest import Manifest


class OnnxRuntimeRunner(Runner):
    """Runs step.onnx with ONNX Runtime; `providers` defaults to ["CPUExecutionProvider"], `threads` sets
    intra-op threads (None: ONNX Runtime's default, one per physical core)."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        super().__init__(manifest)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(manifest.file("graph")), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds), strict=True))
