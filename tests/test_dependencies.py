"""pyproject.toml declares what the code imports, and imports what it declares.

The modules are read as text (AST), never imported, so a missing dependency is found even when the
import sits in a function. Import names map to distributions through the installed metadata
(``importlib.metadata.packages_distributions``: ``yaml`` -> PyYAML, ``PIL`` -> pillow); a module
that no installed distribution provides maps to its own name, so an undeclared, uninstalled import
still fails here rather than on a user's machine.

Rules:
- an import in ``contracts``, ``pipeline``, ``stages``, ``model`` or ``vidal`` is a base dependency,
  unless it is guarded (inside a ``try`` that catches ``ImportError``): then it may be an extra's,
  or ``OPTIONAL`` names why it is declared nowhere;
- an import in ``tests/`` is a base or ``test`` dependency, one in ``bench/`` a base, ``bench`` or
  ``test`` one (``pytest.importorskip("x")`` counts as a guarded import);
- every base and ``test`` dependency is imported somewhere, or ``NOT_IMPORTED`` says what needs it.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "pipeline", "stages", "model", "vidal")
# bench/ and tests/ scripts import their neighbours by file name (``import bench_vision``)
LOCAL = {*PACKAGES, "tests", "bench", "setup", "__future__"} | {
    p.stem for folder in ("bench", "tests") for p in (ROOT / folder).rglob("*.py")
}

# Declared but never imported by our code: who needs them.
NOT_IMPORTED = {
    "aiohttp": "Ray Data's path resolution imports fsspec's HTTP filesystem",
    "polars": "Ray Data's Dataset.join sorts and joins with it",
    "tensorboard": "torch.utils.tensorboard imports it (train.tensorboard)",
    "pytest-timeout": "a pytest plugin ([tool.pytest.ini_options] timeout)",
    "ruff": "make lint runs it",
    "moto": "tests/s3server.py runs `python -m moto.server` in its own process",
}
# Imports declared nowhere, on purpose.
OPTIONAL = {
    "wandb": "train.wandb logs to it when the user installed it (model/train_log.py says so otherwise)",
    "scenedetect": "bench/bench_clip.py measures it; installed by hand with --no-deps (its docstring)",
}


def canonical(name: str) -> str:
    """PEP 503 name: ``PyYAML`` -> ``pyyaml``, ``huggingface_hub`` -> ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def declared() -> dict[str, set[str]]:
    """``{"base": {...}, "<extra>": {...}}`` of canonical distribution names from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"base": {requirement_name(r) for r in project["dependencies"]}}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out[extra] = {requirement_name(r) for r in reqs}
    return out


def _guards_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts
        if handler.type is None or any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
            for n in names
        ):
            return True
    return False


def third_party_imports(path: Path) -> dict[str, bool]:
    """Top-level module name -> guarded (True only if every import of it is guarded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    guarded_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _guards_import_error(node):
            guarded_nodes |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: dict[str, bool] = {}

    def add(name: str, guarded: bool) -> None:
        top = name.split(".")[0]
        if top and top not in sys.stdlib_module_names and top not in LOCAL:
            found[top] = found.get(top, True) and guarded

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, id(node) in guarded_nodes)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            add(node.module, id(node) in guarded_nodes)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            add(str(node.args[0].value), True)
    return found


def distributions_of(module: str, mapping: dict[str, list[str]]) -> set[str]:
    return {canonical(d) for d in mapping.get(module, [module])}


def imports_under(folders: tuple[str, ...], root: Path = ROOT) -> dict[str, dict[str, bool]]:
    """Module -> {file: guarded} over every ``*.py`` under ``folders``."""
    out: dict[str, dict[str, bool]] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for module, guarded in third_party_imports(path).items():
                out.setdefault(module, {})[str(path.relative_to(root))] = guarded
    return out


def undeclared(
    folders: tuple[str, ...], allowed: tuple[str, ...], deps: dict[str, set[str]], root: Path = ROOT
) -> list[str]:
    """``module (file): ...`` for each import under ``folders`` declared in none of ``allowed`` (an
    unguarded import of the packages must be in ``allowed[0]``, the base)."""
    mapping = md.packages_distributions()
    every_extra = set().union(*deps.values())
    problems = []
    for module, files in sorted(imports_under(folders, root).items()):
        dists = distributions_of(module, mapping)
        unguarded = [f for f, guarded in files.items() if not guarded]
        if module in OPTIONAL:
            continue
        if unguarded:
            ok = any(dists & deps.get(group, set()) for group in allowed)
            where = unguarded
        else:  # only guarded imports: any extra will do, or a reason in OPTIONAL
            ok = bool(dists & every_extra)
            where = list(files)
        if not ok:
            problems.append(
                f"{module} (distribution {'/'.join(sorted(dists))}) imported by {', '.join(where[:3])} "
                f"is not declared in {' or '.join(allowed)}"
            )
    return problems


def test_package_imports_are_base_dependencies():
    problems = undeclared(PACKAGES, ("base",), declared())
    assert not problems, "pyproject.toml misses:\n  " + "\n  ".join(problems)


def test_test_and_bench_imports_are_declared():
    deps = declared()
    problems = undeclared(("tests",), ("base", "test"), deps) + undeclared(
        ("bench",), ("base", "bench", "test"), deps
    )
    assert not problems, "pyproject.toml misses:\n  " + "\n  ".join(problems)


def test_declared_dependencies_are_used():
    deps = declared()
    mapping = md.packages_distributions()
    used = set()
    for module in imports_under((*PACKAGES, "tests", "bench")):
        used |= distributions_of(module, mapping)
    unused = sorted(
        f"{group}: {name}"
        for group in ("base", "test")
        for name in deps[group]
        if name not in used and name not in {canonical(n) for n in NOT_IMPORTED}
    )
    assert not unused, (
        "declared but imported nowhere (remove, or say in NOT_IMPORTED why):\n  " + "\n  ".join(unused)
    )


def test_console_command_and_packages_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["vidal"] == "vidal.cli:main"
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(f"{p}*" in include for p in PACKAGES)


def test_the_check_fails_on_an_undeclared_import(tmp_path):
    """A made-up package importing an undeclared library (in a function), a guarded optional one
    and a declared one: only the undeclared is reported, with its file."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "x.py").write_text(
        "import numpy\n"
        "def f():\n    import notarealdist.sub\n"
        "try:\n    import wandb\nexcept ImportError:\n    wandb = None\n"
        "try:\n    import guardedbutnowhere\nexcept ImportError:\n    pass\n"
    )
    problems = undeclared(("stages",), ("base",), {"base": {"numpy"}, "test": set()}, tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith("guardedbutnowhere ")
    assert problems[1].startswith("notarealdist ") and "stages/x.py" in problems[1]
