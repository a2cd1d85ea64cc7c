"""Actor tokens: what the temporal model knows about each tracked actor at each time step.

Per actor and encoder frame, three parts:

- appearance: RoIAlign (``torchvision.ops.roi_align``) of the ViT patch grid
  under the actor's box, ``roi_size x roi_size`` cells, flattened;
- a thumbnail (:data:`THUMB_DIM` numbers): the box's pixels at 6x6 RGB, an
  identity signature (shape, colour, coarse pattern) that attention can match
  against actors seen long before (``arrive`` vs ``return``); optionally
  (``actions.texture``) :data:`TEX_DIM` more numbers of :func:`texture_features`, the
  surface pattern at full resolution, which 6x6 averages away;
- kinematics (:data:`KIN_DIM` numbers): box centre and size (fractions of the
  frame), velocity (frame sizes per second, over +-0.5 s of the track), spread
  of the centre height and of the box size over +-1 s (jumps, spins), detector
  confidence and class, seconds since the track began and until it ends (log-scaled),
  the box's mean colour and its *appearance change*: the mean absolute
  difference of the box's content between consecutive tracking frames, aligned
  on the box (so walking is ~0 and spinning is not); the same two for the band
  *above* the box (how much of it has the box's colour, and how much it
  changes: a hand waving over the head is outside the box); and the gap to the
  nearest other actor on the same ground line, with its rate of change (two
  actors walking up to each other and standing together: ``meet``).

Rows of a track table carry these per-box numbers in columns 8..14 (r, g, b,
change, above_match, above_change, gap), computed on the tracking frames while
they are in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .arena import Arena

__all__ = ["ActorTokens", "DET_BOX", "KIN_DIM", "KIN_HEIGHT", "ROW_COLS", "TEX_DIM", "THUMB_DIM", "look_dim", "masked_texture_features", "pixel_stats", "roi_features", "texture_features", "thumbnails",
           "neighbour_gap", "kinematics", "kin_dim"]

ROW_COLS = 19  # t, id, x1, y1, x2, y2, conf, cls, r, g, b, change, above_match, above_change, gap, dx1, dy1, dx2, dy2
DET_BOX = slice(15, 19)
"""Where a track row holds the detection's own box: the box reported and evaluated. Columns 2:6
hold the tracker's filtered (Kalman) box, which the features read: it lags a running actor, but
its motion is smooth, and the bounce and size statistics of :func:`kinematics` need that (on
the raw detections run vs walk fell from 0.86 to 0.44 of matched boxes)."""
KIN_DIM = 21
KIN_HEIGHT = 3  # kinematics()[KIN_HEIGHT]: the box's height over the frame's (Recall compares it)
HALF_DIM = 16  # kinematics(halves=True): 8 more before t, 8 after
_CROP = 12
_THUMB = 6
THUMB_DIM = _THUMB * _THUMB * 3
TEX_DIM = 4
GAP_MAX = 4.0  # box widths: "no one near" (also the value when alone)
# the band above a box: as tall as half the box, reaching 40% of its width out on each side
# (where a raised hand is; the synthetic wave swings 0.6 widths from the centre)
_ABOVE_H, _ABOVE_OUT = 0.5, 0.4
_BAND = (6, 12)  # (h, w) the band is resized to
_MATCH = 60.0  # RGB distance under which a band pixel "has the box's colour"


def _crop(img: np.ndarray, box: np.ndarray, size: tuple[int, int] = (_CROP, _CROP)) -> np.ndarray | None:
    """The box's pixels (clipped to the frame) resized to size (h, w), float32; None if under 2x2."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return cv2.resize(img[y1:y2, x1:x2], (size[1], size[0]), interpolation=cv2.INTER_AREA).astype(np.float32)


