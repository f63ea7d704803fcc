"""canvit-export bench --quick: the table, JSON and chart are produced with every column; no timing is asserted."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from canvit_export.bench.report import COLUMNS
from canvit_export.cli import main


def test_bench_quick(export_artifact, tmp_path) -> None:
    fp32 = export_artifact("vits16", canvas=16)
    fp16 = export_artifact("vits16", canvas=16, precision="fp16")
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--artifacts", str(fp32), str(fp16), "--runtimes",
                                       "onnxruntime,openvino,tensorrt", "--quick", "--threads", "2", "--baselines",
                                       "bf16-autocast,compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: no configuration on tensorrt (tensorrt runs a TensorRT engine artifact, and none" in result.output
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
    for floor in floors:  # the step's own matmuls timed alone in this run (floor_row's rule: test_floor_row)
        assert floor["matmuls ms"] in (floor["rows as in the graph ms"], floor["rows padded to 8 ms"]), floor
        assert floor["median ms"] == floor["matmuls ms"] + floor["canvas traffic ms"] and floor["canvas MB moved"] == \
            9 * 1.114112, floor  # 3 Reads + 2 x 3 Writes of a [1, 272, 1024] float32 canvas
        assert report["machine"]["bandwidth"] == [{"array MB": 1.114112, "GB/s": floor["bandwidth GB/s"]}]
        assert "the step's 98 matmuls alone (62 of weights" in floor["config"], floor["config"]
        assert floor["config"].startswith(f"floor ({fp32.name}): "), "named by the group's first artifact"
    assert names[0].startswith("PyTorch eager (") and names[3].startswith("canvit-pytorch live export")
    autocast, compiled = rows[1], rows[2]
    assert names[1].startswith("PyTorch eager, bf16 autocast") and autocast["precision"] == "bf16-autocast"
    assert 1e-4 < autocast["worst rel-L2"] < 2e-2, autocast  # bfloat16 matmuls: measured, not assumed
    assert names[2].startswith("torch.compile (inductor)") and compiled["runtime"] == "torch.compile"
    assert compiled["precision"] == "fp32" and compiled["worst rel-L2"] <= 1e-4, compiled
    for row in rows:
        assert set(row) == {*COLUMNS, "target", "backbone"} and row["backbone"] == "vits16", row  # the chart's keys
        assert row["target"] == "onnx", row  # both artifacts are ONNX graphs; eager rows name their group's
        assert row["median ms"] > 0 and row["glimpses/s"] > 0 and row["GFLOPs/glimpse"] > 1
        assert row["peak RSS MB"] is not None and row["peak RSS MB"] > 50, row
        assert 0 <= row["worst rel-L2"] < 2e-2 and row["worst cosine"] > 0.999, row
    assert rows[0]["vs eager"] == 1.0 and all(r["x floor"] is not None for r in rows), "each row has its floor"
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
    """--streams 3: a throughput row per stateful IR (none for the ONNX artifact), of batch 1 and 2, each held to its
    own group's eager reference; no speed is asserted."""
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
    for name, row in streamed.items():  # the ratios' arithmetic: test_latency_row_from_known_timings
        assert set(row) == {*COLUMNS, "target", "backbone"} and row["target"] == "openvino", row
        assert row["runtime"] == "openvino" and row["p10 ms"] <= row["median ms"]
        assert row["vs eager"] > 0 and rows[eager_of[name]]["vs eager"] == 1.0, name
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


