"""The package's shape holds: no import cycle between its modules, not even through an import
written inside a function; the layering contracts of pyproject.toml (import-linter) are kept;
every public class says what it is for."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lrobridge"
GENERATED = "lrobridge.proto"

# Cycles allowed on purpose, each as the set of modules it joins, with the reason. None today.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name != GENERATED and not name.startswith(GENERATED + "."):
            found[name] = path
    return found


def _imported(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """Every lrobridge module ``module`` imports, wherever the import statement is (top level,
    inside a function, under ``if TYPE_CHECKING``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets += [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
    imported = set()
    for target in targets:
        if not target.startswith("lrobridge") or target.startswith(GENERATED):
            continue
        while target and target not in modules:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target and target != module:
            imported.add(target)
    return imported


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def test_the_cycle_finder_sees_imports_inside_functions() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]
    # The bridge's own graph has the edges function-local imports make.
    lazy = _graph()["lrobridge.storage"]
    assert "lrobridge.storage.sqlite.store" in lazy  # imported inside open_store()


def test_no_module_of_the_package_is_in_an_import_cycle() -> None:
    cycles = [c for c in _cycles(_graph()) if c not in ALLOWED_CYCLES]
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_the_layering_contracts_of_pyproject_hold() -> None:
    installed = pathlib.Path(sys.executable).parent / "lint-imports"
    command = str(installed) if installed.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is not installed (pip install import-linter: the test extra)"
    result = subprocess.run(
        [command, "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _public_classes_without_docstring() -> list[str]:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "proto"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            if not ast.get_docstring(node):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return missing


def test_every_public_class_says_what_it_is_for() -> None:
    missing = _public_classes_without_docstring()
    assert missing == [], "public classes without a docstring:\n" + "\n".join(missing)


def test_every_package_says_what_it_owns_and_what_it_may_import() -> None:
    silent = [
        str(init.relative_to(ROOT))
        for init in sorted(PACKAGE.rglob("__init__.py"))
        if not init.is_relative_to(PACKAGE / "proto")
        and "import" not in (ast.get_docstring(ast.parse(init.read_text())) or "")
    ]
    assert silent == []
