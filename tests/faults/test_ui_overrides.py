"""A run started from the UI cannot point the worker at its files, however the key is spelled."""

import typing

import pytest
import yaml

from trainflow.deploy import spec_from_parameters
from trainflow.errors import SpecError
from trainflow.spec.base import Section
from trainflow.spec.pipeline import PipelineSpec
from trainflow.spec.settable import free_text, refusal

pytestmark = pytest.mark.faults

SECRET_LINE = "root:x:0:0:root:/root:/bin/bash"


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """A pipelines folder with a CSV pipeline, and a file of the worker's outside it."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    rows = "".join(f"{i},{i % 3},{'a' if i % 2 else 'b'}\n" for i in range(60))
    (folder / "table.csv").write_text("x,z,label\n" + rows)
    spec = {
        "name": "tabular",
        "data": {
            "source": {"type": "csv", "path": "table.csv", "target": "label"},
            "steps": [{"type": "split"}],
        },
        "model": {"type": "mlp", "units": 8},
        "train": {"epochs": 1},
    }
    (folder / "tabular.yaml").write_text(yaml.safe_dump(spec))
    secret = tmp_path / "passwd"
    secret.write_text(f"{SECRET_LINE}\nx,y\n1,2\n")
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(folder))
    return secret


def refused(override: str) -> tuple[str, str]:
    with pytest.raises(SpecError) as caught:
        spec_from_parameters("tabular", {}, [override])
    assert SECRET_LINE not in str(caught.value) and "root:x" not in str(caught.value)
    return caught.value.problems[0]


@pytest.mark.parametrize(
    "key",
    [
        "data..source.path",
        "data.source..path",
        ".data.source.path",
        "data.source.path.",
        "data...source.path",
        "data.source.path..",
    ],
)
def test_empty_segments_are_refused_naming_the_parameter(worker, key):
    where, why = refused(f"{key}={worker}")
    assert where == "overrides.0" and "empty segment" in why


# Spellings the old check let through (the first ones) and ones it already refused, kept here
# so a change to the allowlist cannot reopen them.
WORKER_ONLY = [
    "data . source . path={secret}",
    "train.pretrained.path={secret}",
    "train.pretrained={{path: {secret}}}",
    "train.distill.teacher={secret}",
    "train.log.tensorboard=/tmp/tb",
    "data.steps.0.columns=[x]",
    "train.augment.transforms.0.params.x=1",
    " data.source.path ={secret}",
    "data.source.path={secret}",
    "data.source={{type: csv, path: {secret}, target: x}}",
    "data={{source: {{type: csv, path: {secret}, target: x}}, steps: [{{type: split}}]}}",
    "train.loader.cache_dir=/tmp/cache",
    "train={{loader: {{cache_dir: /tmp/cache}}}}",
    "outputs.store=/tmp/elsewhere",
    "outputs.runs=/tmp/runs",
    "outputs={{runs: /x}}",
    "runner.address=tcp://10.0.0.1:8786",
    "runner={{type: dask, address: tcp://10.0.0.1:1}}",
]


def test_paths_and_sections_holding_them_are_worker_only(worker):
    for override in WORKER_ONLY:
        where, why = refused(override.format(secret=worker))
        assert where == "overrides.0", override
        assert "cannot be set from a run's parameters" in why, override
    # A look-alike key names no field: validation refuses it as unknown, nothing is read.
    for override in ("data.ѕource.path={secret}", "data.sources.path={secret}"):  # Cyrillic s
        where, why = refused(override.format(secret=worker))
        assert where.startswith("data.") and "unknown key" in why


def _leaves(model, prefix=()):
    """Every field path of a model, through nested models and union members."""
    for name, field in model.model_fields.items():
        yield (*prefix, name), field.annotation
        for inner in _models(field.annotation):
            yield from _leaves(inner, (*prefix, name, *(("0",) if _is_list(field) else ())))


def _models(annotation):
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)] if origin else []


def _is_list(field):
    return "list[" in str(field.annotation)


def test_the_ui_sets_numbers_switches_and_choices_but_no_text(worker):
    paths = {".".join(keys): (keys, ann) for keys, ann in _leaves(PipelineSpec)}
    texts = [p for p, (keys, ann) in paths.items() if free_text(ann)]
    for known in (
        "data.source.path",
        "outputs.store",
        "train.loader.cache_dir",
        "train.pretrained.path",
        "train.distill.teacher",
        "runner.address",
    ):
        assert known in texts
    assert all(refusal(paths[p][0], PipelineSpec) for p in texts)
    for knob in ("train.epochs", "train.lr", "train.batch_size", "evaluate.cv.folds"):
        assert refusal(knob.split("."), PipelineSpec) is None
    spec = spec_from_parameters(
        "tabular",
        {"epochs": 2, "lr": 0.01},
        [
            "train.optimizer.type=sgd",
            "data.steps.0.test=0.3",
            "model.init.linear=orthogonal",
            "train.early_stopping={patience: 3}",
            "train.loader.workers=0",
            "seed=7",
        ],
    )
    assert spec.train.epochs == 2 and spec.train.optimizer.type == "sgd"
    assert spec.data.split.test == 0.3 and spec.model.init == {"linear": "orthogonal"}
    assert spec.train.early_stopping.patience == 3 and spec.seed == 7
    assert spec.data.source.path.endswith("pipelines/table.csv")


def test_a_field_added_later_is_worker_only_by_default():
    class Weights(Section):
        location: str
        scale: float = 1.0

    class Root(Section):
        weights: Weights | None = None
        extra: dict[str, typing.Any] = {}

    assert refusal(["weights", "location"], Root)
    assert refusal(["weights"], Root) and refusal(["extra", "k"], Root)
    assert refusal(["weights", "scale"], Root) is None
    # turning the section off brings no text: allowed; a value for it is not
    assert refusal(["weights"], Root, None) is None
    assert refusal(["weights"], Root, {"location": "/etc"})
    assert refusal(["extra"], Root, None)  # not optional: None is no way to turn it off


def test_a_ui_run_may_turn_an_optional_stage_off_but_not_set_its_text(worker):
    spec = spec_from_parameters("tabular", {}, ["ensemble=null", "train.pretrained=null"])
    assert spec.ensemble is None and spec.train.pretrained is None
    where, why = refused("ensemble={type: soft_vote, variants: [{model.type: mlp}]}")
    assert where == "overrides.0" and "cannot be set from a run's parameters" in why


def test_a_ui_run_never_reads_a_file_outside_the_pipelines_folder(worker, prefect_engine):
    from trainflow.flows.deployments import train

    state = train(pipeline="tabular", overrides=[f"data..source.path={worker}"], return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert "overrides.0" in message and "empty segment" in message
    assert SECRET_LINE not in message


def test_a_spec_error_fails_the_run_with_one_message_and_no_traceback(
    worker, prefect_engine, caplog
):
    """The run's state message is the one message; its log has it once, with no traceback
    (issue 19 part 10: it was three times, with two of Prefect's tracebacks)."""
    from trainflow.flows.deployments import train

    with caplog.at_level("INFO"):
        state = train(pipeline="tabular", overrides=["train.epochz=3"], return_state=True)
    assert state.is_failed()
    assert "unknown key 'epochz'; did you mean `epochs`?" in str(state.message)
    assert "allowed keys" not in str(state.message)  # the close key alone, not 40 of them
    said = [r for r in caplog.records if "unknown key 'epochz'" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert not any(r.exc_info for r in caplog.records), caplog.text
    assert "Traceback" not in caplog.text
