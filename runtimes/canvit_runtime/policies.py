"""Viewpoint sequences in numpy: full scene, C2F, F-IID, R-IID, and a list read from a JSON file.

A viewpoint is a square crop of the scene: its center (row, col) in scene coordinates [-1, 1]² ((-1, -1) is the
top-left corner) and its scale s, the crop's half side, so it covers s² of the scene (canvit-pytorch viewpoint.py).
Every function returns one `Viewpoints` per glimpse, for a batch of B scenes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canvit_runtime.paths import json_depth_ok, printable, read_regular

MAX_GLIMPSES = 100_000
"""Glimpses in one rollout: its viewpoints are built before the first glimpse (~100 bytes each at batch 1)."""
MAX_VIEWPOINTS_BYTES = 64 << 20
"""A viewpoints JSON file: MAX_GLIMPSES glimpses of batch 8 fit in well under this."""

MIN_SCALE = 0.05
"""Smallest scale CanViT was trained on (canvit-pytorch policies.random.MIN_SCALE; paper Sec. 5.2)."""
TOLERANCE = 1e-6
"""Slack on the viewpoint rule for float32 rounding of tile and random centers."""


@dataclass(frozen=True)
class Viewpoints:
    """One glimpse's viewpoints for a batch: centers [B, 2] float32 (row, col) in [-1, 1]; scales [B] float32."""

    centers: np.ndarray
    scales: np.ndarray


