"""gpu-check: everything this project can only check on an NVIDIA GPU, in one run, ready for the first GPU we get.

    .venv/bin/python scripts/gpu-check.py [--out reports/gpu-check] [--quick]

The development machines and CI have no GPU, so the TensorRT engines, their parity, CUDA graphs, the C++ demo's
TensorRT backend and the CUDA timings have been compile-checked at most. This script runs each of them through the
project's own commands (canvit-export, canvit-runtime, cpp_demo), so that the first hour on a GPU yields one report
instead of a session of typing. It runs every part whose prerequisites exist, lists what it skipped and why, records
each part's duration and the total (aim: under 10 minutes; --quick: ViT-S fp32 and fp16 only, short rollouts), and
writes --out/report.json and --out/report.md (with each command's log under --out/logs/).

Parts:
  1. probe    nvidia-smi and its GPU; torch.cuda (device, compute capability); `import tensorrt`; trtexec; cmake, g++,
              TENSORRT_ROOT and CUDA for the C++ demo.
  2. engines  ViT-S and CanViT-B (canvas 32, random weights) exported at fp32, fp16, bf16 (compute capability >= 8.0
              only) and int8 (calibrated on the default photos) with `canvit-export onnx`, each built into a
              TensorRT engine with `canvit-runtime trt`.
  3. parity   `canvit-export parity --runtime tensorrt` of each engine against canvit-pytorch (exit 0 PASS, 1 FAIL),
              then each engine rolled out with cuda_graph=False and True (canvit_runtime.open): the same canvases.
  4. cpp-demo cpp_demo built with its TensorRT backend only; `canvit_demo --backend tensorrt` on the ViT-S engine
              (with and without --no-cuda-graph), its canvas compared with the Python runner's on the same inputs.
  5. timings  `canvit-export bench --runtimes tensorrt` over the engines, and canvit-pytorch on CUDA (eager fp32,
              bf16 autocast, torch.compile; median of N glimpses after warm-up, torch.cuda.synchronize around
              each), beside the paper's 2.4 ms a glimpse for CanViT-B.
  6. trt      the commands as users type them: `canvit-export trt --fp16` from weights to engine (ViT-S), and a
              device bundle (`trt --fp16 --bundle`) checked by `canvit-runtime check-bundle --runtime tensorrt`
              twice: the engine built, then reused (PASS at the fp16 tolerances both times).

A part that fails does not stop the others. --out must be new, empty, or a folder this script wrote (then it is
replaced): anything else is refused before any work.

Exit status:
  0  every part that could run passed (skipped parts are listed in the report)
  1  a part failed
  2  bad usage: an unknown option, or an --out this script may not write
  3  no NVIDIA GPU here: one line on stderr names what is missing, and nothing is written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOOL = "scripts/gpu-check.py"
"""The `tool` field of report.json: how an existing --out is recognized as this script's (and so replaceable)."""
PAPER_CANVITB_MS = 2.4
"""The CanViT paper's latency of one CanViT-B glimpse on a GPU: the timings part reports each CanViT-B figure
against it (a different GPU and stack, so a comparison, not a pass/fail bound)."""
CANVAS = 32
BACKBONES = ("vits16", "vitb16")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
QUICK_BACKBONES = ("vits16",)
QUICK_PRECISIONS = ("fp32", "fp16")
SAME_ROLLOUT_REL_L2 = 1e-6
"""CUDA-graph replay vs plain enqueues of one engine: the same kernels on the same buffers, so the canvases agree to
rounding at most."""
CPP_REL_L2 = 1e-4
"""The C++ demo's canvas vs the Python runner's on the same engine and inputs (tests/test_cpp_demo.py's bound)."""
CPP_REBUILT_REL_L2 = 1e-2
"""The same, when the demo built its own engine from the ONNX artifact: a second build may choose other kernels (and
TensorRT runs float32 layers in TF32 unless told not to), so the two engines agree only to TF32's rounding."""
DEBIAN_HEADERS = {"nlohmann/json.hpp": "nlohmann-json3-dev", "stb/stb_image.h": "libstb-dev",
                  "openssl/evp.h": "libssl-dev", "valijson/validator.hpp": "libvalijson-dev"}
"""What cpp_demo/CMakeLists.txt requires besides the backend (scripts/setup.sh installs them as root)."""

Part = dict[str, Any]


# --- the report ---------------------------------------------------------------------------------------------------
def part(name: str, status: str, why: str = "", seconds: float = 0.0, details: dict[str, Any] | None = None) -> Part:
    """One part's result, as report.json stores it: status ran | skipped | failed, why (the reason for a skip or a
    failure, a summary otherwise), its duration, and what it measured."""
    assert status in ("ran", "skipped", "failed"), status
    return {"name": name, "status": status, "why": why, "seconds": round(seconds, 1), "details": details or {}}


