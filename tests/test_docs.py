"""The README stays short and true, and the documentation site (mkdocs.yml, docs/) builds (issue 27).

The README keeps the Quick start, the commands, the targets and a link per page; the rest is in docs/, built with
mkdocs-material under `strict: true` (a broken link, a missing anchor or a page left out of the nav fails it).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

README_MAX_LINES = 250
# The Quick start's second command, which CI runs verbatim (.ci/run).
TEST_COMMAND = "scripts/setup.sh && .venv/bin/python -m pytest -q"
# The Quick start's first command begins so (the export and parity check follow on the same line).
EXPORT_COMMAND_START = "scripts/setup.sh && .venv/bin/canvit-export onnx "


def _readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def _nav_pages(nav: object) -> list[str]:
    """Every page path in mkdocs.yml's nav, however nested (`- page.md`, `- Title: page.md`, sections)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not importable (mkdocs-material, in the dev extra, brings it)")
    # mkdocs.yml may come to carry !!python/name tags (pymdownx options); none is needed to read the nav.
    loader = type("_Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda _loader, _suffix, _node: None)
    return yaml.load(MKDOCS_YML.read_text(encoding="utf-8"), Loader=loader)


def test_readme_is_at_most_250_lines():
    n = len(_readme_lines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move sections into docs/"


def test_readme_quick_start_commands_are_what_ci_runs():
    lines = _readme_lines()
    assert TEST_COMMAND in lines, f"README.md lost its Quick start test command line {TEST_COMMAND!r}"
    assert any(line.startswith(EXPORT_COMMAND_START) for line in lines), "README.md lost its Quick start export command"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert TEST_COMMAND in [line.strip() for line in ci], f".ci/run no longer runs the README's {TEST_COMMAND!r}"


def test_readme_commands_table_names_every_command():
    from canvit_export.cli import main as export_main
    from canvit_runtime.cli import main as runtime_main

    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Commands") :]
    table = table[: table.index("\n## ", 1)]
    missing = [f"canvit-export {name}" for name in export_main.commands if f"`canvit-export {name}" not in table]
    for name in runtime_main.commands:
        if f"`canvit-runtime {name}" not in table and f"`{name}`" not in table:
            missing.append(f"canvit-runtime {name}")
    assert not missing, f"README.md's Commands table lacks {missing}"


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if f"(docs/{page.name})" not in text]
    assert not missing, f"README.md's Documentation list lacks a link to {missing}"


def test_every_docs_page_is_in_the_nav():
    config = _mkdocs_config()
    nav = _nav_pages(config.get("nav"))
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages, "docs/ holds no page"
    missing = [page for page in pages if page not in nav]
    assert not missing, f"mkdocs.yml's nav lacks {missing}"
    absent = [page for page in nav if not (DOCS / page).is_file()]
    assert not absent, f"mkdocs.yml's nav names pages docs/ does not hold: {absent}"


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not importable: pip install 'mkdocs-material>=9.5' (in canvit-export's dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's end-of-life banner
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "index.html").is_file()


def test_generated_pages_are_current():
    """docs/manifest-reference.md (from the JSON Schema) and the bench pages with the README's bench table (from the
    newest docs/measurements/*-bench.json) are what scripts/gen_docs.py writes from their sources today."""
    script = ROOT / "scripts" / "gen_docs.py"
    runs = [["manifest", "--check"]]
    if benches := sorted((DOCS / "measurements").glob("*-bench.json")):
        runs.append(["bench", str(benches[-1]), "--check"])
    for args in runs:
        result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_generated_page_check_can_fail(tmp_path):
    """--check fails on a page that differs from what the schema gives: the manifest reference with a field dropped."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    schema = json.loads((ROOT / "runtimes" / "canvit_runtime" / "manifest.schema.json").read_text(encoding="utf-8"))
    page = gen_docs.manifest_page(schema)
    assert "| `canvas_grid` | integer | yes | > 0, <= 256 |" in page  # Geometry's cap, as LIMITS sets it
    del schema["$defs"]["Geometry"]["properties"]["canvas_grid"]
    stale = tmp_path / "manifest-reference.md"
    stale.write_text(gen_docs.manifest_page(schema), encoding="utf-8")
    gen_docs.MANIFEST_PAGE = stale
    assert gen_docs.main(["manifest", "--check"]) == 1


def test_bench_table_reads_old_and_new_bench_json():
    """A bench.json from before the canvas-traffic floor (no "x matmul floor" column: its "x floor" was the matmuls'
    alone) puts that ratio under "x matmul floor" and leaves "x floor" blank; a new one shows both as written, and
    its machine's features and triad bandwidth."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    row = {"config": "c", "precision": "fp32", "median ms": 30.0, "glimpses/s": 33.3, "vs eager": 2.0,
           "x floor": 1.5, "peak RSS MB": 100.4, "worst rel-L2": 1e-7}
    old = {"machine": {"cpu": "X", "cores": 2, "threads": 2}, "iters": 5, "columns": ["config", "x floor"],
           "rows": [row]}
    assert gen_docs.bench_table(old)[2] == "| c | fp32 | 30.0 | 33.3 | 2.00x |  | 1.50x | 100 | 1.0e-07 |"
    assert gen_docs._machine(old).endswith("run before the canvas-traffic floor: only its matmul floor was measured")
    new = {"machine": {"cpu": "X", "cores": 2, "threads": 2, "features": ["amx_bf16"],
                       "bandwidth": [{"array MB": 1.11, "GB/s": 19.64}]}, "iters": 5,
           "columns": ["config", "x floor", "x matmul floor"], "rows": [{**row, "x matmul floor": 1.875}]}
    assert gen_docs.bench_table(new)[2] == "| c | fp32 | 30.0 | 33.3 | 2.00x | 1.50x | 1.88x | 100 | 1.0e-07 |"
    assert gen_docs._machine(new) == ("X, 2 cores, 2 threads, features amx_bf16, triad bandwidth 19.6 GB/s at 1.11 MB, "
                                      "5 timed glimpses each")


def test_the_readme_shows_a_canvas_series_at_the_quick_start_canvas():
    """A run over several canvas grids (a canvas series) fills the README's table with its canvas 32 rows only and
    says so; a run at one grid shows every row."""
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    readme = f"intro\n{gen_docs.BENCH_START}\nold\n{gen_docs.BENCH_END}\nrest\n"
    rows = [{"config": f"c{g}-ov", "precision": "bf16", "canvas": g, "median ms": float(g)} for g in (16, 32, 64)]
    bench = {"machine": {"cpu": "X"}, "columns": ["x floor", "x matmul floor"], "rows": rows}
    page = ROOT / "docs" / "measurements" / "2026-12-03-canvas-series-bench.md"
    series = gen_docs.readme_with_table(readme, bench, "2026-12-03", page)
    assert "| c32-ov | bf16 | 32.0 |" in series and "c16-ov" not in series and "c64-ov" not in series, series
    assert "its canvas 32 rows" in series and series.endswith(f"{gen_docs.BENCH_END}\nrest\n")
    single = gen_docs.readme_with_table(readme, {**bench, "rows": rows[:1]}, "2026-12-03", page)
    assert "| c16-ov | bf16 | 16.0 |" in single and "its canvas" not in single
