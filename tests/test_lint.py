"""The code is lint-clean (ruff) and type-checks (mypy), with the settings in pyproject.toml: part of the test
command, so CI (which runs it) keeps them clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("tool", [
    ["ruff", "check", "--output-format", "concise", "."],
    ["mypy"],
    # canvit-runtime installs on Python 3.10 (JetPack 6): its standard-library use must exist there (datetime.UTC,
    # for one, is 3.11+). tests/test_runtime_package.py runs it on a real 3.10 as well.
    ["mypy", "--python-version", "3.10", "-p", "canvit_runtime"],
    # No function longer than 80 lines (docstring included) in the exporter, the runtime, the C++ demo or the
    # scripts; lizard's complexity and argument-count warnings are off (-C, -a), length is the rule (issue 27).
    ["lizard", "--length", "80", "-C", "10000", "-a", "100", "--warnings_only", "canvit_export", "runtimes/canvit_runtime",
     "cpp_demo/src", "cpp_demo/include", "cpp_demo/tests", "scripts"],
], ids=["ruff", "mypy", "mypy-runtime-py310", "lizard-function-length"])
def test_clean(tool: list[str]) -> None:
    executable = BIN / tool[0]
    if not executable.exists():
        pytest.skip(f"{tool[0]} is not installed in this environment (pip install -e '.[dev]')")
    result = subprocess.run([str(executable), *tool[1:]], cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_function_length_check_can_fail(tmp_path: Path) -> None:
    """lizard, as test_clean runs it, flags an 81-line Python function and passes an 80-line one."""
    executable = BIN / "lizard"
    if not executable.exists():
        pytest.skip("lizard is not installed in this environment (pip install -e '.[dev]')")
    for lines, expected in ((78, 0), (79, 1)):  # the def line and `return` come on top of the body's lines
        source = tmp_path / f"f{lines}.py"
        source.write_text("def f(x):\n" + "".join(f"    x = x + {i}\n" for i in range(lines)) + "    return x\n")
        result = subprocess.run([str(executable), "--length", "80", "-C", "10000", "-a", "100", "--warnings_only",
                                 str(source)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == expected, (lines, result.stdout)


def test_suite_stops_at_once_on_a_full_disk(tmp_path) -> None:
    """With less free disk than the suite needs (here: an impossible requirement), pytest stops before collecting a
    test, with one line naming the fix, exit 1. (It only collects, so without the guard it exits 0 listing tests.)"""
    env = dict(os.environ, CANVIT_TEST_MIN_FREE_GB="1e9")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                             "tests/test_lint.py"],
                            cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "GB free under" in result.stdout and "the test suite needs 1000000000 GB there" in result.stdout, result.stdout
    assert "test_clean" not in result.stdout and "Traceback" not in result.stdout + result.stderr, result.stdout
