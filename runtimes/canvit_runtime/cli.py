"""canvit-runtime: run an exported artifact on a device, without torch. Every error is one line and exit code 2.

    canvit-runtime run --artifact DIR --image photo.jpg [--runtime onnxruntime|openvino|tensorrt|coreml|executorch]
    canvit-runtime info DIR [--json]
    canvit-runtime trt --artifact DIR [--print-trtexec | --adopt-engine FILE [--trtexec-log LOG]]
    canvit-runtime check-bundle DIR [--runtime tensorrt|onnxruntime]
    canvit-runtime schema [--contract] [--out PATH | --check]
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from canvit_runtime.precision import TARGET_PRECISIONS

EXIT_BAD_INPUT = 2


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one error-to-one-line mapper of both CLIs: ValueError (ExportError, ManifestError, bad viewpoints or
    images) and RuntimeUnavailable -> `error: <first line>`; OSError (a full disk, a path through a file) ->
    os_error_line; exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from canvit_runtime import RuntimeUnavailable
        from canvit_runtime.paths import printable

        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader of stdout left (`| head`): click ends quietly, exit 1
        except (ValueError, RuntimeUnavailable) as error:  # may quote an untrusted graph or manifest: sanitized
            line = printable(str(error).splitlines()[0] if str(error) else type(error).__name__, limit=2000)
        except OSError as error:
            line = os_error_line(error, kwargs.get("out"))
        click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    return wrapper


def os_error_line(error: OSError, out: Any = None) -> str:
    """One line for a file-system error: what failed on which path (the command's --out where the error names no file,
    as a full disk met inside a library's writer does), and the usual fix."""
    import errno

    from canvit_runtime.paths import printable

    where = f"{printable(error.filename)}: " if error.filename else f"writing {printable(out)}: " if out is not None else ""
    hint = {"ENOSPC": "free some space or choose another --out", "EACCES": "choose a folder you can write to",
            "ENOTDIR": "a folder on the path is a file: choose another --out",
            "EEXIST": "choose another --out or pass --force", "EROFS": "choose a writable folder"}
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{where}{error.strerror or error}" + (f"; {hint[name]}" if name in hint else "")


SHORTHANDS = ("fp16", "bf16", "int8")
"""The precision words that are also flags (`--fp16` is `--precision fp16`), as `trtexec --fp16` is spelled."""


def precision_options(target: str, *, default: str | None, help: str) -> Callable[[Callable[..., Any]], Any]:
    """--precision WORD (a word of TARGET_PRECISIONS[target]) and its shorthand flags --fp16 / --bf16 / --int8 (those
    the target takes), passed on as one `precision` (the word, or `default` when none is given). Giving two that
    disagree (--fp16 --bf16, or --fp16 --precision bf16) is a usage error, one line."""
    allowed = TARGET_PRECISIONS[target]
    flags = [word for word in SHORTHANDS if word in allowed]

    def decorate(command: Callable[..., Any]) -> Any:
        @functools.wraps(command)
        def wrapper(*args: Any, precision: str | None, **kwargs: Any) -> Any:
            given = [f"--{word}" for word in flags if kwargs.pop(f"precision_{word.replace('-', '_')}")]
            words = {word.removeprefix("--") for word in given} | ({precision} if precision is not None else set())
            if len(words) > 1:
                spelled = given + ([f"--precision {precision}"] if precision is not None else [])
                raise click.BadOptionUsage("precision", f"{' and '.join(spelled)} name different precisions: pass one")
            return command(*args, precision=words.pop() if words else default, **kwargs)

        options = [click.option("--precision", type=click.Choice(allowed), default=None,
                                help=help + (f" [default: {default}]" if default is not None else ""))]
        options += [click.option(f"--{word}", f"precision_{word}", is_flag=True, help=f"= --precision {word}.")
                    for word in flags]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


class OneLineGroup(click.Group):
    """A click group whose usage errors (unknown option, bad value, missing option) print one `error:` line naming
    the command's --help, exit code 2, instead of click's usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError" and error.ctx is not None:  # the bare command: its help
                click.echo(error.ctx.get_help())
                sys.exit(0)
            where = error.ctx.command_path if error.ctx is not None else (prog_name or self.name)
            click.echo(f"error: {error.format_message().rstrip('.')}; see `{where} --help`", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(importlib.metadata.version("canvit-runtime"), prog_name="canvit-runtime")
def main() -> None:
    """Run CanViT glimpse-step artifacts (exported by canvit-export) on ONNX Runtime, OpenVINO, TensorRT or Core ML."""


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (numpy.save)."""
    data = io.BytesIO()
    np.save(data, array)
    return data.getvalue()


@main.command()
@click.option("--artifact", type=click.Path(path_type=Path), required=True, help="Artifact folder (manifest.json).")
@click.option("--image", type=click.Path(path_type=Path), required=True, help="Photograph (PNG, JPEG, ...).")
@click.option("--runtime", default="onnxruntime", show_default=True,
              help="onnxruntime, openvino, tensorrt, coreml (macOS) or executorch.")
@click.option("--policy", default="c2f", show_default=True,
              help="Viewpoints: full, c2f, f-iid, r-iid, eg-c2f (needs a segmentation readout), or a viewpoints JSON "
                   "file.")
@click.option("--glimpses", type=int, default=21, show_default=True, help="Glimpses of the rollout (>= 1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of c2f / f-iid / r-iid.")
@click.option("--threads", type=int, default=None, help="Runtime threads [default: the runtime's].")
@click.option("--canvas-out", type=click.Path(path_type=Path), default=None,
              help="Write the final canvas [B, R + G*G, Dc] float32 here (.npy).")
@click.option("--cls-out", type=click.Path(path_type=Path), default=None,
              help="Write the final recurrent CLS [B, 1, Db] float32 here (.npy).")
@click.option("--pictures", type=click.Path(path_type=Path), default=None,
              help="Folder for viewpoints.png (+ segmentation.png, entropy.png with a segmentation readout).")
@click.option("--public-key", type=click.Path(path_type=Path), default=None, metavar="PEM",
              help="Check the artifact's signature with this public key file first (see the sign command).")
@one_line_errors
def run(artifact, image, runtime, policy, glimpses, seed, threads, canvas_out, cls_out, pictures, public_key) -> None:
    """Roll the artifact out on a photo: preprocess, loop the glimpses, print the step latency and the readouts."""
    import canvit_runtime
    from canvit_runtime.paths import check_output_file, report_folder, write_output
    from canvit_runtime.pictures import draw_rollout, top_classes
    from canvit_runtime.preprocess import scene_batch
    from canvit_runtime.rollout import rollout

    if glimpses < 1:
        raise ValueError(f"--glimpses {glimpses}: must be >= 1")
    for option, path in (("--canvas-out", canvas_out), ("--cls-out", cls_out)):
        if path is not None and path.suffix != ".npy":
            raise ValueError(f"{path}: outputs are written as .npy; name the file *.npy")
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"{path.parent}: no such folder for {path.name}")
        if path is not None:
            check_output_file(path, inputs=[artifact], option=option)
    if pictures is not None:
        report_folder(pictures, inputs=[artifact], option="--pictures")
    session = canvit_runtime.open(artifact, runtime=runtime, threads=threads, public_key=public_key)
    manifest = session.manifest
    scene = scene_batch(image, scene_px=manifest.scene_px, batch=manifest.batch)
    times: list[float] = []
    clock = [time.perf_counter()]

    def timed(t: int, viewpoint: Any, result: Any) -> None:
        times.append((time.perf_counter() - clock[0]) * 1e3)
        clock[0] = time.perf_counter()

    viewpoints, result = rollout(session, scene, policy, glimpses=glimpses, seed=seed, on_step=timed)
    canvas, cls = result.canvas, result.recurrent_cls
    if not (np.isfinite(canvas).all() and np.isfinite(cls).all()):
        raise ValueError("the state holds NaN or inf after the rollout: run `canvit-export parity` on this artifact")
    for option, path, array in (("--canvas-out", canvas_out, canvas), ("--cls-out", cls_out, cls)):
        if path is not None:
            write_output(path, npy_bytes(array), inputs=[artifact], option=option)
    steady = times[1:] or times
    emulated = f", {session.emulated} emulated" if session.emulated else ""
    if session.activations:
        emulated += f", {session.activations} activations"
    click.echo(f"{len(times)} glimpses of {image.name} on {session.name} ({manifest.precision.name}{emulated}), "
               f"{policy}: median step {np.median(steady):.1f} ms (first {times[0]:.1f} ms), "
               f"{1e3 * manifest.batch / np.median(steady):.1f} glimpses/s")
    click.echo(f"canvas {list(canvas.shape)} |canvas| {np.linalg.norm(canvas):.4g}" +
               (f" -> {canvas_out}" if canvas_out else "") + f"; recurrent CLS {list(cls.shape)}" +
               (f" -> {cls_out}" if cls_out else ""))
    classification = manifest.readout("classification")
    if classification is not None:
        top = top_classes(result.extras["class_logits"][0], classification.class_names)
        click.echo("top-5 classes: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
    if pictures is not None:
        triples = [(float(v.centers[0, 0]), float(v.centers[0, 1]), float(v.scales[0])) for v in viewpoints]
        written = draw_rollout(manifest, scene, triples, result.extras, pictures)
        click.echo("pictures: " + ", ".join(str(p) for p in written))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--private-key", type=click.Path(path_type=Path), required=True, metavar="PEM",
              help="Private key file (PEM): an elliptic curve key, as openssl ecparam makes.")
