"""videoring.ring against float64 single-process attention, forward and backward.

Every case runs on W spawned gloo processes (FileStore in a temp dir; a
watchdog fails the test on a hang) and is compared with the same attention
computed in one process in float64 (tests/ring_cases.py: plain softmax).

Tolerances:
- fp32 <= 2e-5 max abs: inputs are N(0, 1), so outputs and gradients are O(1);
  fp32 has a unit roundoff of 6e-8 and a ring adds one log-sum-exp rescale per
  block (a few roundings), over ~1000-term dot products whose error grows like
  sqrt(n) * eps ~ 2e-6. 2e-5 leaves 10x headroom and still fails on any
  algorithmic error (a wrong mask or a missed block gives O(0.1) errors).
- fp64 <= 1e-10: the same argument with eps = 1e-16 gives ~1e-14.
- bf16: no absolute bound is meaningful (eps = 4e-3), so the ring's error is
  bounded relative to PyTorch's own single-process SDPA in bf16 (<= 1.5x),
  at every W: merging in fp32 must keep the error from growing with W.
"""

from __future__ import annotations

import random

import pytest
import torch

from videoring.ring import gather_sequence, ring_attention, shard_sequence
from videoring.ring.kernels import BlockKernel

from .distributed import run_world
from .ring_cases import (DEFAULT_PIECE, DEFAULT_STREAM, RAGGED, causal_mask, frame_ids, lagged, make_inputs, positions, reference,
                         run_cases)

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
# non-causal, causal, frame-causal (4 tokens per frame), frame-causal over frames of 1-6 tokens (``frames``)
MASKS = [(False, 1), (True, 1), (True, 4), (True, RAGGED)]


def _assemble(results, ci, world, shape):
    got = [torch.zeros(shape, dtype=torch.float64) for _ in range(4)]
    for r in range(world):
        pos, *ts = results[r][ci]
        for g, t in zip(got, ts):
            g[:, :, torch.as_tensor(pos)] = torch.as_tensor(t)
    return got


def _errors(results, cases, world):
    out = []
    for ci, case in enumerate(cases):
        seed, B, H, total, D, layout, causal, block, dtype, use_pad = case[:10]
        q, k, v, do, pad = make_inputs(seed, B, H, total, D, world, layout, holes=use_pad == "holes")
        if not use_pad:
            pad = torch.ones_like(pad)
        ref = reference(q, k, v, do, pad, causal, block)
        got = _assemble(results, ci, world, q.shape)
        valid = pad[0]
        # padded positions are not outputs anyone reads; compare real tokens only
        out.append([(g[:, :, valid] - r[:, :, valid]).abs().max().item() for g, r in zip(got, ref)])
    return out


def _cases(world):
    cases = []
    for layout in ("contiguous", "zigzag"):
        for causal, block in MASKS:
            # uneven totals: 31 tokens (fewer than 2 per zigzag chunk at W=4) and 1001
            cases.append((1, 2, 2, 31, 16, layout, causal, block, torch.float32, True))
            cases.append((2, 1, 2, 1001, 32, layout, causal, block, torch.float32, True))
            cases.append((3, 1, 2, 24 * world, 16, layout, causal, block, torch.float64, False))
            cases.append((4, 2, 1, 101, 8, layout, causal, block, torch.float64, True))
            # masked pairs cut into sub-blocks (ring.attention.PIECE set to 12 in the workers),
            # with padded keys inside the sequence (absent actor tokens) as well as at its end
            cases.append((5, 1, 2, 203, 16, layout, causal, block, torch.float32, "holes", 12))
            cases.append((6, 1, 1, 157, 8, layout, causal, block, torch.float64, "holes", 12))
            # K/V blocks streamed in chunks of >= 5 tokens (ring.attention.STREAM_MIN): chunk
            # edges cut zigzag pieces, sub-blocks and frames; the last chunk is shorter
            cases.append((8, 1, 2, 203, 16, layout, causal, block, torch.float32, "holes", 12, 5))
            cases.append((9, 2, 1, 157, 8, layout, causal, block, torch.float64, True, DEFAULT_PIECE, 5))
        # keys at least `lag` frames older than their query (Recall's lagged pass): the first
        # queries see no key at all (output 0), sub-blocks and chunks cut by the lag's shift
        for block in (lagged(4, 3), lagged(RAGGED, 5), lagged(1, 17)):
            cases.append((10, 2, 2, 203, 16, layout, True, block, torch.float32, "holes", 12, 5))
            cases.append((11, 1, 2, 157, 8, layout, True, block, torch.float64, True))
    return cases


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ring_matches_float64_reference(world):
    cases = _cases(world)
    results = run_world(run_cases, world, cases)
    for case, errs in zip(cases, _errors(results, cases, world)):
        tol = TOL[case[8]]
        assert max(errs) <= tol, (world, case, errs)


