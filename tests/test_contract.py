"""The contract beyond the JSON Schema (runtimes/canvit_runtime/manifest.contract.json): the checked-in file is the
generated one, it says what the schema says where both say it, and the bad-manifest corpus
(tests/data/bad_manifests) is refused by canvit_runtime with its hand-written lines. tests/test_cpp_demo.py runs the
same corpus through canvit_demo and expects the same lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_runtime.cli import main as runtime_main
from canvit_runtime.contract import CONTRACT_PATH, MESSAGES
from canvit_runtime.manifest import SCHEMA_PATH, ManifestError, contract_text, load_manifest, parse_manifest
from conftest import BAD_MANIFESTS, bad_manifest_cases, write_bad_manifest

CONTRACT = json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))


def test_published_contract_is_generated() -> None:
    """The checked-in manifest.contract.json is what `canvit-runtime schema --contract` writes, and `schema --check`
    fails, naming the regeneration, once it is not."""
    assert CONTRACT_PATH.read_text(encoding="utf-8") == contract_text(), (
        f"stale contract: regenerate with `{CONTRACT['generator']}`")
    result = CliRunner().invoke(runtime_main, ["schema", "--check"])
    assert result.exit_code == 0, result.output


def test_schema_check_fails_on_a_stale_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import canvit_runtime.contract

    stale = tmp_path / "manifest.contract.json"
    stale.write_text(contract_text().replace('"batch": 64', '"batch": 65'), encoding="utf-8")
    monkeypatch.setattr(canvit_runtime.contract, "CONTRACT_PATH", stale)
    result = CliRunner().invoke(runtime_main, ["schema", "--check"])
    assert result.exit_code == 1
    assert f"{stale} is stale: regenerate it with `canvit-runtime schema --contract --out {stale}`" in result.output


def test_contract_agrees_with_the_schema() -> None:
    """Where the schema also states a rule (caps, the tensor-name pattern, the vocabularies), it states the same."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    defs = schema["$defs"]
    assert defs["TensorSpec"]["properties"]["name"]["pattern"] == CONTRACT["names"]["tensor"]
    for key in ("batch", "scene_px", "glimpse_px", "canvas_grid"):
        assert defs["Geometry"]["properties"][key]["maximum"] == CONTRACT["limits"][key], key
    assert set(defs["PrecisionRecord"]["properties"]["name"]["enum"]) == set(CONTRACT["precisions"])
    assert set(defs["ReadoutRecord"]["properties"]["name"]["enum"]) == set(CONTRACT["readouts"])
    targets = set(schema["properties"]["artifact"]["discriminator"]["mapping"])
    assert targets == set(CONTRACT["target_files"]) == set(CONTRACT["target_names"])
    file_keys = set(schema["properties"]["files"]["propertyNames"]["enum"])
    assert {k for keys in CONTRACT["target_files"].values() for k in keys} | set(CONTRACT["always_files"]) <= file_keys


def test_corpus_covers_every_rule() -> None:
    """Each message of the contract (but the wrapper) is some case's; the base manifest itself is valid."""
    exercised = {case["rule"] for case in bad_manifest_cases()}
    assert exercised == set(MESSAGES) - {"inconsistent"}, set(MESSAGES) - {"inconsistent"} - exercised
    parse_manifest((BAD_MANIFESTS / "base.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", bad_manifest_cases(), ids=lambda case: case["case"])
def test_python_refuses_the_corpus(case: dict, tmp_path: Path) -> None:
    path = write_bad_manifest(case, tmp_path / "artifact")
    with pytest.raises(ManifestError) as refused:
        load_manifest(path.parent)
    assert str(refused.value) == case["message"].replace("{manifest}", str(path))


@pytest.mark.parametrize("case", bad_manifest_cases("schema_cases"), ids=lambda case: case["case"])
def test_python_refuses_the_schema_corpus(case: dict, tmp_path: Path) -> None:
    path = write_bad_manifest(case, tmp_path / "artifact")
    with pytest.raises(ManifestError) as refused:
        load_manifest(path.parent)
    assert str(refused.value) == case["python"].replace("{manifest}", str(path))
