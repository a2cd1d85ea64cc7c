"""The whole pipeline on synthetic clips: tracks against ground truth, outputs, CLI, streaming, ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from videoring.results import Results

from .distributed import run_world
from .pipeline_jobs import analyze_on_ranks

pytestmark = pytest.mark.timeout(600)  # end-to-end runs (the module fixture runs `videoring analyze` once)

SEED = 9001  # never used to train the shipped detector (1000-1079, 5000-5009) or action model (2000+)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from videoring.synth import synthesize

    out = tmp_path_factory.mktemp("pipe") / "walkers.mp4"
    synthesize(out, seed=SEED, duration_s=40.0, fps=10.0, size=(320, 240))
    return out


@pytest.fixture(scope="module")
def analyzed(clip, tmp_path_factory) -> Path:
    """`videoring analyze` as a user runs it, once for the module."""
    out = tmp_path_factory.mktemp("analyze")
    r = subprocess.run([sys.executable, "-m", "videoring.cli", "analyze", str(clip), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return out / clip.stem


def test_tracks_match_ground_truth(analyzed, clip):
    from videoring.evaluate import evaluate

    pred = Results.from_json(analyzed / "results.json")
    gt = Results.from_json(clip.with_suffix(".json"))
    m = evaluate([(pred, gt)])
    # Against the generator's exact (amodal) boxes and identities. This clip is crowded: five
    # actors overlap across lanes for 13 s. Measured with the shipped detector and session 6's
    # tracking (detection boxes reported, tracks grown through spare detections): IDF1 0.695,
    # MOTA 0.809, HOTA 0.576 (held-out mean over 8 clips: IDF1 0.81, docs/actions.md); the bars
    # sit just under them so that a regression in detection, tracking or stitching fails.
    assert m["IDF1"] >= 0.65, m
    assert m["MOTA"] >= 0.76, m
    assert m["HOTA"] >= 0.53, m
    assert len(gt.tracks) <= len(pred.tracks) <= 2 * len(gt.tracks), (len(pred.tracks), len(gt.tracks))
    assert all(t.id > 0 for t in pred.tracks)  # the spare detections never reach the results


def test_every_detection_is_a_track_box_or_a_spare(clip):
    """Tracked rows carry the detector's own box beside the Kalman filter's (which lags), and
    each detection that survives NMS (``track.iou``) comes back exactly once: in a track, or as
    a spare for extend_tracks."""
    from videoring.config import TrackConfig
    from videoring.sampling import Sampling
    from videoring.source import VideoSource
    from videoring.tracking import SPARE, Tracker, suppress_duplicates

    chunk = VideoSource(clip).read_all(Sampling(fps=10.0, end_s=8.0))
    trk = Tracker(TrackConfig())
    trk.reset((chunk.images.shape[2], chunk.images.shape[1]))
    dets = trk.detect(chunk.images)
    trk.reset((chunk.images.shape[2], chunk.images.shape[1]))
    rows = trk.update(chunk.images, chunk.timestamps)
    assert (rows[:, 1] > 0).any() and (rows[:, 1] == SPARE).any()
    for t, d in zip(chunk.timestamps, dets):
        got = rows[rows[:, 0] == t]
        b = d.boxes.cpu().numpy()
        want = b.xyxy[suppress_duplicates(b.xyxy, b.conf, b.cls, trk.cfg.iou)] if len(b) else b.xyxy
        assert len(got) == len(want)
        key = lambda b: np.round(np.asarray(b, np.float64), 3).tolist()  # noqa: E731
        assert sorted(map(key, got[:, 8:12])) == sorted(map(key, want))


def test_a_slow_machine_loses_no_detections(clip, monkeypatch):
    """ultralytics' NMS gives up after 2 + 0.05 * batch seconds and returns nothing for the
    batch's remaining frames; on a loaded machine that silently drops actors. Here its clock
    jumps 100 s per reading: plain ``predict`` loses frames, the tracker's detector none."""
    from videoring.config import TrackConfig
    from videoring.sampling import Sampling
    from videoring.source import VideoSource
    from videoring.tracking import Tracker

    images = VideoSource(clip).read_all(Sampling(fps=10.0, end_s=8.0)).images
    trk = Tracker(TrackConfig(export="none"))  # imports ultralytics the offline way first
    import ultralytics.utils.nms as nms
    from ultralytics.models.yolo.detect import DetectionPredictor

    trk.reset((images.shape[2], images.shape[1]))
    images = images[[len(r.boxes) > 0 for r in trk.detect(images)]][: trk.cfg.batch]  # frames with actors
    want = [len(r.boxes) for r in trk.detect(images)]
    assert len(want) > 1 and min(want) > 0

    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(nms, "time", SimpleNamespace(time=lambda: float(next(clock))))
    plain = [len(r.boxes) for r in trk.model.predict(list(images[..., ::-1]), imgsz=trk.imgsz, conf=trk.cfg.conf,
                                                     iou=trk.cfg.iou, device="cpu", verbose=False,
                                                     predictor=DetectionPredictor)]
    assert plain[0] == want[0] and sum(plain[1:]) == 0  # the time limit this guards against
    assert [len(r.boxes) for r in trk.detect(images)] == want


