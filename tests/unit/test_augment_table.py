"""The spec checks albumentations transforms against a shipped table of signatures (so that
validating a spec imports neither albumentations nor torch); the values are checked by the
run's preflight, through the library, before any task runs."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from tests.conftest import ROOT
from trainflow.errors import SpecError
from trainflow.preflight import check_data
from trainflow.spec.augment import TABLE, live_signatures
from trainflow.spec.pipeline import load_spec

DIGITS = ROOT / "pipelines" / "digits_cnn.yaml"


def test_the_shipped_table_is_the_installed_librarys_signatures():
    """Regenerate after a version bump: python -c "import json; from importlib import metadata;
    from trainflow.spec.augment import TABLE, live_signatures; TABLE.write_text(json.dumps(
    {'version': metadata.version('albumentations'), 'transforms': live_signatures()},
    indent=1, sort_keys=True) + chr(10))" """
    table = json.loads(TABLE.read_text())
    assert table["version"] == metadata.version("albumentations")
    assert table["transforms"] == live_signatures()
    assert "Erasing" in table["transforms"] and "p" in table["transforms"]["Erasing"]


def test_a_misspelt_keyword_is_named_without_the_library(tmp_path):
    with pytest.raises(
        SpecError,
        match=r"Erasing has no parameter\(s\) \['scal'\]; did you mean "
        "`scale`",
    ):
        load_spec(DIGITS, ["train.augment.transforms.0={name: Erasing, params: {scal: 0.2}}"])


def test_a_value_the_library_refuses_stops_the_run_in_preflight():
    spec = load_spec(DIGITS, ["train.augment.transforms.0={name: Erasing, params: {p: 2.0}}"])
    with pytest.raises(SpecError) as caught:
        check_data(spec)
    [(path, message)] = caught.value.problems
    assert path == "train.augment.transforms.0"
    assert message.startswith("Erasing({'p': 2.0}):") and "less than or equal to 1" in message
