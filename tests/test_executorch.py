"""The ExecuTorch target: one stateful ViT-S .pte (canvas 8, segmentation readout) exported once per session (and one
fp16 program with the state as inputs and outputs), run on
canvit-runtime's torch-free runner (executorch-numpy-runtime) against canvit-pytorch; the state carries and starts at
the learned initial state (and a program that does not carry its state fails the same check); the audit reports a
narrowed canvas; a static INT8 program (glimpse backbone quantized, calibrated on a small rollout set) passes the int8
gates; the command refuses what it cannot export in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="canvit-export[executorch] is not installed (executorch)")
pytest.importorskip("executorch_numpy_runtime", reason="canvit-runtime[executorch] is not installed")

import canvit_runtime
from canvit_export.export.artifact import Geometry
from canvit_export.export.executorch import (
    PROGRAM,
    StatefulStep,
    _attention,
    _layer_norm,
    _unbind,
    audit_program,
    export_executorch,
    export_program,
    lower,
    serialize,
)
from canvit_export.parity import parity_command
from canvit_export.precision import step_precision
from canvit_export.step import GlimpseStep
from canvit_runtime.executorch import load_method
from canvit_runtime.manifest import ExecuTorchArtifact, load_manifest
from canvit_runtime.preprocess import scene_batch
from conftest import EXECUTORCH_CANVAS, GLIMPSE_PX, SCENE_PX, invoke, manifest_round_trip

CANVAS = EXECUTORCH_CANVAS
VIEWPOINTS = [((0.0, 0.0), 1.0), ((0.5, -0.5), 0.5), ((-0.25, 0.25), 0.25), ((0.6, 0.6), 0.3)]
"""A short rollout: the full scene, then three glimpses inside it (|row|, |col| <= 1 - s)."""


@pytest.fixture(scope="session")
def pte_fp16_stateless(vits16, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`--precision fp16 --no-stateful`, canvas 8, segmentation readout: one export covers both (CI time)."""
    from canvit_export.readouts import load_heads

    out = tmp_path_factory.mktemp("executorch") / "vits16-c8-fp16-stateless-pte"
    heads = load_heads(vits16, ["segmentation"], probe=None, seed=0)
    export_executorch(vits16, Geometry(batch=1, scene_px=SCENE_PX, glimpse_px=GLIMPSE_PX, canvas_grid=CANVAS), out,
                      precision="fp16", stateful=False, heads=heads, quiet=True)
    return out