def exit_status(parts: list[Part]) -> int:
    """0 when every part that could run passed, 1 when one failed (the module docstring's exit statuses)."""
    return 1 if any(p["status"] == "failed" for p in parts) else 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of dict rows; the columns are the keys in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the machine, one row per part, what was skipped or failed and why, then each part's own table
    (its details' "rows")."""
    parts = report["parts"]
    lines = [
        "# GPU check",
        "",
        f"{report['started']} on {report['host']}{' (--quick)' if report['quick'] else ''}: {report['gpu']}. "
        f"Total {report['total_seconds']:.1f} s; exit status {report['exit_status']}.",
        "",
        *_table([{"part": p["name"], "status": p["status"], "seconds": f"{p['seconds']:.1f}", "why": p["why"]}
                 for p in parts]),
    ]
    for status, title in (("skipped", "Skipped"), ("failed", "Failed")):
        if chosen := [p for p in parts if p["status"] == status]:
            lines += ["", f"{title}:", *(f"- {p['name']}: {p['why']}" for p in chosen)]
    for p in parts:
        if p["details"].get("rows"):
            lines += ["", f"## {p['name']}", "", *_table(p["details"]["rows"])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write report.json and report.md into `out` (through canvit_runtime.paths.write_output: a temporary file
    renamed into place, never through a link), and refresh the folder's marker, so that a run stopped half-way
    still leaves a report and a folder the next run may replace."""
    from canvit_runtime.paths import write_marker, write_output

    write_output(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_output(out / "report.md", render_markdown(report))
    write_marker(out, "report folder")


def written_here(out: Path) -> bool:
    """Whether `out` holds this script's report.json (the mark of a folder it may replace)."""
    try:
        return json.loads((out / "report.json").read_text()).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def out_refusal(out: Path) -> str | None:
    """Why --out may not be written (None when it may): canvit_runtime.paths.check_out's rules (no symlink, not a
    protected folder, only what the folder's marker lists), and an existing non-empty folder must hold this script's
    report.json."""
    from canvit_runtime.paths import ExportError, check_out

    try:
        check_out(out, force=True)
    except ExportError as error:
        if out.is_dir() and not out.is_symlink() and written_here(out):
            return (f"--out {out} holds files written after its last report (an interrupted run?): delete it or "
                    f"choose another --out")
        return str(error).replace("--force replaces only what canvit-export wrote",
                                  "gpu-check replaces only its own report folders")
    if out.is_dir() and any(out.iterdir()) and not written_here(out):
        return f"--out {out} is a folder gpu-check did not write (no report.json of {TOOL}): choose a new folder"
    return None


# --- running commands ---------------------------------------------------------------------------------------------
def executable(name: str) -> str | None:
    """A console script of this environment (beside sys.executable, then the repository's .venv), or on PATH."""
    for folder in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def run(argv: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run a command with stdout and stderr into `log`; (exit code, its last output line, seconds). 124 on timeout,
    127 when the program is missing."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        try:
            rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False, cwd=REPO,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            f.write(f"\ngpu-check: timed out after {timeout:.0f} s\n")
        except OSError as error:
            rc = 127
            f.write(f"\ngpu-check: {error}\n")
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return rc, (lines[-1] if lines else "")[:300], time.perf_counter() - start


def child(name: str, args: dict[str, Any], log: Path, timeout: float) -> tuple[dict[str, Any] | None, str, float]:
    """Run one of CHILDREN in a fresh Python (a crash or a hang in CUDA, TensorRT or torch.compile then costs one
    part, not the run); (its JSON result or None, the last line of its output, seconds)."""
    result = log.with_suffix(".json")
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args),
            "--child-result", str(result)]
    rc, last, seconds = run(argv, log, timeout)
    if rc != 0 or not result.exists():
        return None, f"exit {rc}: {last}", seconds
    return json.loads(result.read_text()), "", seconds


# --- the GPU gate and part 1 --------------------------------------------------------------------------------------
TORCH_FACTS = """
import json, warnings
warnings.simplefilter("ignore")
try:
    import torch
except ImportError as error:
    print(json.dumps({"installed": False, "error": str(error)}))
    raise SystemExit
facts = {"installed": True, "version": torch.__version__, "cuda": torch.version.cuda,
         "available": torch.cuda.is_available()}
if facts["available"]:
    facts["device"] = torch.cuda.get_device_name(0)
    facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    facts["count"] = torch.cuda.device_count()
print(json.dumps(facts))
"""


def nvidia_smi() -> dict[str, Any]:
    """nvidia-smi's path and the GPUs it lists (`-L`), or why it lists none."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return {"path": None, "gpus": [], "problem": "nvidia-smi not found"}
    try:
        listed = subprocess.run([path, "-L"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"path": path, "gpus": [], "problem": f"nvidia-smi -L failed ({error})"}
    gpus = [line.strip() for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    first = (listed.stdout + listed.stderr).strip().splitlines()
    problem = None if gpus else f"nvidia-smi lists no GPU ({first[0][:120] if first else f'exit {listed.returncode}'})"
    facts: dict[str, Any] = {"path": path, "gpus": gpus, "problem": problem}
    if gpus:
        query = subprocess.run([path, "--query-gpu=name,driver_version,memory.total,compute_cap",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=60, check=False)
        facts["query"] = query.stdout.strip().splitlines() if query.returncode == 0 else []
    return facts


def torch_facts() -> dict[str, Any]:
    """torch's version and torch.cuda's device, asked in a fresh Python whose warnings and output stay captured (an
    import of torch without a driver warns on stderr, and the no-GPU exit prints exactly one line)."""
    try:
        done = subprocess.run([sys.executable, "-c", TORCH_FACTS], capture_output=True, text=True, timeout=300,
                              check=False)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        return {"installed": None, "error": f"asking torch failed ({error})"}


def missing_gpu(smi: dict[str, Any], torch: dict[str, Any]) -> str | None:
    """The one line of exit status 3 (None when a GPU is here): neither nvidia-smi nor torch.cuda sees one."""
    if smi["gpus"] or torch.get("available"):
        return None
    if torch.get("installed") is False:
        asked = "torch is not installed (torch.cuda.is_available() cannot be asked)"
    elif torch.get("installed") is None:
        asked = torch["error"]
    else:
        asked = "torch.cuda.is_available() is False"
    return (f"gpu-check: no NVIDIA GPU: {smi['problem']} and {asked}; run this on an x86-64 Linux machine with an "
            f"NVIDIA GPU")


TENSORRT_FACTS = """
import json, warnings
warnings.simplefilter("ignore")
facts = {}
try:
    import tensorrt
    facts["tensorrt"] = tensorrt.__version__
except Exception as error:
    facts["tensorrt_error"] = f"{type(error).__name__}: {error}"
try:
    from canvit_runtime.tensorrt import import_cudart
    import_cudart()
    facts["cuda_python"] = True
except Exception as error:
    facts["cuda_python_error"] = str(error)
print(json.dumps(facts))
"""


def tensorrt_headers() -> Path | None:
    """The folder of NvInfer.h where cpp_demo/CMakeLists.txt looks: TENSORRT_ROOT/include, else the system's."""
    roots = [Path(os.environ["TENSORRT_ROOT"]) / "include"] if os.environ.get("TENSORRT_ROOT") else []
    for folder in (*roots, Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
                   Path("/usr/include")):
        if (folder / "NvInfer.h").exists():
            return folder
    return None


def probe(smi: dict[str, Any], torch: dict[str, Any], out: Path) -> Part:
    """Part 1: what this machine has for each later part (they read these facts to decide what to skip)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", TENSORRT_FACTS], capture_output=True, text=True, timeout=300,
                              check=False, cwd=REPO)
        trt = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        trt = {"tensorrt_error": f"asking failed ({error})"}
    trtexec = shutil.which("trtexec") or next(
        (str(p) for p in (Path(os.environ.get("TENSORRT_ROOT", "/nonexistent")) / "bin/trtexec",
                          Path("/usr/src/tensorrt/bin/trtexec")) if p.exists()), None)
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    headers = tensorrt_headers()
    capability = torch.get("capability") or next(
        (line.rsplit(",", 1)[-1].strip() for line in smi.get("query", []) if "," in line), None)
    details = {
        "machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
        "nvidia_smi": smi, "torch": torch, "compute_capability": capability, **trt, "trtexec": trtexec,
        "cmake": shutil.which("cmake"), "cxx": shutil.which("g++") or shutil.which("c++"), "nvcc": nvcc,
        "tensorrt_root": os.environ.get("TENSORRT_ROOT"), "tensorrt_headers": str(headers) if headers else None,
        "missing_debian_headers": [pkg for header, pkg in DEBIAN_HEADERS.items()
                                   if not (Path("/usr/include") / header).exists()],
    }
    gaps = [label for label, present in (
        ("torch.cuda", torch.get("available")), ("tensorrt", trt.get("tensorrt")),
        ("cuda-python", trt.get("cuda_python")), ("trtexec", trtexec), ("cmake", details["cmake"]),
        ("g++", details["cxx"]), ("nvcc", nvcc), ("TensorRT headers", headers)) if not present]
    device = torch.get("device") or (smi["gpus"][0] if smi["gpus"] else "?")
    why = f"{device}, compute capability {capability or '?'}" + (f"; missing: {', '.join(gaps)}" if gaps else "")
    return part("probe", "ran", why, time.perf_counter() - start, details)


# --- part 2: engines ----------------------------------------------------------------------------------------------
def engine_plan(facts: dict[str, Any], quick: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(backbone, precision) pairs to build, and notes on the precisions left out (bf16 below compute capability
    8.0: Ampere and newer have bf16 tensor cores)."""
    backbones, precisions = (QUICK_BACKBONES, QUICK_PRECISIONS) if quick else (BACKBONES, PRECISIONS)
    notes = []
    if "bf16" in precisions:
        capability = facts.get("compute_capability")
        try:
            ok = float(capability) >= 8.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            precisions = tuple(p for p in precisions if p != "bf16")
            notes.append(f"bf16 left out: compute capability {capability or 'unknown'} < 8.0")
    return [(b, p) for b in backbones for p in precisions], notes


def engines(facts: dict[str, Any], out: Path, quick: bool) -> tuple[Part, dict[tuple[str, str], Path]]:
    """Part 2: export each (backbone, precision) with `canvit-export onnx` and build its engine with
    `canvit-runtime trt`. Returns the part and the engine folders built."""
    start = time.perf_counter()
    built: dict[tuple[str, str], Path] = {}
    if not facts.get("tensorrt"):
        why = f"TensorRT's Python bindings do not import ({facts.get('tensorrt_error', '?')}): pip install " \
              f"'canvit-runtime[tensorrt]'"
        return part("engines", "skipped", why), built
    export, runtime = executable("canvit-export"), executable("canvit-runtime")
    if export is None or runtime is None:
        why = "canvit-export or canvit-runtime is not installed: run scripts/setup.sh"
        return part("engines", "failed", why), built
    plan, notes = engine_plan(facts, quick)
    rows = []
    for backbone, precision in plan:
        name = f"{backbone}-{precision}"
        artifact, engine = out / "artifacts" / name, out / "artifacts" / f"{name}-trt"
        row: dict[str, Any] = {"engine": name, "export s": None, "build s": None, "engine MB": None, "status": "failed",
                               "why": ""}
        rc, last, seconds = run([export, "onnx", "--random-weights", "--backbone", backbone, "--canvas", str(CANVAS),
                                 "--precision", precision, "--out", str(artifact)], out / "logs" / f"export-{name}.log",
                                timeout=1200)
        row["export s"] = round(seconds, 1)
        if rc == 0:
            rc, last, seconds = run([runtime, "trt", "--artifact", str(artifact), "--precision", precision, "--out",
                                     str(engine)], out / "logs" / f"trt-{name}.log", timeout=1800)
            row["build s"] = round(seconds, 1)
            if rc == 0 and (engine / "step.engine").exists():
                row.update({"engine MB": round((engine / "step.engine").stat().st_size / 1e6, 1), "status": "ok"})
                built[(backbone, precision)] = engine
            else:
                row["why"] = f"canvit-runtime trt exit {rc}: {last}"
        else:
            row["why"] = f"canvit-export onnx exit {rc}: {last}"
        rows.append(row)
        print(f"  {name}: {row['status']} (export {row['export s']} s, build {row['build s']} s) {row['why']}",
              flush=True)
    failed = [r for r in rows if r["status"] != "ok"]
    why = f"{len(built)} of {len(plan)} engines built" + (f"; {'; '.join(notes)}" if notes else "")
    if failed:
        why = f"{len(failed)} of {len(plan)} failed, first {failed[0]['engine']}: {failed[0]['why']}"
    return part("engines", "failed" if failed else "ran", why, time.perf_counter() - start,
                {"rows": rows, "notes": notes, "canvas": CANVAS}), built


# --- part 3: parity -----------------------------------------------------------------------------------------------
def child_cuda_graph(args: dict[str, Any]) -> dict[str, Any]:
    """(child) Roll one engine out with cuda_graph=False and True on the same photo and C2F viewpoints: the canvases
    after every glimpse, and the final recurrent CLS, compared; whether the graphs were really replayed."""
    import numpy as np

    import canvit_runtime
    from canvit_export.parity import default_image
    from canvit_runtime.policies import make_policy
    from canvit_runtime.preprocess import scene_batch

    results: dict[bool, dict[str, Any]] = {}
    for graph in (False, True):
        runner = canvit_runtime.open(args["engine"], runtime="tensorrt", cuda_graph=graph)
        scene = scene_batch(default_image(), scene_px=runner.manifest.scene_px, batch=runner.manifest.batch)
        runner.reset()
        canvases, times = [], []
        result = None
        for v in make_policy("c2f", batch=runner.manifest.batch, glimpses=args["glimpses"], seed=0):
            begin = time.perf_counter()
            result = runner.step(scene, v.centers, v.scales)
            times.append((time.perf_counter() - begin) * 1e3)
            canvases.append(np.array(result.canvas, copy=True))
        assert result is not None
        results[graph] = {"canvases": canvases, "cls": np.array(result.recurrent_cls, copy=True),
                          "ms": float(np.median(times)), "active": bool(getattr(runner, "cuda_graph", graph))}
        del runner

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    per_glimpse = [rel(g, e) for g, e in zip(results[True]["canvases"], results[False]["canvases"], strict=True)]
    return {"worst canvas rel-L2": max(per_glimpse), "cls rel-L2": rel(results[True]["cls"], results[False]["cls"]),
            "graph active": results[True]["active"], "enqueue ms": results[False]["ms"],
            "graph ms": results[True]["ms"], "finite": bool(np.isfinite(results[True]["canvases"][-1]).all())}


def parity(built: dict[tuple[str, str], Path], out: Path, quick: bool) -> Part:
    """Part 3: `canvit-export parity --runtime tensorrt` of each engine (exit 0 PASS, 1 FAIL) and the CUDA-graph
    rollout against plain enqueues (parity has no option for cuda_graph, and its runner runs without graphs)."""
    start = time.perf_counter()
    if not built:
        return part("parity", "skipped", "no engine was built (part engines)")
    export = executable("canvit-export")
    if export is None:
        return part("parity", "failed", "canvit-export is not installed: run scripts/setup.sh")
    glimpses = 5 if quick else 21
    rows = []
    for (backbone, precision), engine in built.items():
        name = f"{backbone}-{precision}"
        report = out / "parity" / f"{name}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        rc, last, seconds = run([export, "parity", "--artifact", str(engine), "--runtime", "tensorrt",
                                 "--random-weights", "--backbone", backbone, "--glimpses", str(glimpses),
                                 "--report", str(report)], out / "logs" / f"parity-{name}.log", timeout=1200)
        verdict = {0: "PASS", 1: "FAIL"}.get(rc, f"error (exit {rc})")
        row: dict[str, Any] = {"engine": name, "parity": verdict, "parity s": round(seconds, 1),
                               "canvas rel-L2": None, "canvas cosine": None}
        try:
            worst = json.loads(report.read_text()).get("worst", {})
            row.update({"canvas rel-L2": worst.get("canvas_rel_l2"), "canvas cosine": worst.get("canvas_cosine")})
        except (OSError, ValueError, AttributeError):
            pass
        graph, problem, _ = child("cuda-graph", {"engine": str(engine), "glimpses": glimpses},
                                  out / "logs" / f"cuda-graph-{name}.log", timeout=600)
        if graph is None:
            row.update({"cuda graph": f"error ({problem})"})
        else:
            same = graph["worst canvas rel-L2"] <= SAME_ROLLOUT_REL_L2 and graph["cls rel-L2"] <= SAME_ROLLOUT_REL_L2
            ok = same and graph["graph active"] and graph["finite"]
            row.update({"cuda graph": "PASS" if ok else "FAIL", "graph vs enqueue rel-L2": graph["worst canvas rel-L2"],
                        "graph active": graph["graph active"], "enqueue ms": graph["enqueue ms"],
                        "graph ms": graph["graph ms"]})
        if rc not in (0, 1):
            row["why"] = last
        rows.append(row)
        print(f"  {name}: parity {row['parity']}, cuda graph {row['cuda graph']}", flush=True)
    bad = [r for r in rows if r["parity"] != "PASS" or r["cuda graph"] != "PASS"]
    why = f"{len(rows)} engines: parity and CUDA graphs pass"
    if bad:
        why = f"{len(bad)} of {len(rows)} engines fail, first {bad[0]['engine']}: parity {bad[0]['parity']}, " \
              f"cuda graph {bad[0]['cuda graph']}"
    return part("parity", "failed" if bad else "ran", why, time.perf_counter() - start,
                {"rows": rows, "glimpses": glimpses, "graph_tolerance": SAME_ROLLOUT_REL_L2})


