"""Actor tracks: Ultralytics YOLO26 detections + an ultralytics tracker (ByteTrack / BoT-SORT).

Detection is batched (``track.batch`` frames per call) on frames the caller
already decoded -- the same pass the encoder reads from. The tracker is
ultralytics' own class built from its own YAML config, fed the detections
frame by frame in time order, so batching does not change the tracks.
:meth:`Tracker.reset` starts a fresh tracker for each video or time span.

Across time spans (ranks, or pieces of one rank), each span is tracked from
``overlap_s`` earlier; :func:`stitch` matches tracks that cover the same
boxes in the overlap and gives one actor one global ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import TrackConfig
from .errors import ConfigError
from .yolo import import_ultralytics, load_detector, restore_threads

__all__ = ["Tracker", "TrackTable", "stitch", "box_iou"]


@dataclass
class TrackTable:
    """Tracks of one time span, as flat rows (cheap to gather across ranks).

    ``rows``: (N, 8) float64 = t, id, x1, y1, x2, y2, conf, cls.
    """

    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))

    def ids(self) -> np.ndarray:
        return np.unique(self.rows[:, 1]).astype(int)

    def of(self, tid: int) -> np.ndarray:
        return self.rows[self.rows[:, 1] == tid]

    def between(self, t0: float, t1: float) -> "TrackTable":
        m = (self.rows[:, 0] >= t0) & (self.rows[:, 0] < t1)
        return TrackTable(self.rows[m])

    def at(self, t: float) -> np.ndarray:
        return self.rows[self.rows[:, 0] == t]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def _tracker_cfg(name: str) -> Path:
    if name in ("bytetrack", "botsort"):
        import ultralytics

        return Path(ultralytics.__file__).parent / "cfg" / "trackers" / f"{name}.yaml"
    p = Path(name)
    if not p.exists():
        raise ConfigError(f"track.tracker: {name} not found; use 'bytetrack', 'botsort' or an existing tracker .yaml")
    return p


class Tracker:
    """YOLO26 detector + ultralytics tracker; one instance serves many videos (reset between them)."""

    def __init__(self, cfg: TrackConfig, threads: int = 0) -> None:
        self.cfg = cfg
        self.threads = threads or torch.get_num_threads()
        self.model = load_detector(_resolve_detector(cfg), cfg.allow_download)
        import_ultralytics(cfg.allow_download)
        from ultralytics.trackers.track import TRACKER_MAP
        from ultralytics.utils import YAML, IterableSimpleNamespace

        self._tcfg = IterableSimpleNamespace(**YAML.load(_tracker_cfg(cfg.tracker)))
        if getattr(self._tcfg, "with_reid", False):
            # a ReID model would be fetched by name: keep it offline unless the user opted in
            if not cfg.allow_download:
                self._tcfg.with_reid = False
        if self._tcfg.tracker_type not in TRACKER_MAP:
            raise ConfigError(f"track.tracker: tracker_type {self._tcfg.tracker_type!r} in {cfg.tracker} is not supported")
        self._cls = TRACKER_MAP[self._tcfg.tracker_type]
        self.tracker = None

    def reset(self) -> None:
        """A fresh tracker (new IDs from 1) for a new video or span."""
        self.tracker = self._cls(args=self._tcfg)  # track_buffer counts tracking-rate frames

    def detect(self, images: np.ndarray) -> list:
        """Batched detection on (N, H, W, 3) RGB uint8 frames -> ultralytics Results per frame."""
        out = []
        for s in range(0, len(images), self.cfg.batch):
            # ultralytics takes numpy frames as BGR; a reversed view copies once in its letterbox
            batch = [np.ascontiguousarray(img[..., ::-1]) for img in images[s : s + self.cfg.batch]]
            out += self.model.predict(
                batch, imgsz=self.cfg.imgsz, conf=self.cfg.conf, iou=self.cfg.iou, classes=self.cfg.classes,
                device="cpu", verbose=False,
            )
        restore_threads(self.threads)  # each predictor call clamps torch's threads
        return out

    def update(self, images: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Track a chunk of frames (in time order); returns rows t, id, x1, y1, x2, y2, conf, cls."""
        if self.tracker is None:
            self.reset()
        rows = []
        for img, t, res in zip(images, timestamps, self.detect(images)):
            det = res.boxes.cpu().numpy()
            tracks = self.tracker.update(det, img[..., ::-1])
            if len(tracks) == 0:  # no confirmed IDs on this frame (the boxes.id is None case)
                continue
            # ultralytics tracker rows: x1, y1, x2, y2, track_id, score, cls, det_index
            for x1, y1, x2, y2, tid, score, cls, _ in tracks[:, :8]:
                rows.append((float(t), tid, x1, y1, x2, y2, score, cls))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 8)


