"""Which frames to keep: sampling by time, computed from exact timestamps.

A :class:`Sampling` says what one consumer wants (the tracker at 10 fps, the
encoder at 1 fps). :func:`plan` turns several of them into one sorted list of
frame indices plus, per consumer, which of those frames are its own, so that
a single decode pass serves every consumer.

Time sampling picks, for each target time ``t = start + k / fps``, the frame
on screen at ``t`` (the last frame whose timestamp is <= t): it follows the
real timestamps, so variable-frame-rate video samples correctly. A frame is
never returned twice; when the target rate exceeds the video's, every frame
in range is returned once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import ConfigError

__all__ = ["Sampling", "SamplingPlan", "plan", "select_indices"]


@dataclass(frozen=True)
class Sampling:
    """Which frames one consumer reads."""

    fps: float | None = None
    """Target frames per second (by timestamps); None keeps every frame."""
    start_s: float = 0.0
    """Start of the time range, inclusive."""
    end_s: float | None = None
    """End of the time range, exclusive; None = end of video."""
    stride: int = 1
    """Keep every ``stride``-th of the frames selected above."""
    max_frames: int | None = None
    """Stop after this many frames."""

    def __post_init__(self) -> None:
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"sampling.fps: got {self.fps!r}; use a positive number of frames per second or None")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ConfigError(f"sampling.start_s: got {self.start_s!r}; use seconds >= 0")
        if self.end_s is not None and not (self.end_s > self.start_s):
            raise ConfigError(f"sampling.end_s: got {self.end_s!r}; must be greater than start_s={self.start_s}")
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ConfigError(f"sampling.stride: got {self.stride!r}; use an integer >= 1")
        if self.max_frames is not None and not (isinstance(self.max_frames, int) and self.max_frames >= 1):
            raise ConfigError(f"sampling.max_frames: got {self.max_frames!r}; use an integer >= 1 or None")


def select_indices(timestamps: np.ndarray, s: Sampling) -> np.ndarray:
    """Frame indices (sorted, unique) that ``s`` selects from frames at ``timestamps``."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    end = np.inf if s.end_s is None else s.end_s
    lo = int(np.searchsorted(ts, s.start_s, side="left"))
    hi = int(np.searchsorted(ts, end, side="left"))
    if s.fps is None:
        idx = np.arange(lo, hi, dtype=np.int64)
    else:
        stop = min(end, ts[-1] + 1e-9)  # no target after the last frame
        # An integer grid k / fps (not repeated addition), so long videos do not drift.
        n = int(math.ceil((stop - s.start_s) * s.fps))
        targets = s.start_s + np.arange(max(n, 0), dtype=np.float64) / s.fps
        targets = targets[targets < end]
        # the frame on screen at t: last timestamp <= t (+1e-9 s for float noise in stored times)
        idx = np.searchsorted(ts, targets + 1e-9, side="right") - 1
        idx = idx[(idx >= lo) & (idx < hi)]
        idx = np.unique(idx)
    idx = idx[:: s.stride]
    if s.max_frames is not None:
        idx = idx[: s.max_frames]
    return idx.astype(np.int64)


@dataclass(frozen=True)
class SamplingPlan:
    """The union of several consumers' frames, for one decode pass."""

    indices: np.ndarray
    """Sorted unique frame indices to decode and convert."""
    members: dict[str, np.ndarray]
    """Per consumer: a bool mask over ``indices``."""

    def __len__(self) -> int:
        return int(self.indices.size)


def plan(timestamps: np.ndarray, samplers: Mapping[str, Sampling]) -> SamplingPlan:
    """Merge the consumers' selections into one pass."""
    if not samplers:
        raise ConfigError("sampling: no consumer given; pass at least one Sampling")
    chosen = {name: select_indices(timestamps, s) for name, s in samplers.items()}
    union = np.unique(np.concatenate(list(chosen.values()))) if chosen else np.zeros(0, np.int64)
    members = {name: np.isin(union, idx) for name, idx in chosen.items()}
    return SamplingPlan(indices=union.astype(np.int64), members=members)
