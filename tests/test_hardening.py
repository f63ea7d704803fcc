"""What a new user hit (issue 15): bad outputs caught before the work, one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from canvit_export.cli import main
from conftest import invoke, one_line

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str]:
    return invoke(main, *args)


@pytest.mark.parametrize(("out", "needle"), [
    ("README.md", "README.md is a file: pass a folder (created if missing)"),
    ("README.md/x", "README.md is a file, not a folder; choose another --out"),
])
def test_bench_checks_out_before_the_work(export_artifact, out: str, needle: str) -> None:
    code, output = run("bench", "--artifacts", str(export_artifact("vits16", canvas=16)), "--quick", "--out",
                       str(REPO / out))
    assert code == 2 and needle in one_line(output), output
    assert "preparing the baselines" not in output


@pytest.mark.parametrize(("runtimes", "needle"), [
    ("", "--runtimes is empty: choose from onnxruntime, openvino, tensorrt"),
    ("onnx,foo", "unknown runtimes onnx, foo: choose from onnxruntime, openvino, tensorrt"),
    ("onnxruntime,foo", "unknown runtime foo: choose from"),
])
def test_bench_runtimes_are_named(export_artifact, tmp_path: Path, runtimes: str, needle: str) -> None:
    code, output = run("bench", "--artifacts", str(export_artifact("vits16", canvas=16)), "--runtimes", runtimes,
                       "--quick", "--out", str(tmp_path / "b"))
    assert code == 2 and needle in one_line(output), output
    assert "[" not in output, "no Python list"


def test_export_through_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, output = run("onnx", "--random-weights", "--backbone", "vits16", "--canvas", "4", "--out",
                       str(tmp_path / "file" / "x"))
    assert code == 2 and "file is a file, not a folder; choose another --out" in one_line(output), output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("args", [["onnx", "--foo"], ["bench", "--iters", "x", "--artifacts", "a"], ["parity"],
                                  ["nonsense"]])
def test_usage_errors_are_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, prog_name="canvit-export")
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "see `canvit-export" in line and "--help`" in line and "Usage:" not in result.output, result.output


def test_messages_use_the_right_article(export_artifact, tmp_path: Path) -> None:
    code, output = run("openvino", "--artifact", str(export_artifact("vits16", canvas=16)), "--precision", "bf16",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "is an fp32 graph" in output and "fp32, fp32-int8w or int8" in output, output
    ir = tmp_path / "ir"
    assert run("openvino", "--artifact", str(export_artifact("vits16", canvas=16)), "--out", str(ir))[0] == 0
    code, output = run("openvino", "--artifact", str(ir), "--out", str(tmp_path / "again"))
    assert code == 2 and "is an OpenVINO IR artifact; OpenVINO builds from an ONNX artifact" in output, output


def test_two_runners_in_two_threads_keep_their_own_state(export_artifact, photo) -> None:
    """Two sessions of one artifact stepped concurrently from two threads (different viewpoints) equal the same
    rollouts run one after the other."""
    import threading

    import numpy as np

    import canvit_runtime
    from canvit_runtime.policies import make_policy
    from canvit_runtime.preprocess import scene_batch

    artifact = export_artifact("vits16", canvas=16)
    scene = scene_batch(photo, scene_px=512, batch=1)
    plans = {"c2f": make_policy("c2f", batch=1, glimpses=8, seed=0), "f-iid": make_policy("f-iid", batch=1, glimpses=8,
                                                                                        seed=1)}

    def roll(name: str, results: dict) -> None:
        session = canvit_runtime.open(artifact, runtime="onnxruntime", threads=1)
        for v in plans[name]:
            result = session.step(scene, v.centers, v.scales)
        results[name] = (result.canvas, result.recurrent_cls)

    serial: dict = {}
    for name in plans:
        roll(name, serial)
    concurrent: dict = {}
    threads = [threading.Thread(target=roll, args=(name, concurrent)) for name in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in plans:
        np.testing.assert_array_equal(concurrent[name][0], serial[name][0])
        np.testing.assert_array_equal(concurrent[name][1], serial[name][1])
    assert not np.array_equal(serial["c2f"][0], serial["f-iid"][0])


def _cli(*args: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).parent / "canvit-export"), *args]


def test_two_exports_racing_to_one_out(export_artifact, tmp_path: Path) -> None:
    """Two OpenVINO conversions to the same --out at once: one complete artifact, one clear error, no mixture."""
    import subprocess

    from canvit_runtime.manifest import load_manifest

    artifact, out = export_artifact("vits16", canvas=16), tmp_path / "ir"
    procs = [subprocess.Popen(_cli("openvino", "--artifact", str(artifact), "--out", str(out)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    error = next(err for code, err in results if code == 2)
    assert "appeared while this export ran" in error or "already exists" in error, error
    assert "Traceback" not in error
    load_manifest(out)  # complete, every checksum right
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir"], "no staging folder left"


def test_a_killed_export_leaves_no_artifact_and_its_leftovers_are_cleaned(export_artifact, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from canvit_runtime.manifest import load_manifest

    artifact, out = export_artifact("vits16", canvas=16), tmp_path / "ir"
    proc = subprocess.Popen(_cli("openvino", "--artifact", str(artifact), "--out", str(out)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ir.*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed export must leave no artifact"
    leftovers = list(tmp_path.glob(".ir.*.tmp"))
    assert leftovers, "the killed export's staging folder (hidden) is what remains"
    code, output = run("openvino", "--artifact", str(artifact), "--out", str(out))
    assert code == 0, output
    load_manifest(out)
    assert not any(p.exists() for p in leftovers), "the next export to the same --out cleans what the killed one left"


@pytest.fixture
def small_file_system(tmp_path: Path):
    """A 16 MB tmpfs (a ViT-S canvas-16 step is ~90 MB): mounting needs root and a mount namespace that allows it."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the nearly-full file system test)")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("command", ["onnx", "openvino"])
