"""Every ensemble kind through the real Prefect engine, on one small cross-validation (3 folds
of the spec and 3 of one variant): what each combination fits on, what it keeps, and that its
model package predicts the raw test rows exactly as the ensemble task scored them."""

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
import torch

import trainflow
import trainflow.errors
from tests.flows.helpers import ROOT
from trainflow import registry
from trainflow.engine import checkpoint
from trainflow.spec.pipeline import load_spec
from trainflow.steps import read_parts
from trainflow.tasks.ensemble import ensemble_folds
from trainflow.tasks.package import package_model
from trainflow.tasks.split import fold_indices
from trainflow.testrows import raw_test_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_engine")]

OVERRIDES = [
    "train.epochs=3",
    "train.early_stopping=null",
    "evaluate.cv.folds=3",
    "compress={}",
    # a second member, cross-validated on the same folds
    "ensemble={type: soft_vote, variants: [{model.units: 8, train.lr: 0.01}]}",
]
KINDS = {
    "soft_vote": {},
    "hard_vote": {},
    "weighted": {},
    "stacking": {"C": 0.5},
    "soup": {},
}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    from trainflow.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("ensembles")
    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [*OVERRIDES, f"outputs.store={root / 'store'}", f"outputs.runs={root / 'runs'}"],
    )
    result = pipeline(spec)
    data = result["data"]
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    return spec, result, raw, str(Path(spec.outputs.store).resolve())


def ensembled(cv_run, kind: str):
    """The ensemble task's artifact for `kind` over the run's members (the soup: the spec's
    own folds), and its model package."""
    spec, result, _, store = cv_run
    params = registry.ENSEMBLES[kind].params.model_validate({"type": kind, **KINDS[kind]})
    folds = result["folds"] if kind == "soup" else result["ensemble_members"]
    ref = ensemble_folds(folds, params, store)
    data = result["data"]
    models = [ref] if kind == "soup" else folds
    package = package_model(
        "ensemble",
        models,
        ref,
        spec.model_copy(update={"ensemble": params}),
        data["ingested"],
        data["steps"],
        store,
    )
    return ref, package


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_packages_and_predicts_as_the_ensemble_task_scored(cv_run, kind):
    _, _, raw, _ = cv_run
    ref, package = ensembled(cv_run, kind)
    expected = np.load(ref.path / "test_probs.npy", allow_pickle=False)
    model = trainflow.load_model(package.path)
    probs = model.predict_proba(raw)
    assert model.info.combine == kind
    assert np.array_equal(probs.argmax(1), expected.argmax(1))
    assert np.abs(probs - expected).max() <= 1e-5
    truth = np.load(cv_run[1]["folds"][0].path / "test_labels.npy", allow_pickle=False)
    assert ref.meta["accuracy"] == pytest.approx(float((expected.argmax(1) == truth).mean()))
    # the report's comparison: the best single fold model (by validation loss) on test
    assert {"fold", "member", "accuracy", "f1_macro"} <= set(ref.meta["best_single"])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_exports_and_the_file_scores_as_its_package(cv_run, kind, tmp_path, capsys):
    """ONNX (run by onnxruntime) and TorchScript (the saved file) give the package's
    probabilities on the raw test rows: the rule is folded into the graph, not refused."""
    from tests.flows.test_export import assert_exports_score_like

    _, package = ensembled(cv_run, kind)
    sidecar = assert_exports_score_like(
        str(package.path), cv_run[2], tmp_path, capsys, ("onnx", "torchscript")
    )
    assert sidecar["package"]["kind"] == "ensemble"


def test_hard_vote_gives_the_majority_class_and_vote_shares(cv_run):
    _, result, _, _ = cv_run
    ref, _ = ensembled(cv_run, "hard_vote")
    members = result["ensemble_members"]
    votes = np.stack(
        [np.load(f.path / "test_probs.npy", allow_pickle=False).argmax(1) for f in members]
    )
    shares = np.load(ref.path / "test_probs.npy", allow_pickle=False)
    assert np.allclose(shares[:, 1], votes.mean(0), atol=1e-6)  # 6 voters, 2 classes
    assert np.array_equal(shares.argmax(1), (votes.mean(0) > 0.5).astype(int))


def test_weighted_weights_sum_to_one_and_beat_uniform_out_of_fold(cv_run):
    ref, _ = ensembled(cv_run, "weighted")
    weights = ref.meta["weights"]
    assert len(weights) == 2 and min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    assert ref.meta["oof_log_loss"] <= ref.meta["uniform_oof_log_loss"]
    combine = json.loads((ref.path / "combine.json").read_text())
    assert combine["weights"] == weights and combine["groups"] == [0, 0, 0, 1, 1, 1]


