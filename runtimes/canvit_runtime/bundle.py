"""Device bundles: what `canvit-export trt ... --bundle DIR` writes on a workstation for a device that builds and runs
its own engine (a Jetson), and the device-side check that reads it (`canvit-runtime check-bundle DIR`).

A bundle holds, at its top:
  bundle.json          this record: the ONNX artifact's folder name, the reference and the wheel with their SHA-256s;
  reference.npz        float32 arrays recorded with canvit-pytorch (PyTorch eager, CPU) on the workstation:
                         scene [B, 3, S, S] (the preprocessed photo), centers [T, B, 2] (row, col in [-1, 1]),
                         scales [T, B], canvas [T, B, R + G*G, Dc], recurrent_cls [T, B, 1, Db],
                         readout.<output> [T, ...] for each readout output, reference_ms [T] (eager step times);
  <artifact>/          the ONNX artifact (manifest, step.onnx, initial_state.bin);
  wheels/              the canvit-runtime wheel;
  BUILD.md             the exact engine build commands (trtexec and canvit-runtime trt) for TensorRT 10.3 and newer;
  run-on-device.sh     makes a venv, installs the wheel, runs `canvit-runtime check-bundle` (this module).

The check rolls the recorded viewpoints out on the device's runtime and holds every glimpse to the artifact precision's
tolerances (canvit_runtime.verdict, the same as `canvit-export parity`), then times the step. Every file is read as
untrusted input: bundle.json as a capped regular file, the reference only after its SHA-256 and its members' shapes
match the artifact's manifest, the artifact through its own manifest and checksums.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canvit_runtime.manifest import FileRecord, Manifest
from canvit_runtime.paths import (
    MAX_MANIFEST_BYTES,
    ExportError,
    json_depth_ok,
    plain_member,
    printable,
    read_regular,
    regular_file,
)
from canvit_runtime.verdict import GlimpseErrors, glimpse_errors, judge, tolerances_for

BUNDLE_FILE = "bundle.json"
REFERENCE_FILE = "reference.npz"
SCRIPT_FILE = "run-on-device.sh"
BUILD_FILE = "BUILD.md"
WHEELS = "wheels"
MAX_REFERENCE_GLIMPSES = 1000
"""A bundle's reference holds every glimpse's canvas (4.3 MB each for CanViT-B at canvas 32): its cap."""


class BundleRecord(BaseModel):
    """bundle.json, version 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["canvit-export-bundle"] = "canvit-export-bundle"
    version: Literal[1] = 1
    artifact: Annotated[str, Field(min_length=1, max_length=255)]
    """The ONNX artifact's folder, a plain name at the bundle's top."""
    precision: str
    policy: str
    """The fixed policy the viewpoints were drawn from (c2f, f-iid): a record, the viewpoints are in the reference."""
    seed: int
    glimpses: Annotated[int, Field(ge=1, le=MAX_REFERENCE_GLIMPSES)]
    image: Annotated[str, Field(max_length=500)]
    reference: FileRecord
    reference_runtime: Annotated[str, Field(max_length=200)]
    wheel: FileRecord
    created_by: Annotated[str, Field(max_length=2000)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(bundle: Path, relative: str) -> FileRecord:
    path = bundle / relative
    return FileRecord(path=relative, bytes=path.stat().st_size, sha256=sha256_of(path))


def read_bundle(bundle: Path) -> BundleRecord:
    """bundle.json of `bundle`, validated; ExportError (one line) when it is missing, not a capped regular file, not
    valid, or names a path outside the bundle."""
    path = Path(bundle) / BUNDLE_FILE
    if regular_file(path) is None:
        raise ExportError(f"{printable(path)}: no such file; pass the folder `canvit-export trt ... --bundle DIR` wrote")
    try:
        text = read_regular(path, MAX_MANIFEST_BYTES).decode()
        if not json_depth_ok(text):
            raise ValueError("nested too deeply")
        record = BundleRecord.model_validate(json.loads(text))
    except (ValueError, UnicodeDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(f"{printable(path)} is not a valid bundle record ({printable(first)}): write the bundle "
                          f"again with `canvit-export trt ... --bundle DIR`") from error
    for name in (record.artifact, record.reference.path, record.wheel.path):
        if not plain_member(name):
            raise ExportError(f"{printable(path)} names {printable(name)}, not a plain path inside the bundle")
    return record


def check_file(bundle: Path, record: FileRecord) -> Path:
    """bundle/record.path after its size and SHA-256 match (ExportError naming the file otherwise)."""
    path = bundle / record.path
    stat = regular_file(path)
    if stat is None or stat.st_size != record.bytes or sha256_of(path) != record.sha256:
        raise ExportError(f"{printable(path)} is missing or altered (size or SHA-256 differs from {BUNDLE_FILE}): copy "
                          f"the bundle again")
    return path


def expected_shapes(manifest: Manifest, glimpses: int) -> dict[str, tuple[int, ...]]:
    """The shape of every reference.npz member for this artifact and number of glimpses."""
    b, t = manifest.batch, glimpses
    state = {pair.input: tuple(pair.shape) for pair in manifest.state}
    outputs = {spec.name: tuple(spec.shape) for spec in manifest.outputs}
    shapes: dict[str, tuple[int, ...]] = {
        "scene": (b, 3, manifest.scene_px, manifest.scene_px), "centers": (t, b, 2), "scales": (t, b),
        "canvas": (t, *state["canvas"]), "recurrent_cls": (t, *state["recurrent_cls"]), "reference_ms": (t,)}
    for readout in manifest.readouts:
        for output in readout.outputs:
            shapes[f"readout.{output}"] = (t, *outputs[output])
    return shapes


def load_reference(path: Path, manifest: Manifest, glimpses: int) -> dict[str, np.ndarray]:
    """The reference arrays, float32, each of the shape expected_shapes gives; ExportError otherwise. Each member's
    size is checked in the zip directory before it is read, so a hostile archive cannot make the reader inflate more
    than the artifact's geometry needs."""
    shapes = expected_shapes(manifest, glimpses)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        if set(members) != set(shapes):
            raise ExportError(f"{printable(path)} holds {sorted(members)[:8]}, not the arrays {sorted(shapes)} of "
                              f"{manifest.directory}: write the bundle again")
        for name, info in members.items():
            if info.file_size > 4 * int(np.prod(shapes[name])) + 4096:  # float32 data and an .npy header
                raise ExportError(f"{printable(path)}: {name} is larger than its shape {list(shapes[name])} needs")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in shapes}
    for name, array in arrays.items():
        if array.dtype != np.float32 or array.shape != shapes[name]:
            raise ExportError(f"{printable(path)}: {name} is {array.dtype} {list(array.shape)}, expected float32 "
                              f"{list(shapes[name])}")
    return arrays


@dataclass
class BundleCheck:
    """The outcome of check_bundle: per-glimpse errors, worst figures, failures, the step's latency (ms)."""

    runtime: str
    precision: str
    rows: list[GlimpseErrors]
    worst: dict[str, Any]
    failures: list[str]
    tolerances: dict[str, float]
    latency_ms: list[float]

    @property
    def passed(self) -> bool:
        return not self.failures


def check_bundle(bundle: Path, runner: Any, record: BundleRecord, *, latency_steps: int = 50,
                 echo: Callable[[str], None] = print) -> BundleCheck:
    """Roll the reference's viewpoints out on `runner` (a canvit_runtime Runner of the bundle's artifact, or of its
    engine), compare every glimpse with the reference (canvit_runtime.verdict, the artifact precision's tolerances),
    then time `latency_steps` further steps. Prints a per-glimpse table through `echo`. Raises ExportError for a
    reference that is altered or does not fit the artifact."""
    manifest = runner.manifest
    reference = load_reference(check_file(bundle, record.reference), manifest, record.glimpses)
    tolerances = tolerances_for(record.precision)
    readouts = [o for r in manifest.readouts for o in r.outputs]
    scene = reference["scene"]
    runner.reset()
    rows: list[GlimpseErrors] = []
    echo(f"{'t':>3}  {'viewpoint (row, col, s)':<24} {'canvas rel-L2':>13} {'cosine':>10} {'CLS rel-L2':>10} "
         f"{'readouts rel-L2 (worst)':>23} {'ms':>8}")
    for t in range(record.glimpses):
        centers, scales = reference["centers"][t], reference["scales"][t]
        start = time.perf_counter()
        result = runner.step(scene, centers, scales)
        runtime_ms = (time.perf_counter() - start) * 1e3
        row = glimpse_errors(manifest, t, centers, scales, canvas=result.canvas, recurrent_cls=result.recurrent_cls,
                             extras={k: v for k, v in result.extras.items() if k in readouts},
                             ref_canvas=reference["canvas"][t], ref_cls=reference["recurrent_cls"][t],
                             ref_extras={o: reference[f"readout.{o}"][t] for o in readouts},
                             runtime_ms=runtime_ms, reference_ms=float(reference["reference_ms"][t]))
        rows.append(row)
        worst_readout = max(row.readout_rel_l2.values(), default=None)
        echo(f"{t:>3}  ({row.row:+.3f}, {row.col:+.3f}, {row.scale:.3f})   {row.canvas_rel_l2:>13.2e} "
             f"{row.canvas_cosine:>10.6f} {row.cls_rel_l2:>10.2e} "
             f"{'-' if worst_readout is None else f'{worst_readout:.2e}':>23} {runtime_ms:>8.1f}")
    worst, failures = judge(rows, tolerances)
    latency: list[float] = []
    for i in range(latency_steps):
        t = i % record.glimpses
        start = time.perf_counter()
        runner.step(scene, reference["centers"][t], reference["scales"][t])
        latency.append((time.perf_counter() - start) * 1e3)
    return BundleCheck(runtime=runner.name, precision=record.precision, rows=rows, worst=worst, failures=failures,
                       tolerances=tolerances, latency_ms=latency)
