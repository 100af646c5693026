"""One way to store a step's output: every registered step, before and after `split`, writes a
view over its input (the one writer: its step, params, code fingerprint, state and the way each
part is read), and the one read path gives exactly the rows the step gives in memory."""

import json

import pytest
from polars.testing import assert_frame_equal

from trainflow import registry
from trainflow.caching import code_fingerprint
from trainflow.steps import APPLIED, INPUT, STORED, fit_apply, materialize, read_parts
from trainflow.tables import class_counts
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.split import SplitParams, split, split_rows

SETTINGS = {
    "resample": {"method": "smote"},
    "subsample": {"fraction": 0.5},
    "smooth": {"columns": ["petal length (cm)"]},
    "outliers": {"action": "drop"},
    "anomalies": {"action": "drop", "method": "zscore"},
}
SEED = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="iris"), store)
    return store, {"table": table, "splits": split.fn(table, SplitParams(type="split"), 0, store)}


def _cases():
    for name in registry.STEPS:
        for kind in ("table",) if name == "split" else ("table", "splits"):
            yield pytest.param(name, kind, id=f"{name}-{kind}")


@pytest.mark.parametrize("name,kind", list(_cases()))
def test_every_step_stores_a_view_that_reads_as_the_step(inputs, name, kind):
    store, refs = inputs
    entry, data = registry.STEPS[name], refs[kind]
    params = entry.params(type=name, **SETTINGS.get(name, {}))
    out = entry.impl.fn(data, params, SEED, store)

    assert out.base() == data.model_copy(update={"count": 0, "data_schema": {}, "meta": {}})
    view = json.loads((out.path / "view.json").read_text())
    assert (view["step"], view["params"]) == (name, params.model_dump(mode="json"))
    applies = entry.transforms if entry.stateful else entry.module  # the code readers run
    assert view["code"] == code_fingerprint(applies)
    assert out.meta["step"] == name and (out.path / "state.json").is_file()
    stored = {f"{part}.parquet" for part, way in view["parts"].items() if way == STORED}
    files = {p.name for p in out.path.iterdir()} - {"view.json", "state.json", "ref.json"}
    assert {f for f in files if not f.endswith(".npy")} == stored
    assert set(view["parts"].values()) <= {APPLIED, STORED, INPUT}

    got = read_parts(out)
    before = read_parts(data)
    if name == "split":
        expected = {
            part: (before["all"][0][rows], before["all"][1])
            for part, rows in split_rows(before["all"][0], before["all"][1], params, SEED).items()
        }
    else:
        expected, _ = fit_apply(before, params, entry.fit, entry.apply, SEED)
    assert list(got) == list(expected)
    for part, (frame, schema) in got.items():
        # (lazy steps fit on a streamed scan: statistics may differ in the last bits)
        assert_frame_equal(frame, expected[part][0], check_exact=False)
        assert schema == expected[part][1], part
        assert out.meta["parts"][part]["rows"] == len(frame)
        assert out.meta["parts"][part]["classes"] == class_counts(frame, schema)
        if view["parts"][part] == INPUT and name != "split":
            assert frame.equals(before[part][0])  # a training-only step spares val and test
    written = read_parts(materialize(out, store))  # the rows a pipeline's shard step reads
    assert all(written[part][0].equals(frame) for part, (frame, _) in got.items())
