"""Pixels for a :class:`~videoring.synth.scenario.Scenario`, and its exact boxes.

Everything expensive is made once (background world, noise bank, sprites per
appearance and spin angle), so a frame costs a slice copy, one add and a few
masked pastes: an hour at 320x240 renders in about a minute.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .scenario import LANE_BOTTOMS, Actor, Appearance, Scenario

__all__ = ["Renderer", "ActorState"]

N_ANGLES = 16
N_NOISE = 8


@dataclass(frozen=True)
class ActorState:
    label: str
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in screen pixels, unclipped."""
    visible: float
    """Fraction of the box inside the frame."""


def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    if shape == "circle":
        cv2.ellipse(m, (round(cx), round(cy)), (max(w // 2, 1), max(h // 2, 1)), 0, 0, 360, 1, -1)
    elif shape == "square":
        m[:] = 1
    else:
        if shape == "triangle":
            pts = [(cx, 0), (w - 1, h - 1), (0, h - 1)]
        elif shape == "diamond":
            pts = [(cx, 0), (w - 1, cy), (cx, h - 1), (0, cy)]
        elif shape == "hexagon":
            pts = [(w * 0.25, 0), (w * 0.75, 0), (w - 1, cy), (w * 0.75, h - 1), (w * 0.25, h - 1), (0, cy)]
        elif shape == "star":
            pts = []
            for k in range(10):
                r = 1.0 if k % 2 == 0 else 0.45
                a = -math.pi / 2 + k * math.pi / 5
                pts.append((cx + r * cx * math.cos(a), cy + r * cy * math.sin(a)))
        elif shape == "cross":
            a, b = w / 3, h / 3
            pts = [(a, 0), (2 * a, 0), (2 * a, b), (w - 1, b), (w - 1, 2 * b), (2 * a, 2 * b), (2 * a, h - 1),
                   (a, h - 1), (a, 2 * b), (0, 2 * b), (0, b), (a, b)]
        elif shape == "tee":
            a, b = w / 3, h / 3
            pts = [(0, 0), (w - 1, 0), (w - 1, b), (2 * a, b), (2 * a, h - 1), (a, h - 1), (a, b), (0, b)]
        else:
            raise ValueError(f"unknown shape {shape!r}")
        cv2.fillPoly(m, [np.round(np.asarray(pts)).astype(np.int32)], 1)
    if not m.any():
        m[:] = 1  # tiny sizes: at least a blob
    return m.astype(bool)


def _sprite(look: Appearance, H: int) -> tuple[np.ndarray, np.ndarray]:
    h = max(6, int(round(look.height_frac * H)))
    w = max(4, int(round(h * look.aspect)))
    mask = _shape_mask(look.shape, h, w)
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = np.asarray(look.color, np.float32)
    shade = np.linspace(1.08, 0.82, h, dtype=np.float32)[:, None, None]  # light from above
    rgb *= shade
    yy, xx = np.mgrid[0:h, 0:w]
    band = max(2, h // 8)
    if look.pattern == "stripes":
        dark = (yy // band) % 2 == 1
    elif look.pattern == "dots":
        dark = ((yy // band) % 2 == 0) & ((xx // band) % 2 == 0)
    elif look.pattern == "frame":
        b = max(1, min(h, w) // 6)
        dark = (yy < b) | (yy >= h - b) | (xx < b) | (xx >= w - b)
    else:
        dark = np.zeros((h, w), bool)
    rgb[dark] = rgb[dark] * 0.45 + 20
    return mask, np.clip(rgb, 0, 255).astype(np.uint8)


def _rotate(mask: np.ndarray, rgb: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    d = int(math.ceil(math.hypot(h, w))) | 1
    M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0)
    M[:, 2] += [(d - w) / 2, (d - h) / 2]
    m = cv2.warpAffine(mask.astype(np.uint8), M, (d, d), flags=cv2.INTER_NEAREST) > 0
    c = cv2.warpAffine(rgb, M, (d, d), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return m[y0:y1, x0:x1], c[y0:y1, x0:x1]


class Renderer:
    """Draws frames and reports every actor's state at any time."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        rng = np.random.default_rng(sc.seed + 7919)
        H, W, Ww = sc.height, sc.width, sc.world_width
        low = rng.random((max(H // 24, 2) + 2, max(Ww // 24, 2) + 2, 3)).astype(np.float32)
        bg = cv2.resize(low, (Ww, H), interpolation=cv2.INTER_CUBIC)
        gray = bg.mean(axis=2, keepdims=True)
        bg = 70 + 110 * (0.35 * bg + 0.65 * gray)  # muted, so saturated actors stand out
        for _ in range(max(3, Ww // 40)):  # furniture: muted rectangles
            x0, y0 = int(rng.integers(0, Ww)), int(rng.integers(0, H))
            x1, y1 = x0 + int(rng.integers(4, max(5, Ww // 6))), y0 + int(rng.integers(4, max(5, H // 5)))
            bg[y0:y1, x0:x1] = bg[y0:y1, x0:x1] * 0.7 + rng.uniform(60, 170) * 0.3
        bg += rng.normal(0, 6, bg.shape)  # static grain
        self.world = np.clip(bg, 20, 222).astype(np.uint8)
        self.noise = rng.integers(0, 12, (N_NOISE, H, W, 3), dtype=np.uint8)  # per-frame sensor noise
        pw = max(3, int(0.05 * W))
        pillar = np.linspace(95, 140, pw, dtype=np.float32)[None, :, None] * np.ones((H, 1, 3), np.float32)
        pillar[..., 2] *= 0.8
        self.pillar = pillar.astype(np.uint8)
        self.sprites: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._phase_starts = {id(a): [p[1] for p in a.phases] for a in sc.actors}

    # -- geometry
    def sprite(self, look: Appearance, angle_idx: int) -> tuple[np.ndarray, np.ndarray]:
        key = (look.id, angle_idx)
        if key not in self.sprites:
            base = self.sprites.get((look.id, 0)) or _sprite(look, self.sc.height)
            self.sprites[(look.id, 0)] = base
            if angle_idx:
                self.sprites[key] = _rotate(*base, 360.0 * angle_idx / N_ANGLES)
        return self.sprites[key]

    def phase(self, actor: Actor, t: float) -> tuple[str, float]:
        i = bisect.bisect_right(self._phase_starts[id(actor)], t) - 1
        label, t0, _ = actor.phases[max(i, 0)]
        return label, t0

    def pose(self, actor: Actor, t: float) -> tuple[str, float, float, int, float]:
        """label, screen x (left of unrotated sprite), bottom y, spin angle index, hand offset."""
        label, t0 = self.phase(actor, t)
        look = actor.appearance
        H = self.sc.height
        h = max(6, int(round(look.height_frac * H)))
        x = float(np.interp(t, actor.knots_t, actor.knots_x)) - float(self.sc.cam_x(t))
        y = LANE_BOTTOMS[actor.lane] * H
        dt = t - t0
        angle, hand = 0, 0.0
        if label == "jump":
            y -= 0.6 * h * abs(math.sin(math.pi * dt / 0.8))
        elif label == "spin":
            angle = int(round(dt / 1.2 * N_ANGLES)) % N_ANGLES
        elif label == "wave":
            hand = math.sin(2 * math.pi * 1.5 * dt)
        elif label in ("walk", "arrive", "return", "meet"):
            y -= 0.04 * h * abs(math.sin(2 * math.pi * 2.0 * dt))
        elif label == "run":
            y -= 0.08 * h * abs(math.sin(2 * math.pi * 3.0 * dt))
        return label, x, y, angle, hand

    def state(self, actor: Actor, t: float) -> ActorState:
        label, x, y, angle, _ = self.pose(actor, t)
        base_m, _ = self.sprite(actor.appearance, 0)
        m, _ = self.sprite(actor.appearance, angle)
        bh, bw = base_m.shape
        h, w = m.shape
        cx, cy = x + bw / 2, y - bh / 2
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        W, H = self.sc.width, self.sc.height
        iw = max(0.0, min(x2, W) - max(x1, 0))
        ih = max(0.0, min(y2, H) - max(y1, 0))
        vis = iw * ih / max((x2 - x1) * (y2 - y1), 1e-6)
        return ActorState(label, (x1, y1, x2, y2), vis)

    # -- pixels
    def frame(self, i: int, active: list[Actor]) -> np.ndarray:
        sc = self.sc
        t = i / sc.fps
        W = sc.width
        cx = int(round(float(sc.cam_x(t))))
        out = np.add(self.world[:, cx : cx + W], self.noise[i % N_NOISE])
        for actor in sorted(active, key=lambda a: a.lane):
            _, x, y, angle, hand = self.pose(actor, t)
            base_m, base_c = self.sprite(actor.appearance, 0)
            m, c = self.sprite(actor.appearance, angle)
            bh, bw = base_m.shape
            h, w = m.shape
            x0 = int(round(x + bw / 2 - w / 2))
            y0 = int(round(y - bh / 2 - h / 2))
            _paste(out, m, c, x0, y0)
            if hand:
                s = max(2, bw // 4)
                hx = int(round(x + bw / 2 + hand * bw * 0.6 - s / 2))
                hy = int(round(y - bh - s))
                _paste(out, np.ones((s, s), bool), np.full((s, s, 3), base_c[bh // 2, bw // 2], np.uint8), hx, hy)
        px = int(round(sc.occluder_x - cx))
        pw = self.pillar.shape[1]
        a, b = max(px, 0), min(px + pw, W)
        if a < b:
            out[:, a:b] = self.pillar[:, a - px : b - px]
        return out


def _paste(out: np.ndarray, mask: np.ndarray, rgb: np.ndarray, x0: int, y0: int) -> None:
    H, W = out.shape[:2]
    h, w = mask.shape
    a, b = max(x0, 0), min(x0 + w, W)
    c, d = max(y0, 0), min(y0 + h, H)
    if a >= b or c >= d:
        return
    m = mask[c - y0 : d - y0, a - x0 : b - x0]
    out[c:d, a:b][m] = rgb[c - y0 : d - y0, a - x0 : b - x0][m]
