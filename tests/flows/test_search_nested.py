"""Nested CV (search.nested) through the real Prefect engine: the outer folds partition the
searchable rows, no model that scores an outer fold (nor any trial of its study) saw its
rows, and the report holds one outer score per fold and their mean; outer folds the rows cannot give
are refused before any trial (bad values of the spec alone: tests/unit/test_search_spec.py)."""

import json
import math
import statistics
from pathlib import Path

import optuna
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sklearn.datasets import load_breast_cancer

from trainflow.errors import SpecError
from trainflow.flows.search import search_flow
from trainflow.spec.pipeline import load_spec
from trainflow.study import rows_digest

pytestmark = pytest.mark.usefixtures("prefect_engine")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "breast_cancer_search.yaml"
# CI-sized: a grid of two points, two outer folds, two inner folds of two epochs
SMALL = (
    "train.epochs=2",
    "evaluate.cv.folds=2",
    "train.threads=1",
    "train.precision=fp32",
    "search.sampler={type: grid}",
    "search.n_trials=null",
    "search.pruner=null",
    "ensemble=null",
    "search.space={train.lr: {type: categorical, choices: [0.01, 0.001]}}",
    "search.nested={outer_folds: 2}",
)


def spec_for(tmp_path: Path, *overrides: str):
    return load_spec(
        SPEC,
        [f"outputs.store={tmp_path / 'store'}", f"outputs.runs={tmp_path / 'runs'}", *SMALL]
        + list(overrides),
    )


def test_no_outer_fold_is_scored_by_a_model_that_saw_it(tmp_path):
    spec = spec_for(tmp_path)
    result = search_flow(spec)(spec)
    nested = result["nested"]
    folds = nested["folds"]
    assert [f["outer_fold"] for f in folds] == [0, 1]
    # the searchable rows are the train + validation parts: all but the split's test part
    total = len(load_breast_cancer().target)
    pool = set(range(total - math.ceil(0.2 * total)))
    scored = [f["rows"] for f in folds]
    assert sorted(r for rows in scored for r in rows) == sorted(pool)  # a partition
    for fold, rows in zip(folds, scored):
        outside = sorted(pool - set(rows))  # the other outer folds' rows
        assert rows and outside
        # the outer model trained and early-stopped on exactly those rows, none it scored
        assert fold["trained"] == rows_digest(outside)
        study = optuna.load_study(study_name=fold["study"], storage=result["storage"])
        inner = study.get_trials()
        assert len(inner) == 2 and all(t.state.name == "COMPLETE" for t in inner)
        for trial in inner:  # every trial's training and validation rows: the same ones
            assert trial.user_attrs["rows"] == rows_digest(outside), (fold["study"], trial)
        assert fold["inner_best"] == study.best_value
        assert fold["params"] == study.best_params
        assert math.isfinite(fold["score"]) and fold["score"] == fold["scores"]["loss"]
    # the main study still runs over all the rows, its trials not restricted
    main = optuna.load_study(study_name=result["study"], storage=result["storage"])
    assert len(main.get_trials()) == 2 and "rows" not in main.trials[0].user_attrs
    assert nested["mean"] == statistics.fmean(f["score"] for f in folds)
    assert nested["std"] == statistics.stdev(f["score"] for f in folds)
    run = Path(result["run_dir"])
    report = (run / "report.md").read_text()
    assert "## Nested cross-validation" in report and f"{nested['mean']:.6g}" in report
    for fold in folds:
        assert f"| {fold['outer_fold']} | {fold['score']:.6g} | {fold['inner_best']:.6g} |" in (
            report
        )
    saved = json.loads((run / "nested.json").read_text())
    assert [f["scored_rows"] for f in saved["folds"]] == [len(r) for r in scored]
    # the UI's table: one row per outer fold, its score beside its inner best and choice
    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["breast-cancer-search-nested"])
            )
        )
    rows = [json.loads(t.data) if isinstance(t.data, str) else t.data for t in tables]
    ours = next(r for r in rows if [x["outer_score"] for x in r] == [f["score"] for f in folds])
    assert {"outer_fold", "outer_score", "inner_best", "params"} <= set(ours[0])


def test_outer_folds_the_rows_cannot_give_are_refused_before_any_trial(tmp_path):
    # 40 rows, 6 of class b: the split's test and validation parts take some, so the
    # searchable rows hold fewer than 6 of them, one short of a row in each of 6 outer folds
    lines = ["x1,x2,y"] + [f"{i},{i % 7},{'b' if i < 6 else 'a'}" for i in range(40)]
    (tmp_path / "small.csv").write_text("\n".join(lines) + "\n")
    source = f"data.source={{type: csv, path: {tmp_path / 'small.csv'}, target: y}}"
    spec = spec_for(tmp_path, source, "search.nested={outer_folds: 6}")
    with pytest.raises(SpecError) as error:
        search_flow(spec)(spec)
    ((path, message),) = error.value.problems
    assert path == "search.nested.outer_folds"
    assert "6 stratified outer folds" in message and "class 'b' has" in message, message
    assert "lower outer_folds to" in message, message
    assert not (tmp_path / "store" / "studies").exists()  # no study was opened