# --- part 4: the C++ demo -----------------------------------------------------------------------------------------
def child_cpp_inputs(args: dict[str, Any]) -> dict[str, Any]:
    """(child) The demo's inputs and the Python runner's answer: scene.npy (a photo, preprocessed), vp.json (F-IID,
    8 glimpses) and the canvas canvit_runtime's TensorRT runner reaches on them."""
    import numpy as np

    import canvit_runtime
    from canvit_export.parity import default_image
    from canvit_runtime.policies import make_policy, to_json
    from canvit_runtime.preprocess import scene_batch

    folder = Path(args["folder"])
    runner = canvit_runtime.open(args["engine"], runtime="tensorrt")
    scene = scene_batch(default_image(), scene_px=runner.manifest.scene_px, batch=1)
    viewpoints = make_policy("f-iid", batch=1, glimpses=args["glimpses"], seed=3)
    np.save(folder / "scene.npy", scene[0])
    (folder / "vp.json").write_text(json.dumps(to_json(viewpoints)))
    runner.reset()
    result = None
    for v in viewpoints:
        result = runner.step(scene, v.centers, v.scales)
    assert result is not None
    np.save(folder / "python-canvas.npy", result.canvas)
    return {"scene": str(folder / "scene.npy"), "viewpoints": str(folder / "vp.json")}


