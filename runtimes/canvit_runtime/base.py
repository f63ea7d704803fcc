"""The runner protocol every backend implements: reset(), then step(scene, centers, scales) once per glimpse.

`Runner` owns what is common to all backends: input checks, the state loop (each state output becomes the next
glimpse's state input, as the manifest's state pairs say) and the initial state. A backend implements `_run`,
one execution of the graph on numpy inputs, in a module of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from canvit_runtime.manifest import ROLE_CENTERS, ROLE_SCALES, ROLE_SCENE, Manifest
from canvit_runtime.policies import check_viewpoints


@dataclass(frozen=True)
class StepResult:
    """The state after one glimpse, as numpy arrays.

    canvas: [B, R + G*G, Dc] float32 (R canvas registers, then the G x G grid, row-major);
    recurrent_cls: [B, 1, Db] float32; extras: other outputs by name (e.g. "glimpse" [B, 3, g, g]).
    """

    canvas: np.ndarray
    recurrent_cls: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Runner(ABC):
    """One artifact loaded on one backend. Call reset() before the first glimpse of each new scene."""

    name: str = "?"

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._scene = manifest.input(ROLE_SCENE)
        self._centers = manifest.input(ROLE_CENTERS)
        self._scales = manifest.input(ROLE_SCALES)
        self._state: dict[str, np.ndarray] | None = None

    def reset(self, batch_size: int | None = None) -> None:
        """Return the state to its initial value (the artifact's initial_state) for batch_size scenes.

        The graph's batch is static: batch_size defaults to it, and any other value raises ValueError.
        """
        batch = self.manifest.batch if batch_size is None else batch_size
        if batch != self.manifest.batch:
            raise ValueError(f"batch_size {batch}: this artifact was exported for batch {self.manifest.batch}; "
                             f"re-export with --batch {batch}")
        self._state = self.manifest.initial_state(batch)
        self._on_reset(self._state)

    def step(self, scene: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> StepResult:
        """Run one glimpse of `scene` [B, 3, S, S] float32 (ImageNet-normalized) at viewpoints `centers` [B, 2]
        (row, col) in [-1, 1] and `scales` [B] in (0, 1]; carry the state and return it.

        Raises ValueError for a scene of another shape or dtype, or an invalid or non-finite viewpoint
        (policies.check_viewpoints), before anything runs.
        """
        if self._state is None:
            self.reset()
        scene = self._check_scene(scene)
        centers, scales = check_viewpoints(centers, scales, batch=self.manifest.batch)
        assert self._state is not None
        feeds = {self._scene.name: scene, self._centers.name: centers, self._scales.name: scales, **self._state}
        outputs = self._run(feeds)
        self._state = {inp: outputs[out] for inp, out in self.manifest.state_pairs}
        state_outputs = {out for _, out in self.manifest.state_pairs}
        extras = {name: value for name, value in outputs.items() if name not in state_outputs}
        return StepResult(canvas=self._state["canvas"], recurrent_cls=self._state["recurrent_cls"], extras=extras)

    def _check_scene(self, scene: object) -> np.ndarray:
        if not isinstance(scene, np.ndarray):
            raise ValueError(f"scene must be a numpy array, got {type(scene).__name__}")
        if tuple(scene.shape) != self._scene.shape:
            raise ValueError(f"scene has shape {list(scene.shape)}; this artifact takes {list(self._scene.shape)} "
                             f"(batch, 3, scene px, scene px): preprocess with canvit_runtime.preprocess")
        if scene.dtype != np.float32:
            raise ValueError(f"scene has dtype {scene.dtype}; this artifact takes float32 (ImageNet-normalized)")
        return np.ascontiguousarray(scene)

    def _on_reset(self, state: dict[str, np.ndarray]) -> None:
        """Hook for backends that keep the state themselves (OpenVINO variables, TensorRT device buffers)."""

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the step once: every graph input by name -> every graph output by name."""
