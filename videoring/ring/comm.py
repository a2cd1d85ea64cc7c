"""The one communication primitive of ring attention: pass tensors to the next rank.

``RingComm.start(send, recv)`` posts, in one ``batch_isend_irecv``, the sends
of ``send`` to the next rank and the receives into ``recv`` from the previous
rank, and returns at once; ``wait`` blocks until both are done. Callers start
the transfer before computing on the current block and wait after it, so the
transfer hides behind the compute. Works with gloo (CPU) and NCCL (CUDA).

gloo cannot carry CUDA tensors (its point-to-point ops fail with ``writev ...
Bad address``), so with a gloo group, device tensors travel through host
copies: slow, but it lets several ranks share one GPU (NCCL refuses two ranks
on one device), which is how the CUDA path is checked at W >= 2 on a one-GPU
machine (pipelines/gpu_check.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["RingComm", "Transfer", "world_of"]


def world_of(group) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


@dataclass
class Transfer:
    """Posted sends and receives; ``landing`` = (destination, host buffer it arrives in)."""

    reqs: list
    landing: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def wait(self) -> None:
        for r in self.reqs:
            r.wait()
        for dst, host in self.landing:
            dst.copy_(host)


@dataclass
class RingComm:
    group: object = None
    staging: bool | None = None  # through fresh host buffers; None = device tensors over gloo only

    def __post_init__(self) -> None:
        self.rank, self.world = world_of(self.group)
        self.gloo = False
        if self.world > 1:
            g = self.group if self.group is not None else dist.group.WORLD
            self.next = dist.get_global_rank(g, (self.rank + 1) % self.world)
            self.prev = dist.get_global_rank(g, (self.rank - 1) % self.world)
            self.gloo = dist.get_backend(g) == "gloo"

    def _staged(self, t: Tensor) -> bool:
        if self.staging is None:
            return self.gloo and t.device.type != "cpu"
        return self.staging

    def start(self, send: list[Tensor], recv: list[Tensor]) -> Transfer:
        ops, landing = [], []
        for s, r in zip(send, recv):
            s = s.contiguous()
            if self._staged(s):
                s = s.cpu()
            if self._staged(r):
                host = torch.empty(r.shape, dtype=r.dtype)
                landing.append((r, host))
                r = host
            ops.append(dist.P2POp(dist.isend, s, self.next, self.group))
            ops.append(dist.P2POp(dist.irecv, r, self.prev, self.group))
        return Transfer(dist.batch_isend_irecv(ops), landing)

    @staticmethod
    def wait(transfer: Transfer | None) -> None:
        if transfer is not None:
            transfer.wait()

    def all_gather(self, x: Tensor) -> list[Tensor]:
        """Small metadata only (key-padding masks): never K/V."""
        src = x.contiguous().cpu() if self._staged(x) else x.contiguous()
        out = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(out, src, group=self.group)
        return [o.to(x.device) for o in out]
