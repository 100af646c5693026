"""Layers import downward (ARCHITECTURE.md "Layers"), with no import cycle, deferred or not.

The graph is read from the source of every module under src/trainflow, flows/ and tasks/
(imports inside functions count; `if TYPE_CHECKING:` blocks, which never run, do not).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from trainflow.sourcegraph import imports, module_files

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(module_files())
# What a user's `trainflow validate` must never load.
HEAVY = (
    "torch",
    "prefect",
    "sklearn",
    "imblearn",
    "polars",
    "pyarrow",
    "numpy",
    "albumentations",
    "webdataset",
)
# The entry points: they start flows, so they may import them.
ENTRY_POINTS = {"trainflow.cli", "trainflow.runtime", "trainflow.warmfork"}  # warmfork: runs cli


def layer(name: str) -> str:
    if name.startswith("trainflow.spec") or name in ("trainflow.errors", "trainflow.registry"):
        return "spec"  # the schema: pydantic models, YAML loading, the names of every kind
    if name.startswith("trainflow.tasks"):
        return "tasks"
    if name.startswith("trainflow.flows"):
        return "flows"
    if name in ENTRY_POINTS:
        return "entry"
    return "core"


ORDER = ["spec", "core", "tasks", "flows", "entry"]


def test_the_graph_covers_every_layer():
    assert {layer(m) for m in MODULES} == set(ORDER)
    assert "trainflow.tasks.clean" in MODULES and "trainflow.engine.loop" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_a_module_imports_its_layer_or_below(name):
    above = [m for m in imports(name) if ORDER.index(layer(m)) > ORDER.index(layer(name))]
    assert not above, f"{name} ({layer(name)}) imports {above} from a layer above it"


def test_the_spec_imports_no_implementation():
    """The spec and the registry name implementations ("module:function"), never import
    them: validating a spec loads pydantic and YAML alone."""
    for name in (m for m in MODULES if layer(m) == "spec"):
        wrong = [m for m in imports(name) if layer(m) != "spec"]
        assert not wrong, f"{name} imports {wrong}"


def test_the_engine_and_models_import_no_task():
    for name in (m for m in MODULES if m.startswith(("trainflow.engine", "trainflow.models"))):
        wrong = [m for m in imports(name) if layer(m) in ("tasks", "flows", "entry")]
        assert not wrong, f"{name} imports {wrong}"


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_deferred_or_not():
    graph = {name: imports(name) for name in MODULES}
    assert cycles(graph) == []


def test_cycles_finds_a_deferred_circle():
    """The check itself: a circle through an import inside a function is one."""
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"a"}), "c": frozenset()}) == [["a", "b"]]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")))
def test_validating_a_spec_loads_nothing_heavy(tmp_path, pipeline):
    """`import trainflow.spec` and `trainflow validate` of each shipped pipeline (digits_cnn's
    albumentations transforms included), in a fresh process, load none of torch, Prefect,
    scikit-learn, imbalanced-learn, polars, albumentations (measured, not read)."""
    probe = (
        "import sys\n"
        "import trainflow.spec, trainflow.spec.pipeline, trainflow.registry\n"
        "from trainflow.cli import main\n"
        f"code = main(['validate', '--schema-only', {str(ROOT / 'pipelines' / pipeline)!r}])\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("0 []"), out.stdout