def test_step_matmuls_are_the_papers_flops(export_artifact, vits16, tmp_path) -> None:
    """bench.step_matmuls reads every matrix product off the exported graph; their FLOPs are canvit-pytorch's analytic
    count (canvit_pytorch.flops, paper App. G: patch embedding, VPE, blocks, Canvas Attention Reads and Writes), plus
    the readouts' (the segmentation probe's 1x1 convolution, the classifier) when the step computes them. The floor
    model holds the same products, its rows padded when asked. A bf16 IR (OpenVINO fused attention into
    ScaledDotProductAttention, the matmuls' rows padded to 72) has the same products, its FLOPs those of 72 rows."""
    from canvit_pytorch.flops import glimpse_flops, linear_flops, segmentation_probe_flops

    from canvit_export.bench.floor import floor_model
    from canvit_export.bench.flops import step_matmuls
    from canvit_runtime.manifest import load_manifest

    plain = load_manifest(export_artifact("vits16", canvas=16))
    readouts = load_manifest(export_artifact("vits16", canvas=16, readout="segmentation,classification"))
    arch = plain.architecture
    analytic = glimpse_flops(vits16.canvit.config, glimpse_size_px=plain.glimpse_px, canvas_grid_size=16)
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

    from canvit_export.bench.flops import glimpse_gflops
    from canvit_runtime.manifest import load_manifest

    manifest = load_manifest(export_artifact("vits16", canvas=16))
    config = vits16.canvit.config
    assert glimpse_gflops(manifest) * 1e9 == glimpse_flops(config, glimpse_size_px=128, canvas_grid_size=16)
    arch = manifest.architecture.model_copy(update={"canvas_num_heads": 4, "canvas_dim": 4 * config.canvas_head_dim})
    narrower = manifest.model_copy(update={"architecture": arch})
    expected = glimpse_flops(dataclasses.replace(config, canvas_num_heads=4), glimpse_size_px=128, canvas_grid_size=16)
    assert expected != glimpse_flops(config, glimpse_size_px=128, canvas_grid_size=16)
    assert glimpse_gflops(narrower) * 1e9 == expected


def test_latency_row_from_known_timings() -> None:
    """Known step times through the report: the figures below are computed by hand, not by the code under test.
    times 10..50 ms: median 30, p10 = 10 + 0.4 x 10 = 14, p90 = 40 + 0.6 x 10 = 46 (numpy's linear percentiles);
    30 ms per step of 2 scenes: 66.7 glimpses/s; eager 60 ms: 2.00x; floor 15 ms: 2.00x; its matmuls 12 ms: 2.50x;
    4.5 GFLOPs: 150 GFLOP/s."""
    from canvit_export.bench.configs import Machine
    from canvit_export.bench.report import BenchReport, latency_row

    row = latency_row(config="c [onnxruntime]", runtime="onnxruntime", precision="fp16", canvas=16, batch=2,
                      size_mb=56.78, gflops=4.5, times_ms=[50.0, 10.0, 40.0, 20.0, 30.0], per_step_ms=30.0,
                      eager_ms=60.0, floor_ms=15.0, rss=123.4, rel_l2=1.23e-3, cosine=0.9998761,
                      matmul_floor_ms=12.0)
    assert (row.median_ms, row.p10_ms, row.p90_ms) == (30.0, 14.0, 46.0) and row.x_matmul_floor == 2.5
    assert abs(row.glimpses_per_s - 66.6666666667) < 1e-9 and row.vs_eager == 2.0 and row.x_floor == 2.0
    assert abs(row.gflop_per_s - 150.0) < 1e-9
    unmeasured = latency_row(config="u", runtime="openvino", precision="fp32", canvas=16, batch=1, size_mb=1.0,
                             gflops=1.0, times_ms=[4.0], per_step_ms=4.0, eager_ms=8.0, floor_ms=None, rss=None,
                             rel_l2=None, cosine=None)
    machine = Machine(cpu="Test CPU", cores=2, threads=None, platform="p", versions={}, features=["amx_bf16"],
                      bandwidth=[{"array MB": 1.11, "GB/s": 19.64}])
    report = BenchReport(machine=machine, iters=5, warmup=1, image="i", policy="p", rows=[row, unmeasured])
    lines = report.markdown().splitlines()
    assert lines[0] == ("Machine: Test CPU, 2 cores, threads default, features amx_bf16, triad bandwidth 19.6 GB/s at "
                        "1.11 MB; median of 5 glimpses per configuration, interleaved.")
    assert lines[4] == ("| c [onnxruntime] | onnxruntime | fp16 | 16 | 2 | 30.0 | 14.0 | 46.0 | 66.7 | 2.00x | 2.00x | "
                        "2.50x | 123.4 | 56.8 | 1.2e-03 | 0.999876 | 4.5 | 150.0 |")
    assert lines[5] == ("| u | openvino | fp32 | 16 | 1 | 4.0 | 4.0 | 4.0 | 250.0 | 2.00x | n/a | n/a | n/a | 1.0 | n/a | "
                        "n/a | 1.0 | 250.0 |")
    written = report.to_json()
    assert written["columns"] == list(COLUMNS) and written["machine"]["cpu"] == "Test CPU"
    assert written["machine"]["features"] == ["amx_bf16"] and written["machine"]["bandwidth"][0]["GB/s"] == 19.64
    assert written["rows"][1] == {"config": "u", "runtime": "openvino", "precision": "fp32", "canvas": 16, "batch": 1,
                                  "median ms": 4.0, "p10 ms": 4.0, "p90 ms": 4.0, "glimpses/s": 250.0,
                                  "vs eager": 2.0, "x floor": None, "x matmul floor": None, "peak RSS MB": None,
                                  "size MB": 1.0,
                                  "worst rel-L2": None, "worst cosine": None, "GFLOPs/glimpse": 1.0,
                                  "GFLOP/s": 250.0}


