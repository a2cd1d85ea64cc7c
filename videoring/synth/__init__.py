"""Synthetic clips with exact ground truth (tracks, actions, segments).

``synthesize(out, seed=..., duration_s=...)`` writes a real H.264 MP4 through
PyAV and ``out.json`` with its ground truth in the results schema
(:mod:`videoring.results`). ``lossless=True`` encodes RGB losslessly
(libx264rgb, crf 0) so decode tests can compare exact frames, which
:func:`render_frames` regenerates without any file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from ..io import atomic_path
from ..results import ClipAction, Results, Segment, Track, TrackAction, VideoMeta
from .render import Renderer
from .scenario import ACTIONS, Scenario, make_scenario

__all__ = ["ACTIONS", "synthesize", "render_frames", "ground_truth", "make_scenario", "Scenario"]

MIN_VISIBLE = 0.2  # a box less than 20% inside the frame is not in the ground truth


def _check(duration_s: float, fps: float, width: int, height: int) -> None:
    if not (duration_s > 0 and duration_s <= 6 * 3600):
        raise ConfigError(f"synth duration: got {duration_s!r} s; use 0 < duration <= 21600")
    if not (0 < fps <= 240):
        raise ConfigError(f"synth fps: got {fps!r}; use 0 < fps <= 240")
    if not (32 <= width <= 3840 and 32 <= height <= 2160) or width % 2 or height % 2:
        raise ConfigError(f"synth size: got {width}x{height}; use even sizes from 32x32 to 3840x2160")


def _n_frames(sc: Scenario) -> int:
    return max(1, int(round(sc.duration_s * sc.fps)))


def _frames(sc: Scenario, renderer: Renderer) -> Iterator[np.ndarray]:
    actors = sorted(sc.actors, key=lambda a: a.t_enter)
    nxt = 0
    active: list = []
    for i in range(_n_frames(sc)):
        t = i / sc.fps
        while nxt < len(actors) and actors[nxt].t_enter <= t:
            active.append(actors[nxt])
            nxt += 1
        active = [a for a in active if a.t_exit >= t]
        yield renderer.frame(i, active)


def render_frames(seed: int, duration_s: float, fps: float = 10.0, size: tuple[int, int] = (320, 240), pan: bool = False) -> Iterator[np.ndarray]:
    """The exact RGB frames ``synthesize`` encodes (for lossless decode tests)."""
    sc = make_scenario(seed, duration_s, fps, size[0], size[1], pan)
    return _frames(sc, Renderer(sc))


def _merge(phases: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Join back-to-back phases of the same label (idle then idle is one idle)."""
    out: list[tuple[str, float, float]] = []
    for label, t0, t1 in phases:
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1], t1)
        else:
            out.append((label, t0, t1))
    return out


def ground_truth(sc: Scenario, renderer: Renderer, video_path: str) -> Results:
    n = _n_frames(sc)
    duration = n / sc.fps
    W, H = sc.width, sc.height
    tracks, actions, segs = [], [], {}
    for a in sc.actors:
        i0 = max(0, int(np.ceil(a.t_enter * sc.fps)))
        i1 = min(n - 1, int(np.floor(a.t_exit * sc.fps)))
        boxes = []
        for i in range(i0, i1 + 1):
            t = i / sc.fps
            s = renderer.state(a, t)
            if s.visible < MIN_VISIBLE:
                continue
            x1, y1, x2, y2 = s.box
            boxes.append([round(t, 6), round(max(x1, 0), 2), round(max(y1, 0), 2), round(min(x2, W), 2), round(min(y2, H), 2), 1.0])
        if boxes:
            tracks.append(Track(a.track_id, "actor", boxes, appearance=a.appearance.id))
        for label, t0, t1 in _merge(a.phases):
            if t0 >= duration:
                continue
            t0, t1 = round(t0, 3), round(min(t1, duration), 3)
            actions.append(TrackAction(a.track_id, label, t0, t1, 1.0))
            if label != "idle":
                segs[(label, t0, t1)] = Segment(label, t0, t1, 1.0)  # a meet is one segment for both
    meta = VideoMeta(str(video_path), duration, sc.fps, n, W, H)
    clip = [ClipAction(label) for label in sorted({a.label for a in actions})]
    return Results(meta, tracks, sorted(segs.values(), key=lambda s: (s.start_s, s.label)), actions, clip)


def synthesize(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    duration_s: float = 20.0,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
    pan: bool = False,
    lossless: bool = False,
    crf: int = 23,
) -> Results:
    """Write ``out`` (H.264 MP4) and ``out`` with suffix .json; return the ground truth."""
    width, height = size
    _check(duration_s, fps, width, height)
    out = Path(out)
    sc = make_scenario(seed, duration_s, fps, width, height, pan)
    renderer = Renderer(sc)
    _encode(out, _frames(sc, renderer), fps, width, height, lossless, crf)
    gt = ground_truth(sc, renderer, out.name)
    gt.to_json(out.with_suffix(".json"))
    return gt


def _encode(out: Path, frames: Iterator[np.ndarray], fps: float, width: int, height: int, lossless: bool, crf: int) -> None:
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(out) as tmp:
        with av.open(str(tmp), "w", format="mp4") as c:
            if lossless:
                s = c.add_stream("libx264rgb", rate=rate)
                s.pix_fmt = "rgb24"
                s.options = {"crf": "0", "preset": "ultrafast", "g": str(max(1, int(round(2 * fps))))}
            else:
                s = c.add_stream("libx264", rate=rate)
                s.pix_fmt = "yuv420p"
                s.options = {"crf": str(crf), "preset": "veryfast", "g": str(max(1, int(round(2 * fps))))}
            s.width, s.height = width, height
            s.time_base = Fraction(1) / rate
            s.codec_context.thread_count = 0
            for i, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts = i
                for packet in s.encode(vf):
                    c.mux(packet)
            for packet in s.encode():
                c.mux(packet)
