"""Calibration sets recorded from rollouts: the step's inputs at every glimpse of real viewing, for INT8.

A recurrent step cannot be calibrated from images alone: its canvas and recurrent CLS inputs are whatever earlier
glimpses wrote. ONNX Runtime's and NNCF's calibration readers take one input dict per sample, so a calibration set
here is the list of the step's inputs (scene, canvas, recurrent CLS, centers, scales) recorded at every glimpse of
rollouts of the float32 ONNX artifact under the policies users run: C2F, F-IID and, where the artifact has a
segmentation readout, EG-C2F (canvit_runtime.policies), on real photos (scikit-image's chelsea, astronaut, coffee
and rocket by default, or every image of a folder). Recorded once into a folder and reused:

    calibration.json   format, the artifact it was recorded from (graph SHA-256, geometry), images, policies,
                       glimpses, sample count and bytes
    scenes.npy         [n_images, B, 3, S, S] float32, the preprocessed scenes (canvit_runtime.preprocess)
    canvas.npy         [N, B, R + G*G, Dc] float32, the canvas each sample's glimpse reads
    recurrent_cls.npy  [N, B, 1, Db] float32
    centers.npy        [N, B, 2] float32 (scene coordinates in [-1, 1]); scales.npy [N, B] float32
    scene_index.npy    [N] int32, the row of scenes.npy each sample glimpses
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.export.artifact import load_source_artifact, staged_artifact
from canvit_export.progress import console
from canvit_runtime.manifest import Manifest, TensorSpec, a_precision
from canvit_runtime.preprocess import scene_batch
from canvit_runtime.rollout import rollout

FORMAT = "canvit-calibration"
VERSION = 1
INDEX = "calibration.json"
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_POLICIES = ("c2f", "f-iid", "eg-c2f")
DEFAULT_GLIMPSES = 8


@dataclass(frozen=True)
class CalibrationSet:
    """A recorded calibration set (see the module docstring); `samples()` yields the step's feeds one by one."""

    directory: Path
    index: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.index["samples"])

    @property
    def bytes(self) -> int:
        return int(self.index["bytes"])

    def samples(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The step's input feeds {scene, canvas, recurrent_cls, centers, scales}, float32, in recorded order."""
        arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r")
                  for name in ("scenes", "canvas", "recurrent_cls", "centers", "scales", "scene_index")}
        for i in range(self.count if limit is None else min(limit, self.count)):
            yield {"scene": np.ascontiguousarray(arrays["scenes"][int(arrays["scene_index"][i])]),
                   "canvas": np.ascontiguousarray(arrays["canvas"][i]),
                   "recurrent_cls": np.ascontiguousarray(arrays["recurrent_cls"][i]),
                   "centers": np.ascontiguousarray(arrays["centers"][i]),
                   "scales": np.ascontiguousarray(arrays["scales"][i])}


