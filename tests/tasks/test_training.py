"""Training, evaluation, cross-validation folds and compression, called bare (`.fn`)."""

import json

import numpy as np
import pytest
import torch

from tests.interrupt import after_step
from trainflow.engine import checkpoint
from trainflow.engine.data import Split
from trainflow.engine.inference import score
from trainflow.engine.loop import fit
from trainflow.engine.model_folder import load_model
from trainflow.engine.training import optimizer_factory
from trainflow.models.mlp import mlp
from trainflow.spec.after_training import DynamicInt8Params, L1UnstructuredParams
from trainflow.spec.model import MLPParams
from trainflow.spec.train import EarlyStopping, TrainSpec
from trainflow.steps import read_parts
from trainflow.tasks.evaluate import evaluate_model
from trainflow.tasks.fold import fold_data, train_fold
from trainflow.tasks.ingest import SklearnSource, ingest
from trainflow.tasks.normalize import NormalizeParams, normalize
from trainflow.tasks.prune import prune_model
from trainflow.tasks.quantize import quantize_model
from trainflow.tasks.shard import ShardParams, shard
from trainflow.tasks.split import SplitParams, split
from trainflow.tasks.train import load_splits, train_model

# Real trainings of the shipped model on real data (a module fixture trains for 25 epochs).
pytestmark = pytest.mark.slow

MODEL = MLPParams(type="mlp", hidden_layers=2, units=[64, 32])
TRAIN = TrainSpec(
    lr=1e-3, batch_size=32, epochs=25, early_stopping=EarlyStopping(monitor="val_loss", patience=5)
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("store"))
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    scaled = normalize.fn(raw, NormalizeParams(type="normalize"), 0, store)
    shards = shard.fn(scaled, ShardParams(max_samples=128), store)
    model = train_model.fn(shards, MODEL, TRAIN, 0, store)
    return {"store": store, "raw": raw, "shards": shards, "model": model}


def test_trained_model_scores_well_on_test(prepared):
    test = evaluate_model.fn(prepared["model"], prepared["shards"], prepared["store"])
    assert test.meta["accuracy"] >= 0.93
    assert np.sum(test.meta["confusion_matrix"]) == 114
    assert 0 < test.meta["f1_macro"] <= 1


def test_model_artifact_has_checkpoints_and_metrics_log(prepared):
    folder = prepared["model"].path
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == prepared["model"].meta["epochs_run"]
    assert {"train_loss", "val_loss", "val_accuracy"} <= rows[0].keys()
    last = checkpoint.load(folder / "last.pt")
    assert {"model", "optimizer", "epoch", "rng"} <= last.keys()
    best = checkpoint.load(folder / "best.pt")
    assert best["epoch"] == prepared["model"].meta["best_epoch"]
    net, info = load_model(prepared["model"])
    assert info["classes"] == ["malignant", "benign"]


def test_same_seed_same_training_run(prepared, tmp_path):
    again = train_model.fn(prepared["shards"], MODEL, TRAIN, 0, str(tmp_path))
    assert again.meta["best_epoch"] == prepared["model"].meta["best_epoch"]
    first = (prepared["model"].path / "metrics.jsonl").read_text().splitlines()
    second = (again.path / "metrics.jsonl").read_text().splitlines()
    assert len(first) == len(second)
    for a, b in zip(map(json.loads, first), map(json.loads, second)):
        # bit-identical when nothing else runs torch in the process; CPU kernels may split
        # work differently under concurrent load, which moves the last float digits
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    train, val = Split(x, (x[:, 0] > 0).long()), Split(x, torch.randint(0, 2, (64,), generator=g))
    spec = TrainSpec(
        epochs=50, lr=0.05, early_stopping=EarlyStopping(monitor="val_loss", patience=3)
    )
    result = fit(mlp([4], 2, [8]), train, val, spec, 0, optimizer_factory(spec))
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 3
    losses = [row["val_loss"] for row in result.history]
    assert min(losses) == losses[result.best_epoch - 1]


def test_non_finite_loss_is_a_clear_error():
    x = torch.full((8, 2), float("nan"))
    spec = TrainSpec(epochs=2)
    with pytest.raises(Exception, match="non-finite"):
        fit(
            mlp([2], 2, [4]),
            Split(x, torch.zeros(8, dtype=torch.long)),
            Split(x, torch.zeros(8, dtype=torch.long)),
            spec,
            0,
            optimizer_factory(spec),
        )


