"""The ``videoring`` command line.

    videoring info VIDEO... [--json]          what each file holds
    videoring features VIDEO -o OUT.safetensors [--nproc N] [-c CONFIG] [key=value ...]
    videoring synth OUT.mp4 --seed N --duration S [--size WxH] [--fps F] [--lossless] [--pan]
    videoring analyze VIDEO... [-c CONFIG] [-o OUTDIR] [--nproc N] [key=value ...]
    videoring train -c CONFIG [--resume] [key=value ...]
    videoring eval PRED GT [--json]

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

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".h264", ".264", ".hevc", ".h265", ".m4v", ".mpg", ".mpeg", ".ts",
                  ".flv", ".wmv", ".y4m"}
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


def _torchrun(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` ranks (gloo on CPU, NCCL on GPU)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "videoring.cli", *argv]
    return subprocess.run(cmd).returncode


DIST_TIMEOUT_S = 120.0


def _init_distributed() -> tuple[int, int]:
    """Under torchrun: join the process group; threads split between the local ranks.

    Every collective and ring step times out after ``VIDEORING_DIST_TIMEOUT_S``
    seconds (default 120): a rank that dies or hangs makes the others stop
    with an error instead of waiting forever.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        raw = os.environ.get("VIDEORING_DIST_TIMEOUT_S", str(DIST_TIMEOUT_S))
        try:
            timeout = float(raw)
            assert timeout > 0
        except (ValueError, AssertionError):
            raise ConfigError(f"VIDEORING_DIST_TIMEOUT_S: got {raw!r}; use a positive number of seconds") from None
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # the cores this process may run on (taskset / a container's cpuset), shared by the local ranks
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    return (dist.get_rank() if world > 1 else 0), world


def _finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def _relaunch(args: argparse.Namespace) -> int | None:
    """With --nproc N > 1 outside torchrun: the same command, without --nproc, on N ranks."""
    if args.nproc < 1:
        raise ConfigError(f"--nproc: got {args.nproc}; use 1 or more ranks")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv, skip = [], False
        for a in args.argv:
            if skip:
                skip = False
            elif a == "--nproc":
                skip = True
            elif not a.startswith("--nproc="):
                argv.append(a)
        return _torchrun(args.nproc, argv)
    return None


def cmd_analyze(args: argparse.Namespace) -> int:
    rc = _relaunch(args)
    if rc is not None:
        return rc
    videos = expand_videos(args.videos)
    if not videos:
        raise ConfigError(f"analyze: no video files in {' '.join(args.videos)}")
    from .pipeline import Pipeline
    from .writers import write_outputs

    rank, world = _init_distributed()
    pipe = Pipeline.from_config(args.config or "default", overrides=args.overrides)
    pipe.progress = rank == 0
    if rank == 0 and pipe.model_meta == {}:
        print("note: no trained action model (actions.model is null): actions come from an untrained head", file=sys.stderr)
    failed = 0
    from .isolate import IsolatedWorker
    from .videoinfo import probe

    prober = IsolatedWorker()
    for video in videos:
        out = Path(args.output) / Path(video).stem
        try:
            # probe in a child first: a file that crashes or hangs the demuxer is one error, not the end of the batch
            info = prober.call(probe, video, timeout=PROBE_TIMEOUT_S, path=video)
            # checkpoints after every chunk, so a killed run can continue (--resume)
            res = pipe(video, state_dir=out / ".state", resume=args.resume, info=info)
            if rank == 0:
                cfg = pipe.cfg
                write_outputs(res, pipe.last_info, video, out, track_fps=cfg.track.fps, labels=cfg.actions.labels,
                              csv=cfg.output.csv, annotate=cfg.output.annotate, timeline=cfg.output.timeline)
                print(res.summary())
                print(f"wrote {out}/")
        except (VideoError, ConfigError) as e:
            failed += 1
            if rank == 0:
                _report(e, args)
            if world > 1:
                raise  # ranks cannot skip a video independently: stop all
    prober.close()
    _finish_distributed(world)
    return 2 if failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    rc = _relaunch(args)
    if rc is not None:
        return rc
    from .train import load_train_config, train

    cfg = load_train_config(args.config, args.overrides)
    rank, world = _init_distributed()
    done = train(cfg, resume=args.resume)
    if rank == 0:
        print(f"wrote {done.path}")
    _finish_distributed(world)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_pairs

    m = evaluate_pairs(args.pred, args.gt)
    if args.json:
        print(json.dumps(m, indent=1))
    else:
        w = max(map(len, m))
        for k, v in m.items():
            print(f"{k:>{w}}: {v:.4f}" if isinstance(v, float) else f"{k:>{w}}: {v}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    rc = _relaunch(args)
    if rc is not None:
        return rc
    from safetensors.torch import save_file

    from .config import load_config
    from .engine import FeatureEngine, gather_run
    from .io import atomic_path

    cfg = load_config(args.config, args.overrides)
    rank, world = _init_distributed()
    import numpy as np
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    engine = FeatureEngine(cfg)
    run = engine.run(args.video)
    gathered = gather_run(run)
    if rank == 0:
        feats, ts = gathered
        with atomic_path(args.output) as tmp:
            save_file({"features": feats.contiguous(), "timestamps": torch.as_tensor(np.asarray(ts, dtype=np.float64))}, str(tmp))
        print(f"wrote {args.output}: features {tuple(feats.shape)}, {len(ts)} time steps, {world} rank(s)")
    _finish_distributed(world)
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

    p = sub.add_parser("features", help="per-time-step embeddings of a video (encoder + time-sharded temporal model)")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="OUT.safetensors: features (T, C), timestamps (T,) float64")
    p.add_argument("-c", "--config", help="YAML config (configs/features_tiny.yaml)")
    p.add_argument("--nproc", type=int, default=1, help="ranks to split time across (starts torchrun)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. sampling.fps=0.5")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_features)

    p = sub.add_parser("analyze", help="tracks and actions of videos: results.json, CSVs, MOT, ActivityNet, annotated.mp4, timeline.png")
    p.add_argument("videos", nargs="+", help="files, directories or globs (and key=value config overrides)")
    p.add_argument("-c", "--config", help="YAML config or a name in configs/ (default: configs/default.yaml)")
    p.add_argument("-o", "--output", default="out", help="output directory; each video writes OUTDIR/<stem>/")
    p.add_argument("--nproc", type=int, default=1, help="ranks to split time across (starts torchrun)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last finished chunk")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_analyze, overrides=[])

    p = sub.add_parser("train", help="train the action model on videos with ground truth (cached frozen features)")
    p.add_argument("-c", "--config", required=True, help="YAML config with a train: section (configs/train_synth.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch's checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel ranks (starts torchrun; videos split across ranks)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=10")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="metrics of predictions against ground truth (files or directories in the results schema)")
    p.add_argument("pred", help="PRED.json or PRED_DIR")
    p.add_argument("gt", help="GT.json or GT_DIR")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_eval)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # key=value overrides may come after options (--nproc 2 a.b=c): collect the leftovers
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "analyze":
        # videos and key=value overrides share the positional list
        ov = [v for v in args.videos if "=" in v and not Path(v).exists()]
        args.videos = [v for v in args.videos if v not in ov]
        args.overrides = ov
    if extra:
        if getattr(args, "command", None) not in ("features", "analyze", "train") or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    args.argv = argv
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
