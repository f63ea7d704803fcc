#!/usr/bin/env python
"""Load and restart test of a Triton Python-backend repository on nvidia-pytriton's tritonserver (CPU, loopback).

    python scripts/serve_bench.py --artifact DIR [--streams 1,4,8] [--glimpses 21] [--out reports/serve-bench]

Writes the Python-backend repository of the artifact (canvit-export triton --backends python), starts the server on
free loopback ports, then for each stream count N runs N concurrent sequences of G glimpses (scene sent with the
first glimpse only, viewpoints coarse-to-fine-like and random), and reports glimpses/s (all streams' glimpses over
the wall time), per-request latency p50/p99 (ms) and errors. Then the restart test: a sequence is cut by SIGKILL of
the server after 3 glimpses; the client's next request fails (what it is told is recorded); the server is restarted
on the same ports; continuing the sequence is refused (START required); the sequence started again runs to the end
and its canvas is compared with a single-stream canvit_runtime rollout. Bounded: --max-seconds for the whole run.
Results: <out>/serve-bench.json and serve-bench.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from local_triton import LocalTriton, default_python_env, glimpse_inputs  # scripts/local_triton.py, beside this script

from canvit_runtime.policies import full_then_random


def run_streams(url: str, model: str, streams: int, glimpses: int, scene_shape: list[int], first_id: int,
                deadline: float) -> dict:
    """N concurrent sequences x G glimpses; per-request latencies (s), errors, wall time."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(stream: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        scene = np.random.default_rng(stream).standard_normal(scene_shape).astype(np.float32)
        for g, view in enumerate(full_then_random(batch=1, glimpses=glimpses, seed=stream)):
            if time.monotonic() > deadline:
                with lock:
                    errors.append("time budget spent")
                return
            start = time.perf_counter()
            try:
                client.infer(model, glimpse_inputs(scene if g == 0 else None, view.centers, view.scales),
                             sequence_id=first_id + stream,
                             sequence_start=g == 0, sequence_end=g == glimpses - 1, outputs=[
                                 grpcclient.InferRequestedOutput("recurrent_cls_next")])
            except Exception as error:  # counted, reported
                with lock:
                    errors.append(str(error).splitlines()[0])
                return
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"streams": streams, "glimpses_per_stream": glimpses, "requests": len(latencies), "wall_s": round(wall, 3),
            "glimpses_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1)
            if len(ms) else None, "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "errors": len(errors), "error_messages": sorted(set(errors))[:5]}


def restart_test(triton, model: str, artifact: Path, scene_shape: list[int], glimpses: int) -> dict:
    """Kill the server mid-sequence, restart it, start the sequence again; what the client saw at each step."""
    import tritonclient.grpc as grpcclient

    import canvit_runtime

    scene = np.random.default_rng(99).standard_normal(scene_shape).astype(np.float32)
    plan = full_then_random(batch=1, glimpses=glimpses, seed=99)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    sid = 9000
    for g in range(3):
        client.infer(model, glimpse_inputs(scene if g == 0 else None, plan[g].centers, plan[g].scales), sequence_id=sid,
                     sequence_start=g == 0)
    triton.kill()
    record: dict = {"killed_after_glimpses": 3}
    try:
        client.infer(model, glimpse_inputs(None, plan[3].centers, plan[3].scales), sequence_id=sid)
        record["while_down"] = "no error (unexpected)"
    except Exception as error:
        record["while_down"] = str(error).splitlines()[0]
    start = time.perf_counter()
    triton.start()
    record["restart_s"] = round(time.perf_counter() - start, 2)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        client.infer(model, glimpse_inputs(None, plan[3].centers, plan[3].scales), sequence_id=sid)
        record["continue_after_restart"] = "accepted (unexpected: the state was lost)"
    except Exception as error:
        record["continue_after_restart"] = str(error).splitlines()[0]
    for g, view in enumerate(plan):
        response = client.infer(model, glimpse_inputs(scene if g == 0 else None, view.centers, view.scales), sequence_id=sid,
                                sequence_start=g == 0, sequence_end=g == glimpses - 1)
    reference = canvit_runtime.open(artifact)
    for view in plan:
        result = reference.step(scene, view.centers, view.scales)
    served = response.as_numpy("canvas_next")
    record["restarted_sequence_glimpses"] = glimpses
    record["restarted_canvas_max_abs_vs_single_stream"] = float(np.abs(served - result.canvas).max())
    record["restarted_canvas_rel_l2"] = float(np.linalg.norm(served - result.canvas) / np.linalg.norm(result.canvas))
    return record


