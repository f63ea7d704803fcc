"""Image -> the step's `scene` input: [3, S, S] float32, ImageNet-normalized, channels first.

The geometry is canvit_core.preprocess's (torch-free, as canvit-pytorch's torchvision pipeline): resize the short
side to S px (PIL bilinear), center-crop S x S, scale to [0, 1], subtract the ImageNet mean and divide by its std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from canvit_core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from canvit_core.preprocess import preprocess as _canvit_core_preprocess
from PIL import Image, UnidentifiedImageError


def load_image(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a file path, a PIL image or an [H, W, 3] uint8 array.

    Raises ValueError for an unreadable file or an array of another shape or dtype.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise ValueError(f"an image array must be [H, W, 3] uint8, got {list(source.shape)} {source.dtype}")
        return Image.fromarray(source)
    path = Path(source)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read the image ({error.__class__.__name__}); pass a PNG or JPEG file") from error


def preprocess(source: str | Path | Image.Image | np.ndarray, *, scene_px: int,
               mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """[3, scene_px, scene_px] float32 scene, as canvit_core.preprocess.preprocess(scene_px) then HWC -> CHW.

    mean and std are the manifest's; CanViT uses ImageNet's, and anything else raises ValueError.
    """
    if tuple(mean) != tuple(IMAGENET_MEAN) or tuple(std) != tuple(IMAGENET_STD):
        raise ValueError(f"normalization mean={mean} std={std} is not ImageNet's, which CanViT was trained with")
    hwc = _canvit_core_preprocess(scene_px)(load_image(source))
    return np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32)


def scene_batch(source: str | Path | Image.Image | np.ndarray, *, scene_px: int, batch: int) -> np.ndarray:
    """[batch, 3, S, S] float32: the same preprocessed image for every scene of the batch."""
    scene = preprocess(source, scene_px=scene_px)
    return np.array(np.broadcast_to(scene, (batch, *scene.shape)), dtype=np.float32, copy=True)
