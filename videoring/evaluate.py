"""Metrics of predicted results against ground truth (both in the results schema).

    videoring eval PRED.json GT.json [--json]      (or PRED_DIR GT_DIR: x.json paired with x.json)

Keys of the ``--json`` output:

- ``clip_top1``, ``clip_top5``: the best (best five) ``clip_actions`` label(s) include a
  label that occurs in the ground truth clip;
- ``segment_mAP@0.5``, ``segment_mAP_thumos`` (mean over tIoU 0.3:0.1:0.7),
  ``segment_mAP_anet`` (0.5:0.05:0.95): ActivityNet-style AP per label (greedy
  matching by score, interpolated precision), averaged over labels with ground truth;
- ``track_action_frame_mAP@0.5``: AVA-style, at 1 Hz keyframes: each predicted box is a
  detection of every label, scored by the box's confidence times its track's ``scores`` at
  the nearest action step (as AVA's evaluation ranks every class score of every person box),
  and is a true positive for a label when it overlaps (IoU >= 0.5) a ground-truth box with
  that action; a track without ``scores`` detects only its current action (confidence times
  that action's score);
- ``track_action_frame_AP@0.5/LABEL``: that mean's parts, the AP of each label the ground
  truth has (AVA's per-class table);
- ``track_action_frame_mAP@0.5_top1``: each box a detection of its track's current action
  only (its arg-max), at that action's score (the key's definition before schema 1.2);
- ``HOTA``, ``IDF1``, ``MOTA``: TrackEval (HOTA, Identity, CLEAR) on the frames of the
  ground truth at the evaluation rate (5 Hz);
- ``return_arrive_accuracy``: for every ground-truth ``arrive``/``return``, the matching
  predicted track's label over that interval (whichever of the two covers more of it);
- ``return_accuracy_after_10min``: the same over the returns at least 10 minutes after the
  actor was last seen (the long-range pair), and ``returns_after_10min``, how many there were
  (NaN accuracy when none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError
from .results import Results, TrackAction
from .tracking import box_iou

__all__ = ["evaluate", "evaluate_pairs", "load_pairs", "segment_ap", "average_precision"]

THUMOS = (0.3, 0.4, 0.5, 0.6, 0.7)
ANET = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))
EVAL_HZ = 5.0


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """Area under the interpolated precision-recall curve (the ActivityNet / VOC definition)."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(tp, dtype=float)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-12)
    mprec = np.concatenate([[0], prec, [0]])
    mrec = np.concatenate([[0], rec, [1]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _tiou(s: tuple[float, float], g: np.ndarray) -> np.ndarray:
    inter = np.clip(np.minimum(s[1], g[:, 1]) - np.maximum(s[0], g[:, 0]), 0, None)
    union = np.maximum(s[1], g[:, 1]) - np.minimum(s[0], g[:, 0])
    return inter / np.maximum(union, 1e-9)


def segment_ap(preds: list[tuple[int, float, float, float]], gts: list[tuple[int, float, float]], thr: float) -> float:
    """AP of one label. preds: (video, start, end, score); gts: (video, start, end)."""
    gt_by_v: dict[int, np.ndarray] = {}
    for v, s, e in gts:
        gt_by_v.setdefault(v, []).append((s, e))  # type: ignore[arg-type]
    gt_by_v = {v: np.asarray(x, dtype=float) for v, x in gt_by_v.items()}
    used = {v: np.zeros(len(x), bool) for v, x in gt_by_v.items()}
    scores, tp = [], []
    for v, s, e, sc in sorted(preds, key=lambda p: -p[3]):
        scores.append(sc)
        g = gt_by_v.get(v)
        hit = 0
        if g is not None and len(g):
            ious = _tiou((s, e), g)
            ious[used[v]] = -1
            k = int(np.argmax(ious))
            if ious[k] >= thr:
                used[v][k] = True
                hit = 1
        tp.append(hit)
    return average_precision(np.array(scores), np.array(tp), len(gts))


def _mean(x: list[float]) -> float:
    x = [v for v in x if v == v]
    return float(np.mean(x)) if x else float("nan")


def _segment_metrics(pairs: list[tuple[Results, Results]], background: str) -> dict[str, float]:
    labels = sorted({s.label for _, g in pairs for s in g.segments} - {background})
    out = {}
    for name, thrs in (("segment_mAP@0.5", (0.5,)), ("segment_mAP_thumos", THUMOS), ("segment_mAP_anet", ANET)):
        per_thr = []
        for thr in thrs:
            aps = []
            for lab in labels:
                preds = [(i, s.start_s, s.end_s, s.score) for i, (p, _) in enumerate(pairs) for s in p.segments if s.label == lab]
                gts = [(i, s.start_s, s.end_s) for i, (_, g) in enumerate(pairs) for s in g.segments if s.label == lab]
                aps.append(segment_ap(preds, gts, thr))
            per_thr.append(_mean(aps))
        out[name] = _mean(per_thr)
    return out


class _Index:
    """One Results' boxes and actions as arrays, for the many per-time look-ups of the metrics
    (converting every track's boxes at every query made an hour's evaluation take minutes)."""

    def __init__(self, res: Results) -> None:
        self.ids, self.boxes = [], []
        for tr in res.tracks:
            b = np.asarray(tr.boxes, dtype=float).reshape(-1, 6)
            if len(b):
                self.ids.append(tr.id)
                self.boxes.append(b[np.argsort(b[:, 0], kind="stable")])
        self.t0 = np.array([b[0, 0] for b in self.boxes])
        self.t1 = np.array([b[-1, 0] for b in self.boxes])
        self.actions: dict[int, list] = {}
        for a in res.track_actions:
            self.actions.setdefault(a.track_id, []).append(a)
        self.scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (step times, (n, L) probabilities)
        for tr in res.tracks:
            if tr.scores:
                r = np.asarray(tr.scores, dtype=float)
                r = r[np.argsort(r[:, 0], kind="stable")]
                self.scores[tr.id] = (r[:, 0], r[:, 1:])


_INDEX: dict[int, tuple[Results, _Index]] = {}  # id(res) -> (res, index), for one evaluate() call


def _index(res: Results) -> _Index:
    hit = _INDEX.get(id(res))
    if hit is None or hit[0] is not res:
        hit = _INDEX[id(res)] = (res, _Index(res))
    return hit[1]


def _nearest(ts: np.ndarray, t: float) -> int:
    """Index of the time in sorted ``ts`` nearest to ``t`` (the earlier one on a tie)."""
    j = int(np.searchsorted(ts, t))
    return j - 1 if j == len(ts) or (j > 0 and t - ts[j - 1] <= ts[j] - t) else j


def _boxes_at(res: Results, t: float, tol: float) -> list[tuple[int, np.ndarray, float]]:
    """(track id, box, confidence) of each track with a box within ``tol`` of ``t`` (its nearest)."""
    ix = _index(res)
    out = []
    for k in np.nonzero((ix.t0 - tol <= t) & (t <= ix.t1 + tol))[0]:
        b = ix.boxes[k]
        i = _nearest(b[:, 0], t)
        if abs(b[i, 0] - t) <= tol:
            out.append((ix.ids[k], b[i, 1:5], float(b[i, 5])))
    return out


def _action_at(res: Results, tid: int, t: float):
    for a in _index(res).actions.get(tid, ()):
        if a.start_s <= t < a.end_s:
            return a
    return None


def _label_scores(res: Results, tid: int, t: float, conf: float, every_label: bool) -> list[tuple[float, str]]:
    """(score, label) detections of track ``tid``'s box at ``t`` (confidence ``conf``): every
    label, conf x its probability in the nearest row of scores (or conf x the current action's
    score where the track has none); with ``every_label`` off, the current action at its score."""
    hit = _index(res).scores.get(tid) if every_label else None
    if hit is not None:
        ts, p = hit
        return [(conf * float(s), lab) for s, lab in zip(p[_nearest(ts, t)], res.action_labels)]
    a = _action_at(res, tid, t)
    return [] if a is None else [((conf if every_label else 1.0) * a.score, a.label)]


def _frame_ap(pairs: list[tuple[Results, Results]], tol: float, every_label: bool = True) -> dict[str, float]:
    """AP per ground-truth label (labels the ground truth never has are not scored)."""
    labels = sorted({a.label for _, g in pairs for a in g.track_actions})
    dets: dict[str, list] = {lab: [] for lab in labels}
    n_gt = {lab: 0 for lab in labels}
    for pred, gt in pairs:
        for t in np.arange(0.0, gt.video.duration_s, 1.0):
            g = [(box, a.label) for tid, box, _ in _boxes_at(gt, t, 1e-3) if (a := _action_at(gt, tid, t))]
            for _, lab in g:
                n_gt[lab] += 1
            used = np.zeros(len(g), bool)
            cands = []
            for tid, box, conf in _boxes_at(pred, t, tol):
                cands += [(score, lab, box) for score, lab in _label_scores(pred, tid, t, conf, every_label) if lab in dets]
            for score, lab, box in sorted(cands, key=lambda c: -c[0]):
                hit = 0
                idx = [k for k, (_, gl) in enumerate(g) if gl == lab and not used[k]]
                if idx:
                    ious = box_iou(box[None], np.stack([g[k][0] for k in idx]))[0]
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.5:
                        used[idx[j]] = True
                        hit = 1
                dets[lab].append((score, hit))
    return {lab: average_precision(np.array([d[0] for d in dets[lab]]), np.array([d[1] for d in dets[lab]]), n_gt[lab])
            for lab in labels if n_gt[lab]}


def _tracking(pairs: list[tuple[Results, Results]], tol: float) -> dict[str, float]:
    from trackeval.metrics import CLEAR, HOTA, Identity

    metrics = [HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False})]
    per_seq = {type(m).__name__: [] for m in metrics}
    for pred, gt in pairs:
        times = sorted({round(b[0], 6) for t in gt.tracks for b in t.boxes})
        grid = np.asarray(times)
        if len(grid):
            step = 1.0 / EVAL_HZ
            keep = np.unique(np.searchsorted(grid, np.arange(0, grid[-1] + 1e-9, step) - 1e-6))
            grid = grid[keep[keep < len(grid)]]
        gid = {t.id: i for i, t in enumerate(gt.tracks)}
        pid = {t.id: i for i, t in enumerate(pred.tracks)}
        data = {"num_timesteps": len(grid), "num_gt_ids": len(gid), "num_tracker_ids": len(pid),
                "gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_gt_dets": 0, "num_tracker_dets": 0}
        for t in grid:
            g = _boxes_at(gt, t, 1e-3)
            p = _boxes_at(pred, t, tol)
            data["gt_ids"].append(np.array([gid[i] for i, _, _ in g], dtype=int))
            data["tracker_ids"].append(np.array([pid[i] for i, _, _ in p], dtype=int))
            sim = box_iou(np.stack([b for _, b, _ in g]), np.stack([b for _, b, _ in p])) if g and p else np.zeros((len(g), len(p)))
            data["similarity_scores"].append(sim)
            data["num_gt_dets"] += len(g)
            data["num_tracker_dets"] += len(p)
        for m in metrics:
            per_seq[type(m).__name__].append(m.eval_sequence(data))
    out = {}
    for m in metrics:
        name = type(m).__name__
        comb = m.combine_sequences({str(i): r for i, r in enumerate(per_seq[name])})
        if name == "HOTA":
            out["HOTA"] = float(np.mean(comb["HOTA"]))
        elif name == "CLEAR":
            out["MOTA"] = float(comb["MOTA"])
        else:
            out["IDF1"] = float(comb["IDF1"])
    return out


