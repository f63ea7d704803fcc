"""canvit-export profile: per-node-type time of the step on OpenVINO and ONNX Runtime (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from canvit_export.profile import CanvasSize, NodeType, canvas_sized, kind_of, profile_step, summarize


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
    Softmax (1 + 3) / 2 = 2, Subgraph 1.5, Transpose 0.5: 7 ms; shares 3/7, 0.5/7, 1.5/7, 2/7. Canvas side: the
    canvas-sized MatMul (2 + 2) / 2 = 2 and Softmax (1 + 3) / 2 = 2: 4 ms; the glimpse side the other 3 ms."""
    glimpse = [("MatMul", 2.0, "brgemm", "canvas"), ("MatMul", 1.0, "brgemm", "glimpse"),
               ("Transpose", 0.5, "ref", "glimpse"), ("Subgraph", 1.5, "snippets", "glimpse")]
    executed = [*glimpse, ("Softmax", 1.0, "jit", "canvas"), *glimpse[:1], ("MatMul", 1.0, "gemm", "glimpse"),
                *glimpse[2:], ("Softmax", 3.0, "jit", "canvas")]
    total, shares, types, sides = summarize(executed, glimpses=2)
    assert total == 7.0 and sides == {"canvas": 4.0, "glimpse": 3.0}
    assert shares == {"matmul": 3 / 7, "glue": 0.5 / 7, "fused": 1.5 / 7, "other": 2 / 7}
    assert types == [NodeType("MatMul", "matmul", 3.0, 2, ["brgemm", "gemm"]), NodeType("Softmax", "other", 2.0, 1, ["jit"]),
                     NodeType("Subgraph", "fused", 1.5, 1, ["snippets"]), NodeType("Transpose", "glue", 0.5, 1, ["ref"])]


def test_canvas_sized() -> None:
    """ViT-S at canvas 16 (16 registers + 256 cells = 272 tokens, width 1024, glimpse grid 8): the canvas, its
    heads, its patches at canvas width and the probe's 16 x 16 grid are canvas-sized; the glimpse's 71 tokens and its
    8 x 8 patch grid are not. At canvas 8 the grid equals the glimpse's: only the token count (80) and the canvas
    patches at canvas width [.., 64, 1024] say canvas, so the glimpse's 8 x 8 patch grid stays on its side."""
    c16 = CanvasSize(tokens=272, grid=16, width=1024, glimpse_grid=8)
    assert [canvas_sized([shape], c16) for shape in [(1, 272, 1024), (1, 8, 272, 128), (1, 256, 1024), (1, 150, 16, 16),
                                                      (1, 16, 16), (1, 71, 1024), (1, 384, 8, 8), (1, 64, 128)]] == \
        [True, True, True, True, True, False, False, False]
    assert canvas_sized([(1, 71, 384), (1, 272, 1024)], c16) and not canvas_sized([], c16)
    c8 = CanvasSize(tokens=80, grid=8, width=1024, glimpse_grid=8)
    assert [canvas_sized([shape], c8) for shape in [(1, 80, 1024), (1, 64, 1024), (1, 150, 8, 8), (1, 384, 8, 8),
                                                     (1, 64, 128), (1, 71, 1024)]] == \
        [True, True, False, False, False, False]


def test_profile_splits_a_vits_c8_ir(export_artifact, tmp_path: Path) -> None:
    """A real ViT-S canvas 8 OpenVINO IR (stateful: its runtime model has no Result, the IR's names are read): both
    sides take time, and they sum to the nodes' total."""
    from canvit_export.export.openvino import export_openvino

    export_openvino(export_artifact("vits16", canvas=8), tmp_path / "ir", precision="fp32", quiet=True)
    report = profile_step(tmp_path / "ir", "openvino", glimpses=2, warmup=1, threads=2)
    canvas, glimpse = report["sides"]["canvas"], report["sides"]["glimpse"]
    assert canvas["ms"] > 0 and glimpse["ms"] > 0, report["sides"]
    assert abs(canvas["ms"] + glimpse["ms"] - report["ms_per_glimpse"]) < 1e-9 * report["ms_per_glimpse"]
    assert abs(canvas["share"] + glimpse["share"] - 1) < 1e-12 and canvas["share"] < glimpse["share"]


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
    assert "sides: canvas " in result.output and " ms (" in result.output, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["runtime"] == "openvino" and len(report["types"]) > 5 and set(report["sides"]) == {"canvas", "glimpse"}
    result = CliRunner().invoke(main, ["profile", "--artifact", str(artifact), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and result.output.strip() == \
        f"error: --json {tmp_path / 'p.json'}: it exists; choose another file", result.output
    result = CliRunner().invoke(main, ["profile", "--artifact", str(artifact), "--top", "0"])
    assert result.exit_code == 2 and result.output.strip() == "error: --top 0: list at least one node type"
