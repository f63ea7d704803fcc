"""Parity: a runtime's rollout of an artifact against canvit-pytorch's own CanViT, glimpse by glimpse.

The reference is `CanViT.forward` after `sample_at_viewpoint` (step.reference_step) in float32 on the CPU, with the
weights the manifest names (or --model), the same initial state (CanViT.init_state), the same scene and the same
viewpoints (reference.EagerRunner). After every glimpse we compare (docs/design.md, Contracts):
  canvas spatial tokens [B, G*G, Dc]: rel-L2 = |a - r| / |r|, max-abs, cosine (the smallest over the batch);
  recurrent CLS [B, 1, Db]: rel-L2;
  the readouts the artifact has, against canvit-pytorch's heads on the reference state: rel-L2 of seg_logits,
  class_logits and teacher_patches; the share of canvas cells whose segmentation argmax agrees; whether the top-1
  class agrees.
Under EG-C2F (--policy eg-c2f) each side chooses its own viewpoints: the reference with canvit-pytorch's
EntropyGuidedC2F on its canvas, the runtime with canvit_runtime's from its seg_entropy readout. The sequences are
compared; after the first divergence the states are no longer comparable, so errors past it are reported, not held
to the tolerances, and a divergence fails fp32 only.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.progress import console
from canvit_export.reference import EagerRunner
from canvit_export.source import LoadedModel, load_from_record
from canvit_runtime.manifest import Manifest
from canvit_runtime.paths import check_output_file, report_folder, write_output
from canvit_runtime.policies import ADAPTIVE_POLICIES, EntropyGuidedC2F, Viewpoints, make_policy
from canvit_runtime.preprocess import scene_batch
from canvit_runtime.verdict import READOUT_ERRORS, GlimpseErrors, glimpse_errors, judge, tolerances_for


def default_image() -> np.ndarray:
    """skimage.data.astronaut(): a real 512 x 512 RGB photograph shipped with scikit-image."""
    try:
        import skimage.data
    except ImportError as error:
        raise ExportError("the default photograph comes from scikit-image: pip install scikit-image, or pass --image PATH"
                          ) from error
    return skimage.data.astronaut()


class _ReferenceEGC2F:
    """canvit-pytorch's own EntropyGuidedC2F, driven by the reference runner's state and segmentation probe."""

    def __init__(self, reference: EagerRunner, manifest: Manifest, glimpses: int) -> None:
        from canvit_pytorch.policies.entropy import EntropyGuidedC2F as TorchEGC2F

        assert reference.segmentation is not None
        self.reference = reference
        self.policy = TorchEGC2F(batch_size=manifest.batch, device=torch.device("cpu"), num_glimpses=glimpses,
                                 canvas_grid_size=manifest.canvas_grid, canvas_logits=reference.segmentation.logits)

    def viewpoint(self, t: int) -> Viewpoints:
        from canvit_pytorch import RecurrentState

        state = RecurrentState(canvas=torch.from_numpy(self.reference.state("canvas")),
                               recurrent_cls=torch.from_numpy(self.reference.state("recurrent_cls")))
        with torch.no_grad():
            v = self.policy.step(t, state)
        return Viewpoints(centers=v.centers.numpy().astype(np.float32), scales=v.scales.numpy().astype(np.float32))


@dataclass(frozen=True)
class EgC2F:
    """How the EG-C2F viewpoint sequences compare: identical at every glimpse, the first glimpse where they differ
    (None: none), and the share of glimpses whose viewpoints are equal."""

    identical: bool
    first_divergence: int | None
    agreement: float


@dataclass
class ParityReport:
    """One parity run. `worst` and `failures` are canvit_runtime.verdict.judge's; `median_ms` {"runtime",
    "reference"}: median step times in ms (the first glimpse left out when there are more); `per_glimpse`: every
    glimpse's errors. parity_command adds the photo, the policy, its seed, the top-5 classes after the last glimpse
    (a classification readout) and the pictures drawn; `report_path` (where it was written) is not written."""

    artifact: str
    runtime: str
    reference: str
    emulated: str | None
    activations: str | None
    precision: str
    model: dict[str, Any]
    geometry: dict[str, Any]
    readouts: list[str]
    glimpses: int
    tolerances: dict[str, float]
    passed: bool
    failures: list[str]
    worst: dict[str, Any]
    eg_c2f: EgC2F | None
    median_ms: dict[str, float]
    per_glimpse: list[GlimpseErrors]
    image: str | None = None
    policy: str | None = None
    seed: int | None = None
    top5: list[tuple[str, float]] | None = None
    pictures: list[str] | None = None
    report_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The report file's JSON: every field but report_path, and top5 and pictures only when set."""
        out = asdict(self)
        del out["report_path"]
        for key in ("top5", "pictures"):
            if out[key] is None:
                del out[key]
        return out