def check_viewpoints(centers: object, scales: object, *, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (centers [B, 2] float32, scales [B] float32).

    A viewpoint is valid when it is finite, 0 < s <= 1 and |row|, |col| <= 1 - s (the crop lies inside the scene;
    paper App. C.1). Raises ValueError naming the offending value.
    """
    c = np.asarray(centers)
    s = np.asarray(scales)
    if c.shape != (batch, 2):
        raise ValueError(f"centers must have shape [{batch}, 2] (row, col), got {list(c.shape)}")
    if s.shape != (batch,):
        raise ValueError(f"scales must have shape [{batch}], got {list(s.shape)}")
    if not (np.issubdtype(c.dtype, np.floating) and np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"centers and scales must be floating point, got {c.dtype} and {s.dtype}")
    c, s = c.astype(np.float32), s.astype(np.float32)
    for b in range(batch):
        row, col, scale = float(c[b, 0]), float(c[b, 1]), float(s[b])
        if not all(math.isfinite(v) for v in (row, col, scale)):
            raise ValueError(f"viewpoint {b} is not finite: center ({row}, {col}), scale {scale}")
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"viewpoint {b}: scale {scale} is outside (0, 1]")
        if max(abs(row), abs(col)) > 1.0 - scale + TOLERANCE:
            raise ValueError(f"viewpoint {b}: center ({row}, {col}) with scale {scale} leaves the scene; "
                             f"need |row|, |col| <= 1 - scale = {1.0 - scale:.6g}")
    return np.ascontiguousarray(c), np.ascontiguousarray(s)


def _same_for_batch(row: float, col: float, scale: float, batch: int) -> Viewpoints:
    return Viewpoints(centers=np.tile(np.array([[row, col]], np.float32), (batch, 1)),
                      scales=np.full(batch, scale, np.float32))


def full_scene(*, batch: int, glimpses: int) -> list[Viewpoints]:
    """The whole scene (center (0, 0), scale 1) at every glimpse."""
    return [_same_for_batch(0.0, 0.0, 1.0, batch) for _ in range(glimpses)]


def quadtree_level(level: int) -> list[tuple[float, float, float]]:
    """Level l tiles the scene with 2^l x 2^l crops of scale 2^-l, in Z-order (canvit-pytorch
    policies.quadtree.quadtree_level_z_order; paper App. F.1): [(row, col, scale)]."""
    n = 2**level
    scale = 1.0 / n

    def z_index(r: int, c: int) -> int:
        return sum((((r >> b) & 1) << (2 * b + 1)) | (((c >> b) & 1) << (2 * b)) for b in range(level))

    cells = sorted(((r, c) for r in range(n) for c in range(n)), key=lambda rc: z_index(*rc))
    return [((2 * r + 1) * scale - 1.0, (2 * c + 1) * scale - 1.0, scale) for r, c in cells]


def coarse_to_fine(*, batch: int, glimpses: int, seed: int) -> list[Viewpoints]:
    """C2F (paper App. F.1): the full scene, its 4 quadrants, its 16 sixteenths, ...; each level's tiles in an
    independent random order per scene (numpy Generator seeded with seed), truncated to `glimpses`."""
    rng = np.random.default_rng(seed)
    out: list[Viewpoints] = []
    level = 0
    while len(out) < glimpses:
        tiles = np.array(quadtree_level(level), np.float32)
        orders = np.stack([rng.permutation(len(tiles)) for _ in range(batch)])
        for i in range(len(tiles)):
            if len(out) == glimpses:
                break
            chosen = tiles[orders[:, i]]
            out.append(Viewpoints(centers=np.ascontiguousarray(chosen[:, :2]), scales=np.ascontiguousarray(chosen[:, 2])))
        level += 1
    return out


def random_viewpoints(rng: np.random.Generator, *, batch: int, min_scale: float = MIN_SCALE) -> Viewpoints:
    """Pretraining's random viewpoints (paper Sec. 5.2; canvit-pytorch policies.random.random_viewpoints):
    A ~ U[0, (1 - min_scale)^2], s = 1 - sqrt(A), center uniform in the box of half side sqrt(A) = 1 - s,
    so p(s) is proportional to 1 - s on [min_scale, 1]."""
    half_side = np.sqrt(rng.random(batch) * (1.0 - min_scale) ** 2)
    centers = (rng.random((batch, 2)) * 2.0 - 1.0) * half_side[:, None]
    return Viewpoints(centers=centers.astype(np.float32), scales=(1.0 - half_side).astype(np.float32))


def full_then_random(*, batch: int, glimpses: int, seed: int) -> list[Viewpoints]:
    """F-IID: the full scene, then random viewpoints (seeded)."""
    rng = np.random.default_rng(seed)
    return full_scene(batch=batch, glimpses=min(1, glimpses)) + [
        random_viewpoints(rng, batch=batch) for _ in range(glimpses - 1)]


def random_iid(*, batch: int, glimpses: int, seed: int) -> list[Viewpoints]:
    """R-IID: random viewpoints from the first glimpse on (seeded)."""
    rng = np.random.default_rng(seed)
    return [random_viewpoints(rng, batch=batch) for _ in range(glimpses)]


def from_json(path: str | Path, *, batch: int, glimpses: int | None = None) -> list[Viewpoints]:
    """Viewpoints from a JSON file: {"viewpoints": [...]} or a bare list, one entry per glimpse, each either
    [row, col, scale] (the same for every scene of the batch) or a list of B such triples. Keeps the first
    `glimpses` entries when given. Raises ValueError on an unreadable file or a malformed or invalid entry."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_VIEWPOINTS_BYTES).decode("utf-8")
        if not json_depth_ok(text, 4):
            raise ValueError("nested deeper than [[row, col, scale], ...] allows")
        data = json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"{printable(path)}: cannot read viewpoints ({printable(error, 120)})") from error
    entries = data.get("viewpoints") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of [row, col, scale] viewpoints")
    if glimpses is not None:
        if len(entries) < glimpses:
            raise ValueError(f"{path}: holds {len(entries)} viewpoints, {glimpses} glimpses asked for")
        entries = entries[:glimpses]
    out = []
    for t, entry in enumerate(entries):
        numbers = entry if isinstance(entry, list) and entry and isinstance(entry[0], list) else [entry]
        if not all(isinstance(n, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in n)
                   for n in numbers):
            raise ValueError(f"{printable(path)}: viewpoint {t} must be [row, col, scale] numbers or {batch} such "
                             f"triples, got {printable(str(entry), 60)}")
        try:
            triples = np.asarray(entry, dtype=np.float64)
        except (TypeError, ValueError) as error:  # a dict, a string, a ragged list
            raise ValueError(f"{path}: viewpoint {t} must be [row, col, scale] or {batch} such triples, got "
                             f"{str(entry)[:60]}") from error
        if triples.shape == (3,):
            triples = np.tile(triples, (batch, 1))
        if triples.shape != (batch, 3):
            raise ValueError(f"{path}: viewpoint {t} must be [row, col, scale] or {batch} such triples, got {entry!r}")
        try:
            centers, scales = check_viewpoints(triples[:, :2], triples[:, 2], batch=batch)
        except ValueError as error:
            raise ValueError(f"{path}: glimpse {t}: {error}") from error
        out.append(Viewpoints(centers=centers, scales=scales))
    return out


