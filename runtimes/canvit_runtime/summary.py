"""A manifest as a few lines a person reads (`canvit-export info`, `canvit-runtime info`); `--json` gives it all."""

from __future__ import annotations

from canvit_runtime.manifest import (
    CheckpointWeights,
    CoreMLArtifact,
    HubWeights,
    Manifest,
    OnnxArtifact,
    OpenVinoArtifact,
    TensorRtArtifact,
)
from canvit_runtime.paths import printable


def _weights(manifest: Manifest) -> str:
    source = manifest.model
    if isinstance(source, HubWeights):
        where = f"Hub {source.repo} @ {source.revision[:12]}"
    elif isinstance(source, CheckpointWeights):
        where = f"checkpoint {source.path} ({source.class_name})"
    else:
        where = (f"seeded random ({source.backbone}, seed {source.seed}, LayerScale ~ N(0, {source.layerscale_std}), "
                 f"LayerNorm ~ 1 + N(0, {source.layernorm_std}))")
    return f"{where}; fingerprint {source.weights_fingerprint[:12]}"


def _target(manifest: Manifest) -> str:
    a = manifest.artifact
    if isinstance(a, OnnxArtifact):
        return f"ONNX, opset {a.opset}, {a.nodes} nodes"
    if isinstance(a, OpenVinoArtifact):
        return (f"OpenVINO {a.openvino.split('-')[0]} IR, {'stateful' if a.stateful else 'stateless'}; compiled audit: "
                f"{a.compiled_audit.checked} protected nodes in f32; from {a.source.path}")
    if isinstance(a, TensorRtArtifact):
        how = ("built by TensorRT's Python builder" if a.builder == "tensorrt-python" else "built by trtexec") + (
            ", I/O checked by TensorRT" if a.checked_with == "tensorrt" else ", facts from its log (I/O checked at load)")
        return (f"TensorRT {a.tensorrt} engine for {a.gpu} (compute capability {a.compute_capability}), {how}; runs "
                f"there only; from {a.source.path}")
    assert isinstance(a, CoreMLArtifact)
    return (f"Core ML ML program, min target {a.min_target}, {'stateful' if a.stateful else 'stateless'}; "
            f"{sum(a.op_counts.values())} MIL ops")


def summary_lines(manifest: Manifest, *, verified: bool) -> list[str]:
    """The artifact in about a dozen lines: target, weights, architecture, geometry, precision, tensors, files."""
    g, a, p = manifest.geometry, manifest.architecture, manifest.precision
    rule = "kept" if p.follows_float32_rule else "NOT kept (" + (
        "canvas stored float16 between glimpses" if p.state_storage != "float32" else "canvas computed in float16") + ")"
    lines = [
        f"artifact   {manifest.directory}",
        f"target     {_target(manifest)}",
        f"weights    {_weights(manifest)}",
        f"model      {a.backbone} ({a.parameters / 1e6:.1f} M parameters), canvas {a.canvas_dim} wide with "
        f"{a.num_canvas_registers} registers, VPE {'on' if a.enable_vpe else 'off'}",
        f"geometry   batch {g.batch}, scene {g.scene_px} px, glimpse {g.glimpse_px} px, canvas "
        f"{g.canvas_grid}x{g.canvas_grid}",
        f"precision  {p.name}: matmuls {p.matmul_dtype}, weights {p.weights}, float32 rule {rule}",
    ]
    for kind, tensors in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        lines.append(f"{kind:<10} " + ", ".join(f"{t.name} {t.shape} {t.dtype}" for t in tensors))
    state = ", ".join(f"{s.input} {s.shape}" + (f" (variable {s.variable})" if s.variable else "") +
                      (f" (stored {s.storage_dtype})" if s.storage_dtype != "float32" else "") for s in manifest.state)
    lines.append(f"state      {state}")
    files = ", ".join(f"{f.path} {f.bytes / 1e6:.1f} MB" for f in manifest.files.values())
    lines.append(f"files      {files}; SHA-256 {'verified' if verified else 'not verified'}")
    lines.append(f"created    {manifest.created}" + (f" by `{manifest.command}`" if manifest.command else ""))
    return [printable(line, 2000) for line in lines]  # manifest strings are untrusted: no escape sequence reaches a terminal
