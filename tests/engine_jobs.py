"""Worker-side jobs for tests/test_engine.py (importable by spawned processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist

CASES = [("contiguous", False), ("zigzag", True)]


def features_and_grads(rank, world, video):
    from videoring.config import load_config
    from videoring.engine import FeatureEngine, gather_run

    out = []
    for layout, causal in CASES:
        cfg = load_config(None, [f"temporal.layout={layout}", f"temporal.causal={causal}", "encoder.precision=fp32",
                                 "cache_dir=", "sampling.fps=2", "temporal.dim=64", "temporal.heads=4", "temporal.depth=2"])
        eng = FeatureEngine(cfg)
        run = eng.run(video, with_grad=True)
        # a loss over the whole video: the sum over ranks of each rank's part (mean over T)
        loss = (run.features ** 2).sum() / run.total
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in eng.temporal.parameters() if p.grad is not None])
        if world > 1:
            dist.all_reduce(grads)  # data-parallel style sum of the per-rank parameter gradients
        g = gather_run(run)
        out.append((g[0], g[1], grads) if rank == 0 else None)
    return out


def disagreeing_ranks(rank, world, video):
    from videoring.config import load_config
    from videoring.engine import FeatureEngine
    from videoring.errors import ConfigError

    # rank 1 was started with another sampling rate: both must stop with a clear error
    cfg = load_config(None, ["cache_dir=", f"sampling.fps={1 + rank}", "temporal.depth=1"])
    try:
        FeatureEngine(cfg).run(video)
    except ConfigError as e:
        return str(e)
    return "no error"


def recall_on_ranks(rank, world, layout, tilt=False, lag_s=0.0, T=23):
    """Recall (videoring.temporal) over this rank's frames of one fixed problem of ``T`` frames;
    returns {frame: output} and the summed gradient of its projection (and tilt: with ``tilt``,
    two heads, one untilted, one tilted towards older looks; with ``lag_s``, the lagged numbers
    too)."""
    from videoring.engine import frame_pieces
    from videoring.temporal import Recall

    torch.manual_seed(0)
    model = Recall(12, heads=2 if tilt else 1, tilt=tilt, lag_s=lag_s)
    if tilt:
        with torch.no_grad():  # the same head twice but for the tilt
            model.proj.weight[32:] = model.proj.weight[:32]
            model.proj.bias[32:] = model.proj.bias[:32]
            model.tilt.copy_(torch.tensor([0.0, 0.3]))
    g = torch.Generator().manual_seed(1)
    A = 3
    looks = torch.rand(T, A, 12, generator=g)
    mask = torch.rand(T, A, generator=g) < 0.7
    if T >= 18:
        looks[15:18, 1] = looks[2:5, 0]  # a look-alike returns
        mask[2:5, 0] = mask[15:18, 1] = True
    times = torch.arange(T, dtype=torch.float64) * 1.5
    frames = [f for a, b in frame_pieces(T, world, layout)[rank] for f in range(a, b)]
    real = torch.tensor([f < T for f in frames])
    idx = torch.tensor([min(f, T - 1) for f in frames])
    here = mask[idx] & real[:, None]
    out = model(looks[idx][None], torch.where(real, times[idx], 0.0)[None], here[None], None, layout)[0]
    # the actors' outputs only (absent slots are never read; one rank compacts them away in training)
    (out[here] ** 2).sum().backward()
    grad = torch.cat([model.proj.weight.grad.flatten()] + ([model.tilt.grad] if tilt else []))
    if world > 1:
        dist.all_reduce(grad)
    return {f: out[i] for i, f in enumerate(frames) if f < T}, grad, mask