def cpp_demo(facts: dict[str, Any], built: dict[tuple[str, str], Path], out: Path) -> Part:
    """Part 4: build cpp_demo with the TensorRT backend only (docs/cpp-demo.md, "On a Jetson ... with TensorRT"), run
    `canvit_demo --backend tensorrt` on the ViT-S engine with CUDA graphs and without, and compare its canvas with
    the Python runner's. An engine the demo's TensorRT cannot load (another TensorRT than the Python wheel's) is
    retried from the ONNX artifact with --engine, the demo building its own."""
    start = time.perf_counter()
    missing = [label for label, present in (("cmake", facts.get("cmake")), ("g++", facts.get("cxx")),
                                            ("nvcc (the CUDA toolkit)", facts.get("nvcc")),
                                            ("TensorRT headers (set TENSORRT_ROOT)", facts.get("tensorrt_headers")))
               if not present]
    if packages := facts.get("missing_debian_headers"):
        missing.append(f"apt-get install {' '.join(packages)}")
    if missing:
        return part("cpp-demo", "skipped", f"missing: {', '.join(missing)}")
    choice = next((k for k in (("vits16", "fp32"), ("vits16", "fp16")) if k in built), None)
    if choice is None:
        return part("cpp-demo", "skipped", "no ViT-S engine was built (part engines)")
    engine = built[choice]
    onnx_artifact = engine.with_name(engine.name.removesuffix("-trt"))
    build, work, logs = out / "cpp-build", out / "cpp", out / "logs"
    work.mkdir(parents=True, exist_ok=True)
    configure = ["cmake", "-S", str(REPO / "cpp_demo"), "-B", str(build), "-DCANVIT_WITH_TENSORRT=ON",
                 "-DCANVIT_WITH_OPENVINO=OFF", "-DCANVIT_WITH_ONNXRUNTIME=OFF", "-DCANVIT_BUILD_TESTS=OFF"]
    if os.environ.get("TENSORRT_ROOT"):
        configure.append(f"-DTENSORRT_ROOT={os.environ['TENSORRT_ROOT']}")
    if Path(facts["nvcc"]).parent.name == "bin":
        configure.append(f"-DCUDAToolkit_ROOT={Path(facts['nvcc']).parent.parent}")
    details: dict[str, Any] = {"engine": str(engine)}
    rc, last, seconds = run(configure, logs / "cpp-configure.log", timeout=600)
    details["configure s"] = round(seconds, 1)
    if rc != 0:
        return part("cpp-demo", "failed", f"cmake configure exit {rc}: {last}", time.perf_counter() - start, details)
    rc, last, seconds = run(["cmake", "--build", str(build), "--target", "canvit_demo", "-j", str(os.cpu_count() or 2)],
                            logs / "cpp-build.log", timeout=1200)
    details["build s"] = round(seconds, 1)
    if rc != 0:
        return part("cpp-demo", "failed", f"cmake --build exit {rc}: {last}", time.perf_counter() - start, details)
    demo = build / "canvit_demo"
    glimpses = 8
    inputs, problem, _ = child("cpp-inputs", {"engine": str(engine), "folder": str(work), "glimpses": glimpses},
                               logs / "cpp-inputs.log", timeout=600)
    if inputs is None:
        return part("cpp-demo", "failed", f"the Python runner's rollout failed: {problem}", time.perf_counter() - start,
                    details)
    import numpy as np

    python = np.load(work / "python-canvas.npy").astype(np.float64)
    rows = []
    sources = [engine, onnx_artifact]
    for graph in (True, False):
        for source in sources:
            rebuilt = source == onnx_artifact
            row = _cpp_demo_row(demo, source, rebuilt=rebuilt, graph=graph, inputs=inputs, glimpses=glimpses,
                                work=work, logs=logs, python=python)
            rc = row["exit"]
            rows.append(row)
            if rc == 0:
                break
            if not rebuilt:
                sources = [onnx_artifact]  # the demo's TensorRT cannot load the Python-built engine: build its own
    details["rows"] = rows
    passed = {r["run"].split(",")[0] for r in rows if r["status"] == "PASS"}
    bad = [r for r in rows if r["run"].split(",")[0] not in passed]
    why = f"canvit_demo --backend tensorrt matches the Python runner ({', '.join(sorted(passed))})"
    if not_loaded := [r for r in rows if r["status"] == "failed" and r["run"].split(",")[0] in passed]:
        why += f"; the engine artifact did not load ({not_loaded[0].get('why', '')}), so the demo built its own"
    if bad:
        why = f"{bad[0]['run']}: {bad[0]['status']} ({bad[0].get('why') or bad[0]['rel-L2 vs Python']})"
    return part("cpp-demo", "failed" if bad else "ran", why, time.perf_counter() - start, details)


