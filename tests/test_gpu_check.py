"""scripts/gpu-check.py: on a machine without a GPU (a developer's, CI's) it must stop at once with one line and write
nothing, so that running it in the wrong place costs nothing; its report writer must give the table the first GPU
run will be read from; and on a GPU, its --quick run must pass."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.py"


@functools.cache
def gpu_check() -> ModuleType:
    """The script as a module (its file name has a hyphen, so it is loaded by path)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def no_gpu_line() -> str | None:
    """The script's own exit-3 line on this machine, or None where it sees an NVIDIA GPU."""
    module = gpu_check()
    return module.missing_gpu(module.nvidia_smi(), module.torch_facts())


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_without_a_gpu_exits_3_with_one_line_and_writes_nothing(tmp_path) -> None:
    if no_gpu_line() is None:
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU exit cannot be seen here")
    out = tmp_path / "report"
    result = run_script("--out", str(out))
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu-check: no NVIDIA GPU: "), lines[0]
    assert "nvidia-smi" in lines[0] and "torch" in lines[0] and "x86-64 Linux machine with an NVIDIA GPU" in lines[0]
    assert result.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_exit_statuses() -> None:
    result = run_script("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for line in ("exit status:", "  0  every part that could run passed", "  1  a part failed",
                 "  2  bad usage", "  3  no NVIDIA GPU here: one line on stderr names what is missing"):
        assert line in result.stdout, result.stdout
    for option in ("--out", "--quick"):
        assert option in result.stdout
    for name in ("1. probe", "2. engines", "3. parity", "4. cpp-demo", "5. timings", "6. trt"):
        assert name in result.stdout


