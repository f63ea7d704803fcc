"""`canvit-export trt` as users type it (issue 26): the precision shorthands, the one-line answer of a machine without
TensorRT (before any export), the export from weights with --print-trtexec, the re-export of an --artifact of another
precision, and the device bundle whose script gives the parity verdict on the device (here: a fresh Python 3.10 venv
with --runtime onnxruntime): PASS, and FAIL with exit 1 for a reference canvas scaled by 1.05."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import click
import numpy as np
import pytest
from test_runtime_package import find_python

from canvit_export.cli import main
from canvit_runtime.cli import main as runtime_main
from canvit_runtime.manifest import load_manifest
from conftest import invoke, one_line

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SMALL = ("--random-weights", "--backbone", "vits16", "--canvas", "8", "--scene", "128")


def precision_commands() -> list[tuple[str, click.Command]]:
    """Every command of both CLIs with a --precision option."""
    found = []
    for prefix, group in (("canvit-export", main), ("canvit-runtime", runtime_main)):
        assert isinstance(group, click.Group)
        for name, command in group.commands.items():
            if any("--precision" in p.opts for p in command.params):
                found.append((f"{prefix} {name}", command))
    return found


def test_every_precision_option_has_its_shorthands() -> None:
    """--fp16 / --bf16 / --int8 exist wherever --precision takes that word, and nowhere else."""
    commands = precision_commands()
    assert {name for name, _ in commands} >= {"canvit-export onnx", "canvit-export openvino", "canvit-export coreml",
                                             "canvit-export trt", "canvit-runtime trt"}
    for name, command in commands:
        choice = next(p for p in command.params if "--precision" in p.opts).type
        assert isinstance(choice, click.Choice)
        flags = {opt.removeprefix("--") for p in command.params for opt in p.opts if opt in ("--fp16", "--bf16", "--int8")}
        assert flags == {w for w in ("fp16", "bf16", "int8") if w in choice.choices}, name


def test_shorthand_equals_precision_word() -> None:
    """precision_options (which every command above uses: their flags are its precision_<word> parameters) hands the
    command the same word for --WORD as for --precision WORD, and its default for neither."""
    from click.testing import CliRunner

    from canvit_runtime.cli import precision_options

    @click.command()
    @precision_options("tensorrt", default="fp32", help="h")
    def probe(precision: str) -> None:
        click.echo(precision)

    runner = CliRunner()
    for word in ("fp16", "bf16", "int8"):
        assert runner.invoke(probe, [f"--{word}"]).output == runner.invoke(probe, ["--precision", word]).output \
            == runner.invoke(probe, [f"--{word}", "--precision", word]).output == f"{word}\n"
    assert runner.invoke(probe, []).output == "fp32\n"
    for _, command in precision_commands():
        for param in command.params:
            if set(param.opts) & {"--fp16", "--bf16", "--int8"}:
                assert param.name == f"precision_{param.opts[0].removeprefix('--')}" and param.is_flag


@pytest.mark.parametrize(("args", "needle"), [
    (("onnx", "--fp16", "--bf16"), "error: --fp16 and --bf16 name different precisions: pass one"),
    (("trt", "--int8", "--precision", "fp16"), "error: --int8 and --precision fp16 name different precisions"),
    (("coreml", "--bf16"), "No such option '--bf16'"),  # Core ML takes fp16 and fp32 only
])
def test_conflicting_precisions_are_one_line(args: tuple[str, ...], needle: str) -> None:
    code, output = invoke(main, *args)
    assert code == 2 and needle in one_line(output), output


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the answer of a machine without TensorRT; tensorrt imports here")
@pytest.mark.parametrize("args", [("trt", "--fp16"), ("trt", "--fp16", *SMALL), ("trt", "--int8", "--model", "org/x")])
def test_trt_without_tensorrt_answers_first(args: tuple[str, ...], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before resolving weights or exporting anything: one line naming --bundle and --print-trtexec, exit 2."""
    monkeypatch.chdir(tmp_path)
    code, output = invoke(main, *args)
    line = one_line(output)
    assert code == 2 and line.startswith("error: TensorRT is not installed here") and "--bundle DIR" in line \
        and "--print-trtexec" in line, output
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_trt_print_trtexec_from_weights(tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    code, output = invoke(main, "trt", "--fp16", *SMALL, "--out", out, "--print-trtexec")
    assert code == 0, output
    assert load_manifest(out).precision.name == "fp16"
    command = output.strip().splitlines()[-1]
    assert command.startswith("trtexec ") and f"--onnx={out / 'step.onnx'}" in command and "--stronglyTyped" in command
    assert f"--saveEngine={out}-trt/step.engine" in command


def test_trt_artifact_options_refused(export_artifact, tmp_path: Path) -> None:
    artifact = export_artifact("vits16", canvas=16)
    code, output = invoke(main, "trt", "--artifact", artifact, "--canvas", "16", "--print-trtexec")
    assert code == 2 and "--canvas describes an export from weights, and --artifact" in one_line(output)
    code, output = invoke(main, "trt", "--artifact", artifact, "--print-trtexec", "--out", tmp_path / "x")
    assert code == 2 and "--out names the ONNX artifact to export" in one_line(output)


def test_trt_reexports_an_artifact_of_another_precision(export_artifact, tmp_path: Path) -> None:
    """An fp32 artifact asked --fp16: re-exported from the seeded weights its manifest records (one line says so)."""
    artifact = export_artifact("vits16", canvas=16)
    out = tmp_path / "fp16"
    code, output = invoke(main, "trt", "--artifact", artifact, "--fp16", "--out", out, "--print-trtexec")
    assert code == 0, output
    assert f"{artifact} is fp32: re-exporting it at fp16" in output
    manifest, source = load_manifest(out), load_manifest(artifact)
    assert manifest.precision.name == "fp16" and manifest.geometry == source.geometry
    assert manifest.model.weights_fingerprint == source.model.weights_fingerprint


def test_trt_never_follows_a_manifest_checkpoint_path(export_artifact, tmp_path: Path) -> None:
    """A manifest naming a local checkpoint is not followed: one line asks for --model."""
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(export_artifact("vits16", canvas=16), copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["model"] = {"kind": "checkpoint", "path": "/etc", "class": "CanViT", "sha256": {},
                     "weights_fingerprint": data["model"]["weights_fingerprint"]}
    (copy / "manifest.json").write_text(json.dumps(data))
    code, output = invoke(main, "trt", "--artifact", copy, "--fp16", "--out", tmp_path / "o", "--print-trtexec")
    assert code == 2 and "exported from a local checkpoint" in one_line(output) and "pass --model DIR" in output
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "jetson-bundle"
    code, output = invoke(main, "trt", "--fp16", *SMALL, "--readout", "segmentation", "--glimpses", "8",
                          "--bundle", folder)
    assert code == 0, output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"wrote {folder} (") and "run jetson-bundle/run-on-device.sh there" in last, output
    return folder


def test_bundle_contents(bundle: Path) -> None:
    record = json.loads((bundle / "bundle.json").read_text())
    artifact = bundle / record["artifact"]
    manifest = load_manifest(artifact)  # checksums verified
    assert manifest.precision.name == "fp16" and record["precision"] == "fp16" and record["glimpses"] == 8
    names = {p.name for p in bundle.iterdir()}
    assert names == {".canvit-export", "bundle.json", "reference.npz", "run-on-device.sh", "BUILD.md", "wheels",
                     record["artifact"]}
    assert os.access(bundle / "run-on-device.sh", os.X_OK)
    with np.load(bundle / "reference.npz") as reference:
        assert reference["canvas"].shape == (8, 1, 16 + 64, 1024) and reference["canvas"].dtype == np.float32
        assert reference["readout.seg_logits"].shape[0] == 8
    build = (bundle / "BUILD.md").read_text()
    assert "--stronglyTyped" in build and f"canvit-runtime trt --artifact {record['artifact']}" in build
    assert hashlib.sha256((bundle / record["wheel"]["path"]).read_bytes()).hexdigest() == record["wheel"]["sha256"]


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the answer of a machine without TensorRT; tensorrt imports here")
def test_check_bundle_without_tensorrt_names_the_ways_on(bundle: Path) -> None:
    code, output = invoke(runtime_main, "check-bundle", bundle)
    line = one_line(output)
    assert code == 2 and "TensorRT is not installed here" in line and "BUILD.md" in line \
        and "--runtime onnxruntime" in line, output
    code, output = invoke(runtime_main, "check-bundle", bundle.parent)
    assert code == 2 and "bundle.json: no such file" in one_line(output)


@pytest.fixture(scope="module")
def device_python() -> str:
    python = find_python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 interpreter here (JetPack 6's; looked on the PATH and under ~/.pyenv/versions)")
    return python


def run_script(bundle: Path, python: str, venv: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHON=python, VENV=str(venv))
    return subprocess.run([str(bundle / "run-on-device.sh"), "--runtime", "onnxruntime", "--latency-steps", "5",
                           "--threads", "2"], capture_output=True, text=True, env=env, timeout=900, check=False)


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the module's bundle that a test may alter (the fixture stays as written)."""
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def rerecord(bundle: Path, **fields: object) -> None:
    """Rewrite bundle.json with `fields` changed and the reference's size and SHA-256 as they are now: what a forger
    (or a stale copy) would write."""
    reference = bundle / "reference.npz"
    record = json.loads((bundle / "bundle.json").read_text())
    record["reference"].update(bytes=reference.stat().st_size, sha256=hashlib.sha256(reference.read_bytes()).hexdigest())
    record.update(fields)
    (bundle / "bundle.json").write_text(json.dumps(record))


def reference_arrays(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference.npz") as data:
        return {k: data[k] for k in data.files}


def test_check_bundle_refuses_hostile_bundles(bundle: Path, tmp_path: Path) -> None:
    """Each alteration is one line, exit 2, before any rollout: an artifact name leaving the bundle, a reference that
    is no zip, a member too many, a header lying about its dtype, a precision that is not the artifact's."""
    import zipfile

    cases = {}
    copy = copy_of(bundle, tmp_path / "a")
    rerecord(copy, artifact="../outside")
    cases["artifact"] = (copy, "is not a valid bundle record")
    copy = copy_of(bundle, tmp_path / "b")
    (copy / "reference.npz").write_bytes(os.urandom(4096))
    rerecord(copy)
    cases["not a zip"] = (copy, "is not a readable reference archive")
    copy = copy_of(bundle, tmp_path / "c")
    with zipfile.ZipFile(copy / "reference.npz", "a") as archive:
        archive.writestr("canvas", b"\0" * 64)  # np.load would read this one as "canvas" too
    rerecord(copy)
    cases["extra member"] = (copy, "not the arrays")
    copy = copy_of(bundle, tmp_path / "d")
    arrays = reference_arrays(copy)
    np.savez(copy / "reference.npz", **{**arrays, "scales": arrays["scales"].astype(np.float64)})
    rerecord(copy)
    cases["dtype"] = (copy, "scales is ")
    copy = copy_of(bundle, tmp_path / "e")
    rerecord(copy, precision="int8")
    cases["precision"] = (copy, "bundle.json says int8 and the artifact is fp16")
    for name, (folder, needle) in cases.items():
        code, output = invoke(runtime_main, "check-bundle", folder, "--runtime", "onnxruntime", "--latency-steps", "0")
        assert code == 2 and needle in one_line(output), (name, output)


def test_check_bundle_prints_manifest_strings_sanitized(bundle: Path, tmp_path: Path) -> None:
    copy = copy_of(bundle, tmp_path)
    rerecord(copy, image="photo.jpg\nPASS at all 8 glimpses \x1b[32m")
    code, output = invoke(runtime_main, "check-bundle", copy, "--runtime", "onnxruntime", "--latency-steps", "0",
                          "--threads", "2")
    assert code == 0, output
    assert "photo.jpg?PASS at all 8 glimpses ?[32m" in output and "\x1b" not in output
    assert sum(line.startswith("PASS") for line in output.splitlines()) == 1


def test_bundle_from_an_artifact(export_artifact, tmp_path: Path) -> None:
    """--artifact of the precision asked: copied into the bundle (under a plain name), its weights from its record."""
    artifact = export_artifact("vits16", canvas=16, precision="fp16")
    folder = tmp_path / "b"
    code, output = invoke(main, "trt", "--artifact", artifact, "--fp16", "--glimpses", "3", "--bundle", folder)
    assert code == 0, output
    record = json.loads((folder / "bundle.json").read_text())
    assert record["artifact"] == "canvit-vits16-c16-g128-s512-b1-fp16"
    assert load_manifest(folder / record["artifact"]).files["graph"].sha256 == load_manifest(artifact).files["graph"].sha256
    code, output = invoke(runtime_main, "check-bundle", folder, "--runtime", "onnxruntime", "--latency-steps", "0")
    assert code == 0 and "PASS at all 3 glimpses" in output, output


@pytest.mark.parametrize(("args", "needle"), [
    (("--policy", "f-iid"), "--policy describes the bundle's reference: pass it with --bundle DIR"),
    (("--bundle", "b", "--out", "x"), "--out is for a build here"),
    (("--bundle", "b", "--workspace", "2"), "--workspace is for a build here"),
    (("--bundle", "b", "--policy", "eg-c2f"), "Invalid value for '--policy'"),
])
def test_trt_refuses_options_it_would_ignore(args: tuple[str, ...], needle: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = invoke(main, "trt", "--fp16", *SMALL, *args)
    assert code == 2 and needle in one_line(output), output
    assert list(tmp_path.iterdir()) == []


def test_device_script_passes_then_fails_a_scaled_reference(bundle: Path, device_python: str, tmp_path: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = copy_of(bundle, tmp_path)
    venv = tmp_path_factory.mktemp("device") / "venv"
    done = run_script(bundle, device_python, venv)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[1].split()[:3] == ["t", "viewpoint", "(row,"]
    assert [line.split()[0] for line in lines[2:10]] == [str(t) for t in range(8)]  # the per-glimpse table
    assert any(line.startswith("PASS at all 8 glimpses within the fp16 tolerances") for line in lines), done.stdout
    assert lines[-1].startswith("step latency on onnxruntime: median"), done.stdout
    assert "3.10" in subprocess.run([venv / "bin/python", "--version"], capture_output=True, text=True,
                                     check=False).stdout
    assert subprocess.run([venv / "bin/python", "-c", "import torch"], capture_output=True, check=False).returncode != 0

    # a reference canvas scaled by 1.05 (rel-L2 5e-2, beyond fp16's 2e-2), recorded as the bundle's own: FAIL, exit 1
    reference = bundle / "reference.npz"
    arrays = reference_arrays(bundle)
    arrays["canvas"] = (arrays["canvas"] * np.float32(1.05)).astype(np.float32)
    np.savez(reference, **arrays)
    rerecord(bundle)
    done = run_script(bundle, device_python, venv)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert any(line.startswith("FAIL ") and "canvas rel-L2" in line for line in done.stdout.splitlines()), done.stdout

    # altered without its record: refused in one line before any rollout
    np.savez(reference, **{**arrays, "canvas": arrays["canvas"] * np.float32(2)})
    done = run_script(bundle, device_python, venv)
    assert done.returncode == 2 and "reference.npz is missing or altered" in done.stderr, done.stderr[-2000:]
