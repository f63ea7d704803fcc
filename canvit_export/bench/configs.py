"""The configurations a bench times: every artifact on every runtime that runs its target (canvit_runtime.base.TARGETS),
and per group of artifacts (weights + geometry) PyTorch eager fp32 (the reference), the PyTorch baselines and
canvit-pytorch's own live export."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import canvit_runtime
from canvit_export.errors import ExportError
from canvit_export.export.artifact import tool_versions
from canvit_export.progress import console
from canvit_export.reference import EagerRunner, PeerRunner, export_peer
from canvit_export.source import LoadedModel, load_from_record
from canvit_runtime.base import TARGETS, Runner
from canvit_runtime.manifest import Manifest, a_target, load_manifest

RUNTIMES = tuple(TARGETS)
"""The runtimes a bench can time: those of canvit_runtime's runtime-per-target table."""
BASELINES = ("bf16-autocast", "compile")
"""PyTorch baselines a user would pick instead of an export (reference.EagerRunner modes), besides eager fp32 and
the peer export: torch.autocast bfloat16 on the CPU, and torch.compile (inductor) in float32."""
BASELINE_LABELS = {"bf16-autocast": "PyTorch eager, bf16 autocast", "compile": "torch.compile (inductor)"}


@dataclass
class Candidate:
    """One configuration being timed: its runner, facts for the table, and what it measured (step times in ms, the
    canvas rel-L2 and cosine of each glimpse against its group's reference)."""

    name: str
    runtime: str
    precision: str
    group: str  # weights fingerprint + geometry: candidates of one group share a reference
    manifest: Manifest
    runner: Runner
    size_bytes: int
    child: list[str]  # argv of the child process that measures peak RSS
    times_ms: list[float] = field(default_factory=list)
    rel_l2: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    canvas: np.ndarray | None = None  # eager only: the reference canvas of the current glimpse
    reference: bool = False  # PyTorch eager fp32: the group's reference (errors, "vs eager")


CPU_FEATURES = ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
                "avx_vnni")
"""/proc/cpuinfo flags that decide which matmul kernels a CPU runtime can use (AMX tiles, AVX-512 BF16/VNNI/FP16)."""


@dataclass(frozen=True)
class Machine:
    """The machine a bench ran on: CPU model, logical cores, the --threads asked (None: each runtime's default), the
    platform string, the versions of the runtimes' packages, the CPU's matmul features (CPU_FEATURES it has) and the
    memory bandwidth the floors were priced at: one {"array MB", "GB/s"} per canvas size (traffic.triad_bandwidth)."""

    cpu: str
    cores: int | None
    threads: int | None
    platform: str
    versions: dict[str, str]
    features: list[str] = field(default_factory=list)
    bandwidth: list[dict[str, float]] = field(default_factory=list)

    def describe(self) -> str:
        """"CPU, 2 cores, threads 2, features amx_bf16 avx512_bf16, triad bandwidth 19.6 GB/s at 0.5 MB"."""
        line = f"{self.cpu}, {self.cores} cores, threads {self.threads or 'default'}"
        if self.features:
            line += f", features {' '.join(self.features)}"
        if self.bandwidth:
            line += ", triad bandwidth " + "; ".join(f"{b['GB/s']:.1f} GB/s at {b['array MB']:.2f} MB"
                                                     for b in self.bandwidth)
        return line


def cpu_features(flags: str) -> list[str]:
    """The CPU_FEATURES among a /proc/cpuinfo flags line, in CPU_FEATURES order."""
    have = set(flags.split(":", 1)[-1].split())
    return [f for f in CPU_FEATURES if f in have]


def machine_facts(threads: int | None, bandwidth: list[dict[str, float]] | None = None) -> Machine:
    """This machine's Machine, with the `bandwidth` measured for the floors."""
    cpu, features = platform.processor(), []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        features = cpu_features(next((line for line in lines if line.startswith("flags")), ""))
    except OSError:
        pass
    return Machine(cpu=cpu, cores=os.cpu_count(), threads=threads, platform=platform.platform(),
                   versions=tool_versions("onnx", "onnxruntime", "openvino", "nncf", "tensorrt"), features=features,
                   bandwidth=bandwidth or [])


def check_choices(runtimes: list[str], baselines: tuple[str, ...]) -> None:
    """Raise ExportError (one line naming the choices) for no runtime, an unknown runtime or an unknown baseline."""
    if not runtimes:
        raise ExportError(f"--runtimes is empty: choose from {', '.join(RUNTIMES)}")
    if unknown := [r for r in runtimes if r not in RUNTIMES]:
        raise ExportError(f"unknown runtime{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from "
                          f"{', '.join(RUNTIMES)}")
    if unknown := [b for b in baselines if b not in BASELINES]:
        raise ExportError(f"unknown baseline{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from "
                          f"{', '.join(BASELINES)} (or '' for none)")


def runs_what(runtime: str) -> str:
    """"onnxruntime runs an ONNX artifact", "openvino runs an OpenVINO IR or an ONNX artifact" (from TARGETS)."""
    return f"{runtime} runs {' or '.join(a_target(t) for t in TARGETS[runtime])} artifact"