def markdown(report: dict) -> str:
    lines = [f"Triton {report['server']} Python backend ({report['runtime']}, {report['threads']} threads), "
             f"{report['artifact']}, CPU: {report['cpu']}", "",
             "| streams | glimpses/s | p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['streams']} | {row['glimpses_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['errors']} |")
    r = report.get("restart")
    if r:
        lines += ["", f"Restart: killed after {r['killed_after_glimpses']} glimpses; the client was told: "
                      f"`{r['while_down']}`; restarted in {r['restart_s']} s; continuing without START: "
                      f"`{r['continue_after_restart']}`; started again: {r['restarted_sequence_glimpses']} glimpses, "
                      f"canvas max-abs {r['restarted_canvas_max_abs_vs_single_stream']:.2e} vs single stream."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="ONNX (or OpenVINO IR) artifact folder")
    parser.add_argument("--streams", default="1,4,8", help="comma-separated concurrent stream counts")
    parser.add_argument("--glimpses", type=int, default=21, help="glimpses per stream")
    parser.add_argument("--threads", type=int, default=None, help="the Python model's runtime threads")
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--max-seconds", type=float, default=900, help="time budget of the whole run")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart test")
    parser.add_argument("--out", type=Path, default=Path("reports/serve-bench"))
    args = parser.parse_args(argv)

    from canvit_export.triton import ServeOptions, write_repository
    from canvit_runtime.manifest import load_manifest

    deadline = time.monotonic() + args.max_seconds
    counts = [int(s) for s in args.streams.split(",") if s.strip()]
    manifest = load_manifest(args.artifact)
    scene_shape = manifest.input("scene").shape
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        repo = Path(tmp) / "repo"
        models = write_repository([args.artifact], repo, backends=["python"], options=ServeOptions(
            idle_us=30_000_000, max_sequences=max(counts), runtime=args.runtime, threads=args.threads))
        model = models[0].name
        triton = LocalTriton(repo, default_python_env(), workdir=Path(tmp) / "server")
        print(f"starting tritonserver on {triton.grpc_url} ...", file=sys.stderr, flush=True)
        triton.start()
        try:
            run_streams(triton.grpc_url, model, 1, 2, scene_shape, 1, deadline)  # warm-up
            rows = []
            for i, n in enumerate(counts):
                print(f"[{i + 1}/{len(counts)}] {n} streams x {args.glimpses} glimpses ...", file=sys.stderr, flush=True)
                rows.append(run_streams(triton.grpc_url, model, n, args.glimpses, scene_shape, 1000 * (i + 1), deadline))
                print(f"    {rows[-1]['glimpses_per_s']} glimpses/s, p50 {rows[-1]['p50_ms']} ms, p99 "
                      f"{rows[-1]['p99_ms']} ms, errors {rows[-1]['errors']}", file=sys.stderr, flush=True)
            restart = None
            if not args.no_restart and time.monotonic() < deadline:
                print("restart test ...", file=sys.stderr, flush=True)
                restart = restart_test(triton, model, args.artifact, scene_shape, args.glimpses)
        finally:
            triton.stop()
        server_log = triton.log_path.read_text(errors="replace")
    import os

    version = next((line.split("|")[2].strip() for line in server_log.splitlines() if "server_version" in line), "?")
    report = {"server": version, "runtime": args.runtime, "threads": args.threads or "default",
              "artifact": f"{manifest.architecture.backbone}, canvas {manifest.canvas_grid}, scene {manifest.scene_px} px, "
                          f"{manifest.precision.name}", "cpu": f"{os.cpu_count()} cores", "rows": rows,
              "restart": restart}
    (args.out / "serve-bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "serve-bench.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