@dataclass
class Reference:
    """The side the runtime is compared with: its runner, its name in the report, and the PyTorch runner when it is
    canvit-pytorch's own model (which EG-C2F's reference policy reads)."""

    runner: canvit_runtime.Runner
    name: str
    eager: EagerRunner | None


def reference_for(manifest: Manifest, loaded: LoadedModel, reference: canvit_runtime.Runner | None,
                  adaptive: bool) -> Reference:
    """canvit-pytorch's CanViT with the manifest's readout heads (reference.EagerRunner), or the given fp32 artifact
    runner of the same geometry and readouts. Raises ExportError when `reference` is not fp32, has another geometry,
    lacks a readout or is asked to drive EG-C2F (`adaptive`), or when the artifact's initial state is not the
    reference's."""
    from canvit_export.readouts import heads_from_records

    if reference is None:
        heads = heads_from_records(loaded, manifest.readouts) if manifest.readouts else None
        eager = EagerRunner(manifest, loaded, heads=heads)
        with torch.no_grad():  # the artifact's initial state must be the model's
            model_state = eager.canvit.init_state(batch_size=manifest.batch, canvas_grid_size=manifest.canvas_grid)
            reference_state = {"canvas": model_state.canvas.numpy(), "recurrent_cls": model_state.recurrent_cls.numpy()}
        chosen = Reference(eager, "PyTorch eager fp32 (canvit-pytorch CanViT)", eager)
    else:
        _check_injected_reference(manifest, reference.manifest, adaptive)
        reference_state = reference.manifest.initial_state_arrays(manifest.batch)
        chosen = Reference(reference, f"{reference.manifest.directory} on {reference.name} "
                                      f"({reference.manifest.precision.name})", None)
    initial = manifest.initial_state_arrays(manifest.batch)
    if not all(np.array_equal(reference_state[k], initial[k]) for k in ("canvas", "recurrent_cls")):
        raise ExportError("the artifact's initial_state.bin differs from the reference model's init_state: "
                          "the weights differ; pass the exported weights with --model")
    return chosen


def _check_injected_reference(manifest: Manifest, ref: Manifest, adaptive: bool) -> None:
    if adaptive:
        raise ExportError("EG-C2F parity compares with canvit-pytorch's own policy: use the PyTorch reference")
    if ref.precision.name != "fp32":
        raise ExportError(f"the reference {ref.directory} is {ref.precision.name}: it must be fp32")
    if (ref.batch, ref.canvas_grid, ref.scene_px, ref.glimpse_px) != \
            (manifest.batch, manifest.canvas_grid, manifest.scene_px, manifest.glimpse_px):
        raise ExportError(f"the reference {ref.directory} has another geometry (batch, canvas, scene, glimpse "
                          f"px) than {manifest.directory}")
    if missing := {r.name for r in manifest.readouts} - {r.name for r in ref.readouts}:
        raise ExportError(f"the reference {ref.directory} lacks the readouts {sorted(missing)}")


