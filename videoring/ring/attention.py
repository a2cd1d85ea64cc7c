"""Exact ring attention: each rank keeps its queries, K/V blocks travel the ring.

Forward, W ranks, W steps: at step s rank r holds the K/V of rank (r - s) mod W.
It posts the transfer of that K/V to the next rank, computes attention of its
queries against it (per piece pair, skipping pieces that the mask hides
entirely), merges the partial result with the log-sum-exp rule, and only then
waits for the transfer. Output and statistics accumulate in fp32 (fp64 for fp64
inputs). A block travels in chunks (``_spans``): one full ring per chunk, so the
transfer buffers are chunk-sized.

Backward (FlashAttention-2 style recomputation with the final out and lse): the
K/V chunks travel again, each with an fp32 accumulator of its dK/dV that every
rank adds its contribution to; after W steps one more hop brings the
accumulator home, hidden behind the next chunk's first step. dQ never leaves
its rank. No rank ever holds more than its own block, two K/V chunks and three
dK/dV chunk buffers.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import Tensor

from .comm import RingComm
from .kernels import BlockKernel, acc_dtype, get_kernel
from .layout import LAYOUTS, block_mask, chunks_of, relation
from .merge import merge_

__all__ = ["ring_attention", "attention_rows", "RingStats", "record_stats"]


@dataclass
class RingStats:
    """Timing of the last calls, for the benchmark (exposed communication)."""

    compute_s: float = 0.0
    wall_s: float = 0.0
    blocks: int = 0


_STATS: RingStats | None = None


@contextmanager
def record_stats() -> Iterator[RingStats]:
    """Collect block-compute and wall time of ring_attention calls (forward and backward)."""
    global _STATS
    prev, _STATS = _STATS, RingStats()
    try:
        yield _STATS
    finally:
        _STATS = prev


@dataclass(frozen=True)
class _Spec:
    causal: bool
    block: int
    layout: str
    scale: float
    comm: RingComm | None  # None: attention_rows (pieces given, no ring)
    kernel: BlockKernel
    device_type: str
    frames: Tensor | None = None  # (S_global,) frame of each position; None: position // block
    lag: int = 0  # causal: a key must be at least this many frames older than its query


# Masked block pairs are computed in sub-blocks of at most this many tokens per
# side: a mask is then at most PIECE x PIECE per (batch, head-broadcast) instead
# of S_local x S_local (the hour's 39,600 frame + actor tokens at one rank would
# need a 1.5 G-entry dense mask), sub-blocks hidden by the causal rule are
# skipped (half the causal work), and the fully visible ones are fused into one
# unmasked call per query sub-block. The size trades mask memory and skipped work
# against per-call overhead: 1024 on CPU (39,600 masked tokens: 3.5 s per layer at
# 1024, 4.5 s at 512, 4.0 s at 4096); GPU launches cost more than CPU calls, so
# CUDA takes larger pieces (pipelines/gpu_check.py measures both).
PIECE = 1024
PIECE_CUDA = 8192

# K/V blocks travel the ring in up to STREAM_CHUNKS chunks of at least STREAM_MIN
# tokens (a whole block when shorter): the transfer buffers, and the dK/dV ones of
# the backward, are then chunk-sized, not block-sized, so a ring rank holds little
# more than one process does (the bound: peak memory within 10% from W=1
# to W=4; whole-block buffers cost +38% at S_local = 16k). More chunks mean more
# merges and calls: 8 of >= 1024 tokens on CPU; CUDA keeps its kernels large.
STREAM_CHUNKS = 8
STREAM_MIN = 1024
STREAM_MIN_CUDA = 8192


def _split(piece: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
    off, start, length = piece
    return [(off + i, start + i, min(n, length - i)) for i in range(0, length, n)]


def _runs(qc, kc, spec: _Spec, padded: bool):
    """(q piece, k piece, relation) covering the visible part of the pair, few and large.

    A 'partial' pair is cut into sub-blocks (a multiple of the causal block); per
    query sub-block, consecutive fully visible key sub-blocks are joined into one.
    Not cut: the aligned diagonal of plain causal attention without padding, which
    the kernel's own causal path computes unmasked in one call.
    """
    rel = relation(qc, kc, spec.causal, spec.block, spec.frames, spec.lag)
    own_causal = spec.block == 1 and spec.frames is None and not spec.lag and qc[1:] == kc[1:] and not padded
    piece = PIECE if spec.device_type == "cpu" else PIECE_CUDA
    if rel != "partial" or own_causal or max(qc[2], kc[2]) <= piece:
        if rel != "none":
            yield qc, kc, rel
        return
    # sub-blocks of whole frames (given frames, any cut works: the mask is per position)
    n = piece if spec.frames is not None else max(spec.block, piece // spec.block * spec.block)
    ksubs = _split(kc, n)
    for qs in _split(qc, n):
        run = None
        for ks in ksubs:
            r = relation(qs, ks, spec.causal, spec.block, spec.frames, spec.lag)
            if r == "full" and run is not None:
                run = (run[0], run[1], run[2] + ks[2])
                continue
            if run is not None:
                yield qs, run, "full"
                run = None
            if r == "full":
                run = ks
            elif r == "partial":
                yield qs, ks, r
        if run is not None:
            yield qs, run, "full"


def _pairs(spec: _Spec, qchunks, kchunks, kpad: Tensor | None, device):
    """Yield (q piece, k piece, mask, causal flag) for the visible pairs of query and key pieces.

    ``kpad``: (B, Sk) key padding of the keys' holder, True = real. A mask is (Sq, Sk)
    for the causal rule, (B, 1, 1, Sk) for key padding alone (broadcast, never
    expanded), (B, 1, Sq, Sk) for both; or None.
    """
    for qc0 in qchunks:
        for kc0 in kchunks:
            padded = kpad is not None and not bool(kpad[:, kc0[0] : kc0[0] + kc0[2]].all())
            for qc, kc, rel in _runs(qc0, kc0, spec, padded):
                pad = None
                if kpad is not None:
                    pad = kpad[:, kc[0] : kc[0] + kc[2]]
                    if not bool(pad.any()):
                        continue  # all keys are padding
                    if bool(pad.all()):
                        pad = None
                mask, causal_flag = None, False
                if rel == "partial":
                    if (spec.block == 1 and spec.frames is None and not spec.lag and qc[1] == kc[1] and qc[2] == kc[2]
                            and pad is None):
                        causal_flag = True  # the aligned diagonal: the kernel's own causal path
                    else:
                        mask = block_mask(qc, kc, spec.block, device, spec.frames, spec.lag)
                if pad is not None:
                    pm = pad[:, None, None, :]
                    mask = pm if mask is None else (mask & pm)
                yield qc, kc, mask, causal_flag


def _rank_pairs(spec: _Spec, src: int, s_local: int, pads: list[Tensor] | None, device, span: tuple[int, int]):
    """The visible pairs of this rank's queries against keys [c0, c1) of rank ``src``'s block
    (key offsets relative to c0: the chunk of the block that is here now)."""
    comm = spec.comm
    c0, c1 = span
    kchunks = []
    for off, start, n in chunks_of(src, comm.world, s_local, spec.layout):
        lo, hi = max(off, c0), min(off + n, c1)
        if hi > lo:
            kchunks.append((lo - c0, start + lo - off, hi - lo))
    return _pairs(spec, chunks_of(comm.rank, comm.world, s_local, spec.layout), kchunks,
                  None if pads is None else pads[src][:, c0:c1], device)


def _accumulate(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, pairs, spec: _Spec) -> None:
    """Attend to one K/V block, pair by pair, merging into the fp32 (out, lse)."""
    for qc, kc, mask, cflag in pairs:
        qs, ks = slice(qc[0], qc[0] + qc[2]), slice(kc[0], kc[0] + kc[2])
        o, l = spec.kernel.forward(q[:, :, qs], k[:, :, ks], v[:, :, ks], mask, cflag, spec.scale)
        merge_(out[:, :, qs], lse[:, :, qs], o, l)
        if _STATS is not None:
            _STATS.blocks += 1


def _accumulators(q: Tensor) -> tuple[Tensor, Tensor]:
    B, H, S, D = q.shape
    acc = acc_dtype(q.dtype)
    return (torch.zeros(B, H, S, D, dtype=acc, device=q.device),
            torch.full((B, H, S), float("-inf"), dtype=acc, device=q.device))


def _spans(s_local: int, world: int, device_type: str) -> list[tuple[int, int]]:
    """The chunks [c0, c1) in which a K/V block travels the ring (one chunk for one rank)."""
    if world == 1:
        return [(0, s_local)]
    least = STREAM_MIN if device_type == "cpu" else STREAM_MIN_CUDA
    n = max(1, min(STREAM_CHUNKS, s_local // max(1, least)))
    size = -(-s_local // n)
    return [(c, min(c + size, s_local)) for c in range(0, s_local, size)]


def _chunk_view(store: Tensor, like: Tensor, n: int) -> Tensor:
    """A contiguous (2, B, H, n, D) tensor (K and V, or dK and dV) in ``store``'s memory."""
    B, H, _, D = like.shape
    return store[: 2 * B * H * n * D].view(2, B, H, n, D)


