"""Whole-pipeline benchmark: an hour of video end to end, per stage, against the real alternatives.

    python pipelines/bench_pipeline.py [--videos hour,720p,10min] [--rows ...] [--quick] [--write-docs]

Videos (made once in .cache/videoring/bench): a 60-minute synthetic clip at
320x240 10 fps, a 10-minute one at 1280x720 30 fps, and a 10-minute one in the
hour's format, to see whether memory stays flat in length (--quick: 3, 1 and 1
minutes). Each row runs in its own process (peak RSS is per row):

- ``videoring``: the default CPU config end to end (tracking 10 fps, ViT-Tiny 1 fps,
  temporal model, heads) plus the writers without annotated.mp4; per-stage
  seconds from the pipeline's own clock (decode = time waiting for frames);
  ``videoring5``: the same with tracking at 5 fps; ``torch``: with the PyTorch detector;
- ``w2``: ``videoring analyze --nproc 2`` (two ranks on the same cores, via the CLI);
- ``decode alone``: the same single pass over the union of tracker + encoder frames;
- ``track alone`` / ``encode alone``: that pass plus only the tracker / the encoder;
- ``ffmpeg -f null``: the decode floor (FFmpeg CLI decoding every frame, all threads);
- ``yolo track``: the ultralytics CLI alone, same detector, imgsz, tracker and rate
  (``vid_stride``);
- ``timm fp32``: timm eager fp32 on the encoder's frames (the encoder's alternative).

All rows on all three videos take ~50 minutes on 2 cores (the ``yolo track`` rows on the hour
alone ~17); --quick a few minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (duration s, fps, size, seed); "10min" is the hour's format at a sixth of its length (RSS flat in length?)
VIDEOS = {"hour": (3600.0, 10.0, (320, 240), 42), "720p": (600.0, 30.0, (1280, 720), 43), "10min": (600.0, 10.0, (320, 240), 44)}
QUICK = {"hour": (180.0, 10.0, (320, 240), 42), "720p": (60.0, 30.0, (1280, 720), 43), "10min": (60.0, 10.0, (320, 240), 44)}


def ensure(name: str, quick: bool) -> Path:
    from videoring.synth import synthesize

    dur, fps, size, seed = (QUICK if quick else VIDEOS)[name]
    path = ROOT / ".cache" / "videoring" / "bench" / f"{name}{'_quick' if quick else ''}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        synthesize(path, seed=seed, duration_s=dur, fps=fps, size=size)
        print(f"made {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _hwm_mib(pid: int | str = "self") -> float:
    """Peak RSS (VmHWM) of one process. Not getrusage's ru_maxrss: that survives exec, so a
    child started from a big parent would report the parent's RSS as its own peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mib() -> float:
    return _hwm_mib()


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun's ranks)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


# ------------------------------------------------------------------ rows (each in a child process)
def row_videoring(video: str, overrides: list[str]) -> dict:
    from videoring.pipeline import Pipeline
    from videoring.writers import write_outputs

    t0 = time.perf_counter()
    pipe = Pipeline.from_config("default", overrides=overrides)
    load = time.perf_counter() - t0
    rss_load = _rss_mib()
    t1 = time.perf_counter()
    res = pipe(video)
    run = time.perf_counter() - t1
    rss_run = _rss_mib()
    t2 = time.perf_counter()
    out = ROOT / ".cache" / "videoring" / "bench" / "out"
    write_outputs(res, pipe.last_info, video, out / Path(video).stem, track_fps=pipe.cfg.track.fps,
                  labels=pipe.cfg.actions.labels, annotate=False)
    writers = time.perf_counter() - t2
    st = {k: round(v, 2) for k, v in pipe.timings.items()}
    return {"wall_s": round(load + run + writers, 2), "load_s": round(load, 2), "writers_s": round(writers, 2),
            "stages": st, "tracks": len(res.tracks), "rss_mib": round(_rss_mib()),
            "rss_peak_after_mib": {"load": round(rss_load), "analysis": round(rss_run), "writers": round(_rss_mib())}}


def _plan(video: str, which: str, overrides: list[str] | None = None):
    import numpy as np

    from videoring.config import PipelineConfig, load_config
    from videoring.pipeline import CONFIG_DIR
    from videoring.sampling import Sampling, SamplingPlan, select_indices
    from videoring.videoinfo import probe

    cfg = load_config(CONFIG_DIR / "default.yaml", overrides, cls=PipelineConfig)
    info = probe(video)
    enc = select_indices(info.timestamps, Sampling(fps=cfg.sampling.fps))
    trk = select_indices(info.timestamps, Sampling(fps=cfg.track.fps))
    idx = {"union": np.union1d(enc, trk), "track": trk, "encode": enc}[which]
    return cfg, info, SamplingPlan(idx, {"track": np.isin(idx, trk), "encode": np.isin(idx, enc)})