def runtime_candidates(artifact: Path, manifest: Manifest, group: str, runtimes: list[str],
                       threads: int | None) -> list[Candidate]:
    """The artifact on each of `runtimes` that runs its target; a runtime whose package is missing is skipped with a
    note."""
    out = []
    for runtime in runtimes:
        if manifest.target not in TARGETS[runtime]:
            continue
        try:
            runner = canvit_runtime.open(artifact, runtime=runtime, threads=threads)
        except (ValueError, canvit_runtime.RuntimeUnavailable) as error:
            console.print(f"[yellow]skipping {artifact} on {runtime}[/yellow]: {error}")
            continue
        out.append(Candidate(f"{artifact.name} [{runtime}]", runtime, manifest.precision.name, group, manifest, runner,
                             manifest.size_bytes, ["runtime", str(artifact), runtime, _thread_arg(threads)]))
    return out


def baseline_candidates(group: str, manifest: Manifest, loaded: LoadedModel, threads: int | None, workdir: Path,
                        peer: bool, baselines: tuple[str, ...]) -> list[Candidate]:
    """A group's PyTorch eager fp32 reference, then its `baselines` (BASELINES), then the peer export when `peer`."""
    name, threads_arg = manifest.directory.name, _thread_arg(threads)
    out = [Candidate(f"PyTorch eager ({name})", "pytorch", "fp32", group, manifest,
                     EagerRunner(manifest, loaded, threads=threads), 0,
                     ["eager", str(manifest.directory), "pytorch", threads_arg], reference=True)]
    for mode in baselines:
        runner = EagerRunner(manifest, loaded, threads=threads, mode=mode)
        out.append(Candidate(f"{BASELINE_LABELS[mode]} ({name})", runner.name, "fp32" if mode == "compile" else mode,
                             group, manifest, runner, 0, ["eager", str(manifest.directory), "pytorch", threads_arg, mode]))
    if peer:
        path = export_peer(loaded, manifest, workdir)
        out.append(Candidate(f"canvit-pytorch live export ({name}) [onnxruntime]", "onnxruntime", "fp32", group,
                             manifest, PeerRunner(manifest, path, threads=threads), path.stat().st_size,
                             ["peer", str(manifest.directory), "onnxruntime", threads_arg, str(path)]))
    return out


def build_candidates(artifacts: list[Path], runtimes: list[str], threads: int | None, workdir: Path,
                     peer: bool, baselines: tuple[str, ...] = ()) -> list[Candidate]:
    """Every artifact x runtime that runs it, preceded by each group's (weights + geometry) baselines
    (baseline_candidates). Raises ExportError for an unreadable artifact, or when no artifact runs on `runtimes`."""
    candidates: list[Candidate] = []
    groups: dict[str, Manifest] = {}
    for artifact in artifacts:
        try:
            manifest = load_manifest(artifact)
        except ValueError as error:
            raise ExportError(str(error)) from error
        group = group_of(manifest)
        groups.setdefault(group, manifest)
        candidates += runtime_candidates(artifact, manifest, group, runtimes, threads)
    if idle := [r for r in runtimes if not any(c.runtime == r for c in candidates)]:  # e.g. the default tensorrt
        console.print(f"[yellow]note[/yellow]: no configuration on {', '.join(idle)} ({'; '.join(map(runs_what, idle))}"
                      f", and none of --artifacts is one, or its package is missing)")
    if not candidates:
        raise ExportError(f"no artifact runs on {', '.join(runtimes)}: pass --artifacts of matching targets "
                          f"({'; '.join(map(runs_what, runtimes))})")
    baselines_first = []
    for group, manifest in groups.items():
        with console.status(f"preparing the baselines of {manifest.directory.name}"):
            loaded = load_from_record(manifest.model)
            baselines_first += baseline_candidates(group, manifest, loaded, threads, workdir, peer, baselines)
    return _grouped(baselines_first, candidates)


def group_of(manifest: Manifest) -> str:
    """A configuration's group: its weights (fingerprint) and geometry; one eager reference and one floor each."""
    return f"{manifest.model.weights_fingerprint[:12]}-{manifest.geometry.model_dump_json()}"


def artifact_groups(artifacts: list[Path]) -> list[list[Path]]:
    """`artifacts` by group (group_of), in their first artifact's order. Raises ExportError for an unreadable one."""
    groups: dict[str, list[Path]] = {}
    for artifact in artifacts:
        try:
            groups.setdefault(group_of(load_manifest(artifact)), []).append(artifact)
        except ValueError as error:
            raise ExportError(str(error)) from error
    return list(groups.values())


def _grouped(baselines: list[Candidate], candidates: list[Candidate]) -> list[Candidate]:
    """The baselines of every group, the last group's first (as the table has always listed them), then the rest."""
    by_group: dict[str, list[Candidate]] = {}
    for c in baselines:
        by_group.setdefault(c.group, []).append(c)
    return [c for group in reversed(by_group) for c in by_group[group]] + candidates


def _thread_arg(threads: int | None) -> str:
    return str(threads) if threads is not None else "-"
