"""Metrics on small hand-computed fixtures, and `videoring eval` on files and directories."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from videoring.evaluate import average_precision, evaluate, segment_ap
from videoring.results import ClipAction, Results, Segment, Track, TrackAction, VideoMeta


def _res(tracks=(), segments=(), actions=(), clip=(), fps=5.0, dur=2.0) -> Results:
    return Results(VideoMeta("v.mp4", dur, fps, int(dur * fps), 100, 100), list(tracks), list(segments), list(actions), list(clip))


def test_average_precision_by_hand():
    # precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1 -> interpolated: 1 up to recall 1/2, then 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.9]), np.array([0]), 1) == 0.0


def test_segment_ap_thresholds_by_hand():
    gt = [(0, 0.0, 10.0)]
    assert segment_ap([(0, 5.0, 15.0, 0.9)], gt, 0.3) == 1.0  # tIoU 5/15 = 0.33
    assert segment_ap([(0, 5.0, 15.0, 0.9)], gt, 0.5) == 0.0
    # a duplicate is a false positive after the ground truth is used: AP stays 1 (it ranks below)
    assert segment_ap([(0, 0.0, 10.0, 0.9), (0, 1.0, 9.0, 0.8)], gt, 0.5) == 1.0
    # ranked above the true one, the duplicate halves precision at recall 1
    assert segment_ap([(0, 0.0, 10.0, 0.5), (1, 0.0, 10.0, 0.8)], gt, 0.5) == pytest.approx(0.5)


def test_identity_switch_by_hand():
    """One actor over 10 frames; the prediction switches ID half-way: MOTA 0.9, IDF1 0.5 (TrackEval)."""
    boxes = [[i / 5, 10, 10, 30, 30, 1.0] for i in range(10)]
    gt = _res([Track(1, "actor", boxes)])
    pred = _res([Track(7, "actor", boxes[:5]), Track(8, "actor", boxes[5:])])
    m = evaluate([(pred, gt)])
    assert m["MOTA"] == pytest.approx(0.9)
    assert m["IDF1"] == pytest.approx(0.5)
    assert evaluate([(gt, gt)])["HOTA"] == pytest.approx(1.0)


def test_frame_map_and_return_arrive_by_hand():
    boxes = [[i / 5, 10, 10, 30, 30, 1.0] for i in range(10)]
    gt = _res([Track(1, "actor", boxes)], actions=[TrackAction(1, "arrive", 0.0, 1.0), TrackAction(1, "walk", 1.0, 2.0)])
    right = _res([Track(3, "actor", boxes)], actions=[TrackAction(3, "arrive", 0.0, 1.0, 0.9), TrackAction(3, "walk", 1.0, 2.0, 0.8)])
    wrong = _res([Track(3, "actor", boxes)], actions=[TrackAction(3, "return", 0.0, 1.0, 0.9), TrackAction(3, "walk", 1.0, 2.0, 0.8)])
    assert evaluate([(right, gt)])["return_arrive_accuracy"] == 1.0
    assert evaluate([(wrong, gt)])["return_arrive_accuracy"] == 0.0
    # keyframes at t=0 (arrive) and t=1 (walk): both right -> 1; the wrong one misses "arrive" -> mean(0, 1)
    assert evaluate([(right, gt)])["track_action_frame_mAP@0.5"] == 1.0
    assert evaluate([(wrong, gt)])["track_action_frame_mAP@0.5"] == pytest.approx(0.5)


def test_returns_after_10_minutes_by_hand():
    """Actor 1 returns 698 s after it was last seen, actor 2 after 98 s: only the first is a
    long-range return. Labelling it ``arrive`` costs 1 of 4 phases, and all of the long range."""
    def visits(x, starts):
        return [[s + i / 5, x, 10, x + 20, 30, 1.0] for s in starts for i in range(10)]

    # actor 1's visits are two tracks of one appearance (as the synthetic ground truth has them);
    # actor 2's one track with a gap
    tracks = [Track(1, "actor", visits(10, (0,)), appearance=5), Track(3, "actor", visits(10, (700,)), appearance=5),
              Track(2, "actor", visits(60, (0, 100)))]
    phases = [(1, "arrive", 0.0), (3, "return", 700.0), (2, "arrive", 0.0), (2, "return", 100.0)]
    gt = _res(tracks, actions=[TrackAction(t, lab, s, s + 1.0) for t, lab, s in phases], dur=702.0)
    right = _res(tracks, actions=[TrackAction(t, lab, s, s + 1.0, 0.9) for t, lab, s in phases], dur=702.0)
    swapped = [(t, "arrive" if s == 700.0 else lab, s) for t, lab, s in phases]
    wrong = _res(tracks, actions=[TrackAction(t, lab, s, s + 1.0, 0.9) for t, lab, s in swapped], dur=702.0)
    m = evaluate([(right, gt)])
    assert (m["return_arrive_accuracy"], m["return_accuracy_after_10min"], m["returns_after_10min"]) == (1.0, 1.0, 1)
    m = evaluate([(wrong, gt)])
    assert (m["return_arrive_accuracy"], m["return_accuracy_after_10min"], m["returns_after_10min"]) == (0.75, 0.0, 1)
    # no long return at all: the accuracy is undefined, not 0 or 1
    short = _res(tracks[2:], actions=[TrackAction(2, lab, s, s + 1.0) for _, lab, s in phases[2:]], dur=702.0)
    m = evaluate([(short, short)])
    assert m["returns_after_10min"] == 0 and np.isnan(m["return_accuracy_after_10min"])


def test_frame_map_ranks_every_label_of_every_box_by_hand():
    """AVA's protocol: a box detects every label at confidence x probability. Keyframes t=0
    (arrive) and t=1 (walk). Track 3 (the actor, confidence 1) puts walk first at t=0 (0.6 vs
    arrive 0.4), so its arg-max actions miss the arrive; track 4 (a false box far from the
    actor, confidence 0.2) says walk at 0.95. Every label: arrive ranks 0.4 (hit) over 0.1 and
    0.01 (misses), walk 0.9 (hit) over 0.6, 0.19, 0.19 (misses): AP 1 and 1. Arg-max only, at
    the action's score: arrive has no detection (AP 0); walk ranks track 4's two 0.95s (misses)
    over 0.9 (hit): AP 1/3; mean 1/6. 'run' has no ground truth and is not averaged."""
    boxes = [[i / 5, 10, 10, 30, 30, 1.0] for i in range(10)]
    far = [[i / 5, 60, 60, 80, 80, 0.2] for i in range(10)]
    gt = _res([Track(1, "actor", boxes)], actions=[TrackAction(1, "arrive", 0.0, 1.0), TrackAction(1, "walk", 1.0, 2.0)])
    acts = [TrackAction(3, "walk", 0.0, 0.5, 0.6), TrackAction(3, "walk", 0.5, 2.0, 0.9), TrackAction(4, "walk", 0.0, 2.0, 0.95)]
    pred = _res([Track(3, "actor", boxes, scores=[[0.0, 0.4, 0.6, 0.0], [1.0, 0.1, 0.9, 0.0]]),
                 Track(4, "actor", far, scores=[[0.0, 0.05, 0.95, 0.0], [1.0, 0.05, 0.95, 0.0]])], actions=acts)
    pred.action_labels = ["arrive", "walk", "run"]
    m = evaluate([(pred, gt)])
    assert m["track_action_frame_mAP@0.5"] == 1.0
    assert (m["track_action_frame_AP@0.5/arrive"], m["track_action_frame_AP@0.5/walk"]) == (1.0, 1.0)
    assert "track_action_frame_AP@0.5/run" not in m
    assert m["track_action_frame_mAP@0.5_top1"] == pytest.approx(1 / 6)
    # without scores a box detects its current action only, at confidence x the action's score:
    # walk ranks 0.9 (hit) over 0.6 and 0.19, 0.19 (misses): AP 1; arrive 0; mean 0.5
    for tr in pred.tracks:
        tr.scores = None
    m = evaluate([(pred, gt)])
    assert m["track_action_frame_mAP@0.5"] == pytest.approx(0.5)
    assert (m["track_action_frame_AP@0.5/arrive"], m["track_action_frame_AP@0.5/walk"]) == (0.0, 1.0)


def test_eval_rejects_scores_that_do_not_fit_the_labels(tmp_path):
    from videoring.errors import ConfigError
    from videoring.evaluate import evaluate_pairs

    boxes = [[i / 5, 10, 10, 30, 30, 1.0] for i in range(10)]
    gt = _res([Track(1, "actor", boxes)], actions=[TrackAction(1, "walk", 0.0, 2.0)])
    pred = _res([Track(3, "actor", boxes, scores=[[0.0, 0.4, 0.6]])], actions=[TrackAction(3, "walk", 0.0, 2.0)])
    pred.action_labels = ["arrive", "walk", "run"]
    gt.to_json(tmp_path / "gt.json")
    pred.to_json(tmp_path / "pred.json")
    with pytest.raises(ConfigError, match=r"pred\.json: track 3: every 'scores' row"):
        evaluate_pairs(tmp_path / "pred.json", tmp_path / "gt.json")


def test_clip_top_k_by_hand():
    gt = _res(clip=[ClipAction("jump"), ClipAction("walk")])
    pred = _res(clip=[ClipAction("run", 0.9), ClipAction("walk", 0.8), ClipAction("idle", 0.1)])
    m = evaluate([(pred, gt)])
    assert (m["clip_top1"], m["clip_top5"]) == (0.0, 1.0)


def test_eval_cli_files_and_directories(tmp_path):
    boxes = [[i / 5, 10, 10, 30, 30, 1.0] for i in range(10)]
    gt = _res([Track(1, "actor", boxes)], [Segment("walk", 0.0, 2.0)], [TrackAction(1, "walk", 0.0, 2.0)])
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred" / "a").mkdir(parents=True)
    gt.to_json(tmp_path / "gt" / "a.json")
    gt.to_json(tmp_path / "pred" / "a" / "results.json")  # the layout `videoring analyze -o` writes
    (tmp_path / "pred" / "notes.txt").write_text("ignored")
    for args in ((str(tmp_path / "gt" / "a.json"), str(tmp_path / "gt" / "a.json")), (str(tmp_path / "pred"), str(tmp_path / "gt"))):
        r = subprocess.run([sys.executable, "-m", "videoring.cli", "eval", *args, "--json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        for key in ("clip_top1", "clip_top5", "segment_mAP@0.5", "segment_mAP_thumos", "segment_mAP_anet",
                    "track_action_frame_mAP@0.5", "track_action_frame_mAP@0.5_top1", "HOTA", "IDF1", "MOTA", "return_arrive_accuracy",
                    "return_accuracy_after_10min", "returns_after_10min"):
            assert key in m
        assert m["IDF1"] == 1.0 and m["segment_mAP@0.5"] == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text("{\"video\": 3}")
    r = subprocess.run([sys.executable, "-m", "videoring.cli", "eval", str(bad), str(tmp_path / "gt" / "a.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr


def test_csv_rerun_without_scores_removes_the_old_scores(tmp_path):
    boxes = [[0.0, 0, 0, 10, 10, 0.9], [1.0, 0, 0, 10, 10, 0.9]]
    scored = _res([Track(3, "actor", boxes, scores=[[0.0, 0.4, 0.6], [1.0, 0.1, 0.9]])])
    scored.action_labels = ["walk", "run"]
    written = {p.name for p in scored.to_csv(tmp_path)}
    assert "track_scores.csv" in written
    assert (tmp_path / "track_scores.csv").read_text().splitlines() == ["track_id,t,walk,run", "3,0.0,0.4,0.6", "3,1.0,0.1,0.9"]
    written = {p.name for p in _res([Track(3, "actor", boxes)]).to_csv(tmp_path)}
    assert written == {"tracks.csv", "segments.csv", "track_actions.csv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)


def test_writers_stream_the_same_text(tmp_path):
    """results.json and the CSVs are written a piece at a time: the same bytes as the whole
    document dumped at once, across the CSV writer's 64 KiB blocks too."""
    import csv
    import io

    rng = np.random.default_rng(0)
    tracks = [Track(i, "actor", [[round(t * 0.1, 3), *map(float, rng.integers(0, 99, 4)), 0.5] for t in range(800)],
                    scores=[[0.0, 0.25, 0.75]]) for i in range(5)]
    res = _res(tracks, [Segment("walk", 0.0, 1.5, 0.9)], [TrackAction(1, "wälk", 0.0, 1.0, 0.5)], [ClipAction("walk", 0.7)])
    res.action_labels = ["walk", "run"]
    res.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == json.dumps(res.to_dict(), separators=(",", ":"))
    _res().to_json(tmp_path / "empty.json")
    assert (tmp_path / "empty.json").read_text() == json.dumps(_res().to_dict(), separators=(",", ":"))
    res.to_csv(tmp_path)
    want = io.StringIO()
    w = csv.writer(want, lineterminator="\n")
    w.writerow(["track_id", "label", "t", "x1", "y1", "x2", "y2", "conf"])
    w.writerows([t.id, t.label, *b] for t in tracks for b in t.boxes)
    assert len(want.getvalue()) > 2 * (1 << 16)
    assert (tmp_path / "tracks.csv").read_text() == want.getvalue()


