"""Bad data through the real `trainflow` command: each malformed file, ill-suited target or
tampered shard is refused with one message naming the problem, where it is and the fix; exit
code 2, no traceback. Files that are bad before any task are refused by `trainflow run`'s
checks, before a Prefect server starts."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import webdataset as wds
import yaml

from trainflow.shards import MANIFEST, write_split

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
GUARD_S = 300  # a hung command fails the test instead of hanging CI (no timing is asserted)


def write_spec(tmp_path: Path, csv: Path, **source) -> Path:
    spec = {
        "name": "bad_data",
        "seed": 0,
        "data": {
            "source": {"type": "csv", "path": str(csv), "target": "y", **source},
            "steps": [{"type": "split", "validation": 0.2, "test": 0.2}],
        },
        "model": {"type": "mlp", "hidden_layers": 1, "units": [8]},
        "train": {"epochs": 1, "batch_size": 8},
        "outputs": {"store": str(tmp_path / "store"), "runs": str(tmp_path / "runs")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trainflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [TRAINFLOW, *args], capture_output=True, text=True, env=env, timeout=GUARD_S
    )


def refused(result: subprocess.CompletedProcess) -> str:
    """The one error message of a command that refused its input as a user's mistake."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    messages = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(messages) == 1, result.stderr[-3000:]
    return result.stderr


def rows(n: int, start: int = 0) -> list[str]:
    """Numeric feature rows with a two-class label, as a user's CSV holds them."""
    return [f"{(i * 7) % 13 / 10:.1f},{(i * 3) % 11},{'ab'[i % 2]}" for i in range(start, n)]


