"""Triton Python-backend model: CanViT's glimpse step on canvit_runtime (ONNX Runtime or OpenVINO), many sequences.

Written into a model repository by `canvit-export triton` as <model>/1/model.py, beside <model>/1/artifact/ (the
canvit-export artifact). The server's Python needs canvit-runtime with the chosen backend
(`pip install 'canvit-runtime[onnxruntime]'` or `[openvino]`) and numpy < 2 for Triton <= 2.51's Python backend.

Requests come from Triton's sequence batcher with the control inputs START, END, READY (int32 [1]) and CORRID (uint64
[1]); inputs scene [B, 3, S, S] (optional: omitted, the sequence's last scene is reused), centers [B, 2], scales [B]
(float32). Outputs: canvas_next, recurrent_cls_next, the readouts, and open_sequences (int32 [1]). One session per
CORRID (canvit_runtime.triton_model.SequenceStore), freed at END or after the config's
max_sequence_idle_microseconds. Model parameters (config.pbtxt): runtime (onnxruntime | openvino), threads.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend

import canvit_runtime
from canvit_runtime.manifest import ROLE_CENTERS, ROLE_SCALES, ROLE_SCENE
from canvit_runtime.triton_model import SequenceStore, UnknownSequence


def _parameter(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    """One model instance: one runner, the sessions of the sequences this instance serves."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        artifact = Path(args["model_repository"]) / args["model_version"] / "artifact"
        threads = _parameter(config, "threads", "")
        self.runner = canvit_runtime.open(artifact, runtime=_parameter(config, "runtime", "onnxruntime"),
                                          threads=int(threads) if threads else None)
        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 1_000_000))
        self.store = SequenceStore(self.runner, idle_s=idle_us / 1e6)
        manifest = self.runner.manifest
        self.names = {role: manifest.input(role).name for role in (ROLE_SCENE, ROLE_CENTERS, ROLE_SCALES)}
        self.outputs = [o["name"] for o in config["output"]]

    def _flag(self, request, name: str) -> bool:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return tensor is not None and bool(tensor.as_numpy().reshape(-1)[0])

    def _run(self, request):
        corrid_tensor = pb_utils.get_input_tensor_by_name(request, "CORRID")
        corrid = int(corrid_tensor.as_numpy().reshape(-1)[0]) if corrid_tensor is not None else request.correlation_id()
        scene = pb_utils.get_input_tensor_by_name(request, self.names[ROLE_SCENE])
        outputs = self.store.step(
            corrid, start=self._flag(request, "START"), end=self._flag(request, "END"),
            scene=None if scene is None else scene.as_numpy(),
            centers=pb_utils.get_input_tensor_by_name(request, self.names[ROLE_CENTERS]).as_numpy(),
            scales=pb_utils.get_input_tensor_by_name(request, self.names[ROLE_SCALES]).as_numpy())
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, outputs[name]) for name in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except (UnknownSequence, ValueError) as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)))
        return responses

    def finalize(self) -> None:
        self.store.sessions.clear()
