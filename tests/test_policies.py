"""Viewpoint policies and preprocessing in numpy, against canvit-pytorch's torch versions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from canvit_runtime.policies import (
    check_viewpoints,
    coarse_to_fine,
    from_json,
    full_then_random,
    make_policy,
    quadtree_level,
    random_iid,
    to_json,
)
from canvit_runtime.preprocess import preprocess


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_quadtree_levels_equal_canvit_pytorch(level: int) -> None:
    from canvit_pytorch.policies.quadtree import quadtree_level_z_order

    assert quadtree_level(level) == [tuple(tile) for tile in quadtree_level_z_order(level)]


def test_c2f_levels_and_seeded_order() -> None:
    viewpoints = coarse_to_fine(batch=3, glimpses=21, seed=7)
    assert len(viewpoints) == 21
    scales = np.stack([v.scales for v in viewpoints])
    assert (scales[0] == 1).all() and (scales[1:5] == 0.5).all() and (scales[5:] == 0.25).all()
    for b in range(3):  # each level visits every tile exactly once
        level1 = {tuple(v.centers[b]) for v in viewpoints[1:5]}
        assert level1 == {(r, c) for r, c, _ in quadtree_level(1)}
        assert {tuple(v.centers[b]) for v in viewpoints[5:]} == {(r, c) for r, c, _ in quadtree_level(2)}
    orders = [[tuple(v.centers[b]) for v in viewpoints[5:]] for b in range(3)]
    assert len(set(map(tuple, orders))) > 1, "each scene of the batch gets its own random order"
    again = coarse_to_fine(batch=3, glimpses=21, seed=7)
    assert all(np.array_equal(a.centers, b.centers) for a, b in zip(viewpoints, again, strict=True))
    other = coarse_to_fine(batch=3, glimpses=21, seed=8)
    assert not all(np.array_equal(a.centers, b.centers) for a, b in zip(viewpoints, other, strict=True))


def test_random_policies_are_valid_and_distributed_as_pretraining() -> None:
    viewpoints = random_iid(batch=4000, glimpses=1, seed=0)[0]
    check_viewpoints(viewpoints.centers, viewpoints.scales, batch=4000)  # raises if any leaves the scene
    s = viewpoints.scales
    assert s.min() >= 0.05 and s.max() <= 1
    # p(s) ∝ 1 - s on [0.05, 1]: E[s] = 0.05 + 0.95 / 3
    assert abs(s.mean() - (0.05 + 0.95 / 3)) < 0.01, s.mean()
    fiid = full_then_random(batch=2, glimpses=5, seed=1)
    assert (fiid[0].scales == 1).all() and (fiid[0].centers == 0).all() and (fiid[1].scales < 1).all()


def test_viewpoints_json_round_trip(tmp_path) -> None:
    viewpoints = full_then_random(batch=2, glimpses=6, seed=3)
    path = tmp_path / "vp.json"
    path.write_text(json.dumps(to_json(viewpoints)))
    back = make_policy(str(path), batch=2, glimpses=6)
    for a, b in zip(viewpoints, back, strict=True):
        np.testing.assert_array_equal(a.centers, b.centers)
        np.testing.assert_array_equal(a.scales, b.scales)
    path.write_text(json.dumps([[0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]))  # one triple per glimpse, broadcast to the batch
    assert from_json(path, batch=2)[1].centers.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    path.write_text(json.dumps([[0.0, 0.0, 1.0], [0.9, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="glimpse 1: viewpoint 0: center"):
        from_json(path, batch=1)
    with pytest.raises(ValueError, match="holds 2 viewpoints, 5 glimpses"):
        from_json(path, batch=1, glimpses=5)


@pytest.mark.parametrize("size", [224, 512])
def test_preprocess_equals_canvit_pytorch(photo, size: int) -> None:
    from canvit_pytorch.preprocess import preprocess as torch_preprocess

    image = Image.fromarray(photo)
    ours = preprocess(image, scene_px=size)
    reference = torch_preprocess(size)(image)
    assert ours.shape == (3, size, size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.numpy(), atol=2e-5)
    with pytest.raises(ValueError, match="not ImageNet"):
        preprocess(image, scene_px=size, mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "rocket"])
@pytest.mark.parametrize("size", [128, 224, 511, 512, 700])
def test_preprocess_equals_canvit_core_bit_for_bit(name: str, size: int) -> None:
    """canvit-runtime restates canvit_core.preprocess (which a device cannot install: Python >= 3.12): the same
    float32 scene, to the bit, for real photos (landscape and portrait, up- and downscaled, odd crops)."""
    import skimage.data
    from canvit_core.preprocess import preprocess as core_preprocess

    photo = getattr(skimage.data, name)()
    for image in (Image.fromarray(photo), Image.fromarray(np.ascontiguousarray(photo.transpose(1, 0, 2)))):
        reference = core_preprocess(size)(image).transpose(2, 0, 1)
        ours = preprocess(image, scene_px=size)
        assert ours.dtype == np.float32 and ours.shape == reference.shape == (3, size, size)
        assert np.array_equal(ours, reference), f"{name} {image.size} -> {size}"