def _resolve_detector(cfg: TrackConfig) -> str:
    """Relative paths resolve from the working directory, then from the project root (shipped models)."""
    p = Path(cfg.detector)
    if p.exists() or p.is_absolute():
        path = p
    else:
        root = Path(__file__).resolve().parents[1]
        path = root / p if (root / p).exists() else p
    if cfg.export != "none" and path.suffix == ".pt" and path.exists():
        from .export import exported_detector

        return str(exported_detector(path, cfg.export, cfg.imgsz, cfg.batch))
    return str(path)


def stitch(spans: list[tuple[float, np.ndarray]], min_iou: float = 0.5) -> tuple[np.ndarray, list[dict[int, int]]]:
    """Join the tracks of consecutive time spans into one table with global IDs.

    ``spans``: [(own_start_s, rows)] in time order; each span's rows may begin up to
    ``overlap_s`` before ``own_start_s`` (that part is owned by the previous span). A
    track of span k takes the global ID of the previous span's track whose boxes in the
    overlap have the highest mean IoU with it (>= ``min_iou``, one-to-one); otherwise it
    gets a new ID. Overlap rows are then dropped, so every time is owned once.

    Returns (rows with global IDs, per span {local id: global id}).
    """
    out: list[np.ndarray] = []
    maps: list[dict[int, int]] = []
    next_id = 1
    prev_rows = np.zeros((0, 8))
    prev_map: dict[int, int] = {}
    for start, rows in spans:
        rows = np.asarray(rows, dtype=np.float64)
        rows = rows.reshape(-1, rows.shape[-1] if rows.ndim == 2 else 8)
        mapping: dict[int, int] = {}
        ov = rows[rows[:, 0] < start]
        if len(ov) and len(prev_rows):
            pairs = []
            for a in np.unique(ov[:, 1]):
                ra = ov[ov[:, 1] == a]
                for b in np.unique(prev_rows[:, 1]):
                    rb = prev_rows[prev_rows[:, 1] == b]
                    common, ia, ib = np.intersect1d(ra[:, 0].round(6), rb[:, 0].round(6), return_indices=True)
                    if len(common) == 0:
                        continue
                    ious = np.diag(box_iou(ra[ia, 2:6], rb[ib, 2:6]))
                    # mean over the frames where both exist, weighted by how much of the overlap that is
                    score = ious.mean() * len(common) / max(len(ra), 1)
                    if ious.mean() >= min_iou:
                        pairs.append((score, int(a), int(b)))
            used_b: set[int] = set()
            for score, a, b in sorted(pairs, reverse=True):
                if a in mapping or b in used_b:
                    continue
                mapping[a] = prev_map[b]
                used_b.add(b)
        own = rows[rows[:, 0] >= start].copy()
        for local in np.unique(own[:, 1]).astype(int):
            if local not in mapping:
                mapping[local] = next_id
                next_id += 1
        if len(own):
            own[:, 1] = [mapping[int(i)] for i in own[:, 1]]
        out.append(own)
        maps.append(mapping)
        # own rows now carry global IDs: the next span matches against them directly
        prev_rows, prev_map = own, {g: g for g in mapping.values()}
    return (np.concatenate(out) if out else np.zeros((0, 8))), maps