LONG_GAP_S = 600.0  # the long range: a return at least 10 minutes after the actor was last seen


def _return_arrive(pairs: list[tuple[Results, Results]], tol: float) -> dict[str, float | int]:
    """``return_arrive_accuracy`` over every ground-truth arrive/return; and
    ``return_accuracy_after_10min`` (with their count, ``returns_after_10min``) over the returns
    at least :data:`LONG_GAP_S` after the actor's last earlier box, on its own track or another
    of its ``appearance``: the pair is long-range only where the gap is, and most returns in a
    clip come sooner."""
    correct, total, long_ok, long_n = 0, 0, 0, 0
    for pred, gt in pairs:
        # the actor across visits: the ground truth's ``appearance`` (a visit is a track of its
        # own), else the track (tagged apart: an appearance number is not a track ID)
        who = {t.id: (t.id if t.appearance is None else ("a", t.appearance)) for t in gt.tracks}
        seen: dict = {}  # actor -> times of its boxes
        for t in gt.tracks:
            seen.setdefault(who[t.id], []).extend(b[0] for b in t.boxes)
        for a in gt.track_actions:
            if a.label not in ("arrive", "return"):
                continue
            track = next((t for t in gt.tracks if t.id == a.track_id), None)
            boxes = np.asarray(track.boxes if track else np.zeros((0, 6)), dtype=float).reshape(-1, 6)
            before = [s for s in seen.get(who.get(a.track_id), ()) if s < a.start_s]
            is_long = a.label == "return" and bool(before) and a.start_s - max(before) >= LONG_GAP_S
            ok = _phase_right(pred, a, boxes, tol)
            total += 1
            correct += ok
            long_n += is_long
            long_ok += ok and is_long
    nan = float("nan")
    return {"return_arrive_accuracy": correct / total if total else nan,
            "return_accuracy_after_10min": long_ok / long_n if long_n else nan, "returns_after_10min": long_n}


