"""The manifest, schema version 1: typed round trips for every target, the published JSON Schema (checked with the
independent `jsonschema` validator) agreeing with the typed models, and one-line refusals of bad manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from canvit_export.export.artifact import derived_fields, finish_manifest, source_record
from canvit_runtime.cli import main as runtime_main
from canvit_runtime.manifest import (
    SCHEMA_PATH,
    ManifestError,
    TensorRtArtifact,
    json_schema,
    load_manifest,
    parse_manifest,
)
from canvit_runtime.precision import PRECISIONS, TARGET_PRECISIONS
from conftest import manifest_round_trip, mutate_manifest, schema_validator

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def test_published_schema_is_generated_from_the_models() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema(), (
        "stale schema: regenerate with `canvit-runtime schema --out runtimes/canvit_runtime/manifest.schema.json`")
    result = CliRunner().invoke(runtime_main, ["schema", "--check"])
    assert result.exit_code == 0, result.output
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    # The vocabulary in the schema is the one in canvit_runtime.precision: the C++ demo reads the same words.
    assert SCHEMA["$defs"]["PrecisionRecord"]["properties"]["name"]["enum"] == list(PRECISIONS)
    assert all(set(words) <= set(PRECISIONS) for words in TARGET_PRECISIONS.values())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "fp16-all"])
def test_onnx_manifests_round_trip(export_artifact, precision: str) -> None:
    manifest = manifest_round_trip(export_artifact("vits16", canvas=16, precision=precision))
    assert manifest.precision.name == precision and manifest.target == "onnx"
    assert manifest.precision.follows_float32_rule == (precision != "fp16-all")


def test_tensorrt_manifest_round_trips(export_artifact, tmp_path: Path) -> None:
    """The TensorRT target's manifest as export_tensorrt builds it (derived fields + the engine's facts), written
    and read back. The engine itself cannot be built here (no TensorRT, no GPU): a placeholder file stands in for
    it, which only the checksums see."""
    source = load_manifest(export_artifact("vits16", canvas=16, precision="fp16"))
    (tmp_path / "step.engine").write_bytes(b"placeholder: the manifest is under test, not the engine")
    shutil.copyfile(source.file("initial_state"), tmp_path / "initial_state.bin")
    written = finish_manifest(
        tmp_path, {"engine": "step.engine", "initial_state": "initial_state.bin"}, ("tensorrt",),
        artifact=TensorRtArtifact(target="tensorrt", workspace_gib=4.0, gpu="NVIDIA Orin", compute_capability="8.7",
                                  tensorrt="10.3.0", source=source_record(source)),
        **derived_fields(source))
    manifest = manifest_round_trip(tmp_path)
    assert manifest == written.at(tmp_path) and manifest.precision.name == "fp16"
    assert isinstance(manifest.artifact, TensorRtArtifact) and manifest.artifact.source.precision == "fp16"


BAD = ["wrong type", "missing field", "future version", "unknown role", "unknown key", "unknown precision",
       "negative shape", "unknown target"]


@pytest.mark.parametrize("how", BAD)
def test_schema_and_models_refuse_the_same_manifests(export_artifact, how: str) -> None:
    data = json.loads((export_artifact("vits16", canvas=16) / "manifest.json").read_text())
    bad = mutate_manifest(data, how)
    assert list(schema_validator().iter_errors(bad)), f"the JSON Schema accepts a manifest with a {how}"
    with pytest.raises(ManifestError) as refused:
        parse_manifest(json.dumps(bad))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("how", "needles"), [
    ("wrong type", ["geometry.batch", "valid integer", "re-export it"]),
    ("missing field", ["precision: Field required"]),
    ("future version", ["manifest version 2 is newer than this canvit-runtime reads (1)", "pip install -U"]),
    ("unknown role", ["inputs.0.role", "'scene'", "'readout'"]),
    ("unknown key", ["camera: Extra inputs are not permitted"]),
    ("unknown precision", ["precision.name", "'fp32'", "'bf16-int8w'"]),
])
@pytest.mark.parametrize("cli", ["canvit-runtime", "canvit-export"])
def test_bad_manifests_are_one_line_errors(export_artifact, tmp_path: Path, how: str, needles: list[str],
                                           cli: str) -> None:
    from canvit_export.cli import main as export_main

    artifact = tmp_path / "a"
    shutil.copytree(export_artifact("vits16", canvas=16), artifact)
    data = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps(mutate_manifest(data, how)))
    result = CliRunner().invoke(runtime_main if cli == "canvit-runtime" else export_main, ["info", str(artifact)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_an_older_layout_is_refused_with_the_reexport(tmp_path: Path) -> None:
    """Artifacts written before the typed manifest (same version number, untyped layout) name the re-export."""
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "canvit-export-manifest", "format_version": 1, "artifact": {"target": "onnx"},
        "precision": {"compute": "fp32", "tensors": {}}, "state": [{"input": "canvas", "output": "canvas_next"}]}))
    with pytest.raises(ManifestError, match=r"not a valid version-1 manifest, .*; re-export it with this canvit-export"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "canvit-export-manifest", "format_version": 0}))
    with pytest.raises(ManifestError, match=r"manifest version 0 is not readable .* re-export"):
        load_manifest(tmp_path)


def test_manifest_records_the_command_and_reexport_hint(tmp_path: Path) -> None:
    """An artifact written by the CLI records its command line; a manifest that later fails validation quotes it."""
    import subprocess
    import sys

    out = tmp_path / "a"
    command = [str(Path(sys.executable).with_name("canvit-export")), "onnx", "--random-weights", "--backbone",
               "vits16", "--canvas", "4", "--scene", "128", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    manifest = load_manifest(out)
    assert manifest.command == " ".join(["canvit-export", *command[1:]])
    data = json.loads((out / "manifest.json").read_text())
    data["geometry"]["batch"] = "1"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"re-export it: canvit-export onnx --random-weights .* --out "):
        load_manifest(out)
