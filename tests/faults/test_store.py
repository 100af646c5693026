"""The store touches only what it wrote: a user's folder, the filesystem root and the home folder
are never a store, the sweep leaves the user's files, and a full disk is one clear message with
nothing half-written and the old artifacts intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.flows.helpers import run
from trainflow.artifacts import TMP_PREFIX, StoreError
from trainflow.cli import main
from trainflow.errors import SpecError
from trainflow.spec.pipeline import load_spec
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.split import SplitParams, split

pytestmark = pytest.mark.faults

SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = (
    "train.epochs=2",
    "evaluate.cv=null",
    "ensemble=null",
    "compress.quantize=null",
    "compress.prune=null",
)
# what a probe found deleted by the old sweep: a user's files named like the old temporaries
USERS = {
    ".tmp-999999-notes.txt": "notes",
    "project/.tmp-3999999-draft.md": "draft",
    "project/.tmp-123456-build/main.o": "build",
}
LIMIT = 16 * 1024  # bytes a file may grow to in the disk-full runs: every data file is larger
# Ignore SIGXFSZ (so a write past the limit fails with EFBIG instead of killing the process),
# lower the file-size limit, then become the command: both survive exec.
LIMITED = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), "
    "resource.getrlimit(resource.RLIMIT_FSIZE)[1])); os.execv(sys.argv[2], sys.argv[2:])"
)


def plant(folder: Path) -> None:
    for name, text in USERS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def intact(folder: Path) -> bool:
    return all((folder / name).read_text() == text for name, text in USERS.items())


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_a_users_files_beside_and_inside_the_store_survive_runs(prefect_engine, tmp_path):
    user = tmp_path / "user"
    plant(user)
    with pytest.raises(
        StoreError,
        match=rf"{user} is an existing folder that trainflow did not "
        r"create.*set outputs.store to a new or empty folder",
    ):
        run("breast_cancer_mlp", tmp_path, *SMALL, f"outputs.store={user}")
    assert intact(user) and sorted(p.name for p in user.iterdir()) == [
        ".tmp-999999-notes.txt",
        "project",
    ]

    store = user / "store"  # beside the user's files
    run("breast_cancer_mlp", tmp_path, *SMALL, f"outputs.store={store}")
    plant(store)  # and the same names inside the store
    dead = dead_pid()
    staging = store / "table" / f"{TMP_PREFIX}{dead}-0123456789ab"  # the store's own leftovers
    staging.mkdir()
    (staging / "all.parquet").write_bytes(b"half")
    half = store / f"{TMP_PREFIX}{dead}-0123abcd-notes.json"
    half.write_text("{")

    run("breast_cancer_mlp", tmp_path, *SMALL, f"outputs.store={store}")

    assert intact(user) and intact(store)
    assert not staging.exists() and not half.exists()


# values as YAML writes them (a bare ~ is YAML's null, refused as not a string)
@pytest.mark.parametrize("store", ["/", "//", "'~'", "~/", str(Path.home())])
def test_the_root_and_the_home_folder_are_refused_before_any_task(store, capsys):
    with pytest.raises(SpecError) as refused:
        load_spec(SPEC, [f"outputs.store={store}"])
    why = "the filesystem root" if store.strip("/") == "" else "your home folder"
    assert "outputs.store" in str(refused.value) and why in str(refused.value)
    assert main(["validate", str(SPEC), "--set", f"outputs.store={store}"]) != 0
    err = capsys.readouterr().err
    assert "outputs.store" in err and why in err and "Traceback" not in err


@pytest.fixture
def stored(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """A store holding a table and its splits; the splits ref as a file; every stored byte."""
    store = tmp_path / "store"
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), str(store))
    splits = split.fn(table, SplitParams(type="split"), 0, str(store))
    (tmp_path / "splits.json").write_text(splits.model_dump_json())
    return store, tmp_path / "splits.json", snapshot(store)


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def limited(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    trainflow = str(Path(sys.executable).with_name("trainflow"))
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(LIMIT), trainflow, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ingest", "shard"])
def test_a_full_disk_is_one_message_and_leaves_the_store_as_it_was(stored, tmp_path, task):
    store, splits, before = stored
    inputs = ["--input", str(splits)] if task == "shard" else []
    done = limited(
        tmp_path, "task", task, "--spec", str(SPEC), "--set", f"outputs.store={store}", *inputs
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out and "Errno" not in out, out
    assert f"free space on the disk that holds {store}" in done.stderr, out
    assert not [p for p in store.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert snapshot(store) == before  # nothing new, nothing half-written, nothing altered


# The shard step through Prefect with its default I/O retries, in a process whose files may
# not grow past the limit; the test session's server records the runs (its database is in
# another process, out of the limit's reach).
SHARD_FLOW = """
import json, resource, signal, sys
from prefect import flow
from trainflow.artifacts import ArtifactRef
from trainflow.task_options import step
from trainflow.spec.pipeline import load_spec
from trainflow.tasks.shard import shard

spec_path, store, splits_path, limit = sys.argv[1:5]
spec = load_spec(spec_path, [f"outputs.store={store}"])
splits = ArtifactRef.model_validate_json(open(splits_path).read())

@flow(name="shard-on-a-full-disk")
def shard_only() -> dict:
    state = step(shard, spec)(splits, spec.data.shard, store, spec.seed, return_state=True)
    try:
        state.result()
    except Exception as exc:
        return {"state": state.name, "error": type(exc).__name__, "message": str(exc)}
    return {"state": state.name}

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))
print("RESULT " + json.dumps(shard_only()))
"""


def test_a_full_disk_is_not_retried_by_prefect(prefect_engine, stored, tmp_path):
    from prefect.settings import get_current_settings

    store, splits, before = stored
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PREFECT_API_URL": get_current_settings().api.url,
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    done = subprocess.run(
        [sys.executable, "-c", SHARD_FLOW, str(SPEC), str(store), str(splits), str(LIMIT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["state"] == "Failed" and result["error"] == "StoreFullError", out
    assert f"free space on the disk that holds {store}" in result["message"]
    assert "for flow 'shard-on-a-full-disk'" in out, out  # Prefect's log is shown: no retry in it
    assert "Retry 1/" not in out and "AwaitingRetry" not in out, out
    assert snapshot(store) == before
