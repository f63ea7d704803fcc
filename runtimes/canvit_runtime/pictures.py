"""What a person looks at after a rollout, drawn with pillow and numpy only (a device has no matplotlib):

- viewpoints.png: the scene with every glimpse's crop as a box, numbered in visiting order;
- segmentation.png: the segmentation (argmax of seg_logits, one palette colour per class, the manifest's) blended
  on the scene, the boxes on top, and a legend of the classes present, largest first;
- entropy.png: the predictive entropy of each canvas cell (seg_entropy, nats) from 0 to ln C, with its scale;
- top_classes(): the top-k classes of class_logits with their softmax probabilities.

Geometry: the scene is S x S px; a canvas cell is S / G px; a viewpoint (row, col, scale) in scene coordinates
[-1, 1] covers the square of side scale * S px centred at ((col + 1) / 2 * S, (row + 1) / 2 * S) (paper App. C.1).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from canvit_runtime.manifest import IMAGENET_MEAN, IMAGENET_STD, Manifest
from canvit_runtime.paths import write_output

BOX_COLOURS = [(255, 255, 255), (255, 220, 0), (0, 230, 255), (255, 80, 200)]
ENTROPY_STOPS = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
"""Colours of the entropy scale from low to high (the plasma colour map's ends and quartiles)."""
LEGEND_WIDTH = 230
LEGEND_ROWS = 14


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def scene_image(scene: np.ndarray) -> Image.Image:
    """[3, S, S] ImageNet-normalized float32 -> the RGB picture it came from (S x S, 8 bits)."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    rgb = np.clip((scene * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))


def viewpoint_box(row: float, col: float, scale: float, size: int) -> tuple[float, float, float, float]:
    """The crop of viewpoint (row, col, scale) as (left, top, right, bottom) px in an S x S picture."""
    half = scale * size / 2
    x, y = (col + 1) / 2 * size, (row + 1) / 2 * size
    return x - half, y - half, x + half, y + half


def draw_boxes(image: Image.Image, viewpoints: list[tuple[float, float, float]]) -> Image.Image:
    """The viewpoints as outlined boxes, coloured by scale (full scene white, quadrants yellow, sixteenths cyan,
    finer magenta), each numbered 1, 2, ... in visiting order at its centre."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = _font(max(10, image.width // 40))
    boxes = [viewpoint_box(row, col, scale, image.width) for row, col, scale in viewpoints]
    colours = [BOX_COLOURS[min(max(round(-math.log2(scale)), 0), len(BOX_COLOURS) - 1)] for _, _, scale in viewpoints]
    for (left, top, right, bottom), colour in zip(boxes, colours, strict=True):
        draw.rectangle((left + 1, top + 1, right - 2, bottom - 2), outline=colour, width=2)
    for t, ((left, top, right, bottom), colour) in enumerate(zip(boxes, colours, strict=True)):  # numbers on top
        draw.text(((left + right) / 2, (top + bottom) / 2), str(t + 1), fill=colour, font=font, anchor="mm",
                  stroke_width=3, stroke_fill=(0, 0, 0))
    return out


def _upsample(cells: np.ndarray, size: int) -> np.ndarray:
    """[G, G, ...] -> [S, S, ...] by repeating each cell (nearest)."""
    index = np.minimum((np.arange(size) * cells.shape[0]) // size, cells.shape[0] - 1)
    return cells[index][:, index]


def segmentation_picture(image: Image.Image, logits: np.ndarray, palette: list[list[int]], names: list[str],
                         viewpoints: list[tuple[float, float, float]], *, alpha: float = 0.55) -> Image.Image:
    """logits [C, G, G]: the argmax map in palette colours blended on the scene, boxes, and a legend of the classes
    present by area (the first LEGEND_ROWS)."""
    labels = logits.argmax(0)
    colours = np.asarray(palette, np.float32)[_upsample(labels, image.width)]
    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
    picture = draw_boxes(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8)), viewpoints)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    canvas = Image.new("RGB", (image.width + LEGEND_WIDTH, image.height), (24, 24, 24))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    draw.text((image.width + 10, 8), f"classes present ({len(present)})", fill=(255, 255, 255), font=font)
    row_height = min(24, (image.height - 40) // LEGEND_ROWS)
    for i, c in enumerate(present[:LEGEND_ROWS]):
        y = 34 + i * row_height
        draw.rectangle((image.width + 10, y, image.width + 28, y + row_height - 6), fill=tuple(palette[c]))
        share = 100.0 * counts[c] / labels.size
        draw.text((image.width + 36, y), f"{names[c][:20]} {share:.0f}%", fill=(235, 235, 235), font=font)
    if len(present) > LEGEND_ROWS:
        draw.text((image.width + 10, 34 + LEGEND_ROWS * row_height), f"+ {len(present) - LEGEND_ROWS} more",
                  fill=(180, 180, 180), font=font)
    return canvas


def _ramp(x: np.ndarray) -> np.ndarray:
    """Positions x in [0, len(ENTROPY_STOPS) - 1], any shape -> RGB float [..., 3], linear between the stops."""
    low = np.minimum(np.floor(x).astype(int), len(ENTROPY_STOPS) - 2)
    frac = (x - low)[..., None]
    return (1 - frac) * ENTROPY_STOPS[low] + frac * ENTROPY_STOPS[low + 1]


def entropy_picture(entropy: np.ndarray, num_classes: int, size: int,
                    viewpoints: list[tuple[float, float, float]]) -> Image.Image:
    """entropy [G, G] in nats, coloured from 0 to ln(num_classes) (the most uncertain: uniform over the classes),
    at size x size px with the boxes, above a scale bar."""
    top = math.log(num_classes)
    rgb = _ramp(np.clip(_upsample(entropy, size) / top, 0.0, 1.0) * (len(ENTROPY_STOPS) - 1))
    picture = draw_boxes(Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)), viewpoints)
    canvas = Image.new("RGB", (size, size + 44), (24, 24, 24))
    canvas.paste(picture, (0, 0))
    bar = _ramp(np.linspace(0, len(ENTROPY_STOPS) - 1, size - 20))
    canvas.paste(Image.fromarray(np.repeat(bar[None].astype(np.uint8), 10, axis=0)), (10, size + 6))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    draw.text((10, size + 20), "0 nats (certain)", fill=(235, 235, 235), font=font)
    label = f"ln {num_classes} = {top:.2f} nats (uniform)"
    draw.text((size - 10 - draw.textlength(label, font=font), size + 20), label, fill=(235, 235, 235), font=font)
    return canvas


