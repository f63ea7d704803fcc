"""Readout heads: what a user reads from the state, through canvit-pytorch's own modules (never re-implemented).

- segmentation: `CanViTForSemanticSegmentation.logits` (its SegmentationProbe: LayerNorm, BatchNorm in eval, 1x1
  conv on the canvas patch grid) -> seg_logits [B, C, G, G] float32, and seg_entropy [B, G, G] float32, the
  predictive entropy in nats, as canvit-pytorch's browser export writes it (viz.live.step
  predictive_entropy_via_logsumexp: logits - logsumexp instead of LogSoftmax, so that every runtime runs it);
- classification: `CanViTForImageClassification.classify` (LayerNorm + one Linear: the W_global projection,
  destandardization and the DINOv3 linear probe fused by canvit-pytorch's fuse_probe) on the recurrent CLS ->
  class_logits [B, n_classes] float32;
- features: `CanViTForPretraining.predict_teacher_patches` -> teacher_patches [B, G*G, teacher_dim] float32, the
  scene's DINOv3 patch features in standardized space.

Weights: the segmentation probe from `--probe ID|DIR` (a Hub id or a save_pretrained folder of a SegmentationProbe);
the classifier from a classification checkpoint (CanViTForImageClassification); the feature head from a pretraining
checkpoint (CanViTForPretraining); or, with --random-weights, seeded random heads at trained-like magnitudes so that
their outputs are not near-constant (`random_probe`, `random_classifier`; the feature head is the random pretraining
model's own). Every head runs in float32, whatever the step's precision: the canvas LayerNorm sees norms of 1e4-1e5,
and the entropy is a difference of logs (paper App. D.3; docs/design.md, Contracts).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from canvit_pytorch import CanViT, CanViTForImageClassification, CanViTForPretraining
from canvit_pytorch.model.segmentation import CanViTForSemanticSegmentation
from canvit_pytorch.probes import SegmentationProbe
from torch import Tensor, nn

from canvit_export.errors import ExportError
from canvit_export.source import HUB_ID, files_sha256, weights_fingerprint
from canvit_runtime.manifest import HeadSource, ReadoutRecord, TensorSpec

READOUTS = ("segmentation", "classification", "features")
ADE20K_CLASSES = 150
IMAGENET_CLASSES = 1000
RANDOM_HEAD_GAIN = 3.0
"""Random head weights ~ N(0, (gain / sqrt(fan_in))^2): on a layer-normalized input, logits of std ~3, peaked like
a trained head's (canvit-pytorch's own probe init, N(0, 0.01), gives near-uniform class distributions)."""
PROBE_FIX = ("pass --probe ID|DIR (a SegmentationProbe on the canvas, written by canvit-pytorch's save_pretrained), "
             "or --random-weights for a seeded random probe")


@dataclass
class Heads:
    """The heads of an export, float32, eval mode, each None when not asked for, and where each came from (by readout
    name, for the manifest). `classifier` and `pretraining` are whole canvit-pytorch models whose heads are used;
    ReadoutModule binds the heads to the step's own CanViT."""

    probe: SegmentationProbe | None = None
    classifier: CanViTForImageClassification | None = None
    pretraining: CanViTForPretraining | None = None
    sources: dict[str, HeadSource] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [name for name, head in zip(READOUTS, (self.probe, self.classifier, self.pretraining), strict=True)
                if head is not None]


