"""Append-only storage for what a video keeps until its end (actor RoI features).

Each decoded chunk adds a few tens of KiB that live until the model runs. Kept as
separate small tensors they sit in the malloc heap between each chunk's
short-lived buffers (frames, detector and ViT activations) and pin it: freed
space between them is too fragmented for the next large buffer, so the heap
grows with the number of chunks. Copied into a few large blocks instead, they
take one allocation per block (measured on the 60-minute benchmark:
docs/benchmarks_pipeline.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Arena"]


class Arena:
    """Rows of one shape and dtype in blocks of ``block_bytes``; :meth:`keep` returns views."""

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype, block_bytes: int = 4 << 20) -> None:
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        row_bytes = max(1, torch.Size(self.row_shape).numel() * torch.empty(0, dtype=dtype).element_size())
        self.block_rows = max(1, block_bytes // row_bytes)
        self._block: Tensor | None = None
        self._used = 0

    def keep(self, x: Tensor) -> Tensor:
        """A copy of ``x`` (n, *row_shape) in the arena, as a view."""
        n = x.shape[0]
        if tuple(x.shape[1:]) != self.row_shape:
            raise ValueError(f"arena rows are {self.row_shape}, got {tuple(x.shape[1:])}")
        if self._block is None or self._used + n > self._block.shape[0]:
            self._block = torch.empty((max(n, self.block_rows), *self.row_shape), dtype=self.dtype)
            self._used = 0
        out = self._block[self._used : self._used + n]
        out.copy_(x)
        self._used += n
        return out