def _stores(like: Tensor, spans, count: int, dtype: torch.dtype) -> list[Tensor]:
    B, H, _, D = like.shape
    nmax = max(c1 - c0 for c0, c1 in spans)
    return [torch.empty(2 * B * H * nmax * D, dtype=dtype, device=like.device) for _ in range(count)]


def _forward(q: Tensor, k: Tensor, v: Tensor, pads: list[Tensor] | None, spec: _Spec) -> tuple[Tensor, Tensor]:
    comm, W = spec.comm, spec.comm.world
    S = q.shape[2]
    out, lse = _accumulators(q)
    if W == 1:  # attend to k, v where they are: nothing travels
        t0 = time.perf_counter()
        _accumulate(q, k, v, out, lse, _rank_pairs(spec, comm.rank, S, pads, q.device, (0, S)), spec)
        if _STATS is not None:
            _STATS.compute_s += time.perf_counter() - t0
        return out, lse
    spans = _spans(S, W, spec.device_type)
    store = _stores(k, spans, 2, k.dtype)  # the chunk being computed on, the chunk arriving
    for c0, c1 in spans:
        bufs = [_chunk_view(st, k, c1 - c0) for st in store]
        bufs[0][0].copy_(k[:, :, c0:c1])
        bufs[0][1].copy_(v[:, :, c0:c1])
        for step in range(W):
            src = (comm.rank - step) % W
            cur = bufs[step % 2]
            reqs = comm.start([cur], [bufs[(step + 1) % 2]]) if step + 1 < W else None
            t0 = time.perf_counter()
            _accumulate(q, cur[0], cur[1], out, lse, _rank_pairs(spec, src, S, pads, q.device, (c0, c1)), spec)
            if _STATS is not None:
                _STATS.compute_s += time.perf_counter() - t0
            comm.wait(reqs)
    return out, lse


