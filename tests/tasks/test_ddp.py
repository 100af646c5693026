"""train.distributed (ddp) through the train task: real torchrun ranks (gloo, CPU, 2 processes)
on real shards. At the same global batch the 2-rank run ends with the 1-process weights and
metrics; rank 0 alone writes; a failed rank, another world size and too many ranks are each one
clear error."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.interrupt import descendants, frozen_at_step, wait_gone
from tests.tasks.ranks import prepared_shards, rows
from trainflow.artifacts import Store
from trainflow.engine import checkpoint
from trainflow.engine.state import load_resumable
from trainflow.errors import ArtifactError, SpecError, TrainflowError
from trainflow.spec.model import MLPParams
from trainflow.spec.pipeline import load_spec
from trainflow.spec.train import TrainSpec
from trainflow.tasks.train import resume_folder, train_model

ROOT = Path(__file__).resolve().parents[2]
MODEL = MLPParams(type="mlp", hidden_layers=2, units=[32, 16])
# 369 training rows: 11 batches of 32 and a last, odd one of 17 (9 + 8 rows on two ranks)
ONE = TrainSpec.model_validate(
    {"lr": 1e-2, "batch_size": 32, "epochs": 3, "threads": 1, "precision": "fp32",
     "device": "cpu", "loader": {"mode": "memory"}}
)  # fmt: skip
TWO = TrainSpec.model_validate({**ONE.model_dump(), "distributed": {"nproc_per_node": 2}})
# The module's 2-rank run checkpoints every step (it trains as TWO does): the kill test
# resumes its own spec from inside epoch 2, and compares with it.
STEPPED = TrainSpec.model_validate(
    {**TWO.model_dump(), "checkpoint_every_steps": 1, "checkpoint_interval_s": 0}
)
STEPS_PER_EPOCH = 12
# Measured (3 epochs, 36 steps, AdamW): largest weight difference 9e-8, metrics within 1e-8;
# the float sums run in another order on two ranks, so bit equality is not expected.
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table, raw, scaled, shards = prepared_shards(store)
    one = train_model.fn(shards, MODEL, ONE, 0, store)
    two = train_model.fn(shards, MODEL, STEPPED, 0, store)  # (TWO, a checkpoint every step)
    return {"store": store, "shards": shards, "one": one, "two": two}


@pytest.mark.slow
def test_two_ranks_end_with_the_one_process_weights_and_metrics(runs):
    one, two = (checkpoint.load(runs[k].path / "best.pt")["model"] for k in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=0, atol=ATOL), name
    a, b = rows(runs["one"]), rows(runs["two"])
    assert [r.keys() for r in a] == [r.keys() for r in b] and len(a) == 3
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
    assert runs["two"].meta["batch_size"] == 32  # the global batch
    two_json = json.loads((runs["two"].path / "model.json").read_text())
    assert two_json["compute"]["threads"] == 1


@pytest.mark.slow
def test_rank_zero_alone_writes(runs):
    """The 2-rank model folder holds exactly the 1-process files (one metrics log of one row
    per epoch, one best.pt and last.pt), and nothing else in the store names a rank."""
    names = {p.name for p in runs["two"].path.iterdir()}
    assert names == {p.name for p in runs["one"].path.iterdir()}
    assert "metrics.jsonl" in names and "best.pt" in names
    assert [r["epoch"] for r in rows(runs["two"])] == [1, 2, 3]  # not written twice
    assert not [p for p in Path(runs["store"]).rglob("*") if "rank" in p.name]
    saved = checkpoint.load(runs["two"].path / "last.pt")
    assert saved["world_size"] == 2


def left_by_two_ranks(runs, spec: TrainSpec, changes: dict | None = None) -> Path:
    """A resume folder for `spec` holding the 2-rank run's last.pt (with `changes`): as a
    2-rank run killed after its last epoch would have left it."""
    folder = resume_folder(Store(runs["store"]), runs["shards"], MODEL, spec, 0)
    saved = checkpoint.load(runs["two"].path / "last.pt")
    checkpoint.save_rotating(folder / "last.pt", {**saved, **(changes or {})})
    return folder


@pytest.mark.slow
def test_a_checkpoint_of_another_world_size_is_refused_naming_both(runs):
    spec = TrainSpec.model_validate({**ONE.model_dump(), "epochs": 4})  # (a key of its own)
    folder = left_by_two_ranks(runs, spec)
    with pytest.raises(TrainflowError, match="it ran on 2 rank.*this run has 1") as caught:
        train_model.fn(runs["shards"], MODEL, spec, 0, runs["store"])
    assert "train.distributed" in str(caught.value) and str(folder) in str(caught.value)


@pytest.mark.slow
def test_a_failed_rank_is_one_error_with_its_last_lines(runs):
    spec = TrainSpec.model_validate({**TWO.model_dump(), "epochs": 5})
    left_by_two_ranks(runs, spec, {"spec": "another spec's digest"})
    with pytest.raises(TrainflowError, match=r"failed on rank [01]:") as caught:
        train_model.fn(runs["shards"], MODEL, spec, 0, runs["store"])
    assert "written by a different train spec" in str(caught.value)


def test_the_ranks_code_is_in_the_train_tasks_cache_key():
    """The ranks run trainflow.engine.ddp_worker in their own processes: an edit there must
    change the train task's key as an edit of the loop does."""
    from trainflow.sourcegraph import code_scope

    assert "trainflow.engine.ddp_worker" in code_scope("trainflow.tasks.train")


