"""Append-only storage for what a video keeps until its end (actor RoI features).

Each decoded chunk adds a few tens of KiB that live until the model runs. Kept as
separate small tensors they sit in the malloc heap between each chunk's
short-lived buffers (frames, detector and ViT activations) and pin it: freed
space between them is too fragmented for the next large buffer, so the heap
grows with the number of chunks. Copied into a few large blocks instead, they
take one allocation per block (measured on the 60-minute benchmark:
docs/benchmarks_pipeline.md).

Rows are addressed by number, so the model's actor tokens can name them
(:class:`videoring.actors.ActorTokens`) instead of copying them into a padded
tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Arena"]


class Arena:
    """Rows of one shape and dtype in equal blocks of about ``block_bytes``, numbered from 0."""

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype, block_bytes: int = 4 << 20) -> None:
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        row_bytes = max(1, torch.Size(self.row_shape).numel() * torch.empty(0, dtype=dtype).element_size())
        self.block_rows = max(1, block_bytes // row_bytes)
        self._blocks: list[Tensor] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, x: Tensor) -> range:
        """Copy ``x`` (n, *row_shape) in; returns its row numbers (a run may straddle two blocks)."""
        if tuple(x.shape[1:]) != self.row_shape:
            raise ValueError(f"arena rows are {self.row_shape}, got {tuple(x.shape[1:])}")
        first, i, R = self._n, 0, self.block_rows
        while i < len(x):
            b, r = divmod(self._n, R)
            if b == len(self._blocks):
                self._blocks.append(torch.empty((R, *self.row_shape), dtype=self.dtype))
            k = min(len(x) - i, R - r)
            self._blocks[b][r : r + k].copy_(x[i : i + k])
            i += k
            self._n += k
        return range(first, self._n)

    def gather(self, rows: Tensor) -> Tensor:
        """The rows numbered ``rows`` (n,), as a new (n, *row_shape) tensor."""
        rows = rows.long()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self._n):
            raise IndexError(f"arena has {self._n} rows, asked for rows {int(rows.min())}..{int(rows.max())}")
        out = torch.empty((len(rows), *self.row_shape), dtype=self.dtype)
        block, off = rows // self.block_rows, rows % self.block_rows
        for b in torch.unique(block).tolist():
            m = block == b
            out[m] = self._blocks[b][off[m]]
        return out
