"""Same spec, same data, same bytes: two runs on fresh stores write byte-identical artifacts
(so their fingerprints, and the cache keys of everything downstream, are the same), while
the figures a machine measures (CPU latency) still reach the run folder and the report."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tests.flows.helpers import run
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.training import optimizer_factory
from trainflow.models.mlp import mlp
from trainflow.spec.train import TrainSpec

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
# digits_cnn: images, so augmentation and its preview PNG too; every other artifact kind the
# pipeline writes (table, views, shards, models with checkpoints, folds, metrics, report).
SHRUNK = (
    "train.epochs=2",
    "evaluate.cv.folds=2",
    "compress.prune.finetune_epochs=1",
    "model.channels=[8, 16]",
    "model.hidden=32",
)
LATENCY = "CPU latency per batch of"


def artifacts(store: Path) -> dict[str, dict[str, bytes]]:
    """`<kind>/<fingerprint>` -> {file path inside it: bytes}, for every artifact of a store."""
    found = {}
    for folder in sorted(store.glob("*/*")):
        if folder.is_dir() and FINGERPRINT.fullmatch(folder.name):
            found[f"{folder.parent.name}/{folder.name}"] = {
                file.relative_to(folder).as_posix(): file.read_bytes()
                for file in sorted(folder.rglob("*"))
                if file.is_file()
            }
    return found


@pytest.mark.usefixtures("prefect_engine")
def test_two_runs_on_fresh_stores_write_byte_identical_artifacts(tmp_path, monkeypatch):
    stores, run_dirs = [], []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        # The same spec text in two fresh folders (the spec's fingerprint, shown in the
        # report, covers its outputs section): relative outputs, as the shipped specs have.
        monkeypatch.chdir(folder)
        result, states = run(
            "digits_cnn", folder, *SHRUNK, "outputs.store=store", "outputs.runs=runs"
        )
        assert all(s == "Completed" for names in states.values() for s in names), states
        assert states["measure_latency"] == ["Completed"]
        stores.append(artifacts(folder / "store"))
        run_dirs.append(Path(result["run_dir"]))

    first, second = stores
    assert {name.split("/")[0] for name in first} >= {
        "table",
        "splits",
        "shards",
        "model",
        "metrics",
        "report",
    }
    assert sorted(first) == sorted(second)  # the same fingerprints, each a byte-identical twin
    for name, files in first.items():
        assert files == second[name], f"{name} differs between two identical runs"

    # measured figures live in the run folder and the report, and only there
    for run_dir in run_dirs:
        report = (run_dir / "report.md").read_text()
        assert report.count(LATENCY) == 2  # the quantize table and the prune table
        summary = json.loads((run_dir / "metrics.json").read_text())
        timings = summary["latency"]["ms_per_batch"]
        assert set(timings) == {"model", "quantize", "prune"}
        assert all(ms > 0 for ms in timings.values())
        assert all(Path(path).is_dir() for path in summary["models"].values())
    stored = [files["report.md"] for files in first.values() if "report.md" in files]
    assert len(stored) == 1 and LATENCY.encode() not in stored[0]
    # (a model package's spec.json names the setting compress.quantize.latency_repeats)
    assert b"latency" not in b"".join(
        f for files in first.values() for name, f in files.items() if name != "spec.json"
    )
    with get_client(sync_client=True) as client:
        shown = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["digits-cnn-report"]))
        )
    assert any(LATENCY in a.data for a in shown if a.type == "markdown")


SPEC = TrainSpec(
    lr=0.01,
    epochs=3,
    batch_size=16,
    device="cpu",
    checkpoint_every=1,
    checkpoint_interval_s=0,
    checkpoint_every_steps=4,
    augment={"gaussian_noise": 0.1, "mixup": 0.4},
)


def train_once(out: Path) -> bytes:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=generator)
    train, val = Split(x, (x[:, 0] + x[:, 1] > 0).long()), Split(x[:40], (x[:40, 0] > 0).long())
    torch.manual_seed(0)
    net = mlp([6], 2, [16, 16], dropout=0.3)
    out.mkdir()
    fit(net, train, val, SPEC, 0, optimizer_factory(SPEC), out)
    return (out / "last.pt").read_bytes()


@pytest.mark.slow
def test_other_threads_drawing_from_global_generators_do_not_change_the_checkpoint(tmp_path):
    """Prefect's event loop thread draws from Python's global generator (interval jitter,
    websocket pings) at moments no run controls: last.pt must not capture that."""
    quiet = train_once(tmp_path / "quiet")
    stop = threading.Event()

    def draw():  # what Prefect's threads do, only far more often
        while not stop.is_set():
            random.random()
            np.random.random()
            stop.wait(0.0005)

    noise = threading.Thread(target=draw, daemon=True)
    noise.start()
    try:
        noisy = train_once(tmp_path / "noisy")
    finally:
        stop.set()
        noise.join()
    assert noisy == quiet


GUARD = """
import random, sys
import numpy as np
import torch
sys.path.insert(0, {root!r})
from trainflow.engine.training import optimizer_factory
from trainflow.engine.data import Split
from trainflow.engine.loop import fit
from trainflow.engine.setup import seed_everything
from trainflow.models.cnn import cnn
from trainflow.spec.train import TrainSpec
from pathlib import Path

