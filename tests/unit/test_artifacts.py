"""The store: atomic writes, content addresses, verification and sweeping of orphans."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from trainflow.artifacts import (
    MARKER,
    REF_FILE,
    TMP_PREFIX,
    ArtifactRef,
    Store,
    StoreError,
    atomic_write_text,
    fingerprint_path,
    sweep_temporaries,
)
from trainflow.errors import ArtifactError


def dead_pid() -> str:
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_failed_writer_leaves_nothing_in_the_store(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.writer("table") as staging:
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
    shutil.rmtree(ref.path)
    with pytest.raises(ArtifactError, match="missing"):
        ref.verify()
    assert not ref.is_valid()


def test_a_ref_whose_numbers_differ_from_its_artifact_fails_verification(tmp_path):
    store = Store(tmp_path)
    with store.writer("metrics") as staging:
        (staging / "metrics.json").write_text('{"accuracy": 0.921}')
        ref = store.commit(staging, "metrics", count=114, meta={"accuracy": 0.921})
    assert json.loads((ref.path / REF_FILE).read_text())["meta"] == {"accuracy": 0.921}
    ref.verify()
    for change in (
        {"meta": {"accuracy": 0.911}},
        {"count": 115},
        {"data_schema": {"classes": ["a"]}},
        {"meta": {"accuracy": 0.921, "x": 1}},
    ):
        forged = ArtifactRef.model_validate({**ref.model_dump(), **change})
        with pytest.raises(ArtifactError, match="differ from what the artifact holds"):
            forged.verify()
    with pytest.raises(ArtifactError, match="meta.accuracy"):
        ref.model_copy(update={"meta": {"accuracy": 0.911}}).verify()


def test_ref_round_trips_through_json():
    ref = ArtifactRef(
        uri="/x",
        fingerprint="ab",
        kind="shards",
        count=3,
        data_schema={"classes": ["a"]},
        meta={"samples": {"train": 3}},
    )
    assert ArtifactRef.model_validate_json(ref.model_dump_json()) == ref


def test_sweep_removes_temporaries_of_dead_processes_only(tmp_path):
    Store(tmp_path)  # marks the folder: only a store is swept
    orphan = tmp_path / f"{TMP_PREFIX}{dead_pid()}-0123abcd-report.md"
    orphan.write_text("half")
    staging = tmp_path / "table" / f"{TMP_PREFIX}{dead_pid()}-0123456789ab"
    staging.mkdir(parents=True)
    (staging / "part.parquet").write_text("half")
    mine = tmp_path / f"{TMP_PREFIX}{os.getpid()}-0123abcd-report.md"
    mine.write_text("in progress")
    assert sweep_temporaries(tmp_path) == 2
    assert not orphan.exists() and not staging.exists() and mine.exists()


def test_sweep_leaves_what_the_store_did_not_write(tmp_path):
    store = Store(tmp_path / "store")
    pid = dead_pid()
    users = [
        store.root / f".tmp-{pid}-notes.txt",
        store.root / "project" / f".tmp-{pid}-a.md",
        store.root / f".trainflow-tmp-{pid}-draft.md",
    ]  # no hex token: not the store's
    for path in users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / f"{TMP_PREFIX}{pid}-0123abcd-x"
    outside.write_text("not in a store")
    assert store.sweep() == 0 and sweep_temporaries(tmp_path / "elsewhere") == 0
    assert all(path.read_text() == "mine" for path in users) and outside.exists()


def test_a_store_is_a_folder_trainflow_created_and_marked(tmp_path):
    Store(tmp_path / "new")
    assert (tmp_path / "new" / MARKER).is_file()
    Store(tmp_path / "new")  # opening it again is fine
    (tmp_path / "empty").mkdir()
    Store(tmp_path / "empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("my own")
    with pytest.raises(
        StoreError,
        match=r"mine is an existing folder that trainflow did not "
        r"create.*set outputs.store to a new or empty folder",
    ):
        Store(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
    for refused, why in (("/", "the filesystem root"), (os.path.expanduser("~"), "home folder")):
        with pytest.raises(StoreError, match=why):
            Store(refused)


def test_an_unmarked_store_of_an_older_trainflow_is_adopted(tmp_path):
    old = tmp_path / "old"
    (old / "table" / ("ab" * 32)).mkdir(parents=True)
    (old / "resume" / "0123").mkdir(parents=True)
    Store(old)
    assert (old / MARKER).is_file()
