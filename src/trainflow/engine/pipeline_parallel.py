"""Model parallelism (train.distributed: pipeline) on torch.distributed.pipelining: the model
cut into one stage per rank, each global batch run through the stages as micro-batches.

- The cut: a model whose top level is a plain sequence of layers (mlp, cnn) is cut into
  world-size contiguous parts balanced by parameter count, each holding at least one layer
  with parameters (the layers without any, activations and flattening, ride with their
  neighbours). `check` refuses, before any rank starts, a model that is not such a sequence
  or has fewer layers with parameters than there are stages.
- A step: every rank draws the one-process run's global batch (the same generator); stage 0
  feeds its rows, the last stage computes the loss (engine.data.weighted_loss, the one loop's
  loss) of each micro-batch, scaled by the micro-batch's share of the batch's loss weight, so
  the micro-batch gradients add up to the one-process gradient of the batch. Each rank then
  steps its own optimizer over its own stage's parameters.
- Micro-batches: train.batch_size is cut into `microbatches` equal parts; an epoch's last,
  smaller batch into the most equal parts (at most `microbatches`) its rows divide into, since
  a stage's receive buffers have one shape per schedule (one schedule is built per shape;
  one of fewer micro-batches than stages runs GPipe's order: 1F1B needs one per stage).
- Stage shapes are given to PipelineStage up front (static mode), measured by one row through
  the whole model before it is cut: no shape inference between the ranks at run time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from trainflow.engine.data import weighted_loss
from trainflow.engine.loop import EpochBatches, FitResult, epoch_row
from trainflow.engine.model_folder import build_model
from trainflow.engine.outputs import Outputs
from trainflow.engine.setup import Setup
from trainflow.engine.state import Position, TrainingState
from trainflow.engine.update import Update
from trainflow.errors import SpecError, TrainflowError

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def holds_parameters(layer: nn.Module) -> bool:
    return any(True for _ in layer.parameters())


def check(model: Any, stages: int, schema: dict, streamed: bool) -> None:
    """Refuse a model the pipeline cannot cut into `stages` stages (one SpecError naming the
    model, its layer count and the stage count), and data it cannot feed, before any rank
    starts; `schema`: the shards' data schema."""
    kind = model.type
    if streamed:
        raise TrainflowError(
            "strategy pipeline draws every global batch on the first and last stage alike, "
            "from the training split in memory: set train.loader.mode: memory"
        )
    if schema.get("aux_targets"):
        problem = (
            f"the data has auxiliary targets {sorted(schema['aux_targets'])}, and their "
            "heads branch off the model's trunk: strategy pipeline cuts a plain sequence "
            "of layers; use strategy: ddp"
        )
        raise SpecError("train.distributed", [("data.source.aux_targets", problem)])
    if model.share:
        problem = (
            f"model {kind} ties parameters across layers (model.share), and pipeline stages "
            "hold disjoint parameters: drop model.share or use strategy: ddp"
        )
        raise SpecError("train.distributed", [("model.share", problem)])
    with torch.device("meta"):  # the structure and parameter counts only, no memory
        net = build_model(model, schema["input_shape"], len(schema["classes"]))
    if type(net) is not nn.Sequential:
        problem = (
            f"strategy pipeline cuts a model whose top level is a plain sequence of layers "
            f"(mlp, cnn); model {kind} builds a {type(net).__name__} (recurrent, attention "
            "or skip connections pass more than one tensor between its parts): use "
            "strategy: ddp for it"
        )
        raise SpecError("train.distributed", [("model.type", problem)])
    layers = sum(holds_parameters(layer) for layer in net)
    if layers < stages:
        problem = (
            f"strategy pipeline has {stages} stages (one per rank) and model {kind} has "
            f"{layers} top-level layer(s) with parameters: each stage needs one. Lower "
            f"distributed.nproc_per_node to at most {layers}, or give the model more layers"
        )
        raise SpecError("train.distributed", [("train.distributed.nproc_per_node", problem)])


def cut(net: nn.Sequential, stages: int) -> list[range]:
    """Contiguous parts of `net`'s layers, one per stage, whose largest parameter count is
    the smallest possible; each part holds at least one layer with parameters."""
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in net]
    weighted = [i for i, layer in enumerate(net) if holds_parameters(layer)]
    # cut points go between consecutive parameterized layers (the others join the part
    # before them; the leading ones join the first part)
    cost: dict[tuple[int, int], tuple[int, list[int]]] = {}

    def best(first: int, parts: int) -> tuple[int, list[int]]:
        """(largest part, cut indices into `weighted`) for weighted[first:] in `parts`."""
        if (first, parts) in cost:
            return cost[first, parts]
        answer: tuple[int, list[int]]
        if parts == 1:
            answer = (sum(sizes[i] for i in weighted[first:]), [])
        else:
            answer = (2**62, [])
            for end in range(first + 1, len(weighted) - parts + 2):
                rest, cuts = best(end, parts - 1)
                largest = max(sum(sizes[i] for i in weighted[first:end]), rest)
                if largest < answer[0]:
                    answer = (largest, [end, *cuts])
        cost[first, parts] = answer
        return answer

    _, cuts = best(0, stages)
    starts = [0, *(weighted[c] for c in cuts), len(net)]
    return [range(a, b) for a, b in zip(starts, starts[1:])]