@click.option("--password-env", default=None, metavar="VAR", help="Environment variable holding the key's password.")
@one_line_errors
def sign(artifact, private_key, password_env) -> None:
    """Sign an artifact folder, every file in it, with OpenSSF's model signing library: writes artifact.sig into it,
    which info and run check with the public key where the artifact runs."""
    import os

    from canvit_runtime.manifest import load_manifest
    from canvit_runtime.signing import sign_artifact

    load_manifest(artifact)  # sign only a valid, unaltered artifact
    password = os.environ.get(password_env) if password_env else None
    click.echo(f"wrote {sign_artifact(artifact, private_key, password=password)}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the SHA-256 check of the artifact's files.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON instead of the summary.")
@click.option("--public-key", type=click.Path(path_type=Path), default=None, metavar="PEM",
              help="Check the artifact's signature with this public key file first (see the sign command).")
@one_line_errors
def info(artifact, no_verify, as_json, public_key) -> None:
    """Summarize an artifact's manifest; verify its checksums (and its signature, given a public key)."""
    from canvit_runtime.manifest import load_manifest
    from canvit_runtime.summary import summary_lines

    if public_key is not None:
        from canvit_runtime.signing import verify_artifact

        verify_artifact(artifact, public_key)
        click.echo(f"signature verified with {public_key}")

    manifest = load_manifest(artifact, verify=not no_verify)
    if as_json:
        click.echo(manifest.to_json(), nl=False)
        return
    for line in summary_lines(manifest, verified=not no_verify):
        click.echo(line)