def to_json(viewpoints: list[Viewpoints]) -> dict[str, object]:
    """The JSON form from_json reads: one list of B [row, col, scale] triples per glimpse."""
    return {"viewpoints": [[[float(v.centers[b, 0]), float(v.centers[b, 1]), float(v.scales[b])]
                            for b in range(len(v.scales))] for v in viewpoints]}


def quadtree_level_row_major(level: int) -> list[tuple[float, float, float]]:
    """Level l's 2^l x 2^l tiles in row-major order (canvit-pytorch policies.quadtree.quadtree_level), the order in
    which EG-C2F breaks ties: [(row, col, scale)]."""
    n = 2**level
    scale = 1.0 / n
    return [((2 * r + 1) * scale - 1.0, (2 * c + 1) * scale - 1.0, scale) for r in range(n) for c in range(n)]


def levels_covering(glimpses: int) -> int:
    """How many quadtree levels (1, 4, 16, ... tiles) it takes to reach `glimpses` viewpoints."""
    levels, total = 0, 0
    while total < glimpses:
        total += 4**levels
        levels += 1
    return levels


class EntropyGuidedC2F:
    """EG-C2F (paper App. F.1; canvit-pytorch policies.entropy.EntropyGuidedC2F, in numpy): C2F's quadtree levels in
    order; within a level, the unvisited tile whose canvas cells have the highest mean predictive entropy, the first
    in row-major order on ties. Deterministic; adaptive: each viewpoint depends on the segmentation entropy of the
    state before that glimpse, which is the `seg_entropy` readout [B, G, G] (nats) of the previous step.

        policy = EntropyGuidedC2F(batch=1, glimpses=21, canvas_grid=32)
        entropy = None
        for t in range(21):
            v = policy.viewpoint(t, entropy)          # glimpse 0 is the full scene and needs no entropy
            entropy = session.step(scene, v.centers, v.scales).extras["seg_entropy"]

    Raises ValueError for a canvas grid that is not a power of two (tiles must align with canvas cells) and for a
    missing or misshapen entropy map.
    """

    def __init__(self, *, batch: int, glimpses: int, canvas_grid: int) -> None:
        if canvas_grid < 1 or canvas_grid & (canvas_grid - 1):
            raise ValueError(f"EG-C2F needs a power-of-two canvas grid (its quadtree tiles align with canvas cells); "
                             f"this artifact's is {canvas_grid}: re-export with --canvas 16, 32 or 64")
        self.batch, self.canvas_grid = batch, canvas_grid
        self.levels = [np.array(quadtree_level_row_major(level), np.float32) for level in range(levels_covering(glimpses))]
        self.level_start = [sum(len(tiles) for tiles in self.levels[:i]) for i in range(len(self.levels))]
        cells = ((np.arange(canvas_grid, dtype=np.float32) + 0.5) / canvas_grid * 2 - 1).astype(np.float32)
        self.masks = []  # per level: [n_tiles, G, G] float32, 1 on the canvas cells each tile covers
        for tiles in self.levels:
            in_rows = np.abs(cells[None, :] - tiles[:, 0:1]) <= tiles[:, 2:3]
            in_cols = np.abs(cells[None, :] - tiles[:, 1:2]) <= tiles[:, 2:3]
            self.masks.append((in_rows[:, :, None] & in_cols[:, None, :]).astype(np.float32))
        self.cells_per_tile = [np.maximum(masks.sum(axis=(1, 2)), 1.0) for masks in self.masks]
        self.visited: np.ndarray | None = None  # [B, n_tiles] of the level being visited
        self.chosen: list[np.ndarray] = []  # the tile index chosen at each glimpse, [B]

    def viewpoint(self, t: int, entropy: np.ndarray | None) -> Viewpoints:
        """The viewpoints of glimpse t (0-based, in order) given the entropy of the state before it."""
        level = max(i for i, start in enumerate(self.level_start) if t >= start)
        tiles = self.levels[level]
        if level == 0:
            self.chosen.append(np.zeros(self.batch, np.int64))
            return _same_for_batch(float(tiles[0, 0]), float(tiles[0, 1]), float(tiles[0, 2]), self.batch)
        shape = (self.batch, self.canvas_grid, self.canvas_grid)
        if entropy is None or tuple(np.shape(entropy)) != shape:
            raise ValueError(f"EG-C2F at glimpse {t} needs the seg_entropy readout {list(shape)} of the previous "
                             f"step, got {None if entropy is None else list(np.shape(entropy))}")
        if t == self.level_start[level]:
            self.visited = np.zeros((self.batch, len(tiles)), bool)
        assert self.visited is not None
        masks, cells_per_tile = self.masks[level], self.cells_per_tile[level]
        mean = (np.asarray(entropy, np.float32)[:, None] * masks[None]).sum(axis=(2, 3)) / cells_per_tile[None]
        chosen = np.where(self.visited, -np.inf, mean).argmax(axis=1)
        self.visited[np.arange(self.batch), chosen] = True
        self.chosen.append(chosen)
        selected = tiles[chosen]
        return Viewpoints(centers=np.ascontiguousarray(selected[:, :2]), scales=np.ascontiguousarray(selected[:, 2]))


