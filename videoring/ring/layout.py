"""Where each rank's tokens sit in the global sequence, and which blocks may attend.

``contiguous``: rank r holds global positions [r*S, (r+1)*S).
``zigzag``: the sequence is cut into 2W equal chunks; rank r holds chunks r and
2W-1-r, in that order. Under causal attention every rank then has the same
amount of work (an early chunk with little to see, a late one with much).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import world_of

__all__ = ["Layout", "chunks_of", "relation", "block_mask", "shard_sequence", "gather_sequence"]

Layout = Literal["contiguous", "zigzag"]
LAYOUTS = ("contiguous", "zigzag")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}; use 'contiguous' or 'zigzag'")


def chunks_of(rank: int, world: int, s_local: int, layout: str) -> list[tuple[int, int, int]]:
    """[(local offset, global start, length)] of the rank's pieces."""
    _check_layout(layout)
    if layout == "contiguous" or world == 1:
        return [(0, rank * s_local, s_local)]
    if s_local % 2:
        raise ValueError(f"zigzag layout needs an even number of tokens per rank; got S_local={s_local}")
    c = s_local // 2
    return [(0, rank * c, c), (c, (2 * world - 1 - rank) * c, c)]


def _frame_span(start: int, length: int, block: int, frames: Tensor | None) -> tuple[int, int]:
    """The frames of the first and the last of global positions [start, start + length)."""
    if frames is None:
        return start // block, (start + length - 1) // block
    return int(frames[start]), int(frames[start + length - 1])


def relation(q: tuple[int, int, int], k: tuple[int, int, int], causal: bool, block: int,
             frames: Tensor | None = None, lag: int = 0) -> str:
    """'full', 'none' or 'partial' for query piece q and key piece k (frame-causal: a
    position's frame is ``position // block``, or ``frames[position]`` when given; with
    ``lag``, a key must be at least that many frames older than its query)."""
    if not causal:
        return "full"
    q0, q1 = _frame_span(q[1], q[2], block, frames)
    q0, q1 = q0 - lag, q1 - lag
    k0, k1 = _frame_span(k[1], k[2], block, frames)
    if k0 > q1:
        return "none"  # every key is in a later frame than every query
    if k1 <= q0:
        return "full"
    return "partial"


def block_mask(q: tuple[int, int, int], k: tuple[int, int, int], block: int, device,
               frames: Tensor | None = None, lag: int = 0) -> Tensor:
    """(Sq, Sk) bool: key j visible to query i iff frame(j) <= frame(i) - lag (global positions; a
    position's frame is ``position // block``, or ``frames[position]`` when given)."""
    _, qs, ql = q
    _, ks, kl = k
    if frames is not None:
        return frames[ks : ks + kl].to(device).unsqueeze(0) <= frames[qs : qs + ql].to(device).unsqueeze(1) - lag
    qi = (torch.arange(qs, qs + ql, device=device) // block).unsqueeze(1)
    kj = (torch.arange(ks, ks + kl, device=device) // block).unsqueeze(0)
    return kj <= qi - lag


def _pieces(total: int, world: int, layout: str) -> list[list[tuple[int, int]]]:
    if total % (world * (2 if layout == "zigzag" and world > 1 else 1)):
        unit = "2*W" if layout == "zigzag" else "W"
        raise ValueError(
            f"sequence length {total} is not divisible by {unit} (W={world}); pad the end and pass key_padding_mask"
        )
    s_local = total // world
    return [[(gs, gl) for _, gs, gl in chunks_of(r, world, s_local, layout)] for r in range(world)]


def shard_sequence(x: Tensor, *, dim: int, layout: Layout = "contiguous", group=None) -> Tensor:
    """This rank's shard of the global tensor ``x`` along ``dim``."""
    _check_layout(layout)
    rank, world = world_of(group)
    pieces = _pieces(x.shape[dim], world, layout)[rank]
    return torch.cat([x.narrow(dim, s, n) for s, n in pieces], dim=dim)


def gather_sequence(x: Tensor, *, dim: int, layout: Layout = "contiguous", group=None) -> Tensor:
    """The global tensor from every rank's shard ``x`` (inverse of :func:`shard_sequence`).

    For outputs and tests; the model itself never gathers the sequence.
    """
    _check_layout(layout)
    rank, world = world_of(group)
    if world == 1:
        return x
    shards = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(shards, x.contiguous(), group=group)
    total = x.shape[dim] * world
    out_shape = list(x.shape)
    out_shape[dim] = total
    out = x.new_empty(out_shape)
    for r, pieces in enumerate(_pieces(total, world, layout)):
        off = 0
        for s, n in pieces:
            out.narrow(dim, s, n).copy_(shards[r].narrow(dim, off, n))
            off += n
    return out