def test_bad_usage_exits_2(tmp_path) -> None:
    """An unknown option, and an --out holding files this script did not write, end with exit 2 before any GPU
    probe, and the user's folder is left as it was."""
    assert run_script("--bogus", timeout=60).returncode == 2
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    result = run_script("--out", str(theirs), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("gpu-check: "), result.stderr
    assert "did not write" in result.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def hand_written_report() -> dict:
    part = gpu_check().part
    parts = [
        part("probe", "ran", "NVIDIA H200, compute capability 9.0", 1.23, {"machine": "x86_64"}),
        part("engines", "failed", "1 of 2 failed, first vits16-fp16: exit 2: a|b", 60.04, {"rows": [
            {"engine": "vits16-fp32", "export s": 10.5, "build s": 20.4, "engine MB": 98.7, "status": "ok", "why": ""},
            {"engine": "vits16-fp16", "export s": 11.0, "build s": None, "engine MB": None, "status": "failed",
             "why": "exit 2: a|b"},
        ]}),
        part("parity", "ran", "1 engines: parity and CUDA graphs pass", 30.0, {"rows": [
            {"engine": "vits16-fp32", "parity": "PASS", "canvas rel-L2": 1.234e-06, "graph active": True},
        ]}),
        part("cpp-demo", "skipped", "missing: nvcc (the CUDA toolkit)"),
        part("timings", "ran", "2 configurations timed", 12.0, {"rows": [
            {"configuration": "vitb16-fp16-trt [tensorrt]", "median ms": 1.5, "x paper 2.4 ms": 0.625},
            {"configuration": "vits16 PyTorch fp32 (CUDA)", "median ms": 3.0, "x paper 2.4 ms": None},
        ]}),
    ]
    return {"tool": "scripts/gpu-check.py", "started": "2026-01-02 03:04:05 UTC", "host": "gpu-box (x86_64)",
            "gpu": "NVIDIA H200", "quick": True, "total_seconds": 103.3, "exit_status": 1, "parts": parts}


EXPECTED_MARKDOWN = """\
# GPU check

2026-01-02 03:04:05 UTC on gpu-box (x86_64) (--quick): NVIDIA H200. Total 103.3 s; exit status 1.

| part | status | seconds | why |
|---|---|---|---|
| probe | ran | 1.2 | NVIDIA H200, compute capability 9.0 |
| engines | failed | 60.0 | 1 of 2 failed, first vits16-fp16: exit 2: a\\|b |
| parity | ran | 30.0 | 1 engines: parity and CUDA graphs pass |
| cpp-demo | skipped | 0.0 | missing: nvcc (the CUDA toolkit) |
| timings | ran | 12.0 | 2 configurations timed |

Skipped:
- cpp-demo: missing: nvcc (the CUDA toolkit)

Failed:
- engines: 1 of 2 failed, first vits16-fp16: exit 2: a|b

## engines

| engine | export s | build s | engine MB | status | why |
|---|---|---|---|---|---|
| vits16-fp32 | 10.5 | 20.4 | 98.7 | ok |  |
| vits16-fp16 | 11 |  |  | failed | exit 2: a\\|b |

## parity

| engine | parity | canvas rel-L2 | graph active |
|---|---|---|---|
| vits16-fp32 | PASS | 1.23e-06 | yes |

## timings

| configuration | median ms | x paper 2.4 ms |
|---|---|---|
| vitb16-fp16-trt [tensorrt] | 1.5 | 0.625 |
| vits16 PyTorch fp32 (CUDA) | 3 |  |
"""


def test_report_writer_gives_the_expected_table(tmp_path) -> None:
    module = gpu_check()
    report = hand_written_report()
    assert module.render_markdown(report) == EXPECTED_MARKDOWN
    out = tmp_path / "report"
    out.mkdir()
    module.write_report(out, report)
    assert (out / "report.md").read_text() == EXPECTED_MARKDOWN
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(p.name for p in out.iterdir()) == [".canvit-export", "report.json", "report.md"]
    # The folder is now this script's: a later run may replace it; with a file its marker does not list (a run
    # stopped half-way, or someone's notes), it may not.
    assert module.out_refusal(out) is None
    (out / "stray.txt").write_text("not ours")
    assert "holds files written after its last report" in module.out_refusal(out)


def test_exit_status_of_parts() -> None:
    module = gpu_check()
    ran, skipped, failed = (module.part("a", "ran"), module.part("b", "skipped", "no TensorRT"),
                            module.part("c", "failed", "exit 1"))
    assert module.exit_status([ran, skipped]) == 0
    assert module.exit_status([ran, skipped, failed]) == 1
    assert module.exit_status([]) == 0


def test_engine_plan_follows_compute_capability_and_quick() -> None:
    plan = gpu_check().engine_plan
    assert plan({"compute_capability": "9.0"}, quick=False) == (
        [("vits16", "fp32"), ("vits16", "fp16"), ("vits16", "bf16"), ("vits16", "int8"),
         ("vitb16", "fp32"), ("vitb16", "fp16"), ("vitb16", "bf16"), ("vitb16", "int8")], [])
    assert plan({"compute_capability": "7.5"}, quick=False) == (
        [("vits16", "fp32"), ("vits16", "fp16"), ("vits16", "int8"),
         ("vitb16", "fp32"), ("vitb16", "fp16"), ("vitb16", "int8")],
        ["bf16 left out: compute capability 7.5 < 8.0"])
    assert plan({}, quick=False)[1] == ["bf16 left out: compute capability unknown < 8.0"]
    assert plan({"compute_capability": "8.6"}, quick=True) == ([("vits16", "fp32"), ("vits16", "fp16")], [])


def test_the_no_gpu_line_names_what_is_missing() -> None:
    missing = gpu_check().missing_gpu
    no_smi = {"path": None, "gpus": [], "problem": "nvidia-smi not found"}
    assert missing(no_smi, {"installed": True, "available": False}) == (
        "gpu-check: no NVIDIA GPU: nvidia-smi not found and torch.cuda.is_available() is False; run this on an "
        "x86-64 Linux machine with an NVIDIA GPU")
    assert missing(no_smi, {"installed": False}) == (
        "gpu-check: no NVIDIA GPU: nvidia-smi not found and torch is not installed (torch.cuda.is_available() "
        "cannot be asked); run this on an x86-64 Linux machine with an NVIDIA GPU")
    empty = {"path": "/usr/bin/nvidia-smi", "gpus": [], "problem": "nvidia-smi lists no GPU (No devices were found)"}
    assert missing(empty, {"installed": True, "available": False}).startswith(
        "gpu-check: no NVIDIA GPU: nvidia-smi lists no GPU (No devices were found) and torch.cuda")
    assert missing({"path": "/usr/bin/nvidia-smi", "gpus": ["GPU 0: NVIDIA H200"], "problem": None},
                   {"installed": True, "available": False}) is None
    assert missing(no_smi, {"installed": True, "available": True}) is None


def test_quick_run_on_a_gpu(tmp_path) -> None:
    """On an NVIDIA GPU: the --quick run passes every part it can run (about 3 minutes on an H200 with TensorRT)."""
    if line := no_gpu_line():
        pytest.skip(f"needs an NVIDIA GPU; here {line.removeprefix('gpu-check: no NVIDIA GPU: ').split(';')[0]}")
    out = tmp_path / "report"
    result = run_script("--out", str(out), "--quick", timeout=1800)
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["parts"]] == ["probe", "engines", "parity", "cpp-demo", "timings", "trt"]
    assert result.returncode == 0, (out / "report.md").read_text()
    assert report["exit_status"] == 0 and (out / "report.md").exists()
    assert all(p["status"] in ("ran", "skipped") for p in report["parts"])


