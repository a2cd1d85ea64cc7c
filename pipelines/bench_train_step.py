"""One training step of the action model: the padded sequence against the one without its empty actor slots.

    python pipelines/bench_train_step.py [--threads 2] [--out docs/benchmarks_train.md] [key=value ...]

Reads the feature cache that pipelines/train_actions.py fills (configs/train_synth.yaml plus the
same key=value overrides, e.g. sampling.fps=2; the clips in --data). Takes the median, the
75th-percentile and the longest cached clip by steps. For each, and for each way, a fresh process
(so its peak RSS is that way's own) builds the model at the recipe's seed and times two training
steps (forward + backward + loss), keeping the faster. "padded" forces
``videoring.temporal.real_positions`` to None: every frame with all its actor slots, the empty
ones key-masked (the model before session 23); "compact" is what training runs. Run it with
nothing else on the cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = ("padded", "compact")


def worker(path: str, way: str, threads: int, config: str, overrides: list[str]) -> None:
    import timm
    import torch
    from safetensors.torch import load_file

    import videoring.temporal as T
    from videoring.actions import ActionModel
    from videoring.train import _loss, load_train_config

    torch.set_num_threads(threads)
    cfg = load_train_config(config, overrides)
    item = load_file(path)
    dim = timm.create_model(cfg.encoder.name, pretrained=False, num_classes=0).num_features
    torch.manual_seed(cfg.seed)
    model = ActionModel(cfg, dim, cfg.encoder.tokens_per_frame).train()
    if way == "padded":
        T.real_positions = lambda *a: None
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss, _ = _loss(model, item, cfg.train)
        loss.backward()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"s": min(times), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": int(item["times"].shape[0]), "slots": float(item["actor_mask"].float().mean())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".cache/videoring/synth_train")
    ap.add_argument("--config", default="configs/train_synth.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table to this markdown file")
    ap.add_argument("--worker", nargs=2, metavar=("ITEM", "WAY"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, args.threads, args.config, args.overrides)

    from safetensors import safe_open

    from videoring.train import TrainJob, load_train_config

    videos = sorted(glob.glob(str(Path(args.data) / "train_*.mp4")))
    cfg = load_train_config(args.config, [f"train.videos={json.dumps(videos)}", *args.overrides])
    cached = [p for p in TrainJob(cfg).cache_paths() if p.exists()]
    if not cached:
        raise SystemExit(f"no cached training items for these settings under {cfg.train.cache_dir}: run pipelines/train_actions.py first")
    steps = []
    for p in cached:
        with safe_open(str(p), "pt") as f:
            steps.append((f.get_slice("times").get_shape()[0], p))
    steps.sort()
    picks = {"median": steps[len(steps) // 2], "75th percentile": steps[3 * len(steps) // 4], "longest": steps[-1]}
    rows = []
    for name, (n, p) in picks.items():
        res = {}
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, "--worker", str(p), way, "--threads", str(args.threads),
                                  "--config", args.config, *args.overrides], capture_output=True, text=True, check=True)
            res[way] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, n, way, res[way], flush=True)
        pad, com = res["padded"], res["compact"]
        rows.append(f"| {name} ({n} steps, {pad['slots']:.0%} of slots filled) | {pad['s']:.2f} s, {pad['rss_mb']:,.0f} MiB "
                    f"| {com['s']:.2f} s, {com['rss_mb']:,.0f} MiB | {pad['s'] / com['s']:.2f}x | {com['rss_mb'] / pad['rss_mb']:.2f}x |")
    table = "\n".join([
        f"One training step (forward + backward), {len(cached)} cached clips, {args.threads} threads, "
        f"`{' '.join(args.overrides) or 'configs/train_synth.yaml'}` (`python pipelines/bench_train_step.py`):",
        "",
        "| clip | padded: time, peak RSS | without empty slots | speed-up | memory |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.out:
        Path(args.out).write_text("# Training step: padded vs compacted sequence\n\n" + table + "\n")


if __name__ == "__main__":
    main()
