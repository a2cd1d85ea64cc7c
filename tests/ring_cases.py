"""Worker-side code for the ring attention tests (importable by spawned processes)."""

from __future__ import annotations

import math

import torch

import videoring.ring.attention as ring_attention_module
from videoring.ring import ring_attention
from videoring.ring.layout import chunks_of

DEFAULT_PIECE = ring_attention_module.PIECE
DEFAULT_STREAM = ring_attention_module.STREAM_MIN


def positions(rank: int, world: int, s_local: int, layout: str) -> torch.Tensor:
    return torch.cat([torch.arange(g, g + n) for _, g, n in chunks_of(rank, world, s_local, layout)])


def padded_len(total: int, world: int, layout: str) -> int:
    unit = world * (2 if layout == "zigzag" and world > 1 else 1)
    return math.ceil(total / unit) * unit


def make_inputs(seed: int, B: int, H: int, total: int, D: int, world: int, layout: str, holes: bool = False):
    """Global q, k, v, grad_out (float64) of padded length, and the key padding mask.

    ``holes``: some keys inside the sequence are padding too (like absent actor slots);
    every 4th token stays real, so no query row is left without a key.
    """
    L = padded_len(total, world, layout)
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(4))
    pad = torch.arange(L) < total
    pad = pad.unsqueeze(0).expand(B, L).clone()
    if holes:
        pad &= (torch.rand(B, L, generator=g) > 0.4) | (torch.arange(L) % 4 == 0)
    return q, k, v, do, pad


RAGGED = "ragged"  # a case's block: frames of 1-6 tokens each, passed to ring_attention as ``frames``


def lagged(block: int | str, lag: int) -> tuple:
    """A case's block whose keys must be at least ``lag`` frames older than their query."""
    return ("lag", block, lag)


def _unlag(block) -> tuple[int | str, int]:
    return (block[1], block[2]) if isinstance(block, tuple) else (block, 0)


def frame_ids(block: int | str | tuple, L: int) -> torch.Tensor:
    """The frame of each of L global positions: ``position // block``, or for RAGGED a seeded
    run of frames of 1 to 6 tokens (a sequence without its empty actor slots)."""
    block, _ = _unlag(block)
    if block != RAGGED:
        return torch.arange(L) // block
    g = torch.Generator().manual_seed(L)
    sizes = torch.randint(1, 7, (L,), generator=g)
    return torch.repeat_interleave(torch.arange(L), sizes)[:L]


def causal_mask(block: int | str | tuple, L: int) -> torch.Tensor:
    """(L, L) bool: key j visible to query i iff frame(j) <= frame(i) - lag."""
    f = frame_ids(block, L)
    return f[None, :] <= f[:, None] - _unlag(block)[1]


def ring_rule(block: int | str | tuple, L: int) -> dict:
    """ring_attention's keyword arguments for a case's block."""
    inner, lag = _unlag(block)
    return {"frames": frame_ids(inner, L) if inner == RAGGED else None, "causal_block": 1 if inner == RAGGED else inner,
            "lag": lag}


def reference(q, k, v, do, pad, causal: bool, block: int | str):
    """Float64 attention in one process (plain softmax), and its gradients."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    L = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = pad[:, None, None, :].expand(-1, 1, L, L)
    if causal:
        mask = mask & causal_mask(block, L)
    # a query with no visible key (a lag's first frames) gets 0: its row's weights are 0
    s = s.masked_fill(~mask, float("-inf")).nan_to_num(neginf=-1e300)
    out = (torch.softmax(s, dim=-1) * mask.any(-1, keepdim=True)) @ v
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def run_case(rank, world, case):
    """This rank's output and gradient shards for one case (no reference work on the ranks)."""
    seed, B, H, total, D, layout, causal, block, dtype, use_pad = case[:10]
    # an optional small sub-block size, so short test sequences take the sub-block path
    ring_attention_module.PIECE = case[10] if len(case) > 10 else DEFAULT_PIECE
    # an optional small stream chunk, so short blocks travel the ring in several chunks
    ring_attention_module.STREAM_MIN = case[11] if len(case) > 11 else DEFAULT_STREAM
    q, k, v, do, pad = make_inputs(seed, B, H, total, D, world, layout, holes=use_pad == "holes")
    L = q.shape[2]
    pos = positions(rank, world, L // world, layout)
    take = lambda t: t[:, :, pos].to(dtype).detach().clone().requires_grad_(True)
    ql, kl, vl = take(q), take(k), take(v)
    kpm = pad[:, pos] if use_pad else None
    out = ring_attention(ql, kl, vl, causal=causal, key_padding_mask=kpm, layout=layout, **ring_rule(block, L))
    out.backward(do[:, :, pos].to(dtype))
    return pos, out.detach().double(), ql.grad.double(), kl.grad.double(), vl.grad.double()


def run_cases(rank, world, cases):
    torch.manual_seed(0)
    try:
        return [run_case(rank, world, c) for c in cases]
    finally:
        ring_attention_module.PIECE = DEFAULT_PIECE
        ring_attention_module.STREAM_MIN = DEFAULT_STREAM