def _sdpa_bf16_error(case) -> list[float]:
    seed, B, H, total, D, layout, causal, block, _, _ = case[:10]
    q, k, v, do, pad = make_inputs(seed, B, H, total, D, 1, layout)
    L = q.shape[2]
    ref = reference(q, k, v, do, pad, causal, block)
    qb, kb, vb = (t.bfloat16().requires_grad_(True) for t in (q, k, v))
    mask = pad[:, None, None, :].expand(-1, 1, L, L)
    if causal:
        mask = mask & causal_mask(block, L)
    out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    out.backward(do.bfloat16())
    got = [out.detach(), qb.grad, kb.grad, vb.grad]
    valid = pad[0]
    return [(g.double()[:, :, valid] - r[:, :, valid]).abs().max().item() for g, r in zip(got, ref)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_bf16_error_does_not_grow_with_world(world):
    # whole blocks, and blocks streamed in chunks of >= 24 tokens (more fp32 merges)
    cases = [(7, 1, 4, 96 * world, 32, lay, c, b, torch.bfloat16, True, DEFAULT_PIECE, stream)
             for lay in ("contiguous", "zigzag") for c, b in MASKS for stream in (DEFAULT_STREAM, 24)]
    results = run_world(run_cases, world, cases)
    for case, errs in zip(cases, _errors(results, cases, world)):
        base = _sdpa_bf16_error(case)
        for name, e, b in zip(("out", "dq", "dk", "dv"), errs, base):
            assert e <= 1.5 * b, (world, case[5:8], name, e, b)


def _random_cases(rng: random.Random, world: int, n: int):
    cases = []
    for _ in range(n):
        causal = rng.random() < 0.6
        cases.append((
            rng.randrange(1000), rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 160), rng.choice([8, 16, 24]),
            rng.choice(["contiguous", "zigzag"]), causal, rng.randint(1, 6) if causal else 1,
            rng.choice([torch.float32, torch.float64]), rng.random() < 0.7,
            DEFAULT_PIECE, rng.choice([DEFAULT_STREAM, 3, 7]),
        ))
    return cases


@pytest.mark.parametrize("world", [2, 3])
def test_seeded_randomized_shapes_masks(world):
    rng = random.Random(1234 + world)
    cases = _random_cases(rng, world, 12)
    # without padding the total must fill every rank: round it up
    cases = [c if c[9] else (*c[:3], max(c[3], 1) * 2 * world, *c[4:]) for c in cases]
    results = run_world(run_cases, world, cases)
    for case, errs in zip(cases, _errors(results, cases, world)):
        assert max(errs) <= TOL[case[8]], (case, errs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_and_plain_block_kernels_agree(dtype):
    g = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(2, 3, 40, 16, generator=g, dtype=dtype) for _ in range(4))
    masks = [None, torch.rand(40, 40, generator=g) > 0.4, (torch.rand(2, 1, 40, 40, generator=g) > 0.5)]
    masks[1][7] = False  # an empty row
    fused, plain = BlockKernel("sdpa"), BlockKernel("plain")
    tol = TOL[dtype] if dtype == torch.float64 else 1e-5
    for mask in masks:
        for causal in ((False, True) if mask is None else (False,)):
            o1, l1 = fused.forward(q, k, v, mask, causal, 0.25)
            o2, l2 = plain.forward(q, k, v, mask, causal, 0.25)
            assert torch.allclose(o1, o2, atol=tol) and torch.equal(l1.isinf(), l2.isinf())
            finite = l2.isfinite()
            assert torch.allclose(l1[finite], l2[finite], atol=tol)
            for a, b in zip(fused.backward(do, q, k, v, o2, l2, mask, causal, 0.25), plain.backward(do, q, k, v, o2, l2, mask, causal, 0.25)):
                assert torch.allclose(a.to(dtype), b.to(dtype), atol=tol)


