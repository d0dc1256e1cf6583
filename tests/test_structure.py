"""The project's floors, drawn from its imports: contracts at the bottom, no arrow back up, no circle.

Every module of ``contracts``, ``pipeline``, ``stages``, ``model`` and ``vidal`` is parsed (AST, so
imports inside functions count too, and nothing is imported to find them). The floors, bottom up::

    contracts  ->  stages, model  ->  pipeline  ->  vidal (the CLI)

A module may import its own floor and the floors below it only. On the middle floor the arrow runs one
way: ``stages`` may use ``model`` (the score stage runs LanguageBind towers), ``model`` imports no
``stages`` (the trainer knows nothing of how shards were made).
Cycles are looked for among module-level imports (the ones that run at import time; a function-level
import is how a module defers a heavy or optional dependency and cannot form an import-time circle).
A failure prints the offending edges as ``importer -> imported (line)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "pipeline", "stages", "model", "vidal")
# What each top-level package must never import (directly, at any level of the module).
FORBIDDEN = {
    "contracts": {"pipeline", "stages", "model", "vidal"},
    "stages": {"pipeline", "vidal"},
    "model": {"pipeline", "stages", "vidal"},
    "pipeline": {"vidal"},
    "vidal": set(),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every module of the project's packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            out[module_name(path, root)] = path
    return out


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level) for each import in ``path``.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    top_level = {id(n) for n in tree.body}
    # module-level also covers imports under a top-level `if`/`try` (still run at import time)
    for stmt in tree.body:
        if isinstance(stmt, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, is_package, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            # the longest project module that the dotted name starts with
            parts = name.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != module:
                out.append((".".join(parts), node.lineno, id(node) in top_level))
    return out


def import_graph(root: Path = ROOT) -> dict[str, list[tuple[str, int, bool]]]:
    modules = project_modules(root)
    known = set(modules)
    return {m: imports_of(m, p, known) for m, p in modules.items()}


def floor_violations(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    bad = []
    for importer, edges in sorted(graph.items()):
        for imported, line, _ in edges:
            if imported.split(".")[0] in FORBIDDEN[importer.split(".")[0]]:
                bad.append(f"{importer} -> {imported} (line {line})")
    return bad


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~200)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Each import circle among module-level imports, with the edges inside it."""
    # `import a.b.c` also runs a/__init__ and a/b/__init__, but those are parents, not cycles by
    # themselves; only the named module's edge is drawn (as Python's import system executes it).
    edges = {m: {t for t, _, top in es if top} for m, es in graph.items()}
    out = []
    for comp in strongly_connected(edges):
        inside = set(comp)
        lines = [
            f"{m} -> {t} (line {line})" for m in comp for t, line, top in graph[m] if top and t in inside
        ]
        out.append("circle " + " / ".join(comp) + ":\n    " + "\n    ".join(sorted(set(lines))))
    return out


def test_floors_have_no_arrow_running_up():
    bad = floor_violations(import_graph())
    assert not bad, (
        "imports that run up the floors (contracts -> stages / model -> pipeline -> vidal; "
        "model imports no stages):\n  " + "\n  ".join(bad)
    )


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles among module-level imports:\n  " + "\n  ".join(found)


def test_graph_sees_the_whole_project():
    """The walk reaches every package and finds the imports we know exist (else the test is blind)."""
    graph = import_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    targets = {t for es in graph.values() for t, _, _ in es}
    assert "contracts.store" in targets and "contracts.shard_format" in targets
    # a function-level import is seen (pipeline.run imports the runner inside main)
    assert any(t == "pipeline.runner" and not top for t, _, top in graph["pipeline.run"])


def test_checks_catch_an_upward_arrow_and_a_circle(tmp_path):
    """On a made-up tree: contracts importing stages, and a <-> b, are both reported with lines."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "contracts" / "store.py").write_text("def f():\n    from stages import depth\n")
    (tmp_path / "stages" / "depth.py").write_text("from . import caption\n")
    (tmp_path / "stages" / "caption.py").write_text("import stages.depth\n")
    (tmp_path / "model" / "data.py").write_text("from stages.depth import x\n")
    (tmp_path / "stages" / "score.py").write_text("from model import data\nimport pipeline.run\n")
    graph = import_graph(tmp_path)
    assert floor_violations(graph) == [
        "contracts.store -> stages.depth (line 2)",
        "model.data -> stages.depth (line 1)",
        "stages.score -> pipeline (line 2)",
    ]
    (circle,) = cycles(graph)
    assert "stages.caption / stages.depth" in circle
    assert "stages.depth -> stages.caption (line 1)" in circle
    # a function-level import does not form a circle
    (tmp_path / "stages" / "caption.py").write_text("def g():\n    import stages.depth\n")
    assert cycles(import_graph(tmp_path)) == []
