"""Time-sharded feature extraction: each rank decodes, encodes and attends over its own span.

The encoder's sampling grid (``k / fps`` on the video's real timestamps) is
computed identically on every rank from the probe. The T sampled frames are
cut into pieces by the ring layout -- contiguous: W pieces of ceil(T/W);
zigzag: 2W pieces, rank r taking pieces r and 2W-1-r -- padded at the global
end so every rank holds the same number of frames (padding is masked). Each
rank decodes only its own frames (the reader seeks there), encodes them
(through the on-disk cache), and runs the temporal model whose attention is
ring attention: no rank ever holds the frames or tokens of another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .config import FeaturesConfig
from .encoder import FrameEncoder
from .errors import ConfigError
from .ring.comm import world_of
from .sampling import Sampling, SamplingPlan, select_indices
from .source import VideoSource
from .temporal import TemporalModel
from .videoinfo import VideoInfo, probe

__all__ = ["FeatureRun", "frame_pieces", "video_hash", "FeatureEngine"]

CACHE_BLOCK = 64  # frames per cache file: a killed run loses at most one block of encoding


def frame_pieces(T: int, world: int, layout: str) -> list[list[tuple[int, int]]]:
    """Per rank, [(start, stop)] ranges into the T sampled frames, padded length per piece = stop-start+pad."""
    n = 2 * world if layout == "zigzag" and world > 1 else world
    c = max(1, math.ceil(T / n))
    order = [[r, 2 * world - 1 - r] if n == 2 * world else [r] for r in range(world)]
    return [[(p * c, (p + 1) * c) for p in ps] for ps in order]


def video_hash(path: str) -> str:
    """Content hash from the size and 34 sampled 64 KiB blocks (first, last, 32 evenly spaced).

    Reading a whole multi-GB file would cost seconds per run; a sampled hash
    still changes when the file is replaced or re-encoded.
    """
    h = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        for off in sorted({0, max(size - 65536, 0), *(int(size * i / 33) for i in range(1, 33))}):
            f.seek(off)
            h.update(f.read(65536))
    return h.hexdigest()


@dataclass
class FeatureRun:
    """This rank's part of the result."""

    features: Tensor
    """(F_local, dim) per-time-step outputs, padding removed."""
    timestamps: np.ndarray
    """(F_local,) float64 seconds."""
    order: np.ndarray
    """(F_local,) positions in the global sample list (to reassemble)."""
    total: int
    """T: sampled frames in the whole video."""