@dataclass
class Policies:
    """Where each side looks: the same fixed viewpoints for both, or under EG-C2F each side's own policy (ours:
    canvit_runtime's, from the runtime's seg_entropy; theirs: canvit-pytorch's, from the reference's canvas)."""

    fixed: list[Viewpoints]
    ours: EntropyGuidedC2F | None = None
    theirs: _ReferenceEGC2F | None = None

    def viewpoints(self, t: int, entropy: np.ndarray | None) -> tuple[Viewpoints, Viewpoints, bool | None]:
        """(the runtime's viewpoints, the reference's, whether they are equal: None for fixed viewpoints)."""
        if self.ours is None or self.theirs is None:
            return self.fixed[t], self.fixed[t], None
        mine, theirs = self.ours.viewpoint(t, entropy), self.theirs.viewpoint(t)
        return mine, theirs, bool(np.array_equal(mine.centers, theirs.centers)
                                  and np.array_equal(mine.scales, theirs.scales))


def policies_for(manifest: Manifest, policy: str | list[Viewpoints], reference: Reference, *, glimpses: int,
                 seed: int) -> Policies:
    """The viewpoints of `policy`: a list of viewpoints, a policy name (canvit_runtime.policies.make_policy), or
    "eg-c2f" (each side its own EntropyGuidedC2F, `glimpses` long). Raises ExportError for a bad policy, or EG-C2F on
    an artifact without a segmentation readout."""
    try:
        if policy != "eg-c2f":
            return Policies(policy if isinstance(policy, list) else
                            make_policy(policy, batch=manifest.batch, glimpses=glimpses, seed=seed))
        if manifest.readout("segmentation") is None:
            raise ValueError(f"--policy eg-c2f reads the segmentation entropy, and {manifest.directory} has no "
                             f"segmentation readout: re-export with --readout segmentation")
    except ValueError as error:
        raise ExportError(str(error)) from error
    assert reference.eager is not None, "reference_for refuses EG-C2F without PyTorch"
    return Policies([], EntropyGuidedC2F(batch=manifest.batch, glimpses=glimpses, canvas_grid=manifest.canvas_grid),
                    _ReferenceEGC2F(reference.eager, manifest, glimpses))


def rollout(manifest: Manifest, runner: canvit_runtime.Runner, reference: canvit_runtime.Runner, policies: Policies,
            scene: np.ndarray, glimpses: int, last_readouts: dict[str, np.ndarray] | None) -> list[GlimpseErrors]:
    """Both sides from their initial state, glimpse by glimpse (`glimpses` under EG-C2F, else every fixed
    viewpoint): each glimpse's errors (verdict.glimpse_errors), `diverged` past the first EG-C2F divergence.
    `last_readouts` receives the runtime's readouts after the last glimpse."""
    runner.reset()
    reference.reset()
    rows: list[GlimpseErrors] = []
    entropy: np.ndarray | None = None
    diverged = False
    with console.status("parity rollout ...") as status:
        for t in range(glimpses if policies.ours is not None else len(policies.fixed)):
            mine, theirs, match = policies.viewpoints(t, entropy)
            diverged = diverged or match is False
            start = time.perf_counter()
            result = runner.step(scene, mine.centers, mine.scales)
            runtime_ms = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            expected = reference.step(scene, theirs.centers, theirs.scales)
            reference_ms = (time.perf_counter() - start) * 1e3
            entropy = result.extras.get("seg_entropy")
            rows.append(glimpse_errors(manifest, t, mine.centers, mine.scales, canvas=result.canvas,
                                       recurrent_cls=result.recurrent_cls, extras=result.extras,
                                       ref_canvas=expected.canvas, ref_cls=expected.recurrent_cls,
                                       ref_extras=expected.extras, runtime_ms=runtime_ms, reference_ms=reference_ms,
                                       viewpoint_match=match, diverged=diverged))
            status.update(f"parity rollout: glimpse {t + 1}, canvas rel-L2 {rows[-1].canvas_rel_l2:.2e}")
            if last_readouts is not None:
                last_readouts.clear()
                last_readouts.update({k: np.array(v) for k, v in result.extras.items()})
    return rows


