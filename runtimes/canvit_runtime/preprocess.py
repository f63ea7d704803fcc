"""Image -> the step's `scene` input: [3, S, S] float32, ImageNet-normalized, channels first.

The geometry is canvit_core.preprocess's (the torch-free twin of canvit-pytorch's torchvision pipeline): resize the
short side to S px with PIL's bilinear filter (the long side to int(S * long / short)), center-crop S x S at
(round((H - S) / 2), round((W - S) / 2)) (Python's round, half to even), scale to [0, 1], subtract the ImageNet mean
and divide by its std. canvit-core itself needs Python >= 3.12 and the Hugging Face Hub client, which a device does
not want, so these few lines restate it; a test of canvit-export checks they equal canvit_core.preprocess bit for
bit on real photos of several sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from canvit_runtime.manifest import IMAGENET_MEAN, IMAGENET_STD
from canvit_runtime.paths import printable

MAX_ASPECT = 16
"""The widest image accepted (long side / short side): resizing the short side to the scene makes the long side
MAX_ASPECT x the scene at most (a 177-byte 100000 x 1 PNG would otherwise ask for gigabytes). The C++ demo's cap."""


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit grayscale scaled to 8 bits (PIL's convert would clip it at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and wide.max(initial=0) <= 255:  # an 8-bit image stored as 32-bit integers
            return Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8)).convert("RGB")
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a file path, a PIL image or an [H, W, 3] uint8 array.

    Raises ValueError for an unreadable file or an array of another shape or dtype.
    """
    if isinstance(source, Image.Image):
        return _rgb(source)
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8:
            raise ValueError(f"an image array must be [H, W, 3] uint8, got {list(source.shape)} {source.dtype}")
        return Image.fromarray(source)
    path = Path(source)
    try:
        with Image.open(path) as image:
            check_aspect(image.size, path)  # from the header, before decoding
            return _rgb(image)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{printable(path)}: cannot read the image ({error.__class__.__name__}); pass a PNG or JPEG "
                         f"file") from error
    except Image.DecompressionBombError as error:  # Pillow's guard against huge dimensions
        raise ValueError(f"{printable(path)}: the image is too large to decode safely ({error}); pass a smaller "
                         f"photo") from error


def check_aspect(size: tuple[int, int], what: object = "the image") -> None:
    """Raise ValueError for an image (width, height) px wider or taller than MAX_ASPECT : 1, or empty."""
    width, height = size
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise ValueError(f"{printable(what)}: {width} x {height} px is more than {MAX_ASPECT}:1 (or empty); crop it "
                         f"to the scene first")


def preprocess(source: str | Path | Image.Image | np.ndarray, *, scene_px: int,
               mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """[3, scene_px, scene_px] float32 scene, as canvit_core.preprocess.preprocess(scene_px) then HWC -> CHW.

    mean and std are the manifest's; CanViT uses ImageNet's, and anything else raises ValueError.
    """
    if tuple(mean) != tuple(IMAGENET_MEAN) or tuple(std) != tuple(IMAGENET_STD):
        raise ValueError(f"normalization mean={mean} std={std} is not ImageNet's, which CanViT was trained with")
    image = load_image(source)
    if scene_px < 1:
        raise ValueError(f"scene_px {scene_px}: must be >= 1")
    check_aspect(image.size)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized = (scene_px, int(scene_px * long / short))
    size = resized if width <= height else resized[::-1]
    if size != image.size:
        image = image.resize(size, resample=Image.Resampling.BILINEAR)
    top, left = round((image.height - scene_px) / 2.0), round((image.width - scene_px) / 2.0)
    pixels = np.asarray(image.crop((left, top, left + scene_px, top + scene_px)), dtype=np.float32)
    hwc = (pixels / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=np.float32)


def scene_batch(source: str | Path | Image.Image | np.ndarray, *, scene_px: int, batch: int) -> np.ndarray:
    """[batch, 3, S, S] float32: the same preprocessed image for every scene of the batch."""
    scene = preprocess(source, scene_px=scene_px)
    return np.array(np.broadcast_to(scene, (batch, *scene.shape)), dtype=np.float32, copy=True)
