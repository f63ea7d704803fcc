"""Shared fixtures: seeded ViT-S weights and exported artifacts, built once per test session."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from canvit_export.export.artifact import Geometry
from canvit_export.export.onnx import export_onnx
from canvit_export.source import LoadedModel, load
from canvit_runtime.manifest import SCHEMA_PATH, Manifest, load_manifest, parse_manifest

SCENE_PX, GLIMPSE_PX = 512, 128
EXECUTORCH_CANVAS = 8  # the .pte programs' canvas grid (tests/test_executorch.py, tests/test_executorch_aarch64.py)
MIN_FREE_GB = 6.0
"""Free disk the suite needs under the temporary directory: its peak use measured ~3.5 GB (df every 15 s over a
whole run, 369 tests: fresh Python 3.12 and 3.10 venvs, CanViT-B exports, C++ builds), with room to spare;
CANVIT_TEST_MIN_FREE_GB overrides it."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop before the first test, with one line, when the temporary directory's disk is too full for the suite: a
    full disk fails twenty tests far apart with ENOSPC tracebacks (one CI run did)."""
    tmp = tempfile.gettempdir()
    needed = float(os.environ.get("CANVIT_TEST_MIN_FREE_GB", MIN_FREE_GB))
    free = shutil.disk_usage(tmp).free / 1e9
    if free < needed:
        pytest.exit(f"only {free:.1f} GB free under {tmp}, the test suite needs {needed:.0f} GB there: free some space "
                    f"(old pytest-of-* folders, artifacts) or point TMPDIR at a larger disk", returncode=1)


FIGURES: list[str] = []


@pytest.fixture
def report_figure() -> Callable[[str], None]:
    """report_figure(line): a measured figure the run prints in its closing summary (pytest -q hides a passing test's
    own output), so that CI logs carry it on every kind of machine."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("measured")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def vits16() -> LoadedModel:
    return load(None, random_weights=True, backbone="vits16", seed=0)


