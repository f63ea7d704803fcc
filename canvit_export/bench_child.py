"""The child process of `canvit-export bench` that measures one configuration's peak resident memory.

    python -m canvit_export.bench_child runtime|eager|peer ARTIFACT RUNTIME THREADS|- [PEER_ONNX]

Loads the configuration, runs 3 glimpses of a zero scene and prints {"peak_rss_mb": ...}. Runtime and peer
children import no torch, so their figure is what a device running that runtime pays.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """VmHWM from /proc/self/status (Linux keeps ru_maxrss across execve: it would start at the parent's peak)."""
    status = Path("/proc/self/status")
    if status.exists():
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:")) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


class PeerStepper:
    """canvit-pytorch's browser export (bench.export_peer) on ONNX Runtime, the state carried as numpy arrays."""

    def __init__(self, path: Path, manifest, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path, self.manifest = path, manifest
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def reset(self) -> None:
        initial = self.manifest.initial_state(self.manifest.batch)
        self.canvas, self.cls = initial["canvas"], initial["recurrent_cls"]

    def step(self, scene, centers, scales):
        self.canvas, self.cls, _ = self.session.run(None, {"scene": scene, "canvas": self.canvas,
                                                           "recurrent_cls": self.cls, "centers": centers,
                                                           "scales": scales})
        return self.canvas


def main(argv: list[str]) -> None:
    import numpy as np

    from canvit_runtime.manifest import load_manifest

    kind, artifact, runtime = argv[0], Path(argv[1]), argv[2]
    threads = int(argv[3]) if argv[3] != "-" else None
    manifest = load_manifest(artifact)
    if kind == "runtime":
        import canvit_runtime

        stepper = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
    elif kind == "peer":
        stepper = PeerStepper(Path(argv[4]), manifest, threads)
    else:
        import torch

        from canvit_export.bench import EagerStepper
        from canvit_export.source import load_from_record

        if threads is not None:
            torch.set_num_threads(threads)
        stepper = EagerStepper(load_from_record(manifest.data["model"]), manifest)
    stepper.reset()
    scene = np.zeros(manifest.input("scene").shape, np.float32)
    for _ in range(3):
        stepper.step(scene, np.zeros((manifest.batch, 2), np.float32), np.ones(manifest.batch, np.float32))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