def row_decode(video: str, which: str = "union", overrides: list[str] | None = None) -> dict:
    from videoring.source import VideoSource

    cfg, info, plan = _plan(video, which, overrides)
    t0 = time.perf_counter()
    n = sum(len(c.indices) for c in VideoSource(video, info=info).read_plan(plan, chunk_size=cfg.sampling.chunk_size))
    return {"wall_s": round(time.perf_counter() - t0, 2), "frames": n, "rss_mib": round(_rss_mib())}


def row_track(video: str, overrides: list[str]) -> dict:
    """Decode the tracker's frames (background thread, as in the pipeline) + detection and tracking."""
    from videoring.pipeline import StageClock, prefetch
    from videoring.source import VideoSource
    from videoring.tracking import Tracker

    cfg, info, plan = _plan(video, "track", overrides)
    tr = Tracker(cfg.track)
    tr.reset((info.width, info.height))
    clock = StageClock()
    t0 = time.perf_counter()
    for c in prefetch(VideoSource(video, info=info).read_plan(plan, chunk_size=cfg.sampling.chunk_size), clock):
        with clock("track"):
            tr.update(c.images, c.timestamps)
    return {"wall_s": round(time.perf_counter() - t0, 2), "stages": {k: round(v, 2) for k, v in clock.items()},
            "rss_mib": round(_rss_mib())}


def row_encode(video: str, fp32_timm: bool = False) -> dict:
    import torch

    from videoring.encoder import FrameEncoder
    from videoring.pipeline import StageClock, prefetch
    from videoring.source import VideoSource

    cfg, info, plan = _plan(video, "encode")
    enc_cfg = cfg.encoder
    if fp32_timm:
        enc_cfg.precision = "fp32"
    enc = FrameEncoder(enc_cfg)
    clock = StageClock()
    t0 = time.perf_counter()
    for c in prefetch(VideoSource(video, info=info).read_plan(plan, chunk_size=cfg.sampling.chunk_size), clock):
        with clock("encode"):
            if fp32_timm:  # plain timm eager fp32 on the same preprocessed frames
                with torch.inference_mode():
                    enc.model.forward_features(enc.preprocess(c.images))
            else:
                enc(c.images)
    return {"wall_s": round(time.perf_counter() - t0, 2), "stages": {k: round(v, 2) for k, v in clock.items()},
            "rss_mib": round(_rss_mib())}


ROWS = {"videoring": row_videoring, "decode": row_decode, "track": row_track, "encode": row_encode}


