"""The TensorRT target: a strongly typed engine built from an ONNX artifact, plus its manifest.

TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16/BF16 are gone); TensorRT 10 (JetPack 6/7)
needs NetworkDefinitionCreationFlag.STRONGLY_TYPED, which 11 accepts and ignores. Either way TensorRT executes
the types of our mixed-precision ONNX graph (`canvit-export onnx --precision fp16|bf16`), whose float32 canvas
path the precision audit proved; no precision is decided here. Shapes are static, from the manifest.
Engines run only on the GPU model and TensorRT version they were built with: the manifest records both.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from canvit_export.errors import ExportError
from canvit_export.export.artifact import (
    INITIAL_STATE_FILE,
    copy_initial_state,
    derived_fields,
    finish_manifest,
    load_source_artifact,
    source_record,
    staged_artifact,
)
from canvit_export.progress import Stages
from canvit_runtime.manifest import Manifest, TensorRtArtifact
from canvit_runtime.precision import TARGET_PRECISIONS, precision_info

ENGINE_FILE = "step.engine"
INSTALL_HINT = ("TensorRT is not installed: on an x86 machine with an NVIDIA GPU `pip install tensorrt cuda-python`; "
                "on a Jetson use JetPack's TensorRT (python3-libnvinfer); or build on the device from "
                "`canvit-export trt --artifact DIR --print-trtexec`")


def check_precision(manifest: Manifest, precision: str | None) -> None:
    """`--precision` states which graph the engine is for; strongly typed builds take the precision from the
    graph, so a mismatch is an error naming the export that fits."""
    if precision is None:
        return
    try:
        precision_info(precision, allowed=TARGET_PRECISIONS["tensorrt"])
    except ValueError as error:
        raise ExportError(str(error)) from error
    if manifest.precision.name != precision:
        raise ExportError(f"{manifest.directory} is a {manifest.precision.name} graph and TensorRT builds strongly typed "
                          f"engines from the graph's types: re-export with `canvit-export onnx --precision {precision}`")


def trtexec_command(manifest: Manifest, *, engine: Path, workspace_gib: float, timing_cache: Path | None) -> str:
    """The equivalent trtexec build (TensorRT 10.x on JetPack needs --stronglyTyped; 11.x ignores it)."""
    args = ["trtexec", f"--onnx={manifest.file('graph')}", f"--saveEngine={engine}", "--stronglyTyped",
            f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M", "--skipInference"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as error:
        raise ExportError(INSTALL_HINT) from error
    return trt


def gpu_facts() -> dict[str, str]:
    """Name and compute capability of CUDA device 0 (cuda-python); ExportError without a usable GPU."""
    from canvit_runtime.tensorrt import cuda_call, import_cudart

    try:
        cudart = import_cudart()
    except ImportError as error:
        raise ExportError(f"{error}; TensorRT engines are built on the GPU they run on") from error
    try:
        props = cuda_call(cudart.cudaGetDeviceProperties(0))
    except RuntimeError as error:
        raise ExportError(f"no usable CUDA GPU ({error}); TensorRT engines are built on the GPU they run on") from error
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def build_engine(manifest: Manifest, *, workspace_gib: float, timing_cache: Path | None) -> tuple[bytes, dict[str, Any]]:
    """Parse step.onnx into a strongly typed network and build the serialized engine; return it with facts."""
    trt = import_tensorrt()
    facts = gpu_facts()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(manifest.file("graph"))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {manifest.file('graph')}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see its log above); try a larger --workspace")
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(memoryview(cache.serialize()))
    # The engine's I/O must be the manifest's, names and dtypes both (strong typing keeps the graph's types).
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    io = {name: str(engine.get_tensor_dtype(name)) for name in
          (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))}
    expected = {t.name: t.dtype for t in (*manifest.inputs, *manifest.outputs)}
    if set(io) != set(expected):
        raise ExportError(f"the engine's I/O {sorted(io)} differs from the manifest's {sorted(expected)}")
    dtypes = {"float32": "DataType.FLOAT", "float16": "DataType.HALF", "bfloat16": "DataType.BF16"}
    if wrong := [name for name, dtype in io.items() if dtypes.get(expected[name]) != dtype]:
        raise ExportError(f"the engine's tensor {wrong[0]} is {io[wrong[0]]}, the manifest says {expected[wrong[0]]}")
    return bytes(serialized), {**facts, "tensorrt": trt.__version__}


def trtexec_for(artifact: Path, out: Path | None, *, precision: str | None = None, workspace_gib: float = 4.0,
                timing_cache: Path | None = None) -> str:
    """The trtexec command that builds the same engine on a device (no TensorRT needed here)."""
    source = load_source_artifact(artifact, target="TensorRT")
    check_precision(source, precision)
    out = out or artifact.with_name(artifact.name + "-trt")
    return trtexec_command(source, engine=out / ENGINE_FILE, workspace_gib=workspace_gib, timing_cache=timing_cache)


def export_tensorrt(artifact: Path, out: Path | None, *, precision: str | None = None, workspace_gib: float = 4.0,
                    timing_cache: Path | None = None, force: bool = False, quiet: bool = False) -> Manifest:
    """Build out/step.engine (+ initial_state.bin, manifest.json) from the ONNX artifact, atomically; return the
    manifest. Default out: <artifact>-trt.

    Raises ExportError when the artifact is missing or altered, `precision` does not match it, the workspace is not
    positive, or TensorRT or a GPU is missing.
    """
    source = load_source_artifact(artifact, target="TensorRT")
    check_precision(source, precision)
    if workspace_gib <= 0:
        raise ExportError(f"--workspace {workspace_gib}: must be > 0 GiB")
    out = out or artifact.with_name(artifact.name + "-trt")
    import_tensorrt()  # fail before creating anything
    stages = Stages(2, quiet=quiet)
    with staged_artifact(out, force=force) as staging:
        with stages.stage(f"building a strongly typed TensorRT engine ({source.precision.name})"):
            engine, facts = build_engine(source, workspace_gib=workspace_gib, timing_cache=timing_cache)
            (staging / ENGINE_FILE).write_bytes(engine)
        with stages.stage("writing the manifest"):
            copy_initial_state(source, staging)
            manifest = finish_manifest(
                staging, {"engine": ENGINE_FILE, "initial_state": INITIAL_STATE_FILE}, ("tensorrt", "cuda-python"),
                artifact=TensorRtArtifact(target="tensorrt", workspace_gib=workspace_gib, source=source_record(source),
                                          **facts),
                **derived_fields(source))
    return manifest.at(out)
