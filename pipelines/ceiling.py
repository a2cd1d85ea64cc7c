"""What the tracks leave room for: a perfect action model on videoring's own tracks.

    python pipelines/ceiling.py PRED GT [-c default] [--fps 1] [--json]

PRED and GT as ``videoring eval`` takes them: two results files, or two directories (each
``x.json`` in GT with ``x.json`` or ``x/results.json`` in PRED). Each predicted track keeps its
boxes, but its action probabilities at the action steps (multiples of 1/--fps seconds, as the
encoder grid samples them) are replaced by a one-hot of the ground-truth label of the actor its
box overlaps at IoU >= 0.5 (``idle``, the background, where none does); these go through the same
decoder as the model's (the config's ``actions``: smoothing, arg-max runs, segment scores). The
metrics are then an upper bound for any action model on these tracks at that step rate: the gap
between them and the model's is the model's, the gap between them and 1.0 is the tracks' and the
decoder's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.actions import decode  # noqa: E402
from videoring.config import PipelineConfig, load_config  # noqa: E402
from videoring.evaluate import evaluate, load_pairs  # noqa: E402
from videoring.errors import ConfigError  # noqa: E402
from videoring.results import Results  # noqa: E402
from videoring.tracking import box_iou  # noqa: E402


def gt_label_at(gt: Results, t: float, box: np.ndarray, background: str) -> str:
    """The ground-truth action of the actor whose box at time ``t`` overlaps ``box`` most (IoU >= 0.5)."""
    tol = 0.45 / gt.video.fps
    best, lab = 0.5, background
    for track in gt.tracks:
        b = np.asarray(track.boxes, float)
        i = int(np.searchsorted(b[:, 0], t - tol))
        if i == len(b) or abs(b[i, 0] - t) > tol:
            continue
        iou = float(box_iou(box[None], b[i, 1:5][None])[0, 0])
        if iou < best:
            continue
        act = next((a for a in gt.track_actions if a.track_id == track.id and a.start_s <= t < a.end_s), None)
        if act is not None:
            best, lab = iou, act.label
    return lab


def oracle(pred: Results, gt: Results, cfg: PipelineConfig, fps: float) -> Results:
    """``pred``'s tracks with the ground truth's labels at each action step, decoded as the model's are."""
    labels = list(cfg.actions.labels)
    obs, span = [], {}
    track_dt = 1.0 / cfg.track.fps
    for t in pred.tracks:
        b = np.asarray(t.boxes, float)
        span[t.id] = (float(b[0, 0]), float(b[-1, 0]) + track_dt)
        for step in np.arange(np.ceil(b[0, 0] * fps - 1e-6) / fps, b[-1, 0] + 1e-9, 1.0 / fps):
            i = int(np.argmin(np.abs(b[:, 0] - step)))
            if abs(b[i, 0] - step) > 0.6 * track_dt:  # the track has no box at this step
                continue
            p = np.zeros(len(labels))
            p[labels.index(gt_label_at(gt, float(b[i, 0]), b[i, 1:5], cfg.actions.background))] = 1.0
            obs.append((t.id, float(step), p))
    steps = np.arange(0.0, gt.video.duration_s, 1.0 / fps)
    # the dense head's part of a segment's score: the one-hot's own (no clip-level evidence)
    actions, segments, scores = decode(cfg.actions, steps, np.zeros((len(steps), len(labels))), obs, span)
    tracks = [dataclasses.replace(t, scores=scores.get(t.id)) for t in pred.tracks]  # pred stays as it was
    return Results(pred.video, tracks, segments, actions, pred.clip_actions, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred", help="a results .json, or a directory of them (x.json or x/results.json)")
    ap.add_argument("gt", help="its ground truth .json, or a directory of x.json")
    ap.add_argument("-c", "--config", default="default", help="its actions decoder and labels (default, accurate or a path)")
    ap.add_argument("--fps", type=float, default=None, help="action steps per second (default: the config's sampling.fps)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = Path(args.config)
    if not path.exists():  # a name in configs/
        path = Path(__file__).resolve().parents[1] / "configs" / f"{args.config}.yaml"
    try:
        cfg = load_config(path, cls=PipelineConfig)
        pairs = load_pairs(args.pred, args.gt)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    fps = args.fps or cfg.sampling.fps
    m = evaluate([(oracle(pred, gt, cfg, fps), gt) for pred, gt in pairs])
    print(json.dumps(m, indent=1) if args.json else "\n".join(f"{k}: {v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
    main()
