"""Per-block attention kernels that return the log-sum-exp, forward and backward.

Ring attention needs, for one (query block, key block) pair, the block output
*and* its row-wise log-sum-exp, so partial results can be merged exactly; and
for the backward, the gradients of one block given the *final* output and
log-sum-exp (FlashAttention-2's recomputation: P = exp(S - lse_final)).

Two engines, chosen at load time and tested against each other:

- ``sdpa``: PyTorch's fused kernels -- on CPU
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ its backward), on
  CUDA ``aten._scaled_dot_product_efficient_attention`` (+ backward; it takes
  an additive bias, which our masks need), and in half precision cuDNN's
  fused attention (+ backward, with the bias) or, for unmasked blocks,
  FlashAttention-2's.
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
    name: str  # "sdpa" (fused) or "plain"
    bwd_fp32: bool = False  # the efficient kernel's backward on fp32 copies of half-precision inputs
    unmasked: str = ""  # CUDA, half precision: blocks without a mask through "cudnn" or "flash" (FlashAttention-2)
    masked: str = ""  # CUDA, half precision: masked blocks through "cudnn" (additive bias); "" = the efficient kernel

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
        """(out, lse (B, H, Sq) in acc dtype; out in acc dtype where the engine allows).

        ``causal`` = an aligned diagonal block: the kernel's own causal path, no mask."""
        if self.name == "sdpa":
            if q.device.type == "cpu":
                return _cpu_fwd(q, k, v, mask, causal, scale)
            if self.unmasked and mask is None and q.dtype in _HALF:
                return _UNMASKED[self.unmasked][0](q, k, v, causal, scale)
            if self.masked == "cudnn" and mask is not None and q.dtype in _HALF:
                return _cudnn_fwd(q, k, v, causal, scale, mask)
            if q.dtype in _CUDA_DTYPES:
                return _cuda_fwd(q, k, v, mask, causal, scale)
        return _plain_fwd(q, k, v, mask, causal, scale)

    def backward(self, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of this block given the final ``out`` and ``lse`` of the query rows."""
        if self.name == "sdpa":
            if q.device.type == "cpu":
                return _cpu_bwd(dout, q, k, v, out, lse, mask, causal, scale)
            if self.unmasked and mask is None and q.dtype in _HALF:
                return _UNMASKED[self.unmasked][1](dout, q, k, v, out, lse, causal, scale)
            if self.masked == "cudnn" and mask is not None and q.dtype in _HALF:
                return _cudnn_bwd(dout, q, k, v, out, lse, causal, scale, mask)
            if self.bwd_fp32:
                dout, q, k, v, out = _up(dout, q, k, v, out)
            if q.dtype in _CUDA_DTYPES:
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


def _up(*ts):
    # Half precision -> fp32. On CPU for every block: the fused kernel is no faster in bf16
    # than in fp32 (measured: 0.108 s vs 0.103 s, 8x2048x64, AVX512-BF16 EPYC), and a bf16
    # block output would be rounded before the merge: the ring's error would grow with W.
    # On CUDA only for the backward fallback (BlockKernel.bwd_fp32).
    return tuple(t.float() if t.dtype in _HALF else t for t in ts)


def _cpu_fwd(q, k, v, mask, causal, scale):
    q, k, v = _up(q, k, v)
    bias = None if mask is None else _additive(mask, q.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=bias, scale=scale
    )
    return _fix_empty_rows(out, lse.to(acc_dtype(q.dtype)), mask)


def _cpu_bwd(dout, q, k, v, out, lse, mask, causal, scale):
    dout, q, k, v, out = _up(dout, q, k, v, out)
    bias = None if mask is None else _additive(mask, q.dtype)
    lse_in = lse.to(q.dtype)
    lse_in = torch.nan_to_num(lse_in, neginf=torch.finfo(lse_in.dtype).max)  # empty rows: P = 0
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), lse_in, 0.0, causal, attn_mask=bias, scale=scale
    )
    return dq, dk, dv


# ---------------------------------------------------------------- fused CUDA
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the efficient kernel has no fp64: plain there


def _cuda_bias(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor | None:
    """The additive bias, (B, H, Sq, Sk) by broadcasting (stride 0 where the mask broadcasts).

    The kernel needs the bias rows 16-element aligned, as torch's own sdpa wrapper
    ensures: allocate a padded last dimension and slice it.
    """
    if mask is None:
        return None
    sk = mask.shape[-1]
    bias = torch.zeros((*mask.shape[:-1], sk + (-sk) % 16), dtype=q.dtype, device=q.device)[..., :sk]
    bias.masked_fill_(~mask, float("-inf"))
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _cuda_fwd(q, k, v, mask, causal, scale):
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, _cuda_bias(q, k, mask), True, 0.0, causal, scale=scale
    )
    lse = lse[..., : q.shape[-2]].to(acc_dtype(q.dtype))  # lse is padded to a multiple of 32
    return _fix_empty_rows(out, lse, mask)


def _bshd(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, H, S, D) values in (B, S, H, D) memory, the layout the fused forwards return.

    Measured on an H200 (torch 2.11, pipelines/gpu_check.py): the efficient kernel's
    bf16/fp16 backward silently returns wrong dQ/dK (errors ~1, NaN) when handed the
    same output in plain contiguous (B, H, S, D) memory; fp32 is unaffected."""
    return t.to(dtype).transpose(1, 2).contiguous().transpose(1, 2)


def _cuda_bwd(dout, q, k, v, out, lse, mask, causal, scale):
    sq = q.shape[-2]
    lse_in = torch.nan_to_num(lse.float(), neginf=torch.finfo(torch.float32).max)  # empty rows: P = 0
    lse_in = torch.nn.functional.pad(lse_in, (0, (-sq) % 32)).contiguous()
    seed = torch.zeros((), dtype=torch.int64, device=q.device)
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        dout.to(q.dtype).contiguous(), q, k, v, _cuda_bias(q, k, mask), _bshd(out, q.dtype), lse_in, seed, seed, 0.0,
        [True, True, True, False], causal, scale=scale,
    )
    return dq, dk, dv