def top_classes(logits: np.ndarray, names: list[str] | None, k: int = 5) -> list[tuple[str, float]]:
    """logits [n] -> the k most probable classes as (name, softmax probability), most probable first."""
    z = logits.astype(np.float64) - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i] if names else f"class {i}", float(probs[i])) for i in order]


def save_png(image: Image.Image, path: Path) -> Path:
    """Write `image` as PNG to `path` through canvit_runtime.paths.write_output (never through a symlink)."""
    data = io.BytesIO()
    image.save(data, format="PNG")
    return write_output(path, data.getvalue(), option="--pictures")


def draw_rollout(manifest: Manifest, scene: np.ndarray, viewpoints: list[tuple[float, float, float]],
                 readouts: dict[str, np.ndarray], out: Path, *, index: int = 0) -> list[Path]:
    """Write viewpoints.png and, with a segmentation readout, segmentation.png and entropy.png for scene `index`
    of the batch into folder `out` (created); return the paths. scene [B, 3, S, S]; viewpoints [(row, col, scale)]
    in visiting order; readouts: the last step's readout outputs by name."""
    out.mkdir(parents=True, exist_ok=True)
    image = scene_image(scene[index])
    written = [out / "viewpoints.png"]
    save_png(draw_boxes(image, viewpoints), written[0])
    segmentation = manifest.readout("segmentation")
    if segmentation is not None and "seg_logits" in readouts:
        logits = readouts["seg_logits"][index]
        names = segmentation.class_names or [f"class {i}" for i in range(logits.shape[0])]
        palette = segmentation.palette or [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(len(names))]
        written.append(out / "segmentation.png")
        save_png(segmentation_picture(image, logits, palette, names, viewpoints), written[-1])
        written.append(out / "entropy.png")
        save_png(entropy_picture(readouts["seg_entropy"][index], logits.shape[0], image.width, viewpoints), written[-1])
    return written
