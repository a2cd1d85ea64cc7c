"""The ``videoring`` command line.

    videoring info VIDEO... [--json]          what each file holds
    videoring synth OUT.mp4 --seed N --duration S [--size WxH] [--fps F] [--lossless] [--pan]

Errors print one line per failed file on stderr (``--debug`` shows the
traceback) and make the exit code 2; the other files are still processed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import traceback
from pathlib import Path

from .errors import ConfigError, VideoError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".h264", ".264", ".hevc", ".h265", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
PROBE_TIMEOUT_S = 120.0


def expand_videos(items: list[str]) -> list[str]:
    """Files as given, directories (their video files, sorted) and globs."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file())
        elif any(ch in item for ch in "*?[") and not p.exists():
            out += sorted(glob.glob(item))
        else:
            out.append(item)
    return out


def _probe_dict(path: str) -> dict:
    from .videoinfo import probe

    return probe(path).to_dict()


def cmd_info(args: argparse.Namespace) -> int:
    from .isolate import IsolatedWorker

    paths = expand_videos(args.videos)
    rows, failed = [], 0
    with IsolatedWorker() as worker:
        for path in paths:
            try:
                rows.append(worker.call(_probe_dict, path, timeout=args.timeout, path=path))
            except VideoError as e:
                failed += 1
                rows.append({"path": path, "error": e.reason})
                _report(e, args)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            if "error" in r:
                continue
            print(
                f"{r['path']}: {r['codec']} {r['width']}x{r['height']} rot={r['rotation']} "
                f"{r['frames']} frames {r['duration_s']:.3f}s fps={r['fps']:.3f} (avg {r['avg_fps']:.3f}) "
                f"{r['pix_fmt']} audio={'yes' if r['has_audio'] else 'no'}"
                + (" TRUNCATED" if r["truncated"] else "")
            )
    return 2 if failed else 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size: got {text!r}; use WIDTHxHEIGHT, e.g. 320x240") from None


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synthesize

    gt = synthesize(
        args.out, seed=args.seed, duration_s=args.duration, fps=args.fps, size=args.size,
        pan=args.pan, lossless=args.lossless,
    )
    print(gt.summary())
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


def _report(e: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exception(e)
    print(f"error: {e}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="videoring", description="Long-video understanding: who does what, and when.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="probe video files (duration, fps, frames, size, rotation, codec)")
    p.add_argument("videos", nargs="+", help="files, directories or globs")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S, help="seconds per file before giving up")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("synth", help="write a synthetic clip with ground truth (OUT.mp4 + OUT.json)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds")
    p.add_argument("--size", type=_size, default=(320, 240), help="WIDTHxHEIGHT")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--pan", action="store_true", help="slow camera pan")
    p.add_argument("--lossless", action="store_true", help="lossless RGB H.264 (exact frames)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_synth)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (VideoError, ConfigError, OSError) as e:
        _report(e, args)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
