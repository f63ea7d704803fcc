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
], ids=["ruff", "mypy", "mypy-runtime-py310"])
def test_clean(tool: list[str]) -> None:
    executable = BIN / tool[0]
    if not executable.exists():
        pytest.skip(f"{tool[0]} is not installed in this environment (pip install -e '.[dev]')")
    result = subprocess.run([str(executable), *tool[1:]], cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


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