def test_smoothing_equals_the_dense_gaussian_and_absorbs_a_flicker():
    from videoring.actions import decode, smooth
    from videoring.config import ActionConfig

    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0, 20, 40))
    p = rng.random((40, 3))
    w = np.exp(-0.5 * ((ts[None] - ts[:, None]) / 0.8) ** 2) * (np.abs(ts[None] - ts[:, None]) <= 2.4)
    assert np.allclose(smooth(ts, p, 0.8), w @ p / w.sum(1, keepdims=True))
    assert smooth(ts, p, 0.0) is p

    labels = ["idle", "walk", "jump"]
    onehot = lambda k: np.eye(3)[k] * 0.8 + 0.1  # noqa: E731
    seq = [1, 1, 1, 2, 1, 1, 0, 0, 0]  # walk, one step of "jump", walk, then idle
    obs = [(7, float(t), onehot(k)) for t, k in enumerate(seq)]
    span = {7: (0.0, 9.0)}
    dense = np.zeros((9, 3))
    raw, _, _ = decode(ActionConfig(labels=labels, smooth_s=0.0), np.arange(9.0), dense, obs, span)
    assert [a.label for a in raw] == ["walk", "jump", "walk", "idle"]
    sm, segs, scores = decode(ActionConfig(labels=labels, smooth_s=0.8), np.arange(9.0), dense, obs, span)
    assert [(a.label, a.start_s, a.end_s) for a in sm] == [("walk", 0.0, 5.5), ("idle", 5.5, 9.0)]
    assert [(s.label, s.start_s, s.end_s) for s in segs] == [("walk", 0.0, 5.5)]
    # the scores are the smoothed probabilities the actions were cut from, one row per step
    rows = np.asarray(scores[7])
    assert np.allclose(rows[:, 0], np.arange(9.0))
    assert np.allclose(rows[:, 1:], np.round(smooth(np.arange(9.0), np.stack([o[2] for o in obs]), 0.8), 4))


