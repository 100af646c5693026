"""Model packages: what they hold, how loading verifies them, and how rows to score are
checked (each bad input one clear error, through the Python API and the real CLI)."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
import torch

import trainflow
from trainflow import registry
from trainflow.errors import ArtifactError, DataError
from trainflow.package import FORMAT, MANIFEST, load_package
from trainflow.spec.pipeline import validate_spec
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.ingest import ingest
from trainflow.tasks.package import AT_PREDICTION, TRAINING_ONLY, package_model
from trainflow.tasks.shard import shard
from trainflow.tasks.train import train_model

HOMES = ["rent", "owner", "parents"]


def credit_like(path: Path, rows: int = 160, seed: int = 0) -> Path:
    """A small CSV with an id column, missing numbers and text categories."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    income = rng.normal(100, 30, rows).round(1)
    home = rng.choice(HOMES, rows)
    status = np.where((income > 100) | (home == "owner"), "good", "bad")
    df = pl.DataFrame(
        {
            "id": [f"c{i:04d}" for i in range(rows)],
            "age": age,
            "income": income,
            "home": home,
            "status": status,
        }
    )
    df = df.with_columns(
        pl.when(pl.int_range(rows) % 9 == 1).then(None).otherwise(pl.col("income")).alias("income"),
        pl.when(pl.int_range(rows) % 11 == 2).then(None).otherwise(pl.col("home")).alias("home"),
    )
    df.write_csv(path)
    return path


def spec_of(tmp: Path, source: dict, steps: list[dict], model: dict):
    return validate_spec(
        {
            "name": "tiny",
            "data": {"source": source, "steps": steps},
            "model": model,
            "train": {"epochs": 1, "batch_size": 16},
            "outputs": {"store": str(tmp / "store"), "runs": str(tmp / "runs")},
        }
    )


def build(spec) -> Path | None:
    """The data steps, training, evaluation and packaging of `spec`, each task called bare
    (the same calls the pipeline flow makes, in its order)."""
    store = str(Path(spec.outputs.store).resolve())
    table = ingested = ingest.fn(spec.data.source, store)
    steps = []
    for params in spec.data.pre_split:
        table = registry.STEPS[params.type].impl.fn(table, params, spec.seed, store)
        steps.append(table)
    splits = registry.STEPS["split"].impl.fn(table, spec.data.split, spec.seed, store)
    for params in spec.data.post_split:
        splits = registry.STEPS[params.type].impl.fn(splits, params, spec.seed, store)
        steps.append(splits)
    shards = shard.fn(splits, spec.data.shard, store, spec.seed)
    model = train_model.fn(shards, spec.model, spec.train, spec.seed, store)
    test = evaluate_model.fn(model, shards, store)
    package = package_model.fn("model", [model], test, spec, ingested, steps, store)
    return package and package.path


