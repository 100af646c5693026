"""Which rows cross-validation uses (issue 19 part 6): the train + validation rows by
default, every row with evaluate.cv.rows: all; the report says which."""

from __future__ import annotations

import pytest

from trainflow.reporting.markdown import cv_lines
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.sources import SklearnSource
from trainflow.spec.steps import SplitParams
from trainflow.tasks.fold import fold_data
from trainflow.tasks.ingest import ingest
from trainflow.tasks.split import split


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    return split.fn(table, SplitParams(type="split", validation=0.15, test=0.2), 0, store)


def test_the_folds_leave_the_test_part_out_unless_rows_is_all(splits):
    default = fold_data(splits, 0, 5, [], 0)
    everything = fold_data(splits, 0, 5, [], 0, rows="all")
    test = len(default.data["test"])
    assert test == 114  # breast_cancer's 569 rows, 20 % test
    assert len(default.held) + len(default.train_rows) == 569 - test
    assert len(everything.held) + len(everything.train_rows) == 569
    # with every row in the folds, a fold's test rows are its held-out rows
    assert len(everything.data["test"]) == len(everything.held)
    assert (everything.data["test"].y == everything.data["val"].y).all()


def test_the_report_says_which_rows_the_folds_used():
    scores = {"folds": [], "mean": {}, "std": {}}
    default = "\n".join(cv_lines({**scores, "rows": "train+validation", "pool": 455}))
    assert "drawn from the 455 train + validation rows" in default
    assert "the test part stays out of them" in default
    every = "\n".join(cv_lines({**scores, "rows": "all", "pool": 569}))
    assert "drawn from all 569 rows, the test part included" in every


def base(**evaluate) -> dict:
    return {
        "name": "rows",
        "data": {
            "source": {"type": "sklearn", "dataset": "breast_cancer"},
            "steps": [{"type": "split"}],
        },
        "model": {"type": "mlp"},
        "evaluate": {"cv": {"folds": 3, **evaluate}},
    }


def test_rows_all_is_refused_with_an_ensemble_it_would_leave_no_test_rows_for():
    PipelineSpec.model_validate(base(rows="all"))
    with pytest.raises(ValueError, match="no row is left to score the ensemble"):
        PipelineSpec.model_validate({**base(rows="all"), "ensemble": {"type": "soft_vote"}})