def test_stacking_meta_model_never_sees_a_row_it_scores(cv_run):
    spec, result, _, _ = cv_run
    ref, package = ensembled(cv_run, "stacking")
    rows = json.loads((ref.path / "meta_rows.json").read_text())
    parts = read_parts(result["data"]["raw_splits"])
    pool = pl.concat([parts["train"][0], parts["val"][0]])
    # fitted on every train+val row once, each predicted by the fold model that held it out
    assert rows["fitted_on"] == list(range(len(pool)))
    for row, fold in zip(rows["fitted_on"], rows["fold_of_row"]):
        trained_on, held = fold_indices(pool, parts["train"][1], 3, fold, spec.seed)
        assert row in set(held.tolist()) and row not in set(trained_on.tolist())
    # ... and scored on the test part alone, which no train+val row is part of
    assert rows["scored"] == "test" and rows["scored_rows"] == parts["test"][0].height
    # saved as coefficients, no pickled estimator
    combine = json.loads((ref.path / "combine.json").read_text())
    assert np.asarray(combine["coef"]).shape == (1, 4)  # binary: 2 members x 2 classes
    assert not list(Path(package.path).rglob("*.pkl"))


def test_soup_keeps_only_ingredients_that_help(cv_run):
    _, result, _, _ = cv_run
    ref, _ = ensembled(cv_run, "soup")
    kept, tried = ref.meta["kept"], ref.meta["tried"]
    folds = {f.meta["fold"]: f for f in result["folds"]}
    best_first = min(folds, key=lambda f: folds[f].meta["val"]["loss"])
    assert kept[0] == best_first and len(tried) == len(folds) - 1
    for candidate in tried:  # added only when the held-out loss went down
        assert candidate["kept"] == (candidate["loss_with"] < candidate["loss_without"])
        assert (candidate["fold"] in kept) == candidate["kept"]
    soup = checkpoint.load(ref.path / "best.pt")["model"]
    ingredients = [checkpoint.load(folds[f].path / "best.pt")["model"] for f in kept]
    for key, value in soup.items():
        if value.is_floating_point():
            assert torch.allclose(value, torch.stack([i[key] for i in ingredients]).mean(0))


def test_top_k_trials_combines_the_best_trials_of_a_study(tmp_path):
    from trainflow.flows.search import search_flow

    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_search.yaml",
        [
            f"outputs.store={tmp_path / 'store'}",
            f"outputs.runs={tmp_path / 'runs'}",
            "train.epochs=2",
            "evaluate.cv.folds=2",
            "train.threads=1",
            "train.precision=fp32",
            "search.sampler={type: grid}",
            "search.n_trials=null",
            "search.pruner=null",
            "search.space={train.lr: {type: categorical, choices: [0.03, 0.001, 0.0001]}}",
            "ensemble={type: top_k_trials, k: 2, combine: weighted}",
        ],
    )
    result = search_flow(spec)(spec)
    ensemble = result["ensemble"]
    assert result["trials"] == 3
    assert ensemble.meta["member_models"] == 2 and ensemble.meta["members"] == 4
    assert ensemble.meta["combine"] == "weighted" and sum(ensemble.meta["weights"]) == (
        pytest.approx(1.0)
    )
    # the two best trials' folds: their validation losses are the study's two lowest values
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    values = sorted(t.value for t in study.get_trials() if t.value is not None)
    combine = json.loads((ensemble.path / "combine.json").read_text())
    assert combine["groups"] == [0, 0, 1, 1] and len(values) == 3
    # its model package predicts the raw test rows as the ensemble task scored them
    from trainflow.flows.data import prepare_data

    data = prepare_data(spec, str(tmp_path / "store"))
    raw = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    model = trainflow.load_model(result["ensemble_package"])
    expected = np.load(ensemble.path / "test_probs.npy", allow_pickle=False)
    assert model.info.combine == "top_k_trials" and len(model.info.members) == 4
    assert np.abs(model.predict_proba(raw) - expected).max() <= 1e-5
    # and the best spec a person can run again holds no study-only ensemble
    assert result["best"]["ensemble"] is None


def test_top_k_trials_without_a_study_is_refused_by_name():
    with pytest.raises(trainflow.errors.SpecError, match="top_k_trials combines the k best"):
        load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml", ["ensemble={type: top_k_trials}"])


def test_the_report_sets_the_ensemble_beside_the_best_single_model(cv_run):
    _, result, _, _ = cv_run
    report = (Path(result["run_dir"]) / "report.md").read_text()
    best = result["ensemble"].meta["best_single"]
    assert f"| metric | ensemble | best single (fold {best['fold']}, member {best['member']})" in (
        report
    )


def test_an_ensemble_of_models_with_other_classes_is_refused(cv_run):
    """A fold model of the wine table (3 classes) beside the breast cancer folds (2)."""
    from trainflow.errors import ArtifactError
    from trainflow.flows.data import prepare_data
    from trainflow.tasks.fold import train_fold

    spec, result, _, store = cv_run
    wine = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [*OVERRIDES, "data.source.dataset=wine", "train.epochs=1", f"outputs.store={store}"],
    )
    splits = prepare_data(wine, store)["raw_splits"]
    other = train_fold(splits, 0, 3, wine.data.post_split, wine.model, wine.train, wine.seed, store)
    with pytest.raises(ArtifactError, match="an ensemble combines models of the same classes"):
        ensemble_folds([*result["folds"], other], spec.ensemble, store)