def _phase_right(pred: Results, a: TrackAction, boxes: np.ndarray, tol: float) -> bool:
    """Whether the predicted track overlapping this actor most during the phase ``a`` has the
    phase's label (arrive or return, whichever covers more of the interval)."""
    votes: dict[int, float] = {}
    for row in boxes[(boxes[:, 0] >= a.start_s) & (boxes[:, 0] < a.end_s)]:
        p = _boxes_at(pred, float(row[0]), tol)
        if p:
            ious = box_iou(row[None, 1:5], np.stack([b for _, b, _ in p]))[0]
            k = int(np.argmax(ious))
            if ious[k] >= 0.5:
                votes[p[k][0]] = votes.get(p[k][0], 0) + 1
    if not votes:
        return False
    tid = max(votes, key=votes.get)
    cover = {"arrive": 0.0, "return": 0.0}
    for pa in pred.track_actions:
        if pa.track_id == tid and pa.label in cover:
            # the predicted label may start a little before the ground truth's interval
            cover[pa.label] += max(0.0, min(pa.end_s, a.end_s + 1.0) - max(pa.start_s, a.start_s - 1.0))
    return max(cover.values()) > 0 and max(cover, key=cover.get) == a.label


def _clip(pairs: list[tuple[Results, Results]]) -> dict[str, float]:
    top1, top5 = [], []
    for pred, gt in pairs:
        want = {c.label for c in gt.clip_actions} or {a.label for a in gt.track_actions}
        ranked = [c.label for c in sorted(pred.clip_actions, key=lambda c: -c.score)]
        if not want or not ranked:
            continue
        top1.append(float(ranked[0] in want))
        top5.append(float(any(r in want for r in ranked[:5])))
    return {"clip_top1": _mean(top1), "clip_top5": _mean(top5)}