def verdict(manifest: Manifest, runner: canvit_runtime.Runner, reference: Reference, rows: list[GlimpseErrors],
            tolerances: dict[str, float], adaptive: bool) -> ParityReport:
    """The report of a rollout: verdict.judge's worst figures and failures, and under EG-C2F (`adaptive`) how the
    viewpoint sequences compare; a divergence fails fp32 only."""
    worst, failures = judge(rows, tolerances)
    diverged_at = next((r.t for r in rows if r.viewpoint_match is False), None)
    if diverged_at is not None and manifest.precision.name == "fp32":
        failures.append(f"glimpse {diverged_at}: the EG-C2F viewpoint differs from canvit-pytorch's EntropyGuidedC2F")
    timed = rows[1:] or rows
    return ParityReport(
        artifact=str(manifest.directory), runtime=runner.name, reference=reference.name, emulated=runner.emulated,
        activations=runner.activations, precision=manifest.precision.name,
        model=manifest.model.model_dump(mode="json", by_alias=True), geometry=manifest.geometry.model_dump(),
        readouts=[r.name for r in manifest.readouts], glimpses=len(rows), tolerances=tolerances,
        passed=not failures, failures=failures, worst=worst,
        eg_c2f=EgC2F(identical=diverged_at is None, first_divergence=diverged_at,
                     agreement=float(np.mean([bool(r.viewpoint_match) for r in rows]))) if adaptive else None,
        median_ms={"runtime": float(np.median([r.runtime_ms for r in timed])),
                   "reference": float(np.median([r.reference_ms for r in timed]))},
        per_glimpse=rows)


def run_parity(manifest: Manifest, runner: canvit_runtime.Runner, loaded: LoadedModel, scene: np.ndarray,
               policy: str | list[Viewpoints], *, glimpses: int, tolerances: dict[str, float], seed: int = 0,
               last_readouts: dict[str, np.ndarray] | None = None,
               reference: canvit_runtime.Runner | None = None) -> ParityReport:
    """Roll out `runner` and the reference from the initial state under `policy` (a list of viewpoints, a policy
    name, or "eg-c2f") and judge it: reference_for, policies_for, rollout, verdict. `scene` [B, 3, S, S] float32.
    `last_readouts`, when given, receives the runtime's readouts after the last glimpse.
    `reference`, when given, replaces PyTorch: a runner of an fp32 artifact of the same weights and geometry whose own
    parity with PyTorch was shown (a long rollout of a narrow artifact then costs two runtime steps per glimpse, not
    an eager one); it must output the readouts the artifact has, and cannot drive EG-C2F (canvit-pytorch's policy).
    Raises ExportError as reference_for and policies_for do."""
    adaptive = policy == "eg-c2f"
    chosen = reference_for(manifest, loaded, reference, adaptive)
    policies = policies_for(manifest, policy, chosen, glimpses=glimpses, seed=seed)
    rows = rollout(manifest, runner, chosen.runner, policies, scene, glimpses, last_readouts)
    return verdict(manifest, runner, chosen, rows, tolerances, adaptive)


