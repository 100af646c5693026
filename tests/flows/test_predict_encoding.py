"""`trainflow predict` reads a CSV in the encoding its model was trained on
(`data.source.encoding`), as ingest read the training file: a latin-1 file that trained fine
scores, its accented categories the ones the model learned (issue 19, predict's encoding)."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.usefixtures("prefect_engine")

NORTH, SOUTH = ("Zürich", "Genève"), ("Málaga", "São Paulo")


def latin1_csv(path: Path, n: int = 200) -> Path:
    """A city (accented, in latin-1 bytes) that decides the class, and a column of noise."""
    rng = np.random.default_rng(0)
    cities = [*NORTH, *SOUTH]
    lines = ["city,noise,region"]
    for i in range(n):
        city = cities[i % 4]
        lines.append(f"{city},{rng.normal():.3f},{'north' if city in NORTH else 'south'}")
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


def test_predict_reads_a_latin1_file_as_training_did(tmp_path, capsys):
    from trainflow.cli import main

    data = latin1_csv(tmp_path / "cities.csv")
    with pytest.raises(UnicodeDecodeError):
        data.read_text(encoding="utf-8")  # not UTF-8: polars alone cannot read it
    spec = {
        "name": "latin1_cities",
        "seed": 0,
        "data": {
            "source": {"type": "csv", "path": str(data), "target": "region", "encoding": "latin-1"},
            "steps": [
                {"type": "split", "validation": 0.2, "test": 0.2},
                {"type": "encode", "method": "one_hot"},
            ],
        },
        "model": {"type": "mlp", "hidden_layers": 1, "units": [8]},
        "train": {"epochs": 15, "batch_size": 16, "lr": 0.05},
        "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path)]) == 0
    package = json.loads(capsys.readouterr().out)["package"]

    scored = tmp_path / "scored.csv"
    assert main(["predict", package, str(data), "--output", str(scored)]) == 0
    predictions = pl.read_csv(scored)
    assert len(predictions) == 200
    truth = ["north" if i % 4 < 2 else "south" for i in range(200)]
    # the city is read as the categories training learned ("Zürich", not "ZÃ¼rich")
    assert (predictions["prediction"].to_numpy() == np.array(truth)).mean() >= 0.95
