"""A passed preflight is remembered (issue 15 part 8): a rerun of the same spec on the same data
skips the checks (they load the data and build the model: scikit-learn and torch), and any
change to the data is checked again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainflow import preflight
from trainflow.errors import DataError
from trainflow.spec.pipeline import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"


def csv_spec(tmp_path: Path, rows: str):
    data = tmp_path / "rows.csv"
    data.write_text("x,label\n" + rows)
    source = f"data.source={{type: csv, path: {data}, target: label}}"
    return data, load_spec(SPEC, [source, f"outputs.store={tmp_path / 'store'}"])


def two_classes(n: int = 80) -> str:
    return "".join(f"{i},{'ab'[i % 2]}\n" for i in range(n))


def test_a_changed_data_file_is_checked_again(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "VERDICTS", tmp_path / "verdicts")
    data, spec = csv_spec(tmp_path, two_classes())
    preflight.check_data(spec)
    assert len(list((tmp_path / "verdicts").glob("*.json"))) == 1
    data.write_text("x,label\n" + "".join(f"{i},a\n" for i in range(80)))  # one class now
    with pytest.raises(DataError, match="single class"):
        preflight.check_data(spec)


def test_a_failed_check_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "VERDICTS", tmp_path / "verdicts")
    _, spec = csv_spec(tmp_path, "".join(f"{i},a\n" for i in range(80)))
    for _ in range(2):
        with pytest.raises(DataError, match="single class"):
            preflight.check_data(spec)
    assert not list((tmp_path / "verdicts").glob("*.json"))


CHECK = """
import json, sys
from trainflow.preflight import check_data
from trainflow.spec.pipeline import load_spec
check_data(load_spec(sys.argv[1], sys.argv[2:]))
print(json.dumps({m: m in sys.modules for m in ("torch", "sklearn")}))
"""


def test_a_rerun_passes_without_loading_torch_or_scikit_learn(tmp_path):
    env = {**os.environ, "TRAINFLOW_PREFLIGHT_CACHE": str(tmp_path / "verdicts")}
    argv = [sys.executable, "-c", CHECK, str(SPEC), f"outputs.store={tmp_path / 'store'}"]
    runs = [subprocess.run(argv, env=env, capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    first, second = (json.loads(r.stdout.splitlines()[-1]) for r in runs)
    assert first == {"torch": True, "sklearn": True}  # the checks ran: they need both
    assert second == {"torch": False, "sklearn": False}
