"""TensorRT engine artifacts, built where they run: on the device (a Jetson on JetPack's Python 3.10 included).

TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16/BF16 are gone); TensorRT 10 (JetPack 6/7) needs
NetworkDefinitionCreationFlag.STRONGLY_TYPED, which 11 accepts and ignores. Either way TensorRT executes the types of
our mixed-precision ONNX graph (`canvit-export onnx --precision fp16|bf16`), whose float32 canvas path the precision
audit proved; no precision is decided here. Shapes are static, from the manifest. Engines run only on the GPU model
and TensorRT version they were built with: the manifest records both.

Three ways to an engine artifact, all writing the same manifest (target "tensorrt"):
  - build_tensorrt: TensorRT's Python builder (`canvit-runtime trt --artifact DIR`, or `canvit-export trt`);
  - trtexec_for: the equivalent trtexec command, for a device without TensorRT's Python bindings;
  - adopt_engine: an engine trtexec built from the artifact's step.onnx, checked and given its manifest
    (`trt --adopt-engine FILE [--trtexec-log LOG]`).
Nothing here imports torch; TensorRT and cuda-python are imported only when an engine is built or checked.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvit_runtime.artifact import (
    INITIAL_STATE_FILE,
    ExportError,
    copy_initial_state,
    derived_fields,
    finish_manifest,
    load_source_artifact,
    source_record,
    staged_artifact,
)
from canvit_runtime.manifest import Manifest, TensorRtArtifact, a_precision, verified_onnx
from canvit_runtime.paths import check_out
from canvit_runtime.precision import TARGET_PRECISIONS, precision_info
from canvit_runtime.tensorrt import cuda_call, engine_io_mismatch, import_cudart

ENGINE_FILE = "step.engine"
INSTALL_HINT = ("TensorRT is not installed: on an x86 machine with an NVIDIA GPU `pip install 'canvit-runtime[tensorrt]'`; "
                "on a Jetson use JetPack's TensorRT (python3-libnvinfer, in a venv made with --system-site-packages) "
                "and `pip install 'cuda-python<13'`; or build with trtexec (`trt --print-trtexec`) and adopt the "
                "engine with `trt --adopt-engine`")

Stage = Callable[[str], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def print_stage(label: str) -> Iterator[None]:
    """`label ... 12.3 s` on stderr (canvit-export passes its rich spinner instead)."""
    start = time.perf_counter()
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


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
        raise ExportError(f"{manifest.directory} is {a_precision(manifest.precision.name)} graph and TensorRT builds "
                          f"strongly typed engines from the graph's types: re-export with "
                          f"`canvit-export onnx --precision {precision}`")


def audit_graph(source: Manifest) -> dict[str, int]:
    """The TensorRT audit (trt_audit.check) of the artifact's graph, for every audited TensorRT version: ExportError
    with one line naming the node, op, dtype and version TensorRT's ONNX parser would refuse. Returns the counts."""
    from canvit_runtime.trt_audit import check

    return check(source.file("graph"))


def trtexec_command(manifest: Manifest, *, engine: Path, workspace_gib: float, timing_cache: Path | None) -> str:
    """The equivalent trtexec build (TensorRT 10.x on JetPack needs --stronglyTyped; 11.x ignores it)."""
    args = ["trtexec", f"--onnx={manifest.file('graph')}", f"--saveEngine={engine}", "--stronglyTyped",
            f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M", "--skipInference"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def import_tensorrt() -> Any:
    """The tensorrt module; ExportError (INSTALL_HINT) when it cannot be imported."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise ExportError(INSTALL_HINT) from error
    return trt


def gpu_facts() -> dict[str, str]:
    """Name and compute capability of CUDA device 0 (cuda-python); ExportError without a usable GPU."""
    try:
        cudart = import_cudart()
    except ImportError as error:
        raise ExportError(f"{error}; TensorRT engines are built and checked on the GPU they run on") from error
    try:
        props = cuda_call(cudart.cudaGetDeviceProperties(0))
    except RuntimeError as error:
        raise ExportError(f"no usable CUDA GPU ({error}); TensorRT engines are built and checked on the GPU they run "
                          f"on") from error
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def tensorrt_missing() -> str | None:
    """None where TensorRT's Python bindings import and a CUDA GPU answers; else what is missing, in a few words (for
    a message that goes on to name the way around it)."""
    try:
        import_tensorrt()
    except ExportError:
        return "TensorRT is not installed here (import tensorrt fails)"
    try:
        gpu_facts()
    except ExportError as error:
        return str(error).split(";")[0]
    return None


def check_engine(serialized: bytes, manifest: Manifest, *, what: str) -> None:
    """Deserialize `serialized` with this machine's TensorRT and check its I/O against the manifest (ExportError)."""
    trt = import_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(serialized)
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load {what} on this GPU (see its log above): build the "
                          f"engine on this device with this TensorRT")
    if problem := engine_io_mismatch(engine, manifest):
        raise ExportError(f"{what}: {problem}; was it built from {manifest.file('graph')}?")