def print_report(report: ParityReport) -> None:
    """A compact per-glimpse table and the verdict."""
    from rich.table import Table

    emulated = f", {report.emulated} emulated" if report.emulated else ""
    table = Table(title=f"parity: {report.runtime} ({report.precision}{emulated}) vs canvit-pytorch fp32, "
                        f"{report.artifact}", title_justify="left")
    rows = report.per_glimpse
    has_seg = any(r.seg_agreement is not None for r in rows)
    has_top1 = any(r.top1_match is not None for r in rows)
    columns = ["t", "viewpoint (row, col, s)", "canvas rel-L2", "max-abs", "cosine", "CLS rel-L2", "|canvas|"]
    columns += ["seg argmax agrees"] * has_seg + ["top-1"] * has_top1
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        mark = "" if r.viewpoint_match is not False else " ≠"
        cells = [str(r.t), f"({r.row:+.3f}, {r.col:+.3f}, {r.scale:.3f}){mark}", f"{r.canvas_rel_l2:.2e}",
                 f"{r.canvas_max_abs:.2e}", f"{r.canvas_cosine:.7f}", f"{r.cls_rel_l2:.2e}",
                 f"{r.reference_canvas_norm:.4g}"]
        if has_seg:
            cells.append(f"{r.seg_agreement:.4f}")
        if has_top1:
            cells.append(("= " if r.top1_match else "≠ ") + (r.top1 or ["?"])[0][:24])
        table.add_row(*cells)
    console.print(table)
    w, ms = report.worst, report.median_ms
    readouts = "".join(f", {k.removesuffix('_rel_l2')} rel-L2 {w[k]:.2e}" for k in w if k.endswith("_rel_l2")
                       and k.removesuffix("_rel_l2") in READOUT_ERRORS)
    agreement = (f", argmax agreement {w['seg_agreement_mean']:.4f} (worst glimpse {w['seg_agreement']:.4f})"
                 if "seg_agreement" in w else "") + (
        f", top-1 agreement {w['top1_agreement']:.3f}" if "top1_agreement" in w else "")
    console.print(f"worst: canvas rel-L2 {w['canvas_rel_l2']:.2e}, max-abs {w['canvas_max_abs']:.2e}, cosine "
                  f"{w['canvas_cosine']:.7f}, CLS rel-L2 {w['cls_rel_l2']:.2e}{readouts}{agreement}; median step "
                  f"{ms['runtime']:.1f} ms ({report.runtime}) vs {ms['reference']:.1f} ms (PyTorch eager)")
    if report.eg_c2f:
        eg = report.eg_c2f
        console.print("EG-C2F: the viewpoint sequence equals canvit-pytorch's EntropyGuidedC2F at every glimpse"
                      if eg.identical else
                      f"EG-C2F: first divergence from canvit-pytorch's EntropyGuidedC2F at glimpse "
                      f"{eg.first_divergence} (errors after it are reported, not held to the tolerances)")
    if report.top5:
        console.print("top-5 classes after the last glimpse (runtime): " +
                      ", ".join(f"{name} {p:.1%}" for name, p in report.top5))
    if report.pictures:
        console.print(f"pictures: {', '.join(report.pictures)}")
    bounds = ", ".join(f"{k} {v:g}" for k, v in report.tolerances.items())
    if report.passed:
        console.print(f"[green]PASS[/green] at all {report.glimpses} glimpses within: {bounds}")
    else:
        console.print(f"[red]FAIL[/red] {len(report.failures)} violation(s); first: {report.failures[0]}")


MAX_GLIMPSES = 100_000
"""A parity run's glimpse cap: its report holds every glimpse's figures (~300 bytes each)."""


def default_report_path(artifact: Path, runtime: str) -> Path:
    """reports/parity-<artifact folder name>-<runtime>.json, under the current folder: outside the artifact."""
    return Path("reports") / f"parity-{Path(artifact).resolve().name}-{runtime}.json"


