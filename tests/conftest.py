"""Shared fixtures: seeded ViT-S weights and exported artifacts, built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from canvit_export.export.artifact import Geometry
from canvit_export.export.onnx import export_onnx
from canvit_export.source import LoadedModel, load

SCENE_PX, GLIMPSE_PX = 512, 128


@pytest.fixture(scope="session")
def vits16() -> LoadedModel:
    return load(None, random_weights=True, backbone="vits16", seed=0)


@pytest.fixture(scope="session")
def export_artifact(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """export_artifact(backbone, canvas, batch, seed, precision) -> artifact folder, exported once per configuration."""
    cache: dict[tuple, Path] = {}

    def make(backbone: str = "vits16", canvas: int = 16, batch: int = 1, seed: int = 0, precision: str = "fp32") -> Path:
        key = (backbone, canvas, batch, seed, precision)
        if key not in cache:
            out = tmp_path_factory.mktemp("artifacts") / f"{backbone}-c{canvas}-b{batch}-s{seed}-{precision}"
            loaded = load(None, random_weights=True, backbone=backbone, seed=seed)
            export_onnx(loaded, Geometry(batch=batch, scene_px=SCENE_PX, glimpse_px=GLIMPSE_PX, canvas_grid=canvas),
                        out, precision=precision, quiet=True)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph: skimage.data.chelsea() (451 x 300 RGB), not square, so resize and crop both act."""
    import skimage.data

    return skimage.data.chelsea()
