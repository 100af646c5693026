"""A champion that retraining must beat, through the real Prefect engine: the first run
promotes, a better run replaces the champion, a worse one leaves it (and it still scores by
the pipeline's name), rollback restores the previous one; refusals are clear."""

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.flows.helpers import ROOT, run
from trainflow import champion
from trainflow.cli import main
from trainflow.predictor import load_model
from trainflow.spec.pipeline import load_spec
from trainflow.spec.promote import PromoteSpec
from trainflow.testrows import raw_test_rows

NAME = "breast_cancer_mlp"
SMALL = ("evaluate.cv=null", "ensemble=null", "compress.quantize=null", "compress.prune=null")
BAD = ("train.epochs=1", "train.lr=0.5")  # one epoch at a step size that overshoots
GOOD = ("train.epochs=20",)


@pytest.fixture
def pipelines(tmp_path, monkeypatch) -> Path:
    """A pipelines folder whose breast_cancer_mlp.yaml names the test's store, as a team's
    would: `trainflow predict PIPELINE` and `trainflow models` find the champion there."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    raw = yaml.safe_load((ROOT / "pipelines" / f"{NAME}.yaml").read_text())
    raw["outputs"] = {"store": str(tmp_path / "store")}
    (folder / f"{NAME}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(folder))
    return folder


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("prefect_engine")
def test_retraining_must_beat_the_champion(tmp_path, pipelines, capsys):
    store = tmp_path / "store"
    first, states = run(NAME, tmp_path, *SMALL, *BAD)
    assert states["promote"] == ["Completed"]
    assert first["champion"]["decision"] == "promoted"
    assert "no champion yet" in first["champion"]["reason"]
    assert champion.champion_package(NAME) == Path(first["package"])

    better, _ = run(NAME, tmp_path, *SMALL, *GOOD)
    decision = better["champion"]
    assert decision["decision"] == "promoted", decision["reason"]
    mine, theirs = decision["challenger"]["metrics"], decision["champion_before"]["metrics"]
    assert mine["f1_macro"] > theirs["f1_macro"]
    # the challenger scored on the raw test rows is exactly the evaluate task's figure
    assert mine["f1_macro"] == better["test"]["f1_macro"]
    assert decision["champion_before"]["package"] == first["package"]
    assert champion.champion_package(NAME) == Path(better["package"])

    # the first spec again: the same (worse) package meets the better champion: kept, and
    # the promote task ran again although every other model task came from the cache
    worse, states = run(NAME, tmp_path, *SMALL, *BAD)
    assert states["train"] == ["Cached"] and states["promote"] == ["Completed"]
    assert worse["package"] == first["package"]
    kept = worse["champion"]
    assert kept["decision"] == "kept" and not kept["promoted"]
    assert (
        kept["challenger"]["metrics"]["f1_macro"] < kept["champion_before"]["metrics"]["f1_macro"]
    )
    assert "must be more than min_delta 0 higher" in kept["reason"]
    assert champion.champion_package(NAME) == Path(better["package"])

    # the run's report: the package, its input, the command, and the decision side by side
    report = (Path(worse["run_dir"]) / "report.md").read_text()
    model = report[report.index("## Model\n") :]
    assert f"trainflow predict {worse['package']} DATA --output preds.csv" in model
    assert f"trainflow predict {NAME} DATA --output preds.csv" in model
    assert "| mean radius | Float64 |" in model
    assert "decision: **kept**" in model and kept["reason"] in model
    assert "| metric | this run (challenger) | champion before this run |" in model
    f1_row = next(line for line in model.splitlines() if line.startswith("| **f1_macro**"))
    assert f1_row == (
        f"| **f1_macro** | {kept['challenger']['metrics']['f1_macro']:.4f} | "
        f"{kept['champion_before']['metrics']['f1_macro']:.4f} |"
    )
    assert f"champion now: `{better['package']}`" in model
    metrics = json.loads((Path(worse["run_dir"]) / "metrics.json").read_text())
    assert metrics["champion"]["decision"] == "kept"

    # the champion still scores new rows by the pipeline's name
    data, spec = worse["data"], load_spec(ROOT / "pipelines" / f"{NAME}.yaml")
    spec_rows = raw_test_rows(
        data["ingested"], data["steps"], spec.data.pre_split, data["raw_splits"], spec.seed
    )
    spec_rows.drop("target").write_csv(tmp_path / "new.csv")
    code, out, err = cli(
        capsys, "predict", NAME, str(tmp_path / "new.csv"), "--output", str(tmp_path / "preds.csv")
    )
    assert code == 0, err
    predicted = pl.read_csv(tmp_path / "preds.csv")["prediction"].to_list()
    assert predicted == load_model(better["package"]).predict(spec_rows).tolist()

    # history, newest last, the current champion marked
    code, out, _ = cli(capsys, "models", "list", NAME)
    lines = [line for line in out.splitlines() if line[:1] in ("*", " ") and "  " in line]
    assert [line[2:].split()[1] for line in lines] == ["promoted", "promoted", "kept"]
    assert lines[1].startswith("*") and not lines[0].startswith("*")
    pointer = champion.read_pointer(store, NAME)
    assert all(e.run and e.when.endswith("+00:00") for e in pointer.history)  # run, UTC
    assert pointer.history[2].champion_metrics == kept["champion_before"]["metrics"]

    # rollback: the first champion again; then nothing earlier is left
    code, out, err = cli(capsys, "models", "rollback", NAME)
    assert code == 0, err
    assert champion.champion_package(NAME) == Path(first["package"])
    code, _, err = cli(capsys, "models", "rollback", NAME)
    assert code == 2 and f"pipeline {NAME!r} has no previous champion to roll back to" in err
    assert champion.champion_package(NAME) == Path(first["package"])

    # by hand: the better package back; a package is refused for another pipeline
    code, _, err = cli(capsys, "models", "promote", NAME, better["package"])
    assert code == 0, err
    assert champion.champion_package(NAME) == Path(better["package"])
    code, _, err = cli(
        capsys, "models", "promote", "digits_cnn", better["package"], "--store", str(store)
    )
    assert code == 2
    assert f"is a package of pipeline {NAME!r}, not of 'digits_cnn'" in err
    assert champion.read_pointer(store, "digits_cnn") is None
    assert [e.decision for e in champion.read_pointer(store, NAME).history][-2:] == [
        "rolled back",
        "promoted by hand",
    ]


def test_predict_on_a_pipeline_without_a_champion_is_refused(tmp_path, pipelines, capsys):
    (tmp_path / "rows.csv").write_text("a\n1\n")
    code, out, err = cli(capsys, "predict", NAME, str(tmp_path / "rows.csv"))
    assert code == 2 and out == ""
    assert f"pipeline {NAME!r} has no champion yet" in err
    assert f"trainflow run pipelines/{NAME}.yaml" in err and "models promote" in err
    assert str(tmp_path / "store") in err  # the store it looked in: the spec's outputs.store


@pytest.mark.parametrize(
    "metric, new, old, promoted",
    [
        ("f1_macro", 0.91, 0.90, True),
        ("f1_macro", 0.90, 0.90, False),
        ("f1_macro", 0.85, 0.90, False),
        ("log_loss", 0.20, 0.30, True),
        ("log_loss", 0.30, 0.20, False),  # lower is better
    ],
)
def test_the_rule_higher_is_better_except_loss(metric, new, old, promoted):
    rule = PromoteSpec(metric=metric)
    assert champion.judge(rule, {metric: new}, {metric: old})[0] is promoted


def test_min_delta_is_a_margin_the_challenger_must_exceed():
    rule = PromoteSpec(min_delta=0.05)
    held, reason = champion.judge(rule, {"f1_macro": 0.93}, {"f1_macro": 0.90})
    assert not held and "higher by 0.0300" in reason and "min_delta 0.05" in reason
    assert champion.judge(rule, {"f1_macro": 0.96}, {"f1_macro": 0.90})[0]
    assert champion.judge(rule, {"f1_macro": 0.0}, None) == (
        True,
        "the first model of this pipeline: there is no champion yet",
    )
