"""The CLI: a save_pretrained checkpoint through --model DIR, and every bad input as one clear line, exit != 0,
nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main

SMALL = ["--canvas", "8", "--scene", "256"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    assert code != 0, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_checkpoint_folder_export_and_parity(tmp_path: Path, vits16) -> None:
    """A checkpoint written by canvit-pytorch's save_pretrained exports through --model DIR, and parity
    finds the reference weights from the manifest alone."""
    from canvit_pytorch import CanViTConfig, CanViTForPretraining

    model = CanViTForPretraining(canvit_config=CanViTConfig(backbone_name="vits16"), teacher_dim=384,
                                 teacher_patch_grid=32)
    model.canvit.load_state_dict(vits16.canvit.state_dict())
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    out = tmp_path / "artifact"
    code, output = run("onnx", "--model", str(checkpoint), *SMALL, "--out", str(out))
    assert code == 0, output
    import json

    record = json.loads((out / "manifest.json").read_text())["model"]
    assert record["kind"] == "checkpoint" and record["class"] == "CanViTForPretraining"
    assert record["path"] == str(checkpoint.resolve()) and len(record["sha256"]["model.safetensors"]) == 64
    assert record["weights_fingerprint"] == vits16.record["weights_fingerprint"]
    code, output = run("parity", "--artifact", str(out), "--glimpses", "3", "--report", str(tmp_path / "r.json"))
    assert code == 0, output
    assert "PASS" in output
    code, output = run("info", str(out))
    assert code == 0 and f"weights    checkpoint {checkpoint.resolve()} (CanViTForPretraining)" in output, output
    code, output = run("info", "--json", str(out))
    assert code == 0 and json.loads(output)["model"]["kind"] == "checkpoint", output


@pytest.mark.parametrize(("args", "needles"), [
    (["--model", "/no/such/folder"], ["/no/such/folder", "--random-weights"]),
    (["--model", "EMPTY_DIR"], ["no config.json", "--model DIR"]),
    (["--model", "FOREIGN_DIR"], ["canvit_config", "--random-weights"]),
    (["--model", "A_FILE"], ["is a file", "--model DIR"]),
    (["--model", "EMPTY_DIR", "--random-weights"], ["exclude each other"]),
    (["--random-weights", "--backbone", "vits16", "--glimpse", "100"], ["--glimpse 100", "multiple"]),
    (["--random-weights", "--backbone", "vits16", "--opset", "16"], ["--opset 16", ">= 17"]),
    (["--random-weights", "--backbone", "vits16", "--batch", "0"], ["--batch", "1<=x<=64"]),
    (["--random-weights", "--backbone", "vits16", "--glimpse", "2048"], ["--glimpse", "1<=x<=1024"]),
    (["--random-weights", "--backbone", "vits16", "--glimpse", "512"], ["--scene 256", "at least the glimpse"]),
])
def test_bad_export_inputs(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    (tmp_path / "EMPTY_DIR").mkdir()
    (tmp_path / "FOREIGN_DIR").mkdir()
    (tmp_path / "FOREIGN_DIR" / "config.json").write_text('{"model_type": "vit"}')
    (tmp_path / "FOREIGN_DIR" / "model.safetensors").write_bytes(b"")
    (tmp_path / "A_FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("EMPTY_DIR", "FOREIGN_DIR", "A_FILE") else a for a in args]
    out = tmp_path / "out"
    code, output = run("onnx", *args, *SMALL, "--out", str(out))
    assert_one_line_error(code, output, *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "a staging folder was left behind"


def test_unreachable_hub(tmp_path: Path) -> None:
    """The default Hub model without network: one line naming the fix. HF_HUB_OFFLINE=1 makes it fail at once
    instead of after huggingface_hub's retries; the code path is the same."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "canvit_export.cli", "onnx", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: cannot fetch canvit/canvitb16-add-vpe-pretrain"), result.stderr
    assert "--random-weights" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_overwrite_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    code, output = run("onnx", "--random-weights", "--backbone", "vits16", *SMALL, "--out", str(out))
    assert_one_line_error(code, output, "already exists", "--force")
    assert (out / "keep").read_text() == "mine"


@pytest.mark.parametrize(("setup", "needles"), [
    ("missing", ["no such artifact folder"]),
    ("no_manifest", ["no manifest.json"]),
    ("altered", ["SHA-256 mismatch"]),
    ("version", ["manifest version 999"]),
])
def test_bad_artifacts(tmp_path: Path, export_artifact, setup: str, needles: list[str]) -> None:
    import json
    import shutil

    artifact = tmp_path / "a"
    if setup != "missing":
        shutil.copytree(export_artifact("vits16", canvas=16), artifact)
    if setup == "no_manifest":
        (artifact / "manifest.json").unlink()
    elif setup == "altered":
        with (artifact / "initial_state.bin").open("r+b") as f:
            f.seek(100)
            f.write(b"\x00\x01\x02\x03")
    elif setup == "version":
        manifest = json.loads((artifact / "manifest.json").read_text())
        manifest["format_version"] = 999
        (artifact / "manifest.json").write_text(json.dumps(manifest))
    code, output = run("parity", "--artifact", str(artifact), "--glimpses", "1")
    assert_one_line_error(code, output, *needles)
    code, output = run("info", str(artifact))
    assert_one_line_error(code, output, *needles)


@pytest.mark.parametrize(("args", "needles"), [
    (["--runtime", "tflite"], ["unknown runtime 'tflite'"]),
    (["--policy", "spiral"], ["unknown policy 'spiral'"]),
    (["--image", "NOT_AN_IMAGE"], ["cannot read the image"]),
    (["--glimpses", "0"], ["--glimpses 0"]),
])
def test_bad_parity_inputs(tmp_path: Path, export_artifact, args: list[str], needles: list[str]) -> None:
    (tmp_path / "NOT_AN_IMAGE").write_text("not a png")
    args = [str(tmp_path / a) if a == "NOT_AN_IMAGE" else a for a in args]
    code, output = run("parity", "--artifact", str(export_artifact("vits16", canvas=16)), *args)
    assert_one_line_error(code, output, *needles)
