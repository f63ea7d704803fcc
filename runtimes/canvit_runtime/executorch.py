"""ExecuTorch runner: the artifact's step.pte on ExecuTorch's C++ runtime (XNNPACK delegate + portable kernels), torch-free.

The runtime is `executorch-numpy-runtime` (PyPI; numpy in, numpy out; ExecuTorch's own C++ core and XNNPACK
delegate, built without libtorch), not the `executorch` wheel's `executorch.runtime`: that one is linked against
libtorch and takes and returns torch tensors only, which canvit-runtime never imports. The numpy runtime is built
from ExecuTorch 1.3.1 while canvit-export writes programs with executorch 1.5.1; a program it cannot read fails to
load with one line (ManifestError), and the parity tests prove the pair on every run (tests/test_executorch.py).
It is Python >= 3.12 only, hence the extra's marker. XNNPACK sizes its own thread pool (`threads` is not applied).

Stateful programs keep the canvas and recurrent CLS in their own mutable buffers: the runner feeds `reset` 1.0 on a
scene's first glimpse (the program then reads its embedded learned initial state) and 0.0 after, and reads the state
back from the program's `canvas_next` / `recurrent_cls_next` outputs. Stateless programs take and return the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from canvit_runtime.base import Runner, check_target
from canvit_runtime.manifest import ROLE_RESET, ExecuTorchArtifact, Manifest, ManifestError

SCALAR_TYPES = {6: "float32"}
"""ExecuTorch ScalarType codes (c10 numbering) of the dtypes a step's inputs and outputs may have."""


def load_method(manifest: Manifest) -> Any:
    """The program's `forward` method, loaded from the checksummed bytes (executorch_numpy_runtime)."""
    import executorch_numpy_runtime as en

    program = en.Runtime.get().load_program(manifest.read_verified("program"))
    if "forward" not in program.method_names:
        raise ManifestError(f"{manifest.file('program')} has no forward method; re-export the artifact")
    return program.load_method("forward")


class ExecuTorchRunner(Runner):
    """Runs step.pte with executorch_numpy_runtime (module docstring); `threads` is accepted and not applied."""

    name = "executorch"
    released = ("method",)

    def __init__(self, manifest: Manifest, *, threads: int | None = None) -> None:
        super().__init__(manifest)
        check_target(manifest, self.name, "ExecuTorch runs .pte programs (canvit-export executorch)")
        facts = manifest.artifact
        assert isinstance(facts, ExecuTorchArtifact)
        self.method: Any = load_method(manifest)
        self.stateful = facts.stateful
        self._input_names = list(facts.inputs)
        self._output_names = [t.name for t in manifest.outputs]
        meta = self.method.metadata
        shapes = lambda entries: [list(e["shape"]) for e in entries]
        declared_in = {t.name: t.shape for t in manifest.inputs}
        if [declared_in.get(n) for n in self._input_names] != shapes(meta["inputs"]) or \
                [t.shape for t in manifest.outputs] != shapes(meta["outputs"]) or \
                any(SCALAR_TYPES.get(e["scalar_type"]) != "float32" for e in (*meta["inputs"], *meta["outputs"])):
            raise ManifestError(f"{manifest.directory}: the program's inputs and outputs ({meta['num_inputs']} in, "
                                f"{meta['num_outputs']} out) are not the manifest's; re-export the artifact")
        self._reset_input = next((t.name for t in manifest.inputs if t.role == ROLE_RESET), None)
        if self.stateful != (self._reset_input is not None):
            raise ManifestError(f"{manifest.directory}: a {'stateful' if self.stateful else 'stateless'} program "
                                f"{'needs' if self.stateful else 'takes no'} reset input; re-export the artifact")

    def _reset_state(self, state: dict[str, np.ndarray]) -> None:
        self._host = dict(state)
        self._first = True

    def _step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = dict(inputs)
        if self._reset_input is not None:
            feeds[self._reset_input] = np.full(self.manifest.batch, 1.0 if self._first else 0.0, np.float32)
        else:
            feeds.update(self._host)
        outputs = dict(zip(self._output_names, self.method([feeds[n] for n in self._input_names]), strict=True))
        self._host = {inp: np.asarray(outputs.pop(out), np.float32) for inp, out in self.manifest.state_pairs}
        self._first = False
        return {name: np.asarray(value, np.float32) for name, value in outputs.items()}

    def _read_state(self, name: str) -> np.ndarray:
        return self._host[name]

    def _reader(self) -> Callable[[str], np.ndarray]:
        return self._host.__getitem__  # fresh host copies every glimpse: results stay readable later
