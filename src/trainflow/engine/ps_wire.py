"""The parameter server's messages (engine.param_server, engine.ps_worker): flat tensors sent
by torch.distributed point-to-point (gloo send/recv, in a group of their own at torchrun's
rendezvous), so only raw bytes cross between ranks and nothing is ever unpickled. Both
sides build the same network from the same job, so the layout of every message is known
from it: a tensor travels as its bytes, in state_dict (weights) or parameters-then-buffers
(a reply) order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

EPOCH, GRADIENT, STOP = 1, 2, 3  # the server's commands: a header's first field
# The server's messages to a trainer (a header, then its payload) go on one tag, in order;
# the trainers' replies on another, so a reply received from any rank (async) is a reply.
TO_TRAINER, TO_SERVER = 1, 2


def raw(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The tensors' bytes one after another (a copy: the server steps while it is out)."""
    parts = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def size(tensors: Iterable[torch.Tensor]) -> int:
    """The bytes `raw` makes of the tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def fill(tensors: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy `flat`'s bytes into the tensors, in order (raw's inverse); a clone of each slice
    starts at offset 0, which viewing bytes as a wider dtype needs."""
    at = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel() * t.element_size()
            t.copy_(flat[at : at + n].clone().view(t.dtype).reshape(t.shape))
            at += n
    if at != flat.numel():
        raise ValueError(f"a parameter-server message of {flat.numel()} bytes, expected {at}")


class Link:
    """This rank's gloo group for the parameter server's messages, joined at torchrun's env://
    rendezvous. It is a process group of its own, not torch's default one: the one-process
    code the ranks run (engine.setup's World.current) then sees no distributed world, as under
    the previous RPC transport, and wraps nothing in DDP."""

    def __init__(self, timeout_s: int):
        self.store, self.rank, self.size = next(dist.rendezvous("env://"))
        prefixed = dist.PrefixStore("trainflow-parameter-server", self.store)
        wait = timedelta(seconds=timeout_s)
        # (Any: torch's stubs omit the send/recv that the gloo backend has)
        self.group: Any = dist.ProcessGroupGloo(prefixed, self.rank, self.size, wait)

    def to_all(
        self,
        trainers: Sequence[int],
        command: int,
        index: int = 0,
        epoch: int = 0,
        payload: torch.Tensor | None = None,
    ) -> None:
        """The server's: send a command (and its payload) to each trainer, all at once, and
        wait until sent (the trainers wait for it in `command`)."""
        header = torch.tensor([command, index, epoch], dtype=torch.int64)
        works = []
        for dst in trainers:
            works.append(self.group.send([header], dst, TO_TRAINER))
            if payload is not None:
                works.append(self.group.send([payload], dst, TO_TRAINER))
        for work in works:
            work.wait()

    def command(self) -> tuple[int, int, int]:
        """A trainer's next command from the server: (command, batch index, epoch)."""
        header = torch.empty(3, dtype=torch.int64)
        self.group.recv([header], 0, TO_TRAINER).wait()
        kind, index, epoch = header.tolist()
        return kind, index, epoch

    def payload(self, nbytes: int) -> torch.Tensor:
        """A trainer's: the payload that follows a header, of the size both sides know."""
        flat = torch.empty(nbytes, dtype=torch.uint8)
        self.group.recv([flat], 0, TO_TRAINER).wait()
        return flat

    def answer(self, net: nn.Module, result: dict) -> None:
        """A trainer's: send the server its result (Trainer.gradient) as one message."""
        self.group.send([reply(net, result)], 0, TO_SERVER).wait()

    def receive(self, net: nn.Module, src: int | None) -> tuple[int, dict]:
        """The server's: the next reply from trainer `src` (None: from whichever sends
        first), as (its rank, Trainer.gradient's dict)."""
        layout = reply_layout(net)
        flat = torch.empty(size(layout), dtype=torch.uint8)
        if src is None:
            work = self.group.recv_anysource([flat], TO_SERVER)
            work.wait()
            src = work.source_rank()
        else:
            self.group.recv([flat], src, TO_SERVER).wait()
        return src, read_reply(net, layout, flat)


def reply_layout(net: nn.Module) -> list[torch.Tensor]:
    """Empty tensors shaped as a reply: [rows, one has-gradient flag per parameter] (int64),
    the batch's mean loss (float64), a gradient per parameter, then every buffer."""
    params = list(net.parameters())
    head = torch.empty(1 + len(params), dtype=torch.int64)
    loss = torch.empty(1, dtype=torch.float64)
    grads = [torch.empty_like(p, requires_grad=False) for p in params]
    buffers = [torch.empty_like(b) for b in net.buffers()]
    return [head, loss, *grads, *buffers]


def reply(net: nn.Module, result: dict) -> torch.Tensor:
    """A trainer's result (Trainer.gradient) as one message; a missing gradient (a frozen
    or unused parameter) travels as zeros with its flag clear, so every reply is one size."""
    params = list(net.parameters())
    grads = result.get("grads") or [None] * len(params)
    flags = [int(g is not None) for g in grads]
    head = torch.tensor([result["rows"], *flags], dtype=torch.int64)
    loss = torch.tensor([result.get("loss", 0.0)], dtype=torch.float64)
    filled = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    return raw([head, loss, *filled, *net.buffers()])


def read_reply(net: nn.Module, layout: list[torch.Tensor], flat: torch.Tensor) -> dict:
    """A reply's message back into Trainer.gradient's dict (reply's inverse)."""
    fill(layout, flat)
    head, loss, rest = layout[0], layout[1], layout[2:]
    rows, *flags = head.tolist()
    if not rows:
        return {"rows": 0}
    count = len(flags)
    names = [name for name, _ in net.named_buffers()]
    return {
        "rows": rows,
        "loss": float(loss[0]),
        "grads": [g if flag else None for g, flag in zip(rest[:count], flags)],
        "buffers": dict(zip(names, rest[count:])),
    }
