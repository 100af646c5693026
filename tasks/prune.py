"""Prune: global L1 unstructured pruning to a target sparsity, fine-tuned, made permanent.

Like quantize's, the table holds sizes and accuracies only (CPU latency is measured on every
run by `measure_latency`, outside the content-addressed artifact)."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from trainflow import channel_prune, compress, registry
from trainflow.artifacts import ArtifactRef, Store
from trainflow.caching import CACHED
from trainflow.engine import checkpoint, compute
from trainflow.engine.loop import fit
from trainflow.engine.model_folder import WEIGHTS, describe, load_model
from trainflow.engine.training import optimizer_factory
from trainflow.logs import Progress
from trainflow.spec.compress import GateSpec
from trainflow.spec.structured_prune import STRUCTURED
from trainflow.spec.train import TrainSpec
from trainflow.tasks.quantize import gate_value, measure
from trainflow.tasks.train import load_splits


def finetune_spec(train: TrainSpec, params: Any, used: dict | None) -> TrainSpec:
    """The train section of the fine-tune: its epochs, no early stopping or epoch
    checkpoints, its rate as train.lr, the one rate the optimizer and the schedule (a
    one_cycle's peak, a cyclic's top) both read, and the threads and precision the model's
    training resolved `auto` to (model.json's `compute`), so the fine-tune needs no probe."""
    threads = used["threads"] if used and train.threads == "auto" else train.threads
    precision = used["precision"] if used and train.precision == "auto" else train.precision
    return train.model_copy(
        update={
            "epochs": params.finetune_epochs,
            "early_stopping": None,
            "checkpoint_every": 0,
            "lr": params.finetune_lr or train.lr / 10,
            "threads": 1 if threads == "auto" else threads,  # a model from before the probe
            "precision": "fp32" if precision == "auto" else precision,
            "qat": None,  # train.qat: the pruned network fine-tunes in fp32 (its own epochs)
        }
    )


@task(name="prune", **CACHED)
def prune_model(
    model: ArtifactRef,
    shards: ArtifactRef,
    params: Any,
    train: TrainSpec,
    seed: int,
    store: str,
    gate: GateSpec | None = None,
) -> ArtifactRef:
    """Prune the trained `model`; with a `gate`, the verdict in the artifact's meta."""
    net, info = load_model(model)
    data = load_splits(shards)
    classes = len(info["classes"])
    before = measure(net, data["test"], classes)
    baseline = gate_value(gate, net, data["val"], classes) if gate else None  # pruning is in place
    tune = finetune_spec(train, params, info.get("compute"))
    # the fine-tune's epochs over all its rounds (a structured pruner fine-tunes after each step)
    epochs = params.finetune_epochs * (params.steps if params.type in STRUCTURED else 1)
    progress, tuned = Progress("prune-progress", f"prune: {epochs} fine-tune epochs"), [0]

    def moved(_row: dict) -> None:
        tuned[0] += 1
        progress.update(tuned[0] / max(epochs, 1))

    def finetune(network: Any) -> None:
        assert isinstance(tune.threads, int)  # finetune_spec resolved `auto`
        with compute.threads_set(tune.threads):
            build = optimizer_factory(tune)
            fit(network, data["train"], data["val"], tune, seed, build, on_epoch=moved)

    shape, structured = info["input_shape"], params.type in STRUCTURED
    if structured:  # whole units removed, smaller layers (trainflow.channel_prune)
        sizes = channel_prune.sizes(net, shape)
        net, info["model"] = registry.PRUNERS[params.type].impl(
            net, info["model"], shape, params, finetune
        )
    else:
        targets = registry.PRUNERS[params.type].impl(net, params)
        if params.finetune_epochs:
            finetune(net)
        compress.make_permanent(targets)
    net = net.cpu().eval()
    progress.update(1.0)  # (no fine-tune: pruned in one go)
    after = measure(net, data["test"], classes)
    table = {
        "before": before,
        "after": after,
        "sparsity": compress.sparsity(net),
        "target_sparsity": params.sparsity,
        "finetune_epochs": params.finetune_epochs,
        "finetune_compute": (
            {"threads": tune.threads, "precision": tune.precision}
            if params.finetune_epochs
            else None
        ),
    }
    if structured:  # fewer parameters and FLOPs; the zero-weight sparsity stays ~0
        pruned = channel_prune.sizes(net, shape)
        table.update(steps=params.steps, structured={"before": sizes, "after": pruned})
    if gate and baseline is not None:  # absent without a gate: an ungated artifact is unchanged
        value = gate_value(gate, net, data["val"], classes)
        table["gate"] = compress.gate_decision(gate, baseline, value)
    target = Store(store)
    with target.writer("model") as staging:
        checkpoint.save(staging / WEIGHTS, {"model": net.state_dict()})
        describe(
            staging,
            info["model"],
            info["input_shape"],
            info["classes"],
            pruned=params.type,
            sparsity=table["sparsity"],
        )
        (staging / "compression.json").write_text(json.dumps(table, indent=1, sort_keys=True))
        return target.commit(
            staging,
            "model",
            schema=model.data_schema,
            meta={"compression": "prune", "type": params.type, **table},
        )
