"""The arrows run one way (docs/design.md): no import cycles in canvit_export or canvit_runtime, counting the imports made
inside functions too, and canvit_runtime imports neither torch nor canvit_export nor canvit-pytorch."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"canvit_export": REPO / "canvit_export", "canvit_runtime": REPO / "runtimes" / "canvit_runtime"}


def module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module this file imports, at any depth of its code (absolute names; relative ones resolved)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(pkg, root, path): path for pkg, root in PACKAGES.items() for path in root.rglob("*.py")}
    return {name: {m for m in imports_of(path, name) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycles() -> None:
    edges = graph()
    assert {"canvit_export.bench.command", "canvit_export.bench.child", "canvit_runtime.manifest"} <= set(edges)
    assert {"canvit_export.bench.floor", "canvit_export.parity"} <= edges["canvit_export.bench.command"]  # edges are seen
    assert "canvit_export.reference" in edges["canvit_export.bench.child"]  # ... inside functions too
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_cycle_finder_finds_the_old_cycle() -> None:
    """bench -> bench child -> bench, the cycle there was before: the same search reports it."""
    edges = graph()
    edges["canvit_export.bench.command"] |= {"canvit_export.bench.child"}
    edges["canvit_export.bench.child"] |= {"canvit_export.bench.command"}
    cycle = find_cycle(edges)
    assert cycle is not None and {"canvit_export.bench.command", "canvit_export.bench.child"} <= set(cycle), cycle


def test_the_bench_child_imports_no_torch() -> None:
    """The bench's memory child, started as `python -m canvit_export.bench.child`, imports its package first: neither
    canvit_export nor canvit_export.bench may import torch on the way (a runtime child's peak memory would hold it)."""
    import subprocess
    import sys

    code = "import sys, canvit_export.bench.child; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout[:300]


def test_runtime_imports_no_torch_side() -> None:
    for path in PACKAGES["canvit_runtime"].rglob("*.py"):
        name = module_name("canvit_runtime", PACKAGES["canvit_runtime"], path)
        forbidden = {m for m in imports_of(path, name)
                     if m.split(".")[0] in ("torch", "canvit_export", "canvit_pytorch", "canvit_core")}
        assert not forbidden, f"{path.relative_to(REPO)} imports {sorted(forbidden)}"
