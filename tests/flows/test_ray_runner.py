"""`runner: {type: ray}` through prefect-ray, on a real local Ray and the real Prefect engine:
the folds and a search's trials give the thread pool's numbers, a dead address is one error."""

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT
from tests.flows.helpers import run
from trainflow.cli import main
from trainflow.errors import SpecError, TrainflowError
from trainflow.flows.search import search_flow
from trainflow.spec.pipeline import load_spec
from trainflow.task_options import check_runner, ray_init_kwargs

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
pytest.importorskip("prefect_ray", reason="the ray extra is not installed (pip install '.[ray]')")

pytestmark = pytest.mark.usefixtures("prefect_engine", "local_ray")

SPEC = ROOT / "pipelines" / "breast_cancer_mlp.yaml"
SEARCH = ROOT / "pipelines" / "breast_cancer_search.yaml"
SMALL = ("train.epochs=3", "evaluate.cv.folds=2", "compress={}")  # CV is the point here
RAY = ("runner.type=ray", "runner.workers=2")


@pytest.fixture(scope="module")
def local_ray(prefect_engine):
    """One local Ray for the module (its start takes 10-20 s), started with the arguments the
    runner would use; prefect-ray's runner joins a Ray already started in its process and
    leaves it running, so every test here shares it."""
    ray.init(**ray_init_kwargs(load_spec(SPEC, list(RAY))), log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_runner_gives_the_thread_pool_cv_metrics(tmp_path):
    threads, _ = run("breast_cancer_mlp", tmp_path / "threads", *SMALL)
    on_ray, states = run("breast_cancer_mlp", tmp_path / "ray", *SMALL, *RAY)
    assert states["train_fold"] == ["Completed", "Completed"]  # reported from Ray's workers
    assert [f.meta for f in on_ray["folds"]] == [f.meta for f in threads["folds"]]
    assert on_ray["ensemble"].meta == threads["ensemble"].meta


def _trials(tmp_path: Path, *overrides: str) -> list[tuple]:
    spec = load_spec(
        SEARCH,
        [
            f"outputs.store={tmp_path / 'store'}",
            f"outputs.runs={tmp_path / 'runs'}",
            "train.epochs=2",
            "evaluate.cv.folds=2",
            "train.threads=1",
            "train.precision=fp32",
            "search.n_trials=2",
            "search.sampler={type: random, seed: 1}",
            "search.pruner=null",
            "search.refit=false",
            *overrides,
        ],
    )
    result = search_flow(spec)(spec)
    study = optuna.load_study(study_name=result["study"], storage=result["storage"])
    return [(t.number, t.state.name, t.params, t.value) for t in study.get_trials()]


def test_search_trials_on_ray_give_the_sequential_studys_values(tmp_path):
    sequential = _trials(tmp_path / "threads")
    on_ray = _trials(tmp_path / "ray", *RAY)
    assert [t[1] for t in on_ray] == ["COMPLETE", "COMPLETE"]
    assert on_ray == sequential


def _closed_port() -> int:
    with socket.socket() as free:  # bound then released: nothing listens there now
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def test_an_unreachable_ray_address_is_one_error_naming_it(tmp_path, capsys):
    port = _closed_port()
    for address in (f"ray://127.0.0.1:{port}", f"127.0.0.1:{port}"):
        spec = load_spec(SPEC, ["runner.type=ray", f"runner.address={address}"])
        with pytest.raises(TrainflowError, match=f"no Ray cluster answers at {address} "):
            check_runner(spec, timeout=2.0)
    argv = ["run", str(SPEC), "--set", "runner.type=ray", "--set", f"runner.address={address}"]
    assert main([*argv, "--set", f"outputs.store={tmp_path / 'store'}"]) == 2
    err = capsys.readouterr().err
    assert f"runner.address: no Ray cluster answers at {address}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "store").exists()  # refused before any task ran


def test_a_ray_address_of_another_shape_is_refused_by_the_spec():
    with pytest.raises(SpecError, match="address must be a Ray cluster address"):
        load_spec(SPEC, ["runner.type=ray", "runner.address=tcp://10.0.0.5:8786"])


def test_without_the_ray_extra_a_ray_runner_is_one_error_naming_the_install(tmp_path):
    # a real `trainflow run` in a process where Ray cannot be imported (as without the extra)
    code = (
        "import sys; sys.modules['ray'] = None; sys.modules['prefect_ray'] = None\n"
        "from trainflow.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    store = tmp_path / "store"
    argv = [str(SPEC), "--set", "runner.type=ray", "--set", f"outputs.store={store}"]
    done = subprocess.run(
        [sys.executable, "-c", code, "run", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "runner.type: ray needs Ray and prefect-ray" in done.stderr
    assert "pip install 'trainflow[ray]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not store.exists()
