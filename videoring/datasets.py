"""User annotations in the standard formats, validated, turned into the results schema.

- ActivityNet JSON (segments): ``{"database": {VIDEO: {"annotations": [{"segment": [s, e], "label": L}]}}}``
  (the results format ``{"results": {VIDEO: [{"segment", "label", "score"}]}}`` is read too);
- AVA CSV (per-actor boxes and actions): ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id``,
  box corners as fractions of the frame; ``action_id`` through a label map ``{id: name}``;
- Kinetics CSV (clip labels): a header with ``label`` and ``youtube_id`` (other columns ignored);
- MOTChallenge txt (tracks): ``frame, id, left, top, width, height, conf, x, y, z`` (1-based frames).

Every problem is a :class:`ConfigError` naming the file, the line (or JSON path)
and the field, and what was expected. :func:`to_results` joins what a video
has into one :class:`Results` (the ground truth ``videoring train`` and
``videoring eval`` read).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .results import ClipAction, Results, Segment, Track, TrackAction, VideoMeta

__all__ = ["load_activitynet", "load_ava", "load_kinetics", "load_mot", "to_results"]


def _num(value: str, where: str, field: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {field}: got {value!r}; expected a number") from None
    if not math.isfinite(v):
        raise ConfigError(f"{where}: {field}: got {value!r}; expected a finite number")
    return v


def _read(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: annotation file not found")
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (annotations are JSON, CSV or txt)") from None


def load_activitynet(path: str | Path) -> dict[str, list[Segment]]:
    text = _read(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or not ({"database", "results"} & set(doc)):
        raise ConfigError(f"{path}: expected an object with 'database' (annotations) or 'results' (predictions)")
    key = "database" if "database" in doc else "results"
    out: dict[str, list[Segment]] = {}
    for vid, entry in doc[key].items():
        anns = entry.get("annotations") if key == "database" and isinstance(entry, dict) else entry
        if not isinstance(anns, list):
            raise ConfigError(f"{path}: {key}.{vid}: expected a list of annotations")
        segs = []
        for i, a in enumerate(anns):
            where = f"{path}: {key}.{vid}[{i}]"
            seg = a.get("segment") if isinstance(a, dict) else None
            if not (isinstance(seg, list) and len(seg) == 2):
                raise ConfigError(f"{where}.segment: got {seg!r}; expected [start_s, end_s]")
            s, e = _num(seg[0], where, "segment[0]"), _num(seg[1], where, "segment[1]")
            if not (0 <= s < e):
                raise ConfigError(f"{where}.segment: got [{s}, {e}]; expected 0 <= start < end")
            label = a.get("label")
            if not isinstance(label, str) or not label:
                raise ConfigError(f"{where}.label: got {label!r}; expected a label name")
            score = _num(a.get("score", 1.0), where, "score")
            segs.append(Segment(label, s, e, score))
        out[str(vid)] = segs
    return out


def load_ava(path: str | Path, label_map: dict[int, str]) -> dict[str, list[tuple[float, int, tuple[float, float, float, float], str]]]:
    """Per video: (timestamp_s, person_id, (x1, y1, x2, y2) fractions, action name)."""
    out: dict[str, list] = {}
    for n, row in enumerate(csv.reader(_read(path).splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        where = f"{path}: line {n}"
        if len(row) < 7:
            raise ConfigError(f"{where}: got {len(row)} fields; expected video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]")
        vid = row[0].strip()
        t = _num(row[1], where, "timestamp")
        box = tuple(_num(row[2 + i], where, name) for i, name in enumerate(("x1", "y1", "x2", "y2")))
        if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ConfigError(f"{where}: box {box}: expected 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 (fractions of the frame)")
        aid = int(_num(row[6], where, "action_id"))
        if aid not in label_map:
            raise ConfigError(f"{where}: action_id {aid} is not in the label map (ids {sorted(label_map)[:10]}...)")
        pid = int(_num(row[7], where, "person_id")) if len(row) > 7 and row[7].strip() else -1
        out.setdefault(vid, []).append((t, pid, box, label_map[aid]))
    return out


def load_kinetics(path: str | Path) -> dict[str, str]:
    lines = _read(path).splitlines()
    reader = csv.DictReader(lines)
    if not reader.fieldnames or not {"label", "youtube_id"} <= set(reader.fieldnames):
        raise ConfigError(f"{path}: line 1: header {reader.fieldnames}: expected the columns label and youtube_id")
    out = {}
    for n, row in enumerate(reader, start=2):
        if not row.get("youtube_id") or not row.get("label"):
            raise ConfigError(f"{path}: line {n}: empty label or youtube_id")
        out[row["youtube_id"]] = row["label"]
    return out


def load_mot(path: str | Path) -> np.ndarray:
    """Rows (frame, id, x1, y1, x2, y2, conf) sorted by frame; frames 1-based as in the file."""
    rows = []
    for n, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",")
        where = f"{path}: line {n}"
        if len(parts) < 6:
            raise ConfigError(f"{where}: got {len(parts)} fields; expected frame, id, left, top, width, height[, conf, x, y, z]")
        frame, tid, left, top, w, h = (_num(parts[i], where, f) for i, f in enumerate(("frame", "id", "left", "top", "width", "height")))
        if frame < 1 or frame != int(frame):
            raise ConfigError(f"{where}: frame: got {parts[0]!r}; expected a 1-based frame number")
        if w <= 0 or h <= 0:
            raise ConfigError(f"{where}: width/height: got {w} x {h}; expected positive sizes")
        conf = _num(parts[6], where, "conf") if len(parts) > 6 else 1.0
        rows.append((frame, tid, left, top, left + w, top + h, conf))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return arr[np.argsort(arr[:, 0], kind="stable")]


def to_results(video: VideoMeta, *, segments: list[Segment] | None = None, mot: np.ndarray | None = None,
               timestamps: np.ndarray | None = None, ava: list | None = None, clip_label: str | None = None) -> Results:
    """One video's ground truth in the results schema.

    ``mot`` frames map to seconds through the video's ``timestamps`` (or frame / fps);
    AVA actions become per-track actions of the MOT track whose box overlaps most
    (IoU >= 0.5) at that time, one keyframe second long.
    """
    from .tracking import box_iou

    tracks: list[Track] = []
    if mot is not None and len(mot):
        f = mot[:, 0].astype(int) - 1
        if timestamps is not None:
            if f.max() >= len(timestamps):
                raise ConfigError(f"MOT frame {f.max() + 1} is past the video's {len(timestamps)} frames")
            t = np.asarray(timestamps)[f]
        else:
            t = f / video.fps
        for tid in np.unique(mot[:, 1]).astype(int):
            m = mot[:, 1] == tid
            tracks.append(Track(int(tid), "actor", [[float(a), *map(float, b), float(c)]
                                                    for a, b, c in zip(t[m], mot[m, 2:6], mot[m, 6])]))
    actions: list[TrackAction] = []
    for t_s, pid, box, label in ava or []:
        px = np.array([[box[0] * video.width, box[1] * video.height, box[2] * video.width, box[3] * video.height]])
        best, best_iou = pid, 0.0
        for tr in tracks:
            b = np.asarray(tr.boxes)
            i = int(np.argmin(np.abs(b[:, 0] - t_s)))
            iou = float(box_iou(px, b[i:i + 1, 1:5])[0, 0]) if abs(b[i, 0] - t_s) <= 0.5 else 0.0
            if iou > best_iou:
                best, best_iou = tr.id, iou
        actions.append(TrackAction(int(best if best_iou >= 0.5 else pid), label, max(0.0, float(t_s) - 0.5), float(t_s) + 0.5))
    clip = [ClipAction(clip_label)] if clip_label else [ClipAction(lab) for lab in sorted({a.label for a in actions})]
    return Results(video, tracks, list(segments or []), actions, clip)