def _cpp_demo_row(demo: Path, source: Path, *, rebuilt: bool, graph: bool, inputs: dict[str, str], glimpses: int,
                  work: Path, logs: Path, python: Any) -> dict[str, Any]:
    """One canvit_demo --backend tensorrt run (an engine artifact, or the ONNX artifact with --engine; CUDA graph or
    not) and its canvas against the Python runner's `python` canvas."""
    import numpy as np

    tag = f"{'graph' if graph else 'enqueue'}-{'onnx' if rebuilt else 'engine'}"
    argv = [str(demo), "--artifact", str(source), "--backend", "tensorrt", "--image", inputs["scene"],
            "--policy", inputs["viewpoints"], "--glimpses", str(glimpses), "--canvas-out",
            str(work / f"canvas-{tag}.npy"), "--log", str(work / f"log-{tag}.json")]
    if rebuilt:
        argv += ["--engine", str(work / "demo.engine")]
    if not graph:
        argv.append("--no-cuda-graph")
    rc, last, _ = run(argv, logs / f"cpp-demo-{tag}.log", timeout=900)
    bound = CPP_REBUILT_REL_L2 if rebuilt else CPP_REL_L2
    label = "cuda graph" if graph else "no cuda graph"
    row: dict[str, Any] = {"run": f"{label}, {'ONNX + --engine' if rebuilt else 'engine artifact'}",
                           "exit": rc, "rel-L2 vs Python": None, "bound": bound, "median ms": None,
                           "status": "failed"}
    if rc == 0:
        cpp = np.load(work / f"canvas-{tag}.npy").astype(np.float64)
        relative = float(np.linalg.norm(cpp - python) / np.linalg.norm(python)) if cpp.shape == python.shape \
            else float("inf")
        log = json.loads((work / f"log-{tag}.json").read_text())
        row.update({"rel-L2 vs Python": relative, "median ms": log.get("median_ms"),
                    "status": "PASS" if relative <= bound else "FAIL"})
    else:
        row["why"] = last
    return row