def write_csv(tmp_path: Path, lines: list[str], name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text("a,b,y\n" + "\n".join(lines) + "\n")
    return path


def run_refused(tmp_path: Path, csv: Path, *extra: str, **source) -> str:
    return refused(trainflow("run", str(write_spec(tmp_path, csv, **source)), *extra))


def test_a_file_without_newlines_fails_fast_naming_the_line(tmp_path):
    csv = tmp_path / "flat.csv"
    with open(csv, "w") as out:  # 50 MB and not a single newline
        for _ in range(50):
            out.write("1," * (2**19))
    err = run_refused(tmp_path, csv)
    assert "line 1 of" in err and "flat.csv" in err and "longer than 8 MiB" in err
    assert "data.source.max_line_bytes" in err
    assert not (tmp_path / "store").exists()  # refused before any task


def test_a_latin1_file_names_the_line_and_column_and_reads_with_its_encoding(tmp_path):
    csv = tmp_path / "latin1.csv"
    lines = rows(20)
    lines[4] = "0.5,3,caf\xe9"  # line 6: the header is line 1
    csv.write_bytes(("a,b,y\n" + "\n".join(lines) + "\n").encode("latin-1"))
    err = run_refused(tmp_path, csv)
    assert "line 6, column 'y' of" in err and "is not UTF-8" in err
    assert "data.source.encoding" in err

    done = trainflow(
        "task",
        "ingest",
        "--spec",
        str(write_spec(tmp_path, csv)),
        "--set",
        "data.source.encoding=latin-1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pl.read_parquet(Path(json.loads(done.stdout)["uri"]) / "all.parquet")
    assert "café" in table["y"].to_list()


@pytest.mark.parametrize("bad,fields", [("0.1,2,a,9", 4), ("0.1,2", 2)])
def test_a_ragged_line_is_named_with_its_field_count(tmp_path, bad, fields):
    lines = rows(30)
    lines[6] = bad  # line 8
    err = run_refused(tmp_path, write_csv(tmp_path, lines))
    assert "line 8 of" in err and f"has {fields} fields, the header (line 1) has 3" in err


def test_text_in_a_numeric_column_within_the_inferred_rows(tmp_path):
    lines = rows(40)
    lines[10] = "hello,2,a"  # line 12
    err = run_refused(tmp_path, write_csv(tmp_path, lines))
    assert "column 'a' of" in err and "line 12 holds 'hello'" in err
    assert "data.source.columns: {a: str, b: int64, y: str}" in err  # the one to paste


def test_text_in_a_numeric_column_past_the_inferred_rows(tmp_path):
    lines = rows(10_050)
    lines[10_020] = "0.5,oops,b"  # line 10022, past the 10000 rows polars infers types from
    err = run_refused(tmp_path, write_csv(tmp_path, lines))
    assert "column 'b' of" in err and "first 10000 rows" in err
    assert "line 10022 holds 'oops' (the only such value)" in err
    assert "data.source.columns: {a: float64, b: str, y: str}" in err


def test_a_class_with_one_row_is_refused_before_any_task(tmp_path):
    err = run_refused(tmp_path, write_csv(tmp_path, rows(40) + ["0.3,1,rare"]))
    assert "{'rare': 1}" in err and "fewer than 3 rows" in err and "strategy: random" in err
    assert not (tmp_path / "store").exists()


def test_a_float_target_is_refused_as_a_regression_target_in_a_short_message(tmp_path):
    # (under task: auto it is one: tests/tasks/test_regression.py)
    lines = [f"{i % 7},{i % 5},{i * 0.173:.3f}" for i in range(500)]
    err = run_refused(tmp_path, write_csv(tmp_path, lines), "--set", "task=classification")
    assert "looks like a regression target" in err and "500 distinct decimal numbers" in err
    assert "set task: regression" in err
    assert len(err) < 800  # a few values and the count, not every value as a class
    assert not (tmp_path / "store").exists()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_an_object_array_in_a_streamed_shard_names_the_shard_and_member(tmp_path):
    """A shard whose manifest matches it but whose record holds an object array (which only
    pickle could load), streamed through a loader worker process."""
    folder = tmp_path / "shards"
    folder.mkdir()
    x, y = np.zeros((16, 2), np.float32), np.arange(16) % 2
    splits = {name: write_split(folder, name, x, y, ["a", "b"], 100, 8) for name in ("val", "test")}
    shard = folder / "train-000000.tar"
    with open(shard, "wb") as stream:
        sink = wds.TarWriter(stream, encoder=False)
        sink.write(
            {
                "__key__": "train00000000",
                "y.npy": _npy(y),
                "x.npy": _npy(np.array([{"evil": i} for i in range(16)]), True),
            }
        )
        sink.close()
    splits["train"] = {
        "samples": 16,
        "weighted": False,
        "classes": {"a": 8, "b": 8},
        "shards": [
            {
                "name": shard.name,
                "samples": 16,
                "sha256": hashlib.sha256(shard.read_bytes()).hexdigest(),
            }
        ],
    }
    (folder / MANIFEST).write_text(
        json.dumps({"classes": ["a", "b"], "input_shape": [2], "splits": splits})
    )
    ref = tmp_path / "shards.json"
    ref.write_text(
        json.dumps(
            {
                "uri": str(folder),
                "fingerprint": "0" * 64,
                "kind": "shards",
                "count": 48,
                "data_schema": {"classes": ["a", "b"], "input_shape": [2]},
            }
        )
    )
    spec = write_spec(tmp_path, write_csv(tmp_path, rows(40)))
    err = refused(
        trainflow(
            "task",
            "train",
            "--spec",
            str(spec),
            "--input",
            str(ref),
            "--set",
            "train.loader={mode: stream, workers: 1}",
        )
    )
    assert "train-000000.tar" in err and "member x.npy" in err and "not a trainflow record" in err


def test_rows_without_a_label_and_no_clean_step_are_refused_before_any_task(tmp_path):
    lines = rows(40)
    lines[7] = "0.3,1,"  # data row 8 has no label; the spec splits at random, without `clean`
    spec = write_spec(tmp_path, write_csv(tmp_path, lines))
    err = refused(trainflow("run", str(spec), "--set", "data.steps.0.strategy=random"))
    assert "1 row(s) without a label (the first is data row 8)" in err and "`clean`" in err
    assert not (tmp_path / "store").exists()
