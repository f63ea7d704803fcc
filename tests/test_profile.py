"""canvit-export profile: per-node-type time of the step on OpenVINO and ONNX Runtime (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from canvit_export.profile import NodeType, kind_of, profile_step, summarize


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_profile_accounts_for_the_step(export_artifact, runtime: str) -> None:
    artifact = export_artifact("vits16", canvas=16)
    report = profile_step(artifact, runtime, glimpses=3, warmup=1, threads=2)
    types = report["types"]
    assert report["glimpses"] == 3 and report["ms_per_glimpse"] > 0  # the arithmetic: test_summarize_known_profile
    matmuls = [t for t in types if t["kind"] == "matmul"]
    # ViT-S/16, 12 blocks: at least QKV, projection and two MLP matmuls per block run every glimpse
    assert sum(t["nodes"] for t in matmuls) >= 4 * 12, matmuls
    assert report["shares"]["matmul"] > 0.1, report["shares"]


def test_summarize_known_profile() -> None:
    """Two glimpses whose nodes are known, summed by hand per glimpse: MatMul (2 + 1 + 2 + 1) / 2 = 3 ms over 2 nodes,
    Softmax (1 + 3) / 2 = 2, Subgraph 1.5, Transpose 0.5: 7 ms; shares 3/7, 0.5/7, 1.5/7, 2/7."""
    glimpse = [("MatMul", 2.0, "brgemm"), ("MatMul", 1.0, "brgemm"), ("Transpose", 0.5, "ref"),
               ("Subgraph", 1.5, "snippets")]
    executed = [*glimpse, ("Softmax", 1.0, "jit"), *glimpse[:1], ("MatMul", 1.0, "gemm"), *glimpse[2:],
                ("Softmax", 3.0, "jit")]
    total, shares, types = summarize(executed, glimpses=2)
    assert total == 7.0
    assert shares == {"matmul": 3 / 7, "glue": 0.5 / 7, "fused": 1.5 / 7, "other": 2 / 7}
    assert types == [NodeType("MatMul", "matmul", 3.0, 2, ["brgemm", "gemm"]), NodeType("Softmax", "other", 2.0, 1, ["jit"]),
                     NodeType("Subgraph", "fused", 1.5, 1, ["snippets"]), NodeType("Transpose", "glue", 0.5, 1, ["ref"])]


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
