"""Long rollouts (issue 15): 1000 glimpses stay finite and within the fp32 tolerance of PyTorch, and resident memory
stays flat (no leak in the runners or the runtimes they drive). ViT-S, canvas 16; CanViT-B figures are in the README."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import canvit_runtime
from canvit_export.parity import parity_command
from canvit_runtime.policies import make_policy
from canvit_runtime.preprocess import scene_batch

GLIMPSES = 1000


def rss_mb() -> float:
    """This process's resident set (Linux /proc/self/statm), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_1000_glimpses_match_pytorch(export_artifact, photo, tmp_path: Path, runtime: str) -> None:
    report = parity_command(artifact=export_artifact("vits16", canvas=16), runtime=runtime, loaded=None, image=photo,
                            policy="f-iid", glimpses=GLIMPSES, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report["passed"], report["failures"][:3]
    assert report["glimpses"] == GLIMPSES
    assert report["worst"]["canvas_rel_l2"] < 1e-4


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from Linux's /proc")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_1000_glimpses_keep_memory_flat(export_artifact, photo, runtime: str) -> None:
    session = canvit_runtime.open(export_artifact("vits16", canvas=16), runtime=runtime, threads=2)
    scene = scene_batch(photo, scene_px=512, batch=1)
    resident = []
    for t, v in enumerate(make_policy("f-iid", batch=1, glimpses=GLIMPSES, seed=0)):
        result = session.step(scene, v.centers, v.scales)
        if t % 50 == 49:
            assert np.isfinite(result.canvas).all(), f"glimpse {t}"
        resident.append(rss_mb())
    growth = (max(resident[100:]) - resident[100]) / resident[100]
    assert growth < 0.01, f"resident memory grew {growth:.2%} over glimpses 100-{GLIMPSES} ({resident[100]:.0f} MB)"