@main.command()
@click.option("--artifact", type=click.Path(path_type=Path), required=True, help="ONNX artifact folder to build from.")
@precision_options("tensorrt", default=None,
                   help="Assert the artifact's precision (strongly typed engines keep the graph's types).")
@click.option("--workspace", "workspace_gib", type=float, default=4.0, show_default=True, help="Builder workspace, GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="Timing cache file (read and updated).")
@click.option("--out", "--engine-out", "out", type=click.Path(path_type=Path), default=None,
              help="Engine artifact folder [default: <artifact>-trt].")
@click.option("--force", is_flag=True, help="Replace --out if it exists and canvit-export wrote it.")
@click.option("--print-trtexec", is_flag=True, help="Only print the equivalent trtexec command (e.g. for a Jetson).")
@click.option("--adopt-engine", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Instead of building, adopt FILE, an engine trtexec built from the artifact's step.onnx: checked "
                   "with TensorRT where it imports, else described by --trtexec-log.")
@click.option("--trtexec-log", type=click.Path(path_type=Path), default=None, metavar="LOG",
              help="With --adopt-engine: trtexec's build log (`trtexec ... 2>&1 | tee build.log`), the source of the GPU "
                   "and TensorRT facts where TensorRT's Python bindings are missing.")
@one_line_errors
def trt(artifact, precision, workspace_gib, timing_cache, out, force, print_trtexec, adopt_engine, trtexec_log) -> None:
    """Build a strongly typed TensorRT engine artifact (TensorRT 10 with STRONGLY_TYPED, or 11) from an ONNX artifact,
    on the GPU it will run on; or print the trtexec command; or adopt an engine trtexec built."""
    from canvit_runtime.engine import adopt_engine as adopt
    from canvit_runtime.engine import build_tensorrt, trtexec_for
    from canvit_runtime.manifest import TensorRtArtifact

    if print_trtexec and adopt_engine is not None:
        raise ValueError("--print-trtexec and --adopt-engine exclude each other: print the command, run it, then adopt")
    if trtexec_log is not None and adopt_engine is None:
        raise ValueError("--trtexec-log describes an engine to adopt: pass --adopt-engine FILE with it")
    if print_trtexec:
        click.echo(trtexec_for(artifact, out, precision=precision, workspace_gib=workspace_gib,
                               timing_cache=timing_cache))
        return
    if adopt_engine is not None:
        manifest = adopt(artifact, adopt_engine, out, trtexec_log=trtexec_log, precision=precision, force=force)
    else:
        manifest = build_tensorrt(artifact, out, precision=precision, workspace_gib=workspace_gib,
                                  timing_cache=timing_cache, force=force)
    facts = manifest.artifact
    assert isinstance(facts, TensorRtArtifact)
    checked = ("I/O checked by TensorRT" if facts.checked_with == "tensorrt" else
               "facts from trtexec's log; I/O checked when a runner loads it")
    click.echo(f"wrote {manifest.directory}: TensorRT {facts.tensorrt} engine for {facts.gpu} (compute capability "
               f"{facts.compute_capability}), {manifest.files['engine'].bytes / 1e6:.1f} MB, {checked}")


@main.command("check-bundle")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help="tensorrt: build the engine here (once) and check it; onnxruntime: check the ONNX artifact itself "
                   "(a device without TensorRT, or the bundle).")
