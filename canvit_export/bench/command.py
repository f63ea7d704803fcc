"""`canvit-export bench`: the configurations timed, the floors, the streams and the memory, then the report written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from canvit_export.bench.chart import chart
from canvit_export.bench.configs import build_candidates, check_choices, machine_facts
from canvit_export.bench.floor import floor_rows
from canvit_export.bench.report import BenchReport, BenchRow, candidate_rows
from canvit_export.bench.streams import stream_rows
from canvit_export.bench.timing import ROLLOUT, peak_rss_mb, run_bench
from canvit_export.errors import ExportError
from canvit_export.parity import default_image
from canvit_export.progress import console
from canvit_runtime.paths import report_folder, write_output


def bench_command(*, artifacts: list[Path], runtimes: list[str], threads: int | None, iters: int, warmup: int,
                  out: Path, peer: bool, image: Path | None, baselines: tuple[str, ...] = (),
                  streams: int = 1) -> BenchReport:
    """Run the benchmark and write out/bench.json, out/bench.md and out/bench.png; return the report.
    `baselines`: PyTorch baselines besides eager fp32 (configs.BASELINES); `streams` > 1 adds the multi-stream
    throughput rows of stateful IRs on OpenVINO (streams.stream_rows). Raises ExportError for bad options or an --out
    that cannot be created, before any work."""
    if iters < 1 or warmup < 0:
        raise ExportError(f"--iters {iters} / --warmup {warmup}: need iters >= 1 and warmup >= 0")
    if streams < 1:
        raise ExportError(f"--streams {streams}: need 1 (no multi-stream rows) or more")
    check_choices(runtimes, baselines)
    try:  # before the work: a benchmark is not lost to a bad --out
        report_folder(out, inputs=artifacts, option="--out")
    except OSError as error:
        raise ExportError(f"--out {out}: cannot create it ({error.strerror}); choose another --out") from error
    with tempfile.TemporaryDirectory(prefix="canvit-bench-") as tmp:
        candidates = build_candidates(artifacts, runtimes, threads, Path(tmp), peer, baselines)
        photo = default_image() if image is None else image
        run_bench(candidates, photo, iters=iters, warmup=warmup)
        floors = floor_rows(candidates, threads)
        streamed: list[BenchRow] = []
        if streams > 1:
            streamed = stream_rows(candidates, streams, photo, iters=iters, warmup=warmup, threads=threads,
                                   floors=floors)
            if not streamed:
                console.print(f"[yellow]note[/yellow]: --streams {streams} measures stateful OpenVINO IRs on "
                              f"openvino, and none of --artifacts is one")
        with console.status("measuring peak resident memory, one child process per configuration"):
            rss = {c.name: peak_rss_mb(c.child) for c in candidates}
    report = BenchReport(machine=machine_facts(threads), iters=iters, warmup=warmup,
                         image=str(image or "skimage.data.astronaut()"),
                         policy=f"c2f ({ROLLOUT} glimpses, reset after each {ROLLOUT})",
                         rows=candidate_rows(candidates, rss, floors) + streamed)
    write_output(out / "bench.json", json.dumps(report.to_json(), indent=1) + "\n")  # out: made by report_folder
    write_output(out / "bench.md", report.markdown())
    chart(report.rows, out / "bench.png")
    return report
