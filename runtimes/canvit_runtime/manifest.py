"""Read and validate an artifact's manifest.json, verify its checksums, build the initial state.

The manifest is the contract between the exporter (canvit_export), the runtimes here and the C++ demo: it says
everything needed to loop the glimpse step without Python's torch. Its fields are described in the README
("The manifest"). This module imports numpy only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "canvit-export-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Tensor roles: what each graph input/output means to a runner.
ROLE_SCENE = "scene"  # [B, 3, S, S] float32, ImageNet-normalized
ROLE_STATE = "state"  # carried from one glimpse to the next (canvas, recurrent CLS)
ROLE_CENTERS = "viewpoint_centers"  # [B, 2] float32, (row, col) in scene coordinates [-1, 1]
ROLE_SCALES = "viewpoint_scales"  # [B] float32 in (0, 1]
ROLE_EXTRA = "extra"  # an output nobody feeds back (e.g. the glimpse)

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": None, "int64": np.int64}


class ManifestError(ValueError):
    """The artifact folder or its manifest is missing, malformed, of another version, or altered."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, static shape, dtype name (e.g. "float32") and role."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str

    @staticmethod
    def parse(record: dict[str, Any]) -> TensorSpec:
        return TensorSpec(name=str(record["name"]), shape=tuple(int(d) for d in record["shape"]),
                          dtype=str(record["dtype"]), role=str(record["role"]))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "role": self.role}


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 16 MiB blocks; of a folder (an .mlpackage), the digest of its files'
    relative paths and digests, in path order."""
    if path.is_dir():
        lines = [f"{f.relative_to(path).as_posix()} {sha256_file(f)}\n" for f in sorted(path.rglob("*")) if f.is_file()]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def size_bytes(path: Path) -> int:
    """A file's size, or the total size of a folder's files."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json together with the artifact folder it describes."""

    directory: Path
    data: dict[str, Any]

    # --- tensors -------------------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.parse(r) for r in self.data["inputs"])

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.parse(r) for r in self.data["outputs"])

    def input(self, role: str) -> TensorSpec:
        """The single input with this role (scene, viewpoint_centers, viewpoint_scales)."""
        found = [t for t in self.inputs if t.role == role]
        if len(found) != 1:
            raise ManifestError(f"{self.directory}: expected one input with role {role!r}, found {len(found)}")
        return found[0]

    @property
    def state_pairs(self) -> tuple[tuple[str, str], ...]:
        """(input name, output name) for each state tensor, e.g. ("canvas", "canvas_next")."""
        return tuple((p["input"], p["output"]) for p in self.data["state"])

    # --- geometry and architecture -------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return int(self.data["geometry"]["batch"])

    @property
    def scene_px(self) -> int:
        return int(self.data["geometry"]["scene_px"])

    @property
    def glimpse_px(self) -> int:
        return int(self.data["geometry"]["glimpse_px"])

    @property
    def canvas_grid(self) -> int:
        return int(self.data["geometry"]["canvas_grid"])

    @property
    def num_canvas_registers(self) -> int:
        return int(self.data["architecture"]["num_canvas_registers"])

    @property
    def precision(self) -> str:
        return str(self.data["precision"]["compute"])

    def file(self, key: str) -> Path:
        """Path of one of the artifact's files, by its key in manifest["files"] (e.g. "graph")."""
        try:
            return self.directory / self.data["files"][key]["path"]
        except KeyError as error:
            raise ManifestError(f"{self.directory}: the manifest lists no {key!r} file") from error

    # --- checks --------------------------------------------------------------------------------------------
    def verify_checksums(self) -> None:
        """Raise ManifestError unless every file listed in manifest["files"] exists with its SHA-256 and size."""
        for key, record in self.data["files"].items():
            path = self.directory / record["path"]
            if not path.exists():
                raise ManifestError(f"{path}: missing from the artifact ({key}); re-export it or copy the whole folder")
            if size_bytes(path) != record["bytes"] or sha256_file(path) != record["sha256"]:
                raise ManifestError(f"{path}: SHA-256 mismatch, the file was altered or truncated; re-export or re-copy it")

    # --- state ---------------------------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """The state before the first glimpse, keyed by state input name, for batch_size scenes.

        canvas [B, R + G*G, Dc] float32: the R canvas registers, then the learned canvas patch token repeated over
        the G*G grid (canvit-pytorch CanViT.init_state); recurrent_cls [B, 1, Db] float32: the learned initial CLS.
        Read from the artifact's initial_state.bin (little-endian float32, parts listed in the manifest).
        """
        spec = self.data["initial_state"]
        path = self.directory / self.data["files"]["initial_state"]["path"]
        flat = np.fromfile(path, dtype="<f4")
        parts: dict[str, np.ndarray] = {}
        for part in spec["parts"]:
            count = int(np.prod(part["shape"]))
            start = part["offset_bytes"] // 4
            if start + count > flat.size:
                raise ManifestError(f"{path}: too short for part {part['name']} {part['shape']}; re-export the artifact")
            parts[part["name"]] = flat[start:start + count].reshape(part["shape"])
        registers, patch, cls = parts["canvas_registers"], parts["canvas_patch"], parts["recurrent_cls"]
        grid_tokens = np.broadcast_to(patch, (self.canvas_grid**2, patch.shape[-1]))
        canvas = np.concatenate([registers, grid_tokens])[None]
        return {
            "canvas": np.ascontiguousarray(np.broadcast_to(canvas, (batch_size, *canvas.shape[1:])), dtype=np.float32),
            "recurrent_cls": np.ascontiguousarray(np.broadcast_to(cls, (batch_size, 1, cls.shape[-1])), dtype=np.float32),
        }


REQUIRED_KEYS = ("format", "format_version", "artifact", "model", "architecture", "geometry", "inputs", "outputs",
                 "state", "initial_state", "preprocessing", "viewpoint", "precision", "files", "tools")


def load_manifest(artifact_dir: str | Path, *, verify: bool = True) -> Manifest:
    """Parse artifact_dir/manifest.json; with verify, also check every listed file's SHA-256.

    Raises ManifestError (a ValueError) naming the problem: no such folder, no manifest, not JSON, another format
    or version, a missing key, a missing or altered file.
    """
    directory = Path(artifact_dir)
    if not directory.is_dir():
        raise ManifestError(f"{directory}: no such artifact folder; export one with `canvit-export onnx --out {directory}`")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_NAME}; this is not a canvit-export artifact (re-export it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON ({error}); re-export the artifact") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a canvit-export manifest (format {data.get('format')!r} != {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: manifest version {data.get('format_version')!r}, this runtime reads version "
                            f"{FORMAT_VERSION}; re-export with a matching canvit-export")
    if missing := [key for key in REQUIRED_KEYS if key not in data]:
        raise ManifestError(f"{path}: missing keys {missing}; re-export the artifact")
    manifest = Manifest(directory=directory, data=data)
    if verify:
        manifest.verify_checksums()
    return manifest