def _flash_fwd(q, k, v, causal, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    return out, lse.float()


def _flash_bwd(dout, q, k, v, out, lse, causal, scale):
    """FlashAttention-2's backward on one block, given the ring's final out and lse.

    No cumulative sequence lengths (None = the dense batch, as torch's own autograd passes
    from the forward); out and dout in the (B, S, H, D) memory the kernel works in."""
    seed, offset = _rng_state("flash", q.device)
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        _bshd(dout, q.dtype), q, k, v, _bshd(out, q.dtype), lse.float().contiguous(), None, None,
        q.shape[-2], k.shape[-2], 0.0, causal, seed, offset, scale=scale,
    )


def _cudnn_fwd(q, k, v, causal, scale, mask=None):
    bias = _cuda_bias(q, k, mask)
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, bias, True, 0.0, causal, False, scale=scale)[:2]
    return _fix_empty_rows(out, lse.reshape(q.shape[:3]).float(), mask)  # cuDNN's statistics are (B, H, Sq, 1)


def _cudnn_bwd(dout, q, k, v, out, lse, causal, scale, mask=None):
    """cuDNN's backward; out and dout in q's own memory layout, as its forward allocates out."""
    seed, offset = _rng_state("cudnn", q.device)
    like_q = (lambda t: t.to(q.dtype).contiguous()) if q.stride(1) >= q.stride(2) else (lambda t: _bshd(t, q.dtype))
    lse_in = torch.nan_to_num(lse.float(), neginf=torch.finfo(torch.float32).max)  # empty rows: P = 0
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        like_q(dout), q, k, v, like_q(out), lse_in.unsqueeze(-1).contiguous(), seed, offset, _cuda_bias(q, k, mask),
        None, None, q.shape[-2], k.shape[-2], 0.0, causal, scale=scale,
    )


_UNMASKED = {"flash": (_flash_fwd, _flash_bwd), "cudnn": (_cudnn_fwd, _cudnn_bwd)}
_RNG: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}