def test_cv_fold_refits_steps_on_fold_training_rows_only(prepared):
    steps = [NormalizeParams(type="normalize")]
    data = fold_data(prepared["raw"], fold=1, folds=3, steps=steps, seed=0).data
    # fold train is standardised with its own statistics: mean 0, std 1 per feature
    assert data["train"].x.mean(0).abs().max() < 1e-4
    assert (data["train"].x.std(0, unbiased=False) - 1).abs().max() < 1e-3
    # the held-out fold and the test part are not (their statistics never entered the fit)
    assert data["val"].x.mean(0).abs().max() > 1e-3
    parts = read_parts(prepared["raw"])
    assert len(data["train"]) + len(data["val"]) == len(parts["train"][0]) + len(parts["val"][0])
    assert len(data["test"]) == len(parts["test"][0])


def test_fold_task_keeps_test_probabilities(prepared):
    spec = TRAIN.model_copy(update={"epochs": 3})
    ref = train_fold.fn(
        prepared["raw"],
        0,
        3,
        [NormalizeParams(type="normalize")],
        MODEL,
        spec,
        0,
        prepared["store"],
    )
    probs = np.load(ref.path / "test_probs.npy")
    assert probs.shape == (114, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert ref.meta["fold"] == 0 and 0 < ref.meta["val"]["accuracy"] <= 1


def test_quantized_linear_weights_are_smaller_and_as_accurate(prepared):
    ref = quantize_model.fn(
        prepared["model"],
        prepared["shards"],
        DynamicInt8Params(type="dynamic_int8"),
        prepared["store"],
    )
    before, after = ref.meta["before"], ref.meta["after"]
    assert ref.meta["linear_weights_smaller_x"] >= 3.5
    assert abs(before["accuracy"] - after["accuracy"]) <= 0.01
    assert after["size_bytes"] < before["size_bytes"]
    reloaded = checkpoint.load(ref.path / "best.pt")["model"]
    assert any("_packed_params" in key for key in reloaded)
    net, _ = load_model(ref)  # the int8 artifact loads back and scores as measured
    test = load_splits(prepared["shards"], ("test",))["test"]
    assert score(net, test, 2)[0]["accuracy"] == after["accuracy"]


def test_pruned_model_reaches_target_sparsity_and_keeps_accuracy(prepared):
    params = L1UnstructuredParams(type="l1_unstructured", sparsity=0.5, finetune_epochs=3)
    ref = prune_model.fn(prepared["model"], prepared["shards"], params, TRAIN, 0, prepared["store"])
    assert ref.meta["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert ref.meta["after"]["accuracy"] >= ref.meta["before"]["accuracy"] - 0.01
    weights = checkpoint.load(ref.path / "best.pt")["model"]
    assert not any(key.endswith("_mask") or key.endswith("_orig") for key in weights)


@pytest.mark.parametrize("finetune_lr,peak", [(0.002, 0.002), (None, 0.001)])
def test_a_prune_fine_tune_with_one_cycle_peaks_at_the_fine_tune_rate(prepared, finetune_lr, peak):
    """The fine-tune's rate (its own, or train.lr / 10) is the one rate its optimizer and its
    schedule read: one_cycle peaks there, not at the main train.lr (0.01 here)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    spec = TrainSpec.model_validate(
        {**TRAIN.model_dump(), "lr": 0.01, "schedule": {"type": "one_cycle"}}
    )
    params = L1UnstructuredParams(
        type="l1_unstructured", sparsity=0.5, finetune_epochs=2, finetune_lr=finetune_lr
    )
    used = []  # the rate of each step the fine-tune's optimizer takes
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"])
    )
    try:
        prune_model.fn(prepared["model"], prepared["shards"], params, spec, 0, prepared["store"])
    finally:
        hook.remove()
    assert len(used) == 2 * 12  # 364 training rows in batches of 32, two epochs
    assert max(used) == pytest.approx(peak, rel=0.01)  # its peak step: 30 % of 24 steps
    assert used[0] < peak / 10 and used[-1] < used[0]  # the cycle: up, then far below


def test_a_prune_fine_tune_trains_with_the_threads_and_precision_its_model_trained_with(prepared):
    """train.threads/precision `auto` resolved once, for the model (model.json's `compute`):
    the fine-tune reuses that choice rather than torch's default thread count."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    recorded = json.loads((prepared["model"].path / "model.json").read_text())["compute"]
    params = L1UnstructuredParams(type="l1_unstructured", sparsity=0.5, finetune_epochs=1)
    threads = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: threads.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    torch.set_num_threads(recorded["threads"] + 1)  # not the choice: the task must set it
    try:
        ref = prune_model.fn(
            prepared["model"], prepared["shards"], params, TRAIN, 0, prepared["store"]
        )
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert threads and set(threads) == {recorded["threads"]}
    table = json.loads((ref.path / "compression.json").read_text())
    assert table["finetune_compute"] == {
        "threads": recorded["threads"],
        "precision": recorded["precision"],
    }


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    from trainflow.engine.data import balanced_weights

    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    assert torch.allclose(balanced_weights(y, 3), torch.tensor(expected, dtype=torch.float32))


def test_weighted_sampler_balances_classes_and_class_weights_change_the_loss():
    from trainflow.engine.data import balanced_weights, batches

    y = torch.tensor([0] * 90 + [1] * 10)
    data = Split(torch.randn(100, 3), y)
    weights = balanced_weights(y, 2)[y]
    drawn = torch.cat(
        [
            b
            for _, b in batches(data, 25, torch.Generator().manual_seed(0), weights)
            for _ in range(1)
        ]
    )
    many = torch.cat(
        [
            torch.cat([b for _, b in batches(data, 25, torch.Generator().manual_seed(s), weights)])
            for s in range(20)
        ]
    )
    assert len(drawn) == 100 and abs(many.float().mean().item() - 0.5) < 0.05
    plain = TrainSpec(epochs=1, lr=0.01)
    runs = {}
    for name, spec in {
        "plain": plain,
        "balanced": plain.model_copy(update={"class_weights": "balanced"}),
    }.items():
        result = fit(mlp([3], 2, [4]), data, data, spec, 0, optimizer_factory(spec))
        runs[name] = result.history[0]["train_loss"]
    assert runs["plain"] != runs["balanced"]


def test_corrupt_training_shard_errors_by_default_and_is_skipped_on_request(tmp_path):
    import shutil

    from trainflow.errors import ArtifactError

    store = str(tmp_path / "store")
    table = ingest.fn(SklearnSource(type="sklearn", dataset="breast_cancer"), store)
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    good = shard.fn(raw, ShardParams(max_samples=100, per_record=50), store)
    # a damaged copy of the artifact (the store's own copy stays intact)
    damaged = tmp_path / "damaged"
    shutil.copytree(good.path, damaged)
    tar = damaged / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    ref = good.model_copy(update={"uri": str(damaged)})
    spec = TRAIN.model_copy(update={"epochs": 2})
    with pytest.raises(ArtifactError, match="train-000001.tar is corrupt or truncated"):
        train_model.fn(ref, MODEL, spec, 0, store)
    with pytest.warns(UserWarning, match="skipping its 100 samples"):
        model = train_model.fn(ref, MODEL, spec.model_copy(update={"on_corrupt": "skip"}), 0, store)
    assert model.meta["samples_lost"] == 100
    assert model.count == good.meta["samples"]["train"] - 100
    good.verify()


def test_without_validation_rows_the_last_epoch_is_kept():
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    spec = TrainSpec(epochs=3)
    empty = Split(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    result = fit(
        mlp([3], 2, [4]), Split(x, (x[:, 0] > 0).long()), empty, spec, 0, optimizer_factory(spec)
    )
    assert result.best_epoch == 3 and result.best_state is not None


def test_training_from_the_streamed_loader_scores_like_in_memory(prepared):
    from trainflow.spec.train import LoaderSpec

    spec = TRAIN.model_copy(
        update={"loader": LoaderSpec(mode="stream", workers=2, shuffle_buffer=200)}
    )
    streamed = train_model.fn(prepared["shards"], MODEL, spec, 0, prepared["store"])
    test = evaluate_model.fn(streamed, prepared["shards"], prepared["store"])
    assert test.meta["accuracy"] >= 0.93
    again = train_model.fn(prepared["shards"], MODEL, spec, 0, prepared["store"] + "-again")
    # same seed and workers: the same batches, so the same weights (up to the float drift that
    # concurrent load can cause in CPU kernels)
    first, second = (checkpoint.load(ref.path / "best.pt")["model"] for ref in (streamed, again))
    assert all(torch.allclose(first[k], second[k], atol=1e-5) for k in first)


def test_the_train_task_resumes_what_an_interrupted_run_left(prepared, tmp_path):
    from trainflow.artifacts import Store
    from trainflow.engine.training import train_into
    from trainflow.tasks.train import load_training_splits, resume_folder

    spec = TRAIN.model_copy(update={"checkpoint_interval_s": 0, "epochs": 8})
    whole = train_model.fn(prepared["shards"], MODEL, spec, 0, str(tmp_path / "a"))
    store = str(tmp_path / "b")
    folder = resume_folder(Store(store), prepared["shards"], MODEL, spec, 0)

    def crash(row):
        if row["epoch"] == 4:
            raise KeyboardInterrupt  # as a cancelled run

    data, _ = load_training_splits(prepared["shards"], "error")
    (tmp_path / "lost").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_into(
            tmp_path / "lost", MODEL, spec, 0, data, [30], ["malignant", "benign"], crash, folder
        )
    assert checkpoint.load(folder / "last.pt")["epoch"] == 3
    resumed = train_model.fn(prepared["shards"], MODEL, spec, 0, store)
    assert not folder.exists()  # consumed
    a, b = (checkpoint.load(ref.path / "best.pt")["model"] for ref in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.meta == whole.meta


def test_a_streamed_run_killed_mid_epoch_resumes_bit_identical(prepared, tmp_path):
    """The streamed loader's epoch is replayed up to the saved batch position (its shuffle
    and augmentation are seeded per epoch), then training continues as if never stopped."""
    from trainflow.tasks.train import load_training_splits

    spec = TrainSpec.model_validate(
        {
            **TRAIN.model_dump(),
            "epochs": 3,
            "checkpoint_every_steps": 4,
            "checkpoint_interval_s": 0,
            "augment": {"gaussian_noise": 0.05},
            "loader": {"mode": "stream", "workers": 0, "shuffle_buffer": 100},
        }
    )
    data, _ = load_training_splits(prepared["shards"], "error", spec.loader)
    assert not isinstance(data["train"], Split)

    def train(out, **kwargs):
        torch.manual_seed(0)
        net = mlp([30], 2, [32], dropout=0.2)
        out.mkdir()
        return net, fit(
            net, data["train"], data["val"], spec, 0, optimizer_factory(spec), out, **kwargs
        )

    full, full_result = train(tmp_path / "full")
    per_epoch = full_result.history[0]["steps"]

    def kill():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), after_step(per_epoch + 8, kill):  # epoch 2, 8 in
        train(tmp_path / "killed")
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["position"]["batch"] == 8
    resumed, result = train(tmp_path / "resumed", resume=tmp_path / "killed" / "last.pt")
    assert all(
        torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values())
    )
    assert result.history == full_result.history


def test_evaluation_reports_robust_accuracy_next_to_clean_accuracy(prepared, tmp_path):
    spec = TrainSpec.model_validate(
        {**TRAIN.model_dump(), "epochs": 8, "adversarial": {"method": "fgsm", "epsilon": 0.5}}
    )
    store = str(tmp_path / "store")
    model = train_model.fn(prepared["shards"], MODEL, spec, 0, store)
    test = evaluate_model.fn(model, prepared["shards"], store)
    assert test.meta["accuracy"] >= 0.9
    assert 0.0 < test.meta["robust_accuracy"] < test.meta["accuracy"]
    plain = evaluate_model.fn(prepared["model"], prepared["shards"], store)
    assert "robust_accuracy" not in plain.meta  # only models trained against an attack


def test_multi_task_csv_through_shards_training_folds_and_quantization(tmp_path):
    """An auxiliary target column travels from the CSV through the steps and shards into a
    second head; evaluation, CV folds and quantization use the main head."""
    import polars as pl

    from trainflow.tasks.ingest import FileSource

    g = np.random.default_rng(0)
    x = g.normal(size=(400, 5))
    pl.DataFrame(
        {
            **{f"f{i}": x[:, i] for i in range(5)},
            "label": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),
            "segment": np.where(x[:, 2] > 0, "north", "south"),
        }
    ).write_csv(tmp_path / "data.csv")
    store = str(tmp_path / "store")
    source = FileSource(
        type="csv", path=str(tmp_path / "data.csv"), target="label", aux_targets=["segment"]
    )
    table = ingest.fn(source, store)
    assert "segment" not in table.data_schema.get("features", [])
    raw = split.fn(table, SplitParams(type="split"), 0, store)
    shards = shard.fn(
        normalize.fn(raw, NormalizeParams(type="normalize"), 0, store),
        ShardParams(max_samples=128),
        store,
    )
    assert shards.data_schema["aux_targets"] == {"segment": ["north", "south"]}
    spec = TrainSpec(lr=0.01, batch_size=32, epochs=15, task_weights={"segment": 0.5})
    model = train_model.fn(shards, MODEL, spec, 0, store)
    rows = [json.loads(line) for line in (model.path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_segment_accuracy"] > 0.85
    assert evaluate_model.fn(model, shards, store).meta["accuracy"] > 0.85
    fold = train_fold.fn(raw, 0, 2, [NormalizeParams(type="normalize")], MODEL, spec, 0, store)
    fold_rows = (fold.path / "metrics.jsonl").read_text().splitlines()
    assert "val_segment_accuracy" in json.loads(fold_rows[-1])
    quantized = quantize_model.fn(model, shards, DynamicInt8Params(type="dynamic_int8"), store)
    assert quantized.meta["after"]["accuracy"] > 0.85
