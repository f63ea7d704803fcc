"""canvit-export bench --quick: the table, JSON and chart are produced with every column; no timing is asserted."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from canvit_export.bench import COLUMNS
from canvit_export.cli import main


def test_bench_quick(export_artifact, tmp_path) -> None:
    fp32 = export_artifact("vits16", canvas=16)
    fp16 = export_artifact("vits16", canvas=16, precision="fp16")
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(fp32), str(fp16), "--runtimes",
                                       "onnxruntime,openvino,tensorrt", "--quick", "--threads", "2", "--baselines",
                                       "bf16-autocast,compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: no configuration on tensorrt (it runs tensorrt: TensorRT engine artifacts" in result.output
    report = json.loads((out / "bench.json").read_text())
    assert report["iters"] == 2 and report["warmup"] == 1
    assert report["machine"]["cores"] and report["machine"]["threads"] == 2 and "onnxruntime" in report["machine"]["versions"]
    floors = [r for r in report["rows"] if r["runtime"] == "floor"]
    rows = [r for r in report["rows"] if r["runtime"] != "floor"]
    names = [r["config"] for r in rows]
    # eager, its bf16-autocast and torch.compile baselines, the peer export, then each artifact on each runtime that
    # runs it; then the fp32, bf16 and INT8 floors
    assert len(rows) == 4 + 2 * 2, names
    assert [f["precision"] for f in floors] == ["fp32", "bf16", "int8"] and report["rows"][-3:] == floors
    # 12 blocks x 4 + patch embedding + VPE + 3 Reads x 2 + 3 Writes x 2 weight matrices; 2 products per attention
    for floor in floors:  # the step's own matmuls timed alone in this run, the faster of unpadded and padded rows
        assert floor["median ms"] == min(floor["rows as in the graph ms"], floor["rows padded to 8 ms"]) > 0, floor
        assert abs(floor["GFLOP/s"] - floor["GFLOPs/glimpse"] / (floor["median ms"] / 1e3)) < 1e-6 * floor["GFLOP/s"]
        assert "the step's 98 matmuls alone (62 of weights" in floor["config"], floor["config"]
        assert floor["config"].startswith(f"floor ({fp32.name}): "), "named by the group's first artifact"
    fp32_floor = floors[0]["median ms"]
    assert names[0].startswith("PyTorch eager (") and names[3].startswith("canvit-pytorch live export")
    autocast, compiled = rows[1], rows[2]
    assert names[1].startswith("PyTorch eager, bf16 autocast") and autocast["precision"] == "bf16-autocast"
    assert 1e-4 < autocast["worst rel-L2"] < 2e-2, autocast  # bfloat16 matmuls: measured, not assumed
    assert names[2].startswith("torch.compile (inductor)") and compiled["runtime"] == "torch.compile"
    assert compiled["precision"] == "fp32" and compiled["worst rel-L2"] <= 1e-4, compiled
    for row in rows:
        assert set(row) == set(COLUMNS), row
        assert row["median ms"] > 0 and row["glimpses/s"] > 0 and row["GFLOPs/glimpse"] > 1
        assert row["peak RSS MB"] is not None and row["peak RSS MB"] > 50, row
        assert 0 <= row["worst rel-L2"] < 2e-2 and row["worst cosine"] > 0.999, row
    for row in rows:  # the ratio column is eager's median over the row's, from the same run
        assert abs(row["vs eager"] - rows[0]["median ms"] / row["median ms"]) < 1e-9 * row["vs eager"], row
        if row["precision"] == "fp32":  # and "x floor" the row's median over its precision's floor
            assert abs(row["x floor"] - row["median ms"] / fp32_floor) < 1e-9 * row["x floor"], row
    fp32_rows = [r for r in rows[3:] if r["precision"] == "fp32"]  # the peer export and ours, on both runtimes
    assert len(fp32_rows) == 3 and all(0 < r["worst rel-L2"] <= 1e-4 for r in fp32_rows), fp32_rows
    fp16_rows = [r for r in rows if r["precision"] == "fp16"]
    assert fp16_rows and all(r["worst rel-L2"] > 1e-5 for r in fp16_rows), "the fp16 error is measured, not assumed"
    table = (out / "bench.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| config"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert sum(line.startswith("| ") for line in table) == 1 + len(rows) + len(floors)
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_refuses_an_unknown_baseline(export_artifact, tmp_path) -> None:
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(export_artifact("vits16", canvas=16)), "--baselines",
                                       "bf16-autocast,jit", "--quick", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: unknown baseline jit: choose from bf16-autocast, compile (or '' for none)"
    assert not (tmp_path / "b").exists(), "refused before the work"


def test_bench_streams(export_artifact, tmp_path) -> None:
    """--streams 3: a throughput row per stateful IR (none for the ONNX artifact), its glimpses/s the streams'
    glimpses (batch x steps) over their time, its ratios from the machine time per step (batch 1 and 2); no speed is
    asserted."""
    from canvit_export.export.openvino import export_openvino

    onnx_artifact = export_artifact("vits16", canvas=16)
    export_openvino(onnx_artifact, tmp_path / "ir", precision="fp32", quiet=True)
    export_openvino(export_artifact("vits16", canvas=16, batch=2), tmp_path / "ir2", precision="fp32", quiet=True)
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(onnx_artifact), str(tmp_path / "ir"),
                                       str(tmp_path / "ir2"), "--runtimes", "openvino", "--quick", "--threads", "2",
                                       "--baselines", "", "--no-peer", "--streams", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["config"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    streamed = {name: row for name, row in rows.items() if "throughput hint" in name}
    eager_of = {"ir [openvino, throughput hint, 3 streams]": f"PyTorch eager ({onnx_artifact.name})",
                "ir2 [openvino, throughput hint, 3 streams]": "PyTorch eager (ir2)"}
    assert sorted(streamed) == sorted(eager_of), list(rows)
    for name, row in streamed.items():
        per_step = 1e3 * row["batch"] / row["glimpses/s"]  # ms of machine time per step of `batch` scenes
        assert set(row) == set(COLUMNS) and row["runtime"] == "openvino" and row["p10 ms"] <= row["median ms"]
        assert abs(row["vs eager"] - rows[eager_of[name]]["median ms"] / per_step) < 1e-9 * row["vs eager"], name
        assert abs(row["GFLOP/s"] - row["GFLOPs/glimpse"] / (per_step / 1e3)) < 1e-6 * row["GFLOP/s"], name
    assert streamed["ir2 [openvino, throughput hint, 3 streams]"]["batch"] == 2
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(onnx_artifact), "--streams", "0", "--quick",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and result.output.strip() == "error: --streams 0: need 1 (no multi-stream rows) or more"


def test_error_metrics_stay_off_blas(monkeypatch) -> None:
    """verdict.compare runs between timed steps (bench and parity): numpy's dot/norm of a canvas-sized array would wake
    OpenBLAS's worker threads, which spin on after it and slowed the next timed step by half on 2 cores. compare must
    not call them, and gives the float64 rel-L2 / max-abs / cosine (checked against math.fsum)."""
    import math

    from canvit_runtime.verdict import compare

    def forbidden(*_args, **_kwargs):
        raise AssertionError("BLAS call between timed steps")

    monkeypatch.setattr(np, "dot", forbidden)
    monkeypatch.setattr(np.linalg, "norm", forbidden)
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 40, 8)).astype(np.float32)
    actual = reference + rng.standard_normal((2, 40, 8)).astype(np.float32) * 0.01
    rel, max_abs, cosine = compare(actual, reference)
    a, r = actual.astype(float).reshape(2, -1), reference.astype(float).reshape(2, -1)
    expected_rel = math.sqrt(math.fsum(((a - r) ** 2).ravel())) / math.sqrt(math.fsum((r ** 2).ravel()))
    expected_cos = min(math.fsum(a[b] * r[b]) / math.sqrt(math.fsum(a[b] ** 2) * math.fsum(r[b] ** 2)) for b in range(2))
    assert math.isclose(rel, expected_rel, rel_tol=1e-12) and math.isclose(cosine, expected_cos, rel_tol=1e-12)
    assert max_abs == float(np.abs(a - r).max())


def test_onnxruntime_sessions_do_not_spin(export_artifact, tmp_path) -> None:
    """ONNX Runtime's intra-op workers spin between runs by default, which slowed the configurations benched after
    them (and an application's other work) on 2 cores: the runner and the peer baseline turn it off; the runner can
    turn it back on."""
    import canvit_runtime
    from canvit_export.reference import PeerRunner, export_peer
    from canvit_export.source import load_from_record

    key = "session.intra_op.allow_spinning"
    artifact = export_artifact("vits16", canvas=8)
    runner = canvit_runtime.open(artifact, runtime="onnxruntime", threads=2)
    assert runner.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = canvit_runtime.open(artifact, runtime="onnxruntime", threads=2, spinning=True)
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    peer = PeerRunner(runner.manifest, export_peer(load_from_record(runner.manifest.model), runner.manifest, tmp_path))
    assert peer.session.get_session_options().get_session_config_entry(key) == "0"


def test_step_matmuls_are_the_papers_flops(export_artifact, tmp_path) -> None:
    """bench.step_matmuls reads every matrix product off the exported graph; their FLOPs are canvit-pytorch's analytic
    count (canvit_pytorch.flops, paper App. G: patch embedding, VPE, blocks, Canvas Attention Reads and Writes), plus
    the readouts' (the segmentation probe's 1x1 convolution, the classifier) when the step computes them. The floor
    model holds the same products, its rows padded when asked. A bf16 IR (OpenVINO fused attention into
    ScaledDotProductAttention, the matmuls' rows padded to 72) has the same products, its FLOPs those of 72 rows."""
    from canvit_pytorch import CanViTConfig
    from canvit_pytorch.flops import glimpse_flops, linear_flops, segmentation_probe_flops

    from canvit_export.bench import floor_model, step_matmuls
    from canvit_runtime.manifest import load_manifest

    plain = load_manifest(export_artifact("vits16", canvas=16))
    readouts = load_manifest(export_artifact("vits16", canvas=16, readout="segmentation,classification"))
    arch = plain.architecture
    config = CanViTConfig(backbone_name="vits16", canvas_num_heads=arch.canvas_num_heads,
                          canvas_head_dim=arch.canvas_head_dim, num_canvas_registers=arch.num_canvas_registers,
                          num_backbone_registers=arch.num_backbone_registers, enable_vpe=arch.enable_vpe,
                          canvas_projections=arch.canvas_projections)  # type: ignore[arg-type]
    analytic = glimpse_flops(config, glimpse_size_px=plain.glimpse_px, canvas_grid_size=16)
    matmuls = step_matmuls(plain)
    assert sum(mm.flops for mm in matmuls) == analytic
    assert sum(not mm.weights for mm in matmuls) == 2 * (arch.num_blocks + len(arch.read_after_blocks)
                                                          + len(arch.write_after_blocks)), "attention's two products"
    segmentation = next(r for r in readouts.readouts if r.name == "segmentation")
    classification = next(r for r in readouts.readouts if r.name == "classification")
    heads = segmentation_probe_flops(grid_size=16, embed_dim=arch.canvas_dim, num_classes=len(segmentation.class_names))
    heads += linear_flops(num_tokens=1, in_dim=arch.backbone_dim, out_dim=len(classification.class_names))
    assert sum(mm.flops for mm in step_matmuls(readouts)) == analytic + heads
    from canvit_export.export.openvino import export_openvino

    bf16 = export_openvino(export_artifact("vits16", canvas=16, precision="bf16"), tmp_path / "ir", quiet=True)
    fused = step_matmuls(bf16)
    def k_by_n(products: list) -> list:  # each weight matrix as K x N, whichever way the graph stores it
        return sorted(mm.b[::-1] if mm.transpose_b else mm.b for mm in products if mm.weights)

    assert k_by_n(fused) == k_by_n(matmuls)
    assert sum(not mm.weights for mm in fused) == sum(not mm.weights for mm in matmuls)
    assert analytic < sum(mm.flops for mm in fused) <= analytic * 72 / 71
    for multiple in (1, 8):
        model, feeds = floor_model(matmuls, "f32", multiple)
        products = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
        assert len(products) == len(matmuls) and len(feeds) == len(model.get_parameters())
        rows = {list(op.input(0).get_shape())[-2] for op in products}
        assert (rows == {mm.a[-2] for mm in matmuls}) if multiple == 1 else all(r % 8 == 0 for r in rows), rows


def test_glimpse_gflops_is_canvit_pytorchs_count(export_artifact, vits16) -> None:
    """bench.glimpse_gflops against canvit_pytorch.flops.glimpse_flops on the model's own config, and on a manifest
    whose canvas has 4 heads instead of the default 8 (a field dropped on the way would give the default's count)."""
    import dataclasses

    from canvit_pytorch.flops import glimpse_flops

    from canvit_export.bench import glimpse_gflops
    from canvit_runtime.manifest import load_manifest

    manifest = load_manifest(export_artifact("vits16", canvas=16))
    config = vits16.canvit.config
    assert glimpse_gflops(manifest) * 1e9 == glimpse_flops(config, glimpse_size_px=128, canvas_grid_size=16)
    arch = manifest.architecture.model_copy(update={"canvas_num_heads": 4, "canvas_dim": 4 * config.canvas_head_dim})
    narrower = manifest.model_copy(update={"architecture": arch})
    expected = glimpse_flops(dataclasses.replace(config, canvas_num_heads=4), glimpse_size_px=128, canvas_grid_size=16)
    assert expected != glimpse_flops(config, glimpse_size_px=128, canvas_grid_size=16)
    assert glimpse_gflops(narrower) * 1e9 == expected
