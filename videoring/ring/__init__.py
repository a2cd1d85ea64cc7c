"""Exact ring attention across processes (torch.distributed; gloo on CPU, NCCL on GPU).

    ring_attention(q, k, v, *, causal=False, causal_block=1, key_padding_mask=None,
                   layout="contiguous", group=None, scale=None, frames=None) -> Tensor
    shard_sequence(x, *, dim, layout="contiguous", group=None) -> Tensor
    gather_sequence(x, *, dim, layout="contiguous", group=None) -> Tensor
    attention_rows(q, k, v, start, ...) -> Tensor   (one process, a run of query rows: chunked inference)

Modules: ``comm`` (the one send/recv primitive), ``merge`` (log-sum-exp
merge), ``kernels`` (per-block fused and plain kernels), ``layout``
(contiguous / zigzag placement and block masks), ``attention`` (the autograd
Function).
"""

from .attention import RingStats, attention_rows, record_stats, ring_attention
from .layout import gather_sequence, shard_sequence

__all__ = ["ring_attention", "attention_rows", "shard_sequence", "gather_sequence", "record_stats", "RingStats"]
