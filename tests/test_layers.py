"""The folders import each other without cycles (docs/architecture.md has the layers).

Every import of every module, module level or inside a function, read with ``ast``; a folder
(package) depends on another when one of its modules imports from it. The modules at the root
(``errors``, ``target``, ``cli``) count as folders of their own.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"toolkit": "mcpm_mobile", "quantize": "mcpm_mobile.quantize", "targets": "mcpm_mobile.targets"}


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for folder, name in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def imports(module: str, path: Path, is_package: bool) -> set[str]:
    """The mcpm_mobile modules ``module`` imports (``from x import y`` counts x.y when it is a module)."""
    known = modules()
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return {m for m in out if m == "mcpm_mobile" or m.startswith("mcpm_mobile.")}


def folder_of(module: str, depth: int | None) -> str:
    """The folder a module lives in (``depth``: cut to that many levels below mcpm_mobile)."""
    known = modules()
    path = known.get(module)
    parts = module.split(".")
    if path is not None and path.name != "__init__.py" and len(parts) > 2:
        parts = parts[:-1]  # a module file: its folder
    return ".".join(parts[:1 + depth] if depth else parts)


def graph(depth: int | None) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in modules().items():
        src = folder_of(module, depth)
        for dep in imports(module, path, path.name == "__init__.py"):
            dst = folder_of(dep, depth)
            if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                edges.setdefault(src, set()).add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one folder (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_cycles_between_top_level_folders():
    assert cycles(graph(depth=1)) == []


def test_no_cycles_between_any_folders():
    assert cycles(graph(depth=None)) == []


def test_the_walk_sees_imports():
    """A test that cannot fail is no test: the graph has the edges we know of, and a cycle is caught."""
    edges = graph(depth=1)
    assert "mcpm_mobile.model" in edges["mcpm_mobile.compiler"]
    assert "mcpm_mobile.errors" in edges["mcpm_mobile.support"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
