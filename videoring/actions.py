"""Action model (temporal model over frame + actor tokens, and three heads) and decoding.

Heads, on the temporal model's outputs:

- clip: masked mean of the per-time-step outputs over the whole video (summed
  across ranks) -> multi-label logits: which actions happen in the clip;
- dense: per time step -> multi-label logits: which actions are going on;
- actor: per actor token -> one label per actor and time step (the phases of
  an actor never overlap).

Decoding (:func:`decode`): per track, the label probabilities are smoothed over
time (``actions.smooth_s``), then runs of the same arg-max label become
``track_actions`` (boundaries half-way between time steps); every non-background
run becomes a clip-level segment scored by the actor and dense heads together
(the smoothed probabilities themselves become each track's ``scores``);
temporal NMS merges the duplicates of the labels in ``actions.nms_labels``
(both actors of a ``meet``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from .actors import KIN_HEIGHT, kin_dim, look_dim
from .config import ActionConfig, PipelineConfig
from .errors import ConfigError
from .results import Segment, TrackAction
from .ring.comm import world_of
from .temporal import TemporalModel

__all__ = ["ActionModel", "ActionOutputs", "decode", "smooth", "temporal_nms", "save_model", "load_model"]


@dataclass
class ActionOutputs:
    clip: Tensor
    """(B, L) clip logits (identical on every rank)."""
    dense: Tensor
    """(B, F, L) per-time-step logits."""
    actor: Tensor
    """(B, F, A, L) per-actor logits."""


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward passes the gradient straight through.

    Every rank computes the same clip loss on the same summed value, so the
    gradient of that (replicated) loss w.r.t. this rank's addend is exactly the
    incoming gradient: no communication in backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


class ActionModel(nn.Module):
    def __init__(self, cfg: PipelineConfig, enc_dim: int, tokens_per_frame: int) -> None:
        super().__init__()
        a = cfg.actions
        self.labels = list(a.labels)
        self.actions_cfg = a  # what the actor token holds: load_model names a mismatch
        L = len(self.labels)
        roi_dim = enc_dim * a.roi_size * a.roi_size
        look = look_dim(a.texture, a.texture_masked)
        actor_dim = roi_dim + look + kin_dim(a.half_windows)  # the layout videoring.pipeline builds
        self.temporal = TemporalModel(cfg.temporal, enc_dim, tokens_per_frame, actor_dim, a.max_actors,
                                      look=slice(roi_dim, roi_dim + look), height=roi_dim + look + KIN_HEIGHT if a.recall_shape else None,
                                      recall_heads=a.recall_heads, recall_tilt=a.recall_tilt, recall_lag_s=a.recall_lag_s,
                                      recall_lag_tilt=a.recall_lag_tilt)
        d = cfg.temporal.dim
        self.clip_head = nn.Linear(d, L)
        self.dense_head = nn.Linear(d, L)
        self.actor_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, L))

    def forward(self, tokens, timestamps, frame_mask, actors, actor_mask, group=None) -> ActionOutputs:
        x, per_step = self.temporal(tokens, timestamps, frame_mask, group, actors, actor_mask)
        return self._heads(x, per_step, frame_mask, group)

    def infer(self, inp, group=None) -> ActionOutputs:
        """Inference on a :class:`videoring.pipeline.ModelInputs`, which it consumes: its tokens
        and actor features are dropped once embedded, before the transformer's own peak (the
        hour at one rank: 48 MB)."""
        x, kpm = self.temporal.embed(inp.tokens, inp.times, inp.frame_mask, inp.actors, inp.actor_mask, group)
        inp.tokens = inp.actors = None
        x, per_step = self.temporal.encode(x, kpm, group)  # (in place at inference: x is not held twice)
        return self._heads(x, per_step, inp.frame_mask, group)

    def _heads(self, x: Tensor, per_step: Tensor, frame_mask: Tensor, group) -> ActionOutputs:
        P = self.temporal.P
        m = frame_mask.unsqueeze(-1).to(per_step.dtype)
        num, den = (per_step * m).sum(1), m.sum(1)
        _, world = world_of(group)
        if world > 1:
            num = _SumAcrossRanks.apply(num, group)
            den = _SumAcrossRanks.apply(den, group)
        clip = self.clip_head(num / den.clamp_min(1))
        return ActionOutputs(clip, self.dense_head(per_step), self.actor_head(x[:, :, P:]))


# ---------------------------------------------------------------- checkpoints
def save_model(model: ActionModel, path: str | Path, meta: dict) -> None:
    """safetensors weights + the config and label map in its metadata (no pickle)."""
    import json

    from safetensors.torch import save_file

    from .io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"videoring": json.dumps(meta)})


_SAME_SHAPES = ("recall_lag_s", "band_mask", "texture", "texture_masked")  # of _TOKEN_FIELDS: not told apart by shapes
_TOKEN_FIELDS = ("half_windows", "texture", "texture_masked", "band_mask", "roi_size", "max_actors", "recall_shape", "recall_heads", "recall_tilt", "recall_lag_s")  # settings that shape the actor tokens or Recall


def load_model(model: ActionModel, path: str | Path) -> dict:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"actions.model: {p} not found; train one (videoring train) or set actions.model=null")
    try:
        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("videoring", "{}"))
        sd = load_file(str(p))
    except Exception as e:
        raise ConfigError(f"actions.model: {p} is not a videoring safetensors checkpoint ({type(e).__name__})") from None
    if meta.get("labels") and meta["labels"] != model.labels:
        raise ConfigError(f"actions.model: {p} was trained for labels {meta['labels']}, the config has {model.labels}")
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError:  # tensors of other shapes: trained with other actor features or model sizes
        missing, unexpected = ["(tensor shapes differ)"], []
    trained, base = (meta.get("config") or {}).get("actions", {}), ActionConfig()  # older checkpoints: defaults
    was = {k: trained.get(k, getattr(base, k)) for k in _TOKEN_FIELDS}
    hint = [f"actions.{k}={json.dumps(v)}" for k, v in was.items() if v != getattr(model.actions_cfg, k)]
    # Recall's lag and the band mask have no weights of their own, and texture without
    # texture_masked has the shapes of the reverse: such a checkpoint loads, and would recall
    # other keys or read other numbers than trained on
    if missing or unexpected or any(was[k] != getattr(model.actions_cfg, k) for k in _SAME_SHAPES):
        shapes = f" (missing {missing[:2]}, unexpected {unexpected[:2]})" if missing or unexpected else ""
        raise ConfigError(f"actions.model: {p} does not fit this config{shapes}; "
                          + (f"it was trained with {' '.join(hint)}" if hint else "use the config it was trained with"))
    return meta


# ---------------------------------------------------------------- decoding
def _tiou(a: Segment, b: Segment) -> float:
    inter = max(0.0, min(a.end_s, b.end_s) - max(a.start_s, b.start_s))
    union = max(a.end_s, b.end_s) - min(a.start_s, b.start_s)
    return inter / union if union > 0 else 0.0


def temporal_nms(segs: list[Segment], iou: float) -> list[Segment]:
    """Per label, keep the best-scoring segment of each group overlapping by tIoU > ``iou``."""
    kept: list[Segment] = []
    for s in sorted(segs, key=lambda s: -s.score):
        if all(k.label != s.label or _tiou(k, s) <= iou for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: (s.start_s, s.label))


def smooth(ts: np.ndarray, probs: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean over time (sigma seconds, cut at 3 sigma) of one track's (n, L)
    probabilities at sorted times ``ts``: a one-step flicker no longer cuts a phase in two.
    O(n * window), so an hour-long track costs no n x n matrix."""
    if sigma <= 0 or len(ts) < 2:
        return probs
    lo = np.searchsorted(ts, ts - 3 * sigma, "left")
    hi = np.searchsorted(ts, ts + 3 * sigma, "right")
    out = np.empty_like(probs)
    for j in range(len(ts)):
        w = np.exp(-0.5 * ((ts[lo[j] : hi[j]] - ts[j]) / sigma) ** 2)
        out[j] = w @ probs[lo[j] : hi[j]] / w.sum()
    return out


