"""Train the shipped action model on synthetic clips, and report held-out metrics.

    python pipelines/train_actions.py [--out sample_data/actions_tiny.safetensors] [--resume] [key=value ...]

1. Synthesizes the training set into --data: --batches sets (default 3) of
   --short 2-5 minute clips at varied sizes and frame rates, with and without
   pan, plus --long 20-25 minute clips that hold returns 10+ minutes after the
   first visit; set b has seeds 2000 + 100 b + i.
2. Trains with configs/train_synth.yaml (frozen ViT-Tiny from the config's
   seed; actor tokens from the shipped detector's own tracks, labelled by IoU
   with the ground truth, as inference sees them; see videoring.train).
3. Copies the final checkpoint to --out and writes OUT.json with the command,
   the training time and the size.
Held-out evaluation is pipelines/eval_synth.py (seeds never used here).

Preparing the features is most of the time. Beside the training command, each
pinned to its own core,

    taskset -c 0 python pipelines/train_actions.py [key=value ...] &
    taskset -c 1 python pipelines/train_actions.py --prepare-from-end [same key=value ...]

the second prepares from the last clip backwards until the two meet (the same
cached items): the 156 clips in 79 min on a 2-core CPU without AMX. Once the
first logs "training", stop it and run its command again unpinned: it loads the
full cache and trains on both cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.synth import synthesize  # noqa: E402
from videoring.train import TrainJob, load_train_config, train  # noqa: E402

SIZES = ((320, 240), (480, 270), (256, 192), (400, 300), (640, 360))
FPS = (10.0, 12.0, 15.0, 25.0, 8.0)


def make_clips(root: Path, n_short: int, n_long: int, batches: int = 1) -> list[str]:
    """``batches`` sets of n_short + n_long clips; set b has seeds 2000 + 100 b + i."""
    out = []
    for b in range(batches):
        out += _batch(root, n_short, n_long, 2000 + 100 * b)
    return out


def _batch(root: Path, n_short: int, n_long: int, base: int) -> list[str]:
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(base)
    out = []
    for i in range(n_short + n_long):
        seed = base + i
        long = i >= n_short
        dur = float(rng.uniform(1200, 1500)) if long else float(rng.uniform(120, 300))
        size = (320, 240) if long else SIZES[i % len(SIZES)]
        fps = 10.0 if long else FPS[(i // len(SIZES)) % len(FPS)]
        path = root / f"train_{seed}.mp4"
        if not path.exists() or not path.with_suffix(".json").exists():
            t0 = time.perf_counter()
            synthesize(path, seed=seed, duration_s=round(dur), fps=fps, size=size, pan=bool(i % 3 == 1))
            print(f"synth {path.name} {dur:.0f}s {size[0]}x{size[1]}@{fps:g} in {time.perf_counter() - t0:.0f} s", flush=True)
        out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sample_data/actions_tiny.safetensors")
    ap.add_argument("--data", default=".cache/videoring/synth_train")
    ap.add_argument("--config", default="configs/train_synth.yaml")
    ap.add_argument("--short", type=int, default=48)
    ap.add_argument("--long", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3, help="sets of --short + --long clips (seeds 2000+, 2100+, ...)")
    ap.add_argument("--resume", action="store_true", help="continue from the last epoch's checkpoint in train.out")
    ap.add_argument("--prepare-from-end", action="store_true",
                    help="only fill the feature cache, from the last clip backwards, and exit: run it beside the "
                         "training command (which prepares forwards) to split the preparation over 2 processes")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (train.epochs=40 ...)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    videos = make_clips(Path(args.data), args.short, args.long, args.batches)
    t_data = time.perf_counter() - t0
    cfg = load_train_config(args.config, [f"train.videos={json.dumps(videos)}", *args.overrides])
    t1 = time.perf_counter()
    if args.prepare_from_end:
        n = TrainJob(cfg).prepare_from_end(log=lambda m: print(m, flush=True))
        print(f"prepared {n} clips from the end in {time.perf_counter() - t1:.0f} s")
        return
    final = train(cfg, resume=args.resume, log=lambda m: print(m, flush=True)).path
    t_train = time.perf_counter() - t1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(final, out)
    report = {"videos": len(videos), "synth_s": round(t_data), "prepare_and_train_s": round(t_train),
              "size_mb": round(out.stat().st_size / 2**20, 2), "command": " ".join(["python", *sys.argv]),
              "resumed": args.resume}  # resumed: the times are this run's only
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