def calibration_images(folder: Path | None) -> list[tuple[str, Any]]:
    """(name, image) pairs: every image file of `folder` (sorted), or scikit-image's photos when folder is None.
    ExportError for a missing or empty folder."""
    if folder is None:
        try:
            import skimage.data
        except ImportError as error:
            raise ExportError("the default calibration photos come from scikit-image: pip install scikit-image, or "
                              "pass --calibration DIR (a folder of images)") from error
        return [(name, getattr(skimage.data, name)()) for name in PHOTOS]
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: no such folder; pass a folder of images or a recorded calibration set")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"--calibration {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    return [(p.name, p) for p in files]


def refuse_unused_calibration(calibration: Path | None, static_int8: bool) -> None:
    """ExportError when --calibration is given to an export that is not static INT8 (every target's one refusal)."""
    if calibration is not None and not static_int8:
        raise ExportError("--calibration calibrates static INT8: pass it with --precision int8")


def load_calibration(folder: Path, manifest: Manifest | None = None, *,
                     inputs: Sequence[TensorSpec] | None = None) -> CalibrationSet:
    """A recorded set; ExportError when it is not one, is of another version, or was recorded for another step
    (tensor shapes must match the inputs of `manifest`, or `inputs`, the step's: a target exported from weights)."""
    path = folder / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(f"{folder}: not a calibration set ({INDEX} unreadable: {error}); record one with "
                          f"`canvit-export calibrate`") from error
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ExportError(f"{path}: not a {FORMAT} version {VERSION} index; re-record it with `canvit-export calibrate`")
    if manifest is not None or inputs is not None:
        shapes = {t.name: t.shape for t in (manifest.inputs if manifest is not None else inputs or [])}
        if index["shapes"] != {k: shapes.get(k) for k in index["shapes"]}:
            raise ExportError(f"{folder} was recorded for inputs {index['shapes']}, this step takes "
                              f"{ {k: shapes.get(k) for k in index['shapes']} }: record one for this artifact")
    return CalibrationSet(folder, index)


def resolve_calibration(source: Manifest, calibration: Path | None, workdir: Path, *, threads: int | None = None,
                        quiet: bool = False) -> CalibrationSet:
    """The calibration set for quantizing `source` (an fp32 ONNX artifact): a recorded set (a folder holding
    calibration.json, checked against the step's inputs), or one recorded now into `workdir` from a folder of images
    or, with None, from scikit-image's photos."""
    if calibration is not None and (calibration / INDEX).is_file():
        return load_calibration(calibration, source)
    return record_calibration(source.directory, workdir / "calibration", images=calibration, threads=threads,
                              quiet=quiet)


def record_calibration(artifact: Path, out: Path, *, images: Path | None = None,
                       policies: tuple[str, ...] = DEFAULT_POLICIES, glimpses: int = DEFAULT_GLIMPSES, seed: int = 0,
                       threads: int | None = None, force: bool = False, quiet: bool = False) -> CalibrationSet:
    """Record the step's inputs over rollouts of the fp32 ONNX artifact (ONNX Runtime) into `out`, atomically.

    Samples: len(images) x len(policies) x glimpses (EG-C2F dropped without a segmentation readout). Raises
    ExportError for a non-fp32 or non-ONNX artifact, a bad image folder, an unknown policy or glimpses < 1.
    """
    source = load_source_artifact(artifact, target="INT8 calibration")
    if source.precision.name != "fp32":
        raise ExportError(f"{artifact} is {a_precision(source.precision.name)} graph: calibration records the states of the fp32 "
                          f"step (`canvit-export onnx --precision fp32`)")
    if glimpses < 1:
        raise ExportError(f"--glimpses {glimpses}: must be >= 1")
    if "eg-c2f" in policies and source.readout("segmentation") is None:
        policies = tuple(p for p in policies if p != "eg-c2f")
    if not policies:
        raise ExportError("no policy left to record (eg-c2f needs a segmentation readout)")
    pictures = calibration_images(images)
    session = canvit_runtime.open(artifact, runtime="onnxruntime", threads=threads)
    shapes = {t.name: t.shape for t in source.inputs}
    count = len(pictures) * len(policies) * glimpses
    inputs = (artifact,) if images is None else (artifact, images)
    with staged_artifact(out, force=force, inputs=inputs, kind="calibration set") as staging:
        rows = {"scenes": [len(pictures), *shapes["scene"]], "canvas": [count, *shapes["canvas"]],
                "recurrent_cls": [count, *shapes["recurrent_cls"]], "centers": [count, *shapes["centers"]],
                "scales": [count, *shapes["scales"]], "scene_index": [count]}
        arrays: dict[str, Any] = {
            name: np.lib.format.open_memmap(staging / f"{name}.npy", mode="w+", shape=tuple(shape),
                                            dtype=np.int32 if name == "scene_index" else np.float32)
            for name, shape in rows.items()}
        i = 0

        def record(t: int, v: Any, result: Any, *, s: int, state: list[np.ndarray]) -> None:
            nonlocal i
            arrays["canvas"][i], arrays["recurrent_cls"][i] = state
            arrays["centers"][i], arrays["scales"][i], arrays["scene_index"][i] = v.centers, v.scales, s
            state[:] = [result.canvas, result.recurrent_cls]  # the next glimpse's inputs
            i += 1

        with console.status("recording calibration rollouts ...") if not quiet else contextlib.nullcontext():
            for s, (name, image) in enumerate(pictures):
                try:
                    arrays["scenes"][s] = scene_batch(image, scene_px=source.scene_px, batch=source.batch)
                except (OSError, ValueError) as error:
                    raise ExportError(f"--calibration: cannot read {name}: {error}") from error
                for policy in policies:
                    session.reset()
                    state = [session.state("canvas"), session.state("recurrent_cls")]
                    try:
                        rollout(session, np.asarray(arrays["scenes"][s]), policy, glimpses=glimpses, seed=seed,
                                on_step=functools.partial(record, s=s, state=state))
                    except ValueError as error:
                        raise ExportError(f"--policies {policy}: {error}") from error
                    if not quiet:
                        console.print(f"  {name}, {policy}: {glimpses} glimpses recorded ({i}/{count})")
        for array in arrays.values():
            array.flush()
        arrays.clear()  # close the memory maps before the folder is renamed
        size = sum(p.stat().st_size for p in staging.glob("*.npy"))
        index = {"format": FORMAT, "version": VERSION, "artifact": str(source.directory.resolve()),
                 "graph_sha256": source.files["graph"].sha256, "geometry": source.geometry.model_dump(),
                 "shapes": shapes, "images": [name for name, _ in pictures], "policies": list(policies),
                 "glimpses": glimpses, "seed": seed, "samples": count, "bytes": size}
        (staging / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return CalibrationSet(out, index)

