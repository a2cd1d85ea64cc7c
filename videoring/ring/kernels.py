"""Per-block attention kernels that return the log-sum-exp, forward and backward.

Ring attention needs, for one (query block, key block) pair, the block output
*and* its row-wise log-sum-exp, so partial results can be merged exactly; and
for the backward, the gradients of one block given the *final* output and
log-sum-exp (FlashAttention-2's recomputation: P = exp(S - lse_final)).

Two engines, chosen at load time and tested against each other:

- ``sdpa``: PyTorch's fused kernels -- on CPU
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ its backward), on
  CUDA ``aten._scaled_dot_product_efficient_attention`` (+ backward; it takes
  an additive bias, which our masks need).
- ``plain``: blockwise matmul + logsumexp in the accumulation dtype; the
  reference, and the fallback where the fused op is missing or fails its
  self-check.

A block mask is a bool tensor broadcastable to (B, H, Sq, Sk), True = may
attend, or None. Rows with no visible key get out = 0 and lse = -inf (the
fused CPU op reports lse = 0 there, which would corrupt the merge; fixed up).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BlockKernel", "get_kernel", "acc_dtype"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and accumulators: at least fp32, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class BlockKernel:
    name: str

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
        """(out, lse (B, H, Sq) in acc dtype; out in acc dtype where the engine allows).

        ``causal`` = an aligned diagonal block: the kernel's own causal path, no mask."""
        if self.name == "sdpa":
            if q.device.type == "cpu":
                return _cpu_fwd(q, k, v, mask, causal, scale)
            return _cuda_fwd(q, k, v, mask, causal, scale)
        return _plain_fwd(q, k, v, mask, causal, scale)

    def backward(self, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of this block given the final ``out`` and ``lse`` of the query rows."""
        if self.name == "sdpa":
            if q.device.type == "cpu":
                return _cpu_bwd(dout, q, k, v, out, lse, mask, causal, scale)
            return _cuda_bwd(dout, q, k, v, out, lse, mask, causal, scale)
        return _plain_bwd(dout, q, k, v, out, lse, mask, causal, scale)


def _causal_mask(sq: int, sk: int, device) -> Tensor:
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril()


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask, float("-inf"))


def _fix_empty_rows(out: Tensor, lse: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if mask is None:
        return out, lse
    empty = ~mask.any(-1)  # (.., Sq), broadcast over B, H
    if bool(empty.any()):
        empty = empty.expand(lse.shape)
        lse = lse.masked_fill(empty, float("-inf"))
        out = out.masked_fill(empty.unsqueeze(-1), 0)
    return out, lse


# ---------------------------------------------------------------- plain PyTorch
def _scores(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    acc = acc_dtype(q.dtype)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if causal:
        mask = _causal_mask(q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s


def _probs(s: Tensor, lse: Tensor) -> Tensor:
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.nan_to_num(p, nan=0.0)  # rows with lse = -inf: (-inf) - (-inf)


def _plain_fwd(q, k, v, mask, causal, scale):
    s = _scores(q, k, mask, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(_probs(s, lse), v.to(s.dtype))
    return out, lse


def _plain_bwd(dout, q, k, v, out, lse, mask, causal, scale):
    acc = acc_dtype(q.dtype)
    s = _scores(q, k, mask, causal, scale)
    p = _probs(s, lse.to(acc))
    do = dout.to(acc)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, v.to(acc).transpose(-1, -2))
    delta = (do * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, k.to(acc)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(acc)) * scale
    return dq, dk, dv


# ---------------------------------------------------------------- fused CPU
_HALF = (torch.bfloat16, torch.float16)


def _cpu_up(*ts):
    # On CPU the fused kernel is no faster in bf16 than in fp32 (measured: 0.108 s vs 0.103 s,
    # 8x2048x64, AVX512-BF16 EPYC), and a bf16 block output would be rounded before the
    # merge: the ring's error would grow with W. So half-precision blocks run in fp32.
    return tuple(t.float() if t.dtype in _HALF else t for t in ts)


def _cpu_fwd(q, k, v, mask, causal, scale):
    q, k, v = _cpu_up(q, k, v)
    bias = None if mask is None else _additive(mask, q.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=bias, scale=scale
    )
    return _fix_empty_rows(out, lse.to(acc_dtype(q.dtype)), mask)


def _cpu_bwd(dout, q, k, v, out, lse, mask, causal, scale):
    dout, q, k, v, out = _cpu_up(dout, q, k, v, out)
    bias = None if mask is None else _additive(mask, q.dtype)
    lse_in = lse.to(q.dtype)
    lse_in = torch.nan_to_num(lse_in, neginf=torch.finfo(lse_in.dtype).max)  # empty rows: P = 0
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), lse_in, 0.0, causal, attn_mask=bias, scale=scale
    )
    return dq, dk, dv


# ---------------------------------------------------------------- fused CUDA
def _cuda_bias(q, k, mask, causal):
    if causal:
        mask = _causal_mask(q.shape[-2], k.shape[-2], q.device)
    if mask is None:
        return None
    b, h, sq, sk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    return _additive(mask, q.dtype).expand(b, h, sq, sk)


def _cuda_fwd(q, k, v, mask, causal, scale):
    bias = _cuda_bias(q, k, mask, causal)
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, False, scale=scale
    )
    lse = lse[..., : q.shape[-2]].to(acc_dtype(q.dtype))  # lse is padded to a multiple of 32
    return _fix_empty_rows(out, lse, mask if not causal else None)


def _cuda_bwd(dout, q, k, v, out, lse, mask, causal, scale):
    bias = _cuda_bias(q, k, mask, causal)
    sq = q.shape[-2]
    pad = (-sq) % 32
    lse_in = torch.nan_to_num(lse.float(), neginf=torch.finfo(torch.float32).max)
    lse_in = torch.nn.functional.pad(lse_in, (0, pad)).contiguous()
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        dout.to(q.dtype).contiguous(), q, k, v, bias, out.to(q.dtype), lse_in, seed, seed, 0.0,
        [True, True, True, False], False, scale=scale,
    )
    return dq, dk, dv


# ---------------------------------------------------------------- selection
_CHOSEN: dict[str, BlockKernel] = {}


def _self_check(kernel: BlockKernel, device: torch.device) -> bool:
    """The fused op must match the plain path on a small masked problem, forward and backward."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 2, 12, 16, generator=g).to(device) for _ in range(4))
    mask = torch.rand(12, 12, generator=g).to(device) > 0.3
    mask[3] = False  # an empty row
    plain = BlockKernel("plain")
    try:
        # the first call may come from inside an autocast region: check at the inputs' own precision
        with torch.autocast(device.type, enabled=False):
            return _compare(kernel, plain, q, k, v, do, mask)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def _compare(kernel, plain, q, k, v, do, mask) -> bool:
    for m, c in ((None, False), (None, True), (mask, False)):
        o1, l1 = kernel.forward(q, k, v, m, c, 0.25)
        o2, l2 = plain.forward(q, k, v, m, c, 0.25)
        g1 = kernel.backward(do, q, k, v, o2, l2, m, c, 0.25)
        g2 = plain.backward(do, q, k, v, o2, l2, m, c, 0.25)
        if not torch.allclose(o1, o2, atol=1e-4) or not torch.allclose(l1, l2, atol=1e-4):
            return False
        if not all(torch.allclose(a.float(), b.float(), atol=1e-4) for a, b in zip(g1, g2)):
            return False
    return True


def get_kernel(device: torch.device) -> BlockKernel:
    """The block kernel for ``device``: fused if it passes its self-check, else plain.

    ``VIDEORING_ATTN_KERNEL=plain`` (or ``sdpa``) forces one.
    """
    forced = os.environ.get("VIDEORING_ATTN_KERNEL", "").strip().lower()
    if forced in ("plain", "sdpa"):
        return BlockKernel(forced)
    key = device.type
    if key not in _CHOSEN:
        fused = BlockKernel("sdpa")
        if _self_check(fused, device):
            _CHOSEN[key] = fused
        else:
            warnings.warn(f"fused attention kernel unavailable or wrong on {key}; using the plain PyTorch path", RuntimeWarning)
            _CHOSEN[key] = BlockKernel("plain")
    return _CHOSEN[key]