@pytest.fixture(scope="session")
def export_artifact(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """export_artifact(backbone, canvas, batch, seed, precision, readout) -> artifact folder, exported once per
    configuration; readout: comma-separated readouts (seeded random heads), e.g. "segmentation,classification"."""
    cache: dict[tuple, Path] = {}

    def make(backbone: str = "vits16", canvas: int = 16, batch: int = 1, seed: int = 0, precision: str = "fp32",
             readout: str | None = None) -> Path:
        key = (backbone, canvas, batch, seed, precision, readout)
        if key not in cache:
            from canvit_export.readouts import load_heads, parse_readouts

            suffix = f"-{readout.replace(',', '+')}" if readout else ""
            out = tmp_path_factory.mktemp("artifacts") / f"{backbone}-c{canvas}-b{batch}-s{seed}-{precision}{suffix}"
            loaded = load(None, random_weights=True, backbone=backbone, seed=seed)
            heads = load_heads(loaded, parse_readouts(readout), probe=None, seed=seed) if readout else None
            export_onnx(loaded, Geometry(batch=batch, scene_px=SCENE_PX, glimpse_px=GLIMPSE_PX, canvas_grid=canvas),
                        out, precision=precision, heads=heads, quiet=True)
            cache[key] = out
        return cache[key]

    return make


INT8_READOUT = "segmentation,classification"


@pytest.fixture(scope="session")
def readout_fp32(export_artifact) -> Path:
    """The seeded ViT-S canvas-16 fp32 step with segmentation and classification readouts: what INT8 is quantized
    from."""
    return export_artifact("vits16", canvas=16, readout=INT8_READOUT)


@pytest.fixture(scope="session")
def calibration(readout_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from canvit_export.calibration import record_calibration

    out = tmp_path_factory.mktemp("calibration") / "set"
    record_calibration(readout_fp32, out, glimpses=4, quiet=True)  # 4 photos x (c2f, f-iid, eg-c2f) x 4 glimpses
    return out


@pytest.fixture(scope="session")
def int8(readout_fp32: Path, calibration: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """int8(kind) -> the static INT8 artifact: "onnx" (ONNX Runtime Q/DQ) or "openvino" (NNCF, stateful IR)."""
    folder = tmp_path_factory.mktemp("int8")
    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        from canvit_export.export.int8 import export_onnx_int8
        from canvit_export.export.openvino import export_openvino

        if kind not in made:
            out = folder / kind
            if kind == "onnx":
                export_onnx_int8(readout_fp32, out, calibration=calibration, quiet=True)
            else:
                export_openvino(readout_fp32, out, precision="int8", calibration=calibration, quiet=True)
            made[kind] = out
        return made[kind]

    return make


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph: skimage.data.chelsea() (451 x 300 RGB), not square, so resize and crop both act."""
    import skimage.data

    return skimage.data.chelsea()


def schema_validator():  # -> jsonschema.Draft202012Validator
    """The published manifest.schema.json, as the independent `jsonschema` package validates it."""
    import json

    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def manifest_round_trip(artifact: Path) -> Manifest:
    """Read -> write -> read gives the same typed manifest, manifest.json is exactly what the model writes, and the
    published JSON Schema accepts it. Returns the manifest."""
    import json

    manifest = load_manifest(artifact)
    text = (artifact / "manifest.json").read_text()
    assert manifest.to_json() == text, "manifest.json is the typed model's own serialization"
    again = parse_manifest(manifest.to_json()).at(artifact)
    assert again == manifest and again.model_dump() == manifest.model_dump()
    errors = sorted(schema_validator().iter_errors(json.loads(text)), key=str)
    assert not errors, errors[0].message
    return manifest


def mutate_manifest(data: dict, how: str) -> dict:
    """A copy of manifest.json's data made invalid one way (the cases both languages must refuse with one line)."""
    import copy

    data = copy.deepcopy(data)
    if how == "wrong type":
        data["geometry"]["batch"] = "1"
    elif how == "missing field":
        del data["precision"]
    elif how == "future version":
        data["format_version"] = 2
    elif how == "unknown role":
        data["inputs"][0]["role"] = "segmentation"
    elif how == "unknown key":
        data["camera"] = {"fps": 30}
    elif how == "unknown precision":
        data["precision"]["name"] = "int4"
    elif how == "negative shape":
        data["inputs"][0]["shape"][0] = -1
    elif how == "unknown target":
        data["artifact"]["target"] = "tflite"
    else:
        raise ValueError(how)
    return data


BAD_MANIFESTS = Path(__file__).parent / "data" / "bad_manifests"


def bad_manifest_cases(kind: str = "cases") -> list[dict]:
    """The bad-manifest corpus (tests/data/bad_manifests/cases.json): `cases` (the contract's rules, one message for
    both languages) or `schema_cases` (caps and names the JSON Schema enforces, worded by each validator)."""
    return json.loads((BAD_MANIFESTS / "cases.json").read_text(encoding="utf-8"))[kind]


def _pointer(document: object, pointer: str) -> tuple[object, str]:
    """(the parent container, the last token) of an RFC 6901 pointer."""
    *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    for token in parents:
        document = document[int(token) if isinstance(document, list) else token]  # type: ignore[index]
    return document, last


def json_patch(document: object, patch: list[dict]) -> object:
    """`document` (a deep copy) with the RFC 6902 operations add, remove, replace, move and copy applied."""
    import copy

    document = copy.deepcopy(document)
    for op in patch:
        if op["op"] in ("move", "copy"):
            source, key = _pointer(document, op["from"])
            index = int(key) if isinstance(source, list) else key
            value = copy.deepcopy(source[index]) if op["op"] == "copy" else source.pop(index)  # type: ignore[index,union-attr]
            op = {"op": "add", "path": op["path"], "value": value}
        parent, key = _pointer(document, op["path"])
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            elif op["op"] == "remove":
                del parent[index]
            else:
                parent[index] = op["value"]
        elif op["op"] == "remove":
            del parent[key]  # type: ignore[attr-defined]
        else:
            parent[key] = op["value"]  # type: ignore[index]
    return document


def write_bad_manifest(case: dict, folder: Path) -> Path:
    """folder/manifest.json holding the corpus case (base.json patched, or its `text`, or padded); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    base = (BAD_MANIFESTS / "base.json").read_text(encoding="utf-8")
    if "text" in case:
        text = case["text"]
    elif "pad_to_bytes" in case:
        text = base + " " * (case["pad_to_bytes"] - len(base.encode()))
    else:
        text = json.dumps(json_patch(json.loads(base), case["patch"]), indent=1)
    path = folder / "manifest.json"
    path.write_text(text, encoding="utf-8")
    return path


def trtexec_log(command: str, *, gpu: str = "Orin", compute_capability: str = "8.7", version: str = "10.3.0",
                result: str = "PASSED") -> str:
    """A trtexec build log laid out line for line as trtexec writes it (TensorRT's samples/common: logging.h
    reportTestResult `&&&& RUNNING|PASSED TensorRT.trtexec [TensorRT v<NV_TENSORRT_VERSION>] # <argv joined by
    spaces>`; sampleDevice.cpp setCudaDevice; trtexec.cpp `TensorRT version: x.y.z`), for `command` as run on a
    device. Only the lines that matter here: not a build's whole output."""
    major, minor, patch = (int(p) for p in version.split("."))
    name = f"TensorRT.trtexec [TensorRT v{major * 10000 + minor * 100 + patch}]"
    info = "[11/23/2026-10:00:00] [I] "
    lines = [f"&&&& RUNNING {name} # {command}", f"{info}=== Device Information ===", f"{info}Available Devices: ",
             f'{info}  Device 0: "{gpu}" UUID: GPU-01234567-89ab-cdef-0123-456789abcdef', f"{info}Selected Device: {gpu}",
             f"{info}Selected Device ID: 0", f"{info}Selected Device UUID: GPU-01234567-89ab-cdef-0123-456789abcdef",
             f"{info}Compute Capability: {compute_capability}", f"{info}SMs: 16", info, f"{info}TensorRT version: {version}",
             f"{info}[TRT] [MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 31, GPU 3840 (MiB)",
             f"{info}Engine built in 412.3 sec.", f"&&&& {result} {name} # {command}"]
    return "\n".join(lines) + "\n"


def invoke(main, *args: object) -> tuple[int, str]:
    """Run a click command group in-process (CliRunner): (exit code, output). Fails on a traceback."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}")
    return result.exit_code, result.output


def one_line(output: str) -> str:
    """The single `error: ...` line of a refused command's output (no traceback, no escape sequence)."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output and "\x1b" not in output, output
    return lines[0]


@pytest.fixture(scope="session")
def pte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stateful fp32 ViT-S program, canvas 8, with the segmentation readout (EG-C2F reads its entropy), exported
    as a user types it (issue 28's command at ViT-S sizes; the weights are the `vits16` fixture's: seed 0). Shared by
    tests/test_executorch.py and tests/test_executorch_aarch64.py: one export per session."""
    from canvit_export.cli import main

    out = tmp_path_factory.mktemp("executorch") / "vits16-c8-pte"
    code, output = invoke(main, "executorch", "--random-weights", "--backbone", "vits16", "--canvas", EXECUTORCH_CANVAS,
                          "--scene", SCENE_PX, "--glimpse", GLIMPSE_PX, "--readout", "segmentation", "--out", out)
    assert code == 0, output
    return out