@click.option("--rebuild", is_flag=True, help="Build the engine again even if the bundle holds one built before.")
@click.option("--workspace", "workspace_gib", type=float, default=4.0, show_default=True, help="Builder workspace, GiB.")
@click.option("--latency-steps", type=int, default=50, show_default=True, help="Timed steps after the check.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads [default: its own].")
@one_line_errors
def check_bundle(bundle, runtime, rebuild, workspace_gib, latency_steps, threads) -> None:
    """Check a device bundle (`canvit-export trt ... --bundle`) on this device: build the engine (tensorrt), roll out
    the bundle's viewpoints, compare every glimpse with the float32 PyTorch reference recorded on the workstation at
    the precision's tolerances, print PASS (exit 0) or FAIL (exit 1), then the step's latency."""
    import os

    import canvit_runtime
    from canvit_runtime.bundle import check_bundle as run_check
    from canvit_runtime.bundle import engine_is_stale, read_bundle, read_reference
    from canvit_runtime.paths import printable

    if latency_steps < 0:
        raise ValueError(f"--latency-steps {latency_steps}: must be >= 0")
    if threads is not None and runtime != "onnxruntime":
        raise ValueError("--threads sets ONNX Runtime's threads: pass it with --runtime onnxruntime")
    typed = click.get_current_context().get_parameter_source("workspace_gib") == click.core.ParameterSource.COMMANDLINE
    if runtime == "onnxruntime" and (rebuild or typed):
        raise ValueError(f"--{'rebuild' if rebuild else 'workspace'} is for the TensorRT engine: pass it with "
                         f"--runtime tensorrt")
    record = read_bundle(bundle)
    reference = read_reference(bundle, record)
    target = bundle / record.artifact
    if runtime == "tensorrt":
        from canvit_runtime.engine import build_tensorrt, tensorrt_missing

        if missing := tensorrt_missing():
            raise ValueError(f"{missing}: build with trtexec as {bundle / 'BUILD.md'} shows, or check the ONNX "
                             f"artifact with --runtime onnxruntime")
        engine = bundle / f"{record.artifact}-trt"
        stale = engine_is_stale(engine, target) if os.path.lexists(engine) else None
        if os.path.lexists(engine) and not rebuild and stale is None:
            click.echo(f"using the engine built before in {engine} (--rebuild builds it again)", err=True)
        else:
            if stale is not None:
                click.echo(f"building the engine again: {stale}", err=True)
            built = build_tensorrt(target, engine, workspace_gib=workspace_gib, force=os.path.lexists(engine))
            click.echo(f"built {engine}: {built.files['engine'].bytes / 1e6:.1f} MB", err=True)
        target = engine
    with canvit_runtime.open(target, runtime=runtime, threads=threads) as session:
        click.echo(f"checking {printable(target)} on {session.name} ({record.precision}) against "
                   f"{printable(record.reference_runtime)}: {record.glimpses} glimpses ({record.policy}, seed "
                   f"{record.seed}) of {printable(record.image)}")
        result = run_check(bundle, session, record, latency_steps=latency_steps, echo=click.echo, reference=reference)
        batch = session.manifest.batch
    w = result.worst
    click.echo(f"worst: canvas rel-L2 {w['canvas_rel_l2']:.2e}, cosine {w['canvas_cosine']:.7f}, CLS rel-L2 "
               f"{w['cls_rel_l2']:.2e}" + "".join(f", {k.removesuffix('_rel_l2')} rel-L2 {w[k]:.2e}" for k in w
                                                  if k.endswith("_rel_l2") and not k.startswith(("canvas", "cls"))))
    bounds = ", ".join(f"{k} {v:g}" for k, v in result.tolerances.items())
    if result.passed:
        click.echo(f"PASS at all {len(result.rows)} glimpses within the {record.precision} tolerances: {bounds}")
    else:
        click.echo(f"FAIL {len(result.failures)} violation(s) of the {record.precision} tolerances; first: "
                   f"{result.failures[0]}")
    if result.latency_ms:
        steps = np.array(result.latency_ms)
        click.echo(f"step latency on {result.runtime}: median {np.median(steps):.2f} ms, p90 "
                   f"{np.percentile(steps, 90):.2f} ms over {len(steps)} steps (batch {batch}: "
                   f"{1e3 * batch / np.median(steps):.1f} glimpses/s)")
    if not result.passed:
        sys.exit(1)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the manifest's JSON Schema (with --contract: its contract) here [default: print it].")