def test_more_ranks_than_cores_is_one_spec_error():
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(SpecError) as caught:
        load_spec(
            ROOT / "pipelines" / "breast_cancer_mlp.yaml",
            ["train.device=cpu", f"train.distributed.nproc_per_node={cores + 1}"],
        )
    assert len(caught.value.problems) == 1
    assert f"({cores + 1})" in str(caught.value) and f"{cores} usable CPU cores" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("distributed", "words"),
    [
        ({"nproc_per_node": 2, "nnodes": 2}, "give rdzv_endpoint"),
        ({"nproc_per_node": 1, "rdzv_endpoint": "not an endpoint"}, "rdzv_endpoint"),
    ],
)
def test_a_rendezvous_of_the_wrong_shape_is_refused(distributed, words):
    with pytest.raises(ValueError, match=words):
        TrainSpec(distributed=distributed)


def test_ddp_refuses_a_batch_it_cannot_split_and_knobs_that_cannot_hold():
    with pytest.raises(ValueError, match=r"batch_size \(33\) is the global batch"):
        TrainSpec(batch_size=33, distributed={"nproc_per_node": 2})
    with pytest.raises(ValueError, match="auto_batch cannot run under distributed"):
        TrainSpec(auto_batch={"memory_mb": 100}, distributed={"nproc_per_node": 1})


CHILD = """
import sys
from trainflow.artifacts import ArtifactRef
from trainflow.spec.model import MLPParams
from trainflow.spec.train import TrainSpec
from trainflow.tasks.train import train_model
shards, model, spec, store = sys.argv[1:]
train_model.fn(ArtifactRef.model_validate_json(shards), MLPParams.model_validate_json(model),
               TrainSpec.model_validate_json(spec), 0, store)
"""


def killed_mid_epoch(runs, store: str, work: Path) -> dict:
    """Run STEPPED's training in a child process, stop rank 0 inside optimizer step 4 of
    epoch 2 (its last.pt holds step 3's position), and SIGKILL the child (its torchrun and
    ranks stop with it); that last.pt."""
    folder = resume_folder(Store(store), runs["shards"], MODEL, STEPPED, 0)
    env, frozen = frozen_at_step(work, STEPS_PER_EPOCH + 4)
    argv = [runs["shards"].model_dump_json(), MODEL.model_dump_json(), STEPPED.model_dump_json()]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv, store], env=env)
    saved: dict = {}
    try:
        deadline = time.monotonic() + 600
        while child.poll() is None and time.monotonic() < deadline and not frozen.exists():
            time.sleep(0.05)
        settled = time.monotonic() + 60  # the writer thread may still be saving step 3
        while frozen.exists() and time.monotonic() < settled and batch(saved) != 3:
            try:
                saved = checkpoint.load(folder / "last.pt")
            except ArtifactError:  # not written yet, or being replaced
                pass
            time.sleep(0.05)
        ranks = descendants(child.pid)
    finally:
        child.kill()  # SIGKILL
        child.wait()
    assert frozen.exists(), f"rank 0 did not reach epoch 2's step 4 (exit {child.returncode})"
    assert batch(saved) == 3, f"last.pt holds {saved.get('position')}, not epoch 2's batch 3"
    wait_gone(ranks)  # torchrun stops its ranks on its parent's death (engine.ddp)
    return load_resumable(folder / "last.pt")


def batch(saved: dict) -> int | None:
    return (saved.get("position") or {}).get("batch")


