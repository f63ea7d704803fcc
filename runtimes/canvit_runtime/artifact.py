"""Writing an artifact without torch: the atomic folder, the manifest, checksums and tool versions.

canvit-export's targets and canvit-runtime's TensorRT engine build (which runs on the device, e.g. a Jetson on
Python 3.10) share these. An artifact is a folder: the compiled step, initial_state.bin and manifest.json
(docs/manifest.md). It is written into a hidden temporary sibling folder and renamed into place only when complete, so a
failed export leaves nothing behind; an existing folder is replaced only with force.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from canvit_runtime.manifest import Manifest, ManifestError, SourceArtifact, a_target, file_record, load_manifest
from canvit_runtime.paths import ExportError, check_out, file_on_path, replacement_refusal, write_marker

__all__ = ["COMMANDS", "INITIAL_STATE_FILE", "ExportError", "check_out", "clean_stale_staging", "command_line",
           "copy_initial_state", "derived_fields", "file_on_path", "finish_manifest", "load_source_artifact",
           "source_record", "staged_artifact", "tool_versions"]

INITIAL_STATE_FILE = "initial_state.bin"
COMMANDS = ("canvit-export", "canvit-runtime")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Delete the staging folders (`.<name>.<pid>.*.tmp` / `.old`) that an export to `out` killed with SIGKILL or a
    power cut left beside it, those whose process is gone; return them. Live exports' folders are left alone."""
    removed = []
    for folder in out.parent.glob(f".{out.name}.*"):
        parts = folder.name[len(out.name) + 2:].split(".")
        if folder.suffix in (".tmp", ".old") and len(parts) >= 3 and parts[0].isdigit() and not _alive(int(parts[0])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def staged_artifact(out: Path, *, force: bool, inputs: tuple[Path, ...] = (), kind: str = "artifact") -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success write its marker (canvit_runtime.paths: what --force may
    replace later) and rename it to `out` (with the permissions of a folder made by mkdir under the current umask, not
    mkdtemp's 0700); on any error delete it.

    The staging folder's name holds this process's id, so that a later export to the same `out` deletes what a
    killed one left (clean_stale_staging). Two exports racing to one `out`: the first to finish renames its folder
    into place and the other fails with ExportError (with force, the later one replaces it); never a mixture.
    Raises ExportError before any work when `out` breaks the replacement rule (paths.check_out: exists without force,
    not this tool's with force, a symlink, protected, overlapping one of `inputs`), and before the rename when what
    appeared at `out` meanwhile is not this tool's.
    """
    out = Path(out)
    check_out(out, force=force, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    raced = (f"{out} appeared while this export ran (another export to the same --out?): it is kept; pass --force to "
             f"replace it, or choose another --out")
    try:
        yield staging
        write_marker(staging, kind)
        staging.chmod(0o777 & ~_umask())
        if os.path.lexists(out):
            if not force:
                raise ExportError(raced)
            if refusal := replacement_refusal(out, force=True):  # checked again: it may have changed meanwhile
                raise ExportError(refusal)
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".old", dir=out.parent))
            out.rename(trash / out.name)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                staging.rename(out)
            except OSError as error:  # another export renamed its folder into place first
                raise ExportError(raced) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named distributions, plus Python's and canvit's own."""
    versions = {"python": platform.python_version()}
    for name in ("canvit-export", "canvit-runtime", "canvit-pytorch", "torch", *packages):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def command_line() -> str | None:
    """The canvit-export / canvit-runtime command line being run, for the manifest's `command` (None otherwise)."""
    program = Path(sys.argv[0]).name
    return shlex.join([program, *sys.argv[1:]]) if program in COMMANDS else None


def finish_manifest(directory: Path, files: dict[str, str], packages: tuple[str, ...], **fields: Any) -> Manifest:
    """Validate the manifest of the artifact being written in `directory` (the typed fields, plus each file's size
    and SHA-256 from files: key -> name, tool versions, the time and the command line) and write manifest.json.

    Raises ExportError when the fields do not make a valid manifest (a bug of the exporter: nothing is written).
    """
    try:
        manifest = Manifest(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=command_line(),
                            files={key: file_record(directory, name) for key, name in files.items()},
                            tools=tool_versions(*packages), **fields)
    except ValidationError as error:
        raise ExportError(f"the exporter built an invalid manifest ({error.errors()[0]['loc']}: "
                          f"{error.errors()[0]['msg']}); please report this") from error
    manifest.write(directory)
    return manifest


def derived_fields(source: Manifest) -> dict[str, Any]:
    """The fields an artifact compiled from the ONNX artifact `source` (TensorRT engine, OpenVINO IR) keeps: model,
    architecture, geometry, tensors, state, initial state, preprocessing, viewpoint rule, precision and readouts."""
    keep = ("model", "architecture", "geometry", "inputs", "outputs", "state", "initial_state", "preprocessing",
            "viewpoint", "precision", "readouts")
    return {key: getattr(source, key) for key in keep}


def source_record(source: Manifest) -> SourceArtifact:
    """Where a derived artifact came from: the ONNX artifact's folder, graph SHA-256 and precision."""
    return SourceArtifact(path=str(source.directory.resolve()), graph_sha256=source.files["graph"].sha256,
                          precision=source.precision.name)


def copy_initial_state(source: Manifest, directory: Path) -> None:
    """Copy the source artifact's initial_state.bin into directory."""
    shutil.copyfile(source.file("initial_state"), directory / INITIAL_STATE_FILE)


def load_source_artifact(path: Path, *, target: str) -> Manifest:
    """The ONNX artifact another target compiles from; ExportError if it is missing, altered or not ONNX."""
    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise ExportError(str(error)) from error
    if manifest.target != "onnx":
        raise ExportError(f"{path} is {a_target(manifest.target)} artifact; {target} builds from an ONNX artifact "
                          f"(canvit-export onnx --out DIR)")
    return manifest
