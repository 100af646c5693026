"""`trainflow validate` refuses what `run` would refuse before any work (issue 19 part 5):
it runs the same preflight, and `--schema-only` checks the spec file alone."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from trainflow.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = """name: checked
data:
  source: {{type: csv, path: {path}, target: {target}}}
  steps:
    - {{type: split}}
{steps}model: {{type: mlp}}
train: {{epochs: 1}}
outputs: {{store: {store}, runs: {runs}}}
"""


@pytest.fixture
def table(tmp_path) -> Path:
    rng = random.Random(0)
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["a", "b", "color", "y"])
        for _ in range(120):
            out.writerow(
                [rng.random(), rng.random(), rng.choice(["red", "blue"]), rng.choice("pq")]
            )
    return path


def spec(tmp_path: Path, path: Path, target: str = "y", steps: str = "") -> Path:
    text = SPEC.format(
        path=path, target=target, steps=steps, store=tmp_path / "store", runs=tmp_path / "runs"
    )
    out = tmp_path / "spec.yaml"
    out.write_text(text)
    return out


ENCODED = "    - {type: encode}\n    - {type: normalize}\n"


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing file", "data.source.path: file not found"),
        ("wrong target", "column 'yy' not in"),
        ("text without encode", "'color' hold text and data.steps.1 (normalize) needs numbers"),
        ("text reaching the model", "'color' hold text and the model needs numbers"),
    ],
)
def test_validate_refuses_what_run_would(tmp_path, table, capsys, case, words):
    path, target, steps = table, "y", ENCODED
    if case == "missing file":
        path = tmp_path / "missing.csv"
    if case == "wrong target":
        target = "yy"
    if case == "text without encode":
        steps = "    - {type: normalize}\n"
    if case == "text reaching the model":
        steps = ""
    checked = spec(tmp_path, path, target, steps)
    assert main(["validate", str(checked)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert main(["validate", "--schema-only", str(checked)]) == 0  # the file alone is valid
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()


def test_validate_passes_a_spec_whose_data_works(tmp_path, table, capsys):
    assert main(["validate", str(spec(tmp_path, table, steps=ENCODED))]) == 0
    assert "valid pipeline spec 'checked' (and its data)" in capsys.readouterr().out


def test_validate_refuses_tbptt_on_a_bidirectional_model(capsys):
    shipped = str(ROOT / "pipelines" / "sequences_gru.yaml")
    assert main(["validate", shipped, "--set", "model.bidirectional=true"]) == 2
    assert "bidirectional" in capsys.readouterr().err
