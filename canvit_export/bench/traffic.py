"""The canvas traffic of a glimpse that no implementation avoids, and the memory bandwidth that prices it: the second
term of the honest floor (issue 29): floor = the step's matmuls alone + canvas bytes moved / measured bandwidth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from canvit_runtime.manifest import Manifest, ManifestError

CANVAS_READOUTS = ("segmentation", "features")
"""Readouts computed from the canvas (canvit-pytorch: SegmentationProbe on canvas_patch_grid, predict_teacher_patches
on canvas_patches); classification reads the recurrent CLS, not the canvas."""
TRIAD_REPEATS = 5
"""Triads timed per measurement; the best counts (STREAM reports the best of its trials)."""


@dataclass(frozen=True)
class CanvasTraffic:
    """A glimpse's unavoidable canvas traffic: `canvas_bytes` = batch x (canvas registers + G x G) x canvas width x 4
    (the float32 canvas state's shape in the manifest); `reads` Canvas Reads (each reads the canvas once), `writes`
    Canvas Writes (each reads it and writes it once: 2 passes), `readouts` canvas readouts (CANVAS_READOUTS: one read
    each)."""

    canvas_bytes: int
    reads: int
    writes: int
    readouts: int

    @property
    def passes(self) -> int:
        """Full passes over the canvas per glimpse: reads + 2 x writes + readouts."""
        return self.reads + 2 * self.writes + self.readouts

    @property
    def bytes_moved(self) -> int:
        """canvas_bytes x passes: the bytes per glimpse of `batch` scenes."""
        return self.canvas_bytes * self.passes

    def describe(self) -> str:
        """"3 Reads, 3 Writes, 1 readout over a 0.5 MB canvas: 5.0 MB" (MB = 1e6 bytes)."""
        readouts = f", {self.readouts} readout{'s' if self.readouts != 1 else ''}" if self.readouts else ""
        return (f"{self.reads} Reads, {self.writes} Writes{readouts} over a {self.canvas_bytes / 1e6:.2f} MB canvas: "
                f"{self.bytes_moved / 1e6:.1f} MB")


def canvas_traffic(manifest: Manifest) -> CanvasTraffic:
    """The canvas traffic of one glimpse of the manifest's step: the canvas state's shape [B, R + G*G, Dc] (float32),
    the Canvas Reads and Writes its architecture records (read_after_blocks, write_after_blocks: canvit-pytorch's
    CanViTConfig) and its canvas readouts. Raises ManifestError when the manifest has no canvas state."""
    shape = next((p.shape for p in manifest.state if p.input == "canvas"), None)
    if shape is None:
        raise ManifestError(f"{manifest.directory}: no canvas state in the manifest")
    return CanvasTraffic(canvas_bytes=int(np.prod(shape)) * 4, reads=len(manifest.architecture.read_after_blocks),
                         writes=len(manifest.architecture.write_after_blocks),
                         readouts=sum(r.name in CANVAS_READOUTS for r in manifest.readouts))


def triad_bandwidth(array_bytes: int, threads: int | None, repeats: int = TRIAD_REPEATS) -> float:
    """Memory bandwidth in bytes/s: the best of `repeats` STREAM triads a = b + s x c over float32 arrays of
    `array_bytes` each (at least 1024 elements), run as one OpenVINO model (Add(b, Multiply(c, s))) on the CPU plugin
    with INFERENCE_NUM_THREADS = `threads` (None: its default), after one warm-up. Bytes moved per triad are counted
    as STREAM counts them: 3 x array bytes (read b, read c, write a; no write-allocate). Arrays of the canvas's own
    size price a canvas that fits in cache at the cache's speed, as it runs."""
    import openvino as ov
    import openvino.opset13 as ops

    n = max(array_bytes // 4, 1024)
    b, c = ops.parameter([n], ov.Type.f32, name="b"), ops.parameter([n], ov.Type.f32, name="c")
    model = ov.Model([ops.add(b, ops.multiply(c, ops.constant(np.float32(3.0))))], [b, c], "triad")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {"b": rng.standard_normal(n, dtype=np.float32), "c": rng.standard_normal(n, dtype=np.float32)}
    request.infer(feeds, share_inputs=True, share_outputs=True)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(feeds, share_inputs=True, share_outputs=True)
        best = min(best, time.perf_counter() - start)
    return 3 * n * 4 / best