class FeatureEngine:
    """Encoder + temporal model for one config, reusable across videos."""

    def __init__(self, cfg: FeaturesConfig, group=None) -> None:
        self.cfg = cfg
        self.group = group
        torch.manual_seed(cfg.seed)  # identical init on every rank
        self.encoder = FrameEncoder(cfg.encoder)
        self.temporal = TemporalModel(cfg.temporal, self.encoder.dim, self.encoder.tokens_per_frame)
        self.rank, self.world = world_of(group)

    # ---------------------------------------------------------------- encoding with cache
    def _cache_path(self, vhash: str, indices: np.ndarray) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        key = hashlib.blake2b(digest_size=16)
        key.update(vhash.encode())
        key.update(json.dumps(self.encoder.settings(), sort_keys=True).encode())
        key.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
        return Path(self.cfg.cache_dir) / f"{key.hexdigest()}.safetensors"

    def encode(self, src: VideoSource, indices: np.ndarray, vhash: str) -> Tensor:
        """(len(indices), P, C) frame tokens, from the cache where present."""
        from safetensors.torch import load_file, save_file

        from .io import atomic_path

        from tqdm import tqdm

        out: list[Tensor] = []
        blocks = range(0, len(indices), CACHE_BLOCK)
        # progress on rank 0 only; each rank encodes its own span at the same pace
        for s in tqdm(blocks, desc="encode", unit="block", disable=self.rank != 0 or len(blocks) < 2, leave=False):
            block = indices[s : s + CACHE_BLOCK]
            path = self._cache_path(vhash, block)
            if path is not None and path.exists():
                out.append(load_file(str(path))["tokens"])
                continue
            plan = SamplingPlan(indices=block, members={"encode": np.ones(len(block), bool)})
            frames = np.concatenate([c.images for c in src.read_plan(plan, chunk_size=self.cfg.sampling.chunk_size)])
            if len(frames) != len(block):
                raise RuntimeError(f"{src.path}: {len(block) - len(frames)} frames of the span did not decode")
            tokens = self.encoder(frames).tokens
            if path is not None:
                with atomic_path(path) as tmp:
                    save_file({"tokens": tokens.contiguous()}, str(tmp))
            out.append(tokens)
        return torch.cat(out) if out else torch.zeros(0, self.encoder.tokens_per_frame, self.encoder.dim)

    # ---------------------------------------------------------------- the sharded run
    def plan(self, info: VideoInfo) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        sampled = select_indices(info.timestamps, Sampling(fps=self.cfg.sampling.fps))
        return sampled, frame_pieces(len(sampled), self.world, self.cfg.temporal.layout)

    def check_agreement(self, info: VideoInfo, vhash: str, T: int) -> None:
        """Ranks given different configs or videos stop with a clear error (not a ring hang)."""
        if self.world == 1:
            return
        mine = (json.dumps(asdict(self.cfg), sort_keys=True), vhash, T)
        allv: list = [None] * self.world
        dist.all_gather_object(allv, mine, group=self.group)
        for r, other in enumerate(allv):
            if other != mine:
                what = "config" if other[0] != mine[0] else "video"
                raise ConfigError(f"rank {r} has a different {what} than rank {self.rank}; every rank must run the same job")

    def run(self, video: str, *, with_grad: bool = False, source: VideoSource | None = None) -> FeatureRun:
        info = source.info if source is not None else probe(video)
        src = source or VideoSource(video, info=info)
        vhash = video_hash(str(video))
        sampled, pieces = self.plan(info)
        T = len(sampled)
        self.check_agreement(info, vhash, T)
        my = pieces[self.rank]
        tokens_l, ts_l, mask_l, order_l = [], [], [], []
        for start, stop in my:
            real = np.arange(start, min(stop, T))
            idx = sampled[real]
            tok = self.encode(src, idx, vhash)
            pad = (stop - start) - len(real)
            if pad:
                tok = torch.cat([tok, tok.new_zeros(pad, *tok.shape[1:])])
            tokens_l.append(tok)
            ts = np.concatenate([info.timestamps[idx], np.zeros(pad)])
            ts_l.append(ts)
            mask_l.append(np.arange(stop - start) < len(real))
            order_l.append(real)
        tokens = torch.cat(tokens_l).unsqueeze(0)
        ts = torch.as_tensor(np.concatenate(ts_l)).unsqueeze(0)
        mask = torch.as_tensor(np.concatenate(mask_l)).unsqueeze(0)
        with torch.set_grad_enabled(with_grad):
            _, per_step = self.temporal(tokens, ts, mask, group=self.group)
        per_step = per_step[0][mask[0]]
        return FeatureRun(per_step, ts[0][mask[0]].numpy(), np.concatenate(order_l), T)


def gather_run(run: FeatureRun, group=None) -> tuple[Tensor, np.ndarray] | None:
    """Rank 0: the whole (T, dim) features and (T,) timestamps in time order; None on other ranks.

    Only the per-time-step outputs are gathered (T x dim floats), never frames or tokens.
    """
    rank, world = world_of(group)
    parts = [(run.features.detach(), run.timestamps, run.order)]
    if world > 1:
        allp: list = [None] * world
        dist.all_gather_object(allp, parts[0], group=group)
        parts = allp
    if rank != 0:
        return None
    feats = torch.zeros(run.total, run.features.shape[-1])
    ts = np.zeros(run.total)
    for f, t, o in parts:
        feats[torch.as_tensor(o)] = f
        ts[o] = t
    return feats, ts