@pytest.fixture(scope="session")
def pte_int8(vits16, export_artifact, photo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`--precision int8`, stateful, canvas 8, segmentation readout, calibrated on 3 samples (one photo, 3 C2F
    glimpses of the fp32 ONNX step: the smallest set, for CI time)."""
    from PIL import Image

    from canvit_export.calibration import record_calibration
    from canvit_export.readouts import load_heads

    folder = tmp_path_factory.mktemp("executorch-int8")
    (folder / "photos").mkdir()
    Image.fromarray(photo).save(folder / "photos" / "chelsea.png")
    record_calibration(export_artifact("vits16", canvas=CANVAS), folder / "calibration", images=folder / "photos",
                       policies=("c2f",), glimpses=3, quiet=True)
    heads = load_heads(vits16, ["segmentation"], probe=None, seed=0)
    export_executorch(vits16, Geometry(batch=1, scene_px=SCENE_PX, glimpse_px=GLIMPSE_PX, canvas_grid=CANVAS),
                      folder / "pte", precision="int8", heads=heads, calibration=folder / "calibration", quiet=True)
    return folder / "pte"


def reference_rollout(vits16, scene: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """canvit-pytorch's state (canvas, recurrent CLS) after each glimpse of VIEWPOINTS, from CanViT.init_state."""
    step = GlimpseStep(vits16.canvit, glimpse_px=GLIMPSE_PX, canvas_grid=CANVAS).eval()
    state = vits16.canvit.init_state(batch_size=1, canvas_grid_size=CANVAS)
    canvas, cls = state.canvas.detach().float(), state.recurrent_cls.detach().float()
    states = []
    with torch.no_grad():
        for (row, col), scale in VIEWPOINTS:
            canvas, cls = step(torch.from_numpy(scene), canvas, cls, torch.tensor([[row, col]]), torch.tensor([scale]))[:2]
            states.append((canvas.numpy().copy(), cls.numpy().copy()))
    return states


def program_rollout(method, scene: np.ndarray, *, resets: list[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A stateful program's (canvas_next, recurrent_cls_next) after each glimpse of VIEWPOINTS, fed `resets`."""
    states = []
    for ((row, col), scale), reset in zip(VIEWPOINTS, resets, strict=True):
        outputs = method([scene, np.array([[row, col]], np.float32), np.array([scale], np.float32),
                          np.array([reset], np.float32)])
        states.append((outputs[0], outputs[1]))
    return states


def worst_rel(states, reference) -> float:
    return max(float(np.linalg.norm(a - r) / np.linalg.norm(r))
               for got, want in zip(states, reference, strict=True) for a, r in zip(got, want, strict=True))


def test_parity_fp32_c2f(pte: Path, vits16, photo, tmp_path: Path, report_figure) -> None:
    """fp32 within 1e-4 of canvit-pytorch (canvas, CLS, segmentation readout) over 21 C2F glimpses."""
    report = parity_command(artifact=pte, runtime="executorch", loaded=vits16, image=photo, policy="c2f", glimpses=21,
                            seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures[:3]
    assert report.runtime == "executorch" and report.glimpses == 21
    assert report.worst["canvas_rel_l2"] < 1e-4 and report.worst["cls_rel_l2"] < 1e-4
    report_figure(f"executorch ViT-S c{CANVAS} c2f: canvas rel-L2 {report.worst['canvas_rel_l2']:.1e}, "
                  f"{report.median_ms['runtime']:.0f} ms a glimpse")


def test_parity_command_eg_c2f(pte: Path, tmp_path: Path) -> None:
    """`canvit-export parity --artifact DIR --runtime executorch --policy eg-c2f` as typed (the weights found from
    the manifest alone) prints PASS: fp32 within 1e-4 over 21 glimpses, and the runtime picks, from its own
    seg_entropy, exactly the viewpoints canvit-pytorch's EntropyGuidedC2F picks."""
    from canvit_export.cli import main

    code, output = invoke(main, "parity", "--artifact", pte, "--runtime", "executorch", "--policy", "eg-c2f",
                          "--report", tmp_path / "r.json")
    assert code == 0 and "PASS" in output, output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["runtime"] == "executorch" and report["glimpses"] == 21, report
    assert report["worst"]["canvas_rel_l2"] < 1e-4 and report["worst"]["cls_rel_l2"] < 1e-4, report["worst"]
    assert report["eg_c2f"]["identical"] and report["eg_c2f"]["agreement"] == 1.0, report["eg_c2f"]


def test_fp16_with_the_state_as_inputs_and_outputs(pte_fp16_stateless: Path, vits16, photo, tmp_path: Path,
                                                   report_figure) -> None:
    """`--no-stateful` takes and returns the state (the runner feeds it back) and fp16 passes the fp16 gate over
    EG-C2F glimpses (8: XNNPACK takes no cast, so fp16 runs in about a hundred delegates), its canvas
    float32 (audit clean, delegate boundaries included); it is narrower than fp32 (error above fp32 rounding)."""
    manifest = manifest_round_trip(pte_fp16_stateless)
    facts = manifest.artifact
    assert isinstance(facts, ExecuTorchArtifact) and not manifest.stateful and facts.state_buffers == {}
    assert facts.inputs == ["scene", "canvas", "recurrent_cls", "centers", "scales"]
    assert manifest.outputs[0].name == "canvas_next" and manifest.precision.name == "fp16"
    assert not facts.program_audit.violations
    report = parity_command(artifact=pte_fp16_stateless, runtime="executorch", loaded=vits16, image=photo,
                            policy="eg-c2f", glimpses=8, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures[:3]
    assert report.worst["canvas_rel_l2"] < 2e-2 and report.worst["canvas_rel_l2"] > 1e-5, report.worst
    report_figure(f"executorch ViT-S c{CANVAS} fp16 stateless eg-c2f: canvas rel-L2 "
                  f"{report.worst['canvas_rel_l2']:.1e}, {report.median_ms['runtime']:.0f} ms a glimpse")


def test_int8_quantizes_the_glimpse_backbone_and_passes_the_int8_gates(pte_int8: Path, vits16, photo, tmp_path: Path,
                                                                      report_figure) -> None:
    """int8: every linear of the backbone blocks holds per-channel int8 weights between Q/DQ ops and the program is
    smaller than the fp32 weights by at least 2 bytes a quantized weight; the canvas path and readouts stay float32
    (audit clean); parity at the int8 gates over 21 C2F glimpses, and further from fp32 than fp32 rounding."""
    manifest = manifest_round_trip(pte_int8)
    facts = manifest.artifact
    assert isinstance(facts, ExecuTorchArtifact) and manifest.precision.name == "int8"
    assert manifest.precision.calibration is not None and manifest.precision.calibration.samples == 3
    blocks = [m for name, m in vits16.canvit.named_modules()
              if name.startswith("backbone.blocks.") and isinstance(m, torch.nn.Linear)]
    assert len(blocks) == 48
    assert facts.op_counts.get("quantized_decomposed.dequantize_per_channel") == len(blocks), facts.op_counts
    assert facts.op_counts.get("quantized_decomposed.quantize_per_tensor", 0) >= len(blocks)
    assert not facts.program_audit.violations and len(facts.program_audit.canvas_stream) >= 2
    fp32_bytes = 4 * sum(p.numel() for p in vits16.canvit.parameters())
    quantized = sum(m.weight.numel() for m in blocks)
    assert manifest.files["program"].bytes < fp32_bytes - 2 * quantized, (manifest.files["program"].bytes, fp32_bytes)
    report = parity_command(artifact=pte_int8, runtime="executorch", loaded=vits16, image=photo, policy="c2f",
                            glimpses=21, seed=0, threads=None, report_path=tmp_path / "r.json")
    assert report.passed, report.failures[:3]
    assert 1e-4 < report.worst["canvas_rel_l2"] < 2e-2, report.worst
    report_figure(f"executorch ViT-S c{CANVAS} int8 c2f: canvas rel-L2 {report.worst['canvas_rel_l2']:.1e}, CLS "
                  f"{report.worst['cls_rel_l2']:.1e}, seg_logits {report.worst['seg_logits_rel_l2']:.1e} (argmax agrees "
                  f"on {report.worst['seg_agreement_mean']:.3f}), {manifest.files['program'].bytes / 1e6:.1f} MB, "
                  f"{report.median_ms['runtime']:.0f} ms a glimpse")


def test_manifest_records_the_program(pte: Path) -> None:
    manifest = manifest_round_trip(pte)
    facts = manifest.artifact
    assert isinstance(facts, ExecuTorchArtifact) and manifest.target == "executorch" and manifest.stateful
    assert facts.inputs == ["scene", "centers", "scales", "reset"]
    assert [t.name for t in manifest.inputs] == ["scene", "centers", "scales", "reset"]
    assert [t.name for t in manifest.outputs] == ["canvas_next", "recurrent_cls_next", "seg_logits", "seg_entropy"]
    assert facts.delegates >= 1 and facts.delegated_ops > 100, "XNNPACK took the matmuls"
    assert "aten.grid_sampler_2d" in facts.portable_ops, "the glimpse sampler stays on portable kernels"
    # XNNPACK_FORMS: LayerNorm, attention (no safe-softmax masking) and the QKV linears (bias folded) all delegated
    refused = {"aten.native_layer_norm", "aten.any.dim", "aten.logical_not", "aten.full_like", "aten.addmm",
               "aten.squeeze_copy.dims", "aten._softmax", "aten.bmm"}
    assert not refused & set(facts.portable_ops), sorted(refused & set(facts.portable_ops))
    assert facts.delegates <= 15, f"{facts.delegates} delegates: an op left out splits the graph"
    assert not facts.program_audit.violations and len(facts.program_audit.canvas_stream) >= 2
    assert facts.program_audit.delegate_boundaries > 0
    assert manifest.files["program"].bytes == (pte / PROGRAM).stat().st_size


def test_state_carries_and_starts_at_the_learned_initial_state(pte: Path, vits16, photo) -> None:
    """The program's buffers carry the state between glimpses and `reset` starts it at CanViT.init_state: the
    rollout matches canvit-pytorch's carried one. Buffers start at zeros: without reset the first glimpse differs."""
    scene = scene_batch(photo, scene_px=SCENE_PX, batch=1)
    reference = reference_rollout(vits16, scene)
    method = load_method(load_manifest(pte))
    assert worst_rel(program_rollout(method, scene, resets=[1, 0, 0, 0]), reference) < 1e-5
    again = program_rollout(method, scene, resets=[1, 0, 0, 0])  # reset mid-life: the same rollout again
    assert worst_rel(again, reference) < 1e-5
    fresh = load_method(load_manifest(pte))
    assert worst_rel(program_rollout(fresh, scene, resets=[0, 0, 0, 0])[:1], reference[:1]) > 1e-2
    runner = canvit_runtime.open(pte, runtime="executorch")  # the runner feeds reset itself
    for ((row, col), scale), (canvas, cls) in zip(VIEWPOINTS, reference, strict=True):
        result = runner.step(scene, np.array([[row, col]], np.float32), np.array([scale], np.float32))
        assert np.linalg.norm(result.canvas - canvas) / np.linalg.norm(canvas) < 1e-5
        assert np.linalg.norm(result.recurrent_cls - cls) / np.linalg.norm(cls) < 1e-5


def test_a_program_whose_state_does_not_carry_fails_the_check(vits16, photo, tmp_path: Path) -> None:
    """The same step with the in-place copies removed (StatefulStep(carry=False)), lowered the same way: its first
    glimpse is right (reset reads the initial state), the rest are not, and the state check sees it."""
    from executorch_numpy_runtime import Runtime

    scene = scene_batch(photo, scene_px=SCENE_PX, batch=1)
    step = GlimpseStep(vits16.canvit, glimpse_px=GLIMPSE_PX, canvas_grid=CANVAS).eval()
    example = step.example_inputs(batch=1, scene_px=SCENE_PX)
    broken = StatefulStep(step, 1, carry=False).eval()
    lowered = lower(export_program(broken, (example.scene, example.centers, example.scales, torch.ones(1))))
    method = Runtime.get().load_program(serialize(lowered)).load_method("forward")
    reference = reference_rollout(vits16, scene)
    states = program_rollout(method, scene, resets=[1, 0, 0, 0])
    assert worst_rel(states[:1], reference[:1]) < 1e-5
    assert worst_rel(states, reference) > 1e-2


@pytest.mark.parametrize("shape", [(2, 6, 7, 64), (1, 8, 70, 32)])
def test_the_xnnpack_forms_compute_the_ops_they_replace(shape: tuple[int, ...]) -> None:
    """Attention as bmm/softmax/bmm against F.scaled_dot_product_attention (self and cross attention), LayerNorm as
    two inner means against F.layer_norm, unbind as narrow + reshape against torch.unbind, all float32."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(shape, generator=gen)
    k, v = torch.randn(*shape[:2], 11, shape[3], generator=gen), torch.randn(*shape[:2], 11, 5, generator=gen)
    for keys, values in ((q, q), (k, v)):
        want = torch.nn.functional.scaled_dot_product_attention(q, keys, values)
        torch.testing.assert_close(_attention(q, keys, values), want, rtol=1e-5, atol=1e-6)
    x = torch.randn(*shape[1:], generator=gen) * 3 + 1
    weight, bias = torch.randn(shape[-1], generator=gen), torch.randn(shape[-1], generator=gen)
    want = torch.nn.functional.layer_norm(x, (shape[-1],), weight, bias, eps=1e-6)
    torch.testing.assert_close(_layer_norm(x, [shape[-1]], weight, bias, eps=1e-6), want, rtol=1e-5, atol=1e-5)
    for dim in (0, 2, -1):
        for got, expected in zip(_unbind(q, dim), torch.unbind(q, dim), strict=True):
            assert torch.equal(got, expected)


def test_the_audit_reports_a_narrowed_canvas(vits16) -> None:
    """fp16-all (the canvas residual stream in float16) fails the audit on the canvas stream; fp32 passes it."""
    readouts: list[str] = []

    def audit(precision: str) -> dict:
        step = GlimpseStep(vits16.canvit, glimpse_px=GLIMPSE_PX, canvas_grid=CANVAS,
                           precision=step_precision(precision)).eval()
        return audit_program(export_program(step, tuple(step.example_inputs(batch=1, scene_px=SCENE_PX))),
                             readouts=readouts)

    assert audit("fp32")["violations"] == []
    narrow = audit("fp16-all")
    assert any("canvas stream tensor" in v and "float16" in v for v in narrow["violations"]), narrow["violations"][:3]
    assert len(narrow["canvas_stream"]) >= 3, "the walk followed the cast and the Canvas Write adds"


@pytest.mark.parametrize(("args", "needle"), [
    (["--precision", "int8"], "error: --precision int8 needs --calibration DIR: a set recorded by `canvit-export calibrate"),
    (["--int8"], "error: --precision int8 needs --calibration DIR"),
    (["--calibration", "."], "error: --calibration calibrates static INT8: pass it with --precision int8"),
    (["--precision", "bf16"], "error: Invalid value for '--precision'"),
])
def test_the_command_refuses_in_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    from canvit_export.cli import main

    code, output = invoke(main, "executorch", "--random-weights", "--backbone", "vits16", "--out", tmp_path / "o", *args)
    assert code == 2 and needle in output and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_the_runner_refuses_other_targets(export_artifact) -> None:
    onnx_artifact = export_artifact("vits16")  # canvas 16: the artifact other test files share
    with pytest.raises(canvit_runtime.ManifestError, match=r"ExecuTorch runs \.pte programs"):
        canvit_runtime.open(onnx_artifact, runtime="executorch")
    assert json.loads((onnx_artifact / "manifest.json").read_text())["artifact"]["target"] == "onnx"


class _NarrowOut(torch.nn.Module):
    """A canvas-shaped tensor halved for a delegate's product: `widen` casts the product back to float32 before it
    leaves (what the precision rule allows), otherwise it leaves the delegate as float16."""

    def __init__(self, widen: bool) -> None:
        super().__init__()
        self.widen = widen

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        product = canvas.half() * 2
        return product.float() if self.widen else product


def test_the_delegate_boundary_audit_reports_a_narrow_canvas_leaving_a_delegate() -> None:
    """audit_delegates on small XNNPACK-lowered programs: a canvas-shaped float16 tensor that a delegate computes and
    hands on as float16 is reported at its boundary; the same product cast back to float32 is not."""
    from canvit_export.export.executorch import audit_delegates

    shape = [1, 5, 8]
    verdicts = {}
    for widen in (False, True):
        lowered = lower(export_program(_NarrowOut(widen).eval(), (torch.randn(*shape),))).exported_program()
        seen, violations = audit_delegates(lowered, state_shapes=[shape])
        assert seen >= 2, seen  # the delegate's input and output crossed
        verdicts[widen] = violations
    assert len(verdicts[False]) == 1 and "is torch.float16, must be float32" in verdicts[False][0], verdicts
    assert verdicts[True] == [], verdicts


def test_1000_glimpses_stay_finite_and_keep_memory_flat(pte: Path, photo) -> None:
    """1000 F-IID glimpses of the stateful program on canvit-runtime's runner: the state stays finite and resident
    memory at glimpse 1000 is within 5% of glimpse 100 (issue 28's bound; no leak in the runner or the program's
    mutable buffers)."""
    from test_long_rollouts import GLIMPSES, rss_mb

    from canvit_runtime.policies import make_policy

    session = canvit_runtime.open(pte, runtime="executorch")
    scene = scene_batch(photo, scene_px=SCENE_PX, batch=1)
    resident = []
    for t, v in enumerate(make_policy("f-iid", batch=1, glimpses=GLIMPSES, seed=0)):
        result = session.step(scene, v.centers, v.scales)
        if t % 50 == 49:
            assert np.isfinite(result.canvas).all() and np.isfinite(result.recurrent_cls).all(), f"glimpse {t + 1}"
        resident.append(rss_mb())
    growth = (resident[-1] - resident[99]) / resident[99]
    assert len(resident) == 1000 and growth < 0.05, f"resident memory grew {growth:.2%} from glimpse 100 to 1000"
