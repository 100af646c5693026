"""The train task's cache key covers the code it runs and nothing else (issue 15, part 2).

A copy of trainflow in a temporary folder is run through the real Prefect engine, once per
edit, each run a fresh process (as when a user edits the code between two runs): editing a
data step leaves training `Cached`; editing the training loop retrains.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "train.epochs=2",
    "evaluate.cv=null",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
]
# The real engine on the child's Prefect home (its ephemeral server), migrated once by the
# `prefect_home` fixture: a test harness here would migrate a new database in every run.
RUN = """
import json, sys
import trainflow.tasks.clean
from tests.flows.helpers import run
_, states = run("breast_cancer_mlp", __import__("pathlib").Path(sys.argv[1]), *sys.argv[2:])
print("STATES " + json.dumps({**states, "clean.py": trainflow.tasks.clean.__file__}))
"""


def copy_of_trainflow(folder: Path) -> Path:
    """src/trainflow with flows/ and tasks/ inside it, as the installed package is laid out."""
    package = folder / "trainflow"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src" / "trainflow", package, ignore=ignore)
    shutil.copytree(ROOT / "flows", package / "flows", ignore=ignore)
    shutil.copytree(ROOT / "tasks", package / "tasks", ignore=ignore)
    return package


def run_copy(code: Path, work: Path, home: Path) -> dict[str, list[str]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)]),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "OMP_NUM_THREADS": "1",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / "results"),
    }
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(work), *SMALL],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("STATES "))
    return json.loads(line.removeprefix("STATES "))


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit (tests/flows/test_fingerprint_scope.py)\n")


def test_editing_a_data_step_keeps_training_cached_editing_the_loop_does_not(
    tmp_path, prefect_home
):
    home = prefect_home(tmp_path / "prefect")
    code = tmp_path / "code"
    package = copy_of_trainflow(code)
    first = run_copy(code, tmp_path, home)
    assert first.pop("clean.py").startswith(str(package))  # the copy is what runs
    assert first["train"] == ["Completed"]

    edit(package / "tasks" / "clean.py")
    states = run_copy(code, tmp_path, home)
    assert states["clean"] == ["Completed"]  # the edited step itself recomputes
    assert states["train"] == ["Cached"], states

    edit(package / "engine" / "loop.py")
    states = run_copy(code, tmp_path, home)
    assert states["clean"] == ["Cached"]
    assert states["train"] == ["Completed"], states