def test_results_json_validates_against_schema(analyzed):
    import jsonschema

    from videoring.results import json_schema

    doc = json.loads((analyzed / "results.json").read_text())
    jsonschema.validate(doc, json_schema())
    assert doc["schema_version"] == "1.2"
    assert doc["tracks"] and doc["track_actions"]
    labels = {a["label"] for a in doc["track_actions"]}
    assert labels <= {"idle", "walk", "run", "jump", "spin", "wave", "meet", "arrive", "return"}
    ids = {t["id"] for t in doc["tracks"]}
    assert {a["track_id"] for a in doc["track_actions"]} <= ids
    # every track with actions carries its per-step scores, and its actions are their arg-max runs
    order = doc["action_labels"]
    assert order == ["idle", "walk", "run", "jump", "spin", "wave", "meet", "arrive", "return"]
    scored = {t["id"]: np.asarray(t["scores"]) for t in doc["tracks"] if "scores" in t}
    assert set(scored) == {a["track_id"] for a in doc["track_actions"]}
    for a in doc["track_actions"]:
        rows = scored[a["track_id"]]
        inside = rows[(rows[:, 0] >= a["start_s"]) & (rows[:, 0] < a["end_s"])]
        assert len(inside) and all(order[k] == a["label"] for k in inside[:, 1:].argmax(1))
        assert np.allclose(inside[:, 1:].sum(1), 1.0, atol=1e-3)
    bad = dict(doc, tracks=[{"id": "x", "label": 1, "boxes": []}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


def test_csv_mot_activitynet(analyzed):
    import csv

    res = Results.from_json(analyzed / "results.json")
    with open(analyzed / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(t.boxes) for t in res.tracks)
    with open(analyzed / "track_actions.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res.track_actions)
    with open(analyzed / "segments.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res.segments)
    with open(analyzed / "track_scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == sum(len(t.scores or ()) for t in res.tracks)
    assert list(scores[0]) == ["track_id", "t", *res.action_labels]
    mot = np.loadtxt(analyzed / "mot.txt", delimiter=",", ndmin=2)
    assert mot.shape == (len(rows), 10)
    assert mot[:, 0].min() >= 1 and np.all(np.diff(mot[:, 0]) >= 0)  # 1-based frames in order
    # MOT frame numbers are the decoded frames the boxes came from (10 fps video: frame = t*10 + 1)
    first = res.tracks[0].boxes[0]
    row = mot[(mot[:, 1] == res.tracks[0].id)][0]
    assert row[0] == round(first[0] * 10) + 1 and row[4] == pytest.approx(first[3] - first[1], abs=0.02)
    anet = json.loads((analyzed / "activitynet.json").read_text())
    assert anet["version"] == "VERSION 1.3"
    segs = anet["results"]["walkers"]
    assert len(segs) == len(res.segments)
    assert all({"label", "score", "segment"} <= set(s) for s in segs)


def test_annotated_video_and_timeline(analyzed, clip):
    import av
    from PIL import Image

    from videoring.sampling import Sampling, select_indices
    from videoring.videoinfo import probe

    info = probe(str(clip))
    expected = len(select_indices(info.timestamps, Sampling(fps=10.0)))  # the tracking rate
    ann = probe(str(analyzed / "annotated.mp4"))
    assert ann.frames == expected and (ann.width, ann.height) == (320, 240)
    with av.open(str(analyzed / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == expected
    img = np.asarray(Image.open(analyzed / "timeline.png").convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] > 500
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 8  # bars in several colours, text: a real plot


def test_cli_batch_with_a_bad_file(tmp_path, clip):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 1000)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "videoring.cli", "analyze", str(bad), str(clip), "-o", str(out),
                        "output.annotate=false", "output.timeline=false"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "broken.mp4" in err[0]
    assert "Traceback" not in r.stderr
    assert (out / "walkers" / "results.json").exists()  # the good video still ran
    assert not (out / "broken").exists() or not any((out / "broken").iterdir())
    r = subprocess.run([sys.executable, "-m", "videoring.cli", "analyze", str(clip), "track.fps=-1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "track.fps" in r.stderr and "Traceback" not in r.stderr


def test_stream_yields_partials_then_the_final_result(clip):
    from videoring import Pipeline

    pipe = Pipeline.from_config("default", **{"sampling.chunk_size": 40})
    items = list(pipe.stream(clip))
    assert len(items) >= 4
    partial_ends = [max((t.boxes[-1][0] for t in r.tracks), default=0.0) for r in items[:-1]]
    assert partial_ends == sorted(partial_ends) and partial_ends[0] < 20.0
    assert all(not r.track_actions for r in items[:-1])
    final = items[-1]
    assert final.track_actions and final.segments
    again = pipe(clip)
    assert again.to_dict() == final.to_dict()  # the tracker is reset per video: same result twice


def test_ids_stitched_across_ranks(clip, analyzed):
    """W=2 (zigzag: 4 time spans): an actor crossing a span border keeps one global ID."""
    from videoring.evaluate import evaluate
    from videoring.tracking import box_iou

    d = run_world(analyze_on_ranks, 2, str(clip), {"output.annotate": False}, timeout=280)[0]
    pred = Results.from_dict(d)
    gt = Results.from_json(clip.with_suffix(".json"))
    one = Results.from_json(analyzed / "results.json")
    # tracking each span separately and stitching costs (almost) nothing against one rank
    assert evaluate([(pred, gt)])["IDF1"] >= evaluate([(one, gt)])["IDF1"] - 0.05
    from videoring.engine import frame_pieces

    T = 40
    borders = [p[0] for ps in frame_pieces(T, 2, "zigzag") for p in ps if p[0] > 0]
    crossed = 0
    for b in borders:
        for g in gt.tracks:
            gb = np.asarray(g.boxes)
            before, after = gb[np.isclose(gb[:, 0], b - 0.6)], gb[np.isclose(gb[:, 0], b + 0.6)]
            if not len(before) or not len(after):
                continue
            ids = []
            for row in (before[0], after[0]):
                best = (0.0, None)
                for t in pred.tracks:
                    pb = np.asarray(t.boxes)
                    m = np.isclose(pb[:, 0], row[0])
                    if m.any():
                        iou = float(box_iou(row[None, 1:5], pb[m][:1, 1:5])[0, 0])
                        best = max(best, (iou, t.id), key=lambda x: x[0])
                ids.append(best[1] if best[0] >= 0.5 else None)
            if None in ids:
                continue
            crossed += 1
            assert ids[0] == ids[1], f"actor {g.id} changed ID at the span border {b}s: {ids}"
    assert crossed >= 2, "the clip should have actors crossing span borders"


def test_botsort_is_selectable(clip):
    from videoring import Pipeline
    from videoring.evaluate import evaluate

    pipe = Pipeline.from_config("default", **{"track.tracker": "botsort"})
    pipe.tracker.reset()
    assert type(pipe.tracker.tracker).__name__ == "BOTSORT"
    res = pipe(clip)
    m = evaluate([(res, Results.from_json(clip.with_suffix(".json")))])
    assert m["IDF1"] >= 0.6 and m["MOTA"] >= 0.6, m  # BoT-SORT without ReID; ByteTrack's bars above


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_after_kill_gives_the_same_results(clip, tmp_path, nproc):
    """kill -9 mid-run (every process of the job), then --resume: results.json identical to an
    uninterrupted run with the same number of ranks."""
    import os
    import random
    import signal
    import time

    args = ["output.annotate=false", "output.timeline=false", "sampling.chunk_size=8", "--nproc", str(nproc)]
    cli = [sys.executable, "-m", "videoring.cli", "analyze", str(clip)]
    full = subprocess.run([*cli, "-o", str(tmp_path / "full"), *args], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    states = [out / clip.stem / ".state" / f"state-rank{r}" for r in range(nproc)]
    # its own session, so that the kill reaches torchrun and every rank at once, as a node failure would
    p = subprocess.Popen([*cli, "-o", str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    # a random point: after 2 to 14 finished chunks of each rank (of ~38 / ~19), printed to reproduce
    kill_after = random.Random().randint(2, 14 // nproc)
    print(f"killing after {kill_after} chunks per rank")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        if min(len(list(d.glob("part-*.pkl"))) for d in states) >= kill_after:
            break
        time.sleep(0.02)
    assert p.poll() is None, f"the run finished before it could be killed (after {kill_after} chunks)"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / clip.stem / "results.json").exists()
    r = subprocess.run([*cli, "-o", str(out), "--resume", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "full" / clip.stem / "results.json").read_text())
    b = json.loads((out / clip.stem / "results.json").read_text())
    a["video"]["path"] = b["video"]["path"]
    assert a == b
    assert not (out / clip.stem / ".state").exists()  # cleared once complete