def tabular_spec(tmp: Path, unknown: str, *more: dict):
    return spec_of(
        tmp,
        {
            "type": "csv",
            "path": str(credit_like(tmp / "credit.csv")),
            "target": "status",
            "keep_columns": ["id"],
        },
        [
            {"type": "clean", "missing": "keep"},
            {"type": "split"},
            {"type": "clean", "missing": "median"},
            {"type": "encode", "unknown": unknown},
            {"type": "normalize"},
            *more,
            {"type": "resample", "method": "random_over"},
        ],
        {"type": "mlp", "hidden_layers": 1, "units": [8]},
    )


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Path:
    return build(tabular_spec(tmp_path_factory.mktemp("tabular"), "error"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 200)):
        (tmp / "train" / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(level, 20, (6, 6)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp / "train" / label / f"{i}.png"), pixels)
    return build(
        spec_of(
            tmp,
            {"type": "image_folder", "path": str(tmp / "train")},
            [{"type": "split", "validation": 0.25, "test": 0.25}, {"type": "normalize"}],
            {"type": "cnn", "channels": [4], "hidden": 8},
        )
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    """The `trainflow` command in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "trainflow.cli", *args], capture_output=True, text=True, timeout=120
    )


def cli_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The `trainflow` command's main in this process (what the console script calls),
    answered like `cli`: a process start costs seconds on a busy machine."""
    from trainflow.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """The CLI's answer to a user's mistake: exit 2, one `error:` line, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def rows_to_score(n: int = 5) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"n{i}" for i in range(n)],
            "age": [30 + i for i in range(n)],
            "income": [50.0, None, 150.0, 120.0, 80.0][:n],
            "home": ["rent", "owner", None, "parents", "rent"][:n],
        }
    )


def test_every_data_step_has_a_prediction_mode_or_is_training_only():
    assert set(registry.STEPS) == set(AT_PREDICTION) | set(TRAINING_ONLY)
    assert not set(AT_PREDICTION) & set(TRAINING_ONLY)


def test_package_holds_schema_steps_labels_spec_metrics_and_a_manifest(tabular):
    package = load_package(tabular)
    info = package.info
    assert info.format == FORMAT and info.kind == "model" and info.pipeline == "tiny"
    assert info.classes == ["bad", "good"]
    assert info.input.columns == {"age": "Int64", "income": "Float64", "home": "String"}
    assert info.input.keep_columns == ["id"]
    assert info.input.categories == {"home": sorted(HOMES)}
    assert info.input.unknown == {"home": "error"}
    # the fill values, category map and scaling statistics, in the order rows meet them
    assert [s.type for s in info.steps] == ["clean"]
    assert [s.type for s in info.members[0].steps] == ["clean", "encode", "normalize"]
    assert set(info.members[0].steps[0].state["fill"]) == {"age", "income", "home"}
    assert info.training_only == ["split", "resample"]
    assert validate_spec(package.spec).fingerprint() == info.spec_fingerprint
    assert {"accuracy", "f1_macro", "confusion_matrix"} <= set(info.metrics)
    assert {"torch", "polars", "trainflow"} <= set(info.libraries)
    manifest = json.loads((tabular / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "package.json",
        "spec.json",
        "members/0/model.json",
        "members/0/best.pt",
    }
    weights = torch.load(tabular / "members/0/best.pt", weights_only=True)
    assert set(weights) >= {"model"}


def test_every_row_gets_a_prediction_in_order_with_its_id(tabular):
    model = trainflow.load_model(tabular)
    rows = pl.concat([rows_to_score(), rows_to_score().head(1)])  # a duplicate row too
    scored = model.score(rows, proba=True)
    assert scored.columns == ["id", "prediction", "proba_bad", "proba_good"]
    assert scored["id"].to_list() == rows["id"].to_list()
    probs = model.predict_proba(rows)
    assert probs.shape == (6, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert model.predict(rows).tolist() == scored["prediction"].to_list()
    assert np.array_equal(probs[0], probs[5])  # the same row, the same answer
    assert np.allclose(scored.select("proba_bad", "proba_good").to_numpy(), probs)
    assert model.classes == ["bad", "good"] and "columns" in model.input_schema
    assert model.predict_proba(rows.head(0)).shape == (0, 2)


def test_a_pandas_frame_scores_like_a_polars_one(tabular):
    pandas = pytest.importorskip("pandas")
    model = trainflow.load_model(tabular)
    rows = rows_to_score()
    frame = pandas.DataFrame(rows.to_dict(as_series=False))  # income: float with NaN
    assert np.array_equal(model.predict_proba(frame), model.predict_proba(rows))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda df: df.drop("income"), ["missing column(s) ['income']", "add them"]),
        (
            lambda df: df.with_columns(pl.col("age").cast(pl.String).replace("32", "thirty-two")),
            ["column 'age'", "Int64", "'thirty-two'", "row 3"],
        ),
        (
            lambda df: df.with_columns(pl.col("age").cast(pl.Float64) + 0.5),
            ["column 'age'", "do not convert to Int64"],
        ),
        (
            lambda df: df.with_columns(pl.col("home").replace("parents", "castle")),
            ["column 'home'", "['castle']", "row 4", "unknown: error", "owner, parents, rent"],
        ),
    ],
)
def test_bad_rows_are_refused_naming_the_column_before_any_is_scored(tabular, change, words):
    model = trainflow.load_model(tabular)
    with pytest.raises(DataError) as caught:
        model.predict(change(rows_to_score()))
    for word in words:
        assert word in str(caught.value)


def test_an_unseen_category_under_unknown_ignore_is_scored(tmp_path):
    package = build(tabular_spec(tmp_path, "ignore"))
    model = trainflow.load_model(package)
    rows = rows_to_score().with_columns(pl.col("home").replace("parents", "castle"))
    assert len(model.predict(rows)) == 5
    other = rows.with_columns(pl.col("home").replace("castle", "palace"))
    # an unseen category encodes as unknown (no one-hot column set), whichever it is
    assert np.array_equal(model.predict_proba(rows), model.predict_proba(other))


@pytest.mark.slow
def test_a_fitted_scikit_learn_detector_is_refused_in_a_package_with_a_warning(tmp_path, caplog):
    flag = {"type": "anomalies", "method": "isolation_forest", "action": "flag"}
    with caplog.at_level("WARNING", logger="trainflow"):
        assert build(tabular_spec(tmp_path, "ignore", flag)) is None
    assert not (tmp_path / "store" / "package").exists()
    assert "no model package" in caplog.text and "data.steps.5" in caplog.text
    assert "isolation_forest" in caplog.text and "use method zscore or iqr" in caplog.text


def test_zscore_anomaly_flags_and_dropped_outliers_are_packaged(tmp_path):
    steps = (
        {"type": "anomalies", "method": "zscore", "action": "flag"},
        {"type": "outliers", "action": "drop"},
    )
    model = trainflow.load_model(build(tabular_spec(tmp_path, "ignore", *steps)))
    flagged = model.info.members[0].steps[-1]
    assert flagged.type == "anomalies" and set(flagged.state) == {"bounds"}  # no rows in it
    assert model.info.training_only == ["split", "outliers", "resample"]
    extreme = rows_to_score().with_columns(pl.lit(10_000.0).alias("income"))
    assert len(model.predict(extreme)) == 5  # outliers are scored, not dropped


def test_rows_stream_through_in_batches_numbered_on(images):
    model = trainflow.load_model(images)
    model.batch_rows = 2
    pixels = [[100.0] * 36 for _ in range(5)]
    whole = model.predict_proba(pl.DataFrame({"image": pixels}))
    assert whole.shape == (5, 2) and np.allclose(whole, whole[0])
    pixels[3][7] = float("nan")  # in the second batch
    with pytest.raises(DataError, match=r"row 4 .*missing or non-finite values in image pixels"):
        model.predict(pl.DataFrame({"image": pixels}))


def test_an_image_of_the_wrong_shape_is_refused_naming_it(images, tmp_path, capsys):
    model = trainflow.load_model(images)
    assert model.input_schema["image_shape"] == [1, 6, 6]
    folder = tmp_path / "new"
    folder.mkdir()
    for name, size in (("a.png", 6), ("b.png", 8)):
        cv2.imwrite(str(folder / name), np.full((size, size), 100, np.uint8))
    output = tmp_path / "out.csv"
    one_error(
        cli_here(capsys, "predict", str(images), str(folder), "--output", str(output)),
        "b.png",
        "[1, 8, 8]",
        "[1, 6, 6]",
        "resize it to 6x6",
    )
    assert not output.exists()  # nothing written
    (folder / "b.png").unlink()
    done = cli_here(capsys, "predict", str(images), str(folder), "--output", str(output), "--proba")
    assert done.returncode == 0, done.stderr
    scored = pl.read_csv(output)
    assert scored.columns == ["path", "prediction", "proba_dark", "proba_light"]
    assert scored["path"].to_list() == ["a.png"]
    with pytest.raises(DataError, match=r"row 2: the image holds 64 pixel values.*\[1, 6, 6\]"):
        model.predict(pl.DataFrame({"image": [[0.0] * 36, [0.0] * 64]}))


def tampered_copy(package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(package), str(copy)], check=True)
    return copy


@pytest.mark.slow
def test_a_tampered_file_is_refused_naming_it(tabular, tmp_path):
    copy = tampered_copy(tabular, tmp_path)
    weights = copy / "members/0/best.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"members/0/best.pt was altered.*sha256"):
        trainflow.load_model(copy)
    # a process of its own: exit 2, one line, no traceback
    one_error(cli("predict", str(copy), str(tmp_path / "x.csv")), "best.pt", "sha256")


def test_weights_that_need_unpickling_are_refused_even_with_a_matching_manifest(tabular, tmp_path):
    copy = tampered_copy(tabular, tmp_path)
    weights = copy / "members/0/best.pt"
    torch.save({"model": {}, "payload": Path("anything")}, weights)  # an object, not tensors
    manifest = json.loads((copy / MANIFEST).read_text())
    from trainflow.artifacts import sha256_file

    manifest["files"]["members/0/best.pt"] = sha256_file(weights)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="weights_only"):
        trainflow.load_model(copy)


def test_a_folder_that_is_not_a_package_is_refused(tabular, tmp_path, capsys):
    model_folder = tabular.parents[1] / "model"  # the store's model artifacts: no manifest
    some_model = next(model_folder.iterdir())
    with pytest.raises(ArtifactError, match=r"is not a trainflow model package.*manifest"):
        trainflow.load_model(some_model)
    with pytest.raises(ArtifactError, match="is a file, not a trainflow model package"):
        trainflow.load_model(some_model / "best.pt")
    one_error(
        cli_here(capsys, "predict", str(some_model), str(tmp_path / "x.csv")),
        "not a trainflow model package",
    )


@pytest.mark.parametrize("file", [MANIFEST, "package.json"])
def test_a_package_of_a_newer_format_is_refused_naming_the_file(tabular, tmp_path, file):
    copy = tampered_copy(tabular, tmp_path)
    raw = json.loads((copy / file).read_text())
    raw["trainflow_package" if file == MANIFEST else "format"] = FORMAT + 1
    (copy / file).write_text(json.dumps(raw))
    if file != MANIFEST:  # a consistent package of a newer trainflow: its manifest matches
        from trainflow.artifacts import sha256_file

        manifest = json.loads((copy / MANIFEST).read_text())
        manifest["files"][file] = sha256_file(copy / file)
        (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError,
        match=rf"{file}: the package has format {FORMAT + 1}, "
        r"newer than this trainflow reads.*upgrade",
    ):
        trainflow.load_model(copy)


@pytest.mark.slow
def test_cli_scores_a_csv_file_in_order_and_names_bad_input(tabular, tmp_path, capsys):
    data = tmp_path / "new.csv"
    rows_to_score().write_csv(data)
    output = tmp_path / "scored.parquet"
    done = cli_here(capsys, "predict", str(tabular), str(data), "--output", str(output), "--proba")
    assert done.returncode == 0, done.stderr
    assert "5 prediction(s) written" in done.stdout
    scored = pl.read_parquet(output)
    expected = trainflow.load_model(tabular).score(rows_to_score(), proba=True)
    assert scored.equals(expected)
    printed = cli("predict", str(tabular), str(data))  # no --output: CSV on stdout
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[0] == "id,prediction"
    assert len(printed.stdout.splitlines()) == 6
    one_error(
        cli_here(capsys, "predict", str(tabular), str(data), "--output", str(tmp_path / "o.txt")),
        "--output",
        ".csv or .parquet",
    )
    rows_to_score().drop("income").write_csv(data)
    one_error(
        cli_here(capsys, "predict", str(tabular), str(data), "--output", str(tmp_path / "o.csv")),
        str(data),
        "missing column(s) ['income']",
    )
    assert not (tmp_path / "o.csv").exists()