def evaluate(pairs: list[tuple[Results, Results]], background: str = "idle") -> dict[str, float]:
    """All metrics over (prediction, ground truth) pairs.

    Predicted boxes are compared with the ground truth at the same video frame:
    a predicted box counts at a ground-truth time when it is less than half a
    frame away (predictions sample the same decoded frames).
    """
    fps = max((g.video.fps for _, g in pairs if g.video.fps > 0), default=EVAL_HZ)
    tol = 0.45 / fps
    try:
        out = _clip(pairs)
        out.update(_segment_metrics(pairs, background))
        per_label = _frame_ap(pairs, tol)
        out["track_action_frame_mAP@0.5"] = _mean(list(per_label.values()))
        out["track_action_frame_mAP@0.5_top1"] = _mean(list(_frame_ap(pairs, tol, every_label=False).values()))
        # the mean's parts, as AVA reports them: which actions pull it down
        out.update({f"track_action_frame_AP@0.5/{lab}": ap for lab, ap in per_label.items()})
        out.update(_tracking(pairs, tol))
        out.update(_return_arrive(pairs, tol))
    finally:
        _INDEX.clear()
    out["videos"] = len(pairs)
    return out


def evaluate_pairs(pred: str | Path, gt: str | Path) -> dict[str, float]:
    """Two files, or two directories (x.json in PRED paired with x.json in GT; other files ignored)."""
    return evaluate(load_pairs(pred, gt))


def load_pairs(pred: str | Path, gt: str | Path) -> list[tuple[Results, Results]]:
    """(prediction, ground truth) from two results files, or from two directories: each x.json in
    GT with x.json (or x/results.json, as ``videoring analyze -o PRED`` writes it) in PRED."""
    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt):
        if not p.exists():
            raise ConfigError(f"{p}: not found; give a results .json file or a directory of them")
    if pred.is_dir() != gt.is_dir():
        raise ConfigError(f"{pred} and {gt}: give two files or two directories")
    if pred.is_dir():
        # x.json, or x/results.json as `videoring analyze -o PRED_DIR` writes it
        files = []
        for f in sorted(gt.glob("*.json")):
            for cand in (pred / f.name, pred / f.stem / "results.json"):
                if cand.exists():
                    files.append((cand, f))
                    break
        if not files:
            raise ConfigError(f"{pred}: no x.json (or x/results.json) matching an x.json in {gt}")
    else:
        files = [(pred, gt)]
    return [(_load(p), _load(g)) for p, g in files]


def _load(path: Path) -> Results:
    try:
        res = Results.from_json(path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a results file in the videoring schema ({type(e).__name__}: {e})") from None
    n = len(res.action_labels) + 1
    for tr in res.tracks:
        if tr.scores and any(len(row) != n for row in tr.scores):
            raise ConfigError(f"{path}: track {tr.id}: every 'scores' row must be [t, one probability per "
                              f"'action_labels' entry ({n - 1})]")
    return res
