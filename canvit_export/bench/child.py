"""The child process of `canvit-export bench` that measures one configuration's peak resident memory.

    python -m canvit_export.bench.child runtime|eager|peer ARTIFACT RUNTIME THREADS|- [PEER_ONNX | EAGER_MODE]

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


def main(argv: list[str]) -> None:
    import numpy as np

    from canvit_runtime.base import Runner
    from canvit_runtime.manifest import ROLE_SCENE, load_manifest

    kind, artifact, runtime = argv[0], Path(argv[1]), argv[2]
    threads = int(argv[3]) if argv[3] != "-" else None
    manifest = load_manifest(artifact)
    runner: Runner
    if kind == "runtime":
        import canvit_runtime

        runner = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
    elif kind == "peer":
        from canvit_export.reference import PeerRunner

        runner = PeerRunner(manifest, Path(argv[4]), threads=threads)
    else:
        from canvit_export.reference import EagerRunner
        from canvit_export.source import load_from_record

        runner = EagerRunner(manifest, load_from_record(manifest.model), threads=threads,
                             mode=argv[4] if len(argv) > 4 else "fp32")
    runner.reset()
    scene = np.zeros(manifest.input(ROLE_SCENE).shape, np.float32)
    for _ in range(3):
        runner.step(scene, np.zeros((manifest.batch, 2), np.float32), np.ones(manifest.batch, np.float32))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