def _block_grads(dout, q, k, v, out, lse, dq: Tensor, dkv: Tensor, pairs, spec: _Spec) -> None:
    """Add one K/V chunk's contributions: to this rank's dQ and to the chunk's dK/dV."""
    t0 = time.perf_counter()
    for qc, kc, mask, cflag in pairs:
        qs, ks = slice(qc[0], qc[0] + qc[2]), slice(kc[0], kc[0] + kc[2])
        gq, gk, gv = spec.kernel.backward(
            dout[:, :, qs], q[:, :, qs], k[:, :, ks], v[:, :, ks], out[:, :, qs], lse[:, :, qs], mask, cflag, spec.scale,
        )
        dq[:, :, qs] += gq
        dkv[0][:, :, ks] += gk
        dkv[1][:, :, ks] += gv
    if _STATS is not None:
        _STATS.compute_s += time.perf_counter() - t0


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, pads, spec: _Spec):
    comm, W = spec.comm, spec.comm.world
    S = q.shape[2]
    acc = acc_dtype(q.dtype)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dkv = torch.zeros((2, *k.shape), dtype=acc, device=k.device)
    if W == 1:
        _block_grads(dout, q, k, v, out, lse, dq, dkv, _rank_pairs(spec, comm.rank, S, pads, q.device, (0, S)), spec)
        return dq, dkv[0], dkv[1]
    spans = _spans(S, W, spec.device_type)
    kv_store = _stores(k, spans, 2, k.dtype)
    # three dK/dV chunk buffers: being computed (work), in flight to the next rank
    # (sending), arriving from the previous one; their roles rotate every step
    g_store = _stores(k, spans, 3, acc)
    roles = [0, 1, 2]  # indices into g_store of (work, sending, arriving)
    home = None  # (transfer, buffer, span): the last hop of the previous chunk, still in flight

    def land(h) -> None:
        comm.wait(h[0])
        a, b = h[2]
        dkv[:, :, :, a:b].copy_(h[1])

    for c0, c1 in spans:
        n = c1 - c0
        kv = [_chunk_view(st, k, n) for st in kv_store]
        kv[0][0].copy_(k[:, :, c0:c1])
        kv[0][1].copy_(v[:, :, c0:c1])
        work, sending, arriving = (_chunk_view(g_store[i], k, n) for i in roles)
        work.zero_()
        dkv_reqs = None
        for step in range(W):
            src = (comm.rank - step) % W
            cur = kv[step % 2]
            kv_reqs = comm.start([cur], [kv[(step + 1) % 2]]) if step + 1 < W else None
            _block_grads(dout, q, cur[0], cur[1], out, lse, dq, work,
                         _rank_pairs(spec, src, S, pads, q.device, (c0, c1)), spec)
            if step > 0:
                comm.wait(dkv_reqs)  # `arriving` holds the accumulator of this same K/V chunk
                work += arriving
            elif home is not None:
                land(home)  # frees `sending` and `arriving` (their views from the last chunk)
                home = None
            comm.wait(kv_reqs)
            dkv_reqs = comm.start([work], [sending])  # `sending` is free: its transfer was waited for
            work, sending, arriving = arriving, work, sending
            roles = [roles[2], roles[0], roles[1]]
            work.zero_()
        home = (dkv_reqs, arriving, (c0, c1))  # one more hop brings this chunk's dK/dV home
    land(home)
    return dq, dkv[0], dkv[1]