def test_parts_without_their_prerequisites_are_skipped(tmp_path, monkeypatch, capsys) -> None:
    """The whole run on a machine past the GPU gate that has nothing else (no TensorRT, no torch.cuda, no TensorRT
    headers): every part after the probe is skipped with its reason, the report is written, exit 0; a second run
    replaces the first's folder. The gate and the probe are the script's own functions, replaced here by their
    answers for such a machine (this one has no GPU to pass the gate)."""
    module = gpu_check()
    monkeypatch.setattr(module, "nvidia_smi", lambda: {"path": "/usr/bin/nvidia-smi", "gpus": ["GPU 0: Test GPU"],
                                                       "problem": None})
    monkeypatch.setattr(module, "torch_facts", lambda: {"installed": True, "available": False})
    facts = {"torch": {"available": False}, "tensorrt_error": "ModuleNotFoundError: No module named 'tensorrt'",
             "cmake": "/usr/bin/cmake", "cxx": "/usr/bin/g++", "nvcc": None, "tensorrt_headers": None,
             "missing_debian_headers": []}
    monkeypatch.setattr(module, "probe", lambda smi, torch, out: module.part("probe", "ran", "Test GPU", 0.1, facts))
    out = tmp_path / "report"
    for _ in range(2):
        assert module.main(["--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(p["name"], p["status"], p["why"]) for p in report["parts"]] == [
        ("probe", "ran", "Test GPU"),
        ("engines", "skipped", "TensorRT's Python bindings do not import (ModuleNotFoundError: No module named "
                               "'tensorrt'): pip install 'canvit-runtime[tensorrt]'"),
        ("parity", "skipped", "no engine was built (part engines)"),
        ("cpp-demo", "skipped", "missing: nvcc (the CUDA toolkit), TensorRT headers (set TENSORRT_ROOT)"),
        ("timings", "skipped", "engines: none built; PyTorch on CUDA: torch.cuda.is_available() is False"),
        ("trt", "skipped", "TensorRT's Python bindings do not import (ModuleNotFoundError: No module named "
                           "'tensorrt')"),
    ]
    assert report["gpu"] == "GPU 0: Test GPU" and report["exit_status"] == 0
    printed = capsys.readouterr().out
    assert "gpu-check [2/6] engines: skipped in 0.0 s" in printed and "exit 0" in printed
    assert "Skipped:\n- engines: TensorRT's Python bindings" in (out / "report.md").read_text()