def child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def external(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of another program: the largest VmHWM of it or any descendant
    (each rank of a torchrun job), read every 0.1 s while it runs."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, cwd=ROOT, env=env)
        peak = 0.0
        while p.poll() is None:
            peak = max([peak, *(_hwm_mib(q) for q in _tree(p.pid))])
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    if p.returncode:
        return {"error": (err.strip().splitlines() or ["?"])[-1][:200], "wall_s": round(wall, 2)}
    return {"wall_s": round(wall, 2), "rss_mib": round(peak)}


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def yolo_track(video: Path, fps: float, track_fps: float) -> dict:
    from videoring.pipeline import CONFIG_DIR
    from videoring.config import PipelineConfig, load_config
    from videoring.yolo import _offline_env

    cfg = load_config(CONFIG_DIR / "default.yaml", cls=PipelineConfig)
    _offline_env(False)
    stride = max(1, round(fps / track_fps))
    yolo = Path(sys.executable).with_name("yolo")
    out = ROOT / ".cache" / "videoring" / "bench" / "yolo_runs"
    return external([str(yolo), "track", f"model={ROOT / cfg.track.detector}", f"source={video}", f"imgsz={cfg.track.imgsz}",
                     f"vid_stride={stride}", "tracker=bytetrack.yaml", "save=False", "verbose=False", "device=cpu",
                     f"project={out}", "exist_ok=True", f"conf={cfg.track.conf}"], env=dict(os.environ))


ROW_NAMES = ("videoring", "videoring5", "torch", "w2", "decode", "track", "track5", "encode", "timm", "ffmpeg", "yolo", "yolo5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="hour,10min,720p")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", default=",".join(r for r in ROW_NAMES if r != "torch"))
    ap.add_argument("--out", default="out/bench_pipeline.json")
    ap.add_argument("--write-docs", action="store_true", help="write the tables into docs/benchmarks_pipeline.md (between its markers)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for the videoring rows (track.export=openvino ...)")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        fn = ROWS[spec.pop("row")]
        print(json.dumps(fn(**spec)))
        return

    from videoring.videoinfo import probe

    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROW_NAMES))
    if unknown:
        sys.exit(f"error: --rows: unknown {', '.join(unknown)}; use some of {','.join(ROW_NAMES)}")
    bad = sorted(set(args.videos.split(",")) - set(VIDEOS))
    if bad:
        sys.exit(f"error: --videos: unknown {', '.join(bad)}; use some of {','.join(VIDEOS)}")
    if "ffmpeg" in rows and importlib.util.find_spec("imageio_ffmpeg") is None:
        # said before the hour's rows run, not after them
        sys.exit("error: the ffmpeg row needs imageio-ffmpeg: pip install -e '.[bench]' (or make bench), or leave ffmpeg out of --rows")
    report: dict = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(name: str, r: dict) -> None:
        """The report so far, after every row: a row that fails or a run cut short keeps the rest."""
        report[name] = r
        out.write_text(json.dumps(report, indent=1) + "\n")

    for name in args.videos.split(","):
        video = ensure(name, args.quick)
        info = probe(str(video))
        r: dict = {"video_s": info.duration_s, "size": f"{info.width}x{info.height}", "fps": info.fps}
        over = args.overrides
        plan = {  # --rows name: (report row, how it runs), in this order
            "videoring": ("videoring", lambda: child({"row": "videoring", "video": str(video), "overrides": over})),
            "videoring5": ("videoring, track.fps=5", lambda: child({"row": "videoring", "video": str(video), "overrides": [*over, "track.fps=5"]})),
            "torch": ("videoring, PyTorch detector", lambda: child({"row": "videoring", "video": str(video), "overrides": [*over, "track.export=none"]})),
            # two ranks on the same 2 cores, through the CLI as a user runs it (torchrun)
            "w2": ("videoring --nproc 2 (CLI)", lambda: external(
                [sys.executable, "-m", "videoring.cli", "analyze", str(video), "--nproc", "2", "-o",
                 str(ROOT / ".cache" / "videoring" / "bench" / "out_w2"), "output.annotate=false", *over])),
            "decode": ("decode alone", lambda: child({"row": "decode", "video": str(video), "overrides": over})),
            "track": ("track alone", lambda: child({"row": "track", "video": str(video), "overrides": over})),
            "track5": ("track alone, 5 fps", lambda: child({"row": "track", "video": str(video), "overrides": [*over, "track.fps=5"]})),
            "encode": ("encode alone", lambda: child({"row": "encode", "video": str(video)})),
            "timm": ("timm fp32 alone", lambda: child({"row": "encode", "video": str(video), "fp32_timm": True})),
            "ffmpeg": ("ffmpeg -f null", lambda: external([_ffmpeg(), "-v", "error", "-i", str(video), "-f", "null", "-"])),
            "yolo": ("yolo track (10 fps)", lambda: yolo_track(video, info.fps, 10.0)),
            "yolo5": ("yolo track (5 fps)", lambda: yolo_track(video, info.fps, 5.0)),
        }
        save(name, r)
        for key, (row, run) in plan.items():
            if key in rows:
                r[row] = run()
                save(name, r)
        print(json.dumps({name: r}), flush=True)
    if args.write_docs:
        write_docs(ROOT / "docs" / "benchmarks_pipeline.md", markdown(report, " ".join(sys.argv[1:])))


BEGIN, END = "<!-- tables: written by pipelines/bench_pipeline.py --write-docs -->", "<!-- /tables -->"


def write_docs(path: Path, tables: str) -> None:
    """Replace the tables between the markers; the hand-written reading around them stays."""
    text = path.read_text() if path.exists() else f"# Whole-pipeline benchmark\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{tables}{END}{rest.split(END, 1)[1]}")


def markdown(report: dict, cmd: str) -> str:
    lines = [f"`python pipelines/bench_pipeline.py {cmd}` (2 cores, 24 GiB, no GPU).", ""]
    for name, r in report.items():
        lines += [f"### {name}: {r['video_s'] / 60:.0f} min, {r['size']} at {r['fps']:g} fps", "",
                  "| row | wall s | realtime x | peak RSS MiB | stages (s) |", "|---|---|---|---|---|"]
        for row, v in r.items():
            if not isinstance(v, dict):
                continue
            if "error" in v:
                lines.append(f"| {row} | error: {v['error']} | | | |")
                continue
            st = ", ".join(f"{k} {x:.1f}" for k, x in v.get("stages", {}).items())
            if "writers_s" in v:
                st += f", writers {v['writers_s']:.1f}, load {v['load_s']:.1f}"
            lines.append(f"| {row} | {v['wall_s']:.1f} | {r['video_s'] / v['wall_s']:.1f} | {v.get('rss_mib', '')} | {st} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
