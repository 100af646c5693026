"""A deployment run's parameters become a validated spec, or an error naming the field."""

import pytest

from tests.conftest import ROOT
from trainflow.deploy import spec_from_parameters
from trainflow.errors import SpecError


@pytest.fixture(autouse=True)
def shipped_pipelines(monkeypatch):
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(ROOT / "pipelines"))


def problems(pipeline="breast_cancer_mlp", overrides=(), **knobs) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_parameters(pipeline, knobs, list(overrides))
    return str(caught.value)


def test_knobs_and_overrides_reach_the_spec():
    spec = spec_from_parameters(
        "digits_cnn",
        {"epochs": 3, "lr": 0.01, "batch_size": 16, "cv_folds": 2},
        ["train.optimizer.type=sgd", "data.steps.1.test=0.25"],
    )
    assert (spec.train.epochs, spec.train.lr, spec.train.batch_size) == (3, 0.01, 16)
    assert spec.evaluate.cv.folds == 2 and spec.train.optimizer.type == "sgd"
    assert spec.data.steps[1].test == 0.25
    untouched = spec_from_parameters("digits_cnn", {"epochs": None}, [])
    assert untouched.train.epochs == 40  # an empty knob keeps the spec's value


def test_invalid_values_name_the_yaml_path_and_the_parameter():
    message = problems(epochs=0, cv_folds=1, lr=-0.1)
    assert "train.epochs (parameter epochs)" in message and "(got 0)" in message
    assert "evaluate.cv.folds (parameter cv_folds)" in message
    assert "train.lr (parameter lr)" in message
    assert "train.optimizer: Input tag 'adamm'" in problems(
        overrides=["train.optimizer.type=adamm"]
    )
    assert "train.epochz: unknown key" in problems(overrides=["train.epochz=3"])
    assert "overrides.0: expected key.path=value" in problems(overrides=["train.epochs"])
    assert "epochs and overrides both set train.epochs" in problems(
        epochs=3, overrides=["train.epochs=4"]
    )


@pytest.mark.parametrize(
    "name",
    [
        "missing_spec",
        "../pipelines/digits_cnn",
        "/etc/passwd",
        "digits_cnn/../../pyproject",
        ".hidden",
        "",
    ],
)
def test_pipeline_names_only_a_spec_in_the_pipelines_folder(name):
    message = problems(pipeline=name)
    assert f"pipeline: no pipeline {name!r}" in message
    shipped = "breast_cancer_mlp, breast_cancer_search, credit_smote_mlp, diabetes_mlp, digits_cnn"
    assert shipped in message


@pytest.mark.parametrize(
    "override",
    [
        "outputs.store=/tmp/elsewhere",
        "outputs={runs: /x}",
        "data.source.path=/etc/passwd",
        "data={}",
        "train.loader.cache_dir=/tmp/c",
        "runner.address=tcp://10.0.0.1:8786",
    ],
)
def test_worker_paths_and_the_dask_scheduler_stay_as_the_spec_file_says(override):
    assert "cannot be set from a run's parameters" in problems(overrides=[override])
