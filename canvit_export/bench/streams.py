"""Multi-stream throughput: `streams` C2F rollouts of one stateful IR stepped at once on OpenVINO under its THROUGHPUT
hint (canvit_runtime.openvino.OpenVinoStreams), measured alone after the interleaved run (it occupies every core)."""

from __future__ import annotations

import time
from typing import Any

from canvit_export.bench.configs import Candidate
from canvit_export.bench.report import BenchRow, timed_row
from canvit_export.bench.timing import ROLLOUT
from canvit_export.progress import console
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch


def stream_rows(candidates: list[Candidate], streams: int, image: Any, *, iters: int, warmup: int,
                threads: int | None, floors: list[BenchRow]) -> list[BenchRow]:
    """A row per stateful IR on OpenVINO among `candidates`: median/p10/p90 ms of one round (each stream's step
    latency under that load); glimpses/s, "vs eager", "x floor" and GFLOP/s from the machine time per step (a round's
    time / streams), as the other rows use their step."""
    out = []
    for c in candidates:
        if c.runtime == "openvino" and c.manifest.target == "openvino" and c.manifest.stateful:
            rounds_ms = stream_rounds_ms(c, streams, image, iters=iters, warmup=warmup, threads=threads)
            per_step = sum(rounds_ms) / (len(rounds_ms) * streams)  # ms of machine time per step (batch scenes)
            out.append(timed_row(candidates, floors, c, f"{c.name.removesuffix(' [openvino]')} [openvino, throughput "
                                 f"hint, {streams} streams]", rounds_ms, per_step, rss=None, rel_l2=None, cosine=None))
    return out


def stream_rounds_ms(c: Candidate, streams: int, image: Any, *, iters: int, warmup: int,
                     threads: int | None) -> list[float]:
    """The time (ms) of each of `iters` rounds, after `warmup`, in which every stream takes one glimpse."""
    from canvit_runtime.openvino import OpenVinoStreams

    scene = scene_batch(image, scene_px=c.manifest.scene_px, batch=c.manifest.batch)
    policy = make_policy("c2f", batch=c.manifest.batch, glimpses=ROLLOUT)
    rounds_ms = []
    with OpenVinoStreams(c.manifest, streams, threads=threads) as runner, \
            console.status(f"{c.name}: {streams} streams under OpenVINO's throughput hint"):
        for t in range(warmup + iters):
            if t % ROLLOUT == 0:
                runner.reset()
            v = policy[t % ROLLOUT]
            start = time.perf_counter()
            runner.step([scene] * streams, [v.centers] * streams, [v.scales] * streams)
            if t >= warmup:
                rounds_ms.append((time.perf_counter() - start) * 1e3)
    return rounds_ms