# bf16 backward through the fp16 kernels, on these devices, at W >= 2. A fused kernel
# rounds each block's dQ/dK/dV to its input dtype; the ring adds one such block per rank
# to every K/V chunk's dK/dV, so in bf16 the sum carried W roundings of 2^-9 where
# torch's one-pass SDPA carries one: on an H100, 2 of 12 bf16 rows at W = 2-4 were at
# 1.58x SDPA's error, 1.00-1.28x this way (docs/gpu.md). bf16 -> fp16 is exact for
# values in fp16's range, and fp16 rounds 8x finer. Not at one rank: there the ring is
# SDPA's own kernel on the same problem (its error, 1.00x), and the fp16 path measured
# +1.5% (64k tokens) to +29% (16k) in time. Not on CPU: there every block runs in fp32.
HALF_BWD_DEVICES = ("cuda",)
# q, k, v must stay this small (on every rank) for the fp16 path: the kernels hold
# dS = P * (dP - delta), up to ~2 * D * max|v| with max|dO| <= 1 (the scale), in fp16 (max 65504).
HALF_BWD_LIMIT = 64.0


def _half_bwd_exponent(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, spec: _Spec) -> int | None:
    """e such that the fp16 backward runs on dO * 2^-e, max |dO| * 2^-e in (1/2, 1] over all
    ranks; None: the bf16 path. One all-gather of two numbers and one host sync per backward:
    every rank must take the same path (K/V chunks travel in its dtype) with the same scale
    (all ranks' dK/dV contributions add up). Powers of two scale exactly, and every gradient
    is linear in dO. (A sync-free variant, the range read from a pinned copy made in the
    forward, measured no faster on an H100.)"""
    if (q.dtype != torch.bfloat16 or spec.device_type not in HALF_BWD_DEVICES or spec.kernel.name != "sdpa"
            or spec.comm.world == 1):
        return None
    stats = torch.stack([torch.stack([t.abs().amax() for t in (q, k, v)]).amax(), dout.abs().amax()]).float()
    big, g = torch.stack(spec.comm.all_gather(stats)).amax(0).tolist()
    if not (big <= HALF_BWD_LIMIT and 0.0 < g < math.inf):  # NaN fails too
        return None
    return math.ceil(math.log2(g))


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pads_packed, spec):
        pads = list(pads_packed.unbind(0)) if pads_packed is not None else None
        t0 = time.perf_counter()
        out, lse = _forward(q, k, v, pads, spec)
        if _STATS is not None:
            _STATS.wall_s += time.perf_counter() - t0
        out_q = out.to(q.dtype)
        # keep the fp32 output for the backward's rowsum(dO * O): no bf16 rounding there either
        ctx.save_for_backward(q, k, v, out, lse, pads_packed)
        ctx.spec = spec
        return out_q

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, pads_packed = ctx.saved_tensors
        pads = list(pads_packed.unbind(0)) if pads_packed is not None else None
        t0 = time.perf_counter()
        e = _half_bwd_exponent(dout, q, k, v, ctx.spec)
        if e is None:
            dq, dk, dv = _backward(dout, q, k, v, out, lse, pads, ctx.spec)
        else:
            spec = replace(ctx.spec, kernel=get_kernel(q.device, torch.float16))
            d16 = (dout.float() * 2.0 ** -e).half()  # entries below 2^-24 of the largest flush to 0
            grads = _backward(d16, q.half(), k.half(), v.half(), out, lse, pads, spec)
            dq, dk, dv = (t.mul_(2.0 ** e) for t in grads)  # fp32 accumulators: exact
        if _STATS is not None:
            _STATS.wall_s += time.perf_counter() - t0
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _check_causal_block(causal_block) -> None:
    if not (isinstance(causal_block, int) and causal_block >= 1):
        raise ValueError(f"causal_block: got {causal_block!r}; use an integer >= 1 (tokens per frame)")


