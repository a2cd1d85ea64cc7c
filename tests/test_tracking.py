"""Tracking pieces: ID stitching across spans, offline-safe ultralytics, refusing pickled code, configs."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from videoring.errors import ConfigError
from videoring.tracking import stitch


def _rows(tid, t0, t1, x0, vx, step=0.2):
    ts = np.arange(t0, t1 - 1e-9, step)
    return np.array([[t, tid, x0 + vx * (t - t0), 50, x0 + vx * (t - t0) + 20, 90, 0.9, 0] for t in ts])


def test_stitch_keeps_one_id_across_a_border():
    # span A owns [0, 10); span B owns [10, 20) and tracks from 8 s (2 s overlap).
    # Actor 1 crosses the border (local IDs 3 in A, 1 in B); actor 2 exists only in B; actor 5 only in A.
    a = np.concatenate([_rows(3, 2.0, 10.0, 0, 10), _rows(5, 0.0, 4.0, 200, 0)])
    b = np.concatenate([_rows(1, 8.0, 16.0, 60, 10), _rows(2, 12.0, 18.0, 150, -5)])
    rows, maps = stitch([(0.0, a), (10.0, b)])
    assert maps[1][1] == maps[0][3]  # the crossing actor keeps its global ID
    assert len({maps[0][3], maps[0][5], maps[1][2]}) == 3
    assert rows[:, 0].min() == 0.0 and not np.any((rows[:, 0] >= 8) & (rows[:, 0] < 10) & (rows[:, 1] == maps[1][2]))
    # every time is owned once: no duplicate (t, id) rows from the overlap
    keys = {(round(t, 6), int(i)) for t, i in rows[:, :2]}
    assert len(keys) == len(rows)


def test_stitch_does_not_join_different_actors():
    a = _rows(1, 0.0, 10.0, 0, 0)
    b = _rows(1, 8.0, 16.0, 200, 0)  # elsewhere in the frame: a different actor
    _, maps = stitch([(0.0, a), (10.0, b)])
    assert maps[0][1] != maps[1][1]


def test_ultralytics_import_is_offline_and_keeps_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        from videoring.yolo import import_ultralytics

        import_ultralytics()
        assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "false"
        assert (tmp_path / "yolo" / "Arial.ttf").stat().st_size > 100_000  # a real font: nothing to download
        assert torch.get_num_threads() == 2
    finally:
        # later in-process tests compare bit-exact with CLI runs, which take the affinity's core count
        torch.set_num_threads(before)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_detector_checkpoint_is_refused(tmp_path):
    from videoring.checkpoint import check_yolo_checkpoint
    from videoring.yolo import load_detector

    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)  # a zip with a pickle that would call os.system
    with pytest.raises(ConfigError, match="refused"):
        check_yolo_checkpoint(evil)
    with pytest.raises(ConfigError, match="refused"):
        load_detector(str(evil))
    # the same for protocol-4 pickles (STACK_GLOBAL) inside the archive
    evil4 = tmp_path / "evil4.pt"
    with zipfile.ZipFile(evil4, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil(), protocol=4))
    with pytest.raises(ConfigError, match="posix.system|os.system"):
        check_yolo_checkpoint(evil4)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="junk.pt"):
        check_yolo_checkpoint(junk)


def test_shipped_detector_passes_the_check():
    from videoring.checkpoint import check_yolo_checkpoint
    from videoring.tracking import _resolve_detector
    from videoring.config import TrackConfig

    check_yolo_checkpoint(_resolve_detector(TrackConfig(export="none")))


def test_named_model_needs_opt_in():
    from videoring.yolo import load_detector

    with pytest.raises(ConfigError, match="allow_download"):
        load_detector("yolo26n.pt")


@pytest.mark.parametrize("override, key", [
    ("track.fps=0", "track.fps"), ("track.tracker=sort", "track.tracker"), ("track.imgsz=100", "track.imgsz"),
    ("actions.max_actors=0", "actions.max_actors"), ("actions.background=sit", "actions.background"),
    ("actions.labels=[a, a]", "actions.labels"), ("track.bogus=1", "track.bogus"), ("track.conf=high", "track.conf"),
    ("track.extend_s=-1", "track.extend_s"), ("temporal.dropout=1.5", "temporal.dropout"),
    ("actions.nms_labels=[hug]", "actions.nms_labels"), ("track.iou=0", "track.iou"),
    ("actions.recall_heads=true", "actions.recall_heads"), ("actions.recall_heads=17", "actions.recall_heads"),
    ("actions.segment_tau_s=-1", "actions.segment_tau_s"), ("actions.conf_smooth_s=-0.1", "actions.conf_smooth_s"),
])
def test_pipeline_config_errors_name_the_key(override, key):
    from videoring.config import PipelineConfig, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override], cls=PipelineConfig)


def test_link_tracklets_joins_fragments_of_one_actor_only():
    from videoring.tracking import link_tracklets

    def frag(tid, t0, t1, x0, vx, rgb):
        r = _rows(tid, t0, t1, x0, vx, step=0.1)
        return np.concatenate([r, np.tile([*rgb, 0.0], (len(r), 1))], axis=1)

    red, blue, green = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9), (0.1, 0.8, 0.1)
    a = frag(1, 0.0, 5.0, 0, 10, red)  # ends at x=~49 heading right at 10 px/s
    b = frag(2, 6.0, 9.0, 60, 10, red)  # 1 s later where A was heading: the same actor
    c = frag(3, 6.0, 9.0, 60, 10, blue)  # same place, other colour: someone else
    d = frag(4, 6.0, 9.0, 250, 10, red)  # same colour, far away: someone else
    e = frag(5, 2.0, 8.0, 120, 0, red)  # overlaps A by 3 s (> max_overlap_s): never the same actor
    # a duplicate track that starts 1 s before F ends, on F's box: the same actor, the overlap dropped
    f = frag(6, 10.0, 14.0, 300, 0, green)
    g = frag(7, 13.0, 16.0, 300, 0, green)
    # H leaves at the right border (x2 = 400 of a 400-wide frame); I enters there 1 s later: two visits
    h = frag(8, 20.0, 22.0, 360, 10, blue)
    i = frag(9, 23.0, 25.0, 381, -10, blue)
    rows = np.concatenate([a, b, c, d, e, f, g, h, i])
    out, root = link_tracklets(rows, (400, 300))
    assert root[2] == 1
    assert root[3] == 3 and root[4] == 4 and root[5] == 5
    assert root[7] == 6
    kept = out[out[:, 1] == 6]
    assert len(np.unique(kept[:, 0])) == len(kept) == len(f) + int((g[:, 0] > f[-1, 0]).sum())  # one box per time
    assert root[9] == 9  # leaving and entering at the border is not linked ...
    _, root = link_tracklets(rows)  # ... unless the frame size is unknown
    assert root[9] == 8
    assert len(out) == len(rows) - int((g[:, 0] <= f[-1, 0]).sum())


def test_suppress_duplicates_per_class():
    from videoring.tracking import suppress_duplicates

    xyxy = np.array([[0, 0, 10, 20], [0, 0, 11, 22], [30, 0, 40, 20], [0, 0, 10, 20.0]])
    conf = np.array([0.5, 0.9, 0.8, 0.7])
    cls = np.array([0, 0, 0, 1])
    # box 0 is box 1's duplicate (IoU 0.83): the higher score stays; box 3 is another class
    assert suppress_duplicates(xyxy, conf, cls, 0.6).tolist() == [1, 2, 3]
    assert suppress_duplicates(xyxy, conf, cls, 0.9).tolist() == [0, 1, 2, 3]


def test_pixel_stats_change_and_forgetting():
    """Appearance change is measured against the ID's previous crop; IDs unseen for
    FORGET_S seconds are dropped (an hour would otherwise keep every ID's crop)."""
    from videoring.actors import PixelStats

    img = np.zeros((40, 40, 3), np.uint8)
    img[5:25, 5:25] = 200
    st = PixelStats()
    row = lambda t, tid: np.array([[t, tid, 5, 5, 25, 25, 0.9, 0]], float)  # noqa: E731
    assert st(img, row(0.0, 1))[0, 3] == 0.0  # first sight: no change
    moved = np.roll(img, 6, axis=1)  # the box's content changes under the same box
    assert st(moved, row(0.1, 1))[0, 3] > 0.1
    st(img, row(0.2, 2))
    st(img, row(PixelStats.FORGET_S + 0.15, 2))
    assert set(st.last) == {2}  # ID 1 last seen at 0.1 s: forgotten; ID 2 kept


def test_pixel_stats_band_above_the_box():
    """A hand of the box's colour swinging above an unmoving box: the band above it matches the
    box's colour and changes, while the box itself does not change (waving, not spinning)."""
    from videoring.actors import PixelStats

    img = np.full((60, 60, 3), 90, np.uint8)
    img[30:50, 20:40] = (230, 40, 40)  # the box
    row = lambda t: np.array([[t, 1, 20, 30, 40, 50, 0.9, 0]], float)  # noqa: E731
    st = PixelStats()
    still = st(img, row(0.0))[0]
    assert still[4] == 0.0 and still[5] == 0.0  # plain background above
    for k, x in enumerate((14, 34, 14)):
        hand = img.copy()
        hand[22:27, x : x + 5] = (230, 40, 40)
        out = st(hand, row(0.1 * (k + 1)))[0]
        # the band is 10 x 36 px (half the box's height; 40% of its width out on each side): the hand is 25 px of 360
        assert 0.04 < out[4] < 0.15
        assert out[5] > 0.02 and out[3] == 0.0


def test_pixel_stats_band_mask_leaves_out_other_boxes():
    """An actor of another colour walking through the band above an idle box changes the band
    as a hand would; with ``band_mask`` the cells its box covers are left out (the idle box's
    band then does not change), while a hand where no box is still counts."""
    from videoring.actors import PixelStats

    img = np.full((60, 60, 3), 90, np.uint8)
    img[30:50, 20:40] = (230, 40, 40)  # the idle box
    idle = [1, 20, 30, 40, 50, 0.9, 0]
    changes = {}
    for mask in (False, True):
        st = PixelStats(band_mask=mask)
        for k, x in enumerate((6, 16, 26)):  # the passer's box, 12 px wide, over the band's rows 20-30
            frame = img.copy()
            frame[8:29, x : x + 12] = (40, 200, 40)
            rows = np.array([[0.1 * k, *idle], [0.1 * k, 2, x, 8, x + 12, 29, 0.9, 0]], float)
            out = st(frame, rows)
        changes[mask] = out[0, 5]
        assert out[0, 3] == 0.0  # the idle box itself does not change
    assert changes[False] > 0.05 and changes[True] < 0.1 * changes[False]
    st = PixelStats(band_mask=True)  # a hand with no box over it: as without the mask
    for k, x in enumerate((14, 34, 14)):
        hand = img.copy()
        hand[22:27, x : x + 5] = (230, 40, 40)
        out = st(hand, np.array([[0.1 * k, *idle], [0.1 * k, 2, 0, 0, 10, 10, 0.9, 0]], float))[0]
    assert 0.04 < out[4] < 0.15 and out[5] > 0.02


def test_neighbour_gap_same_ground_line_only():
    from videoring.actors import GAP_MAX, neighbour_gap

    rows = np.array([
        [0, 1, 10, 20, 30, 60, 1, 0],    # w 20, bottom 60
        [0, 2, 50, 25, 70, 61, 1, 0],    # 20 px to the right of 1, same ground line
        [0, 3, 100, 0, 120, 30, 1, 0],   # another lane (bottom 30): not a neighbour of anyone
    ], float)
    gap = neighbour_gap(rows)
    assert gap[0] == pytest.approx(1.0) and gap[1] == pytest.approx(1.0) and gap[2] == GAP_MAX
    assert neighbour_gap(rows[:1])[0] == GAP_MAX
    touching = rows[:2].copy()
    touching[1, 2:5:2] = (25, 45)  # overlapping boxes: gap 0
    assert np.allclose(neighbour_gap(touching), 0.0)


def test_thumbnails_and_kinematics_shapes():
    from videoring.actors import KIN_DIM, KIN_HEIGHT, ROW_COLS, THUMB_DIM, kinematics, thumbnails

    img = np.zeros((40, 40, 3), np.uint8)
    img[10:22, 10:22] = (255, 0, 0)
    th = thumbnails(img, np.array([[10, 10, 22, 22], [0, 0, 1, 1]], float))
    assert th.shape == (2, THUMB_DIM)
    assert np.allclose(th[0].reshape(-1, 3), [1, 0, 0]) and not th[1].any()  # too small: zeros
    track = np.zeros((5, ROW_COLS))
    track[:, 0] = np.arange(5) * 0.1
    track[:, 2:6] = (10, 10, 20, 30)
    track[:, 14] = (2.0, 1.8, 1.6, 1.4, 1.2)  # closing in at 2 widths per second
    k = kinematics(track, 0.2, (40, 40))
    assert k.shape == (KIN_DIM,) and np.isfinite(k).all()
    assert k[-2] == pytest.approx(1.6 / 4) and k[-1] == pytest.approx(-2.0 / 4)
    assert k[KIN_HEIGHT] == pytest.approx(20 / 40)  # what Recall reads as the height (actions.recall_shape)



@pytest.mark.parametrize("shape", ["square", "circle", "hexagon"])
def test_texture_features_tell_look_alikes_apart(shape):
    """Four look-alikes (same shape and colour, each pattern) drawn by the synthetic renderer on
    a grey background, boxes one pixel loose: stripes are periodic down the box and not across,
    dots both ways, a frame has the darkest border ring, solid has none of these."""
    from videoring.actors import THUMB_DIM, TEX_DIM, texture_features, thumbnails
    from videoring.synth.render import _paste, _sprite
    from videoring.synth.scenario import Appearance

    feats, thumbs = {}, {}
    for pattern in ("solid", "stripes", "dots", "frame"):
        mask, rgb = _sprite(Appearance(0, shape, (50, 80, 235), pattern, 0.25, 0.9), 240)
        img = np.full((240, 320, 3), 110, np.uint8)
        _paste(img, mask, rgb, 100, 80)
        box = np.array([99, 79, 101 + mask.shape[1], 81 + mask.shape[0]], float)
        feats[pattern] = texture_features(img, box)
        thumbs[pattern] = thumbnails(img, box[None], texture=True)[0]
        assert thumbs[pattern].shape == (THUMB_DIM + TEX_DIM,) and np.allclose(thumbs[pattern][THUMB_DIM:], feats[pattern])
    down, across, ring = ({p: f[i] for p, f in feats.items()} for i in range(3))
    assert max(down, key=down.get) == "stripes" and across["stripes"] < 0.5 * down["stripes"]
    assert across["dots"] > 2 * max(across["solid"], across["stripes"]) and down["dots"] > 2 * down["solid"]
    assert min(ring, key=ring.get) == "frame" and ring["solid"] > 0.45
    assert feats["solid"][:2].max() < 0.15
    assert not texture_features(img, np.array([0, 0, 3, 3], float)).any()  # too small: zeros


@pytest.mark.parametrize("shape, H", [("square", 240), ("circle", 240), ("star", 240), ("star", 600)])
def test_masked_texture_features_read_the_pattern_on_the_actor(shape, H):
    """The synthetic renderer's four look-alikes on a noisy grey background, boxes one pixel
    loose (and a 150-px actor, read resized): on the actor's own pixels the pattern is plain:
    solid has no dark part, stripes are periodic down and not across, dots both ways, a frame is
    dark on the border and nowhere inside, on a star too, where the whole box's border ring
    (:func:`texture_features`) is background and does not tell a frame from solid."""
    from videoring.actors import THUMB_DIM, TEX_DIM, masked_texture_features, texture_features, thumbnails
    from videoring.synth.render import _paste, _sprite
    from videoring.synth.scenario import Appearance

    rng = np.random.default_rng(0)
    f, whole = {}, {}
    for pattern in ("solid", "stripes", "dots", "frame"):
        mask, rgb = _sprite(Appearance(0, shape, (50, 80, 235), pattern, 0.25, 0.9), H)
        img = np.clip(110 + rng.normal(0, 6, (H, H, 3)), 0, 255).astype(np.uint8)
        _paste(img, mask, rgb, 40, 30)
        box = np.array([39, 29, 41 + mask.shape[1], 31 + mask.shape[0]], float)
        f[pattern], whole[pattern] = masked_texture_features(img, box), texture_features(img, box)
        look = thumbnails(img, box[None], texture=True, masked=True)[0]
        assert look.shape == (THUMB_DIM + 2 * TEX_DIM,) and np.allclose(look[THUMB_DIM + TEX_DIM :], f[pattern])
    down, across, border, inside = ({p: v[i] for p, v in f.items()} for i in range(4))
    assert max(f["solid"]) < 0.05
    assert down["stripes"] > 0.8 and across["stripes"] < 0.2 and 0.35 < inside["stripes"] < 0.65
    assert down["dots"] > 0.4 and across["dots"] > 0.4
    assert border["frame"] > 0.9 and inside["frame"] < 0.1 and max(down["frame"], across["frame"]) < 0.1
    if shape == "star":
        assert abs(whole["frame"][2] - whole["solid"][2]) < 0.05  # the whole box's ring: no difference
    assert not masked_texture_features(img, np.array([0, 0, 3, 3], float)).any()  # too small: zeros


def test_half_window_kinematics_tell_before_from_after():
    """An actor walks (10 px/s) until t=1, then runs (50 px/s): the centred velocity mixes the
    two; the half-windows give each side's own; the first KIN_DIM numbers do not change."""
    from videoring.actors import KIN_DIM, ROW_COLS, kin_dim, kinematics

    t = np.arange(21) * 0.1
    track = np.zeros((21, ROW_COLS))
    track[:, 0] = t
    track[:, 2] = np.where(t <= 1.0, 10 * t, 10 + 50 * (t - 1.0))
    track[:, 3:6] = (0, track[0, 2] + 10, 20)
    track[:, 4] = track[:, 2] + 10
    k = kinematics(track, 1.0, (100, 100), halves=True)
    assert kin_dim(True) == len(k) > kin_dim(False) == KIN_DIM
    assert np.array_equal(k[:KIN_DIM], kinematics(track, 1.0, (100, 100)))
    half = (len(k) - KIN_DIM) // 2
    before, after = k[KIN_DIM], k[KIN_DIM + half]  # vx * 4 in frame widths per second
    assert before == pytest.approx(0.1 * 4) and after == pytest.approx(0.5 * 4) and before < k[4] < after

def test_extend_tracks_grows_a_late_track_back_through_spare_detections():
    """An actor walks in at t=0 but scores under new_thresh until t=1: its track starts at 1.0.
    The spare detections on its path before that join it; a spare elsewhere, one past a
    3-frame hole and one beyond ``max_s`` do not; none is taken twice."""
    from videoring.tracking import SPARE, extend_tracks

    track = _rows(7, 1.0, 3.0, 10, 40, step=0.1)  # x = 10 + 40 (t - 1), moving right
    path = _rows(SPARE, 0.0, 1.0, -30, 40, step=0.1)  # where it was: x = -30 + 40 t
    far = _rows(SPARE, 0.5, 0.8, 200, 0, step=0.1)  # someone else, standing far away
    out = extend_tracks(track, np.concatenate([path, far]), fps=10.0, max_s=3.0)
    grown = out[len(track):]
    assert set(grown[:, 1].astype(int)) == {7}
    assert np.allclose(np.sort(grown[:, 0]), path[:, 0])  # all of the path, nothing of `far`
    # at most max_s: only 0.5 s back
    short = extend_tracks(track, path, fps=10.0, max_s=0.5)
    assert np.allclose(np.sort(short[len(track):, 0]), [0.5, 0.6, 0.7, 0.8, 0.9])
    # a hole of 3 tracking frames (0.6-0.8 missing) ends the growth
    holed = path[(path[:, 0] < 0.55) | (path[:, 0] > 0.85)]
    assert np.allclose(np.sort(extend_tracks(track, holed, fps=10.0, max_s=3.0)[len(track):, 0]), [0.9])
    # forward from the end, and each spare joins one track only
    after = _rows(SPARE, 3.0, 3.5, 90, 40, step=0.1)
    twin = track.copy()
    twin[:, 1] = 8
    out = extend_tracks(np.concatenate([track, twin]), after, fps=10.0, max_s=3.0)
    assert len(out) == 2 * len(track) + len(after)
    assert np.allclose(np.sort(out[2 * len(track):, 0]), after[:, 0])


def test_extend_tracks_fills_a_gap_without_crossing_the_next_piece():
    from videoring.tracking import SPARE, extend_tracks

    a = _rows(3, 0.0, 1.0, 0, 40, step=0.1)
    b = _rows(3, 2.0, 3.0, 80, 40, step=0.1)  # the same track after a 1 s gap (occlusion)
    gap = _rows(SPARE, 1.0, 2.0, 40, 40, step=0.1)
    out = extend_tracks(np.concatenate([a, b]), gap, fps=10.0, max_s=3.0)
    t = np.sort(out[out[:, 1] == 3, 0])
    assert np.allclose(t, np.arange(0.0, 2.95, 0.1))  # one box per frame, no time twice


def test_recall_heads_refuses_a_bool_built_in_python():
    from videoring.config import ActionConfig

    with pytest.raises(ConfigError, match=r"actions\.recall_heads"):
        ActionConfig(recall_heads=True)


def test_reported_confidence_is_averaged_along_its_track_by_hand():
    """``actions.conf_smooth_s``: each reported box's confidence is the Gaussian-weighted mean
    (sigma seconds, cut at 3 sigma) of its track's detector confidences; other tracks and the
    boxes themselves are untouched; 0 keeps the detector's own."""
    from videoring.actors import ROW_COLS
    from videoring.pipeline import _tracks_from_rows

    rows = np.zeros((5, ROW_COLS))
    rows[:, 0] = [0.0, 0.1, 0.2, 0.0, 0.1]
    rows[:, 1] = [1, 1, 1, 2, 2]
    rows[:, 2:6] = [10, 20, 30, 60]
    rows[:, 6] = [0.9, 0.1, 0.9, 0.5, 0.7]
    raw = _tracks_from_rows(rows, 0.0, box=slice(2, 6))
    assert [b[5] for t in raw for b in t.boxes] == [0.9, 0.1, 0.9, 0.5, 0.7]
    t1, t2 = _tracks_from_rows(rows, 0.0, box=slice(2, 6), conf_smooth_s=0.2)
    w1, w2 = np.exp(-0.5 * 0.5**2), np.exp(-0.5 * 1.0**2)  # 0.1 s and 0.2 s away at sigma 0.2 s
    want1 = [(0.9 + 0.1 * w1 + 0.9 * w2) / (1 + w1 + w2), (0.1 + 1.8 * w1) / (1 + 2 * w1), (0.9 + 0.1 * w1 + 0.9 * w2) / (1 + w1 + w2)]
    assert [b[5] for b in t1.boxes] == pytest.approx(want1, abs=1e-4)
    assert [b[5] for b in t2.boxes] == pytest.approx([(0.5 + 0.7 * w1) / (1 + w1), (0.7 + 0.5 * w1) / (1 + w1)], abs=1e-4)
    assert [b[1:5] for b in t1.boxes] == [[10, 20, 30, 60]] * 3
