"""What a Triton repository serves: the Triton backends of each artifact target (derived from canvit_runtime's
runtime-per-target table), how the models serve (ServeOptions), and the names of models and state tensors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from canvit_export.errors import ExportError
from canvit_runtime.base import TARGETS

CPP_BACKENDS = ("onnxruntime", "tensorrt", "openvino")
"""Triton's C++ backends used here, each named after the canvit_runtime runtime whose own format (the first target
of its TARGETS row) it serves: ONNX Runtime an ONNX graph, TensorRT an engine, OpenVINO an IR."""
PYTHON_RUNTIMES = ("onnxruntime", "openvino")
"""The runtimes Triton's Python model runs (canvit_runtime/triton_backend/model.py)."""
BACKENDS = (*CPP_BACKENDS, "python")
CONTROLS = (("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"), ("READY", "CONTROL_SEQUENCE_READY"),
            ("CORRID", "CONTROL_SEQUENCE_CORRID"))
STRATEGIES = ("oldest", "direct")
MAPPING_FILE = "canvit_triton.json"
SCENE_STATE = ("scene_state", "scene_state_next")
"""With --scene-state, the ONNX Runtime model's third implicit state: the last scene sent in the sequence."""
TRITON_DTYPES = {"float32": "TYPE_FP32"}


def backends_of(target: str) -> tuple[str, ...]:
    """The Triton backends that serve an artifact of `target`: the C++ backend of the runtime whose own format it is,
    then the Python model when one of PYTHON_RUNTIMES runs it (TARGETS). () for a target Triton cannot serve."""
    cpp = [backend for backend in CPP_BACKENDS if TARGETS[backend][0] == target]
    return (*cpp, *(("python",) if any(target in TARGETS[r] for r in PYTHON_RUNTIMES) else ()))


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
        if self.runtime not in PYTHON_RUNTIMES:
            raise ExportError(f"--python-runtime {self.runtime}: choose {' or '.join(PYTHON_RUNTIMES)}")




@dataclass
class TritonModel:
    """One model written into the repository: its name, backend, the artifact it serves and its state names
    (manifest input/output -> Triton input/output)."""

    name: str
    backend: str
    artifact: Path
    state_names: dict[str, str] = field(default_factory=dict)


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