def _above(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return np.array([x1 - _ABOVE_OUT * w, y1 - _ABOVE_H * h, x2 + _ABOVE_OUT * w, y1])


class PixelStats:
    """Per-box colour, appearance change and the band above it; remembers each ID's last crops
    across chunks.

    Crops of IDs unseen for :attr:`FORGET_S` seconds are dropped: a tracker does not revive
    an ID after so long (ByteTrack keeps lost tracks for 30 frames), and an hour of video
    would otherwise keep a crop of every ID it ever had.
    """

    FORGET_S = 60.0

    def __init__(self, band_mask: bool = False) -> None:
        self.band_mask = band_mask
        """Leave out of the band the cells other boxes of the frame cover (NaN in the saved band):
        an actor passing above an idle one otherwise reads as a waving hand."""
        self.last: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # ID -> (box crop, band crop)
        self._seen: dict[int, float] = {}  # ID -> time of its last crop (not saved on resume: only prunes)

    def __call__(self, img: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """rows (N, 8) of one frame -> (N, 6) r, g, b, change, above_match, above_change, all in [0, 1]."""
        if len(rows):
            t = float(rows[0, 0])
            old = [tid for tid in self.last if self._seen.setdefault(tid, t) < t - self.FORGET_S]
            for tid in old:
                del self.last[tid], self._seen[tid]
        out = np.zeros((len(rows), 6))
        for i, r in enumerate(rows):
            c = _crop(img, r[2:6])
            if c is None:
                continue
            q = _CROP // 4
            mean = c[q:-q, q:-q].reshape(-1, 3).mean(0)
            out[i, :3] = mean / 255.0
            above = _above(r[2:6])
            band = _crop(img, above, _BAND)
            if band is not None and self.band_mask:
                band[_covered(img.shape, above, np.delete(rows, i, 0)[:, 2:6])] = np.nan
            if band is not None:
                near = np.linalg.norm(band - mean, axis=2) < _MATCH  # False on a masked cell
                free = ~np.isnan(band[..., 0])
                out[i, 4] = float(near.mean()) if free.all() else float(near[free].mean()) if free.any() else 0.0
            tid = int(r[1])
            if tid < 0:  # a spare detection (no track yet): nothing to compare with
                continue
            prev, prev_band = self.last.get(tid, (None, None))
            out[i, 3] = 0.0 if prev is None else float(np.abs(c - prev).mean() / 255.0)
            if band is not None and prev_band is not None:
                d = np.abs(band - prev_band)
                both = ~np.isnan(d)
                out[i, 5] = float(d.mean() / 255.0) if both.all() else float(d[both].mean() / 255.0) if both.any() else 0.0
            self.last[tid] = (c, band)
            self._seen[tid] = float(r[0])
        return out


def pixel_stats(band_mask: bool = False) -> PixelStats:
    return PixelStats(band_mask)


def _covered(shape: tuple[int, ...], band: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(_BAND) bool: the cells of the band (clipped to the frame, as :func:`_crop` reads it) that
    any of the ``others`` (M, 4) boxes overlaps (a cell is an area average: a box's edge in it
    would leak into it)."""
    H, W = shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in band)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    bh, bw = _BAND
    ye = y1 + np.arange(bh + 1) * (y2 - y1) / bh  # cell edges
    xe = x1 + np.arange(bw + 1) * (x2 - x1) / bw
    in_y = (ye[None, :-1] < others[:, 3:4]) & (ye[None, 1:] > others[:, 1:2])  # (M, bh)
    in_x = (xe[None, :-1] < others[:, 2:3]) & (xe[None, 1:] > others[:, 0:1])  # (M, bw)
    return (in_y[:, :, None] & in_x[:, None, :]).any(0)


def neighbour_gap(rows: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """rows (N, >=6) of one frame -> (N,) horizontal gap to the nearest other box standing on
    about the same ground line (bottoms within half the box height), in box widths, capped at
    :data:`GAP_MAX` (also the value with no such box). ``others`` (N,) bool: the boxes that
    count as neighbours (default all)."""
    out = np.full(len(rows), GAP_MAX)
    if len(rows) < 2:
        return out
    x1, y2, x2 = rows[:, 2], rows[:, 5], rows[:, 4]
    w = np.maximum(x2 - x1, 1e-6)
    h = np.maximum(rows[:, 5] - rows[:, 3], 1e-6)
    gap = np.maximum(0.0, np.maximum(x1[None, :] - x2[:, None], x1[:, None] - x2[None, :])) / w[:, None]
    same = np.abs(y2[None, :] - y2[:, None]) < 0.5 * h[:, None]
    np.fill_diagonal(same, False)
    if others is not None:
        same &= np.asarray(others, bool)[None, :]
    gap = np.where(same, gap, GAP_MAX)
    return np.minimum(gap.min(1), GAP_MAX)


def look_dim(texture: bool = False, masked: bool = False) -> int:
    """Length of :func:`thumbnails`' output per box."""
    return THUMB_DIM + (TEX_DIM if texture else 0) + (TEX_DIM if masked else 0)


def thumbnails(img: np.ndarray, boxes: np.ndarray, texture: bool = False, masked: bool = False) -> np.ndarray:
    """(N, look_dim(texture, masked)) per box: 6x6 RGB in [0, 1] (zeros for a box under 2x2
    pixels in view), then with ``texture`` its :func:`texture_features`, then with ``masked``
    its :func:`masked_texture_features`."""
    out = np.zeros((len(boxes), look_dim(texture, masked)), np.float32)
    for i, b in enumerate(boxes):
        c = _crop(img, b, (_THUMB, _THUMB))
        if c is not None:
            out[i, :THUMB_DIM] = c.reshape(-1) / 255.0
        if texture:
            out[i, THUMB_DIM : THUMB_DIM + TEX_DIM] = texture_features(img, b)
        if masked:
            out[i, look_dim(texture) :] = masked_texture_features(img, b)
    return out


def texture_features(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(TEX_DIM,) the box's surface pattern, in about [0, 1], from its full-resolution luminance:
    the strength of a periodic pattern down the box and across it (stripes, a grid of dots), how
    much darker its border ring is than its centre (a frame), and the share of dark pixels in the
    centre. Two look-alikes that differ only in pattern have the same 6x6 thumbnail to within
    the shading; these tell them apart (``return`` vs ``arrive`` of a look-alike). The period
    looked for is a quarter of the box height, +-10%: a pattern scales with its wearer."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    h, w = y2 - y1, x2 - x1
    if h < 8 or w < 4:
        return np.zeros(TEX_DIM, np.float32)
    lum = img[y1:y2, x1:x2].astype(np.float32).mean(2)
    r0, r1, c0, c1 = h // 4, h - h // 4, w // 4, w - w // 4
    period = 2 * max(2, h // 8)

    def strength(p: np.ndarray) -> float:  # amplitude at the period, relative to the mean
        p = p / max(float(p.mean()), 1.0) - 1.0
        y = np.arange(len(p))
        return max(abs(np.mean(p * np.exp(-2j * np.pi * y / (period * s)))) * 2 for s in (0.9, 1.0, 1.1))

    b = max(1, min(h, w) // 6)
    mid = lum[r0:r1]
    ring = np.concatenate([mid[:, :b].ravel(), mid[:, -b:].ravel(), lum[:b, c0:c1].ravel(), lum[-b:, c0:c1].ravel()])
    inner = lum[r0:r1, c0:c1]
    ratio = float(ring.mean()) / max(float(inner.mean()), 1.0)
    dark = float((inner < 0.7 * np.percentile(inner, 90)).mean())
    out = [strength(lum[:, c0:c1].mean(1)) * 4, strength(mid.mean(0)) * 4, min(ratio, 2.0) / 2, dark]
    return np.clip(np.array(out, np.float32), 0.0, 1.0)


_FG_DIST = 30.0
"""RGB distance from every sampled background pixel above which a box pixel is the actor's."""
_TEX_ROWS = 64
"""Boxes taller than this are read resized to it (a 96-px box: 8 ms at full size, 1.6 ms at 64 rows)."""
_DARK_RATIO = 1.35
"""How much brighter the lighter of the actor's two luminance clusters must be than the darker
for the darker to be a pattern (the synthetic patterns are ~2x darker; light from above shades
a plain surface by ~1.3x top to bottom)."""


def masked_texture_features(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(TEX_DIM,) the surface pattern read on the actor's own pixels, in [0, 1]: the box's pixels
    unlike every pixel of a 3-px ring just outside it (the local background), split into two
    luminance clusters (Otsu); where the lighter is :data:`_DARK_RATIO` x brighter, the darker is
    the pattern. Then the strength of a periodic pattern down and across the centre of that dark
    map (period a quarter of the box height, as :func:`texture_features`), and the dark share
    of the actor's pixels in the box's border ring (a frame) and inside it.
    :func:`texture_features` reads the whole box, whose border is mostly background for any
    shape but a square; beside it, these lift a nearest-centre reading of the four synthetic
    patterns from 0.753 to 0.844 of single boxes (0.837 -> 0.930 per track; docs/actions.md)."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    h, w = y2 - y1, x2 - x1
    zero = np.zeros(TEX_DIM, np.float32)
    if h < 8 or w < 4:
        return zero
    g = 3
    X1, Y1, X2, Y2 = max(x1 - g, 0), max(y1 - g, 0), min(x2 + g, W), min(y2 + g, H)
    outer = img[Y1:Y2, X1:X2]
    ring = np.ones(outer.shape[:2], bool)
    ring[y1 - Y1 : y2 - Y1, x1 - X1 : x2 - X1] = False
    bg = outer[ring].astype(np.float32)
    if len(bg) < 4:
        return zero
    bg = bg[:: max(1, len(bg) // 64)]
    px = img[y1:y2, x1:x2]
    if h > _TEX_ROWS:  # the patterns scale with the box (period h / 4): read large boxes at _TEX_ROWS rows
        w, h = max(4, round(w * _TEX_ROWS / h)), _TEX_ROWS
        px = cv2.resize(px, (w, h), interpolation=cv2.INTER_AREA)
    px = px.astype(np.float32)
    flat = px.reshape(-1, 3)
    d2 = sum((flat[:, None, ch] - bg[None, :, ch]) ** 2 for ch in range(3))  # (pixels, samples)
    obj = (d2.min(1) > _FG_DIST**2).reshape(h, w)
    if obj.sum() < 6:
        return zero
    lum = px.mean(2)
    v = np.sort(lum[obj])
    n, c, k = len(v), np.cumsum(v, dtype=np.float64), np.arange(1, len(v))
    m0, m1 = c[:-1] / k, (c[-1] - c[:-1]) / (n - k)  # Otsu: the split of the sorted values with
    j = int(np.argmax(k * (n - k) * (m0 - m1) ** 2))  # the most variance between the two sides
    dark = obj & (lum <= (v[j] + v[j + 1]) / 2) if m1[j] > _DARK_RATIO * m0[j] else np.zeros_like(obj)
    b = max(1, min(h, w) // 6)
    border = np.ones_like(obj)
    border[b:-b, b:-b] = False
    frac = [float(dark[m & obj].mean()) if (m & obj).sum() >= 3 else 0.0 for m in (border, ~border)]
    period = 2 * max(2, h // 8)

    def strength(p: np.ndarray) -> float:  # amplitude at the period
        if len(p) < 3:
            return 0.0
        p = p - p.mean()
        y = np.arange(len(p))
        return max(abs(np.mean(p * np.exp(-2j * np.pi * y / (period * s)))) * 2 for s in (0.9, 1.0, 1.1))

    core = dark[h // 4 : h - h // 4, w // 4 : w - w // 4].astype(np.float32)
    out = [strength(core.mean(1)) * 2, strength(core.mean(0)) * 2, *frac]
    return np.clip(np.array(out, np.float32), 0.0, 1.0)


def roi_features(grid: Tensor, boxes: list[np.ndarray], frame_wh: tuple[int, int], size: int,
                 dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """RoIAlign of (N, C, gh, gw) patch grids under per-frame pixel boxes -> per frame (n_i, C*size*size),
    views of one ``dtype`` tensor."""
    from torchvision.ops import roi_align

    W, H = frame_wh
    gh, gw = grid.shape[-2:]
    rois = []
    for i, b in enumerate(boxes):
        if len(b):
            g = torch.as_tensor(np.asarray(b, dtype=np.float32)).reshape(-1, 4).clone()
            g[:, [0, 2]] *= gw / W
            g[:, [1, 3]] *= gh / H
            rois.append(torch.cat([torch.full((len(g), 1), float(i)), g], dim=1))
    counts = [len(b) for b in boxes]
    if not rois:
        return [grid.new_zeros(0, grid.shape[1] * size * size, dtype=dtype) for _ in boxes]
    pooled = roi_align(grid.float(), torch.cat(rois), output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return list(pooled.flatten(1).to(dtype).split(counts))


def _velocity(rows: np.ndarray, W: int, H: int) -> tuple[float, float]:
    """Box-centre velocity (frame sizes per second) from the first to the last of ``rows``."""
    if len(rows) >= 2 and rows[-1, 0] > rows[0, 0]:
        dt = rows[-1, 0] - rows[0, 0]
        return (((rows[-1, 2] + rows[-1, 4]) - (rows[0, 2] + rows[0, 4])) / 2 / W / dt,
                ((rows[-1, 3] + rows[-1, 5]) - (rows[0, 3] + rows[0, 5])) / 2 / H / dt)
    return 0.0, 0.0


def _spread(rows: np.ndarray, box_h: float) -> list[float]:
    """Over ``rows``: spread of the centre height, of the bottom and of the aspect (jumps, spins),
    appearance change, how often the band above has the box's colour, and its change."""
    hh = np.maximum(rows[:, 5] - rows[:, 3], 1e-6)
    ww = np.maximum(rows[:, 4] - rows[:, 2], 1e-6)
    # a hand covers ~4% of the band; the background matches the box's colour now and then too,
    # so the per-frame fraction saturates at 5% and what counts is how often it is there
    return [float(np.std((rows[:, 3] + rows[:, 5]) / 2) / box_h), float(np.std(rows[:, 5]) / box_h),
            float(np.std(ww / hh)), float(rows[:, 11].mean()), float(np.minimum(rows[:, 12] / 0.05, 1.0).mean()),
            float(rows[:, 13].mean())]


def kin_dim(halves: bool = False) -> int:
    """Length of :func:`kinematics`' output."""
    return KIN_DIM + (HALF_DIM if halves else 0)


def kinematics(track: np.ndarray, t: float, frame_wh: tuple[int, int], halves: bool = False) -> np.ndarray:
    """(KIN_DIM,) features of one track (rows sorted by time, ROW_COLS wide) at time ``t``;
    with ``halves``, HALF_DIM more: velocity and the spreads again over the half-windows
    before and after ``t`` (where in the window the motion changes: a phase boundary)."""
    W, H = frame_wh
    ts = track[:, 0]
    i = int(np.clip(np.searchsorted(ts, t), 0, len(ts) - 1))
    if i > 0 and abs(ts[i - 1] - t) < abs(ts[i] - t):
        i -= 1
    x1, y1, x2, y2 = track[i, 2:6]
    cx, cy, w, h = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
    vx, vy = _velocity(track[np.abs(ts - t) <= 0.5], W, H)
    wide = track[np.abs(ts - t) <= 1.0]
    if not len(wide):  # t more than a second from the track (between its fragments): its nearest row
        wide = track[i : i + 1]
    box_h = max(h * H, 1e-6)
    cy_sd, bottom_sd, size_sd, change, above_match, above_change = _spread(wide, box_h)
    # the gap's rate of change: closing in on someone (meet) or walking off
    dgap = (wide[-1, 14] - wide[0, 14]) / (wide[-1, 0] - wide[0, 0]) if wide[-1, 0] > wide[0, 0] else 0.0
    since, until = t - ts[0], ts[-1] - t
    out = [
        cx, cy, w, h, vx * 4, vy * 4, cy_sd * 4, bottom_sd * 4, size_sd * 4, track[i, 6],
        track[i, 7] / 80.0, np.log1p(max(since, 0.0)) / 4, np.log1p(max(until, 0.0)) / 4,
        track[i, 8], track[i, 9], track[i, 10], change * 10,
        above_match, above_change * 10, track[i, 14] / GAP_MAX, float(np.clip(dgap, -GAP_MAX, GAP_MAX)) / GAP_MAX,
    ]
    if halves:
        for side in (-1, 1):  # before t, after t (each half includes the row at t)
            d = (ts - t) * side
            hv = _velocity(track[(d >= -1e-6) & (d <= 0.5)], W, H)
            half = track[(d >= -1e-6) & (d <= 1.0)]
            sp = _spread(half if len(half) else track[i : i + 1], box_h)
            out += [hv[0] * 4, hv[1] * 4, sp[0] * 4, sp[1] * 4, sp[2] * 4, sp[3] * 10, sp[4], sp[5] * 10]
    return np.array(out, dtype=np.float32)


@dataclass
class ActorTokens:
    """Actor tokens (B, F, A, D) without their empty slots: each filled slot names a row of
    appearance features in ``store`` (RoI features and look, as the pipeline kept them) and
    has its own kinematics. Equal to the padded tensor :meth:`dense` builds, which is what
    the model sees, a chunk of frames at a time. An hour at 2 fps, 6 slots: the padded
    tensor would be ~80 MB beside the rows it copies."""

    store: Arena
    """(N, appearance_dim) fp16 rows."""
    rows: Tensor
    """(B, F, A) int64 row of ``store`` per slot, -1 = empty."""
    kin: Tensor
    """(B, F, A, kin_dim) kinematics, in ``store``'s dtype (zeros in empty slots)."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.rows.shape, self.store.row_shape[0] + self.kin.shape[-1])

    def dense(self, frames: slice | Tensor = slice(None)) -> Tensor:
        """The padded tokens (B, f, A, D) of these frames (a slice or index tensor of dim 1)."""
        rows, kin = self.rows[:, frames], self.kin[:, frames]
        out = torch.zeros(*rows.shape, self.shape[-1], dtype=self.store.dtype)
        filled = rows >= 0
        out[filled] = torch.cat([self.store.gather(rows[filled]), kin[filled]], dim=1)
        return out

    def columns(self, cols: list[int]) -> Tensor:
        """Some of the feature columns of every slot (B, F, A, len(cols)), zero in empty slots."""
        Dr = self.store.row_shape[0]
        app = [c for c in cols if c < Dr]
        out = torch.zeros(*self.rows.shape, len(cols), dtype=self.store.dtype)
        filled = self.rows >= 0
        if app:
            got = torch.zeros(int(filled.sum()), len(cols), dtype=self.store.dtype)
            # in chunks of rows: the gathered rows are the full appearance width
            flat = self.rows[filled]
            at = [i for i, c in enumerate(cols) if c < Dr]
            for s in range(0, len(flat), 4096):
                got[s : s + 4096, at] = self.store.gather(flat[s : s + 4096])[:, app]
            out[filled] = got
        kin_at = [i for i, c in enumerate(cols) if c >= Dr]
        if kin_at:
            out[..., kin_at] = self.kin[..., [cols[i] - Dr for i in kin_at]]
        return out