def parity_command(*, artifact: Path, runtime: str, loaded: LoadedModel | None, image: Path | np.ndarray | None,
                   policy: str, glimpses: int, seed: int, threads: int | None, report_path: Path | None,
                   pictures: Path | None = None) -> ParityReport:
    """What `canvit-export parity` does; returns the report (also written to report_path, default
    reports/parity-<artifact name>-<runtime>.json: never inside the artifact, which is input). With pictures, the
    runtime's rollout is drawn there (canvit_runtime.pictures). Raises ExportError for bad input, and before any work
    for a report path or pictures folder that is a symlink, inside the artifact, or a folder this tool did not
    write (canvit_runtime.paths)."""
    if glimpses < 1:
        raise ExportError(f"--glimpses {glimpses}: must be >= 1")
    if glimpses > MAX_GLIMPSES:
        raise ExportError(f"--glimpses {glimpses}: at most {MAX_GLIMPSES} (one parity run keeps every glimpse's figures)")
    path = report_path or default_report_path(artifact, runtime)
    check_output_file(path, inputs=[artifact], option="--report")
    if pictures is not None:
        report_folder(pictures, inputs=[artifact], option="--pictures")
    try:
        runner = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
    except (ValueError, canvit_runtime.RuntimeUnavailable) as error:
        raise ExportError(str(error)) from error
    manifest = runner.manifest
    if loaded is None:
        with console.status("loading the reference weights named in the manifest"):
            loaded = load_from_record(manifest.model)
    photo = default_image() if image is None else image
    try:
        scene = scene_batch(photo, scene_px=manifest.scene_px, batch=manifest.batch)
        if policy not in ADAPTIVE_POLICIES:
            make_policy(policy, batch=manifest.batch, glimpses=glimpses, seed=seed)  # refuse a bad one early
    except ValueError as error:
        raise ExportError(str(error)) from error
    tolerances = tolerances_for(manifest.precision.name)
    last: dict[str, np.ndarray] = {}
    report = run_parity(manifest, runner, loaded, scene, policy, glimpses=glimpses, tolerances=tolerances, seed=seed,
                        last_readouts=last)
    report.image = ("skimage.data.astronaut()" if image is None else
                    str(image) if isinstance(image, Path | str) else f"array {list(image.shape)}")
    report.policy, report.seed = policy, seed
    classification = manifest.readout("classification")
    if classification is not None and "class_logits" in last:
        from canvit_runtime.pictures import top_classes

        report.top5 = top_classes(last["class_logits"][0], classification.class_names)
    if pictures is not None:
        from canvit_runtime.pictures import draw_rollout

        viewpoints = [(r.row, r.col, r.scale) for r in report.per_glimpse]
        report.pictures = [str(p) for p in draw_rollout(manifest, scene, viewpoints, last, pictures)]
        report.pictures.append(str(draw_drift(report, pictures / "drift.png")))
    write_output(path, json.dumps(report.to_json(), indent=1) + "\n", inputs=[artifact], option="--report")
    report.report_path = str(path)
    return report


def draw_drift(report: ParityReport, path: Path) -> Path:
    """drift.png: the runtime's error against canvit-pytorch per glimpse (canvas and recurrent CLS rel-L2, log scale,
    with their tolerances as dashed lines), so that a long rollout shows whether error accumulates. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.per_glimpse
    steps = [r.t + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    for key, label, color in (("canvas_rel_l2", "canvas", "tab:blue"), ("cls_rel_l2", "recurrent CLS", "tab:orange")):
        values = [max(getattr(r, key), 1e-12) for r in rows]
        ax.plot(steps, values, color=color, linewidth=1, marker="o" if len(rows) <= 50 else None, markersize=3,
                label=f"{label} (worst {max(getattr(r, key) for r in rows):.2e})")
        if key == "canvas_rel_l2" or report.tolerances[key] != report.tolerances["canvas_rel_l2"]:
            same = report.tolerances["cls_rel_l2"] == report.tolerances["canvas_rel_l2"]
            ax.axhline(report.tolerances[key], color="gray" if same else color, linestyle="--", linewidth=0.8,
                       label=f"{'tolerance (both)' if same else label + ' tolerance'} {report.tolerances[key]:g}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("glimpse")
    ax.set_ylabel("rel-L2 vs canvit-pytorch (fp32)")
    ax.set_title(f"{Path(report.artifact).name}: {report.precision} on {report.runtime}, "
                 f"{len(rows)} glimpses", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never over a curve
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format="png")
    plt.close(fig)
    return write_output(path, picture.getvalue(), option="--pictures")
