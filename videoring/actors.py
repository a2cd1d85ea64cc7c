"""Actor tokens: what the temporal model knows about each tracked actor at each time step.

Per actor and encoder frame, two parts:

- appearance: RoIAlign (``torchvision.ops.roi_align``) of the ViT patch grid
  under the actor's box, ``roi_size x roi_size`` cells, flattened;
- kinematics (:data:`KIN_DIM` numbers): box centre and size (fractions of the
  frame), velocity (frame sizes per second, over +-0.5 s of the track), spread
  of the centre height and of the box size over +-1 s (jumps, spins), detector
  confidence and class, seconds since the track began and until it ends (log-scaled),
  the box's mean colour and its *appearance change*: the mean absolute
  difference of the box's content between consecutive tracking frames, aligned
  on the box (so walking is ~0 and waving is not).

Rows of a track table carry the per-box pixel stats in columns 8..11 (r, g,
b, change), computed on the tracking frames while they are in memory.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["KIN_DIM", "ROW_COLS", "pixel_stats", "roi_features", "kinematics"]

ROW_COLS = 12  # t, id, x1, y1, x2, y2, conf, cls, r, g, b, change
KIN_DIM = 17
_CROP = 12


def _crop(img: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    H, W = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return cv2.resize(img[y1:y2, x1:x2], (_CROP, _CROP), interpolation=cv2.INTER_AREA).astype(np.float32)


class PixelStats:
    """Per-box colour and appearance change; remembers each ID's last crop across chunks.

    Crops of IDs unseen for :attr:`FORGET_S` seconds are dropped: a tracker does not revive
    an ID after so long (ByteTrack keeps lost tracks for 30 frames), and an hour of video
    would otherwise keep a crop of every ID it ever had.
    """

    FORGET_S = 60.0

    def __init__(self) -> None:
        self.last: dict[int, np.ndarray] = {}
        self._seen: dict[int, float] = {}  # ID -> time of its last crop (not saved on resume: only prunes)

    def __call__(self, img: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """rows (N, 8) of one frame -> (N, 4) r, g, b in [0, 1], change in [0, 1]."""
        if len(rows):
            t = float(rows[0, 0])
            old = [tid for tid in self.last if self._seen.setdefault(tid, t) < t - self.FORGET_S]
            for tid in old:
                del self.last[tid], self._seen[tid]
        out = np.zeros((len(rows), 4))
        for i, r in enumerate(rows):
            c = _crop(img, r[2:6])
            if c is None:
                continue
            q = _CROP // 4
            out[i, :3] = c[q:-q, q:-q].reshape(-1, 3).mean(0) / 255.0
            tid = int(r[1])
            prev = self.last.get(tid)
            out[i, 3] = 0.0 if prev is None else float(np.abs(c - prev).mean() / 255.0)
            self.last[tid] = c
            self._seen[tid] = float(r[0])
        return out


def pixel_stats() -> PixelStats:
    return PixelStats()


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


def kinematics(track: np.ndarray, t: float, frame_wh: tuple[int, int]) -> np.ndarray:
    """(KIN_DIM,) features of one track (rows sorted by time, ROW_COLS wide) at time ``t``."""
    W, H = frame_wh
    ts = track[:, 0]
    i = int(np.clip(np.searchsorted(ts, t), 0, len(ts) - 1))
    if i > 0 and abs(ts[i - 1] - t) < abs(ts[i] - t):
        i -= 1
    x1, y1, x2, y2 = track[i, 2:6]
    cx, cy, w, h = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
    near = track[np.abs(ts - t) <= 0.5]
    if len(near) >= 2 and near[-1, 0] > near[0, 0]:
        dt = near[-1, 0] - near[0, 0]
        vx = ((near[-1, 2] + near[-1, 4]) - (near[0, 2] + near[0, 4])) / 2 / W / dt
        vy = ((near[-1, 3] + near[-1, 5]) - (near[0, 3] + near[0, 5])) / 2 / H / dt
    else:
        vx = vy = 0.0
    wide = track[np.abs(ts - t) <= 1.0]
    hh = np.maximum(wide[:, 5] - wide[:, 3], 1e-6)
    ww = np.maximum(wide[:, 4] - wide[:, 2], 1e-6)
    cy_sd = float(np.std((wide[:, 3] + wide[:, 5]) / 2) / max(h * H, 1e-6))
    bottom_sd = float(np.std(wide[:, 5]) / max(h * H, 1e-6))
    size_sd = float(np.std(ww / hh))
    change = float(wide[:, 11].mean()) if len(wide) else 0.0
    since, until = t - ts[0], ts[-1] - t
    return np.array([
        cx, cy, w, h, vx * 4, vy * 4, cy_sd * 4, bottom_sd * 4, size_sd * 4, track[i, 6],
        track[i, 7] / 80.0, np.log1p(max(since, 0.0)) / 4, np.log1p(max(until, 0.0)) / 4,
        track[i, 8], track[i, 9], track[i, 10], change * 10,
    ], dtype=np.float32)