def _rng_state(engine: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """The rng-state pair a fused backward takes (read only with dropout): the pair its own
    forward returns, so type and shape match whatever this torch build expects."""
    key = (engine, str(device))
    if key not in _RNG:
        x = torch.zeros(1, 1, 16, 64, dtype=torch.float16, device=device)
        if engine == "flash":
            r = torch.ops.aten._scaled_dot_product_flash_attention(x, x, x, 0.0, False, False)
        else:
            r = torch.ops.aten._scaled_dot_product_cudnn_attention(x, x, x, None, True, 0.0, False, False)
        _RNG[key] = (r[6], r[7])
    return _RNG[key]


# ---------------------------------------------------------------- selection
_CHOSEN: dict[tuple[str, torch.dtype], BlockKernel] = {}


def _self_check(kernel: BlockKernel, device: torch.device, dtype: torch.dtype) -> bool:
    """The kernel must match the plain path, forward and backward, at ``dtype``: a 12-token
    problem with every mask kind (an empty row too), and a 300-token one that spans several
    of the fused kernels' tiles (a wrong backward on GPU showed only on longer blocks)."""
    half = dtype in _HALF
    tol = 5e-2 if half else 1e-4  # half: the fused op rounds its block output and products to bf16/fp16
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(1, 2, 12, 16, generator=g).to(device, dtype) for _ in range(4)]
    mask = torch.rand(12, 12, generator=g).to(device) > 0.3
    mask[3] = False  # an empty row
    keypad = (torch.arange(12) % 5 != 2).view(1, 1, 1, 12).to(device)  # key padding, broadcast over rows
    large = [torch.randn(1, 2, 300, 32, generator=g).to(device, dtype) for _ in range(4)]
    plain = BlockKernel("plain")
    cases = [(small, m, c) for m, c in ((None, False), (None, True), (mask, False), (keypad, False), (mask & keypad, False))]
    large_pad = (torch.arange(300) % 7 != 3).view(1, 1, 1, 300).to(device)
    cases += [(large, None, False), (large, None, True), (large, large_pad, False)]
    try:
        # the first call may come from inside an autocast region: check at the inputs' own precision
        with torch.autocast(device.type, enabled=False):
            return all(_agree(kernel, plain, *t, m, c, tol) for t, m, c in cases)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def _agree(kernel, plain, q, k, v, do, m, c, tol) -> bool:
    scale = q.shape[-1] ** -0.5
    o1, l1 = kernel.forward(q, k, v, m, c, scale)
    o2, l2 = plain.forward(q, k, v, m, c, scale)
    g1 = kernel.backward(do, q, k, v, o2, l2, m, c, scale)
    g2 = plain.backward(do, q, k, v, o2, l2, m, c, scale)
    close = lambda a, b: torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
    return close(o1, o2) and close(l1, l2) and all(close(a, b) for a, b in zip(g1, g2))


def _candidates(device: torch.device, dtype: torch.dtype) -> list[BlockKernel]:
    if device.type != "cpu" and dtype in _HALF:
        # fastest first (pipelines/gpu_check.py): every block through cuDNN; unmasked blocks through
        # cuDNN, then FlashAttention-2, masked ones through the efficient kernel; the efficient kernel
        # alone; its backward in fp32
        return [BlockKernel("sdpa", unmasked="cudnn", masked="cudnn"), BlockKernel("sdpa", unmasked="cudnn"),
                BlockKernel("sdpa", unmasked="flash"), BlockKernel("sdpa"),
                BlockKernel("sdpa", bwd_fp32=True), BlockKernel("plain")]
    return [BlockKernel("sdpa"), BlockKernel("plain")]


def get_kernel(device: torch.device, dtype: torch.dtype = torch.float32) -> BlockKernel:
    """The block kernel for ``device`` and ``dtype``: the first candidate that passes its self-check.

    ``VIDEORING_ATTN_KERNEL=plain`` (or ``sdpa``) forces one.
    """
    forced = os.environ.get("VIDEORING_ATTN_KERNEL", "").strip().lower()
    if forced in ("plain", "sdpa"):
        return BlockKernel(forced)
    key = (device.type, dtype)
    if key not in _CHOSEN:
        cands = _candidates(device, dtype)
        _CHOSEN[key] = next((c for c in cands if c.name == "plain" or _self_check(c, device, dtype)), cands[-1])
        if _CHOSEN[key] != cands[0]:
            warnings.warn(
                f"fused attention kernel wrong or unavailable on {device.type} in {dtype}; using {_CHOSEN[key]}",
                RuntimeWarning,
            )
    return _CHOSEN[key]
