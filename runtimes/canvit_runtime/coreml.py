"""Core ML runner (macOS only: Core ML predicts on Apple platforms; coremltools converts anywhere).

Stateless packages take and return the canvas every glimpse; stateful ones (iOS18/macOS15+) keep it in a Core ML
state (float16 storage, see canvit_export.export.coreml) and take `reset` = 1.0 on a scene's first glimpse.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import numpy as np

from canvit_runtime.base import Runner, check_target
from canvit_runtime.manifest import Manifest

IMPORT_NOTICES = re.compile(r"scikit-learn version .* is not supported|Torch version .* has not been tested with "
                            r"coremltools|Failed to load _ML\w+: No module named 'coremltools\.libcoremlpython'|"
                            r"<enum 'KernelPreference'> is an Enum subclass")
"""What coremltools logs when it is imported, none of it the user's business: its optional scikit-learn converter is
off; it has not been tested with this torch (our own check is the MIL audit of every export and, on macOS, parity);
its predictor (libcoremlpython) exists on macOS only, which the runner says itself; and torch's pytree deprecation
notice about torchao's KernelPreference, which coremltools imports when torchao is installed (canvit-export[executorch]
brings it), logged by torch.utils._pytree."""


def import_coremltools() -> Any:
    """`import coremltools`, its import-time notices (IMPORT_NOTICES) dropped; every other coremltools log kept.

    Raises:
        ImportError: coremltools is not installed.
    """
    for logger in (logging.getLogger("coremltools"), logging.getLogger("torch.utils._pytree")):
        if not any(getattr(f, "canvit_notices", False) for f in logger.filters):
            def drop_notices(record: logging.LogRecord) -> bool:
                return not IMPORT_NOTICES.search(record.getMessage())

            drop_notices.canvit_notices = True  # type: ignore[attr-defined]
            logger.addFilter(drop_notices)
    import coremltools

    return coremltools


class CoreMLRunner(Runner):
    """Runs step.mlpackage with coremltools' MLModel on `compute_units` (ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE)."""

    name = "coreml"
    released = ("model", "_state")

    def __init__(self, manifest: Manifest, *, threads: int | None = None, compute_units: str = "ALL") -> None:
        super().__init__(manifest)
        check_target(manifest, self.name, "Core ML runs mlpackages (canvit-export coreml)")
        if sys.platform != "darwin":
            raise ImportError(f"Core ML predicts on macOS only (this is {sys.platform}); convert here, run on a Mac")
        ct = import_coremltools()
        self.model: Any = ct.models.MLModel(str(manifest.file("package")), compute_units=ct.ComputeUnit[compute_units])
        self.stateful: bool = manifest.stateful
        self._state: Any = None

    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        self._host = dict(state)
        self._first = True
        if self.stateful:
            self._state = self.model.make_state()

    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {**inputs, "recurrent_cls": self._host["recurrent_cls"]}
        if self.stateful:
            feeds["reset"] = np.full(self.manifest.batch, 1.0 if self._first else 0.0, np.float32)
            out = self.model.predict(feeds, state=self._state)
        else:
            out = self.model.predict({**feeds, "canvas": self._host["canvas"]})
            self._host["canvas"] = np.asarray(out["canvas_next"], np.float32)
        self._host["recurrent_cls"] = np.asarray(out["recurrent_cls_next"], np.float32)
        self._first = False
        state_outputs = {output for _, output in self.manifest.state_pairs}
        return {t.name: np.asarray(out[t.name], np.float32) for t in self.manifest.outputs if t.name not in state_outputs}

    def _read_state(self, name: str) -> np.ndarray:
        if name == "canvas" and self.stateful:
            if self._first:
                return self.manifest.initial_state_arrays(self.manifest.batch)["canvas"]
            stored = np.asarray(self._state.read_state("canvas"), np.float32)  # coremltools >= 8.1
            shape = next(p.shape for p in self.manifest.state if p.input == "canvas")
            return np.ascontiguousarray(stored[tuple(slice(0, n) for n in shape)])  # without the Neural Engine padding
        return self._host[name]