def test_single_process_is_plain_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = ring_attention(q, k, v, causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out - ref).abs().max() < 1e-12
    assert torch.equal(shard_sequence(q, dim=2, layout="zigzag"), q)  # one rank holds everything
    assert torch.equal(gather_sequence(shard_sequence(q, dim=2), dim=2), q)


@pytest.mark.parametrize("causal,block", [(False, 1), (True, 1), (True, 7), (True, RAGGED)])
@pytest.mark.parametrize("piece", [DEFAULT_PIECE, 16])
def test_attention_rows_match_float64_reference(causal, block, piece, monkeypatch):
    """Query chunks at any offset against all keys (the temporal model's one-rank inference)
    equal the float64 reference rows: fp64 <= 1e-10, fp32 <= 2e-5 (as the ring's own bounds;
    a small PIECE sends these short sequences through the sub-block path)."""
    import videoring.ring.attention as ra
    from videoring.ring import attention_rows

    monkeypatch.setattr(ra, "PIECE", piece)
    q, k, v, do, pad = make_inputs(5, 2, 3, 301, 16, 1, "contiguous", holes=True)
    ref = reference(q, k, v, do, pad, causal, block)[0]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        for start, n in ((0, 64), (64, 100), (250, 51), (0, 301)):
            rule = {"frames": frame_ids(block, 301)} if block == RAGGED else {"causal_block": block}
            got = attention_rows(q[:, :, start : start + n].to(dtype), k.to(dtype), v.to(dtype), start,
                                 causal=causal, key_padding_mask=pad, **rule)
            assert got.dtype == dtype
            assert (got.double() - ref[:, :, start : start + n]).abs().max() <= tol, (dtype, start)
    with pytest.raises(ValueError, match="does not fit"):
        attention_rows(q[:, :, :10], k, v, 295)
    with pytest.raises(ValueError, match="causal_block"):
        attention_rows(q[:, :, :10], k, v, 0, causal=True, causal_block=0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention_rows(q[:, :, :10], k, v, 0, key_padding_mask=pad[:, :5])


def _shard_roundtrip(rank, world, layout):
    x = torch.arange(4 * world * 3, dtype=torch.float32).reshape(1, 4 * world * 3)
    s = shard_sequence(x, dim=1, layout=layout)
    return s, gather_sequence(s, dim=1, layout=layout)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_shard_and_gather_layouts(layout):
    world = 3
    res = run_world(_shard_roundtrip, world, layout)
    n = 4 * world * 3
    for rank, (shard, full) in enumerate(res):
        assert torch.equal(torch.as_tensor(full)[0], torch.arange(n, dtype=torch.float32))
        if layout == "zigzag":
            c = n // (2 * world)
            want = list(range(rank * c, rank * c + c)) + list(range((2 * world - 1 - rank) * c, (2 * world - rank) * c))
        else:
            want = list(range(rank * n // world, (rank + 1) * n // world))
        assert torch.as_tensor(shard)[0].tolist() == want


def test_bad_arguments_name_the_argument():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="layout"):
        ring_attention(q, q, q, layout="spiral")
    with pytest.raises(ValueError, match="causal_block"):
        ring_attention(q, q, q, causal=True, causal_block=0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        ring_attention(q, q, q, key_padding_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="frames must be an integer tensor of the global length"):
        ring_attention(q, q, q, causal=True, frames=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="lag: got -1"):
        ring_attention(q, q, q, causal=True, lag=-1)
    with pytest.raises(ValueError, match="lag: got 2; .* with causal=True"):
        ring_attention(q, q, q, lag=2)
    with pytest.raises(ValueError, match="frames must be nondecreasing"):
        ring_attention(q, q, q, causal=True, frames=torch.tensor([0, 1, 1, 0]))
    from videoring.ring.layout import _pieces

    with pytest.raises(ValueError, match="pad the end"):
        _pieces(7, 2, "contiguous")  # what shard_sequence checks on a 2-rank world


def _staged_ring(rank, world):
    """Host staging (what carries CUDA tensors over gloo), forced on CPU tensors: the ring
    passes the same values, and ring attention gives bit-identical outputs and gradients."""
    import functools

    import videoring.ring.attention as ra
    from videoring.ring.comm import RingComm

    comm = RingComm(staging=True)
    got = torch.full((3, 5), -1.0)
    comm.wait(comm.start([torch.full((3, 5), float(rank))], [got]))
    gathered = comm.all_gather(torch.tensor([rank], dtype=torch.uint8))
    case = (7, 1, 2, 61, 8, "zigzag", True, 3, torch.float32, "holes")
    plain = run_cases(rank, world, [case])[0]
    ra.RingComm = functools.partial(RingComm, staging=True)
    try:
        staged = run_cases(rank, world, [case])[0]
    finally:
        ra.RingComm = RingComm
    return got, [int(g) for g in gathered], all(torch.equal(a, b) for a, b in zip(plain, staged))


def test_host_staging_passes_the_same_values():
    world = 3
    for rank, (got, gathered, identical) in enumerate(run_world(_staged_ring, world)):
        assert torch.equal(torch.as_tensor(got), torch.full((3, 5), float((rank - 1) % world)))
        assert gathered == list(range(world))
        assert identical


def _half_bwd_ring(rank, world):
    """The bf16 backward through the fp16 kernels (CUDA's path; forced here on CPU, where the
    kernels compute in fp32, so both paths must give the very same bits), with dO far below
    fp16's range (the power-of-two scale must carry it), and the path every rank takes."""
    import videoring.ring.attention as ra

    taken = []
    exponent = ra._half_bwd_exponent
    ra._half_bwd_exponent = lambda *a: taken.append(exponent(*a)) or taken[-1]
    q, k, v, do, pad = make_inputs(11, 1, 2, 64 * world, 16, world, "zigzag", holes=True)
    pos = positions(rank, world, q.shape[2] // world, "zigzag")

    def grads(big: bool):
        ts = [t[:, :, pos].bfloat16().requires_grad_(True) for t in (q, k, v)]
        if big and rank == world - 1:
            with torch.no_grad():
                ts[0][0, 0, 0] = 100.0  # beyond HALF_BWD_LIMIT on one rank: every rank must fall back
        out = ring_attention(*ts, causal=True, causal_block=4, key_padding_mask=pad[:, pos], layout="zigzag")
        out.backward((do[:, :, pos] * 2.0 ** -100).bfloat16())
        return [t.grad for t in ts]

    try:
        bf16 = grads(False)
        ra.HALF_BWD_DEVICES = ("cpu",)
        fp16 = grads(False)
        grads(True)
    finally:
        ra.HALF_BWD_DEVICES = ("cuda",)
        ra._half_bwd_exponent = exponent
    return taken, all(torch.equal(a, b) for a, b in zip(bf16, fp16)), float(fp16[2].abs().max())


@pytest.mark.parametrize("world", [1, 3])
def test_bf16_backward_through_fp16_kernels(world):
    results = run_world(_half_bwd_ring, world)
    for taken, identical, dk_max in results:
        if world == 1:  # one rank: SDPA's own kernel in bf16, nothing to add up across ranks
            assert taken == [None, None, None], taken
            continue
        # off (CPU) / on, with dO scaled by 2^(100 - e) into (1/2, 1] / off: one rank's q is too large
        assert taken[0] is None and taken[2] is None, taken
        assert -100 <= taken[1] <= -95, taken
        assert identical
        assert 0 < dk_max < 2.0 ** -90  # dK came back at dO's scale, not flushed to 0
    assert len({r[0][1] for r in results}) == 1  # one scale for the whole ring