def test_floor_row_takes_the_faster_rows() -> None:
    """A floor timed at 12 ms with its rows as in the graph and 9 ms padded to 8 counts 9 ms of matmuls, named "rows
    padded to 8"; its canvas traffic, 10 passes over a 2 MB canvas (3 Reads + 2 x 3 Writes + 1 readout) = 20 MB at
    20 GB/s, adds 1 ms: a 10 ms floor (batch 1: 100 glimpses/s; 4.5 GFLOPs: 450 GFLOP/s; 10 / 9 = 1.11x its
    matmuls); at 8 ms unpadded, an 8 + 1 = 9 ms row without that note."""
    from canvit_export.bench.report import floor_row
    from canvit_export.bench.traffic import CanvasTraffic

    traffic = CanvasTraffic(canvas_bytes=2_000_000, reads=3, writes=3, readouts=1)
    padded = floor_row(artifact_name="a", group="g", canvas=16, batch=1, precision="bf16", products=98, weights=62,
                       gflops=4.5, timed={1: 12.0, 8: 9.0}, traffic=traffic, bandwidth=20e9)
    assert padded.median_ms == padded.p10_ms == padded.p90_ms == 10.0 and padded.x_floor == 1.0
    assert (padded.matmuls_ms, padded.canvas_ms, padded.canvas_mb_moved) == (9.0, 1.0, 20.0)
    assert abs(padded.x_matmul_floor - 10 / 9) < 1e-12 and (padded.bandwidth_gbs, padded.bandwidth_array_mb) == (20, 2)
    assert abs(padded.glimpses_per_s - 100.0) < 1e-9 and abs(padded.gflop_per_s - 450.0) < 1e-9
    assert padded.config == ("floor (a): the step's 98 matmuls alone (62 of weights, 4.5 GFLOPs), bf16 on OpenVINO, "
                             "rows padded to 8, + canvas traffic (3 Reads, 3 Writes, 1 readout over a 2.00 MB canvas: "
                             "20.0 MB at 20.0 GB/s)")
    json_row = padded.to_json()
    assert (json_row["rows as in the graph ms"], json_row["rows padded to 8 ms"]) == (12.0, 9.0)
    assert (json_row["matmuls ms"], json_row["canvas traffic ms"], json_row["bandwidth GB/s"]) == (9.0, 1.0, 20.0)
    assert "group" not in json_row and json_row["chart label"] == "floor bf16: the step's matmuls + canvas traffic (a)"
    plain = floor_row(artifact_name="a", group="g", canvas=16, batch=1, precision="fp32", products=98, weights=62,
                      gflops=4.5, timed={1: 8.0, 8: 9.0}, traffic=traffic, bandwidth=20e9)
    assert plain.median_ms == 9.0 and plain.matmuls_ms == 8.0 and "OpenVINO, + canvas traffic" in plain.config