def build_engine(manifest: Manifest, *, workspace_gib: float, timing_cache: Path | None) -> tuple[bytes, dict[str, Any]]:
    """Parse step.onnx into a strongly typed network and build the serialized engine; return it with facts."""
    trt = import_tensorrt()
    facts = gpu_facts()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(verified_onnx(manifest)):  # the checksummed bytes; unlisted external data refused
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
    engine = bytes(serialized)
    check_engine(engine, manifest, what="the engine just built")  # strong typing keeps the graph's names and types
    return engine, {**facts, "tensorrt": trt.__version__}


def trtexec_for(artifact: Path, out: Path | None, *, precision: str | None = None, workspace_gib: float = 4.0,
                timing_cache: Path | None = None) -> str:
    """The trtexec command that builds the same engine on a device (no TensorRT needed here)."""
    source = load_source_artifact(artifact, target="TensorRT")
    check_precision(source, precision)
    audit_graph(source)
    out = out or artifact.with_name(artifact.name + "-trt")
    return trtexec_command(source, engine=out / ENGINE_FILE, workspace_gib=workspace_gib, timing_cache=timing_cache)


def _write_artifact(source: Manifest, out: Path, *, force: bool, stage: Stage, label: str,
                    write_engine: Callable[[Path], dict[str, Any]]) -> Manifest:
    with staged_artifact(out, force=force, inputs=(source.directory,)) as staging:
        with stage(label):
            fields = write_engine(staging / ENGINE_FILE)
        with stage("writing the manifest"):
            copy_initial_state(source, staging)
            manifest = finish_manifest(
                staging, {"engine": ENGINE_FILE, "initial_state": INITIAL_STATE_FILE}, ("tensorrt", "cuda-python"),
                artifact=TensorRtArtifact(target="tensorrt", source=source_record(source), **fields),
                **derived_fields(source))
    return manifest.at(out)


def build_tensorrt(artifact: Path, out: Path | None, *, precision: str | None = None, workspace_gib: float = 4.0,
                   timing_cache: Path | None = None, force: bool = False, stage: Stage = print_stage) -> Manifest:
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
    with stage("TensorRT audit of the graph's ops, attributes and dtypes"):
        audit_graph(source)

    def write(path: Path) -> dict[str, Any]:
        engine, facts = build_engine(source, workspace_gib=workspace_gib, timing_cache=timing_cache)
        path.write_bytes(engine)
        return {"workspace_gib": workspace_gib, **facts}

    return _write_artifact(source, out, force=force, stage=stage, write_engine=write,
                           label=f"building a strongly typed TensorRT engine ({source.precision.name})")


@dataclass(frozen=True)
class TrtexecLog:
    """What trtexec's build log states (TensorRT's samples/common: sampleDevice.cpp setCudaDevice, trtexec.cpp,
    logging.h reportTestResult): the GPU, its compute capability, the TensorRT version and the command line."""

    gpu: str
    compute_capability: str
    tensorrt: str
    command: str

    def argument(self, flag: str) -> str | None:
        """The value of `--flag=value` in the command line (trtexec joins argv with spaces, unquoted)."""
        values = [arg.split("=", 1)[1] for arg in self.command.split() if arg.startswith(f"--{flag}=")]
        return values[-1] if values else None


def parse_trtexec_log(text: str, *, path: Path) -> TrtexecLog:
    """Read a trtexec build log: `Selected Device: <name>`, `Compute Capability: <major>.<minor>`,
    `TensorRT version: <x.y.z>` and the `&&&& PASSED TensorRT.trtexec [TensorRT v...] # <argv>` line.

    Raises ExportError naming what is missing (a failed build, a log cut short, or not trtexec's log).
    """
    def field(label: str) -> str | None:
        found = re.findall(rf"^(?:\[[^\]]*\] )*{re.escape(label)}: *(.+?)\s*$", text, flags=re.M)
        return found[-1] if found else None

    passed = re.findall(r"^&&&& PASSED TensorRT\.trtexec[^#]*# (.+?)\s*$", text, flags=re.M)
    if not passed:
        failed = re.search(r"^&&&& FAILED TensorRT\.trtexec", text, flags=re.M)
        raise ExportError(f"{path}: " + ("trtexec reports the build FAILED" if failed else
                                         "no `&&&& PASSED TensorRT.trtexec` line: pass the whole log trtexec printed "
                                         "(`trtexec ... 2>&1 | tee build.log`)"))
    facts = {"gpu": field("Selected Device"), "compute_capability": field("Compute Capability"),
             "tensorrt": field("TensorRT version")}
    if missing := [key for key, value in facts.items() if not value]:
        raise ExportError(f"{path}: trtexec's log has no {missing[0].replace('_', ' ')} line; pass the whole log "
                          f"(`trtexec ... 2>&1 | tee build.log`)")
    return TrtexecLog(command=passed[-1], **{key: str(value) for key, value in facts.items()})


