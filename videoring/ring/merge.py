"""Merging partial attention results with the log-sum-exp rule.

Given two partial results over disjoint key sets, ``(o1, l1)`` and
``(o2, l2)`` (o = softmax-weighted values, l = log-sum-exp of the scores), the
attention over the union is

    l = log(exp(l1) + exp(l2)) = logaddexp(l1, l2)
    o = exp(l1 - l) * o1 + exp(l2 - l) * o2

Computed this way every exponent is <= 0, so nothing overflows whatever the
score scale (the same rescaling as FlashAttention's online softmax; Milakov &
Gimelshein 2018, "Online normalizer calculation for softmax"). Rows that have
seen no key yet carry l = -inf and o = 0; their weights are defined as 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["merge_"]


def merge_(out: Tensor, lse: Tensor, o: Tensor, l: Tensor) -> None:
    """In place: (out, lse) <- merge((out, lse), (o, l)). ``out``/``lse`` are the accumulators."""
    new = torch.logaddexp(lse, l)
    w_old = torch.nan_to_num(torch.exp(lse - new), nan=0.0)  # -inf - -inf: both empty
    w_new = torch.nan_to_num(torch.exp(l - new), nan=0.0)
    # addcmul_: no (B, H, S, D) temporary for the weighted block output
    out.mul_(w_old.unsqueeze(-1)).addcmul_(o.to(out.dtype), w_new.unsqueeze(-1))
    lse.copy_(new)
