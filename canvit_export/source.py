"""Where CanViT's weights come from: a Hugging Face Hub id, a local checkpoint folder, or seeded random weights.

Every real checkpoint is loaded by canvit-pytorch (`CanViTForPretraining.from_pretrained`, or
`CanViTForImageClassification.from_pretrained` for a classifier checkpoint), never by hand. Each source yields the
`CanViT` module plus a JSON record for the manifest, from which `parity` rebuilds the same weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from canvit_pytorch import CanViT, CanViTConfig, CanViTForImageClassification, CanViTForPretraining
from canvit_pytorch.hub.repos import FLAGSHIP, RELEASED_CANVAS_GRID_SIZE
from canvit_pytorch.model.backbone.vit import LayerScale

from canvit_export.errors import ExportError
from canvit_runtime.manifest import CheckpointWeights, RandomWeights, WeightSource

DEFAULT_MODEL = FLAGSHIP
"""canvit/canvitb16-add-vpe-pretrain-g128px-s512px-in21k-dv3b16-2026-02-02, the paper's CanViT-B."""
BACKBONES = ("vitb16", "vits16")
RANDOM_LAYERSCALE_STD = 0.3
"""Std of the random LayerScale gammas. canvit-pytorch initializes them at 1e-5, which makes every ViT block
nearly an identity; trained-like magnitudes make random weights exercise the model (docs/design.md, Contracts)."""
RANDOM_LAYERNORM_STD = 0.1
"""Std of the random LayerNorm affine parameters: gain ~ 1 + N(0, std), bias ~ N(0, std). canvit-pytorch (as
torch) initializes every LayerNorm at gain 1, bias 0, so all LayerNorms of one tensor compute the same values: a
runtime then merges them (OpenVINO and ONNX Runtime found a Canvas Read's key LayerNorm and the next Canvas
Write's query LayerNorm equal on the unchanged canvas and ran one LayerNorm, one SR-RoPE and one head transpose
for both, 3 of CanViT-B's 37 LayerNorms), work a trained checkpoint never lets them skip."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FIX = "pass --model DIR (a checkpoint folder written by canvit-pytorch's save_pretrained) or --random-weights"


@dataclass(frozen=True)
class LoadedModel:
    """The canvit-pytorch model in eval mode (float32, CPU): `model` as loaded (CanViTForPretraining, with its
    teacher heads, or CanViTForImageClassification, with its classifier), `canvit` its CanViT, and the manifest's
    record of where the weights came from."""

    model: CanViTForPretraining | CanViTForImageClassification
    record: dict[str, Any]

    @property
    def canvit(self) -> CanViT:
        return self.model.canvit


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order): proves two loads equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def random_model(backbone: str, seed: int) -> CanViTForPretraining:
    """CanViT of the exact released architecture (CanViTConfig defaults) on `backbone`, with seeded random weights.

    torch.manual_seed(seed) before construction; then every LayerScale gamma ~ N(0, RANDOM_LAYERSCALE_STD) from a
    generator seeded with `seed`, every LayerNorm of the CanViT at gain 1 + N(0, RANDOM_LAYERNORM_STD) and bias
    N(0, RANDOM_LAYERNORM_STD) (from a generator seeded with `seed + 2`), and the teacher-patch head at trained-like
    magnitude. Deterministic for a given
    torch version.
    """
    if backbone not in BACKBONES:
        raise ExportError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
    torch.manual_seed(seed)
    config = CanViTConfig(backbone_name=backbone)  # type: ignore[arg-type]
    model = CanViTForPretraining(canvit_config=config, teacher_dim=config.backbone_spec.embed_dim,
                                 teacher_patch_grid=RELEASED_CANVAS_GRID_SIZE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.canvit.modules():
            if isinstance(module, LayerScale):
                module.gamma.normal_(0.0, RANDOM_LAYERSCALE_STD, generator=generator)
        norms = torch.Generator().manual_seed(seed + 2)
        for module in model.canvit.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
                module.weight.normal_(1.0, RANDOM_LAYERNORM_STD, generator=norms)
                if module.bias is not None:
                    module.bias.normal_(0.0, RANDOM_LAYERNORM_STD, generator=norms)
        # The teacher-patch head (the features readout) at trained-like magnitude: standardized DINOv3 features
        # have unit variance, so LayerNorm gain 1 and weights ~ N(0, 1 / Dc) (pretraining starts the gain at
        # 1/sqrt(Dc), which gives outputs of std ~0.02). The CanViT weights above are untouched.
        head = model.teacher_patch_readout
        head.norm.weight.fill_(1.0)
        head.proj.weight.normal_(0.0, head.proj.in_features ** -0.5, generator=torch.Generator().manual_seed(seed + 1))
    return model


def _checkpoint_class(directory: Path) -> type[CanViTForPretraining] | type[CanViTForImageClassification]:
    """The canvit-pytorch class whose save_pretrained wrote this folder, from its config.json keys."""
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not (config_path.is_file() and weights_path.is_file()):
        raise ExportError(f"{directory} holds no config.json + model.safetensors, so it is no canvit-pytorch "
                          f"checkpoint: {FIX}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{config_path} is not valid JSON ({error.msg}): {FIX}") from error
    if not isinstance(config, dict) or "canvit_config" not in config:
        raise ExportError(f"{config_path} is not a canvit-pytorch 0.2 checkpoint config (no canvit_config; 0.1 "
                          f"checkpoints convert with `python -m canvit_pytorch.legacy SRC DST`): {FIX}")
    return CanViTForImageClassification if "n_classes" in config else CanViTForPretraining


def _from_pretrained(cls: type[CanViTForPretraining] | type[CanViTForImageClassification], location: str,
                     **kwargs: Any) -> CanViTForPretraining | CanViTForImageClassification:
    try:
        model = cls.from_pretrained(location, **kwargs)
    except (ValueError, KeyError, RuntimeError, TypeError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{location}: canvit-pytorch cannot load this checkpoint ({first_line[:200]}): {FIX}") from error
    return model


def files_sha256(directory: Path) -> dict[str, str]:
    """SHA-256 of a save_pretrained folder's config.json and model.safetensors."""
    from canvit_runtime.manifest import sha256_file

    return {name: sha256_file(directory / name) for name in ("config.json", "model.safetensors")}


