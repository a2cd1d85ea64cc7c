"""The synthetic generator: determinism, schema, actions and the long-range guarantee."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videoring.errors import ConfigError
from videoring.videoinfo import probe
from videoring.results import SCHEMA_VERSION, Results
from videoring.synth import ACTIONS, make_scenario, render_frames, synthesize
from videoring.synth.render import Renderer
from videoring.synth import ground_truth


def test_deterministic_for_a_seed(tmp_path):
    a = synthesize(tmp_path / "a.mp4", seed=11, duration_s=8, size=(128, 96))
    b = synthesize(tmp_path / "b.mp4", seed=11, duration_s=8, size=(128, 96))
    c = synthesize(tmp_path / "c.mp4", seed=12, duration_s=8, size=(128, 96))
    assert a.tracks == b.tracks and a.track_actions == b.track_actions
    assert a.tracks != c.tracks
    fa = np.stack(list(render_frames(11, 8, size=(128, 96))))
    fb = np.stack(list(render_frames(11, 8, size=(128, 96))))
    assert np.array_equal(fa, fb)


def test_writes_h264_and_schema_json(tmp_path):
    out = tmp_path / "clip.mp4"
    gt = synthesize(out, seed=3, duration_s=6, fps=12.5, size=(96, 64))
    info = probe(out)
    assert info.codec == "h264" and (info.width, info.height) == (96, 64)
    assert info.frames == 75 and abs(info.duration_s - 6.0) < 1e-6
    d = json.loads(out.with_suffix(".json").read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    assert set(d) == {"schema_version", "video", "tracks", "segments", "track_actions", "clip_actions"}
    assert set(d["video"]) == {"path", "duration_s", "fps", "frames", "width", "height"}
    assert Results.from_dict(d) == gt
    for t in d["tracks"]:
        assert {"id", "label", "boxes"} <= set(t)
        for box in t["boxes"]:
            tt, x1, y1, x2, y2, conf = box
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64 and conf == 1.0
            assert abs(round(tt * 12.5) - tt * 12.5) < 1e-6  # on a frame time


def test_boxes_cover_the_drawn_actor(tmp_path):
    """Ground-truth boxes hold the actor's pixels: the frame differs from the empty background there."""
    sc = make_scenario(4, 10.0, 10.0, 160, 120)
    r = Renderer(sc)
    gt = ground_truth(sc, r, "x.mp4")
    frames = list(render_frames(4, 10.0, size=(160, 120)))
    empty_r = Renderer(sc)
    checked = 0
    for tr in gt.tracks:
        for t, x1, y1, x2, y2, _ in tr.boxes[::7]:
            i = int(round(t * 10))
            bg = empty_r.frame(i, [])
            diff = np.abs(frames[i].astype(int) - bg.astype(int)).sum(axis=2) > 40
            inside = diff[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))].sum()
            if inside:
                checked += 1
            assert diff.sum() > 0
    assert checked > 10


def test_actions_and_long_range_pair():
    sc = make_scenario(seed=2, duration_s=1500.0, fps=10.0, width=320, height=240)
    labels = {p[0] for a in sc.actors for p in a.phases}
    assert labels == set(ACTIONS)
    last_exit: dict[int, float] = {}
    long_returns, late_arrivals = 0, 0
    for a in sorted(sc.actors, key=lambda a: a.t_enter):
        look = a.appearance.id
        label = a.phases[0][0]
        if look in last_exit:
            assert label == "return" and last_exit[look] < a.t_enter
            if a.t_enter - last_exit[look] >= 600:
                long_returns += 1
        else:
            assert label == "arrive"
            if a.t_enter > 0.75 * 1500:
                late_arrivals += 1
        last_exit[look] = max(last_exit.get(look, 0), a.t_exit)
    assert long_returns >= 1
    assert late_arrivals >= 1


def test_pan_and_large_sizes_render(tmp_path):
    frames = list(render_frames(1, 2.0, fps=5, size=(1280, 720), pan=True))
    assert frames[0].shape == (720, 1280, 3)
    tiny = list(render_frames(1, 2.0, fps=5, size=(64, 64)))
    assert tiny[0].shape == (64, 64, 3)


@pytest.mark.parametrize("kw", [dict(duration_s=0), dict(fps=0), dict(size=(33, 32)), dict(size=(10, 10))])
def test_bad_arguments_are_config_errors(tmp_path, kw):
    with pytest.raises(ConfigError):
        synthesize(tmp_path / "x.mp4", **kw)
