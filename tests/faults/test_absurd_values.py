"""Values whose cost is absurd are refused before any work, naming the field, value and fix."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainflow.engine.checks import check_model_and_training, count_parameters
from trainflow.errors import SpecError, TrainflowError
from trainflow.spec.pipeline import load_spec

pytestmark = pytest.mark.faults

TRAINFLOW = str(Path(sys.executable).with_name("trainflow"))
MLP = str(ROOT / "pipelines" / "breast_cancer_mlp.yaml")
# A subprocess timeout guards against the old behaviour (spinning, or allocating terabytes);
# the refusal itself takes the command's start-up time.
GUARD_S = 240


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    store = tmp_path_factory.mktemp("absurd")
    where = ["--set", f"outputs.store={store / 'store'}", "--set", f"outputs.runs={store / 'r'}"]
    commands = {
        "fields": [
            "validate",
            MLP,
            "--set",
            "train.epochs=1.0e+12",
            "--set",
            "model.units=[100000000000, 3]",
        ],
        # Each layer within its bound, the whole model 1e12 parameters: refused by `run`
        # before any task (no server started, nothing stored).
        "model_size": [
            "run",
            MLP,
            *where,
            "--set",
            "model.hidden_layers=64",
            "--set",
            "model.units=131072",
        ],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(args):
        return subprocess.run(
            [TRAINFLOW, *args], env=env, capture_output=True, text=True, timeout=GUARD_S
        )

    with ThreadPoolExecutor(len(commands)) as pool:
        done = dict(zip(commands, pool.map(run, commands.values())))
    return done, store


def refused(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.slow
def test_1e12_epochs_and_a_layer_of_1e11_units_are_refused_by_validation(refusals):
    message = refused(refusals[0]["fields"])
    assert (
        "train.epochs: Input should be less than or equal to 100000 "
        "(got 1000000000000.0)" in message
    )
    assert (
        "model.units.0: Input should be less than or equal to 131072 (got 100000000000)" in message
    )


@pytest.mark.slow
def test_a_model_too_big_for_the_machine_is_refused_before_any_task(refusals):
    done, store = refusals
    message = refused(done["model_size"])
    assert "model: this mlp has 1,082,3" in message and "parameters" in message
    assert "model.hidden_layers: 64, model.units: 131072" in message
    assert "lower model.hidden_layers or model.units" in message
    assert "TiB" in message and not (store / "store").exists()
    assert "Starting temporary server" not in message


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.batch_size=1.0e+9", "train.batch_size"),
        ("train.max_steps=1.0e+15", "train.max_steps"),
        ("train.accumulate=1000000", "train.accumulate"),
        ("train.weight_decay=.inf", "train.weight_decay"),
        ("train.checkpoint_interval_s=.inf", "train.checkpoint_interval_s"),
        ("train.adversarial={epsilon: 0.1, steps: 1000000}", "train.adversarial.steps"),
        (
            "train.schedule={type: multi_step, milestones: [1000000000000]}",
            "train.schedule.milestones.0",
        ),
    ],
)
def test_other_unbounded_costs_are_refused(override, field):
    with pytest.raises(SpecError) as caught:
        load_spec(MLP, [override])
    assert field in dict(caught.value.problems)


def test_the_estimate_counts_without_allocating():
    spec = load_spec(
        MLP, ["model.hidden_layers=64", "model.units=131072", "model.spectral_norm=true"]
    )
    assert count_parameters(spec.model, [30]) > 10**12  # 4 TB of fp32 had it been allocated
    with pytest.raises(TrainflowError, match="model: this mlp has"):
        check_model_and_training(spec.model, spec.train, [30])
    small = load_spec(MLP)
    check_model_and_training(small.model, small.train, [30])  # the shipped model fits
