"""The runner protocol every backend implements: reset(), then step(scene, centers, scales) once per glimpse.

`Runner` owns what is common to all backends: input checks, the initial state and the result. Two families:
- `HostStateRunner`: the state lives in numpy arrays fed to the graph every glimpse (ONNX Runtime, stateless
  OpenVINO); a backend implements `_run`, one execution of the graph on numpy inputs.
- backends that keep the state themselves (TensorRT device buffers, OpenVINO state variables) implement
  `_reset_state`, `_step` and `_read_state`; the canvas is read back only when the caller asks for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from canvit_runtime.manifest import (
    ROLE_CENTERS,
    ROLE_SCALES,
    ROLE_SCENE,
    ROLE_STATE,
    Manifest,
    ManifestError,
    a_target,
)
from canvit_runtime.paths import printable
from canvit_runtime.policies import check_viewpoints

TARGETS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnx",),
    "openvino": ("openvino", "onnx"),
    "tensorrt": ("tensorrt",),
    "coreml": ("coreml",),
    "executorch": ("executorch",),
}
"""The one runtime-per-target table: the artifact targets (manifest `artifact.target`) each runtime's runner runs, the
runtime's own format first. Each runner refuses the others (check_target); canvit-export's bench and triton derive
which configurations and Triton backends exist from it."""


def check_target(manifest: Manifest, runtime: str, fix: str) -> None:
    """Raise ManifestError "<dir> is an X artifact; <fix>" unless `runtime` runs the manifest's target (TARGETS)."""
    if manifest.target not in TARGETS[runtime]:
        raise ManifestError(f"{manifest.directory} is {a_target(manifest.target)} artifact; {fix}")


def check_graph_io(manifest: Manifest, inputs: dict[str, list], outputs: dict[str, list], *,
                   state_inside: bool = False) -> None:
    """Raise ManifestError unless a loaded graph's inputs and outputs (name -> shape; a dynamic dimension as anything
    not an int) are the manifest's, names and static shapes: before a runtime allocates state for them, or an exporter
    builds on them. state_inside: the graph keeps the state itself (a stateful IR), so state tensors are not graph
    I/O."""
    for kind, declared, found in (("input", manifest.inputs, inputs), ("output", manifest.outputs, outputs)):
        wanted = {t.name: t.shape for t in declared if not (state_inside and t.role == ROLE_STATE)}
        if set(wanted) != set(found):
            odd = sorted(set(wanted) ^ set(found))[0]
            raise ManifestError(f"{manifest.directory}: the graph's {kind}s {printable(sorted(found), 160)} are not the "
                                f"manifest's {sorted(wanted)} (first difference: {printable(odd, 60)!r}); re-export "
                                f"the artifact")
        for name, shape in wanted.items():
            if [int(d) if isinstance(d, int) else None for d in found[name]] != shape:
                raise ManifestError(f"{manifest.directory}: the graph's {kind} {name!r} has shape "
                                    f"{printable(list(found[name]), 80)}, the manifest says {shape}; re-export the "
                                    f"artifact")


def onnx_io(model: Any) -> tuple[dict[str, list], dict[str, list]]:
    """An onnx ModelProto's graph inputs (initializers left out) and outputs: name -> shape, dim_value or None."""
    constants = {i.name for i in model.graph.initializer}
    shape = lambda v: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    return ({v.name: shape(v) for v in model.graph.input if v.name not in constants},
            {v.name: shape(v) for v in model.graph.output})


