"""Decode benchmark: every backend and access pattern beside the ffmpeg CLI, in one run.

    python pipelines/bench_decode.py [--video PATH] [--out docs/benchmarks_decode.md]

Takes ~10 minutes on 2 cores (first run also generates the 10-minute 720p30
H.264 clip, ~3 minutes). Needs the `bench` extra (imageio-ffmpeg provides the
ffmpeg binary). Each row runs in a fresh process so its peak RSS is its own.

Access patterns:
- dense: every frame, RGB;
- sparse 1 fps: one frame per second (seeking pays off);
- two consumers: tracker 10 fps + encoder 1 fps in one pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROW = r"""
import json, resource, sys, time
from videoring import VideoSource, Sampling
path, backend, pattern = sys.argv[1:4]
pats = {"dense": {"frames": Sampling()}, "sparse_1fps": {"frames": Sampling(fps=1.0)},
        "track10_enc1": {"track": Sampling(fps=10.0), "encode": Sampling(fps=1.0)}}
t0 = time.perf_counter()
src = VideoSource(path, backend=backend)
n = sum(len(c) for c in src.read(pats[pattern], chunk_size=32))
dt = time.perf_counter() - t0
print(json.dumps({"frames": n, "seconds": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_row(video: Path, backend: str, pattern: str) -> dict:
    r = subprocess.run([sys.executable, "-c", ROW, str(video), backend, pattern], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1][:120]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_ffmpeg(video: Path, fps: float | None) -> dict:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [exe, "-v", "error", "-i", str(video)]
    if fps:
        cmd += ["-vf", f"fps={fps}"]
    # rgb24 output like the readers, discarded
    cmd += ["-pix_fmt", "rgb24", "-f", "null", "-"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", type=Path, default=ROOT / ".cache/bench/720p30_10min.mp4")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks_decode.md")
    args = ap.parse_args()
    if not args.video.exists():
        from videoring import synthesize

        print(f"generating {args.video} (10 min, 1280x720, 30 fps)...", flush=True)
        synthesize(args.video, seed=1, duration_s=600, fps=30, size=(1280, 720))
    from videoring import probe

    info = probe(args.video)
    rows = []
    for pattern, ff_fps in (("dense", None), ("sparse_1fps", 1.0), ("track10_enc1", 10.0)):
        ff = run_ffmpeg(args.video, ff_fps)
        rows.append((pattern, "ffmpeg CLI (-f null)", {"frames": None, **ff, "rss_mib": None}))
        print(rows[-1], flush=True)
        for backend in ("pyav", "decord", "opencv", "auto"):
            rows.append((pattern, backend, run_row(args.video, backend, pattern)))
            print(rows[-1], flush=True)
    lines = [
        f"Video: `{args.video.name}` ({info.codec}, {info.width}x{info.height}, {info.fps:g} fps, "
        f"{info.frames} frames, {info.duration_s:.0f} s). Machine: 2 cores, no GPU. "
        "Command: `python pipelines/bench_decode.py`.",
        "",
        "| access pattern | reader | frames | seconds | frames/s | x realtime | vs ffmpeg CLI | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ff_time = {}
    for pattern, name, r in rows:
        if "error" in r:
            lines.append(f"| {pattern} | {name} | error: {r['error']} | | | | | |")
            continue
        if name.startswith("ffmpeg"):
            ff_time[pattern] = r["seconds"]
        fr = r["frames"]
        rss = "" if r["rss_mib"] is None else f"{r['rss_mib']:.0f}"
        fps = f"{fr / r['seconds']:.0f}" if fr else ""
        lines.append(
            f"| {pattern} | {name} | {fr if fr is not None else ''} | {r['seconds']:.1f} | {fps} | "
            f"{info.duration_s / r['seconds']:.0f} | {r['seconds'] / ff_time[pattern]:.2f}x | "
            f"{rss} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Decode benchmark\n\n" + table + "\n")


if __name__ == "__main__":
    main()
