"""The OpenVINO target: IR (step.xml/.bin) converted from an ONNX artifact, stateful by default.

Stateful: `canvas` and `recurrent_cls` become OpenVINO state variables (MakeStateful: Parameter/Result pairs
replaced by ReadValue/Assign), so the canvas never leaves the runtime between glimpses; a reset writes the learned
initial state into the variables.

Precision. OpenVINO's own reduced precision (INFERENCE_PRECISION_HINT bf16 on the fp32 graph) narrows the canvas
LayerNorm, the VPE and the RoPE tables too, and the `disable_fp16_compression` rt_info does not stop the CPU plugin
from doing so (measured on OpenVINO 2026.4, and that rt_info is not serialized into IR). So, as for TensorRT, the
precision comes from our typed graph: bf16/f16 IRs are converted from the mixed-precision ONNX export
(`canvit-export onnx --precision bf16|fp16`, re-exported here from the manifest's weights when given the fp32
artifact) and compiled with the f32 hint, under which OpenVINO executes the graph's own types (its bf16 matmuls
in bf16). The export compiles the IR on the CPU and audits the compiled model's runtime info (`audit_compiled`):
every node fused from a protected op (precision.audit_onnx's `protected`: canvas stream, coordinates, RoPE,
VPE, canvas LayerNorm) must output f32. `--int8-weights` compresses the matmul weights to INT8 (asymmetric,
per channel) with NNCF, leaving the protected ops (the VPE's Fourier features) untouched.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    copy_initial_state,
    derived_manifest,
    finish_manifest,
    load_source_artifact,
    staged_artifact,
)
from canvit_export.precision import audit_onnx
from canvit_export.progress import Stages
from canvit_runtime.manifest import ROLE_STATE, Manifest

IR_FILE, WEIGHTS_FILE = "step.xml", "step.bin"


def protected_ops(model: Any, protected_tensors: set[str]) -> set[str]:
    """Friendly names of the ops that produce a protected tensor (matched by tensor name, which IR keeps)."""
    names = set()
    for op in model.get_ops():
        outputs = set().union(*(o.get_names() for o in op.outputs())) if op.get_output_size() else set()
        if outputs & protected_tensors:
            names.add(op.get_friendly_name())
    return names


def audit_compiled(compiled: Any, protected: set[str]) -> dict[str, Any]:
    """Read the compiled model's runtime info: every runtime node fused from a protected op must output f32
    (integer shape tensors aside). Returns {"checked", "violations", "runtime_precisions"} (a census of the
    runtime nodes' precisions)."""
    checked, violations, census = 0, [], Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = {key: value.value for key, value in op.get_rt_info().items()}
        census[str(info.get("runtimePrecision", ""))] += 1
        originals = set(str(info.get("originalLayersNames", "")).split(",")) & protected
        if not originals:
            continue
        checked += 1
        outputs = [p for p in str(info.get("outputPrecisions", "")).replace(",", " ").split() if p]
        if narrow := [p for p in outputs if p not in ("f32", "i32", "i64", "u8", "boolean")]:
            violations.append(f"{info.get('layerType')} {op.get_friendly_name()} (from {sorted(originals)[0]}) "
                              f"outputs {', '.join(narrow)}")
    return {"checked": checked, "violations": violations, "runtime_precisions": dict(census)}


def compress_int8(model: Any, protected: set[str]) -> Any:
    """INT8 asymmetric per-channel weight compression with NNCF, ignoring the protected ops."""
    try:
        import nncf
    except ImportError as error:
        raise ExportError("--int8-weights needs NNCF: pip install nncf (or canvit-export[openvino])") from error
    ignored = nncf.IgnoredScope(names=sorted(protected), validate=False)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def state_records(source: Manifest, variables: dict[str, str]) -> list[dict[str, Any]]:
    """The manifest's state pairs with each variable id (stateful) and the state's shape and dtype."""
    specs = {t.name: t for t in source.inputs}
    return [{"input": inp, "output": out, **({"variable": variables[inp]} if variables else {}),
             "shape": list(specs[inp].shape), "dtype": specs[inp].dtype} for inp, out in source.state_pairs]


ONNX_PRECISION = {"fp32": "fp32", "bf16": "bf16", "f16": "fp16"}


def typed_source(artifact: Path, precision: str, workdir: Path, quiet: bool) -> Manifest:
    """The ONNX artifact whose types carry `precision`: `artifact` itself when it has them, else the same weights
    re-exported at that precision into workdir (from the manifest's weight source, fingerprint checked)."""
    source = load_source_artifact(artifact, target="OpenVINO")
    wanted = ONNX_PRECISION[precision]
    if source.precision == wanted:
        return source
    if source.precision != "fp32":
        raise ExportError(f"{artifact} is a {source.precision} graph, --precision {precision} asks for {wanted}: "
                          f"convert the fp32 or the {wanted} export")
    from canvit_export.export.artifact import Geometry
    from canvit_export.export.onnx import export_onnx
    from canvit_export.source import load_from_record

    loaded = load_from_record(source.data["model"])
    geometry = Geometry(**source.data["geometry"])
    glimpse_output = any(t.name == "glimpse" for t in source.outputs)
    export_onnx(loaded, geometry, workdir / "onnx", opset=source.data["artifact"]["opset"], precision=wanted,
                glimpse_output=glimpse_output, quiet=quiet)
    return load_source_artifact(workdir / "onnx", target="OpenVINO")


def export_openvino(artifact: Path, out: Path | None, *, precision: str = "fp32", int8_weights: bool = False,
                    stateful: bool = True, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Write out/step.xml + step.bin (+ initial_state.bin, manifest.json) atomically; return the manifest.

    precision: fp32, bf16 or f16 (matmuls, conv and attention; the canvas path stays f32). Raises ExportError when
    the artifact is missing or altered, the precision is unknown, NNCF is missing for int8 weights, or a protected
    node of the compiled model outputs less than f32.
    """
    import openvino as ov
    from openvino import passes

    if precision not in ONNX_PRECISION:
        raise ExportError(f"--precision {precision}: choose one of {', '.join(ONNX_PRECISION)}")
    load_source_artifact(artifact, target="OpenVINO")  # fail early on a bad artifact
    label = precision + ("-int8w" if int8_weights else "")
    out = out or artifact.with_name(f"{artifact.name}-openvino-{label}{'' if stateful else '-stateless'}")
    stages = Stages(4 if int8_weights else 3, quiet=quiet)
    with staged_artifact(out, force=force) as staging:
        with stages.stage(f"taking the {precision} graph and converting it to OpenVINO"):
            source = typed_source(artifact, precision, staging, quiet=True)
            protected = audit_onnx(onnx.load(str(source.file("graph")))).protected
            model = ov.convert_model(str(source.file("graph")))
        if int8_weights:
            with stages.stage("compressing weights to INT8 (NNCF)"):
                model = compress_int8(model, protected_ops(model, protected))
        with stages.stage("compiling on CPU and auditing the canvas path in the compiled model's runtime info"):
            # Audited before MakeStateful: OpenVINO's runtime model of a result-less stateful graph lists only its
            # inputs. MakeStateful swaps the state's Parameter/Result pairs for ReadValue/Assign and nothing else.
            twin = model.clone()
            compiled = ov.Core().compile_model(twin, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            audit = audit_compiled(compiled, protected_ops(twin, protected))
            if audit["violations"]:
                raise ExportError(f"the compiled model breaks the float32 rule: {audit['violations'][0]} "
                                  f"(+{len(audit['violations']) - 1} more)")
            if audit["checked"] < 10:
                raise ExportError(f"only {audit['checked']} protected nodes found in the compiled model: the audit "
                                  f"cannot vouch for the canvas path")
        variables: dict[str, str] = {}
        with stages.stage("making the state variables and saving the IR" if stateful else "saving the stateless IR"):
            if stateful:
                pairs = dict(source.state_pairs)
                manager = passes.Manager()
                manager.register_pass(passes.MakeStateful(pairs))
                manager.run_passes(model)
                found = {op.get_variable_id() for op in model.get_ops() if op.get_type_name() == "ReadValue"}
                variables = {inp: inp + out for inp, out in pairs.items()}  # OpenVINO's naming: tensor names joined
                if set(variables.values()) != found:
                    raise ExportError(f"MakeStateful made variables {sorted(found)}, expected {sorted(variables.values())}")
            ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=False)
            copy_initial_state(source, staging)
            manifest = derived_manifest(source, {
                "target": "openvino", "stateful": stateful, "inference_precision": "f32", "int8_weights": int8_weights,
                "compiled_audit": {**audit, "compiled": "the stateless twin on CPU, f32 hint"},
                "openvino": ov.get_version(),
            })
            manifest["artifact"]["source"].update(path=str(artifact.resolve()), converted_precision=source.precision)
            tensors = {spec.name: spec for spec in (*source.inputs, *source.outputs)}
            if stateful:  # the state is no longer graph I/O
                manifest["inputs"] = [t for t in manifest["inputs"] if t["role"] != ROLE_STATE]
                manifest["outputs"] = [t for t in manifest["outputs"] if t["role"] != ROLE_STATE]
            manifest["state"] = state_records(source, variables)
            manifest["precision"] = {**manifest["precision"], "compute": label,
                                     "weights": "int8 (asymmetric, per channel; NNCF)" if int8_weights else precision,
                                     "tensors": {name: tensors[name].dtype for name in
                                                 [t["name"] for t in (*manifest["inputs"], *manifest["outputs"])]}}
        if (staging / "onnx").exists():
            shutil.rmtree(staging / "onnx")
        finish_manifest(staging, manifest, {"ir": IR_FILE, "weights": WEIGHTS_FILE, "initial_state": INITIAL_STATE_FILE},
                        "openvino", "nncf")
    return manifest
