"""train.qat: quantization-aware training inside the one loop.

At the start of qat.start_epoch the state's model is swapped for its fake-quantized form
(torch.ao FX prepare_qat_fx with static int8's qconfig: trainflow.compress.prepare_qat). The
prepared network shares the fp32 network's parameters, so the optimizer and its moments carry
on; from then on the checkpoint's `model` piece is the prepared network's state (its ranges and
fake-quant switches included), and a resume past the switch prepares the fresh network before
loading it. Best-epoch tracking and early stopping's patience restart at the switch (only a
QAT epoch can be converted); early stopping before it brings the switch forward instead.
best.pt keeps the fp32 network's keys (evaluate, export and the package read them) and holds
the prepared state under "qat", which the quantize step converts (tasks/quantize.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import torch
from torch import nn

from trainflow import compress
from trainflow.engine.setup import Setup
from trainflow.engine.state import Record, TrainingState, load_resumable
from trainflow.errors import TrainflowError
from trainflow.spec.qat import QatSpec


class Observing:
    """A forward pre-hook on the prepared network: its observers (the ranges) update only
    while it trains and before qat.freeze_observers_epoch, so validation rows never reach the
    model; switched only when that changes (a walk of the modules, not one per batch)."""

    def __init__(self) -> None:
        self.allowed = True
        self.now: bool | None = None  # unknown until the first forward (a resume's too)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        on = module.training and self.allowed
        if on != self.now:
            quantization = torch.ao.quantization
            module.apply(quantization.enable_observer if on else quantization.disable_observer)
            self.now = on


def prepared(model: nn.Module) -> bool:
    return isinstance(getattr(model, "qat_observing", None), Observing)


def observing(model: nn.Module) -> Observing:
    hook = model.qat_observing
    assert isinstance(hook, Observing)
    return hook


def prepare(model: nn.Module, spec: QatSpec) -> nn.Module:
    """The fake-quantized form of `model`, with the names of the fp32 network's state it
    shares (`fp32_names`: prepared key -> fp32 key, by tensor identity)."""
    net = compress.prepare_qat(model, spec.backend)
    own = {id(t): name for name, t in model.state_dict(keep_vars=True).items()}
    shared = {name: own.get(id(t)) for name, t in net.state_dict(keep_vars=True).items()}
    names = {name: fp32 for name, fp32 in shared.items() if fp32 is not None}
    if len(names) != len(own):  # a layer prepare_qat_fx copied instead of shared
        raise TrainflowError(
            "train.qat: fake quantization did not keep this network's parameters "
            f"({len(own) - len(names)} of {len(own)} tensors copied): remove train.qat"
        )
    hook = Observing()
    net.register_forward_pre_hook(hook)
    net.__dict__.update(fp32_names=names, qat_observing=hook)  # (plain attributes)
    return net


def at_epoch(run: Setup, state: TrainingState, epoch: int) -> Setup:
    """The epoch's setup: from qat.start_epoch on (or the epoch after early stopping ended
    the fp32 epochs, if sooner), the state trains the prepared network (the switch made once),
    batch norm and observers frozen from their epochs."""
    spec = run.spec.qat
    if spec is None:
        return run
    if not prepared(state.model):
        if epoch < spec.start_epoch and not run.stopping.stops(state.run.waited):
            return run
        state.model = prepare(state.model, spec)
        state.run = Record(history=state.run.history, step_rows=state.run.step_rows)
    model = state.model
    if spec.freeze_bn_epoch is not None and epoch >= spec.freeze_bn_epoch:
        model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)  # (a flag: set each epoch)
    observing(model).allowed = (
        spec.freeze_observers_epoch is None or epoch < spec.freeze_observers_epoch
    )
    # one process, not compiled (spec.qat refuses the rest): the runner is the model itself
    return run if run.runner is model else dataclasses.replace(run, runner=model)


def resumed(run: Setup, state: TrainingState, source: Path | dict) -> Path | dict:
    """A checkpoint written past the switch holds the prepared network's state: the fresh
    network is prepared first, so it loads into the same form."""
    spec = run.spec.qat
    if spec is None:
        return source
    saved = source if isinstance(source, dict) else load_resumable(source)
    fp32 = set(state.model.state_dict())
    if not prepared(state.model) and set(saved["model"]) != fp32:  # fake quant's keys
        state.model = prepare(state.model, spec)
    return saved


def may_stop(run: Setup, state: TrainingState) -> bool:
    """Early stopping ends a train.qat run only once it trains fake-quantized; before, it
    ends the fp32 epochs, and fake quantization begins at the next (at_epoch)."""
    return run.spec.qat is None or prepared(state.model)


def split(run: Setup, state: TrainingState, best_state: dict) -> tuple[dict, dict]:
    """best.pt's pieces: the best weights under the fp32 network's keys, and (under "qat")
    the prepared state the quantize step converts; {} without train.qat."""
    spec = run.spec.qat
    if spec is None:
        return best_state, {}
    if not prepared(state.model):
        raise TrainflowError(
            f"train.qat.start_epoch is {spec.start_epoch} and training ended after epoch "
            f"{state.epoch} (train.max_steps), before fake quantization began: lower "
            "qat.start_epoch or raise train.max_steps"
        )
    names = cast(dict, state.model.__dict__["fp32_names"])
    return {fp32: best_state[name] for name, fp32 in names.items()}, {"qat": best_state}
