"""Readouts (segmentation, classification, features) in the step graph, the float32 rule on their path, EG-C2F in
numpy against canvit-pytorch's own, parity on a real photo, and the pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

import canvit_runtime
from canvit_export.cli import main
from canvit_export.parity import EgC2F, parity_command
from canvit_export.precision import audit_onnx
from canvit_runtime.manifest import load_manifest
from canvit_runtime.pictures import draw_rollout, top_classes, viewpoint_box
from canvit_runtime.policies import EntropyGuidedC2F
from canvit_runtime.preprocess import scene_batch
from canvit_runtime.rollout import rollout
from canvit_runtime.verdict import TOLERANCES
from conftest import manifest_round_trip

ALL = "segmentation,classification,features"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_readouts_in_the_graph_and_the_manifest(export_artifact) -> None:
    artifact = export_artifact("vits16", canvas=16, readout=ALL)
    manifest = manifest_round_trip(artifact)
    outputs = {t.name: t for t in manifest.outputs}
    assert [r.name for r in manifest.readouts] == ["segmentation", "classification", "features"]
    assert outputs["seg_logits"].shape == [1, 150, 16, 16] and outputs["seg_entropy"].shape == [1, 16, 16]
    assert outputs["seg_entropy"].unit == "nats" and outputs["class_logits"].shape == [1, 1000]
    assert outputs["teacher_patches"].shape == [1, 256, 384]
    seg = manifest.readout("segmentation")
    assert seg is not None and seg.class_names is not None and seg.palette is not None
    assert seg.class_names[:3] == ["wall", "building", "sky"] and len(seg.palette) == 150  # ADE20K's order
    clf = manifest.readout("classification")
    assert clf is not None and clf.class_names is not None and clf.class_names[0] == "tench"  # ImageNet-1k's
    model = onnx.load(str(artifact / "step.onnx"))
    assert [o.name for o in model.graph.output] == [t.name for t in manifest.outputs]
    report = audit_onnx(model)
    assert report.ok, report.violations
    assert report.readout_tensors > 10
    # no LogSoftmax: every runtime runs the entropy (canvit-pytorch's browser export writes it so too)
    assert "LogSoftmax" not in report.op_counts, report.op_counts


def test_audit_catches_a_narrowed_readout(export_artifact) -> None:
    """A float16 round trip slipped in after the probe's LayerNorm of the canvas must be reported."""
    model = onnx.load(str(export_artifact("vits16", canvas=16, readout="segmentation") / "step.onnx"))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    ln = None
    for node in graph.node:  # the probe's LayerNormalization: in the readout region, fed from canvas_next
        if node.op_type == "LayerNormalization":
            source = node.input[0]
            while source in producers and source != "canvas_next":
                source = producers[source].input[0]
            if source == "canvas_next":
                ln = node
    assert ln is not None, "the probe's LayerNorm reads canvas_next"
    original = ln.output[0]
    ln.output[0] = original + "_wide"
    index = list(graph.node).index(ln)
    graph.node.insert(index + 1, helper.make_node("Cast", [original + "_wide"], [original + "_half"], to=TensorProto.FLOAT16))
    graph.node.insert(index + 2, helper.make_node("Cast", [original + "_half"], [original], to=TensorProto.FLOAT))
    violations = audit_onnx(model).violations
    assert any("readout tensor" in v and "float16" in v for v in violations), violations


