"""A full disk during each writer (ingest's Parquet, each step's view, the shards, training's
checkpoints, evaluation's metrics): one clear message, exit code 2, nothing half-written, and
every artifact stored before stays intact; the same step then succeeds once there is room."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainflow import registry
from trainflow.artifacts import fingerprint_path
from trainflow.spec.pipeline import load_spec
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.ingest import ingest
from trainflow.tasks.shard import shard
from trainflow.tasks.train import train_model

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRAINFLOW = Path(sys.executable).with_name("trainflow")
SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SMALL = ["train.epochs=2", "evaluate.cv=null", "ensemble=null", "compress={}"]


def no_room() -> None:
    """In the child: any file write past 64 bytes fails (EFBIG), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def stored(store: Path) -> dict[str, str]:
    """Each stored artifact folder and its fingerprint, as found on disk now."""
    return {
        f"{kind.name}/{item.name}": fingerprint_path(item)
        for kind in store.iterdir()
        if kind.is_dir() and kind.name != "resume"
        for item in kind.iterdir()
    }


def writers(spec, store: str) -> list[tuple[str, str | None, list[str], object]]:
    """(step, data.steps index, names of its input refs, the step's bare function) in order."""
    rows = [("ingest", None, [], lambda: ingest.fn(spec.data.source, store))]
    last = "ingest"
    for index, params in enumerate(spec.data.steps):
        rows.append(
            (
                params.type,
                str(index),
                [last],
                lambda refs, p=params: registry.STEPS[p.type].impl.fn(refs[0], p, spec.seed, store),
            )
        )
        last = params.type
    rows += [
        ("shard", None, [last], lambda refs: shard.fn(refs[0], spec.data.shard, store, spec.seed)),
        (
            "train",
            None,
            ["shard"],
            lambda refs: train_model.fn(refs[0], spec.model, spec.train, spec.seed, store),
        ),
        ("evaluate", None, ["train", "shard"], lambda refs: evaluate_model.fn(*refs, store)),
    ]
    return rows


def test_a_full_disk_in_each_writer_is_one_message_and_leaves_the_store_intact(tmp_path):
    store = tmp_path / "store"
    sets = [*SMALL, f"outputs.store={store}", f"outputs.runs={tmp_path / 'runs'}"]
    spec = load_spec(SPEC, sets)
    refs: dict = {}
    for step, index, inputs, bare in writers(spec, str(store)):
        argv = [
            str(TRAINFLOW),
            "task",
            step,
            "--spec",
            str(SPEC),
            *(["--index", index] if index else []),
            *(arg for s in sets for arg in ("--set", s)),
        ]
        for name in inputs:
            (tmp_path / f"{name}.json").write_text(refs[name].model_dump_json())
            argv += ["--input", str(tmp_path / f"{name}.json")]
        before = stored(store) if store.exists() else {}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=no_room)
        output = done.stdout + done.stderr
        assert done.returncode == 2, f"{step}: exit {done.returncode}\n{output[-2000:]}"
        assert "Traceback" not in output, f"{step}:\n{output[-2000:]}"
        assert "space" in output.lower() and str(store) in output, f"{step}:\n{output}"
        assert (stored(store) if store.exists() else {}) == before, f"{step} changed the store"
        assert not list(store.rglob("*tmp*")), f"{step} left temporaries"
        refs[step] = bare(*([[refs[n] for n in inputs]] if inputs else []))  # room again
    assert refs["evaluate"].meta["accuracy"] > 0.8
