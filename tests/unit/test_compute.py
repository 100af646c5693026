"""Compute defaults: train.threads / train.precision `auto` resolve per machine and model, are
recorded in model.json, are remembered so a rerun gives the same bytes, and leave torch's
thread count as it was."""

import json

import pytest
import torch

from trainflow.engine import compute
from trainflow.engine.data import Split
from trainflow.engine.training import train_into
from trainflow.errors import TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec

MLP = MLPParams(type="mlp", hidden_layers=2, units=16)


@pytest.fixture(autouse=True)
def probe_cache(tmp_path, monkeypatch):
    """A probe cache of this test's own (the machine-wide one stays untouched)."""
    folder = tmp_path / "compute-cache"
    monkeypatch.setenv("TRAINFLOW_COMPUTE_CACHE", str(folder))
    return folder


def splits(n=160, features=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = x[:, :3].argmax(1)
    return {"train": Split(x[:120], y[:120]), "val": Split(x[120:], y[120:])}


def train(folder, on_epoch=None, **spec):
    folder.mkdir(parents=True, exist_ok=True)
    train_into(
        folder,
        MLP,
        TrainSpec.model_validate(
            {"device": "cpu", "batch_size": 32, "epochs": 2, "checkpoint_every": 0, **spec}
        ),
        0,
        splits(),
        [6],
        ["a", "b", "c"],
        on_epoch,
    )
    return json.loads((folder / "model.json").read_text())["compute"]


def test_auto_is_resolved_recorded_and_applied_while_training(tmp_path, probe_cache):
    before = torch.get_num_threads()
    seen = []
    used = train(tmp_path / "run", on_epoch=lambda row: seen.append(torch.get_num_threads()))
    assert used["threads_spec"] == "auto" and used["precision_spec"] == "auto"
    assert 1 <= used["threads"] <= compute.usable_cores()
    assert used["precision"] in ("fp32", "bf16")
    assert seen == [used["threads"]] * 2  # torch trained at the chosen count...
    assert torch.get_num_threads() == before  # ...and the caller's count is back
    probes = [json.loads(p.read_text()) for p in probe_cache.glob("*.json")]
    if compute.usable_cores() > 1 or compute.bf16_units(torch.device("cpu")):
        # what was measured, per candidate, beside the choice
        assert [(p["threads"], p["precision"]) for p in probes] == [
            (used["threads"], used["precision"])
        ]
        assert probes[0]["step_time_vs_baseline"]["1/fp32"] == 1.0


def test_explicit_values_are_used_as_given_without_a_probe(tmp_path, probe_cache):
    used = train(tmp_path / "run", threads=1, precision="fp32")
    assert used == {"threads": 1, "precision": "fp32", "threads_spec": 1, "precision_spec": "fp32"}
    assert not list(probe_cache.glob("*.json"))


def test_a_rerun_reuses_the_remembered_choice_and_gives_the_same_bytes(tmp_path, probe_cache):
    first = train(tmp_path / "one")
    second = train(tmp_path / "two")
    assert first == second
    one, two = (tmp_path / "one" / "best.pt"), (tmp_path / "two" / "best.pt")
    assert one.read_bytes() == two.read_bytes()
    # the probe does not touch the run's RNG or model: the same values given explicitly train
    # the same bytes
    train(tmp_path / "explicit", threads=first["threads"], precision=first["precision"])
    assert (tmp_path / "one" / "best.pt").read_bytes() == (
        tmp_path / "explicit" / "best.pt"
    ).read_bytes()


def test_the_remembered_choice_decides_not_a_new_measurement(tmp_path, probe_cache):
    """Once the machine's choice for a model is written, a busier machine at the next run
    does not flip it (and with it the model's bytes)."""
    train(tmp_path / "one", threads=1)  # precision auto: probed only where bf16 units exist
    remembered = list(probe_cache.glob("*.json"))
    if not remembered:
        pytest.skip("no bf16 units here: precision auto has nothing to probe")
    record = json.loads(remembered[0].read_text())
    flipped = "bf16" if record["precision"] == "fp32" else "fp32"
    remembered[0].write_text(json.dumps({**record, "precision": flipped}))
    assert train(tmp_path / "two", threads=1)["precision"] == flipped


def test_one_thread_and_fp32_win_a_near_tie():
    options = [(1, "fp32"), (2, "fp32"), (1, "bf16")]
    assert compute.pick(options, [1.0, 0.95, 0.93]) == (1, "fp32")
    assert compute.pick(options, [1.0, 0.5, 0.93]) == (2, "fp32")
    assert compute.pick(options, [1.0, 0.95, 0.6]) == (1, "bf16")


def test_usable_cores_follow_the_affinity_and_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import os

    assert compute.usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compute.usable_cores() == 1
    assert compute.candidates("auto", "fp32", torch.device("cpu")) == [(1, "fp32")]


def test_bf16_is_a_candidate_only_where_the_cpu_has_bf16_units():
    flags = set(compute.cpu_identity()["flags"])
    options = compute.candidates(1, "auto", torch.device("cpu"))
    assert ((1, "bf16") in options) == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_an_unwritable_probe_cache_is_an_error_naming_the_fix(tmp_path, monkeypatch):
    if len(compute.candidates("auto", "auto", torch.device("cpu"))) == 1:
        pytest.skip("one core and no bf16 units: auto has nothing to probe here")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("TRAINFLOW_COMPUTE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(
        TrainflowError,
        match=r"cannot keep the probe's choice in .*file/cache"
        r".*set TRAINFLOW_COMPUTE_CACHE to a writable folder, or give "
        r"train.threads and train.precision explicitly",
    ):
        train(tmp_path / "run")