def stage_module(net: nn.Sequential, part: range) -> nn.Sequential:
    """The layers of one part, under their names in the whole model (so parameter names,
    lr_multipliers' globs and state-dict keys read as in a one-process run)."""
    return nn.Sequential(OrderedDict((str(i), net[i]) for i in part))


@torch.no_grad()
def boundary_shapes(net: nn.Sequential, parts: list[range], input_shape: list[int]) -> list:
    """The per-row shape entering each part and leaving the last: one row through the whole
    model in eval mode (no dropout draw, batch norm's statistics untouched)."""
    was = net.training
    net.eval()
    x, shapes = torch.zeros(1, *input_shape), [list(input_shape)]
    for part in parts:
        for i in part:
            x = net[i](x)
        shapes.append(list(x.shape[1:]))
    net.train(was)
    return shapes


def micro(rows: int, most: int) -> int:
    """How many equal micro-batches a batch of `rows` runs as: the most, up to `most`."""
    return next(m for m in range(min(most, rows), 0, -1) if rows % m == 0)


class Pipeline:
    """This rank's stage and the schedules (one per micro-batch shape) that run a global batch
    through all the stages: forward and backward, gradients left in the stage's parameters."""

    def __init__(
        self,
        stage: nn.Sequential,
        index: int,
        shapes: list,
        microbatches: int,
        schedule: str,
        update: Update,
    ):
        self.stage, self.index, self.count = stage, index, len(shapes) - 1
        self.shapes, self.microbatches = shapes, microbatches
        self.kind, self.update = schedule, update  # update: the device and the loss's knobs
        self.schedules: dict[tuple[int, int], Any] = {}
        self.total = torch.ones(())  # the running batch's loss weight (last stage)

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def schedule_for(self, parts: int, rows: int):
        """The schedule running `parts` micro-batches of `rows` rows (built once)."""
        key = (parts, rows)
        if key not in self.schedules:
            shape_in, shape_out = self.shapes[self.index], self.shapes[self.index + 1]
            device = self.update.device
            stage = PipelineStage(
                self.stage,
                self.index,
                self.count,
                device,
                # (requires_grad: the gradient flows back across the stage boundaries)
                input_args=torch.empty(rows, *shape_in, device=device).requires_grad_(
                    not self.first
                ),
                output_args=torch.empty(rows, *shape_out, device=device).requires_grad_(),
            )
            # 1F1B needs a micro-batch per stage at least: a smaller last batch that splits
            # into fewer runs GPipe's order (the same gradients, another interleaving).
            # scale_grads off: the loss of each micro-batch is already scaled by its share.
            kind = self.kind if parts >= self.count else "gpipe"
            self.schedules[key] = SCHEDULES[kind](
                stage, parts, loss_fn=self.loss, scale_grads=False
            )
        return self.schedules[key]

    def weight(self, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """What weighted_loss normalizes by: the rows' class weights times their sample
        weights (1 each without), summed."""
        cw = self.update.class_weights
        each = cw[y] if cw is not None else torch.ones(len(y), device=y.device)
        return (each * w if w is not None else each).sum()

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A micro-batch's loss times its share of the batch's weight: the shares' sum is the
        batch's loss, so the micro-batch gradients sum to the one-process gradient."""
        y, w = target[:, 0].long(), target[:, 1].float() if target.shape[1] > 1 else None
        update = self.update
        mean = weighted_loss(out, y, update.class_weights, w, update.label_smoothing)
        return mean * (self.weight(y, w) / self.total)

    def step(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Run one global batch through the stages; the batch's mean loss on the last stage
        (0 on the others)."""
        device = self.update.device
        parts = micro(len(y), self.microbatches)
        schedule = self.schedule_for(parts, len(y) // parts)
        args = (x.to(device),) if self.first else ()
        if not self.last:
            schedule.step(*args)
            return torch.zeros((), device=device)
        y = y.to(device)
        w = w.to(device) if w is not None else None
        self.total = self.weight(y, w)
        columns = [y.double()[:, None]] + ([w.double()[:, None]] if w is not None else [])
        losses: list[torch.Tensor] = []
        schedule.step(*args, target=torch.cat(columns, 1), losses=losses)
        return torch.stack(losses).sum().detach()


def gather(net: nn.Sequential, parts: list[range], rank: int) -> None:
    """Every stage's weights and buffers into rank 0's copy of the whole model (rank 0 holds
    it to evaluate and write; the other ranks hold their stage only). Layers are named as in
    the whole model on every rank (stage_module)."""
    with torch.no_grad():
        for owner, part in enumerate(parts[1:], 1):
            if rank not in (0, owner):
                continue
            for i in part:
                for tensor in net.get_submodule(str(i)).state_dict().values():
                    if rank == 0:
                        dist.recv(tensor, src=owner)
                    else:
                        dist.send(tensor.contiguous(), dst=0)


def near() -> torch.device:
    """Where a collective's tensors live: NCCL reduces CUDA tensors only (this rank's
    device, set from LOCAL_RANK by the worker), gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shared(values: list[float], src: int) -> list[float]:
    """`values` as rank `src` has them, on every rank (float64)."""
    told = torch.tensor(values, dtype=torch.float64, device=near())
    dist.broadcast(told, src)
    return told.tolist()


def stage_report(stage: nn.Sequential, optimizer: torch.optim.Optimizer, part: range) -> list:
    """Each rank's layers, the parameters its stage holds and those its optimizer steps."""
    held = sum(p.numel() for p in stage.parameters())
    stepped = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    mine = torch.tensor([part.start, part.stop, held, stepped], dtype=torch.int64, device=near())
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    keys = ("first_layer", "end_layer", "parameters", "optimized")
    return [dict(zip(keys, (int(v) for v in row.tolist()))) for row in every]


def fit(
    run: Setup,
    state: TrainingState,
    pipe: Pipeline,
    whole: nn.Sequential | None,
    parts: list[range],
    outputs: Outputs | None,
    save: Callable[[bool], None],
) -> FitResult:
    """The epochs of engine.loop.fit, through the pipeline (from the state's next epoch):
    each epoch trains every stage, gathers the weights into rank 0's whole model, which
    validates it with the one loop's epoch row, keeps the best weights and writes; rank 0's
    plateau metric and early-stopping decision reach every rank. `whole` and `outputs`: rank
    0's, None on the other ranks; `save(last)` checkpoints each rank's state at an epoch's
    end (`last`: the run's)."""
    result = FitResult(batch_size=run.batch_size)
    for epoch in range(state.next_epoch, run.spec.epochs + 1):
        began = time.perf_counter()
        train_loss = train_epoch(run, state, pipe, epoch)
        state.position = Position()  # between epochs (a checkpoint now resumes the next)
        gather(whole or pipe.stage, parts, pipe.index)
        told = [0.0, 0.0]
        if whole is not None:
            row = epoch_row(run, state, train_loss)
            state.run.history.append(row)
            state.run.observe(run.stopping.score(row), epoch, whole, run.stopping.min_delta)
            stops = run.stopping.stops(state.run.waited)
            told = [row[run.plateau_monitor] if state.plateau else 0.0, float(stops)]
        value, stop = shared(told, 0)
        if state.plateau:
            state.plateau.step(value)
        if outputs is not None:
            outputs.after_epoch(row, time.perf_counter() - began)
        save(False)
        if stop:
            result.stopped_early = True
            break
        if run.update.done(state.steps):  # train.max_steps reached
            break
    save(True)
    if whole is not None:
        finish(state, whole, result, outputs)
    return result


def finish(
    state: TrainingState, whole: nn.Module, result: FitResult, outputs: Outputs | None
) -> None:
    """Rank 0: the best weights (the last epoch's without a validation score), best.pt."""
    record = state.run
    if record.best_state is None:  # no finite validation score (e.g. no validation rows)
        record.best_epoch = len(record.history)
        record.best_state = {k: v.detach().clone().cpu() for k, v in whole.state_dict().items()}
    result.best_state, result.best_epoch = record.best_state, record.best_epoch
    result.history = record.history
    if outputs is not None:
        outputs.finish(record.best_state, record.best_epoch)


def train_epoch(run: Setup, state: TrainingState, pipe: Pipeline, epoch: int) -> float:
    """One epoch of global batches through the pipeline, one optimizer step of each stage
    per batch; the epoch's mean training loss (the last stage's, on every rank)."""
    state.epoch = epoch
    state.position = position = Position(order_rng=state.generator.get_state())
    pipe.stage.train()
    state.optimizer.zero_grad(set_to_none=True)
    augment = run.augment(epoch) if pipe.first else None  # (only stage 0 reads the rows)
    batches = EpochBatches(run.batches(epoch, state.generator), augment, None, state)
    for x, y, w in batches:
        if run.update.done(state.steps):
            break
        loss = pipe.step(x, y, w)
        position.batch += 1
        position.loss_sum = position.loss_sum + loss.cpu() * len(y)
        position.seen += len(y)
        run.update.step(state)  # this stage's optimizer and schedule
    total, seen = shared([position.loss_sum.item(), position.seen], pipe.count - 1)
    position.loss_sum, position.seen = torch.tensor(total), int(seen)
    return position.mean_loss()  # (a non-finite loss stops every rank alike)
