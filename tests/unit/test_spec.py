"""The spec: every shipped file validates; every mistake is reported with its YAML path."""

import json

import pytest
import yaml

from tests.conftest import PIPELINES
from trainflow.cli import main
from trainflow.errors import SpecError
from trainflow.spec.pipeline import PipelineSpec, apply_override, load_spec, validate_spec

MINIMAL = {
    "name": "t",
    "data": {"source": {"type": "sklearn", "dataset": "iris"}, "steps": [{"type": "split"}]},
    "model": {"type": "mlp"},
}


def problems(raw) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        validate_spec(raw)
    return dict(caught.value.problems)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.data.split.type == "split"


def test_unknown_key_names_path_and_allowed_keys():
    raw = yaml.safe_load(json.dumps(MINIMAL))
    raw["train"] = {"learning_rate": 0.1}
    found = problems(raw)
    assert "unknown key 'learning_rate'" in found["train.learning_rate"]
    assert "lr" in found["train.learning_rate"]  # the allowed keys are listed


def test_wrong_type_and_out_of_range_values_name_the_value():
    raw = json.loads(json.dumps(MINIMAL))
    raw["train"] = {"batch_size": "big", "lr": -0.1}
    found = problems(raw)
    assert "'big'" in found["train.batch_size"]
    assert "greater than 0" in found["train.lr"] and "-0.1" in found["train.lr"]


def test_unknown_step_name_lists_the_registered_steps():
    raw = json.loads(json.dumps(MINIMAL))
    raw["data"]["steps"].append({"type": "smote"})
    message = problems(raw)["data.steps.1"]
    assert "'smote'" in message
    for name in ("clean", "split", "normalize"):
        assert f"'{name}'" in message


def test_all_errors_reported_at_once_with_yaml_paths_not_union_tags():
    raw = json.loads(json.dumps(MINIMAL))
    raw["data"]["steps"] = [{"type": "clean", "missing": "guess"}, {"type": "split"}]
    raw["model"] = {"type": "cnn", "kernel_size": 4}
    raw["seed"] = -1
    found = problems(raw)
    assert set(found) == {"data.steps.0.missing", "model", "seed"}
    assert (
        "'guess'" in found["data.steps.0.missing"] and "'median'" in found["data.steps.0.missing"]
    )
    assert "odd" in found["model"]


def test_split_is_required_exactly_once():
    raw = json.loads(json.dumps(MINIMAL))
    raw["data"]["steps"] = [{"type": "clean"}]
    assert "exactly one `split`" in problems(raw)["data"]


def test_overrides_set_nested_values_and_list_items():
    raw = json.loads(json.dumps(MINIMAL))
    apply_override(raw, "train.lr=3e-4")
    apply_override(raw, "data.steps.0.test=0.25")
    spec = validate_spec(raw)
    assert spec.train.lr == pytest.approx(3e-4)
    assert spec.data.split.test == 0.25
    with pytest.raises(SpecError, match="no list item '5'"):
        apply_override(raw, "data.steps.5.test=0.1")


def test_cli_validate_reports_problems_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "model": {"type": "resnet"}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model" in err and "'resnet'" in err and "'mlp'" in err
    assert "Traceback" not in err


def test_cli_schema_is_the_pipeline_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PipelineSpec"
    assert set(schema["required"]) == {"name", "data", "model"}


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError, match="line"):
        load_spec(bad)


def test_spec_fingerprint_changes_with_any_value():
    a = validate_spec(MINIMAL)
    b = validate_spec({**MINIMAL, "seed": 1})
    assert isinstance(a, PipelineSpec) and a.fingerprint() != b.fingerprint()