def parse_readouts(text: str | None) -> list[str]:
    """'segmentation,classification' -> ['segmentation', 'classification']; ExportError for an unknown name."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if unknown := [n for n in names if n not in READOUTS]:
        raise ExportError(f"--readout {unknown[0]}: choose from {', '.join(READOUTS)} (comma-separated)")
    return [n for n in READOUTS if n in names]


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


def random_probe(canvit: CanViT, *, seed: int, num_classes: int = ADE20K_CLASSES) -> SegmentationProbe:
    """A SegmentationProbe (LayerNorm, BatchNorm, 1x1 conv) on `canvit`'s canvas with seeded trained-like weights:
    conv weights ~ N(0, (RANDOM_HEAD_GAIN / sqrt(Dc))^2), biases ~ N(0, 0.5^2), BatchNorm running mean
    ~ N(0, 0.2^2), running variance ~ U[0.5, 1.5], affine ~ N(1, 0.1^2) and N(0, 0.1^2). Its class distributions are
    far from uniform (entropy well below ln C). A random CanViT writes nearly the same token to every canvas cell
    (measured: mean cosine between cells >= 0.996 on scikit-image's photos), so the maps vary little across the
    scene; trained weights make them vary."""
    probe = SegmentationProbe(embed_dim=canvit.canvas_dim, num_classes=num_classes, dropout=0.0, use_ln=True)
    g = _generator(seed, 1)
    with torch.no_grad():
        probe.conv.weight.normal_(0.0, RANDOM_HEAD_GAIN / math.sqrt(canvit.canvas_dim), generator=g)
        assert probe.conv.bias is not None
        probe.conv.bias.normal_(0.0, 0.5, generator=g)
        probe.bn.running_mean.normal_(0.0, 0.2, generator=g)  # type: ignore[union-attr]
        probe.bn.running_var.uniform_(0.5, 1.5, generator=g)  # type: ignore[union-attr]
        probe.bn.weight.normal_(1.0, 0.1, generator=g)
        probe.bn.bias.normal_(0.0, 0.1, generator=g)
    return probe.eval()


def random_classifier(canvit: CanViT, *, seed: int, n_classes: int = IMAGENET_CLASSES) -> CanViTForImageClassification:
    """canvit-pytorch's classifier on `canvit` with a seeded trained-like readout: Linear weights
    ~ N(0, (RANDOM_HEAD_GAIN / sqrt(Db))^2), bias ~ N(0, 0.5^2); LayerNorm as initialized."""
    model = bind_classifier(canvit, None, n_classes=n_classes)
    g = _generator(seed, 2)
    with torch.no_grad():
        model.readout.proj.weight.normal_(0.0, RANDOM_HEAD_GAIN / math.sqrt(canvit.backbone_dim), generator=g)
        model.readout.proj.bias.normal_(0.0, 0.5, generator=g)
    return model.eval()


def bind_classifier(canvit: CanViT, source: CanViTForImageClassification | None, *,
                    n_classes: int | None = None) -> CanViTForImageClassification:
    """A CanViTForImageClassification whose `canvit` is `canvit` (the step's, so no weight is held twice) and whose
    readout is a float32 copy of `source`'s (or freshly initialized with n_classes)."""
    n = source.n_classes if source is not None else n_classes
    assert n is not None
    model = CanViTForImageClassification(canvit_config=canvit.config, n_classes=n)
    model.canvit = canvit
    if source is not None:
        model.readout.load_state_dict(source.readout.state_dict())
    model.readout.float()
    return model.eval()


def bind_pretraining(canvit: CanViT, source: CanViTForPretraining) -> CanViTForPretraining:
    """A CanViTForPretraining whose `canvit` is `canvit` and whose teacher heads are float32 copies of `source`'s."""
    model = CanViTForPretraining(canvit_config=canvit.config, teacher_dim=source.teacher_dim,
                                 teacher_patch_grid=source.teacher_patch_grid)
    model.canvit = canvit
    model.teacher_patch_readout.load_state_dict(source.teacher_patch_readout.state_dict())
    model.teacher_cls_readout.load_state_dict(source.teacher_cls_readout.state_dict())
    model.teacher_patch_readout.float()
    return model.eval()


def load_probe(location: str, canvas_dim: int) -> tuple[SegmentationProbe, HeadSource]:
    """SegmentationProbe.from_pretrained on a Hub id or a save_pretrained folder; ExportError naming the fix."""
    path = Path(location)
    if not path.exists() and not HUB_ID.match(location):
        raise ExportError(f"--probe {location}: no such folder, and not a Hub id (org/name): {PROBE_FIX}")
    try:
        probe = SegmentationProbe.from_pretrained(location)
    except Exception as error:  # the Hub client, safetensors and the mixin raise many kinds
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ExportError(f"--probe {location}: canvit-pytorch cannot load this SegmentationProbe ({first}): "
                          f"{PROBE_FIX}") from error
    if probe.embed_dim != canvas_dim:
        raise ExportError(f"--probe {location} reads {probe.embed_dim}-dim features, the canvas is {canvas_dim} wide: "
                          f"pass a probe trained on this model's canvas")
    if not probe.use_ln:
        raise ExportError(f"--probe {location} has no LayerNorm: it decodes already-normalized features (a DINOv3 "
                          f"probe), not the canvas")
    kind = "checkpoint" if path.exists() else "hub"
    where = str(path.resolve()) if path.exists() else location
    sha = files_sha256(path) if path.exists() else None
    source = HeadSource(kind=kind, location=where, weights_fingerprint=weights_fingerprint(probe), sha256=sha)
    return probe.float().eval(), source


def load_heads(loaded: Any, readouts: list[str], *, probe: str | None, seed: int) -> Heads:
    """The heads for `readouts` from the loaded model (its pretraining or classification heads), --probe, or seeded
    random heads when the weights are random. Raises ExportError naming what is missing."""
    canvit: CanViT = loaded.canvit
    random = loaded.record["kind"] == "random"
    heads = Heads()
    if "segmentation" in readouts:
        if probe is not None:
            heads.probe, heads.sources["segmentation"] = load_probe(probe, canvit.canvas_dim)
        elif random:
            heads.probe = random_probe(canvit, seed=seed)
            heads.sources["segmentation"] = HeadSource(kind="random", seed=seed,
                                                       weights_fingerprint=weights_fingerprint(heads.probe))
        else:
            raise ExportError(f"--readout segmentation needs a probe: {PROBE_FIX}")
    elif probe is not None:
        raise ExportError("--probe is the segmentation readout's: add --readout segmentation")
    if "classification" in readouts:
        if isinstance(loaded.model, CanViTForImageClassification):
            heads.classifier = loaded.model
            heads.sources["classification"] = HeadSource(kind="model",
                                                         weights_fingerprint=weights_fingerprint(heads.classifier.readout))
        elif random:
            heads.classifier = random_classifier(canvit, seed=seed)
            heads.sources["classification"] = HeadSource(kind="random", seed=seed, weights_fingerprint=weights_fingerprint(
                heads.classifier.readout))
        else:
            raise ExportError("--readout classification needs a classification checkpoint (canvit-pytorch "
                              "CanViTForImageClassification, e.g. from_pretrained_with_probe + save_pretrained) as "
                              "--model, or --random-weights")
    if "features" in readouts:
        if not isinstance(loaded.model, CanViTForPretraining):
            raise ExportError("--readout features needs a pretraining checkpoint (CanViTForPretraining: the teacher "
                              "heads) as --model, or --random-weights")
        heads.pretraining = loaded.model
        heads.sources["features"] = HeadSource(kind="model", weights_fingerprint=weights_fingerprint(
            heads.pretraining.teacher_patch_readout))
    return heads


def palette(n: int) -> list[list[int]]:
    """n distinct RGB colours (0-255): hues spaced by the golden ratio, alternating saturation and value."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.6180339887) % 1.0, 0.55 + 0.35 * (i % 3) / 2, 0.95 - 0.25 * (i % 2))
        colours.append([round(255 * r), round(255 * g), round(255 * b)])
    return colours


def class_names(readout: str, n: int) -> list[str]:
    """ADE20K's 150 names (canvit_pytorch.benchmarks.ade20k) for a 150-class probe, ImageNet-1k's (torchvision's,
    canvit_pytorch.benchmarks.imagenet) for a 1000-class classifier, else class 0..n-1."""
    if readout == "segmentation" and n == ADE20K_CLASSES:
        from canvit_pytorch.benchmarks.ade20k.classes import CLASS_NAMES

        return list(CLASS_NAMES)
    if readout == "classification" and n == IMAGENET_CLASSES:
        from canvit_pytorch.benchmarks.imagenet import CLASS_NAMES as IMAGENET

        return list(IMAGENET)
    return [f"class {i}" for i in range(n)]


def readout_tensors(heads: Heads, *, batch: int, canvas_grid: int) -> tuple[list[TensorSpec], list[ReadoutRecord]]:
    """The readout outputs of the step graph (role readout, float32, units) and their manifest records."""
    specs: list[TensorSpec] = []
    records: list[ReadoutRecord] = []
    sources = heads.sources
    B, G = batch, canvas_grid
    if heads.probe is not None:
        C = heads.probe.num_classes
        specs += [TensorSpec(name="seg_logits", shape=[B, C, G, G], dtype="float32", role="readout", unit="logits"),
                  TensorSpec(name="seg_entropy", shape=[B, G, G], dtype="float32", role="readout", unit="nats")]
        records.append(ReadoutRecord(
            name="segmentation", outputs=["seg_logits", "seg_entropy"], source=sources["segmentation"],
            class_names=class_names("segmentation", C), palette=palette(C),
            computed_by="canvit-pytorch CanViTForSemanticSegmentation.logits; entropy: viz.live.step."
                        "predictive_entropy_via_logsumexp (nats)"))
    if heads.classifier is not None:
        n = heads.classifier.n_classes
        specs.append(TensorSpec(name="class_logits", shape=[B, n], dtype="float32", role="readout", unit="logits"))
        records.append(ReadoutRecord(name="classification", outputs=["class_logits"], source=sources["classification"],
                                     class_names=class_names("classification", n),
                                     computed_by="canvit-pytorch CanViTForImageClassification.classify"))
    if heads.pretraining is not None:
        d = heads.pretraining.teacher_dim
        specs.append(TensorSpec(name="teacher_patches", shape=[B, G * G, d], dtype="float32", role="readout",
                                unit="standardized DINOv3 patch features"))
        records.append(ReadoutRecord(name="features", outputs=["teacher_patches"], source=sources["features"],
                                     computed_by="canvit-pytorch CanViTForPretraining.predict_teacher_patches"))
    return specs, records


class ReadoutModule(nn.Module):
    """The heads on the new state, as the step graph computes them: forward(canvas_next, recurrent_cls_next) ->
    the readout tensors in readout_tensors' order, all float32."""

    def __init__(self, canvit: CanViT, heads: Heads) -> None:
        super().__init__()
        self.segmentation = (CanViTForSemanticSegmentation(canvit=canvit, probe=heads.probe).eval()
                             if heads.probe is not None else None)
        self.classifier = bind_classifier(canvit, heads.classifier) if heads.classifier is not None else None
        self.pretraining = bind_pretraining(canvit, heads.pretraining) if heads.pretraining is not None else None

    def forward(self, canvas: Tensor, recurrent_cls: Tensor) -> tuple[Tensor, ...]:
        from canvit_pytorch.viz.live.step import predictive_entropy_via_logsumexp

        out: list[Tensor] = []
        if self.segmentation is not None:
            logits = self.segmentation.logits(canvas)
            out += [logits, predictive_entropy_via_logsumexp(logits)]
        if self.classifier is not None:
            out.append(self.classifier.classify(recurrent_cls))
        if self.pretraining is not None:
            out.append(self.pretraining.predict_teacher_patches(canvas.float()))
        return tuple(out)


def heads_from_records(loaded: Any, records: list[ReadoutRecord], *, probe: str | None = None) -> Heads:
    """The heads a manifest's readouts name, rebuilt for the parity reference (same seeds, files or model), each
    checked against its recorded fingerprint; `probe` (a Hub id or folder the user names) replaces the segmentation
    probe's recorded location. Raises ExportError when one cannot be had or differs."""
    heads = Heads()
    for record in records:
        source = record.source
        if record.name == "segmentation":
            if source.kind == "random" and probe is None:
                assert source.seed is not None
                heads.probe = random_probe(loaded.canvit, seed=source.seed,
                                           num_classes=len(record.class_names or []) or ADE20K_CLASSES)
            else:
                location = probe or source.location
                assert location is not None
                heads.probe, _ = load_probe(location, loaded.canvit.canvas_dim)
            module: nn.Module = heads.probe
        elif record.name == "classification":
            if source.kind == "random":
                assert source.seed is not None
                heads.classifier = random_classifier(loaded.canvit, seed=source.seed,
                                                     n_classes=len(record.class_names or []) or IMAGENET_CLASSES)
            elif isinstance(loaded.model, CanViTForImageClassification):
                heads.classifier = loaded.model
            else:
                raise ExportError("the manifest's classification head comes from a classification checkpoint, and "
                                  "the reference weights are not one: pass the exported weights with --model")
            module = heads.classifier.readout
        else:
            if not isinstance(loaded.model, CanViTForPretraining):
                raise ExportError("the manifest's feature head comes from a pretraining checkpoint, and the reference "
                                  "weights are not one: pass the exported weights with --model")
            heads.pretraining = loaded.model
            module = heads.pretraining.teacher_patch_readout
        if weights_fingerprint(module) != source.weights_fingerprint:
            raise ExportError(f"the reference {record.name} head differs from the exported one (fingerprint mismatch): "
                              f"pass the exported weights with --model (and --probe)")
        heads.sources[record.name] = source
    return heads
