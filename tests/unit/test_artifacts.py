"""The store: atomic writes, content addresses, verification and sweeping of orphans."""

import os
import subprocess
import sys

import pytest

from trainflow.artifacts import (TMP_PREFIX, ArtifactRef, Store, atomic_write_text,
                                 fingerprint_path, sweep_temporaries)
from trainflow.errors import ArtifactError


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_failed_writer_leaves_nothing_in_the_store(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writer("table") as staging:
            (staging / "part.parquet").write_bytes(b"half")
            raise RuntimeError("task failed midway")
    assert list((tmp_path / "table").iterdir()) == []


def test_same_content_gets_the_same_address(tmp_path):
    store = Store(tmp_path)
    refs = []
    for _ in range(2):
        with store.writer("table") as staging:
            (staging / "a.txt").write_text("hello")
            refs.append(store.commit(staging, "table", count=1))
    assert refs[0] == refs[1]
    assert refs[0].path.name == refs[0].fingerprint == fingerprint_path(refs[0].path)


def test_verify_detects_missing_and_altered_artifacts(tmp_path):
    store = Store(tmp_path)
    with store.writer("model") as staging:
        (staging / "best.pt").write_bytes(b"weights")
        ref = store.commit(staging, "model")
    ref.verify()
    (ref.path / "best.pt").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="altered"):
        ref.verify()
    (ref.path / "best.pt").unlink()
    (ref.path).rmdir()
    with pytest.raises(ArtifactError, match="missing"):
        ref.verify()
    assert not ref.is_valid()


def test_ref_round_trips_through_json():
    ref = ArtifactRef(uri="/x", fingerprint="ab", kind="shards", count=3,
                      data_schema={"classes": ["a"]}, meta={"samples": {"train": 3}})
    assert ArtifactRef.model_validate_json(ref.model_dump_json()) == ref


def test_sweep_removes_temporaries_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / f"{TMP_PREFIX}{dead}-abc-report.md"
    orphan.write_text("half")
    mine = tmp_path / f"{TMP_PREFIX}{os.getpid()}-abc-report.md"
    mine.write_text("in progress")
    assert sweep_temporaries(tmp_path) == 1
    assert not orphan.exists() and mine.exists()