def test_random_heads_are_not_near_uniform(export_artifact, photo) -> None:
    """Seeded random heads at trained-like magnitudes: class distributions far from uniform (canvit-pytorch's own
    probe init, N(0, 0.01), gives entropies of ~ln C everywhere)."""
    session = canvit_runtime.open(export_artifact("vits16", canvas=16, readout=ALL))
    scene = scene_batch(photo, scene_px=512, batch=1)
    _, result = rollout(session, scene, "c2f", glimpses=5)
    entropy = result.extras["seg_entropy"]
    assert entropy.max() < 0.8 * np.log(150), entropy.max()
    assert result.extras["class_logits"].std() > 1.0
    assert 0.3 < result.extras["teacher_patches"].std() < 3.0, "standardized features: about unit variance"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_parity_with_eg_c2f_on_a_photo(export_artifact, photo, tmp_path: Path, runtime: str) -> None:
    """21 EG-C2F glimpses: readouts within 1e-4 of canvit-pytorch's heads, argmax maps and top-1 identical, and
    the viewpoint sequence identical to canvit-pytorch's EntropyGuidedC2F, each side choosing from its own state."""
    report = parity_command(artifact=export_artifact("vits16", canvas=16, readout=ALL), runtime=runtime, loaded=None,
                            image=photo, policy="eg-c2f", glimpses=21, seed=0, threads=None,
                            report_path=tmp_path / "r.json", pictures=tmp_path / "pictures")
    assert report.passed, report.failures
    assert report.eg_c2f == EgC2F(identical=True, first_divergence=None, agreement=1.0)
    worst = report.worst
    for name in ("seg_logits", "class_logits", "teacher_patches"):
        assert 0 < worst[f"{name}_rel_l2"] <= 1e-4, worst
    assert worst["seg_agreement"] == 1.0 and worst["top1_agreement"] == 1.0
    scales = [r.scale for r in report.per_glimpse]
    assert scales == [1.0] + [0.5] * 4 + [0.25] * 16, "C2F's levels, in order"
    assert len(report.top5) == 5 and all(0 < p < 1 for _, p in report.top5)
    assert [Path(p).name for p in report.pictures] == ["viewpoints.png", "segmentation.png", "entropy.png",
                                                          "drift.png"]
    from PIL import Image

    with Image.open(tmp_path / "pictures" / "drift.png") as drift:
        assert drift.size == (1200, 480)
    written = json.loads((tmp_path / "r.json").read_text())  # the file is the typed report, field by field
    assert written["eg_c2f"] == {"identical": True, "first_divergence": None, "agreement": 1.0}
    assert [g["scale"] for g in written["per_glimpse"]] == scales and written["worst"] == worst
    assert written["top5"] == [list(pair) for pair in report.top5] and written["pictures"] == report.pictures
    assert (written["policy"], written["seed"], written["glimpses"]) == ("eg-c2f", 0, 21)
    assert "report_path" not in written and report.report_path == str(tmp_path / "r.json")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_readouts(export_artifact, photo, tmp_path: Path, precision: str) -> None:
    """fp16/bf16 graphs (readouts float32): rel-L2, argmax agreement and top-1 within the precision's tolerances on
    21 C2F glimpses, and the EG-C2F sequences compared with the first divergence reported."""
    artifact = export_artifact("vits16", canvas=16, precision=precision, readout="segmentation,classification")
    assert audit_onnx(onnx.load(str(artifact / "step.onnx"))).ok
    report = parity_command(artifact=artifact, runtime="onnxruntime", loaded=None, image=photo, policy="c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures
    worst = report.worst
    assert 1e-6 < worst["seg_logits_rel_l2"] <= TOLERANCES[precision]["readout_rel_l2"], worst
    eg = parity_command(artifact=artifact, runtime="onnxruntime", loaded=None, image=photo, policy="eg-c2f",
                        glimpses=21, seed=0, threads=None, report_path=tmp_path / "eg.json")
    assert eg.eg_c2f.first_divergence is None or eg.eg_c2f.first_divergence >= 1
    assert eg.passed, eg.failures  # a divergence fails fp32 only; errors before it stay within tolerance


def test_eg_c2f_equals_canvit_pytorch_on_random_entropy_maps() -> None:
    """canvit_runtime's numpy EG-C2F and canvit-pytorch's EntropyGuidedC2F fed the same segmentation logits
    (random, and all equal for ties) choose the same 21 viewpoints, batch 2, canvas 8 and 32."""
    from canvit_pytorch import RecurrentState
    from canvit_pytorch.policies.entropy import EntropyGuidedC2F as Reference
    from canvit_pytorch.policies.entropy import predictive_entropy

    rng = np.random.default_rng(0)
    for grid in (8, 32):
        for tie in (False, True):
            ours = EntropyGuidedC2F(batch=2, glimpses=21, canvas_grid=grid)
            theirs = Reference(batch_size=2, device=torch.device("cpu"), num_glimpses=21, canvas_grid_size=grid,
                               canvas_logits=lambda logits: logits)
            chosen = []
            for t in range(21):  # the segmentation of the state before glimpse t, as both policies see it
                logits = torch.zeros(2, 5, grid, grid) if tie else torch.from_numpy(
                    rng.normal(0, 2, (2, 5, grid, grid)).astype(np.float32))
                mine = ours.viewpoint(t, predictive_entropy(logits).numpy())
                ref = theirs.step(t, RecurrentState(canvas=logits, recurrent_cls=torch.zeros(2, 1, 4)))
                np.testing.assert_array_equal(mine.centers, ref.centers.numpy())
                np.testing.assert_array_equal(mine.scales, ref.scales.numpy())
                chosen.append(tuple(map(tuple, mine.centers.tolist())))
            assert len(set(chosen)) == 21, "every tile of levels 0-2 visited once"
    with pytest.raises(ValueError, match="power-of-two canvas grid"):
        EntropyGuidedC2F(batch=1, glimpses=5, canvas_grid=12)


def test_eg_c2f_refused_without_a_segmentation_readout(export_artifact, photo, tmp_path: Path) -> None:
    code, output = run("parity", "--artifact", str(export_artifact("vits16", canvas=16)), "--policy", "eg-c2f",
                       "--glimpses", "2")
    assert code == 2 and output.strip().splitlines() == [output.strip()], output
    assert "has no segmentation readout: re-export with --readout segmentation" in output
    Image.fromarray(photo).save(tmp_path / "photo.png")
    from canvit_runtime.cli import main as runtime_main

    result = CliRunner().invoke(runtime_main, ["run", "--artifact", str(export_artifact("vits16", canvas=16)),
                                               "--image", str(tmp_path / "photo.png"), "--policy", "eg-c2f"])
    assert result.exit_code == 2 and "re-export with --readout segmentation" in result.output


def test_runtime_run_prints_classes_and_draws(export_artifact, photo, tmp_path: Path) -> None:
    from canvit_runtime.cli import main as runtime_main

    Image.fromarray(photo).save(tmp_path / "photo.png")
    result = CliRunner().invoke(runtime_main, ["run", "--artifact", str(export_artifact("vits16", canvas=16, readout=ALL)),
                                               "--image", str(tmp_path / "photo.png"), "--policy", "eg-c2f",
                                               "--glimpses", "5", "--pictures", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "eg-c2f: median step" in result.output and "top-5 classes: " in result.output
    sizes = {name: Image.open(tmp_path / "p" / name).size for name in ("viewpoints.png", "segmentation.png", "entropy.png")}
    assert sizes == {"viewpoints.png": (512, 512), "segmentation.png": (512 + 230, 512), "entropy.png": (512, 556)}


def test_pictures_draw_what_they_are_given(export_artifact, tmp_path: Path) -> None:
    """A hand-made argmax map (left half class 3, right half class 7): the overlay's colours are the palette's
    blended on the scene, the legend's first entries are those two classes, and boxes sit where viewpoints say."""
    manifest = load_manifest(export_artifact("vits16", canvas=16, readout="segmentation"))
    seg = manifest.readout("segmentation")
    assert seg is not None and seg.palette is not None
    logits = np.zeros((1, 150, 16, 16), np.float32)
    logits[0, 3, :, :8] = 5.0
    logits[0, 7, :, 8:] = 5.0
    entropy = np.zeros((1, 16, 16), np.float32)
    scene = np.zeros((1, 3, 512, 512), np.float32)  # the ImageNet mean: a grey picture
    paths = draw_rollout(manifest, scene, [(0.0, 0.0, 1.0), (-0.5, 0.5, 0.5)],
                         {"seg_logits": logits, "seg_entropy": entropy}, tmp_path)
    overlay = np.asarray(Image.open(paths[1]).convert("RGB"), np.float32)
    grey = np.array([0.485, 0.456, 0.406]) * 255
    for x, cls in ((100, 3), (400, 7)):
        expected = 0.45 * grey + 0.55 * np.asarray(seg.palette[cls])
        np.testing.assert_allclose(overlay[300, x], expected, atol=1.5)
    assert viewpoint_box(-0.5, 0.5, 0.5, 512) == (256.0, 0.0, 512.0, 256.0)
    assert top_classes(np.array([0.0, 2.0, 1.0]), ["a", "b", "c"], k=2)[0][0] == "b"


@pytest.mark.parametrize(("args", "needle"), [
    (["--readout", "depth"], "--readout depth: choose from segmentation, classification, features"),
    (["--probe", "nowhere/probe-x", "--readout", "classification"], "--probe is the segmentation readout's"),
])
def test_bad_readout_options(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "o"
    code, output = run("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "8", "--scene", "256", *args,
                       "--out", str(out))
    assert code == 2 and needle in output and len(output.strip().splitlines()) == 1, output
    assert not out.exists()


def test_probe_and_classifier_checkpoints(tmp_path: Path, vits16, photo) -> None:
    """A SegmentationProbe and a classification checkpoint written by canvit-pytorch's save_pretrained export through
    --probe DIR and --model DIR; parity rebuilds both from the manifest alone. A pretraining checkpoint has no
    classifier and a classification checkpoint no feature head: each is refused with one line."""
    from canvit_pytorch import CanViTConfig, CanViTForImageClassification

    from canvit_export.readouts import random_probe

    random_probe(vits16.canvit, seed=7).save_pretrained(tmp_path / "probe")
    classifier = CanViTForImageClassification(canvit_config=CanViTConfig(backbone_name="vits16"), n_classes=10)
    classifier.canvit.load_state_dict(vits16.canvit.state_dict())
    classifier.save_pretrained(tmp_path / "clf")
    out = tmp_path / "a"
    code, output = run("onnx", "--model", str(tmp_path / "clf"), "--canvas", "8", "--scene", "256", "--readout",
                       "segmentation,classification", "--probe", str(tmp_path / "probe"), "--out", str(out))
    assert code == 0, output
    manifest = load_manifest(out)
    assert [r.source.kind for r in manifest.readouts] == ["checkpoint", "model"]
    assert manifest.readout("classification").class_names == [f"class {i}" for i in range(10)]  # type: ignore[union-attr]
    Image.fromarray(photo).save(tmp_path / "photo.png")
    code, output = run("parity", "--artifact", str(out), "--glimpses", "3", "--image", str(tmp_path / "photo.png"),
                       "--report", str(tmp_path / "r.json"))
    assert code == 0 and "PASS" in output, output
    assert json.loads((tmp_path / "r.json").read_text())["worst"]["seg_logits_rel_l2"] <= 1e-4
    code, output = run("onnx", "--model", str(tmp_path / "clf"), "--canvas", "8", "--readout", "features",
                       "--out", str(tmp_path / "b"))
    assert code == 2 and "--readout features needs a pretraining checkpoint" in output
    code, output = run("onnx", "--model", str(tmp_path / "clf"), "--canvas", "8", "--readout", "segmentation",
                       "--out", str(tmp_path / "c"))
    assert code == 2 and "--readout segmentation needs a probe" in output
    code, output = run("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "8", "--readout",
                       "segmentation", "--probe", str(tmp_path / "clf"), "--out", str(tmp_path / "d"))
    assert code == 2 and "canvit-pytorch cannot load this SegmentationProbe" in output, output


@pytest.mark.slow
def test_vitb16_readouts_parity_with_eg_c2f(export_artifact, photo, tmp_path: Path) -> None:
    """CanViT-B, canvas 32, all three readouts: 21 EG-C2F glimpses on ONNX Runtime within the fp32 bounds, the
    viewpoint sequence identical to canvit-pytorch's."""
    import shutil

    artifact = export_artifact("vitb16", canvas=32, readout=ALL)
    report = parity_command(artifact=artifact, runtime="onnxruntime", loaded=None, image=photo, policy="eg-c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures
    assert report.eg_c2f.identical and report.worst["teacher_patches_rel_l2"] <= 1e-4
    assert load_manifest(artifact).readout("features") is not None
    shutil.rmtree(artifact)  # 390 MB