@pytest.mark.slow
def test_a_ddp_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(runs, tmp_path, caplog):
    full = runs["two"]  # (STEPPED's uninterrupted run)
    store = str(tmp_path / "killed")  # (the shards' paths are absolute: the same files)
    left = killed_mid_epoch(runs, store, tmp_path / "site")
    assert left["epoch"] == 2 and left["world_size"] == 2
    assert left["position"]["batch"] == 3 and left["steps"] == STEPS_PER_EPOCH + 3
    caplog.set_level(logging.INFO, logger="trainflow")
    resumed = train_model.fn(runs["shards"], MODEL, STEPPED, 0, store)
    # (a run from scratch would end with the same weights: this one started from the kill)
    assert "resuming from epoch 2 (step 15)" in caplog.text
    a = checkpoint.load(full.path / "best.pt")["model"]
    b = checkpoint.load(resumed.path / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    x, y = rows(full), rows(resumed)
    assert len(x) == len(y) == 3
    for one, other in zip(x, y):  # (the resumed epoch's loss sums add in another order)
        assert one == pytest.approx(other, abs=1e-6, rel=0)


@pytest.mark.slow
def test_a_streamed_split_trains_each_rank_on_its_shards_when_resampled(runs, tmp_path, caplog):
    """(and the task logs each epoch's row while the ranks train, as one process does)"""
    caplog.set_level(logging.INFO, logger="trainflow")
    streamed = {**TWO.model_dump(), "loader": {"mode": "stream", "shuffle_buffer": 64}}
    with pytest.raises(TrainflowError, match="needs train.loader.resampled: true"):
        train_model.fn(runs["shards"], MODEL, TrainSpec.model_validate(streamed), 0, runs["store"])
    streamed["loader"]["resampled"] = True
    model = train_model.fn(
        runs["shards"], MODEL, TrainSpec.model_validate(streamed), 0, str(tmp_path)
    )
    assert [r["epoch"] for r in rows(model)] == [1, 2, 3]
    assert rows(model)[-1]["val_accuracy"] > 0.9
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in logged] == ["1", "2", "3"]
    assert "samples/s" in logged[-1] and f"{rows(model)[-1]['val_loss']:.4f}" in logged[-1]


@pytest.mark.slow
def test_a_rendezvous_that_does_not_gather_is_one_error_naming_the_endpoint(
    runs, tmp_path, monkeypatch
):
    """An endpoint no other node joins (an unused port on this machine: torchrun hosts the
    store there and waits for the second node) fails within TRAINFLOW_RDZV_TIMEOUT_S."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"127.0.0.1:{port}"
    spec = TrainSpec.model_validate(
        {
            **ONE.model_dump(),
            "distributed": {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": endpoint},
        }
    )
    monkeypatch.setenv("TRAINFLOW_RDZV_TIMEOUT_S", "3")
    began = time.monotonic()
    with pytest.raises(
        TrainflowError, match=rf"rdzv_endpoint {endpoint} did not gather its 2 nodes within 3 s"
    ):
        train_model.fn(runs["shards"], MODEL, spec, 0, str(tmp_path))
    assert time.monotonic() - began < 120  # (torchrun's own wait is 600 s)


STREAM_RANK = """
import torch, torch.distributed as dist
from trainflow.engine.ddp import World
dist.init_process_group("gloo")
world = World.current()
net = torch.nn.Linear(3, 1)
x = torch.full((4, 3), float(world.rank + 1))  # a stream's batch: this rank's own 4 rows
wrapped = world.wrap(net, torch.device("cpu"))  # (kept: its reducer reduces in backward)
wrapped(x).mean().backward()
print(f"grad {net.weight.grad.flatten().tolist()}", flush=True)  # (one write each)
assert torch.allclose(net.weight.grad, torch.full((1, 3), 1.5)), net.weight.grad
dist.barrier()
dist.destroy_process_group()
import os, sys
sys.stdout.flush()
os._exit(0)  # (gloo's and DDP's C++ teardown at interpreter exit can abort a rank: SIGABRT)
"""


@pytest.mark.slow
def test_ranks_on_streamed_batches_step_on_the_mean_gradient(tmp_path):
    """A stream gives each rank its own equal batch (no `World.local`): the reduced gradient
    is the mean over both ranks' rows (1 and 2 here: 1.5), not their sum."""
    script = tmp_path / "rank.py"
    script.write_text(STREAM_RANK)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*argv, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("grad [1.5, 1.5, 1.5]") == 2


@pytest.mark.slow
def test_two_nodes_join_one_rendezvous_and_train_as_two_ranks_on_one_node(runs, tmp_path):
    """nnodes: 2 with rdzv_endpoint: two train tasks (two "nodes" on this machine, one rank
    each) meet at the c10d endpoint and train as one 2-rank run: the node holding rank 0
    stores the model, with the weights of the standalone 2-rank run; the other says it has
    none to store, in one message."""
    from concurrent.futures import ThreadPoolExecutor

    from trainflow.engine.ddp import OtherNodeWrites

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = TrainSpec.model_validate(
        {
            **ONE.model_dump(),
            "distributed": {
                "nproc_per_node": 1,
                "nnodes": 2,
                "rdzv_endpoint": f"127.0.0.1:{port}",
            },
        }
    )

    def node(n: int):
        try:
            return train_model.fn(runs["shards"], MODEL, spec, 0, str(tmp_path / f"node{n}"))
        except OtherNodeWrites as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(node, (0, 1)))
    models = [d for d in done if not isinstance(d, Exception)]
    others = [d for d in done if isinstance(d, OtherNodeWrites)]
    assert len(models) == 1 and len(others) == 1, done
    assert "the node holding rank 0 wrote the model" in str(others[0])
    two, joined = (checkpoint.load(m.path / "best.pt")["model"] for m in (runs["two"], models[0]))
    for name in two:
        assert torch.allclose(two[name], joined[name], rtol=0, atol=ATOL), name
    for x, y in zip(rows(models[0]), rows(runs["two"]), strict=True):
        assert x == pytest.approx(y, abs=ATOL, rel=0)
