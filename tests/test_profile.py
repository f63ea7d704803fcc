"""canvit-export profile: per-node-type time of the step on OpenVINO and ONNX Runtime (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from canvit_export.profile import kind_of, profile_step


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_profile_accounts_for_the_step(export_artifact, runtime: str) -> None:
    artifact = export_artifact("vits16", canvas=16)
    report = profile_step(artifact, runtime, glimpses=3, warmup=1, threads=2)
    types = report["types"]
    assert report["glimpses"] == 3 and report["ms_per_glimpse"] > 0
    assert abs(sum(report["shares"].values()) - 1) < 1e-9
    assert abs(sum(t["ms"] for t in types) - report["ms_per_glimpse"]) < 1e-6 * report["ms_per_glimpse"]
    assert [t["ms"] for t in types] == sorted((t["ms"] for t in types), reverse=True)
    matmuls = [t for t in types if t["kind"] == "matmul"]
    # ViT-S/16, 12 blocks: at least QKV, projection and two MLP matmuls per block run every glimpse
    assert sum(t["nodes"] for t in matmuls) >= 4 * 12, matmuls
    assert report["shares"]["matmul"] > 0.1, report["shares"]


def test_node_kinds() -> None:
    assert [kind_of(t) for t in ("MatMul", "FullyConnected", "Transpose", "Gather", "Convert", "ReadValue", "Subgraph",
                                 "Softmax", "MVN")] == \
        ["matmul", "matmul", "glue", "glue", "glue", "glue", "fused", "other", "other"]


def test_profile_cli(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16)
    result = CliRunner().invoke(main, ["profile", "--artifact", str(artifact), "--glimpses", "2", "--warmup", "1",
                                       "--top", "5", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "ms/glimpse" in result.output and "shares: matmul " in result.output, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["runtime"] == "openvino" and len(report["types"]) > 5
    result = CliRunner().invoke(main, ["profile", "--artifact", str(artifact), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and result.output.strip() == \
        f"error: --json {tmp_path / 'p.json'}: it exists; choose another file", result.output
    result = CliRunner().invoke(main, ["profile", "--artifact", str(artifact), "--top", "0"])
    assert result.exit_code == 2 and result.output.strip() == "error: --top 0: list at least one node type"
