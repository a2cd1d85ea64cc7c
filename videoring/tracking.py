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

import math
from pathlib import Path

import numpy as np
import torch

from .config import TrackConfig
from .errors import ConfigError
from .yolo import import_ultralytics, load_detector, restore_threads, untimed_predictor

__all__ = ["SPARE", "Tracker", "stitch", "box_iou", "link_tracklets", "extend_tracks", "suppress_duplicates"]

SPARE = -1
"""Track id of a detection no confirmed track took (see :meth:`Tracker.update`)."""


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
        self._models: dict[tuple[int, int] | int, object] = {}
        self.imgsz: tuple[int, int] | int = cfg.imgsz
        self.model = None  # loaded (and exported) by reset() for the video's frame shape
        if cfg.export == "none":
            self.model = self._model_for(cfg.imgsz)  # fail early on a bad detector path
        import_ultralytics(cfg.allow_download)
        from ultralytics.trackers.track import TRACKER_MAP
        from ultralytics.utils import YAML, IterableSimpleNamespace

        self._tcfg = IterableSimpleNamespace(**YAML.load(_tracker_cfg(cfg.tracker)))
        if getattr(self._tcfg, "with_reid", False):
            # a ReID model would be fetched by name: keep it offline unless the user opted in
            if not cfg.allow_download:
                self._tcfg.with_reid = False
        if cfg.high_thresh is not None:
            self._tcfg.track_high_thresh = cfg.high_thresh
        if cfg.new_thresh is not None:
            self._tcfg.new_track_thresh = cfg.new_thresh
        if self._tcfg.tracker_type not in TRACKER_MAP:
            raise ConfigError(f"track.tracker: tracker_type {self._tcfg.tracker_type!r} in {cfg.tracker} is not supported")
        self._cls = TRACKER_MAP[self._tcfg.tracker_type]
        self.tracker = None
        self._predictor = untimed_predictor(cfg.allow_download)

    def _model_for(self, imgsz: tuple[int, int] | int):
        if imgsz not in self._models:
            self._models[imgsz] = load_detector(_resolve_detector(self.cfg, imgsz), self.cfg.allow_download)
        return self._models[imgsz]

    def reset(self, frame_wh: tuple[int, int] | None = None) -> None:
        """A fresh tracker (new IDs from 1) for a new video or span.

        With an exported detector, ``frame_wh`` picks (and on first use exports) a static
        input of the frame's aspect -- 256x192 for 4:3 instead of 256x256, the pixels
        PyTorch's own minimal letterbox would use.
        """
        if frame_wh is not None and self.cfg.export != "none":
            w, h = frame_wh
            long_, short = (w, h) if w >= h else (h, w)
            s = min(self.cfg.imgsz, 32 * math.ceil(self.cfg.imgsz * short / long_ / 32))
            self.imgsz = (s, self.cfg.imgsz) if w >= h else (self.cfg.imgsz, s)
            self.model = self._model_for(self.imgsz)
        elif self.model is None:
            self.model = self._model_for(self.cfg.imgsz)
        self.tracker = self._cls(args=self._tcfg)  # track_buffer counts tracking-rate frames

    def detect(self, images: np.ndarray) -> list:
        """Batched detection on (N, H, W, 3) RGB uint8 frames -> ultralytics Results per frame."""
        if self.model is None:
            self.reset((images.shape[2], images.shape[1]))
        out = []
        for s in range(0, len(images), self.cfg.batch):
            # ultralytics takes numpy frames as BGR; a reversed view copies once in its letterbox
            batch = [np.ascontiguousarray(img[..., ::-1]) for img in images[s : s + self.cfg.batch]]
            out += self.model.predict(
                batch, imgsz=self.imgsz, conf=self.cfg.conf, iou=self.cfg.iou, classes=self.cfg.classes,
                device="cpu", verbose=False, predictor=self._predictor,
            )
        restore_threads(self.threads)  # each predictor call clamps torch's threads
        return out

    def update(self, images: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Track a chunk of frames (in time order); returns rows t, id, x1, y1, x2, y2, conf, cls,
        dx1, dy1, dx2, dy2: the tracker's filtered box, then the matched detection's own box.

        Detections the tracker did not assign to a confirmed track come back too, with id
        :data:`SPARE` (-1) and their box twice: :func:`extend_tracks` grows tracks through
        them once the whole video is known.
        """
        if self.tracker is None:
            self.reset()
        rows = []
        for img, t, res in zip(images, timestamps, self.detect(images)):
            det = res.boxes.cpu().numpy()
            if len(det) > 1 and self.cfg.iou < 1:
                det = det[suppress_duplicates(det.xyxy, det.conf, det.cls, self.cfg.iou)]
            tracks = self.tracker.update(det, img[..., ::-1])
            xyxy, used = det.xyxy, np.zeros(len(det), bool)
            # ultralytics tracker rows: x1, y1, x2, y2, track_id, score, cls, det_index. The Kalman
            # state's box lags a running actor (IoU < 0.5 with the truth on a third of the missed
            # running boxes of the held-out clips): the matched detection's box is kept beside it
            for x1, y1, x2, y2, tid, score, cls, idx in tracks[:, :8] if len(tracks) else ():
                rows.append((float(t), tid, x1, y1, x2, y2, score, cls, *xyxy[int(idx)]))
                used[int(idx)] = True
            for k in np.nonzero(~used)[0]:
                rows.append((float(t), SPARE, *xyxy[k], float(det.conf[k]), float(det.cls[k]), *xyxy[k]))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 12)


def suppress_duplicates(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, iou: float) -> np.ndarray:
    """Indices (ascending) of the boxes kept by per-class NMS at ``iou``.

    YOLO26's end-to-end head skips NMS (ultralytics ignores ``iou`` for it), and on the
    synthetic clips it often gives a spinning or jumping actor a second, larger box (IoU
    0.6-0.7 with the first); ByteTrack then runs two tracks on one actor for seconds.
    """
    import torchvision

    keep = torchvision.ops.batched_nms(torch.as_tensor(xyxy, dtype=torch.float32), torch.as_tensor(conf, dtype=torch.float32),
                                       torch.as_tensor(cls).long(), iou)
    return np.sort(keep.numpy())


def _resolve_detector(cfg: TrackConfig, imgsz: tuple[int, int] | int | None = None) -> str:
    """Relative paths resolve from the working directory, then from the project root (shipped models)."""
    p = Path(cfg.detector)
    if p.exists() or p.is_absolute():
        path = p
    else:
        root = Path(__file__).resolve().parents[1]
        path = root / p if (root / p).exists() else p
    if cfg.export != "none" and path.suffix == ".pt" and path.exists():
        import warnings

        from .export import exported_detector

        try:
            return str(exported_detector(path, cfg.export, imgsz or cfg.imgsz, cfg.batch))
        except ConfigError as e:  # PyTorch stays the fallback
            warnings.warn(f"{e}; detecting with PyTorch instead", RuntimeWarning, stacklevel=2)
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
        own = rows[rows[:, 0] >= start]  # a copy (boolean indexing)
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
    if len(out) == 1:
        return out[0], maps
    return (np.concatenate(out) if out else np.zeros((0, 8))), maps


def _piece(r: np.ndarray, frame_w: float | None, edge: float, vwin: float = 1.0) -> dict:
    """What :func:`link_tracklets` needs of one track (rows in time order)."""
    c = (r[:, 2:4] + r[:, 4:6]) / 2

    def vel(m: np.ndarray) -> np.ndarray:
        t = r[m, 0]
        return (c[m][-1] - c[m][0]) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else np.zeros(2)

    at_edge = lambda x: frame_w is not None and (x[2] <= edge * frame_w or x[4] >= (1 - edge) * frame_w)  # noqa: E731
    return dict(t=r[:, 0], c=c, t0=r[0, 0], t1=r[-1, 0], first=c[0], last=c[-1], h=max(float(np.median(r[:, 5] - r[:, 3])), 1.0),
                v_start=vel(r[:, 0] <= r[0, 0] + vwin), v_end=vel(r[:, 0] >= r[-1, 0] - vwin),
                color=np.median(r[:, 8:11], axis=0), enters=at_edge(r[0]), leaves=at_edge(r[-1]))


def link_tracklets(rows: np.ndarray, frame_wh: tuple[int, int] | None = None, max_gap_s: float = 4.0, *,
                   max_overlap_s: float = 2.0, max_color: float = 0.25, max_jump: float = 1.5,
                   max_speed: float = 3.0, edge: float = 0.02) -> tuple[np.ndarray, dict[int, int]]:
    """Join the pieces of one actor's visit that the online tracker split (occlusion, jumps, spins).

    With the whole video's tracks known, track B continues track A when B starts at most
    ``max_gap_s`` after A ends (or up to ``max_overlap_s`` before: ByteTrack often starts the
    new track while the old one still coasts on a stale box) and:

    - B's first box is where A was heading: within ``max_jump`` box heights, +1 per second of
      gap, of A's last box moved on at A's end velocity (or B's first box moved back at B's
      start velocity), speeds capped at ``max_speed`` box heights per second; where they
      overlap, within ``max_jump`` of A's box when B starts;
    - heights within 1.5x, and colour (median RGB of the box centre, columns 8..10) closer
      than ``max_color``;
    - not A leaving at the left/right border while B enters there (``edge`` of the frame
      width; needs ``frame_wh``): that is one visit ending and another beginning -- linking
      those cost 0.02 IDF1 on the validation clips.

    Pairs are joined greedily, cheapest (jump + 5 colour + size + 0.1 |gap|) first, each track
    continuing at most one other. Where joined pieces overlap in time the earlier piece's rows
    are kept. Returns (rows relabelled, in input order, minus the overlapped rows; {old id: new id}).
    """
    if len(rows) == 0 or rows.shape[1] < 11:
        return rows, {}
    frame_w = float(frame_wh[0]) if frame_wh is not None else None
    r = rows[np.lexsort((rows[:, 0], rows[:, 1]))]
    ids, starts = np.unique(r[:, 1], return_index=True)
    info = {int(tid): _piece(p, frame_w, edge) for tid, p in zip(ids, np.split(r, starts[1:]))}
    by_start = sorted(info, key=lambda i: info[i]["t0"])
    t_start = np.array([info[i]["t0"] for i in by_start])
    pairs = []
    for a, ia in info.items():
        lo = np.searchsorted(t_start, ia["t1"] - max_overlap_s, side="left")
        hi = np.searchsorted(t_start, ia["t1"] + max_gap_s, side="right")
        for b in by_start[lo:hi]:
            ib = info[b]
            if ib["t0"] <= ia["t0"] or ib["t1"] <= ia["t1"]:  # B must start and end after A
                continue
            dt = ib["t0"] - ia["t1"]
            if ia["leaves"] and ib["enters"] and dt > 0:
                continue
            h = max(ia["h"], ib["h"])
            size = abs(np.log(ib["h"] / ia["h"]))
            color = float(np.linalg.norm(ia["color"] - ib["color"]))
            if size >= np.log(1.5) or color >= max_color:
                continue
            if dt < 0:  # overlap: where A was when B started
                k = min(np.searchsorted(ia["t"], ib["t0"]), len(ia["t"]) - 1)
                jump = float(np.linalg.norm(ia["c"][k] - ib["first"])) / h
            else:
                cap = lambda v: v * min(1.0, max_speed * h / max(float(np.linalg.norm(v)), 1e-9))  # noqa: E731
                jump = min(np.linalg.norm(ia["last"] + cap(ia["v_end"]) * dt - ib["first"]),
                           np.linalg.norm(ib["first"] - cap(ib["v_start"]) * dt - ia["last"])) / h
            if jump <= max_jump + max(dt, 0.0):
                pairs.append((jump + 5 * color + size + 0.1 * abs(dt), a, b))
    nxt: dict[int, int] = {}
    prv: dict[int, int] = {}
    for _, a, b in sorted(pairs):
        if a in nxt or b in prv:
            continue
        nxt[a], prv[b] = b, a  # b starts after a starts: chains only go forward in time, no cycles
    root: dict[int, int] = {}
    for tid in by_start:
        root[tid] = root[prv[tid]] if tid in prv else tid
    out = rows.copy()
    out[:, 1] = [root[int(i)] for i in rows[:, 1]]
    # a piece's rows up to the end of the pieces before it in its chain are the overlap: dropped
    until = {}
    for tid in by_start:
        if tid in prv:
            until[tid] = max(until.get(prv[tid], -np.inf), info[prv[tid]]["t1"])
    cut = np.array([until.get(int(i), -np.inf) for i in rows[:, 1]])
    return out[rows[:, 0] > cut], root


def extend_tracks(rows: np.ndarray, spare: np.ndarray, fps: float, max_s: float, min_iou: float = 0.3) -> np.ndarray:
    """Grow tracks through the detections the online tracker left unused.

    ByteTrack starts a track only on a detection scoring ``new_thresh``; an actor walking
    in, or coming out from behind someone, scores less until most of it shows, so the track
    starts (or resumes) late. Knowing the whole video, each piece of a track (split where
    it misses more than a frame) is grown backwards from its first box and forwards from its
    last, one tracking frame at a time: the spare detection at the next frame with the highest
    IoU (>= ``min_iou``) with the box moved on at the piece's velocity joins the track, for at
    most ``max_s`` seconds and never into another piece of the same track. Each spare joins at
    most one track, tracks taken longest first. ``rows``/``spare``: (N, >=8) rows as
    :meth:`Tracker.update` gives them (spare ids ignored). Returns ``rows`` plus the joined ones.
    """
    if len(rows) == 0 or len(spare) == 0 or max_s <= 0:
        return rows
    dt = 1.0 / fps
    spare = spare[np.argsort(spare[:, 0], kind="stable")]
    st = spare[:, 0]
    free = np.ones(len(spare), bool)
    added: list[np.ndarray] = []
    by_id = rows[np.lexsort((rows[:, 0], rows[:, 1]))]
    ids, starts = np.unique(by_id[:, 1], return_index=True)
    tracks = np.split(by_id, starts[1:])
    for r in sorted(tracks, key=len, reverse=True):
        tid = r[0, 1]
        cut = np.nonzero(np.diff(r[:, 0]) > 1.5 * dt)[0] + 1
        pieces = np.split(r, cut)
        lo = -np.inf  # where the previous piece (grown) ends
        for k, p in enumerate(pieces):
            hi = pieces[k + 1][0, 0] if k + 1 < len(pieces) else np.inf
            # how far each way: max_s (inclusive), never onto a time the other piece holds
            for sign, end, limit in ((-1, p[: min(len(p), 5)], max(lo + 1e-6, p[0, 0] - max_s - 1e-6)),
                                     (1, p[-min(len(p), 5):], min(hi - 1e-6, p[-1, 0] + max_s + 1e-6))):
                c = (end[:, 2:4] + end[:, 4:6]) / 2
                v = (c[-1] - c[0]) / (end[-1, 0] - end[0, 0]) if len(end) > 1 and end[-1, 0] > end[0, 0] else np.zeros(2)
                box = (end[0] if sign < 0 else end[-1]).copy()
                t, last_t = box[0], box[0]
                while True:
                    # the next tracking frame with spare detections, at most 2.5 frames on
                    if sign < 0:
                        j1 = np.searchsorted(st, t - 1e-6)
                        j0 = np.searchsorted(st, max(t - 2.5 * dt, limit))
                    else:
                        j0 = np.searchsorted(st, t + 1e-6, side="right")
                        j1 = np.searchsorted(st, min(t + 2.5 * dt, limit), side="right")
                    cand = np.arange(j0, j1)
                    cand = cand[free[cand]]
                    if not len(cand):
                        break
                    tn = st[cand].max() if sign < 0 else st[cand].min()
                    cand = cand[st[cand] == tn]
                    pred = box[2:6] + np.tile(v * (tn - last_t), 2)
                    ious = box_iou(pred[None], spare[cand, 2:6])[0]
                    if ious.max() < min_iou:
                        break
                    j = cand[int(ious.argmax())]
                    free[j] = False
                    box = spare[j].copy()
                    box[1] = tid
                    added.append(box)
                    t = last_t = tn
                lo = max(lo, t)
    if not added:
        return rows
    cols = rows.shape[1]
    return np.concatenate([rows, np.stack(added)[:, :cols]])
