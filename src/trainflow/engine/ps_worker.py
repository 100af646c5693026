"""One rank of a parameter-server training (`python -m trainflow.engine.ps_worker job.json`,
started by torchrun from engine.ddp.launch): joins the RPC group (TensorPipe, torchrun's
env:// rendezvous). Rank 0 is the server (engine.param_server.train_server): it reads the
data, trains with the trainers it builds on the other ranks, and writes result.json for the
task; the others serve its calls until it is done. A failure leaves rank<N>.err beside the
job, as a DDP rank's does (a trainer's error reaches the server and is written there)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed.rpc as rpc

from trainflow.engine.ddp import World
from trainflow.engine.ddp_worker import read_data, watch_parent
from trainflow.engine.param_server import train_server
from trainflow.engine.state import load_resumable
from trainflow.errors import TrainflowError

RPC_TIMEOUT_S = 600  # one call: a gradient of a large batch on a loaded machine, a trainer's data


def serve(job: dict) -> None:
    """Rank 0: train, and write what the train task reads back (engine.ddp.launch)."""
    data = read_data(job, World(0, int(os.environ["WORLD_SIZE"])))
    resume = load_resumable(Path(job["resume_dir"]) / "last.pt") if job["resume"] else None
    result = train_server(Path(job["staging"]), job, data, resume)
    fields = ("history", "best_epoch", "stopped_early", "batch_size")
    out = {name: getattr(result, name) for name in fields}
    (Path(job["work"]) / "result.json").write_text(json.dumps(out))


def main(path: str) -> None:
    watch_parent()
    job = json.loads(Path(path).read_text())
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # torchrun's
    torch.set_num_threads(job["threads"])
    # one machine (the spec refuses more nodes): TensorPipe listens on the loopback only
    os.environ["TP_SOCKET_IFNAME"] = "lo"
    try:
        if job["streamed"]:
            raise TrainflowError(
                "train.distributed parameter_server reads the training split into memory on "
                "every rank: set train.loader.mode: memory"
            )
        options = rpc.TensorPipeRpcBackendOptions(rpc_timeout=RPC_TIMEOUT_S)
        rpc.init_rpc(f"rank{rank}", rank=rank, world_size=size, rpc_backend_options=options)
        if rank == 0:
            serve(job)
        rpc.shutdown()  # (waits for every rank: the trainers stay until the server is done)
    except BaseException:
        lines = traceback.format_exc().strip().splitlines()[-8:]
        (Path(job["work"]) / f"rank{rank}.err").write_text("\n".join(lines) + "\n")
        raise


if __name__ == "__main__":
    main(sys.argv[1])
