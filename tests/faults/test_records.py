"""Prefect's result records are data, never code, and carry no number their artifact does not
back: a record naming another serializer, holding anything but the task's declared result, or
whose numbers differ from its artifact's is dropped and the task recomputes."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
from pathlib import Path

import pytest
from prefect import flow

from tests.flows.helpers import run
from trainflow.artifacts import ArtifactRef
from trainflow.caching import record_problem
from trainflow.tasks.ingest import SklearnSource, ingest

pytestmark = pytest.mark.faults

RECORDS = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
# the evaluate record and the report are the point: no folds, ensemble or compression
SMALL = ("train.epochs=4", "evaluate.cv=null", "ensemble=null", "compress={}")


class Touch:
    """What an attacker pickles: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@flow(name="ingest-only")
def ingest_only(store: str) -> tuple[str, dict]:
    state = ingest(SklearnSource(type="sklearn", dataset="iris"), store, return_state=True)
    result = state.result()
    return state.name, (
        result.model_dump(mode="json")
        if isinstance(result, ArtifactRef)
        else {"served": repr(result)}
    )


def records_naming(text: str) -> list[Path]:
    return [p for p in RECORDS.iterdir() if p.is_file() and text in p.read_text(errors="replace")]


def pickled(marker: Path, quoted: bool) -> str:
    """The pickle bytes base64-encoded as Prefect's pickle serializer reads them; `quoted`
    wraps them as a JSON string, which the old check parsed as a harmless result while
    base64 decoding skips the quotes (so Prefect still unpickled it)."""
    encoded = base64.b64encode(pickle.dumps(Touch(marker))).decode()
    return json.dumps(encoded) if quoted else encoded


@pytest.mark.parametrize("quoted", [False, True], ids=["base64", "json-quoted-base64"])
def test_a_pickle_record_is_never_decoded_and_the_task_reruns(
    prefect_engine, tmp_path, quoted, caplog
):
    store = str(tmp_path / "store")
    state, ref = ingest_only(store)
    assert state == "Completed"
    assert ingest_only(store)[0] == "Cached"  # the genuine record is served
    (record,) = records_naming(store)
    marker = tmp_path / "code-ran"
    doc = json.loads(record.read_bytes())
    doc["metadata"]["serializer"] = {
        "type": "pickle",
        "picklelib": "pickle",
        "picklelib_version": None,
    }
    doc["result"] = pickled(marker, quoted)
    record.write_text(json.dumps(doc))

    state, again = ingest_only(store)

    assert not marker.exists(), "the pickled record was decoded: its code ran"
    assert state == "Completed" and again == ref
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(record.name in w and "serializer is 'pickle'" in w for w in warned), warned
    assert json.loads(record.read_bytes())["metadata"]["serializer"]["type"] == "json"


def genuine(tmp_path: Path) -> tuple[Path, dict, ArtifactRef]:
    """A record as Prefect writes it for a task returning a real artifact of a store."""
    from trainflow.artifacts import Store

    store = Store(tmp_path / "store")
    with store.writer("metrics") as staging:
        (staging / "metrics.json").write_text('{"accuracy": 0.9210526315789473}')
        ref = store.commit(staging, "metrics", count=114, meta={"accuracy": 0.9210526315789473})
    from prefect.serializers import JSONSerializer

    doc = {
        "metadata": {
            "storage_key": str(tmp_path / "rec"),
            "expiration": None,
            "serializer": JSONSerializer().model_dump(mode="json"),
            "prefect_version": "3",
            "storage_block_id": None,
        },
        "result": JSONSerializer().dumps(ref).decode(),
    }
    return tmp_path / "rec", doc, ref


def forge(doc: dict, result=None, **serializer) -> dict:
    forged = json.loads(json.dumps(doc))
    forged["metadata"]["serializer"].update(serializer)
    if result is not None:
        forged["result"] = result if isinstance(result, str) else json.dumps(result)
    return forged


def test_only_plain_json_of_the_declared_result_is_accepted(tmp_path):
    path, doc, ref = genuine(tmp_path)
    path.write_text(json.dumps(doc))
    assert record_problem(path, ArtifactRef) is None
    data = json.loads(doc["result"])["data"]
    cases = {
        "pickle": forge(doc, type="pickle"),
        "another json library": forge(doc, jsonlib="pickle"),
        "another decoder": forge(doc, object_decoder="os.system"),
        "loads options": forge(doc, loads_kwargs={"parse_float": "decimal.Decimal"}),
        "another class": forge(doc, {"__class__": "os.PathLike", "data": data}),
        "an exception": forge(doc, {"__exc_type__": "builtins.OSError", "message": "x"}),
        "a bare dict": forge(doc, data),
        "a list of it": forge(doc, [json.loads(doc["result"])]),
        "a coerced count": forge(
            doc, {"__class__": "trainflow.artifacts.ArtifactRef", "data": {**data, "count": "114"}}
        ),
        "a result object": forge(doc, result={"not": "text"}),
    }
    for why, forged in cases.items():
        path.write_text(json.dumps(forged))
        assert record_problem(path, ArtifactRef) is not None, why
    path.write_text(json.dumps(doc))
    assert record_problem(path, None) is not None  # no declared result: nothing is trusted


def tamper_accuracy(record: Path) -> tuple[float, float]:
    """Change one digit of the accuracy in the record's result text; (true, served)."""
    doc = json.loads(record.read_bytes())
    found = re.search(r'"accuracy": (0\.(\d)(\d)\d*)', doc["result"])
    true = found[1]
    digit = str((int(found[3]) + 5) % 10)  # the second decimal: visible at 4 decimals
    served = true[:3] + digit + true[4:]
    doc["result"] = doc["result"].replace(f'"accuracy": {true}', f'"accuracy": {served}', 1)
    record.write_text(json.dumps(doc))
    return float(true), float(served)


def test_a_tampered_metric_in_the_evaluate_record_is_never_served(prefect_engine, tmp_path):
    first, _ = run("breast_cancer_mlp", tmp_path, *SMALL)
    evaluate = [
        p
        for p in records_naming(str(tmp_path / "store"))
        if json.loads(json.loads(p.read_bytes())["result"])["data"].get("meta")
        == json.loads(json.dumps(first["test"]))
    ]
    assert len(evaluate) == 1, "the evaluate task's record was not found"
    true, served = tamper_accuracy(evaluate[0])
    assert true == first["test"]["accuracy"] and served != true

    # a new runs folder changes the spec, so the report is rendered again from what
    # evaluate returns: the tampered number would reach metrics.json and report.md
    again, states = run("breast_cancer_mlp", tmp_path, *SMALL, f"outputs.runs={tmp_path}/r2")

    assert states["evaluate"] == ["Completed"] and states["report"] == ["Completed"]
    assert again["test"]["accuracy"] == true
    run_dir = Path(again["run_dir"])
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"] == true
    report = (run_dir / "report.md").read_text()
    assert f"| accuracy | {true:.4f} |" in report and f"{served:.4f}" not in report
