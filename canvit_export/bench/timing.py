"""Timing the configurations: one round-robin C2F rollout in which every configuration takes each glimpse in turn,
and each configuration's peak resident memory in a child process (child.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from canvit_export.bench.configs import Candidate
from canvit_export.progress import console
from canvit_runtime.policies import Viewpoints, make_policy
from canvit_runtime.preprocess import scene_batch
from canvit_runtime.verdict import compare

ROLLOUT = 21
"""Glimpses of the C2F rollout of one scene; the rollout repeats, reset in between."""
SETTLE_SECONDS = 0.02
"""Untimed pause before each timed step: runtimes' worker threads (OpenMP, TBB) may spin for a while after a run, and
on a 2-core machine would slow whichever configuration runs next (ONNX Runtime's runners here do not spin:
OnnxRuntimeRunner's `spinning`; the errors computed between steps stay off BLAS: canvit_runtime.verdict.l2)."""


def run_bench(candidates: list[Candidate], image: Any, *, iters: int, warmup: int, seed: int = 0) -> None:
    """Round-robin rollout: every candidate takes glimpse t before any takes glimpse t + 1, in an order shuffled
    each round (seeded), each after a short untimed pause, so that no configuration always follows the same one.
    Fills each candidate's times_ms (after `warmup` glimpses) and, against its group's reference, rel_l2 and cosine."""
    total = warmup + iters
    scenes, policies = {}, {}
    for c in candidates:
        if c.group not in scenes:
            scenes[c.group] = scene_batch(image, scene_px=c.manifest.scene_px, batch=c.manifest.batch)
            policies[c.group] = make_policy("c2f", batch=c.manifest.batch, glimpses=ROLLOUT, seed=seed)
    for c in candidates:
        c.runner.reset()
    rng = np.random.default_rng(seed)
    with console.status("benchmark") as status:
        for t in range(total):
            order = [candidates[i] for i in rng.permutation(len(candidates))]
            order.sort(key=lambda c: not c.reference)  # the reference first: the others compare with it
            for c in order:
                elapsed = _timed_step(c, t, scenes[c.group], policies[c.group][t % ROLLOUT], candidates)
                if t >= warmup:
                    c.times_ms.append(elapsed)
            status.update(f"benchmark: glimpse {t + 1}/{total} of {len(candidates)} configurations")


def _timed_step(c: Candidate, t: int, scene: np.ndarray, v: Viewpoints, candidates: list[Candidate]) -> float:
    """Glimpse t of configuration c (reset at the start of each rollout); returns its step time in ms and records
    its canvas (the reference) or its error against the reference's, outside the timed region."""
    if t % ROLLOUT == 0 and t:
        c.runner.reset()
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    result = c.runner.step(scene, v.centers, v.scales)
    elapsed = (time.perf_counter() - start) * 1e3
    canvas = result.canvas  # a device-resident state is read back here, outside the timed region
    if c.reference:
        c.canvas = canvas
    else:
        reference = next(e.canvas for e in candidates if e.reference and e.group == c.group)
        assert reference is not None, "the reference steps first"
        registers = c.manifest.num_canvas_registers
        rel, _, cosine = compare(canvas[:, registers:], reference[:, registers:])
        c.rel_l2.append(rel)
        c.cosine.append(cosine)
    return elapsed


def peak_rss_mb(argv: list[str]) -> float | None:
    """Peak resident memory (MB) of a child process: `python -m canvit_export.bench.child ...`; None (with a note)
    when the child fails."""
    result = subprocess.run([sys.executable, "-m", "canvit_export.bench.child", *argv], capture_output=True,
                            text=True, timeout=900, check=False)
    if result.returncode != 0:
        console.print(f"[yellow]peak RSS of {argv} not measured[/yellow]: {result.stderr.strip()[-200:]}")
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])
