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
import zlib
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
from canvit_runtime.precision import PrecisionName
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
    artifact: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")]
    """The ONNX artifact's folder, a plain name at the bundle's top."""
    precision: PrecisionName
    policy: Literal["c2f", "f-iid"]
    """The fixed policy the viewpoints were drawn from: a record, the viewpoints are in the reference."""
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
    wheel = record.wheel.path.split("/")
    if record.reference.path != REFERENCE_FILE or len(wheel) != 2 or wheel[0] != WHEELS or \
            not plain_member(record.wheel.path) or not wheel[1].endswith(".whl"):
        raise ExportError(f"{printable(path)} names {printable(record.reference.path)} and "
                          f"{printable(record.wheel.path)}: a bundle's are {REFERENCE_FILE} and {WHEELS}/<name>.whl")
    for name in (record.artifact, WHEELS):
        if (Path(bundle) / name).is_symlink():  # rsync -a keeps links: never follow one out of the bundle
            raise ExportError(f"{printable(Path(bundle) / name)} is a symbolic link: copy the bundle without links")
    return record


def check_file(bundle: Path, record: FileRecord) -> Path:
    """bundle/record.path after its size and SHA-256 match (ExportError naming the file otherwise)."""
    path = bundle / record.path
    stat = regular_file(path)
    if stat is None or stat.st_size != record.bytes or sha256_of(path) != record.sha256:
        raise ExportError(f"{printable(path)} is missing or altered (size or SHA-256 differs from {BUNDLE_FILE}): copy "
                          f"the bundle again")
    return path


def engine_is_stale(engine: Path, artifact: Path) -> str | None:
    """Why the engine folder a bundle holds must not be reused (None when it may): not an engine artifact, built from
    another graph than the bundle's artifact, or on another GPU or TensorRT than this machine's. An engine copied in
    with the bundle, or left by an older bundle of the same name, is rebuilt, never trusted."""
    from canvit_runtime.engine import gpu_facts
    from canvit_runtime.manifest import ManifestError, TensorRtArtifact, load_manifest

    try:  # structure only: opening the engine (or building a new one) verifies the files after this
        built, source = load_manifest(engine, verify=False), load_manifest(artifact, verify=False)
    except ManifestError as error:
        return f"{printable(engine)} is not a valid engine artifact ({printable(str(error).splitlines()[0])})"
    facts = built.artifact
    if not isinstance(facts, TensorRtArtifact):
        return f"{printable(engine)} is not a TensorRT engine artifact"
    if facts.source.graph_sha256 != source.files["graph"].sha256:
        return f"{printable(engine)} was built from another graph than {printable(artifact)}"
    import tensorrt

    here = {**gpu_facts(), "tensorrt": tensorrt.__version__}
    if (facts.gpu, facts.compute_capability, facts.tensorrt) != (here["gpu"], here["compute_capability"],
                                                                  here["tensorrt"]):
        return (f"{printable(engine)} was built for {printable(facts.gpu)} with TensorRT {printable(facts.tensorrt)}, "
                f"this is {here['gpu']} with TensorRT {here['tensorrt']}")
    return None


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
    """The reference arrays, float32, each of the shape expected_shapes gives; ExportError (one line) otherwise.
    reference.npz is read member by member: exactly one `<name>.npy` per expected array, each .npy header (dtype,
    shape, order) checked before its data is read, and no member inflating past what that header declares, so a
    hostile archive cannot make the reader allocate more than the artifact's geometry needs. Never unpickles."""
    shapes = expected_shapes(manifest, glimpses)
    redo = "write the bundle again with `canvit-export trt ... --bundle DIR`"
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist()]
            if sorted(names) != sorted(f"{name}.npy" for name in shapes):
                raise ExportError(f"{printable(path)} holds {printable(sorted(names)[:8])}, not the arrays "
                                  f"{sorted(shapes)} of {manifest.directory}: {redo}")
            for name, shape in shapes.items():
                info = archive.getinfo(f"{name}.npy")
                if info.file_size > 4 * int(np.prod(shape)) + 4096:  # float32 data and an .npy header
                    raise ExportError(f"{printable(path)}: {name} is larger than its shape {list(shape)} needs: {redo}")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                              np.lib.format.read_array_header_2_0)(member)
                    if header != (shape, False, np.dtype("<f4")):
                        raise ExportError(f"{printable(path)}: {name} is {printable(header)}, expected float32 "
                                          f"{list(shape)} in C order: {redo}")
                    data = member.read(4 * int(np.prod(shape)) + 1)
                if len(data) != 4 * int(np.prod(shape)):
                    raise ExportError(f"{printable(path)}: {name} holds {len(data)} bytes, not its shape's: {redo}")
                arrays[name] = np.frombuffer(data, dtype="<f4").reshape(shape)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, KeyError) as error:
        if isinstance(error, ExportError):
            raise
        raise ExportError(f"{printable(path)} is not a readable reference archive ({printable(error)}): {redo}"
                          ) from error
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


def read_reference(bundle: Path, record: BundleRecord) -> dict[str, np.ndarray]:
    """The bundle's reference after every check (the artifact's manifest, its precision against bundle.json's, the
    reference's SHA-256 and each array's header): ExportError in one line, before any runtime loads anything. The
    artifact's own files are verified by the runtime (or engine build) that reads them."""
    from canvit_runtime.manifest import ManifestError, load_manifest

    try:  # structure only: the runtime or the engine build that reads the artifact next verifies its checksums
        manifest = load_manifest(Path(bundle) / record.artifact, verify=False)
    except ManifestError as error:
        raise ExportError(str(error)) from error
    if manifest.precision.name != record.precision:
        raise ExportError(f"{BUNDLE_FILE} says {record.precision} and the artifact is {manifest.precision.name}: "
                          f"write the bundle again")
    return load_reference(check_file(Path(bundle), record.reference), manifest, record.glimpses)


def check_bundle(bundle: Path, runner: Any, record: BundleRecord, *, latency_steps: int = 50,
                 echo: Callable[[str], None] = print, reference: dict[str, np.ndarray] | None = None) -> BundleCheck:
    """Roll the reference's viewpoints out on `runner` (a canvit_runtime Runner of the bundle's artifact, or of its
    engine; `reference`: read_reference's arrays, read here when None), compare every glimpse with the reference
    (canvit_runtime.verdict, the artifact precision's tolerances), then time `latency_steps` further steps. Prints a
    per-glimpse table through `echo`. Raises ExportError for a reference that is altered or does not fit the
    artifact."""
    manifest = runner.manifest
    if reference is None:
        reference = read_reference(bundle, record)
    tolerances = tolerances_for(manifest.precision.name)
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
