"""The temporal model: a pre-norm transformer over the whole time axis.

Input: per frame, P tokens (CLS + pooled patch grid) from the encoder; each
token gets a sinusoidal encoding of its timestamp *in seconds* (so any
sampling rate and any length work), a token-type embedding (frame now, actor
tokens later) and a slot embedding (which of the P tokens of its frame).
Tokens are laid out frame-major: token ``f * P + p``. Every attention layer is
:func:`videoring.ring.ring_attention` over the rank's shard, so a W-rank run
equals the single-process one; frame-causal masking uses ``causal_block=P``.

Output: every token's embedding and, per time step, the output of the frame's
CLS slot.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .config import TemporalConfig
from .ring import ring_attention

__all__ = ["TemporalModel", "time_encoding", "TOKEN_FRAME", "TOKEN_ACTOR"]

TOKEN_FRAME, TOKEN_ACTOR = 0, 1
MIN_PERIOD_S = 0.25


def time_encoding(t: Tensor, dim: int, max_period_s: float) -> Tensor:
    """(..., dim) sin/cos of 2*pi*t/period, periods geometric from 0.25 s to ``max_period_s``.

    Computed in float64: at t = 3600 s an fp32 angle would lose ~1e-4 rad per
    period step; the result is cast to fp32.
    """
    half = dim // 2
    periods = torch.exp(torch.linspace(math.log(MIN_PERIOD_S), math.log(max_period_s), half, dtype=torch.float64, device=t.device))
    ang = 2 * math.pi * t.to(torch.float64).unsqueeze(-1) / periods
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        enc = torch.cat([enc, torch.zeros_like(enc[..., :1])], dim=-1)
    return enc.float()


class Block(nn.Module):
    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: Tensor, kpm: Tensor | None, causal: bool, block: int, layout: str, group) -> Tensor:
        B, S, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = ring_attention(q, k, v, causal=causal, causal_block=block, key_padding_mask=kpm, layout=layout, group=group)
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, d))
        return x + self.mlp(self.norm2(x))


class TemporalModel(nn.Module):
    def __init__(self, cfg: TemporalConfig, in_dim: int, tokens_per_frame: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.P = tokens_per_frame
        self.in_proj = nn.Linear(in_dim, cfg.dim)
        self.type_emb = nn.Embedding(2, cfg.dim)
        self.slot_emb = nn.Embedding(tokens_per_frame, cfg.dim)
        self.time_proj = nn.Linear(cfg.dim, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: Tensor, timestamps: Tensor, frame_mask: Tensor | None = None, group=None) -> tuple[Tensor, Tensor]:
        """tokens (B, F, P, C), timestamps (B, F) seconds, frame_mask (B, F) True = real frame.

        Returns (token outputs (B, F, P, dim), per-time-step outputs (B, F, dim)). F is this
        rank's frame count, equal on every rank (pad the end, mask it).
        """
        B, Fr, P, _ = tokens.shape
        if P != self.P:
            raise ValueError(f"expected {self.P} tokens per frame, got {P}")
        x = self.in_proj(tokens)
        x = x + self.slot_emb.weight[None, None] + self.type_emb.weight[TOKEN_FRAME]
        x = x + self.time_proj(time_encoding(timestamps, self.cfg.dim, self.cfg.time_scale_s)).unsqueeze(2)
        x = x.reshape(B, Fr * P, -1)
        kpm = None if frame_mask is None else frame_mask.repeat_interleave(P, dim=1)
        for blk in self.blocks:
            x = blk(x, kpm, self.cfg.causal, P, self.cfg.layout, group)
        x = self.norm(x).view(B, Fr, P, -1)
        return x, x[:, :, 0]