def test_canvas_traffic_of_a_vits_artifact(export_artifact) -> None:
    """ViT-S/16 canvas 16 with a segmentation readout: canvas [1, 16 registers + 16 x 16, 1024] float32 = 1,114,112
    bytes; CanViT's Reads after blocks 1, 5, 9 and Writes after 3, 7, 11 (canvit-pytorch's config) and the
    probe: 3 + 2 x 3 + 1 = 10 passes. Classification reads the recurrent CLS, not the canvas: no pass."""
    from canvit_export.bench.traffic import canvas_traffic
    from canvit_runtime.manifest import load_manifest

    manifest = load_manifest(export_artifact("vits16", canvas=16, readout="segmentation,classification"))
    traffic = canvas_traffic(manifest)
    assert (traffic.canvas_bytes, traffic.reads, traffic.writes, traffic.readouts) == (1_114_112, 3, 3, 1)
    assert traffic.bytes_moved == 11_141_120
    plain = canvas_traffic(manifest.model_copy(update={"readouts": []}))
    assert plain.readouts == 0 and plain.bytes_moved == 9 * 1_114_112


def test_triad_bandwidth_and_cpu_features() -> None:
    """The triad measures a plausible bandwidth (a CPU moves between 0.1 GB/s and 10 TB/s); the features are picked
    from a cpuinfo flags line in CPU_FEATURES order."""
    from canvit_export.bench.configs import cpu_features
    from canvit_export.bench.traffic import triad_bandwidth

    assert 1e8 < triad_bandwidth(1_114_112, 2) < 1e13
    flags = "flags\t\t: fpu sse avx512_vnni amx_tile avx512f amx_bf16 avx2"
    assert cpu_features(flags) == ["amx_tile", "amx_bf16", "avx512f", "avx512_vnni"]
    assert cpu_features("flags : fpu sse2") == []


def test_timed_row_holds_a_row_to_its_groups_eager_and_floor(export_artifact, vits16) -> None:
    """timed_row picks the eager median of the row's own group and the floor of its precision (fp16: the bf16 floor)
    in that group, among decoys of another group and precision; its GFLOPs are canvit-pytorch's count."""
    from canvit_pytorch.flops import glimpse_flops

    from canvit_export.bench.configs import Candidate
    from canvit_export.bench.report import floor_row, timed_row
    from canvit_export.bench.traffic import CanvasTraffic
    from canvit_runtime.manifest import load_manifest

    manifest = load_manifest(export_artifact("vits16", canvas=16))

    def candidate(group: str, precision: str, times: list[float], reference: bool = False) -> Candidate:
        return Candidate("c", "onnxruntime", precision, group, manifest, None, 2_000_000, [],  # type: ignore[arg-type]
                         times_ms=times, reference=reference)

    row = candidate("a", "fp16", [10.0, 20.0, 30.0, 40.0, 50.0])
    candidates = [candidate("b", "fp32", [300.0], True), candidate("a", "fp32", [60.0, 60.0, 61.0], True), row]
    floor = lambda group, precision, ms: floor_row(artifact_name="x", group=group, canvas=16, batch=1,
                                                   precision=precision, products=1, weights=1, gflops=1.0,
                                                   timed={1: ms, 8: ms}, traffic=traffic, bandwidth=1e12)
    traffic = CanvasTraffic(canvas_bytes=1_000_000, reads=1, writes=1, readouts=0)  # 3 MB at 1 TB/s: 0.003 ms
    floors = [floor("b", "bf16", 1.0), floor("a", "fp32", 5.0), floor("a", "bf16", 14.997)]
    result = timed_row(candidates, floors, row, "name", row.times_ms, 30.0, rss=None, rel_l2=None, cosine=None)
    assert abs(result.x_floor - 2.0) < 1e-12 and abs(result.x_matmul_floor - 30 / 14.997) < 1e-12
    assert (result.vs_eager, result.size_mb) == (2.0, 2.0)
    flops = glimpse_flops(vits16.canvit.config, glimpse_size_px=128, canvas_grid_size=16)
    assert result.gflops_per_glimpse == flops / 1e9 and abs(result.gflop_per_s - flops / 1e9 / 0.030) < 1e-9


