"""A rollout: a runner looped over the glimpses of one scene under any viewing policy, fixed or adaptive."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from canvit_runtime.base import Runner, StepResult
from canvit_runtime.policies import EntropyGuidedC2F, Viewpoints, make_policy


def rollout(session: Runner, scene: np.ndarray, policy: str, *, glimpses: int, seed: int = 0,
            on_step: Callable[[int, Viewpoints, StepResult], None] | None = None
            ) -> tuple[list[Viewpoints], StepResult]:
    """Run `glimpses` glimpses of `scene` [B, 3, S, S] on a runner (reset first) under any policy: a fixed one
    (make_policy: full, c2f, f-iid, r-iid, a JSON file) or EG-C2F, which reads each step's seg_entropy readout.
    Calls on_step(t, viewpoints, result) after each glimpse. Returns (the viewpoints, the last StepResult).
    Raises ValueError for EG-C2F on an artifact without a segmentation readout."""
    manifest = session.manifest
    session.reset()
    adaptive = policy == "eg-c2f"
    if adaptive and manifest.readout("segmentation") is None:
        raise ValueError(f"--policy eg-c2f reads the segmentation entropy, and {manifest.directory} has no "
                         f"segmentation readout: re-export with --readout segmentation")
    eg = EntropyGuidedC2F(batch=manifest.batch, glimpses=glimpses, canvas_grid=manifest.canvas_grid) if adaptive else None
    fixed = None if adaptive else make_policy(policy, batch=manifest.batch, glimpses=glimpses, seed=seed)
    used: list[Viewpoints] = []
    result: StepResult | None = None
    entropy = None
    for t in range(glimpses):
        v = eg.viewpoint(t, entropy) if eg is not None else fixed[t]  # type: ignore[index]
        result = session.step(scene, v.centers, v.scales)
        if eg is not None:
            entropy = result.extras["seg_entropy"]
        used.append(v)
        if on_step is not None:
            on_step(t, v, result)
    if result is None:
        raise ValueError(f"glimpses {glimpses}: must be >= 1")
    return used, result
