"""The issue's public CSV in miniature, through `trainflow run`: numeric columns that write
missing values as `NA` train as numbers (imputed by `clean`), not as one-hot encoded text, and
`trainflow predict` scores the same raw file, its `NA`s read as training read them."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.usefixtures("prefect_engine")


def na_csv(path: Path, n: int = 240) -> Path:
    """Four numeric columns, each with `NA` in about one row in eight; the class is whether
    the first two add up to more than zero."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).round(3)
    label = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    lines = ["glucose,insulin,bmi,age,y"]
    for i in range(n):
        cells = ["NA" if (i + c) % 8 == 0 else str(v) for c, v in enumerate(x[i])]
        lines.append(",".join([*cells, label[i]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_writing_missing_values_as_na_trains_on_numeric_columns(tmp_path, capsys):
    from trainflow.cli import main

    spec = {
        "name": "na_tokens",
        "seed": 0,
        "data": {
            "source": {"type": "csv", "path": str(na_csv(tmp_path / "na.csv")), "target": "y"},
            "steps": [
                {"type": "split", "validation": 0.2, "test": 0.2},
                {"type": "clean", "missing": "median"},
                {"type": "normalize", "method": "standard"},
            ],
        },
        "model": {"type": "mlp", "hidden_layers": 1, "units": [16]},
        "train": {"epochs": 20, "batch_size": 32, "lr": 0.01},
        "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    info = json.loads((Path(printed["package"]) / "package.json").read_text())
    columns = info["input"]["columns"]
    assert {c: columns[c] for c in ("glucose", "insulin", "bmi", "age")} == dict.fromkeys(
        ("glucose", "insulin", "bmi", "age"), "Float64"
    )
    assert info["input"]["categories"] == {}  # nothing one-hot encoded
    assert printed["test"]["accuracy"] >= 0.85

    scored = tmp_path / "scored.csv"
    assert (
        main(["predict", printed["package"], str(tmp_path / "na.csv"), "--output", str(scored)])
        == 0
    )
    predictions = pl.read_csv(scored)
    assert len(predictions) == 240 and set(predictions["prediction"]) <= {"neg", "pos"}