def test_export_onto_a_full_file_system(export_artifact, small_file_system: Path, command: str) -> None:
    """An export or conversion that runs out of space: one line naming the output and the fix, exit 2, and the file
    system left as it was (no artifact, no staging folder, every byte given back)."""
    out = small_file_system / "a"
    if command == "onnx":
        args = ["onnx", "--random-weights", "--backbone", "vits16", "--canvas", "16", "--out", str(out)]
    else:
        args = ["openvino", "--artifact", str(export_artifact("vits16", canvas=16)), "--out", str(out)]
    code, output = run(*args)
    line = one_line(output.strip().splitlines()[-1])  # after the finished stages' progress lines
    assert code == 2 and "No space left on device" in line and str(out) in line, output
    assert "free some space or choose another --out" in line
    assert list(small_file_system.iterdir()) == []
    import shutil

    assert shutil.disk_usage(small_file_system).used == 0


def test_help_never_breaks_a_word_at_80_columns() -> None:
    """Every command's --help at 80 columns (click's wrapper breaks at hyphens: a Hub id or an option name cut in
    two is unreadable): no line ends inside a word, every option has help, and --model's default is the released
    CanViT-B that canvit_export.source loads."""
    import re

    import click

    from canvit_export.cli import RELEASED_MODEL
    from canvit_export.source import DEFAULT_MODEL
    from canvit_runtime.cli import main as runtime_main

    assert RELEASED_MODEL == DEFAULT_MODEL
    checked = 0
    for group, prog in ((main, "canvit-export"), (runtime_main, "canvit-runtime")):
        assert isinstance(group, click.Group)
        for name in group.list_commands(click.Context(group)):
            result = CliRunner().invoke(group, [name, "--help"], prog_name=prog, terminal_width=80)
            assert result.exit_code == 0, result.output
            broken = [line for line in result.output.splitlines() if re.search(r"[A-Za-z0-9]-$", line)]
            assert not broken, f"{prog} {name} --help breaks a word: {broken}"
            command = group.get_command(click.Context(group), name)
            assert command is not None
            silent = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
            assert not silent, f"{prog} {name}: options without help {silent}"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("cli", ["canvit-export", "canvit-runtime"])
def test_a_reader_that_leaves_is_no_error(export_artifact, cli: str) -> None:
    """`info DIR | head -1`: the reader closes the pipe; the command ends without an error message (click's EPIPE
    handling, exit 1), not "error: [Errno 32] Broken pipe" twice."""
    import subprocess
    import sys

    command = [str(Path(sys.executable).with_name(cli)), "info", str(export_artifact("vits16", canvas=16))]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader: the first write fails with EPIPE
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, stderr
    assert stderr == "", stderr
