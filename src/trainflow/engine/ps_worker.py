"""One rank of a parameter-server training (`python -m trainflow.engine.ps_worker job.json`,
started by torchrun from engine.ddp.launch): joins a gloo process group (torchrun's env://
rendezvous) whose point-to-point sends carry only flat tensors (engine.ps_wire: no pickle).
Rank 0 is the server (engine.param_server.train_server): it reads the data, trains with the
trainers on the other ranks, and writes result.json for the task; each other rank builds a
Trainer and answers the server's commands until told to stop. A failure leaves rank<N>.err
beside the job, as a DDP rank's does (the first one written is the one the task reports)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from trainflow.engine import ps_wire
from trainflow.engine.ddp import World
from trainflow.engine.ddp_worker import read_data, reported, watch_parent
from trainflow.engine.param_server import Trainer, train_server
from trainflow.engine.state import load_resumable
from trainflow.errors import TrainflowError

# the longest wait for one message: a gradient of a large batch on a loaded machine, the
# server's data reading and validation while the trainers wait
WAIT_S = 600


def serve(job: dict, data: dict, link: ps_wire.Link) -> None:
    """Rank 0: train, and write what the train task reads back (engine.ddp.launch)."""
    resume = load_resumable(Path(job["resume_dir"]) / "last.pt") if job["resume"] else None
    result = train_server(Path(job["staging"]), job, data, resume, link)
    fields = ("history", "best_epoch", "stopped_early", "batch_size")
    out = {name: getattr(result, name) for name in fields}
    (Path(job["work"]) / "result.json").write_text(json.dumps(out))


def answer(job: dict, data: dict, link: ps_wire.Link) -> None:
    """A trainer: build its network and rows, then compute what the server asks for (an
    epoch's batch order, a batch's gradient at the weights sent) until it says stop."""
    trainer = Trainer(job, data, link.rank, link.size - 1)
    order = torch.Generator().get_state()  # (its size: the server sends its generator's)
    weights = ps_wire.size(trainer.net.state_dict().values())
    while True:
        command, index, epoch = link.command()
        if command == ps_wire.STOP:
            return
        if command == ps_wire.EPOCH:
            trainer.start_epoch(epoch, link.payload(order.numel()))
        elif command == ps_wire.GRADIENT:
            link.answer(trainer.net, trainer.gradient(index, link.payload(weights)))
        else:
            raise TrainflowError(f"parameter server: unknown command {command} from rank 0")


def main(path: str) -> None:
    watch_parent()
    job = json.loads(Path(path).read_text())
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # torchrun's
    torch.set_num_threads(job["threads"])
    with reported(job, rank):  # (its gloo group is ps_wire.Link's own, not the default one)
        if job["streamed"]:
            raise TrainflowError(
                "train.distributed parameter_server reads the training split into memory on "
                "every rank: set train.loader.mode: memory"
            )
        data = read_data(job, World(rank, size))
        link = ps_wire.Link(WAIT_S)
        if rank == 0:
            serve(job, data, link)
        else:
            answer(job, data, link)


if __name__ == "__main__":
    main(sys.argv[1])