def _workspace_of(command: TrtexecLog) -> float | None:
    pool = command.argument("memPoolSize") or ""
    match = re.search(r"workspace:([0-9.]+)([KMG]?)(?:iB|B)?", pool)
    if not match:
        return None
    return float(match.group(1)) * {"K": 2.0**-20, "M": 2.0**-10, "G": 1.0, "": 2.0**-30}[match.group(2)]


def adopt_engine(artifact: Path, engine_file: Path, out: Path | None, *, trtexec_log: Path | None = None,
                 precision: str | None = None, force: bool = False, stage: Stage = print_stage) -> Manifest:
    """Give an engine built by trtexec from the ONNX artifact's step.onnx its manifest: out/step.engine (a copy),
    initial_state.bin and manifest.json, atomically. Default out: <artifact>-trt.

    Where `import tensorrt` works with a GPU, the engine is deserialized and its I/O names and dtypes are checked
    against the manifest; the GPU and TensorRT facts are this machine's. Otherwise the facts come from `trtexec_log`
    (required then), whose command line must be a strongly typed build that saved an engine of this file's name from
    a step.onnx; the engine's I/O is then checked when a runner loads it (manifest `checked_with: trtexec-log`).

    Raises ExportError for a missing engine or log, an engine that does not fit, a failed or foreign log, or a
    precision that does not match the artifact.
    """
    source = load_source_artifact(artifact, target="TensorRT")
    check_precision(source, precision)
    if not engine_file.is_file():
        raise ExportError(f"--adopt-engine {engine_file}: no such file; build it with the command "
                          f"`trt --artifact {artifact} --print-trtexec` prints")
    out = out or artifact.with_name(artifact.name + "-trt")
    check_out(out, force=force, inputs=[i for i in (artifact, engine_file, trtexec_log) if i is not None])
    if trtexec_log is not None and not trtexec_log.is_file():
        raise ExportError(f"--trtexec-log {trtexec_log}: no such file")
    log = parse_trtexec_log(trtexec_log.read_text(errors="replace"), path=trtexec_log) if trtexec_log else None
    if log is not None:
        for flag, wanted in (("onnx", source.file("graph").name), ("saveEngine", engine_file.name)):
            value = log.argument(flag)
            if value is None or Path(value).name != wanted:
                raise ExportError(f"{trtexec_log}: trtexec's --{flag} was {value}, not a {wanted}: is this the log of "
                                  f"the build that wrote {engine_file}?")
        if "--stronglyTyped" not in log.command.split() and not log.tensorrt.startswith("11."):
            raise ExportError(f"{trtexec_log}: the engine was not built --stronglyTyped (TensorRT {log.tensorrt} would "
                              f"pick its own precisions): rebuild with the command `trt --print-trtexec` prints")
    serialized = engine_file.read_bytes()
    checked: dict[str, Any] | None = None
    try:
        trt = import_tensorrt()
        facts = gpu_facts()
    except ExportError as error:
        if log is None:
            raise ExportError(f"{str(error).split(': ')[0]}, so {engine_file.name} cannot be checked here: pass "
                              f"--trtexec-log LOG, the log of the trtexec build (`trtexec ... 2>&1 | tee build.log`), "
                              f"or adopt it where `import tensorrt` works") from error
    else:
        check_engine(serialized, source, what=str(engine_file))
        checked = {**facts, "tensorrt": trt.__version__, "checked_with": "tensorrt"}
    if checked is None:
        assert log is not None
        checked = {"gpu": log.gpu, "compute_capability": log.compute_capability, "tensorrt": log.tensorrt,
                   "checked_with": "trtexec-log"}
    fields = {**checked, "builder": "trtexec", "workspace_gib": _workspace_of(log) if log else None,
              "trtexec_command": log.command if log else None}

    def write(path: Path) -> dict[str, Any]:
        path.write_bytes(serialized)
        return fields

    return _write_artifact(source, out, force=force, stage=stage, write_engine=write,
                           label=f"adopting {engine_file.name} ({len(serialized) / 1e6:.1f} MB)")