def load_checkpoint_dir(directory: Path) -> LoadedModel:
    """A local checkpoint folder in canvit-pytorch's format (config.json + model.safetensors)."""
    cls = _checkpoint_class(directory)
    model = _from_pretrained(cls, str(directory))
    record = {"kind": "checkpoint", "path": str(directory.resolve()), "class": cls.__name__,
              "sha256": files_sha256(directory)}
    return LoadedModel(model=model.eval(), record=record)


def load_hub(repo: str, revision: str | None = None) -> LoadedModel:
    """A Hub repo: snapshot config.json + model.safetensors (cached), then load that folder through canvit-pytorch.

    Raises ExportError when the Hub cannot be reached and the files are not cached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=["config.json", "model.safetensors"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ExportError(f"cannot fetch {repo} from the Hugging Face Hub ({reason}): {FIX}") from error
    cls = _checkpoint_class(snapshot)
    model = _from_pretrained(cls, str(snapshot))
    # Hub snapshots live in .../snapshots/<commit sha>/: the folder name is the resolved revision.
    record = {"kind": "hub", "repo": repo, "revision": snapshot.name, "class": cls.__name__,
              "sha256": files_sha256(snapshot)}
    return LoadedModel(model=model.eval(), record=record)


def load_random(backbone: str, seed: int) -> LoadedModel:
    """Seeded random weights of the exact architecture (random_model)."""
    record = {"kind": "random", "backbone": backbone, "seed": seed, "layerscale_std": RANDOM_LAYERSCALE_STD,
              "layernorm_std": RANDOM_LAYERNORM_STD, "torch": torch.__version__}
    return LoadedModel(model=random_model(backbone, seed).eval(), record=record)


def load(model: str | None, *, random_weights: bool, backbone: str = "vitb16", seed: int = 0,
         revision: str | None = None) -> LoadedModel:
    """Resolve --model / --random-weights to weights: an existing folder is a checkpoint, an `org/name` is a Hub
    id, None is the released flagship. Raises ExportError naming the fix for anything else."""
    if random_weights:
        if model is not None:
            raise ExportError("--model and --random-weights exclude each other: pass one")
        loaded = load_random(backbone, seed)
    elif model is None:
        loaded = load_hub(DEFAULT_MODEL, revision)
    elif Path(model).exists():
        if not Path(model).is_dir():
            raise ExportError(f"{model} is a file, not a checkpoint folder: {FIX}")
        loaded = load_checkpoint_dir(Path(model))
    elif HUB_ID.match(model):
        loaded = load_hub(model, revision)
    else:
        raise ExportError(f"{model}: no such checkpoint folder, and not a Hub id (org/name): {FIX}")
    loaded.record["weights_fingerprint"] = weights_fingerprint(loaded.canvit)
    return loaded


def load_from_record(record: WeightSource) -> LoadedModel:
    """Rebuild the weights a manifest's model record names (for parity), and check their fingerprint.

    Raises ExportError when the weights cannot be had or differ from the exported ones.
    """
    if isinstance(record, RandomWeights):
        loaded = load_random(record.backbone, record.seed)
    elif isinstance(record, CheckpointWeights):
        loaded = load_checkpoint_dir(Path(record.path))
    else:
        loaded = load_hub(record.repo, record.revision)
    loaded.record["weights_fingerprint"] = weights_fingerprint(loaded.canvit)
    if loaded.record["weights_fingerprint"] != record.weights_fingerprint:
        raise ExportError("the reference weights differ from those exported (fingerprint mismatch; another torch "
                          "version draws other random weights): pass the exported weights with --model")
    return loaded