class StepResult:
    """The state after one glimpse. Attributes are read on first access (a device-resident state is copied to
    the host only then) and cached.

    canvas: [B, R + G*G, Dc] float32 (R canvas registers, then the G x G grid, row-major);
    recurrent_cls: [B, 1, Db] float32; extras: other outputs by name (e.g. "glimpse" [B, 3, g, g]).
    Reading a device-resident state after the runner's next step raises RuntimeError: read (or copy) first.
    """

    def __init__(self, read: Callable[[str], np.ndarray], extras: dict[str, np.ndarray] | None = None) -> None:
        self._read = read
        self._cache: dict[str, np.ndarray] = {}
        self.extras = extras or {}

    def _get(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._read(name)
        return self._cache[name]

    @property
    def canvas(self) -> np.ndarray:
        return self._get("canvas")

    @property
    def recurrent_cls(self) -> np.ndarray:
        return self._get("recurrent_cls")


class Runner(ABC):
    """One artifact loaded on one backend. Call reset() before the first glimpse of each new scene."""

    name: str = "?"
    emulated: str | None = None
    """Set when the backend cannot run the graph's types natively and emulates them (e.g. "bfloat16")."""
    activations: str | None = None
    """Set when the backend runs a quantized graph's activations in another type of the same values (ONNX Runtime on
    x86-64: "uint8" for an int8 Q/DQ graph, onnxruntime.unsigned_activations)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._scene = manifest.input(ROLE_SCENE)
        self._centers = manifest.input(ROLE_CENTERS)
        self._scales = manifest.input(ROLE_SCALES)
        self._generation = 0
        self._is_reset = False

    released: tuple[str, ...] = ()
    """The attributes holding backend objects (sessions, compiled models) that close() drops."""

    def close(self) -> None:
        """Release what the runner holds in its backend (a session, a compiled model, device memory); idempotent.
        A step or reset after close raises ValueError. `with canvit_runtime.open(...) as runner:` closes on exit."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self._release()

    def _release(self) -> None:
        for attribute in self.released:
            setattr(self, attribute, None)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise ValueError(f"this {self.name} runner of {self.manifest.directory} was closed: open the artifact again")

    def _check_graph_io(self, inputs: dict[str, list], outputs: dict[str, list], *, state_inside: bool = False) -> None:
        """check_graph_io for this runner's manifest."""
        check_graph_io(self.manifest, inputs, outputs, state_inside=state_inside)

    def reset(self, batch_size: int | None = None) -> None:
        """Return the state to its initial value (the artifact's initial_state) for batch_size scenes.

        The graph's batch is static: batch_size defaults to it, and any other value raises ValueError.
        """
        self._check_open()
        batch = self.manifest.batch if batch_size is None else batch_size
        if batch != self.manifest.batch:
            raise ValueError(f"batch_size {batch}: this artifact was exported for batch {self.manifest.batch}; "
                             f"re-export with --batch {batch}")
        self._reset_state(self.manifest.initial_state_arrays(batch))
        self._generation += 1
        self._is_reset = True

    def step(self, scene: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> StepResult:
        """Run one glimpse of `scene` [B, 3, S, S] float32 (ImageNet-normalized) at viewpoints `centers` [B, 2]
        (row, col) in [-1, 1] and `scales` [B] in (0, 1]; carry the state and return it.

        Raises ValueError for a scene of another shape or dtype, or an invalid or non-finite viewpoint
        (policies.check_viewpoints), before anything runs.
        """
        self._check_open()
        if not self._is_reset:
            self.reset()
        scene = self._check_scene(scene)
        centers, scales = check_viewpoints(centers, scales, batch=self.manifest.batch)
        extras = self._step({self._scene.name: scene, self._centers.name: centers, self._scales.name: scales})
        self._generation += 1
        return StepResult(self._reader(), extras)

    def _reader(self) -> Callable[[str], np.ndarray]:
        """How a StepResult reads the state of the step just run: from the backend, while no later step ran."""
        generation = self._generation

        def read(name: str) -> np.ndarray:
            if generation != self._generation:
                raise RuntimeError(f"this step's {name} was overwritten by a later step or reset; read it before")
            return self._read_state(name)

        return read

    def state(self, name: str) -> np.ndarray:
        """The current state tensor ("canvas" or "recurrent_cls") as a host array."""
        self._check_open()
        return self._read_state(name)

    def _check_scene(self, scene: object) -> np.ndarray:
        if not isinstance(scene, np.ndarray):
            raise ValueError(f"scene must be a numpy array, got {type(scene).__name__}")
        if list(scene.shape) != self._scene.shape:
            raise ValueError(f"scene has shape {list(scene.shape)}; this artifact takes {list(self._scene.shape)} "
                             f"(batch, 3, scene px, scene px): preprocess with canvit_runtime.preprocess")
        if scene.dtype != np.float32:
            raise ValueError(f"scene has dtype {scene.dtype}; this artifact takes float32 (ImageNet-normalized)")
        return np.ascontiguousarray(scene)

    @abstractmethod
    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        """Install the initial state (by state input name)."""

    @abstractmethod
    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one glimpse on the non-state inputs (by name), advance the state; return the extra outputs."""

    @abstractmethod
    def _read_state(self, name: str) -> np.ndarray:
        """Copy the current state tensor `name` to the host."""


class HostStateRunner(Runner):
    """A backend whose graph takes and returns the state: the state is held here as numpy arrays."""

    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        self._state = state

    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._run({**inputs, **self._state})
        self._state = {inp: outputs.pop(out) for inp, out in self.manifest.state_pairs}
        return outputs

    def _read_state(self, name: str) -> np.ndarray:
        return self._state[name]

    def _reader(self) -> Callable[[str], np.ndarray]:
        return self._state.__getitem__  # host arrays are never overwritten: results stay readable later

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the step once: every graph input by name -> every graph output by name."""
