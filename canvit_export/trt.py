"""`canvit-export trt`: from weights (or an ONNX artifact) to a strongly typed TensorRT engine in one command, or to a
device bundle where TensorRT or a GPU is missing.

    weights --export (onnx's code, the float32 canvas audit)--> ONNX artifact --TensorRT audit--> engine (<it>-trt)
                                                                              \\--> bundle: artifact, wheel, build
                                                                                  commands, PyTorch reference, script

The engine is built on the GPU that runs it (canvit_runtime.engine); the bundle carries what a device needs to build
and check its own (canvit_runtime.bundle: the verdict is canvit-runtime's, torch-free, so the same on both sides).
Manifests are untrusted input: an artifact of another precision is re-exported from a Hub id or seeded random weights
its manifest records, or from the --model the user passes, never from a local path read out of the manifest.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.progress import console
from canvit_runtime.bundle import (
    BUILD_FILE,
    BUNDLE_FILE,
    REFERENCE_FILE,
    SCRIPT_FILE,
    WHEELS,
    BundleRecord,
    file_record,
)
from canvit_runtime.manifest import HubWeights, Manifest, RandomWeights, load_manifest
from canvit_runtime.paths import printable

BUNDLE_POLICIES = ("c2f", "f-iid")
"""Fixed policies: the device replays the recorded viewpoints (EG-C2F would choose from its own, narrower canvas)."""


@contextmanager
def stage(label: str) -> Iterator[Any]:
    """A spinner while `label` runs, then `label: 12.3 s` (the engine module's Stage); yields rich's Status, whose
    update() shows progress inside the stage."""
    start = time.perf_counter()
    with console.status(f"{label} ...") as status:
        yield status
    console.print(f"{label}: {time.perf_counter() - start:.1f} s")


def weights_of(manifest: Manifest, model: str | None, revision: str | None) -> Any:
    """The weights an artifact was exported from: --model when given, else the Hub id or seeded random weights its
    manifest records (fingerprint checked); never a local path read from the manifest. ExportError naming --model."""
    from canvit_export import source

    if model is not None:
        with console.status("loading weights"):
            loaded = source.load(model, random_weights=False, revision=revision)
        loaded.record["weights_fingerprint"] = source.weights_fingerprint(loaded.canvit)
        if loaded.record["weights_fingerprint"] != manifest.model.weights_fingerprint:
            raise ExportError(f"--model {printable(model)} is not the weights {manifest.directory} was exported from "
                              f"(fingerprint mismatch): pass those")
        return loaded
    if isinstance(manifest.model, RandomWeights | HubWeights):
        with console.status("loading the weights the manifest names"):
            return source.load_from_record(manifest.model)
    raise ExportError(f"{manifest.directory} was exported from a local checkpoint, whose path in its manifest is not "
                      f"followed (manifests are untrusted input): pass --model DIR, that checkpoint")


def heads_of(manifest: Manifest, loaded: Any, probe: str | None) -> Any:
    """The artifact's readout heads for a re-export or a reference: rebuilt from its records (seeds, Hub ids), the
    segmentation probe from --probe where given, each checked against its recorded fingerprint."""
    from canvit_export.readouts import heads_from_records

    if not manifest.readouts:
        if probe is not None:
            raise ExportError(f"--probe: {manifest.directory} has no segmentation readout to take it")
        return None
    if probe is None and (local := [r.name for r in manifest.readouts if r.source.kind == "checkpoint"]):
        raise ExportError(f"{manifest.directory}'s {local[0]} head comes from a local folder, whose path in its manifest "
                          f"is not followed: pass --probe DIR, that folder")
    return heads_from_records(loaded, manifest.readouts, probe=probe)  # seeds kept, fingerprints checked


def audit(manifest: Manifest) -> None:
    """The TensorRT audit (canvit_runtime.trt_audit) of an artifact's graph, with its one line of result."""
    from canvit_runtime.trt_audit import AUDITED_VERSIONS, check

    with console.status("TensorRT audit of the graph's ops, attributes and dtypes ..."):
        counts = check(manifest.file("graph"))
    console.print(f"TensorRT audit: {counts['nodes']} nodes of {counts[AUDITED_VERSIONS[0]]} op types pass "
                  f"onnx-tensorrt's operator tables as used for TensorRT {', '.join(AUDITED_VERSIONS)} (strongly "
                  f"typed; tensorrt_onnx_support.json names each table)" +
                  (" (bf16: GPUs of compute capability 8.0 or more, Orin yes, Xavier no)"
                   if manifest.precision.name == "bf16" else ""))


def runtime_source() -> Path:
    """runtimes/ of this repository, from which the canvit-runtime wheel is built; ExportError outside a clone."""
    root = Path(canvit_runtime.__file__).resolve().parents[1]
    project = root / "pyproject.toml"
    if not project.is_file() or 'name = "canvit-runtime"' not in project.read_text():
        raise ExportError("the bundle's canvit-runtime wheel is built from this repository's runtimes/ folder, and "
                          "canvit_runtime is not installed from one: install with scripts/setup.sh in a clone")
    return root


def build_wheel(into: Path) -> Path:
    """The canvit-runtime wheel, built into `into` with pip (offline where setuptools is installed here), from a copy
    of runtimes/ in a temporary folder: setuptools writes build/ and *.egg-info beside its source, and nothing may be
    written outside --out."""
    import tempfile

    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="canvit-runtime-wheel-") as scratch:
        source = Path(scratch) / "runtimes"
        shutil.copytree(runtime_source(), source, symlinks=False,
                        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
        args = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                "--wheel-dir", str(into), str(source)]
        try:
            import setuptools  # noqa: F401

            args.insert(5, "--no-build-isolation")
        except ImportError:
            pass
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired as error:
            raise ExportError("building the canvit-runtime wheel took over 900 s: is pip waiting for the network?"
                              ) from error
    wheels = sorted(into.glob("canvit_runtime-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise ExportError(f"building the canvit-runtime wheel failed: {printable(last)}")
    return wheels[0]


def record_reference(manifest: Manifest, loaded: Any, heads: Any, scene: np.ndarray, policy: str, glimpses: int,
                     seed: int, progress: Callable[[str], None] = lambda line: None) -> dict[str, np.ndarray]:
    """The float32 reference of canvit_runtime.bundle (reference.npz): canvit-pytorch's CanViT (EagerRunner, the
    parity reference) rolled out from the initial state over `policy`'s viewpoints, with the artifact's readout
    `heads` (the ones exported)."""
    from canvit_export.reference import EagerRunner
    from canvit_runtime.policies import make_policy

    eager = EagerRunner(manifest, loaded, heads=heads)
    eager.reset()
    outputs = [o for r in manifest.readouts for o in r.outputs]
    viewpoints = make_policy(policy, batch=manifest.batch, glimpses=glimpses, seed=seed)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in ("centers", "scales", "canvas", "recurrent_cls",
                                                           "reference_ms", *(f"readout.{o}" for o in outputs))}
    for t, v in enumerate(viewpoints):
        start = time.perf_counter()
        result = eager.step(scene, v.centers, v.scales)
        frames["reference_ms"].append(np.array((time.perf_counter() - start) * 1e3, dtype=np.float32))
        frames["centers"].append(v.centers)
        frames["scales"].append(v.scales)
        frames["canvas"].append(result.canvas)
        frames["recurrent_cls"].append(result.recurrent_cls)
        for o in outputs:
            frames[f"readout.{o}"].append(result.extras[o])
        progress(f"recording the float32 reference with PyTorch: glimpse {t + 1}/{glimpses}")
    arrays = {k: np.stack(v).astype(np.float32) for k, v in frames.items()}
    arrays["scene"] = scene.astype(np.float32)
    return arrays


def copy_artifact(manifest: Manifest, into: Path) -> None:
    """The artifact's listed files and manifest.json into `into` (read back checked by load_manifest)."""
    from canvit_runtime.paths import write_marker

    into.mkdir()
    for key, record in manifest.files.items():
        target = into / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(manifest.read_verified(key))  # the checksummed bytes, never what a link points to
    (into / "manifest.json").write_text(manifest.to_json())
    write_marker(into, "artifact")
    load_manifest(into)


def script_text(record: BundleRecord) -> str:
    """run-on-device.sh: a thin wrapper over `canvit-runtime check-bundle` (the verdict lives there)."""
    wheel = record.wheel.path
    return f"""#!/bin/sh
# Check this bundle on the device that runs it (written by canvit-export trt --bundle):
#   ./{SCRIPT_FILE} [--runtime tensorrt|onnxruntime] [more canvit-runtime check-bundle options]
# makes a venv ($VENV, default .venv-<runtime> here) with $PYTHON (default python3; JetPack 6: Python 3.10) that sees the system's
# TensorRT (JetPack's python3-libnvinfer), installs the canvit-runtime wheel, builds the engine (once), rolls out the
# recorded viewpoints and prints the parity verdict against the float32 PyTorch reference: a per-glimpse table, PASS
# (exit 0) or FAIL (exit 1), then the step's latency. --runtime onnxruntime checks the ONNX artifact instead, on a
# device without TensorRT (or to check the bundle itself).
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" >/dev/null && pwd)
python=${{PYTHON:-python3}}
runtime=tensorrt
previous=
for arg in "$@"; do
    case "$previous" in --runtime) runtime=$arg ;; esac
    case "$arg" in --runtime=*) runtime=${{arg#--runtime=}} ;; esac
    previous=$arg
done
case "$runtime" in
    onnxruntime) extra=onnxruntime; site= ;;
    # a Jetson (L4T) has JetPack's TensorRT and a CUDA 12 driver: the jetson extra; elsewhere PyPI's TensorRT
    tensorrt) if [ -e /etc/nv_tegra_release ]; then extra=jetson; else extra=tensorrt; fi; site=--system-site-packages ;;
    *) echo "error: --runtime $runtime: choose tensorrt or onnxruntime" >&2; exit 2 ;;
esac
venv=${{VENV:-$here/.venv-$runtime}}  # one per runtime: only tensorrt's sees the system's packages
if command -v sha256sum >/dev/null; then
    (cd "$here" && echo "{record.wheel.sha256}  {wheel}" | sha256sum -c --quiet -) || {{
        echo "error: {wheel} differs from bundle.json: copy the bundle again" >&2; exit 2; }}
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "making the venv $venv with $python $site" >&2
    "$python" -m venv $site "$venv"
fi
echo "installing canvit-runtime[$extra] from {wheel}" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here/{wheel}[$extra]"
# the same version number from a newer bundle: replace the package itself, never keep an older copy
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$here/{wheel}"
exec "$venv/bin/canvit-runtime" check-bundle "$here" "$@"
"""


def build_text(manifest: Manifest, record: BundleRecord) -> str:
    """BUILD.md: the engine build commands, run in the bundle's folder on the device."""
    from canvit_runtime.engine import trtexec_command

    name = record.artifact  # a plain name (BundleRecord's pattern): no shell quoting needed
    at_bundle = manifest.at(Path(name))
    command = trtexec_command(at_bundle, engine=Path(f"{name}-trt/step.engine"), workspace_gib=4.0, timing_cache=None)
    return f"""# Building the TensorRT engine of {name} on the device

`./{SCRIPT_FILE}` does all of this and checks the result; these are the same steps by hand, run in this folder.
Engines run only on the GPU model and TensorRT version that built them: build on the device.

## With canvit-runtime (TensorRT 10.3 on JetPack 6, TensorRT 10.x and 11.x on x86)

```bash
python3 -m venv --system-site-packages .venv       # sees JetPack's TensorRT (python3-libnvinfer)
.venv/bin/pip install "{record.wheel.path}[jetson]"   # [tensorrt] on an x86 machine with an NVIDIA GPU
.venv/bin/canvit-runtime trt --artifact {name} --precision {manifest.precision.name}   # -> {name}-trt/
.venv/bin/canvit-runtime check-bundle . --runtime tensorrt                          # PASS/FAIL + latency
```

## With trtexec (TensorRT 10.3 and newer; JetPack: /usr/src/tensorrt/bin/trtexec)

The network is strongly typed: TensorRT keeps the graph's {manifest.precision.name} types, float32 canvas path
included. TensorRT 10.x needs `--stronglyTyped`; 11.x builds strongly typed networks only.

```bash
mkdir -p {name}-build
{command.replace(f'{name}-trt/', f'{name}-build/')} 2>&1 | tee {name}-build/build.log
.venv/bin/canvit-runtime trt --artifact {name} --adopt-engine {name}-build/step.engine --trtexec-log {name}-build/build.log
.venv/bin/canvit-runtime check-bundle . --runtime tensorrt
```
"""


def write_bundle(bundle: Path, *, manifest_source: Manifest | None, loaded: Any, heads: Any, export: Any,
                 force: bool, policy: str, glimpses: int, seed: int, image: Path | None,
                 inputs: tuple[Path, ...] = ()) -> Path:
    """Write the device bundle (canvit_runtime.bundle's layout) at `bundle`, atomically: `export(folder)` writes the
    ONNX artifact into `folder` (or manifest_source is copied), then the TensorRT audit, the PyTorch reference, the
    wheel, BUILD.md, the script and bundle.json. Returns `bundle`. ExportError for a bad policy or image."""
    from canvit_export.parity import default_image
    from canvit_runtime.artifact import command_line, staged_artifact
    from canvit_runtime.preprocess import scene_batch

    if policy not in BUNDLE_POLICIES:
        raise ExportError(f"--policy {policy}: a bundle replays fixed viewpoints: choose one of "
                          f"{', '.join(BUNDLE_POLICIES)}")
    if not 1 <= glimpses <= 1000:
        raise ExportError(f"--glimpses {glimpses}: a bundle records 1 to 1000 glimpses")
    photo = default_image() if image is None else image
    with staged_artifact(bundle, force=force, inputs=inputs, kind="device bundle") as staging:
        if manifest_source is not None:
            from canvit_export.export.artifact import default_out_dir

            name = default_out_dir(manifest_source.architecture.backbone, manifest_source.geometry,
                                   manifest_source.precision.name, "onnx").name  # a plain name, whatever the source's
            with stage(f"copying {manifest_source.directory} into the bundle"):
                copy_artifact(manifest_source, staging / name)
        else:
            name = export(staging).name
        manifest = load_manifest(staging / name)
        audit(manifest)
        try:
            scene = scene_batch(photo, scene_px=manifest.scene_px, batch=manifest.batch)
        except ValueError as error:
            raise ExportError(str(error)) from error
        with stage(f"recording the float32 reference with PyTorch ({glimpses} glimpses, {policy})") as status:
            arrays = record_reference(manifest, loaded, heads, scene, policy, glimpses, seed, progress=status.update)
            np.savez(staging / REFERENCE_FILE, **arrays)  # type: ignore[arg-type]
        with stage("building the canvit-runtime wheel"):
            wheel = build_wheel(staging / WHEELS)
        record = BundleRecord(
            artifact=name, precision=manifest.precision.name, policy=policy, seed=seed, glimpses=glimpses,
            image="skimage.data.astronaut()" if image is None else printable(Path(image).name),
            reference=file_record(staging, REFERENCE_FILE),
            reference_runtime="PyTorch eager fp32 (canvit-pytorch CanViT), recorded by canvit-export",
            wheel=file_record(staging, f"{WHEELS}/{wheel.name}"), created_by=command_line() or "canvit-export trt")
        (staging / BUNDLE_FILE).write_text(record.model_dump_json(indent=1) + "\n")
        (staging / BUILD_FILE).write_text(build_text(manifest, record))
        script = staging / SCRIPT_FILE
        script.write_text(script_text(record))
        script.chmod(0o755)
    return bundle


def bundle_size(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def describe(path: Path | str) -> str:
    """`path` as a shell word (quoted when it must be)."""
    return shlex.quote(str(path))

