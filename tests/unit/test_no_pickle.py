"""No shipped module unpickles what a peer or a file sends: none imports pickle (or a pickling
stand-in) or torch.distributed.rpc, whose calls travel pickled and whose listener any local
process can reach. The one exception is named with its reason."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p for folder in ("src/trainflow", "tasks", "flows") for p in (ROOT / folder).rglob("*.py")
)
FORBIDDEN = ("pickle", "cPickle", "cloudpickle", "dill", "torch.distributed.rpc")
# engine/fsdp.py reads DCP's .metadata through a restricted Unpickler that admits DCP's
# metadata classes only (its own test pins the refusal); nothing else may import pickle.
ALLOWED = {("src/trainflow/engine/fsdp.py", "pickle")}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, with each parent (`a.b.c` gives a, a.b and a.b.c), and
    `from a import b` as a.b too (so `from torch.distributed import rpc` is caught)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def test_the_sources_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED}
    assert "src/trainflow/engine/param_server.py" in names
    assert "src/trainflow/engine/ps_worker.py" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_shipped_module_imports_pickle_or_rpc(path):
    where = path.relative_to(ROOT).as_posix()
    bad = [m for m in FORBIDDEN if m in imported(path) and (where, m) not in ALLOWED]
    assert not bad, f"{where} imports {bad}: send raw tensors or JSON instead (no pickle)"
