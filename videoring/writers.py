"""Everything `videoring analyze` writes for one video, each file atomically (temp + rename).

    results.json                      the results schema (videoring/results.schema.json)
    tracks.csv segments.csv track_actions.csv track_scores.csv
    mot.txt                           MOTChallenge: frame, id, left, top, width, height, conf, -1, -1, -1
    activitynet.json                  ActivityNet results: {"version", "results": {video: [...]}, "external_data"}
    annotated.mp4                     tracking-rate frames with boxes, IDs and current actions (H.264)
    timeline.png                      a row per track and one for the clip, segments coloured by action
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from .io import atomic_path, atomic_write_chunks, atomic_write_text
from .results import Results
from .sampling import Sampling, SamplingPlan, select_indices
from .videoinfo import VideoInfo

__all__ = ["write_outputs", "write_mot", "write_activitynet", "write_annotated", "write_timeline", "label_colors"]


def label_colors(labels: list[str]) -> dict[str, tuple[int, int, int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lab: tuple(int(255 * c) for c in cmap(i % 10)[:3]) for i, lab in enumerate(labels)}


def write_mot(res: Results, info: VideoInfo, path: Path) -> Path:
    """1-based frame numbers of the decoded video (by exact timestamps), rows by frame then id."""
    ts = info.timestamps
    # one array, not a string per box: the hour's ~160k boxes as Python lines held ~30 MB at once
    rows = np.concatenate([np.column_stack([np.full(len(t.boxes), t.id), np.asarray(t.boxes, float).reshape(-1, 6)])
                           for t in res.tracks] or [np.zeros((0, 7))])
    frames = np.clip(np.searchsorted(ts, rows[:, 1] + 1e-6, side="right") - 1, 0, max(len(ts) - 1, 0)) + 1
    order = np.lexsort((rows[:, 0], frames))

    def lines():
        for s in range(0, len(order), 4096):
            at = order[s : s + 4096]
            yield "".join(f"{f},{int(i)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{c:.4f},-1,-1,-1\n"
                          for f, (i, _, x1, y1, x2, y2, c) in zip(frames[at].tolist(), rows[at].tolist()))

    return atomic_write_chunks(path, lines())


def write_activitynet(res: Results, path: Path, video_id: str) -> Path:
    doc = {
        "version": "VERSION 1.3",
        "results": {video_id: [{"label": s.label, "score": s.score, "segment": [s.start_s, s.end_s]} for s in res.segments]},
        "external_data": {"used": False, "details": "videoring"},
    }
    return atomic_write_text(path, json.dumps(doc))


MAX_TIMELINE_ROWS = 120


def write_timeline(res: Results, path: Path, labels: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {k: tuple(c / 255 for c in v) for k, v in label_colors(labels).items()}
    span = {t.id: t.boxes[-1][0] - t.boxes[0][0] for t in res.tracks if t.boxes}
    for a in res.track_actions:
        span.setdefault(a.track_id, 0.0)
    # one row per track up to MAX_TIMELINE_ROWS (the longest): an hour can hold ~800 track
    # fragments, a 20,000-pixel-tall plot nobody reads; every track is in tracks.csv
    ids = sorted(sorted(span, key=lambda i: -span[i])[:MAX_TIMELINE_ROWS])
    rows = {tid: i + 1 for i, tid in enumerate(ids)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.25 * (len(ids) + 1)), dpi=100)
    # all bars in one PolyCollection: a broken_barh per bar rescales the axes each time, and one
    # Rectangle artist per bar draws one by one (29 s and 5.9 s for an hour's 8,000 bars)
    grey = (0.5, 0.5, 0.5)
    bars = [(0, s.start_s, s.end_s, colors.get(s.label, grey), 0.8) for s in res.segments]
    bars += [(rows[a.track_id], a.start_s, a.end_s, colors.get(a.label, grey), 0.8) for a in res.track_actions if a.track_id in rows]
    with_action = {a.track_id for a in res.track_actions}
    # where a track has no action decoded, show its extent in grey
    bars += [(rows[t.id], t.boxes[0][0], t.boxes[-1][0], (0.7, 0.7, 0.7), 0.4) for t in res.tracks
             if t.id in rows and t.id not in with_action]
    if bars:
        from matplotlib.collections import PolyCollection

        verts = [[(a, y - h / 2), (b, y - h / 2), (b, y + h / 2), (a, y + h / 2)] for y, a, b, _, h in bars]
        ax.add_collection(PolyCollection(verts, facecolors=[c for *_, c, _ in bars], linewidths=0))
    ax.set_yticks([0] + [rows[i] for i in ids], ["clip"] + [f"#{i}" for i in ids], fontsize=7)
    ax.set_ylim(len(ids) + 0.6, -0.6)
    ax.set_xlim(0, max(res.video.duration_s, 1e-3))
    ax.set_xlabel("time (s)" + (f"; the {len(ids)} longest of {len(span)} tracks" if len(ids) < len(span) else ""))
    ax.legend(handles=[Patch(color=colors[k], label=k) for k in labels], ncol=len(labels), fontsize=7,
              loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def write_annotated(res: Results, info: VideoInfo, video: str, path: Path, fps: float, labels: list[str], chunk_size: int = 32) -> Path:
    """Re-reads the tracking-rate frames (a second, sparse pass) and draws tracks + current actions."""
    import av
    import cv2

    from .source import VideoSource

    colors = label_colors(labels)
    boxes: dict[float, list] = {}
    for t in res.tracks:
        for b in t.boxes:
            boxes.setdefault(round(b[0], 6), []).append((t.id, b[1:5]))
    acts: dict[int, list] = {}
    for a in res.track_actions:
        acts.setdefault(a.track_id, []).append(a)
    idx = select_indices(info.timestamps, Sampling(fps=fps))
    rate = Fraction(min(fps, info.fps or fps)).limit_denominator(1001)
    W, H = info.width - info.width % 2, info.height - info.height % 2
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            s.options = {"crf": "26", "preset": "veryfast"}
            s.time_base = Fraction(1) / rate
            n = 0
            plan = SamplingPlan(idx, {"a": np.ones(len(idx), bool)})
            for chunk in VideoSource(video, info=info).read_plan(plan, chunk_size=chunk_size):
                for img, t in zip(chunk.images, chunk.timestamps):
                    img = np.ascontiguousarray(img[:H, :W])
                    for tid, (x1, y1, x2, y2) in boxes.get(round(float(t), 6), []):
                        cur = next((a.label for a in acts.get(tid, []) if a.start_s <= t < a.end_s), "")
                        col = colors.get(cur, (255, 255, 255))
                        cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), col, 1)
                        cv2.putText(img, f"{tid} {cur}", (int(x1), max(int(y1) - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, col, 1, cv2.LINE_AA)
                    cv2.putText(img, f"{t:7.1f}s", (4, H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
                    vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                    vf.pts = n
                    n += 1
                    for p in s.encode(vf):
                        c.mux(p)
            for p in s.encode():
                c.mux(p)
    return Path(path)


def write_outputs(res: Results, info: VideoInfo, video: str, outdir: Path, *, track_fps: float, labels: list[str],
                  csv: bool = True, annotate: bool = True, timeline: bool = True) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = [res.to_json(outdir / "results.json")]
    if csv:
        written += res.to_csv(outdir)
    written.append(write_mot(res, info, outdir / "mot.txt"))
    written.append(write_activitynet(res, outdir / "activitynet.json", Path(video).stem))
    if timeline:
        written.append(write_timeline(res, outdir / "timeline.png", labels))
    if annotate:
        written.append(write_annotated(res, info, video, outdir / "annotated.mp4", track_fps, labels))
    return written