def test_chart_colours_by_precision_and_draws_throughput(tmp_path) -> None:
    """Each precision family has its fixed colour (variants by their leading word); bench.png has a latency panel and a
    throughput panel, and a third (latency vs canvas) when the run has two canvas grids."""
    from PIL import Image

    from canvit_export.bench.chart import chart, precision_colour
    from canvit_export.bench.report import latency_row

    assert [precision_colour(p) for p in ("fp32", "fp32-int8w", "fp16-all", "bf16-autocast", "int8", "mixed")] == \
        ["tab:blue", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:gray"]
    rows = [latency_row(config=f"c{canvas} {precision} x{streams}", runtime="openvino", precision=precision,
                        canvas=canvas, batch=1, size_mb=1.0, gflops=4.0, times_ms=[ms * streams], per_step_ms=ms,
                        eager_ms=100.0, floor_ms=None, rss=None, rel_l2=None, cosine=None)
            for canvas in (16, 32) for precision, ms in (("fp32", 80.0), ("bf16", 40.0), ("int8", 30.0))
            for streams in (1, 3)]
    chart(rows[:6], tmp_path / "one.png")
    chart(rows, tmp_path / "two.png")
    one, two = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert one.width > 1.3 * one.height and two.width > one.width, (one.size, two.size)  # side panels, then a third


def test_canvas_curves_tell_an_ir_from_an_onnx_graph_and_set_the_paper_beside_canvit_b() -> None:
    """Latency vs canvas: an IR and an ONNX graph on OpenVINO are two lines (one line would zig-zag between them),
    the floor is its own line, and the paper's Table 19 CPU scaling is drawn beside a CanViT-B run only."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from canvit_export.bench.chart import _curves
    from canvit_export.bench.report import latency_row

    def row(canvas: int, target: str, ms: float, backbone: str, runtime: str = "openvino") -> object:
        made = latency_row(config=f"c{canvas}-{target}", runtime=runtime, precision="fp32", canvas=canvas, batch=1,
                           size_mb=1.0, gflops=1.0, times_ms=[ms], per_step_ms=ms, eager_ms=None, floor_ms=None,
                           rss=None, rel_l2=None, cosine=None)
        return dataclasses.replace(made, target=target, backbone=backbone)

    for backbone, paper in (("vitb16", True), ("vits16", False)):
        rows = [row(c, t, ms, backbone) for c in (32, 64) for t, ms in (("openvino", 80.0 * c), ("onnx", 90.0 * c))]
        rows.append(row(32, "onnx", 10.0, backbone, runtime="floor"))
        fig, axis = plt.subplots()
        labels = _curves(axis, rows)  # type: ignore[arg-type]
        plt.close(fig)
        assert "openvino IR fp32 b1" in labels and "openvino (ONNX) fp32 b1" in labels, labels
        assert "floor fp32 (matmuls + canvas traffic)" in labels, labels
        drawn = [label for label in labels if label.startswith("paper Table 19")]
        assert drawn == (["paper Table 19: eager, 1 thread (its CPU)", "paper Table 19: eager, 4 threads (its CPU)"]
                         if paper else []), labels


def test_artifact_groups_split_a_series_by_geometry(export_artifact) -> None:
    """--groups-in-turn times each group alone: artifacts of one geometry and weights share a group (in first-seen
    order), another canvas size is another group."""
    from canvit_export.bench.configs import artifact_groups

    c16, c8, c16_seg = (export_artifact("vits16", canvas=16), export_artifact("vits16", canvas=8),
                        export_artifact("vits16", canvas=16, readout="segmentation"))
    assert artifact_groups([c16, c8, c16_seg]) == [[c16, c16_seg], [c8]]
