"""The command line: bad data is refused before any task runs; single steps run alone."""

import json
from pathlib import Path

import polars as pl
import yaml

from tests.conftest import ROOT
from trainflow.cli import main


def write_spec(tmp_path: Path, source: dict, folds: int | None = 2) -> Path:
    spec = {
        "name": "bad",
        "data": {"source": source, "steps": [{"type": "split"}]},
        "model": {"type": "mlp"},
        "train": {"epochs": 1},
        "evaluate": {"cv": {"folds": folds}} if folds else {},
        "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return str(path)


def test_missing_data_file_is_refused_before_any_task(tmp_path, capsys):
    spec = write_spec(tmp_path, {"type": "csv", "path": str(tmp_path / "gone.csv"), "target": "y"})
    err = run_error(capsys, ["run", str(spec)])
    assert "data.source.path: file not found" in err and "gone.csv" in err
    assert not (tmp_path / "store").exists()


def test_missing_target_column(tmp_path, capsys):
    source = {"type": "csv", "path": csv(tmp_path, "a,b\n1,2\n"), "target": "label"}
    err = run_error(capsys, ["run", str(write_spec(tmp_path, source))])
    assert "column 'label' not in" in err and "['a', 'b']" in err


def test_single_class_target(tmp_path, capsys):
    rows = "".join(f"{i},yes\n" for i in range(30))
    source = {"type": "csv", "path": csv(tmp_path, "a,label\n" + rows), "target": "label"}
    err = run_error(capsys, ["run", str(write_spec(tmp_path, source))])
    assert "single class ['yes']" in err


def test_fewer_samples_in_a_class_than_folds(tmp_path, capsys):
    rows = "".join(f"{i},{'rare' if i < 4 else 'common'}\n" for i in range(40))
    source = {"type": "csv", "path": csv(tmp_path, "a,label\n" + rows), "target": "label"}
    err = run_error(capsys, ["run", str(write_spec(tmp_path, source, folds=5))])
    assert "evaluate.cv.folds is 5" in err and "'rare': 4" in err


def test_corrupt_parquet(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 garbage")
    spec = write_spec(tmp_path, {"type": "parquet", "path": str(bad), "target": "y"})
    err = run_error(capsys, ["run", str(spec)])
    assert "cannot read parquet file" in err and "bad.parquet" in err


def test_task_command_chains_steps_through_printed_refs(tmp_path, capsys):
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    overrides = ["--set", f"outputs.store={tmp_path / 'store'}"]
    refs = []
    for step in ("ingest", "clean", "split", "normalize", "shard"):
        inputs = ["--input", str(refs[-1])] if refs else []
        assert main(["task", step, "--spec", str(spec), *overrides, *inputs]) == 0
        ref = json.loads(capsys.readouterr().out)
        assert ref["uri"].startswith(str(tmp_path / "store"))
        refs.append(tmp_path / f"{step}.json")
        refs[-1].write_text(json.dumps(ref))
    assert ref["kind"] == "shards" and ref["meta"]["samples"]["test"] == 114


def test_task_command_rejects_a_wrong_input(tmp_path, capsys):
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    err = run_error(capsys, ["task", "clean", "--spec", str(spec), "--input", '{"uri": 1}'])
    assert "is not an artifact ref" in err
    err = run_error(capsys, ["task", "evaluate", "--spec", str(spec)])
    assert "takes 2 --input ref(s), got 0" in err


def test_task_command_runs_any_registered_step_and_names_unknown_ones(tmp_path, capsys):
    spec = ROOT / "pipelines" / "credit_smote_mlp.yaml"
    store = ["--set", f"outputs.store={tmp_path / 'store'}"]
    assert main(["task", "ingest", "--spec", str(spec), *store]) == 0
    (tmp_path / "table.json").write_text(capsys.readouterr().out)
    assert (
        main(
            ["task", "split", "--spec", str(spec), *store, "--input", str(tmp_path / "table.json")]
        )
        == 0
    )
    (tmp_path / "splits.json").write_text(capsys.readouterr().out)
    assert (
        main(
            [
                "task",
                "encode",
                "--spec",
                str(spec),
                *store,
                "--input",
                str(tmp_path / "splits.json"),
            ]
        )
        == 0
    )
    encoded = json.loads(capsys.readouterr().out)
    assert "Home=owner" in encoded["data_schema"]["features"]
    assert sorted(p.name for p in Path(encoded["uri"]).iterdir()) == [
        "ref.json",
        "state.json",
        "view.json",
    ]
    assert (
        main(
            [
                "task",
                "encode",
                "--spec",
                str(spec),
                *store,
                "--materialize",
                "--input",
                str(tmp_path / "splits.json"),
            ]
        )
        == 0
    )
    written = Path(json.loads(capsys.readouterr().out)["uri"])
    train = pl.read_parquet(written / "train.parquet")
    assert "Home=owner" in train.columns and "Home" not in train.columns
    err = run_error(capsys, ["task", "smote", "--spec", str(spec)])
    assert "unknown step 'smote'" in err and "resample" in err


# ---- orchestration: runner, schedules, server ----------------------------------------------


def test_unknown_runner_type_and_step_options_are_named(capsys):
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    err = run_error(
        capsys,
        [
            "validate",
            str(spec),
            "--set",
            "runner.type=spark",
            "--set",
            "orchestration.steps={trian: {timeout_s: 5}}",
        ],
    )
    assert "runner.type: Input should be 'thread', 'dask' or 'ray' (got 'spark')" in err
    assert "orchestration.steps: unknown step(s) 'trian'" in err
    err = run_error(capsys, ["validate", str(spec), "--set", "runner.address=tcp://h:8786"])
    assert "runner: address is a Dask scheduler address: set type: dask" in err


def test_an_unreachable_dask_scheduler_is_named_before_any_task(tmp_path, capsys):
    spec = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
    err = run_error(
        capsys,
        [
            "run",
            str(spec),
            "--set",
            "runner.type=dask",
            "--set",
            "runner.address=tcp://127.0.0.1:9",
            "--set",
            f"outputs.store={tmp_path / 'store'}",
        ],
    )
    assert "runner.address: no Dask scheduler answers at tcp://127.0.0.1:9" in err
    assert not (tmp_path / "store").exists()


def test_invalid_cron_or_timezone_in_the_deployments_file_is_named(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    config["deployments"][0]["schedules"] = [
        {"cron": "61 3 * * 1", "timezone": "UTC"},
        {"cron": "0 3 * * 1", "timezone": "Mars/Base"},
    ]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("deploy", "serve"):  # named before any server is contacted
        err = run_error(capsys, [command, "--file", str(path)])
        assert (
            'deployments.0 (digits_cnn).schedules.0.cron: Invalid cron string: "61 3 * * 1"' in err
        )
        assert "deployments.0 (digits_cnn).schedules.1.timezone: Invalid timezone" in err


def test_unreachable_server_names_prefect_api_url_and_how_to_start_one(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        err = run_error(capsys, ["serve"])
    assert "cannot reach the Prefect server at PREFECT_API_URL=http://127.0.0.1:9/api" in err
    assert "start one with `trainflow server`" in err
    with temporary_settings(updates={PREFECT_API_URL: None}):
        err = run_error(capsys, ["deploy"])
    assert "PREFECT_API_URL is not set" in err and "trainflow server" in err


def test_notify_data_names_an_unknown_pipeline(capsys, monkeypatch):
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(ROOT / "pipelines"))
    err = run_error(capsys, ["notify-data", "digits_cnm"])
    assert "no pipeline 'digits_cnm'" in err and "digits_cnn" in err


def test_task_command_asks_which_step_when_the_spec_has_several_of_a_type(tmp_path, capsys):
    spec = ROOT / "pipelines" / "credit_smote_mlp.yaml"  # clean at data.steps 0 and 2
    store = ["--set", f"outputs.store={tmp_path / 'store'}"]
    assert main(["task", "ingest", "--spec", str(spec), *store]) == 0
    (tmp_path / "table.json").write_text(capsys.readouterr().out)
    table = ["--input", str(tmp_path / "table.json")]
    err = run_error(capsys, ["task", "clean", "--spec", str(spec), *store, *table])
    assert "has 2 `clean` steps (data.steps 0, 2): say which with --index" in err


def test_serve_outside_the_repository_is_refused_before_the_server(tmp_path, capsys, monkeypatch):
    """Started where no pipelines/ folder is, every run of every deployment would fail."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINFLOW_PIPELINES_DIR", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    err = run_error(capsys, ["serve"])
    assert f"spec files are not in {tmp_path.resolve() / 'pipelines'}: " in err
    assert "digits_cnn" in err and "TRAINFLOW_PIPELINES_DIR" in err
