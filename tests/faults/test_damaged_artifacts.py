"""A flipped byte or a truncation in any stored artifact (Parquet table, view, shard, checkpoint,
model file, result record) is detected on the next run: the damaged piece is recomputed, its
bytes come back as they were, and the metrics are the undamaged run's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.flows.helpers import run

pytestmark = pytest.mark.faults

SMALL = ("train.epochs=4", "evaluate.cv.folds=2", "compress.prune.finetune_epochs=1")


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(len(path.read_bytes()) // 2, 1) - 1])


def one(paths) -> Path:
    found = sorted(paths)
    assert found, "the run stored no artifact of this kind"
    return found[0]


def victims(store: Path, records: Path) -> dict[str, Path]:
    """One file of each artifact kind the run stored, and one of its result records."""
    models = [
        p
        for p in (store / "model").iterdir()
        if (p / "last.pt").is_file() and not (p / "fold.json").is_file()
    ]
    return {
        "parquet": one((store / "table").glob("*/*.parquet")),
        "view": one((store / "splits").glob("*/part.npy")),
        "shard": one((store / "shards").glob("*/train-*.tar")),
        "checkpoint": one(p / "best.pt" for p in models),
        "model": one(p.parent / "model.json" for p in (store / "model").glob("*/compression.json")),
        "record": one(
            p
            for p in records.iterdir()
            if p.is_file() and str(store) in p.read_text(errors="replace")
        ),
    }


@pytest.mark.parametrize("damage", [flip, truncate], ids=["flipped-byte", "truncated"])
def test_every_damaged_artifact_is_recomputed_to_its_own_bytes(prefect_engine, tmp_path, damage):
    records = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    first, _ = run("breast_cancer_mlp", tmp_path, *SMALL)
    targets = victims(tmp_path / "store", records)
    original = {kind: path.read_bytes() for kind, path in targets.items()}
    for path in targets.values():
        damage(path)

    again, states = run("breast_cancer_mlp", tmp_path, *SMALL)

    assert again["test"] == first["test"]
    for kind, path in targets.items():
        if kind == "record":  # rewritten by the rerun of its task: valid JSON again
            assert json.loads(path.read_bytes())["result"], kind
        else:
            assert path.read_bytes() == original[kind], f"the damaged {kind} was not restored"
    assert "Completed" in states["ingest"] and "Completed" in states["shard"], states
