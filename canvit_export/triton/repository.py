"""The repository writer: one model per artifact and backend (serving.backends_of), written into a staging folder
and renamed into place when complete."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from canvit_export.errors import ExportError
from canvit_export.triton.config import check_config, config_text
from canvit_export.triton.onnx_graph import prepare_onnx
from canvit_export.triton.serving import (
    BACKENDS,
    CONTROLS,
    MAPPING_FILE,
    SCENE_STATE,
    ServeOptions,
    TritonModel,
    backends_of,
    model_name,
    triton_state_names,
)
from canvit_runtime.artifact import staged_artifact
from canvit_runtime.base import check_graph_io, onnx_io
from canvit_runtime.manifest import MANIFEST_NAME, ROLE_SCENE, Manifest, ManifestError, load_manifest, verified_onnx


def copy_listed(manifest: Manifest, folder: Path) -> None:
    """Copy into `folder` the artifact's manifest.json and the files it lists, from their checksummed bytes (an
    .mlpackage folder: its regular files), never following a link and taking nothing else from the folder."""
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    for key, record in manifest.files.items():
        if key == "package":
            shutil.copytree(manifest.file(key), folder / record.path, symlinks=True)
        else:
            (folder / record.path).write_bytes(manifest.read_verified(key))


def _write_initial_state(manifest: Manifest, folder: Path) -> None:
    folder.mkdir()
    for name, array in manifest.initial_state_arrays(manifest.batch).items():
        np.ascontiguousarray(array, dtype="<f4").tofile(folder / f"{name}.bin")


def _write_model(manifest: Manifest, backend: str, name: str, root: Path, options: ServeOptions) -> TritonModel:
    model_dir, version = root / name, root / name / "1"
    version.mkdir(parents=True)
    scene_state = backend == "onnxruntime" and options.scene_state
    pairs = [*manifest.state_pairs, SCENE_STATE] if scene_state else list(manifest.state_pairs)
    renames = triton_state_names(pairs) if backend != "python" else {}
    comment = ""
    if backend == "python":
        from canvit_runtime.triton_backend import MODEL_PY

        shutil.copyfile(MODEL_PY, version / "model.py")
        copy_listed(manifest, version / "artifact")
        comment = ("Python backend: canvit_runtime in the server's Python (pip install 'canvit-runtime[onnxruntime]' "
                   "or [openvino]); one session per CORRID.\nThe scene input is optional: omit it to reuse the "
                   "sequence's last scene (send it once per frame).")
    elif backend == "onnxruntime":
        graph = verified_onnx(manifest)
        import onnx

        check_graph_io(manifest, *onnx_io(onnx.load_model_from_string(graph)))
        prepare_onnx(graph, version / "model.onnx", renames, controls=True,
                     scene=manifest.input(ROLE_SCENE).name if scene_state else None)
        comment = ("Implicit state, the scene too: send it with a frame's first glimpse, omit it after (optional input)."
                   if scene_state else
                   "Implicit state; the scene travels with every request (the graph takes it as a plain input).")
    else:
        if renames:
            raise ExportError(f"{manifest.directory}: its state names {manifest.state_pairs} sort in different orders, "
                              f"which Triton pairs wrongly (server#8586), and a {backend} model can't be renamed here: "
                              f"serve its ONNX artifact with the onnxruntime backend")
        if backend == "tensorrt":
            (version / "model.plan").write_bytes(manifest.read_verified("engine"))
        else:
            (version / "model.xml").write_bytes(manifest.read_verified("ir"))
            (version / "model.bin").write_bytes(manifest.read_verified("weights"))
        comment = (f"Implicit state; no control inputs (the {backend} model's inputs are fixed where it was built).\n"
                   f"The scene travels with every request (the graph takes it as a plain input).")
    if backend != "python":
        _write_initial_state(manifest, model_dir / "initial_state")
    controls = backend in ("python", "onnxruntime")
    config = config_text(manifest, name, backend, options, renames, controls=controls, comment=comment)
    check_config(config, manifest, name, backend, renames, controls=controls)
    (model_dir / "config.pbtxt").write_text(config)
    record = {"artifact": str(manifest.directory.resolve()), "backend": backend, "target": manifest.target,
              "state": [{"input": p.input, "output": p.output, "triton_input": renames.get(p.input, p.input),
                         "triton_output": renames.get(p.output, p.output)} for p in manifest.state],
              "controls": [c for c, _ in CONTROLS] if controls else [],
              "scene_per_request_bytes": 4 * int(np.prod(manifest.input(ROLE_SCENE).shape)),
              "scene_optional": backend == "python" or scene_state,
              "scene_state": {"triton_input": renames.get(SCENE_STATE[0], SCENE_STATE[0]),
                              "triton_output": renames.get(SCENE_STATE[1], SCENE_STATE[1])} if scene_state else None}
    (model_dir / MAPPING_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return TritonModel(name=name, backend=backend, artifact=manifest.directory, state_names=renames)


def plan_models(artifacts: Sequence[Path], backends: Sequence[str] | None) -> list[tuple[Manifest, str, str]]:
    """(manifest, backend, model name) for every artifact and each of its target's backends (restricted to
    `backends` when given). Raises ExportError for a missing or altered artifact, a target Triton can't serve, a
    stateful IR on the OpenVINO backend, names that repeat, or a backend no artifact can use."""
    if not artifacts:
        raise ExportError("no --artifact given: pass at least one artifact folder")
    unknown = sorted(set(backends or ()) - set(BACKENDS))
    if unknown:
        raise ExportError(f"--backends {','.join(unknown)}: unknown; choose from {', '.join(BACKENDS)}")
    plan, names = [], set()
    for path in artifacts:
        try:
            manifest = load_manifest(path)
        except ManifestError as error:
            raise ExportError(str(error)) from error
        if not backends_of(manifest.target):
            raise ExportError(f"{path} is a {manifest.target} artifact: Triton has no backend for it; pass an ONNX, "
                              f"OpenVINO IR or TensorRT engine artifact")
        for backend in backends_of(manifest.target):
            if backends and backend not in backends:
                continue
            if backend == "openvino" and manifest.stateful:
                if backends:
                    raise ExportError(f"{path} is a stateful IR: Triton's implicit state needs the state as graph I/O; "
                                      f"convert with `canvit-export openvino --no-stateful`, or serve it with --backends "
                                      f"python")
                continue
            name = model_name(path, backend)
            if name in names:
                raise ExportError(f"two artifacts would both be model {name!r}: give them folders of different names")
            names.add(name)
            plan.append((manifest, backend, name))
    if not plan:
        raise ExportError(f"no model to write: --backends {','.join(backends or ())} serves none of these artifacts' "
                          f"targets ({', '.join(sorted({load_manifest(p, verify=False).target for p in artifacts}))})")
    return plan


def write_repository(artifacts: Sequence[Path], out: Path, *, options: ServeOptions | None = None,
                     backends: Sequence[str] | None = None, force: bool = False,
                     progress: Any = None) -> list[TritonModel]:
    """Write the Triton model repository `out` serving `artifacts` (see the package docstring) with `options`
    (default ServeOptions()); return its models.

    Written into a staging folder and renamed into place when complete (nothing half-written). `progress(label)`
    is called before each model. Raises ExportError for bad input (one line, naming the fix) before writing.
    """
    options = options or ServeOptions()
    options.check()
    plan = plan_models(artifacts, backends)
    models = []
    with staged_artifact(Path(out), force=force, inputs=tuple(artifacts), kind="Triton repository") as staging:
        for manifest, backend, name in plan:
            if progress is not None:
                progress(f"{name} ({backend})")
            models.append(_write_model(manifest, backend, name, staging, options))
    return models
