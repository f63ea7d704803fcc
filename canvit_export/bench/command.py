"""`canvit-export bench`: the configurations timed, the floors, the streams and the memory, then the report written."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

from canvit_export.bench.chart import chart
from canvit_export.bench.configs import artifact_groups, build_candidates, check_choices, machine_facts
from canvit_export.bench.floor import floor_rows, measured_bandwidth
from canvit_export.bench.report import BenchReport, BenchRow, candidate_rows
from canvit_export.bench.streams import stream_rows
from canvit_export.bench.timing import ROLLOUT, peak_rss_mb, run_bench
from canvit_export.errors import ExportError
from canvit_export.parity import default_image
from canvit_export.progress import console
from canvit_runtime.paths import report_folder, write_output


def bench_command(*, artifacts: list[Path], runtimes: list[str], threads: int | None, iters: int, warmup: int,
                  out: Path, peer: bool, image: Path | None, baselines: tuple[str, ...] = (),
                  streams: int = 1, groups_in_turn: bool = False) -> BenchReport:
    """Run the benchmark and write out/bench.json, out/bench.md and out/bench.png; return the report.
    `baselines`: PyTorch baselines besides eager fp32 (configs.BASELINES); `streams` > 1 adds the multi-stream
    throughput rows of stateful IRs on OpenVINO (streams.stream_rows); `groups_in_turn`: time one group (weights +
    geometry) at a time, its configurations interleaved, and release it before the next (a canvas series of CanViT-B
    then holds one group in memory, not all; ratios within a group stay interleaved, across groups they are not).
    Raises ExportError for bad options or an --out that cannot be created, before any work."""
    if iters < 1 or warmup < 0:
        raise ExportError(f"--iters {iters} / --warmup {warmup}: need iters >= 1 and warmup >= 0")
    if streams < 1:
        raise ExportError(f"--streams {streams}: need 1 (no multi-stream rows) or more")
    check_choices(runtimes, baselines)
    try:  # before the work: a benchmark is not lost to a bad --out
        report_folder(out, inputs=artifacts, option="--out")
    except OSError as error:
        raise ExportError(f"--out {out}: cannot create it ({error.strerror}); choose another --out") from error
    parts = artifact_groups(artifacts) if groups_in_turn else [artifacts]
    photo = default_image() if image is None else image
    rows: list[BenchRow] = []
    floors: list[BenchRow] = []
    streamed: list[BenchRow] = []
    for number, part in enumerate(parts, 1):
        if len(parts) > 1:
            console.print(f"group {number}/{len(parts)}: {', '.join(p.name for p in part)}")
        part_rows, part_floors, part_streams = _bench_part(part, runtimes, threads, iters, warmup, peer, photo,
                                                           baselines, streams)
        rows += part_rows
        floors += part_floors
        streamed += part_streams
        gc.collect()  # the part's runners (models, sessions, compiled IRs) go before the next part's load
    if streams > 1 and not streamed:
        console.print(f"[yellow]note[/yellow]: --streams {streams} measures stateful OpenVINO IRs on openvino, and "
                      f"none of --artifacts is one")
    report = BenchReport(machine=machine_facts(threads, measured_bandwidth(floors)), iters=iters, warmup=warmup,
                         image=str(image or "skimage.data.astronaut()"),
                         policy=f"c2f ({ROLLOUT} glimpses, reset after each {ROLLOUT})",
                         rows=rows + streamed)
    write_output(out / "bench.json", json.dumps(report.to_json(), indent=1) + "\n")  # out: made by report_folder
    write_output(out / "bench.md", report.markdown())
    chart(report.rows, out / "bench.png")
    return report


def _bench_part(artifacts: list[Path], runtimes: list[str], threads: int | None, iters: int, warmup: int, peer: bool,
                photo: object, baselines: tuple[str, ...], streams: int) -> tuple[list[BenchRow], list[BenchRow],
                                                                               list[BenchRow]]:
    """Time `artifacts`' configurations interleaved (run_bench), then their floors, streams and peak memory: (the
    configurations' rows followed by the floors, the floors, the multi-stream rows)."""
    with tempfile.TemporaryDirectory(prefix="canvit-bench-") as tmp:
        candidates = build_candidates(artifacts, runtimes, threads, Path(tmp), peer, baselines)
        run_bench(candidates, photo, iters=iters, warmup=warmup)
        floors = floor_rows(candidates, threads)
        streamed: list[BenchRow] = []
        if streams > 1:
            streamed = stream_rows(candidates, streams, photo, iters=iters, warmup=warmup, threads=threads,
                                   floors=floors)
        with console.status("measuring peak resident memory, one child process per configuration"):
            rss = {c.name: peak_rss_mb(c.child) for c in candidates}
        return candidate_rows(candidates, rss, floors), floors, streamed
