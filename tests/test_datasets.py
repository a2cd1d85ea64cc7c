"""Standard annotation formats: parsed against hand-written fixtures; bad lines named precisely."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videoring.datasets import load_activitynet, load_ava, load_kinetics, load_mot, to_results
from videoring.errors import ConfigError
from videoring.results import VideoMeta


def test_activitynet_both_formats(tmp_path):
    p = tmp_path / "anet.json"
    p.write_text(json.dumps({"database": {"v1": {"annotations": [{"segment": [1.5, 4.0], "label": "jump"}]}}}))
    (seg,) = load_activitynet(p)["v1"]
    assert (seg.label, seg.start_s, seg.end_s, seg.score) == ("jump", 1.5, 4.0, 1.0)
    p.write_text(json.dumps({"results": {"v1": [{"segment": [0, 2], "label": "run", "score": 0.3}]}}))
    assert load_activitynet(p)["v1"][0].score == 0.3
    p.write_text(json.dumps({"database": {"v1": {"annotations": [{"segment": [4.0, 1.0], "label": "jump"}]}}}))
    with pytest.raises(ConfigError, match=r"anet\.json: database\.v1\[0\]\.segment: got \[4\.0, 1\.0\]"):
        load_activitynet(p)
    p.write_text("{\n  \"database\": {,}\n}")
    with pytest.raises(ConfigError, match=r"anet\.json: line 2: not valid JSON"):
        load_activitynet(p)


def test_ava_csv_and_label_map(tmp_path):
    p = tmp_path / "ava.csv"
    p.write_text("v1,0902,0.1,0.2,0.3,0.6,2,7\nv1,0903,0.1,0.2,0.3,0.6,1,7\n")
    rows = load_ava(p, {1: "walk", 2: "jump"})["v1"]
    assert rows[0] == (902.0, 7, (0.1, 0.2, 0.3, 0.6), "jump")
    p.write_text("v1,0902,0.1,0.2,0.3,0.6,2,7\nv1,0903,0.5,0.2,0.3,0.6,1,7\n")
    with pytest.raises(ConfigError, match=r"ava\.csv: line 2: box"):
        load_ava(p, {1: "walk", 2: "jump"})
    p.write_text("v1,09x3,0.1,0.2,0.3,0.6,1,7\n")
    with pytest.raises(ConfigError, match=r"line 1: timestamp: got '09x3'"):
        load_ava(p, {1: "walk"})
    p.write_text("v1,0903,0.1,0.2,0.3,0.6,9,7\n")
    with pytest.raises(ConfigError, match="action_id 9 is not in the label map"):
        load_ava(p, {1: "walk"})


def test_kinetics_csv(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc123,10,20,val\n")
    assert load_kinetics(p) == {"abc123": "abseiling"}
    p.write_text("name,id\nx,y\n")
    with pytest.raises(ConfigError, match=r"k\.csv: line 1: header"):
        load_kinetics(p)


def test_mot_txt_to_results(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text("2,1,10,20,30,40,1,-1,-1,-1\n1,1,11,21,30,40,0.9,-1,-1,-1\n1,2,100,20,30,40,1,-1,-1,-1\n")
    rows = load_mot(p)
    assert rows[:, 0].tolist() == [1, 1, 2]
    assert rows[0].tolist() == [1, 1, 11, 21, 41, 61, 0.9]
    meta = VideoMeta("v.mp4", 1.0, 10.0, 10, 320, 240)
    res = to_results(meta, mot=rows, timestamps=np.arange(10) / 10.0,
                     ava=[(0.1, -1, (10 / 320, 20 / 240, 40 / 320, 60 / 240), "wave")])
    assert [t.id for t in res.tracks] == [1, 2]
    assert res.tracks[0].boxes == [[0.0, 11.0, 21.0, 41.0, 61.0, 0.9], [0.1, 10.0, 20.0, 40.0, 60.0, 1.0]]
    (act,) = res.track_actions
    assert (act.track_id, act.label) == (1, "wave")  # AVA box matched to MOT track 1 by IoU
    p.write_text("0,1,10,20,30,40\n")
    with pytest.raises(ConfigError, match=r"gt\.txt: line 1: frame: got '0'"):
        load_mot(p)
    p.write_text("1,1,10,20,-3,40\n")
    with pytest.raises(ConfigError, match=r"line 1: width/height"):
        load_mot(p)
