"""The one communication primitive of ring attention: pass tensors to the next rank.

``RingComm.start(send, recv)`` posts, in one ``batch_isend_irecv``, the sends
of ``send`` to the next rank and the receives into ``recv`` from the previous
rank, and returns at once; ``wait`` blocks until both are done. Callers start
the transfer before computing on the current block and wait after it, so the
transfer hides behind the compute. Works with gloo (CPU) and NCCL (CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["RingComm", "world_of"]


def world_of(group) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


@dataclass
class RingComm:
    group: object = None

    def __post_init__(self) -> None:
        self.rank, self.world = world_of(self.group)
        if self.world > 1:
            g = self.group if self.group is not None else dist.group.WORLD
            self.next = dist.get_global_rank(g, (self.rank + 1) % self.world)
            self.prev = dist.get_global_rank(g, (self.rank - 1) % self.world)

    def start(self, send: list[Tensor], recv: list[Tensor]) -> list:
        ops = []
        for s, r in zip(send, recv):
            ops.append(dist.P2POp(dist.isend, s.contiguous(), self.next, self.group))
            ops.append(dist.P2POp(dist.irecv, r, self.prev, self.group))
        return dist.batch_isend_irecv(ops)

    @staticmethod
    def wait(reqs: list) -> None:
        for r in reqs:
            r.wait()

    def all_gather(self, x: Tensor) -> list[Tensor]:
        """Small metadata only (key-padding masks): never K/V."""
        out = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(out, x.contiguous(), group=self.group)
        return out