ADAPTIVE_POLICIES = ("eg-c2f",)
"""Policies that choose each viewpoint from the step's readouts (canvit_runtime.rollout drives them)."""


POLICIES: dict[str, Callable[..., list[Viewpoints]]] = {
    "full": lambda *, batch, glimpses, seed: full_scene(batch=batch, glimpses=glimpses),
    "c2f": coarse_to_fine,
    "f-iid": full_then_random,
    "r-iid": random_iid,
}


def make_policy(name: str, *, batch: int, glimpses: int, seed: int = 0) -> list[Viewpoints]:
    """The viewpoints of `glimpses` glimpses under a named policy (full, c2f, f-iid, r-iid) or, for any other
    name, read from that JSON file. Raises ValueError on an unknown name that is no file."""
    if glimpses > MAX_GLIMPSES:
        raise ValueError(f"--glimpses {glimpses}: at most {MAX_GLIMPSES} in one rollout (reset and roll out again for "
                         f"more)")
    if name in POLICIES:
        return POLICIES[name](batch=batch, glimpses=glimpses, seed=seed)
    if name in ADAPTIVE_POLICIES:
        raise ValueError(f"policy {name!r} chooses each viewpoint from the step's readouts: run it with "
                         f"canvit_runtime.rollout.rollout (or --policy {name} on a command)")
    if Path(name).is_file():
        return from_json(name, batch=batch, glimpses=glimpses)
    raise ValueError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)} or a path to a viewpoints JSON file")