def _check_frames(frames: Tensor | None, total: int) -> Tensor | None:
    """``frames`` as a CPU int64 tensor of length ``total`` (the global sequence), nondecreasing."""
    if frames is None:
        return None
    if frames.dim() != 1 or frames.shape[0] != total or frames.dtype.is_floating_point or frames.dtype == torch.bool:
        raise ValueError(f"frames must be an integer tensor of the global length ({total},); got {frames.dtype} {tuple(frames.shape)}")
    frames = frames.to("cpu", torch.int64)
    if total > 1 and bool((frames[1:] < frames[:-1]).any()):
        raise ValueError("frames must be nondecreasing along the sequence (tokens in time order)")
    return frames


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    causal_block: int = 1,
    key_padding_mask: Tensor | None = None,
    layout: str = "contiguous",
    group=None,
    scale: float | None = None,
    frames: Tensor | None = None,
    lag: int = 0,
) -> Tensor:
    """Exact attention over the sequence sharded across the ranks of ``group``.

    Args:
        q, k, v: this rank's shard, (B, H, S_local, D); the same S_local on every rank.
        causal: token i attends to token j iff ``j // causal_block <= i // causal_block``
            (global positions); ``causal_block`` = tokens per frame gives frame-causal attention.
        frames: with ``causal``, instead of ``causal_block``: (S_global,) the frame of every global
            position, nondecreasing; token i attends to token j iff ``frames[j] <= frames[i]``.
            For frames of different token counts (the sequence without its empty actor slots).
        lag: with ``causal``, keys must be at least ``lag`` frames older than their query
            (``frame(j) <= frame(i) - lag``); a query with no such key gets 0.
        key_padding_mask: (B, S_local) bool, True for a real token (pad the end of uneven sequences).
        layout: "contiguous" (rank r holds [r*S_local, (r+1)*S_local)) or "zigzag"
            (chunks r and 2W-1-r of 2W; balances causal work).
        group: process group; None = default. Without one, or with one rank, plain local attention.
        scale: softmax scale, default 1/sqrt(D).

    Returns: this rank's output shard, (B, H, S_local, D), dtype of q. Differentiable.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, H, S_local, D) of one shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if v.shape != q.shape:
        raise ValueError("v must have the head dimension of q and k")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}; use 'contiguous' or 'zigzag'")
    _check_causal_block(causal_block)
    if not (isinstance(lag, int) and lag >= 0) or (lag and not causal):
        raise ValueError(f"lag: got {lag!r}; use an integer >= 0 (frames), with causal=True")
    comm = RingComm(group)
    B, _, S, D = q.shape
    pads_packed = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, S) or key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (B, S_local)=({B}, {S}); got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        m = key_padding_mask.to(q.device)
        # masks are tiny (B x S_local bools): gathered once so each block knows its keys' padding
        pads_packed = torch.stack(comm.all_gather(m.to(torch.uint8))).bool() if comm.world > 1 else m.unsqueeze(0)
    frames = _check_frames(frames, S * comm.world) if causal else None
    spec = _Spec(causal, causal_block if causal else 1, layout, scale if scale is not None else D ** -0.5, comm,
                 get_kernel(q.device, q.dtype), q.device.type, frames, lag if causal else 0)
    return _RingAttention.apply(q, k, v, pads_packed, spec)


@torch.no_grad()
def attention_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    start: int,
    *,
    causal: bool = False,
    causal_block: int = 1,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    frames: Tensor | None = None,
) -> Tensor:
    """Exact attention, in one process, of the queries at positions [start, start + Sq) against
    all keys [0, Sk): the same pieces, kernels, masks and fp32 merge as :func:`ring_attention`.

    For inference in query chunks at one rank: only the whole K/V is then held, not the whole
    Q and output (the temporal model over the hour's 39,600 tokens: 40 MB less per layer).
    q (B, H, Sq, D); k, v (B, H, Sk, D); key_padding_mask (B, Sk) bool, True = real;
    ``frames`` (Sk,) as in :func:`ring_attention`. No autograd.
    """
    _check_causal_block(causal_block)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if k.shape != (B, H, Sk, D) or v.shape != k.shape or not 0 <= start <= Sk - Sq:
        raise ValueError(f"attention_rows: q {tuple(q.shape)} at {start} does not fit k/v {tuple(k.shape)}")
    if key_padding_mask is not None and (key_padding_mask.shape != (B, Sk) or key_padding_mask.dtype != torch.bool):
        raise ValueError(f"key_padding_mask must be bool (B, Sk)=({B}, {Sk}); got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    # comm=None: no ring here, the pieces are given directly
    spec = _Spec(causal, causal_block if causal else 1, "contiguous", scale if scale is not None else D ** -0.5,
                 None, get_kernel(q.device, q.dtype), q.device.type, _check_frames(frames, Sk) if causal else None)
    out, lse = _accumulators(q)
    pad = None if key_padding_mask is None else key_padding_mask.to(q.device)
    _accumulate(q, k, v, out, lse, _pairs(spec, [(0, start, Sq)], [(0, 0, Sk)], pad, q.device), spec)
    return out.to(q.dtype)
