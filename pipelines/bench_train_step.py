"""One step of the action model, the padded sequence against the one without its empty actor slots.

    python pipelines/bench_train_step.py [--threads 2] [--out docs/benchmarks_train.md] [key=value ...]
    python pipelines/bench_train_step.py --infer [--minutes 60] [--out docs/benchmarks_infer.md [--append]] [key=value ...]

Reads the feature cache that pipelines/train_actions.py fills (configs/train_synth.yaml plus the
same key=value overrides, e.g. sampling.fps=2; the clips in --data). Training (default): the
median, the 75th-percentile and the longest cached clip by steps; for each, and for each way, a
fresh process (so its peak RSS is that way's own) builds the model at the recipe's seed and
times two training steps (forward + backward + loss), keeping the faster. ``--infer``: the
longest cached clip repeated end to end (its times shifted) up to ``--minutes`` of video, run
through ``ActionModel.infer`` as the pipeline runs it (fp16 actor rows in an arena), timed
twice, the faster kept. "padded" forces ``videoring.temporal.real_positions`` to None: every
frame with all its actor slots, the empty ones key-masked (training before session 23,
inference before session 24, and a ring's layout still); "compact" is what one rank runs. Run it
with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = ("padded", "compact")


def _setup(path: str, way: str, threads: int, config: str, overrides: list[str]):
    """(config, cached item, model at the recipe's seed) for one way, in this fresh process."""
    import timm
    import torch
    from safetensors.torch import load_file

    import videoring.temporal as T
    from videoring.actions import ActionModel
    from videoring.train import load_train_config

    torch.set_num_threads(threads)
    cfg = load_train_config(config, overrides)
    item = load_file(path)
    dim = timm.create_model(cfg.encoder.name, pretrained=False, num_classes=0).num_features
    torch.manual_seed(cfg.seed)
    model = ActionModel(cfg, dim, cfg.encoder.tokens_per_frame)
    if way == "padded":
        T.real_positions = lambda *a: None
    return cfg, item, model


def worker(path: str, way: str, threads: int, config: str, overrides: list[str]) -> None:
    from videoring.train import _loss

    cfg, item, model = _setup(path, way, threads, config, overrides)
    model.train()
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss, _ = _loss(model, item, cfg.train)
        loss.backward()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"s": min(times), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": int(item["times"].shape[0]), "slots": float(item["actor_mask"].float().mean())}))


def infer_worker(path: str, way: str, threads: int, minutes: float, config: str, overrides: list[str]) -> None:
    import torch

    from videoring.actors import ActorTokens, kin_dim
    from videoring.arena import Arena

    cfg, item, model = _setup(path, way, threads, config, overrides)
    model.eval()
    # the clip end to end until --minutes of video: its times shifted by its length each time
    ts, n = item["times"], len(item["times"])
    period = float(ts[-1] - ts[0]) + float(ts[1] - ts[0])
    steps = int(minutes * 60 / period * n)
    rep = lambda x: x.repeat((steps + n - 1) // n, *([1] * (x.dim() - 1)))[:steps]  # noqa: E731
    times = torch.cat([ts + k * period for k in range((steps + n - 1) // n)])[:steps]
    actors, amask = rep(item["actors"]), rep(item["actor_mask"])
    app = actors.shape[-1] - kin_dim(cfg.actions.half_windows)  # RoI features and look: the arena's rows
    store = Arena((app,), torch.float16)
    rows = torch.full(amask.shape, -1, dtype=torch.long)
    rows[amask] = torch.as_tensor(store.append(actors[amask][:, :app]))
    packed = ActorTokens(store, rows[None], (actors[..., app:] * amask[..., None]).half()[None])
    tokens, fm = rep(item["tokens"]), rep(item["frame_mask"])
    del item, actors
    gc.collect()
    base = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak from here on is inference's
    walls = []
    for _ in range(2):
        inp = types.SimpleNamespace(tokens=tokens[None], times=times[None], frame_mask=fm[None], actors=packed, actor_mask=amask[None])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.infer(inp)
        walls.append(time.perf_counter() - t0)
    print(json.dumps({"s": min(walls), "rss_mb": _rss_mib("VmHWM"), "grow_mb": _rss_mib("VmHWM") - base,
                      "steps": steps, "video_s": steps / n * period, "slots": float(amask.float().mean())}))


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def infer_main(args, cached: list[Path]) -> str:
    from safetensors import safe_open

    longest = max(cached, key=lambda p: safe_open(str(p), "pt").get_slice("times").get_shape()[0])
    res = {}
    for way in WAYS:
        out = subprocess.run([sys.executable, __file__, "--worker", str(longest), way, "--infer", "--minutes", str(args.minutes),
                              "--threads", str(args.threads), "--config", args.config, *args.overrides],
                             capture_output=True, text=True, check=True)
        res[way] = json.loads(out.stdout.strip().splitlines()[-1])
        print(way, res[way], flush=True)
    pad, com = res["padded"], res["compact"]
    return (f"| {' '.join(args.overrides) or 'sampling.fps=1'}: {com['video_s'] / 60:.0f} min, {com['steps']} steps, "
            f"{com['slots']:.0%} of slots filled | {pad['s']:.2f} s, +{pad['grow_mb']:,.0f} MiB | {com['s']:.2f} s, "
            f"+{com['grow_mb']:,.0f} MiB | {pad['s'] / com['s']:.2f}x | {com['grow_mb'] / pad['grow_mb']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".cache/videoring/synth_train")
    ap.add_argument("--config", default="configs/train_synth.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table to this markdown file")
    ap.add_argument("--infer", action="store_true", help="time inference (ActionModel.infer) instead of a training step")
    ap.add_argument("--minutes", type=float, default=60.0, help="--infer: minutes of video (the longest clip repeated)")
    ap.add_argument("--append", action="store_true", help="--infer: add the row to --out's table (another sampling.fps)")
    ap.add_argument("--worker", nargs=2, metavar=("ITEM", "WAY"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.worker and args.infer:
        return infer_worker(*args.worker, args.threads, args.minutes, args.config, args.overrides)
    if args.worker:
        return worker(*args.worker, args.threads, args.config, args.overrides)

    from safetensors import safe_open

    from videoring.train import TrainJob, load_train_config

    videos = sorted(glob.glob(str(Path(args.data) / "train_*.mp4")))
    cfg = load_train_config(args.config, [f"train.videos={json.dumps(videos)}", *args.overrides])
    cached = [p for p in TrainJob(cfg).cache_paths() if p.exists()]
    if not cached:
        raise SystemExit(f"no cached training items for these settings under {cfg.train.cache_dir}: run pipelines/train_actions.py first")
    if args.infer:
        row = infer_main(args, cached)
        table = "\n".join([
            f"`ActionModel.infer` (temporal model, Recall and heads) on the longest cached clip repeated to {args.minutes:g} "
            f"minutes, {args.threads} threads, the faster of two passes, a fresh process per way (`python pipelines/bench_train_step.py --infer`). "
            "Memory: the process's peak RSS during the passes above its RSS before them (the inputs, as the pipeline holds them, built):",
            "",
            "| input | padded: time, memory | without empty slots | speed-up | memory |",
            "|---|---|---|---|---|",
            row,
        ])
        print(table)
        if args.out and args.append and Path(args.out).exists():
            Path(args.out).write_text(Path(args.out).read_text() + row + "\n")
        elif args.out:
            Path(args.out).write_text("# Inference: padded vs compacted sequence\n\n" + table + "\n")
        return
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
