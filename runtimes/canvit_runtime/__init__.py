"""canvit_runtime: loop an exported CanViT glimpse step without torch.

    import canvit_runtime
    session = canvit_runtime.open("models/canvitb16-c32", runtime="onnxruntime")
    session.reset()
    result = session.step(scene, centers, scales)   # numpy in, numpy out; the state stays in the session

Backends are imported lazily: a missing one costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from canvit_runtime.base import Runner, StepResult
from canvit_runtime.manifest import Manifest, ManifestError, load_manifest
from canvit_runtime.paths import printable

RUNNERS: dict[str, tuple[str, str, str]] = {
    # name: (module, runner class or factory, how to install it)
    "onnxruntime": ("canvit_runtime.onnxruntime", "OnnxRuntimeRunner", "pip install 'canvit-runtime[onnxruntime]'"),
    "openvino": ("canvit_runtime.openvino", "make_runner", "pip install 'canvit-runtime[openvino]'"),
    "coreml": ("canvit_runtime.coreml", "CoreMLRunner", "pip install 'canvit-runtime[coreml]', on macOS"),
    "executorch": ("canvit_runtime.executorch", "ExecuTorchRunner",
                   "pip install 'canvit-runtime[executorch]' (executorch-numpy-runtime, Python >= 3.12)"),
    "tensorrt": ("canvit_runtime.tensorrt", "TensorRtRunner",
                 "pip install 'canvit-runtime[tensorrt]' on a machine with an NVIDIA GPU (on JetPack: its "
                 "python3-libnvinfer and 'cuda-python<13')"),
}


class RuntimeUnavailable(RuntimeError):
    """The backend's Python package is not installed, or cannot run on this machine."""


def open(artifact_dir: str | Path, runtime: str = "onnxruntime", threads: int | None = None, *,
         public_key: str | Path | None = None, **options: Any) -> Runner:
    """Load an artifact on a backend and return its runner, reset for the artifact's batch.

    With public_key (a PEM file), first verifies the artifact's signature (canvit_runtime.signing). Verifies the
    manifest and every file's SHA-256. Raises ManifestError (a ValueError) for a bad or badly signed artifact,
    ValueError for an unknown runtime, RuntimeUnavailable when the backend's package is missing.
    """
    if runtime not in RUNNERS:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNNERS)}")
    if public_key is not None:
        from canvit_runtime.signing import verify_artifact

        verify_artifact(artifact_dir, public_key)
    manifest = load_manifest(artifact_dir)
    module_name, class_name, install = RUNNERS[runtime]
    try:
        runner: Runner = getattr(importlib.import_module(module_name), class_name)(manifest, threads=threads, **options)
    except ImportError as error:  # the backend's package, imported by the module or by the runner
        raise RuntimeUnavailable(f"runtime {runtime!r} is not available ({error}); {install}") from error
    except (ValueError, RuntimeUnavailable):
        raise
    except Exception as error:  # the runtime refused the graph: bytes it cannot parse, an unknown (custom) op, ...
        first = str(error).strip().splitlines()
        raise ManifestError(f"{artifact_dir}: {runtime} cannot load this artifact's step "
                            f"({printable(first[-1] if first else type(error).__name__, 160)}); re-export it") from error
    runner.reset()
    return runner


__all__ = ["RUNNERS", "Manifest", "ManifestError", "Runner", "RuntimeUnavailable", "StepResult", "load_manifest", "open"]