def test_segment_score_weighs_duration_by_hand():
    """``actions.segment_tau_s``: a clip segment's score is (mean track probability + mean dense
    probability) / 2 times 1 - exp(-duration / tau); the track's actions keep the mean."""
    from videoring.actions import decode
    from videoring.config import ActionConfig

    labels = ["idle", "walk", "jump"]
    # the arg-max per step: walk, walk, walk, walk, jump: walk over [0, 3.5] at 0.8, then jump over [3.5, 5] at 0.6
    probs = [np.array([0.1, 0.8, 0.1])] * 4 + [np.array([0.2, 0.2, 0.6])]
    obs = [(3, float(t), p) for t, p in enumerate(probs)]
    dense = np.tile([0.0, 0.4, 0.2], (5, 1))
    for tau, factor in ((0.0, (1.0, 1.0)), (2.0, (1 - np.exp(-3.5 / 2), 1 - np.exp(-1.5 / 2)))):
        acts, segs, _ = decode(ActionConfig(labels=labels, smooth_s=0.0, segment_tau_s=tau), np.arange(5.0), dense, obs, {3: (0.0, 5.0)})
        assert [(a.label, a.start_s, a.end_s, a.score) for a in acts] == [("walk", 0.0, 3.5, 0.8), ("jump", 3.5, 5.0, 0.6)]
        assert [s.label for s in segs] == ["walk", "jump"]
        # dense mean over the steps inside each segment: walk 0.4 (t = 0..3), jump 0.2 (t = 4)
        assert segs[0].score == pytest.approx((0.8 + 0.4) / 2 * factor[0], abs=1e-4)
        assert segs[1].score == pytest.approx((0.6 + 0.2) / 2 * factor[1], abs=1e-4)


