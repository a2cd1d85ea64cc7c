"""The synthetic action benchmark: held-out clips through `videoring analyze`, then `videoring eval`.

    python pipelines/eval_synth.py [--split validation] [-c accurate] [--short 8] [--long 2] [--window-ablation] [overrides ...]

Held-out seeds (9100+ short, 9500+ long) were never used to train the shipped
detector (1000-1079 / 5000-5009) or the action model (2000+). Settings are
chosen on the validation split (seeds 9200+ short, 9600+ long: the same
generator settings, other seeds), never on the held-out one. Short clips vary
size (256x192 to 640x360), frame rate (8 to 25 fps) and pan, as users' videos
do; long clips are 20-30 minutes at 320x240 10 fps, each with a return >= 10
minutes after the first visit. Prints and writes (--out) the metrics as JSON; the predictions
go to DATA/pred[_SPLIT][_CONFIG][_HASH of the overrides], one directory per setting.
With --window-ablation the long clips are also analysed with attention
restricted to independent 60-second windows (``temporal.window_s=60``).
Takes ~10 minutes on 2 cores with --window-ablation at the default 1 fps
(~13 with ``sampling.fps=2``); the first run also synthesizes the clips (~3 minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.evaluate import evaluate  # noqa: E402
from videoring.pipeline import Pipeline  # noqa: E402
from videoring.results import Results  # noqa: E402
from videoring.synth import synthesize  # noqa: E402

SIZES = ((256, 192), (320, 240), (480, 270), (640, 360), (400, 300), (320, 240), (480, 270), (256, 192))
FPS = (8.0, 10.0, 12.0, 15.0, 25.0, 30.0, 10.0, 20.0)


SEEDS = {"heldout": (9100, 9500), "validation": (9200, 9600)}  # (short, long) seed bases


def clips(root: Path, n_short: int, n_long: int, split: str = "heldout") -> tuple[list[Path], list[Path]]:
    root.mkdir(parents=True, exist_ok=True)
    base_s, base_l = SEEDS[split]
    short, long = [], []
    for i in range(n_short):
        p = root / f"short_{base_s + i}.mp4"
        if not p.with_suffix(".json").exists():
            synthesize(p, seed=base_s + i, duration_s=120.0 + 30 * (i % 4), fps=FPS[i % len(FPS)], size=SIZES[i % len(SIZES)], pan=bool(i % 2))
        short.append(p)
    for i in range(n_long):
        p = root / f"long_{base_l + i}.mp4"
        if not p.with_suffix(".json").exists():
            synthesize(p, seed=base_l + i, duration_s=1200.0 + 600 * i, fps=10.0, size=(320, 240))
        long.append(p)
    return short, long


def run(pipe: Pipeline, videos: list[Path], out: Path) -> tuple[list[tuple[Results, Results]], float, float]:
    pairs, secs, wall = [], 0.0, 0.0
    for v in videos:
        t0 = time.perf_counter()
        res = pipe(v)
        wall += time.perf_counter() - t0
        secs += res.video.duration_s
        res.to_json(out / f"{v.stem}.json")
        pairs.append((res, Results.from_json(v.with_suffix(".json"))))
        print(f"{v.name}: {res.summary()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return pairs, secs, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SEEDS), default="heldout", help="heldout: report; validation: tune")
    ap.add_argument("--data", default=".cache/videoring/synth_eval")
    ap.add_argument("--short", type=int, default=8)
    ap.add_argument("--long", type=int, default=2)
    ap.add_argument("--window-ablation", action="store_true")
    ap.add_argument("-c", "--config", default="default", help="a YAML path or a name in configs/ (accurate)")
    ap.add_argument("--out", default=None, help="default: out/eval_synth.json (out/eval_synth_validation.json)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    short, long = clips(Path(args.data), args.short, args.long, args.split)
    tag = "" if args.split == "heldout" else f"_{args.split}"  # held-out keeps its original names
    # one directory per config and overrides: a run with other settings must not overwrite these
    if args.config != "default":
        tag += f"_{Path(args.config).stem}"
    if args.overrides:
        tag += "_" + hashlib.blake2b(" ".join(args.overrides).encode(), digest_size=4).hexdigest()
    pred_dir = Path(args.data) / f"pred{tag}"
    pred_dir.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_config(args.config, overrides=["output.annotate=false", *args.overrides])
    report: dict = {"split": args.split, "config": str(args.config), "overrides": args.overrides, "predictions": str(pred_dir)}
    if short:
        pairs_s, secs, wall = run(pipe, short, pred_dir)
        report["short"] = {**evaluate(pairs_s), "video_s": secs, "wall_s": round(wall, 1)}
        print(json.dumps(report["short"]), flush=True)
    if long:
        pairs_l, secs, wall = run(pipe, long, pred_dir)
        report["long"] = {**evaluate(pairs_l), "video_s": secs, "wall_s": round(wall, 1)}
        print(json.dumps(report["long"]), flush=True)
        if args.window_ablation:
            local = Pipeline.from_config(args.config, overrides=["output.annotate=false", "temporal.window_s=60", *args.overrides])
            wdir = pred_dir / "window60"
            wdir.mkdir(exist_ok=True)
            pairs_w, secs, wall = run(local, long, wdir)
            report["long_window60"] = {**evaluate(pairs_w), "video_s": secs, "wall_s": round(wall, 1)}
            print(json.dumps(report["long_window60"]), flush=True)
    out = Path(args.out or f"out/eval_synth{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