def decode(
    cfg: ActionConfig,
    step_times: np.ndarray,
    dense_prob: np.ndarray,
    actor_obs: list[tuple[int, float, np.ndarray]],
    track_span: dict[int, tuple[float, float]],
) -> tuple[list[TrackAction], list[Segment], dict[int, list[list[float]]]]:
    """Per-track actions, clip segments, and per-track scores.

    step_times (T,) and dense_prob (T, L): the dense head over the whole video;
    actor_obs: (global track id, time, label probabilities) per actor token;
    track_span: track id -> (first, last) time it was tracked.
    The scores are each track's smoothed probabilities, rows ``[t, p_1, ..., p_L]`` (4 decimals):
    its actions are their arg-max runs.
    """
    labels = cfg.labels
    by_track: dict[int, list[tuple[float, np.ndarray]]] = {}
    for tid, t, p in actor_obs:
        by_track.setdefault(tid, []).append((t, p))
    actions: list[TrackAction] = []
    segs: list[Segment] = []
    scores: dict[int, list[list[float]]] = {}
    for tid, obs in sorted(by_track.items()):
        obs.sort(key=lambda o: o[0])
        ts = np.array([o[0] for o in obs])
        probs = smooth(ts, np.stack([o[1] for o in obs]), cfg.smooth_s)
        scores[tid] = np.round(np.concatenate([ts[:, None], probs], 1), 4).tolist()
        lab = probs.argmax(1)
        t_first, t_last = track_span.get(tid, (ts[0], ts[-1]))
        bounds = np.concatenate([[min(t_first, ts[0])], (ts[1:] + ts[:-1]) / 2, [max(t_last, ts[-1])]])
        s = 0
        for e in range(1, len(ts) + 1):
            if e < len(ts) and lab[e] == lab[s]:
                continue
            li = int(lab[s])
            score = float(probs[s:e, li].mean())
            t0, t1 = float(bounds[s]), float(bounds[e])
            actions.append(TrackAction(tid, labels[li], round(t0, 3), round(t1, 3), round(score, 4)))
            if labels[li] != cfg.background:
                m = (step_times >= t0) & (step_times <= t1)
                dense = float(dense_prob[m, li].mean()) if m.any() else score
                seg_score = (score + dense) / 2
                if cfg.segment_tau_s > 0:  # a phase cut short ranks below whole ones
                    seg_score *= 1 - math.exp(-(t1 - t0) / cfg.segment_tau_s)
                segs.append(Segment(labels[li], round(t0, 3), round(t1, 3), round(seg_score, 4)))
            s = e
    if cfg.nms_labels is None:
        return actions, temporal_nms(segs, cfg.nms_iou), scores
    group = set(cfg.nms_labels)
    kept = [s for s in segs if s.label not in group] + temporal_nms([s for s in segs if s.label in group], cfg.nms_iou)
    return actions, sorted(kept, key=lambda s: (s.start_s, s.label)), scores
