"""The trainflow modules a module imports, read from its source (imports inside functions too).

The cache key of a task covers the code it runs (trainflow.caching.code_fingerprint): its
module, what that imports, transitively, and the implementations of the registry kinds it
looks up (`registry.MODELS[...]`), and nothing else. The layer tests read the same graph.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache, lru_cache
from pathlib import Path

PACKAGES = ("trainflow", "trainflow.tasks", "trainflow.flows")
# Registry tables a module reads whose code the task's inputs already cover: a view (an
# artifact of steps.py) applies the steps that made it when it is read, and its fingerprint
# holds those steps' code fingerprints, so a changed step is a changed input, not a changed
# reader. Without this, every data step would be in the key of every task that reads a table.
COVERED_BY_INPUTS = {"trainflow.steps": {"STEPS"}}


@lru_cache(maxsize=1)
def module_files() -> dict[str, Path]:
    """Every trainflow module by name -> its source file (found without importing it)."""
    files: dict[str, Path] = {}
    pending = list(PACKAGES)
    while pending:
        package = pending.pop()
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in map(Path, spec.submodule_search_locations):
            files[package] = folder / "__init__.py"
            for path in sorted(folder.iterdir()):
                name = f"{package}.{path.stem}"
                if path.suffix == ".py" and path.stem != "__init__":
                    files[name] = path
                elif (path / "__init__.py").is_file() and name not in PACKAGES:
                    pending.append(f"{package}.{path.name}")
    return files


@cache
def source(name: str) -> str:
    return module_files()[name].read_text(encoding="utf-8")


@cache
def tree_digest() -> str:
    """sha256 over every trainflow module's name and source: the code this process runs."""
    digest = hashlib.sha256()
    for name in sorted(module_files()):
        digest.update(f"{name}\0{source(name)}\0".encode())
    return digest.hexdigest()


def _resolved(module: str | None, level: int, here: str) -> str | None:
    """The absolute module name of a (possibly relative) `from module import ...`."""
    if level == 0:
        return module
    package = here if module_files()[here].name == "__init__.py" else here.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def _run_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:` (they never run)."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


@cache
def _parsed(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(trainflow modules `name` imports, registry tables it reads), from its source."""
    known = module_files()
    imported: set[str] = set()
    tables: set[str] = set()
    for node in _run_nodes(ast.parse(source(name))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolved(node.module, node.level, name)
            if module is None:
                continue
            for alias in node.names:
                child = f"{module}.{alias.name}"
                imported.add(child if child in known else module)
                if module == "trainflow.registry":
                    tables.add(alias.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "registry"
        ):
            tables.add(node.attr)
    return frozenset(m for m in imported if m in known and m != name), frozenset(tables)


def imports(name: str) -> frozenset[str]:
    """The trainflow modules `name` imports anywhere in its source."""
    return _parsed(name)[0]


def registry_tables(name: str) -> frozenset[str]:
    """The names `name` reads from trainflow.registry (its tables: MODELS, STEPS, ...)."""
    return _parsed(name)[1]


def code_scope(name: str) -> list[str]:
    """The modules whose source makes up what `name` runs: itself, what it imports,
    transitively, and for every registry table it reads, the modules of that table's params
    models and implementations. The registry's own imports are not followed: they are the
    params of every kind, and a task runs only the kinds it looks up."""
    from trainflow import registry

    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if current == "trainflow.registry":
            continue
        pending.extend(imports(current))
        for table in registry_tables(current) - COVERED_BY_INPUTS.get(current, set()):
            entries = getattr(registry, table, None)
            if isinstance(entries, dict):
                # TASKS is read for options (retries, the device tag), not code that runs
                for entry in entries.values():
                    if isinstance(entry, registry.Entry):
                        pending.extend(registry.modules_of(entry))
    return sorted(seen)
