"""Every shell example the docs mark as runnable runs, so that no example can rot (issue 27).

A page marks a ```bash block runnable with the line `<!-- runnable -->` just above it (an HTML comment: invisible
on the site and on GitHub). The blocks of one page run in order, each line a command, in one fresh folder where
`.venv` is this checkout's environment, under `bash -euo pipefail`. They run at ViT-S sizes: the examples read as
users type them (CanViT-B, canvas 32), and CI rewrites them with SIZE_REWRITES below; nothing else is changed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"

SIZE_REWRITES: tuple[tuple[str, str], ...] = (
    (r"--random-weights(?! --backbone)", "--random-weights --backbone vits16"),
    (r"--canvas \d+", "--canvas 8"),
)
"""CanViT-B at canvas 32 -> ViT-S at canvas 8: the same commands, at a size CI can run in seconds."""

MIN_RUNNABLE_PAGES = 6
"""export, parity, openvino, int8, runtime, tensorrt: a marker lost from a page fails test_pages_keep_examples."""


def runnable_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown page that follow a `<!-- runnable -->` line, in page order."""
    return [match.group(1) for match in
            re.finditer(rf"^{re.escape(MARKER)}\n```bash\n(.*?)^```$", text, flags=re.M | re.S)]


def at_vits_sizes(block: str) -> str:
    for pattern, replacement in SIZE_REWRITES:
        block = re.sub(pattern, replacement, block)
    return block


PAGES = sorted(page for page in DOCS.glob("*.md") if runnable_blocks(page.read_text(encoding="utf-8")))


def test_pages_keep_examples() -> None:
    assert len(PAGES) >= MIN_RUNNABLE_PAGES, f"only {[p.name for p in PAGES]} have runnable examples"
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert text.count(MARKER) == len(runnable_blocks(text)), f"{page.name}: a {MARKER} line is not above a ```bash block"


def test_rewrites_reach_vits_sizes() -> None:
    example = ".venv/bin/canvit-export onnx --random-weights --canvas 32 --out models/x\n"
    assert at_vits_sizes(example) == ".venv/bin/canvit-export onnx --random-weights --backbone vits16 --canvas 8 --out models/x\n"
    for page in PAGES:
        for block in runnable_blocks(page.read_text(encoding="utf-8")):
            rewritten = at_vits_sizes(block)
            assert "--backbone vitb16" not in rewritten and "--canvas 32" not in rewritten, (page.name, rewritten)


@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_runnable_example(page: Path, tmp_path: Path) -> None:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "canvit-export").exists():
        pytest.skip(f"{venv} has no canvit-export: the examples run the README's environment (scripts/setup.sh)")
    (tmp_path / ".venv").symlink_to(venv)
    script = "\n".join(at_vits_sizes(block) for block in runnable_blocks(page.read_text(encoding="utf-8")))
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{page.name}'s example failed (exit {result.returncode}):\n{script}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
