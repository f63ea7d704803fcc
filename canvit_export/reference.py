"""The references, as runners of canvit_runtime's protocol (reset(), step(scene, centers, scales) -> StepResult), so
that `parity` and `bench` loop them exactly as they loop an artifact:

- `EagerRunner`: canvit-pytorch's own CanViT in float32 on the CPU (step.reference_step: sample_at_viewpoint, then
  CanViT.forward), with the weights the manifest names; the parity reference. Its other modes are what a user tries
  before exporting, the bench's baselines: `bf16-autocast` (torch.autocast CPU bfloat16 over the step) and
  `compile` (torch.compile, inductor, of the same step in float32).
- `PeerRunner`: canvit-pytorch's own browser export (viz.live.step.GlimpseStep, exported by `export_peer`) on ONNX
  Runtime; the bench's baseline export.

Both hold the state as host arrays (HostStateRunner) and take the artifact's manifest for shapes and the initial
state, so they accept the same inputs and reject the same bad ones as the runtime's runners. torch is imported only
by what needs it: a PeerRunner in a child process (bench's memory figure) costs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from canvit_runtime.base import HostStateRunner
from canvit_runtime.manifest import ROLE_CENTERS, ROLE_SCALES, ROLE_SCENE, Manifest
from canvit_runtime.onnxruntime import session_options

if TYPE_CHECKING:
    from canvit_export.readouts import Heads
    from canvit_export.source import LoadedModel


EAGER_MODES = ("fp32", "bf16-autocast", "compile")
"""EagerRunner's modes: the float32 reference, and the two baselines a user would pick instead of an export."""


class EagerRunner(HostStateRunner):
    """canvit-pytorch's CanViT in float32 on the CPU, state carried between glimpses; `threads` sets torch's.

    With `heads` (readouts.heads_from_records: the manifest's readouts rebuilt), each step also returns the readouts
    of the new state as canvit-pytorch computes them: seg_logits (CanViTForSemanticSegmentation.logits), seg_entropy
    (policies.entropy.predictive_entropy, the policy's own, with log_softmax), class_logits
    (CanViTForImageClassification.classify), teacher_patches (CanViTForPretraining.predict_teacher_patches)."""

    name = "pytorch"

    def __init__(self, manifest: Manifest, loaded: LoadedModel, *, threads: int | None = None,
                 heads: Heads | None = None, mode: str = "fp32") -> None:
        """mode: fp32 (the reference), bf16-autocast or compile (EAGER_MODES). Raises ValueError for another mode."""
        import torch
        from canvit_pytorch.model.segmentation import CanViTForSemanticSegmentation

        if mode not in EAGER_MODES:
            raise ValueError(f"eager mode {mode!r}: choose one of {', '.join(EAGER_MODES)}")
        super().__init__(manifest)
        if threads is not None:
            torch.set_num_threads(threads)
        self.mode = mode
        if mode == "compile":
            self.name = "torch.compile"
        self.canvit = loaded.canvit.float().eval()
        self._step_fn = self._make_step()
        self._names = {role: manifest.input(role).name for role in (ROLE_SCENE, ROLE_CENTERS, ROLE_SCALES)}
        (self._canvas, self._canvas_next), (self._cls, self._cls_next) = manifest.state_pairs
        self.heads = heads
        self.segmentation = (CanViTForSemanticSegmentation(canvit=self.canvit, probe=heads.probe).eval()
                             if heads is not None and heads.probe is not None else None)

    def readouts(self, canvas: Any, recurrent_cls: Any) -> dict[str, np.ndarray]:
        """The heads on a state (torch tensors [B, R + G*G, Dc], [B, 1, Db]) -> readouts by output name."""
        import torch
        from canvit_pytorch.policies.entropy import predictive_entropy

        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.segmentation is not None:
                logits = self.segmentation.logits(canvas)
                out["seg_logits"], out["seg_entropy"] = logits.numpy(), predictive_entropy(logits).numpy()
            if self.heads is not None and self.heads.classifier is not None:
                out["class_logits"] = self.heads.classifier.classify(recurrent_cls).numpy()
            if self.heads is not None and self.heads.pretraining is not None:
                out["teacher_patches"] = self.heads.pretraining.predict_teacher_patches(canvas).numpy()
        return out

    def _make_step(self) -> Any:
        """(scene, canvas, recurrent_cls, centers, scales) -> (canvas', recurrent_cls') float32, in this mode."""
        import functools

        import torch

        from canvit_export.step import reference_step

        step = functools.partial(reference_step, self.canvit, glimpse_px=self.manifest.glimpse_px)
        if self.mode == "compile":
            return torch.compile(step, backend="inductor")
        if self.mode == "bf16-autocast":
            def autocast_step(*args: Any) -> tuple[Any, Any]:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    canvas, cls = step(*args)
                return canvas.float(), cls.float()

            return autocast_step
        return step

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            canvas, cls = self._step_fn(
                torch.from_numpy(feeds[self._names[ROLE_SCENE]]), torch.from_numpy(feeds[self._canvas]),
                torch.from_numpy(feeds[self._cls]), torch.from_numpy(feeds[self._names[ROLE_CENTERS]]),
                torch.from_numpy(feeds[self._names[ROLE_SCALES]]))
        return {self._canvas_next: canvas.numpy(), self._cls_next: cls.numpy(), **self.readouts(canvas, cls)}


def export_peer(loaded: LoadedModel, manifest: Manifest, workdir: Path) -> Path:
    """canvit-pytorch's browser export (viz.live.step.GlimpseStep, torch.onnx dynamo, opset 18) of these weights
    and geometry, written once to workdir/peer-<artifact>.onnx."""
    import torch
    from canvit_pytorch.viz.live.step import GlimpseStep, StepInputs, StepOutputs

    from canvit_export.export.onnx import save_onnx

    path = workdir / f"peer-{manifest.directory.name}.onnx"
    if path.exists():
        return path
    module = GlimpseStep(loaded.canvit.float().eval(), glimpse_size_px=manifest.glimpse_px).eval()
    initial = manifest.initial_state_arrays(manifest.batch)
    inputs = tuple(torch.from_numpy(np.array(a)) for a in (
        np.zeros(manifest.input(ROLE_SCENE).shape, np.float32), initial["canvas"], initial["recurrent_cls"],
        np.zeros((manifest.batch, 2), np.float32), np.ones(manifest.batch, np.float32)))
    save_onnx(module, inputs, list(StepInputs._fields), list(StepOutputs._fields), path, opset=18)
    return path


class PeerRunner(HostStateRunner):
    """canvit-pytorch's browser export (export_peer's ONNX file) on ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(manifest)
        self.path = path
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        (self._canvas, self._canvas_next), (self._cls, self._cls_next) = manifest.state_pairs

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The peer's inputs are named scene, canvas, recurrent_cls, centers, scales (viz.live.step.StepInputs).
        canvas, cls, _ = self.session.run(None, {"scene": feeds["scene"], "canvas": feeds[self._canvas],
                                                 "recurrent_cls": feeds[self._cls], "centers": feeds["centers"],
                                                 "scales": feeds["scales"]})
        return {self._canvas_next: canvas, self._cls_next: cls}