def test_nms_merges_only_the_group_labels():
    """Two actors walking at the same time are two walks; the two actors of a meet are one meet."""
    from videoring.actions import decode
    from videoring.config import ActionConfig

    labels = ["idle", "walk", "meet"]
    hot = lambda k: np.eye(3)[k] * 0.8 + 0.1  # noqa: E731
    seqs = {1: [1, 1, 1, 1, 0, 0], 2: [1, 1, 1, 0, 0, 0], 3: [2, 2, 2, 2, 0, 0], 4: [2, 2, 2, 2, 0, 0]}
    obs = [(tid, float(t), hot(k)) for tid, seq in seqs.items() for t, k in enumerate(seq)]
    span = {tid: (0.0, 6.0) for tid in seqs}
    dense = np.zeros((6, 3))

    def segs(**kw):
        _, s, _ = decode(ActionConfig(labels=labels, smooth_s=0.0, **kw), np.arange(6.0), dense, obs, span)
        return sorted((x.label, x.start_s, x.end_s) for x in s)

    # walks over [0, 3.5] and [0, 2.5]: tIoU 0.71
    assert segs() == [("meet", 0.0, 3.5), ("walk", 0.0, 3.5)]
    assert segs(nms_labels=["meet"]) == [("meet", 0.0, 3.5), ("walk", 0.0, 2.5), ("walk", 0.0, 3.5)]
    assert len(segs(nms_labels=[])) == 4