seed_everything(0)
seeded = random.getstate(), np.random.get_state()[1].tolist(), np.random.get_state()[2]
spec = TrainSpec(lr=0.01, epochs=2, batch_size=16, device="cpu", checkpoint_every_steps=3,
                 checkpoint_interval_s=0, augment={{"mixup": 0.4, "transforms": [
                     {{"name": "Erasing", "params": {{"p": 0.5, "scale": [0.02, 0.1]}}}}]}})
g = torch.Generator().manual_seed(0)
x = torch.rand(96, 1, 8, 8, generator=g)
data = Split(x, (x.mean((1, 2, 3)) > 0.5).long())
net = cnn([1, 8, 8], 2, [4, 8], hidden=16, dropout=0.3)
fit(net, data, data, spec, 0, optimizer_factory(spec), Path({out!r}))
after = random.getstate(), np.random.get_state()[1].tolist(), np.random.get_state()[2]
print("python", after[0] == seeded[0], "numpy", after[1:] == seeded[1:])
"""


@pytest.mark.slow
def test_training_draws_nothing_from_pythons_or_numpys_global_generators(tmp_path):
    """Why last.pt may leave those states out: training (dropout, batch order, albumentations,
    mixup) draws from its own generators, so its results never depend on them. In a fresh
    process, where no other thread draws, the global states end as seeding left them."""
    (tmp_path / "out").mkdir()
    script = GUARD.format(root=str(ROOT), out=str(tmp_path / "out"))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["python", "True", "numpy", "True"]


@pytest.mark.slow
def test_robust_accuracy_does_not_depend_on_what_the_process_ran_before(tmp_path):
    """PGD starts from random points: the evaluate artifact of a model trained against it is
    the same bytes whether training ran just before in this process (a fresh store) or was
    served from the cache (a rerun), i.e. whatever state torch's global generator is in."""
    from trainflow.spec.model import MLPParams
    from trainflow.tasks.evaluate import evaluate_model
    from trainflow.tasks.ingest import SklearnSource, ingest
    from trainflow.tasks.normalize import NormalizeParams, normalize
    from trainflow.tasks.shard import ShardParams, shard
    from trainflow.tasks.split import SplitParams, split
    from trainflow.tasks.train import train_model

    store = str(tmp_path / "store")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    scaled = normalize.fn(
        split.fn(table, SplitParams(type="split"), 0, store),
        NormalizeParams(type="normalize"),
        0,
        store,
    )
    shards = shard.fn(scaled, ShardParams(max_samples=128), store)
    # one tiny PGD step from the random start: the figure hangs on where the start falls
    spec = TrainSpec(
        lr=1e-3,
        batch_size=32,
        epochs=3,
        adversarial={"method": "pgd", "epsilon": 2.0, "steps": 1, "step_size": 0.01},
    )
    model = train_model.fn(
        shards, MLPParams(type="mlp", hidden_layers=1, units=[16]), spec, 0, store
    )
    scored = []
    for state in (1, 2, 3):
        torch.manual_seed(state)  # what earlier tasks of the process left behind
        scored.append(evaluate_model.fn(model, shards, store))
    assert 0 < scored[0].meta["robust_accuracy"] < scored[0].meta["accuracy"]
    assert len({ref.fingerprint for ref in scored}) == 1