# --- part 5: timings ----------------------------------------------------------------------------------------------
def child_torch_timings(args: dict[str, Any]) -> dict[str, Any]:
    """(child) canvit-pytorch's own glimpse step (canvit_export.step.reference_step, random weights of
    canvit_export.source.load) on CUDA: eager fp32, bf16 autocast and torch.compile, each the median of `iters`
    glimpses after `warmup`, C2F viewpoints on a photo, the state carried between glimpses and reset every 21,
    torch.cuda.synchronize before and after each timed glimpse."""
    import functools

    import numpy as np
    import torch

    from canvit_export.parity import default_image
    from canvit_export.source import load
    from canvit_export.step import reference_step
    from canvit_runtime.policies import make_policy
    from canvit_runtime.preprocess import scene_batch

    device = torch.device("cuda")
    rows = []
    for backbone in args["backbones"]:
        canvit = load(None, random_weights=True, backbone=backbone, seed=0).canvit.to(device).eval()
        with torch.no_grad():
            state = canvit.init_state(batch_size=1, canvas_grid_size=args["canvas"])
            initial = (state.canvas.detach().float().to(device), state.recurrent_cls.detach().float().to(device))
        scene = torch.from_numpy(scene_batch(default_image(), scene_px=512, batch=1)).to(device)
        viewpoints = [(torch.from_numpy(v.centers).to(device), torch.from_numpy(v.scales).to(device))
                      for v in make_policy("c2f", batch=1, glimpses=21, seed=0)]
        step = functools.partial(reference_step, canvit, glimpse_px=128)
        for mode in args["modes"]:
            fn: Any = torch.compile(step, backend="inductor") if mode == "compile" else step
            row: dict[str, Any] = {"configuration": f"{backbone} PyTorch {mode} (CUDA)", "median ms": None,
                                   "p90 ms": None}
            try:
                times = []
                canvas, cls = initial
                with torch.no_grad():
                    for t in range(args["warmup"] + args["iters"]):
                        if t % 21 == 0:
                            canvas, cls = initial
                        centers, scales = viewpoints[t % 21]
                        torch.cuda.synchronize()
                        begin = time.perf_counter()
                        if mode == "bf16-autocast":
                            with torch.autocast("cuda", dtype=torch.bfloat16):
                                canvas, cls = fn(scene, canvas, cls, centers, scales)
                            canvas, cls = canvas.float(), cls.float()
                        else:
                            canvas, cls = fn(scene, canvas, cls, centers, scales)
                        torch.cuda.synchronize()
                        if t >= args["warmup"]:
                            times.append((time.perf_counter() - begin) * 1e3)
                row.update({"median ms": float(np.median(times)), "p90 ms": float(np.percentile(times, 90)),
                            "finite": bool(torch.isfinite(canvas).all())})
            except Exception as error:  # torch.compile's inductor may lack its compiler here: a row, not a crash
                first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                row["error"] = f"{type(error).__name__}: {first}"
            rows.append(row)
        del canvit
        torch.cuda.empty_cache()
    return {"rows": rows, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def with_paper(row: dict[str, Any]) -> dict[str, Any]:
    """The row with "x paper" (its median over the paper's 2.4 ms) when it times CanViT-B."""
    ms = row.get("median ms")
    canvitb = "vitb16" in str(row.get("configuration", ""))
    return {**row, "x paper 2.4 ms": ms / PAPER_CANVITB_MS if canvitb and isinstance(ms, float) else None}


def timings(facts: dict[str, Any], built: dict[tuple[str, str], Path], out: Path, quick: bool) -> Part:
    """Part 5: the engines under `canvit-export bench --runtimes tensorrt` (its baselines run on the CPU, so not
    here), and canvit-pytorch on CUDA timed directly (child_torch_timings)."""
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    problems, skipped = [], []
    details: dict[str, Any] = {"paper_canvitb_ms": PAPER_CANVITB_MS}
    export = executable("canvit-export")
    if not built:
        skipped.append("engines: none built")
    elif export is None:
        problems.append("canvit-export is not installed")
    else:
        argv = [export, "bench", "--artifacts", *map(str, built.values()), "--runtimes", "tensorrt", "--baselines", "",
                "--no-peer", "--out", str(out / "bench")]
        if quick:
            argv.append("--quick")
        rc, last, seconds = run(argv, out / "logs" / "bench.log", timeout=1800)
        details["bench s"] = round(seconds, 1)
        if rc != 0:
            problems.append(f"canvit-export bench exit {rc}: {last}")
        else:
            bench = json.loads((out / "bench" / "bench.json").read_text())
            rows += [{"configuration": r["config"], "median ms": r["median ms"], "p90 ms": r["p90 ms"]}
                     for r in bench["rows"] if r.get("runtime") == "tensorrt"]
    if not facts.get("torch", {}).get("available"):
        skipped.append("PyTorch on CUDA: torch.cuda.is_available() is False")
    else:
        modes = ["fp32", "bf16-autocast"] + ([] if quick else ["compile"])
        args = {"backbones": list(QUICK_BACKBONES if quick else BACKBONES), "modes": modes, "canvas": CANVAS,
                "warmup": 3 if quick else 10, "iters": 10 if quick else 50}
        result, problem, seconds = child("torch-timings", args, out / "logs" / "torch-timings.log", timeout=1800)
        details["pytorch s"] = round(seconds, 1)
        if result is None:
            problems.append(f"PyTorch CUDA timings: {problem}")
        else:
            rows += result["rows"]
            problems += [f"{r['configuration']}: {r['error']}" for r in result["rows"] if r.get("error")]
            if quick:
                skipped.append("torch.compile: left out by --quick (it compiles for minutes)")
    details["rows"] = [with_paper(r) for r in rows]
    details["skipped"] = skipped
    if problems:
        return part("timings", "failed", "; ".join(problems), time.perf_counter() - start, details)
    if not rows:
        return part("timings", "skipped", "; ".join(skipped), time.perf_counter() - start, details)
    best = min((r for r in details["rows"] if r["x paper 2.4 ms"] is not None), key=lambda r: r["median ms"],
               default=None)
    why = f"{len(rows)} configurations timed" + (f"; fastest CanViT-B {best['configuration']} {best['median ms']:.2f} "
                                                  f"ms vs the paper's {PAPER_CANVITB_MS} ms" if best else "")
    if skipped:
        why += f"; skipped {'; '.join(skipped)}"
    return part("timings", "ran", why, time.perf_counter() - start, details)


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "cuda-graph": child_cuda_graph, "cpp-inputs": child_cpp_inputs, "torch-timings": child_torch_timings}


