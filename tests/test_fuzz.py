"""Fuzzed inputs (issue 15): the manifest reader, viewpoint files and images always end in one ValueError (the
CLIs' one-line error), never another exception, a crash or a hang. Hypothesis drives the mutations."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from canvit_runtime.manifest import ManifestError, parse_manifest
from canvit_runtime.policies import from_json
from canvit_runtime.preprocess import load_image

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def manifest_dict(export_artifact) -> dict:
    return json.loads((export_artifact("vits16", canvas=16, readout="segmentation") / "manifest.json").read_text())


def paths(value, prefix=()):
    """Every (path, value) in a JSON document, depth first."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def parse_or_manifest_error(text: str) -> None:
    try:
        parse_manifest(text)
    except ManifestError as error:
        assert str(error) and "\n" not in str(error).strip(), repr(error)


@SETTINGS
@given(data=st.data())
def test_mutated_manifests(manifest_dict: dict, data: st.DataObject) -> None:
    """Replace, delete or retype one field anywhere in a real manifest (readouts and all)."""
    document = json.loads(json.dumps(manifest_dict))
    where = data.draw(st.sampled_from([p for p, _ in paths(document) if p]))
    parent = document
    for key in where[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete"]))
    if action == "delete":
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(JSON)
    parse_or_manifest_error(json.dumps(document))


@SETTINGS
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")))
def test_arbitrary_text_as_manifest(text: str) -> None:
    parse_or_manifest_error(text)


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.binary(max_size=40))
def test_truncated_manifests(manifest_dict: dict, cut: int, junk: bytes) -> None:
    text = json.dumps(manifest_dict)
    parse_or_manifest_error(text[: cut % (len(text) + 1)] + junk.decode("latin-1"))


@SETTINGS
@given(document=JSON, batch=st.integers(min_value=1, max_value=3), glimpses=st.none() | st.integers(1, 5))
def test_viewpoint_files(tmp_path: Path, document, batch: int, glimpses: int | None) -> None:
    path = tmp_path / "viewpoints.json"
    path.write_text(json.dumps(document))
    try:
        viewpoints = from_json(path, batch=batch, glimpses=glimpses)
    except ValueError as error:
        assert str(error).startswith(str(path)), error
    else:
        assert viewpoints and all(v.centers.shape == (batch, 2) for v in viewpoints)


def _image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(buffer, format=kind)
    return buffer.getvalue()


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (one tiny IDAT): Pillow's decompression-bomb guard."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")


@SETTINGS
@given(kind=st.sampled_from(["PNG", "JPEG"]), cut=st.integers(min_value=0, max_value=4000),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
       suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".bin"]))
def test_damaged_and_mislabelled_images(tmp_path: Path, kind: str, cut: int, flips, suffix: str) -> None:
    data = bytearray(_image_bytes(kind))
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(bytes(data[: cut % (len(data) + 1)]))
    try:
        image = load_image(path)
    except ValueError as error:
        assert str(error).startswith(str(path)), error
    else:
        assert image.mode == "RGB" and image.size[0] > 0


@pytest.mark.parametrize(("name", "data"), [("empty.png", b""), ("huge.png", _huge_png(100_000, 100_000)),
                                            ("text.jpg", b"not an image at all")])
def test_special_images_are_one_value_error(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"^{path}: "):
        load_image(path)
