"""The results schema: what videoring outputs and what the synthetic ground truth holds.

One versioned JSON document per video::

    {
      "schema_version": "1.2",
      "video": {"path", "duration_s", "fps", "frames", "width", "height"},
      "tracks": [{"id", "label", "boxes": [[t, x1, y1, x2, y2, conf], ...], "appearance"?,
                  "scores"?: [[t, p_1, ..., p_L], ...]}],
      "segments": [{"label", "start_s", "end_s", "score"}],
      "track_actions": [{"track_id", "label", "start_s", "end_s", "score"}],
      "clip_actions": [{"label", "score"}],
      "action_labels"?: [label_1, ..., label_L]
    }

``clip_actions`` (added in 1.1; optional when reading) scores each label for the
whole clip, best first; the ground truth lists the labels that occur (score 1).
A track's ``scores`` (added in 1.2; optional) are its actor's probability of every
label at each action step, in ``action_labels`` order: the numbers its
``track_actions`` were decoded from (their arg-max), and what AVA-style frame mAP
ranks, every label of every box, as AVA's own evaluation does.

Times are seconds from the first frame; boxes are pixels in the displayed
(rotated) frame. ``appearance`` (ground truth only) names the synthetic
character, so "return" labels can be checked.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .io import atomic_write_chunks

__all__ = ["SCHEMA_VERSION", "VideoMeta", "Track", "Segment", "TrackAction", "ClipAction", "Results", "json_schema"]

SCHEMA_VERSION = "1.2"


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) every results.json validates against."""
    return json.loads((Path(__file__).parent / "results.schema.json").read_text())


@dataclass
class VideoMeta:
    path: str
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int


@dataclass
class Track:
    id: int
    label: str
    boxes: list[list[float]]
    """[[t, x1, y1, x2, y2, conf], ...] in time order."""
    appearance: int | None = None
    scores: list[list[float]] | None = None
    """[[t, p_1, ..., p_L], ...] in time order: each label's probability at each action step
    (labels in ``Results.action_labels`` order)."""


@dataclass
class Segment:
    label: str
    start_s: float
    end_s: float
    score: float = 1.0


@dataclass
class TrackAction:
    track_id: int
    label: str
    start_s: float
    end_s: float
    score: float = 1.0


@dataclass
class ClipAction:
    label: str
    score: float = 1.0


@dataclass
class Results:
    video: VideoMeta
    tracks: list[Track] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    track_actions: list[TrackAction] = field(default_factory=list)
    clip_actions: list[ClipAction] = field(default_factory=list)
    action_labels: list[str] = field(default_factory=list)
    """The order of the columns of every track's ``scores``."""
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict:
        # by hand, not dataclasses.asdict: that deep-copies every box (seconds for an hour's tracks)
        def track(t: Track) -> dict:
            d = {"id": t.id, "label": t.label, "boxes": t.boxes}
            if t.appearance is not None:
                d["appearance"] = t.appearance
            if t.scores is not None:
                d["scores"] = t.scores
            return d

        out = {"schema_version": self.schema_version, "video": asdict(self.video),
               "tracks": [track(t) for t in self.tracks],
               "segments": [asdict(s) for s in self.segments],
               "track_actions": [asdict(a) for a in self.track_actions],
               "clip_actions": [asdict(c) for c in self.clip_actions]}
        if self.action_labels:
            out["action_labels"] = self.action_labels
        return out

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): never a half-written file. The text is
        ``json.dumps(self.to_dict(), separators=(",", ":"))``, written an item of each list at a
        time: the hour's as one string (and the encoder's pieces of it) raised peak memory."""
        return atomic_write_chunks(path, _json_chunks(self.to_dict()))

    def to_csv(self, directory: str | os.PathLike) -> list[Path]:
        """tracks.csv (one row per box), segments.csv, track_actions.csv, and track_scores.csv (one
        row per track and action step, a column per label) when tracks carry scores, else none (an
        earlier one is removed); each written atomically."""
        import csv
        import io

        def table(header: list[str], rows) -> Iterator[str]:  # a block of rows at a time
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                if buf.tell() > 1 << 16:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
            yield buf.getvalue()

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tracks = table(["track_id", "label", "t", "x1", "y1", "x2", "y2", "conf"],
                       ([t.id, t.label, *b] for t in self.tracks for b in t.boxes))
        segs = table(["label", "start_s", "end_s", "score"], ([s.label, s.start_s, s.end_s, s.score] for s in self.segments))
        acts = table(["track_id", "label", "start_s", "end_s", "score"],
                     ([a.track_id, a.label, a.start_s, a.end_s, a.score] for a in self.track_actions))
        files = [("tracks.csv", tracks), ("segments.csv", segs), ("track_actions.csv", acts)]
        if any(t.scores for t in self.tracks):
            files.append(("track_scores.csv", table(["track_id", "t", *self.action_labels],
                                                    ([t.id, *row] for t in self.tracks for row in t.scores or ()))))
        else:
            # a rerun into the same directory must not leave an earlier run's scores beside these tracks
            (d / "track_scores.csv").unlink(missing_ok=True)
        return [atomic_write_chunks(d / name, chunks) for name, chunks in files]

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        return cls(
            video=VideoMeta(**d["video"]),
            tracks=[Track(**t) for t in d.get("tracks", [])],
            segments=[Segment(**s) for s in d.get("segments", [])],
            track_actions=[TrackAction(**a) for a in d.get("track_actions", [])],
            clip_actions=[ClipAction(**c) for c in d.get("clip_actions", [])],
            action_labels=list(d.get("action_labels", [])),
            schema_version=d.get("schema_version", SCHEMA_VERSION),
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Results":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        v = self.video
        labels: dict[str, int] = {}
        for a in self.track_actions:
            labels[a.label] = labels.get(a.label, 0) + 1
        acts = ", ".join(f"{k}: {n}" for k, n in sorted(labels.items())) or "none"
        return (
            f"{v.path}: {v.duration_s:.1f}s {v.width}x{v.height} @ {v.fps:.2f} fps, "
            f"{len(self.tracks)} tracks, {len(self.segments)} segments, actions ({acts})"
        )


def _json_chunks(doc: dict) -> Iterator[str]:
    """``json.dumps(doc, separators=(",", ":"))`` in pieces: each top-level list an item at a time."""
    dumps = functools.partial(json.dumps, separators=(",", ":"))
    if not doc:
        yield "{}"
        return
    for i, (k, v) in enumerate(doc.items()):
        yield ("{" if i == 0 else ",") + dumps(k) + ":"
        if isinstance(v, list):
            yield "["
            for j, x in enumerate(v):
                yield ("," if j else "") + dumps(x)
            yield "]"
        else:
            yield dumps(v)
    yield "}"