# --- the command --------------------------------------------------------------------------------------------------
# --- part 6: trt as users type it ------------------------------------------------------------------------------
def trt_commands(facts: dict[str, Any], out: Path) -> Part:
    """Part 6: `canvit-export trt --fp16` from weights (ViT-S, canvas 16) to an engine, then a bundle of it checked
    with `canvit-runtime check-bundle --runtime tensorrt` twice (build, then reuse of the engine it built)."""
    start = time.perf_counter()
    if not facts.get("tensorrt"):
        return part("trt", "skipped", f"TensorRT's Python bindings do not import ({facts.get('tensorrt_error', '?')})")
    export, runtime = executable("canvit-export"), executable("canvit-runtime")
    if export is None or runtime is None:
        return part("trt", "failed", "canvit-export or canvit-runtime is not installed: run scripts/setup.sh")
    small = ["--fp16", "--random-weights", "--backbone", "vits16", "--canvas", "16"]
    onnx_dir, bundle = out / "artifacts" / "trt-fp16", out / "artifacts" / "trt-bundle"
    rows: list[dict[str, Any]] = []
    steps = [("trt --fp16 (weights to engine)", [export, "trt", *small, "--out", str(onnx_dir)], "trt-one"),
             ("trt --fp16 --bundle", [export, "trt", *small, "--glimpses", "8", "--bundle", str(bundle)], "trt-bundle"),
             ("check-bundle (build)", [runtime, "check-bundle", str(bundle), "--runtime", "tensorrt"], "check-1"),
             ("check-bundle (reuse)", [runtime, "check-bundle", str(bundle), "--runtime", "tensorrt"], "check-2")]
    for label, argv, log in steps:
        rc, last, seconds = run(argv, out / "logs" / f"{log}.log", timeout=1800)
        rows.append({"step": label, "exit": rc, "seconds": round(seconds, 1), "last line": last})
        print(f"  {label}: exit {rc} in {seconds:.1f} s: {last}", flush=True)
        if rc != 0:
            break
    ok = len(rows) == len(steps) and all(r["exit"] == 0 for r in rows) and \
        (onnx_dir.parent / f"{onnx_dir.name}-trt" / "step.engine").exists()
    why = "engine from weights built; bundle checked on TensorRT twice (PASS)" if ok else \
        f"{rows[-1]['step']}: exit {rows[-1]['exit']}: {rows[-1]['last line']}"
    return part("trt", "ran" if ok else "failed", why, time.perf_counter() - start, {"rows": rows})


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    command = argparse.ArgumentParser(
        prog="gpu-check.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=doc.split("\n\n")[0] + "\n\nParts:" + doc.split("Parts:")[1].split("Exit status:")[0].rstrip(),
        epilog="exit status:\n" + doc.split("Exit status:\n")[1])
    command.add_argument("--out", type=Path, default=Path("reports/gpu-check"),
                         help="report folder, new or written by this script (default: reports/gpu-check)")
    command.add_argument("--quick", action="store_true",
                         help="ViT-S fp32 and fp16 only, 5-glimpse parity, short timings, no torch.compile")
    for hidden in ("--child", "--child-args", "--child-result"):  # one part's GPU work in a fresh Python (child())
        command.add_argument(hidden, help=argparse.SUPPRESS)
    return command


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](json.loads(args.child_args))
        Path(args.child_result).write_text(json.dumps(result))
        return 0
    out: Path = args.out
    if why := out_refusal(out):
        print(f"gpu-check: {why}", file=sys.stderr)
        return 2
    out = out.absolute()  # the commands run in the repository's root, whatever the current folder
    smi, torch = nvidia_smi(), torch_facts()
    if line := missing_gpu(smi, torch):
        print(line, file=sys.stderr)
        return 3
    if out.exists():
        shutil.rmtree(out)  # out_refusal allowed it: empty, or this script's report folder
    out.mkdir(parents=True)
    began, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report: dict[str, Any] = {
        "tool": TOOL, "started": started, "host": f"{platform.node()} ({platform.machine()})",
        "gpu": torch.get("device") or (smi["gpus"][0] if smi["gpus"] else "?"), "quick": args.quick,
        "total_seconds": 0.0, "exit_status": None, "parts": []}
    built: dict[tuple[str, str], Path] = {}
    facts: dict[str, Any] = {}

    def engines_part() -> Part:
        result, engines_built = engines(facts, out, args.quick)
        built.update(engines_built)
        return result

    steps: list[tuple[str, Callable[[], Part]]] = [
        ("probe", lambda: probe(smi, torch, out)),
        ("engines", engines_part),
        ("parity", lambda: parity(built, out, args.quick)),
        ("cpp-demo", lambda: cpp_demo(facts, built, out)),
        ("timings", lambda: timings(facts, built, out, args.quick)),
        ("trt", lambda: trt_commands(facts, out)),
    ]
    for index, (name, step) in enumerate(steps, start=1):
        print(f"gpu-check [{index}/{len(steps)}] {name} ...", flush=True)
        begin = time.perf_counter()
        try:
            result = step()
        except Exception as error:  # a bug or an unforeseen machine: this part fails, the others still run
            result = part(name, "failed", f"{type(error).__name__}: {error}", time.perf_counter() - begin)
        if name == "probe":
            facts.update(result["details"])
        report["parts"].append(result)
        report["total_seconds"] = round(time.perf_counter() - began, 1)
        write_report(out, report)
        print(f"gpu-check [{index}/{len(steps)}] {name}: {result['status']} in {result['seconds']:.1f} s"
              + (f" ({result['why']})" if result["why"] else ""), flush=True)
    report["exit_status"] = exit_status(report["parts"])
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    write_report(out, report)
    print(f"gpu-check: total {report['total_seconds']:.1f} s; wrote {out / 'report.md'} and {out / 'report.json'}; "
          f"exit {report['exit_status']}", flush=True)
    return int(report["exit_status"])


if __name__ == "__main__":
    sys.exit(main())