def _ceiling_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipelines" / "ceiling.py"
    spec = importlib.util.spec_from_file_location("ceiling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ceiling_of_perfect_tracks_is_perfect_and_of_shifted_boxes_is_not(tmp_path):
    """pipelines/ceiling.py: on the ground truth's own boxes (no smoothing) the labels it puts on
    each 1-fps step score frame mAP and return/arrive 1.0; boxes moved off their actors get idle."""
    import copy
    import dataclasses

    from videoring.config import PipelineConfig, load_config
    from videoring.synth import synthesize

    ceiling = _ceiling_module()
    gt = synthesize(tmp_path / "c.mp4", seed=11, duration_s=60.0, fps=10.0, size=(160, 120))
    cfg = load_config(ceiling.Path(__file__).resolve().parents[1] / "configs" / "default.yaml", cls=PipelineConfig)
    cfg = dataclasses.replace(cfg, actions=dataclasses.replace(cfg.actions, smooth_s=0.0))
    pred = copy.deepcopy(gt)
    pred.track_actions, pred.segments = [], []
    m = evaluate([(ceiling.oracle(pred, gt, cfg, fps=1.0), gt)])
    assert m["track_action_frame_mAP@0.5"] == pytest.approx(1.0)
    assert {a.label for a in gt.track_actions} & {"arrive", "return"}
    assert m["return_arrive_accuracy"] == pytest.approx(1.0)
    # every box moved off every actor: each step is the background
    for t in pred.tracks:
        t.boxes = [[b[0], b[1] + 1000, b[2], b[3] + 1000, b[4], b[5]] for b in t.boxes]
    moved = ceiling.oracle(pred, gt, cfg, fps=1.0)
    assert {a.label for a in moved.track_actions} == {"idle"}