@click.option("--contract", is_flag=True,
              help="The contract beyond the schema (manifest.contract.json: rule tables, caps, messages) instead.")
@click.option("--check", is_flag=True,
              help="Exit 1 unless the packaged manifest.schema.json and manifest.contract.json are the generated ones.")
def schema(out, contract, check) -> None:
    """The JSON Schema of manifest.json (version 1), generated from canvit_runtime.manifest.Manifest; with
    --contract, manifest.contract.json, generated from canvit_runtime.contract (what the C++ demo also reads)."""
    from canvit_runtime.contract import CONTRACT_PATH
    from canvit_runtime.manifest import SCHEMA_PATH, contract_text, json_schema

    schema_text = json.dumps(json_schema(), indent=1, sort_keys=True) + "\n"
    if check:
        for path, text, flag in ((SCHEMA_PATH, schema_text, ""), (CONTRACT_PATH, contract_text(), " --contract")):
            if path.read_text() != text:
                click.echo(f"error: {path} is stale: regenerate it with `canvit-runtime schema{flag} --out {path}`",
                           err=True)
                sys.exit(1)
            click.echo(f"{path} is up to date")
        return
    text = contract_text() if contract else schema_text
    if out is None:
        click.echo(text, nl=False)
    else:
        from canvit_runtime.paths import write_output

        write_output(out, text)
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
