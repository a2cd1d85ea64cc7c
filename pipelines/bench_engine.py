"""Encoder and temporal-model benchmark (issue: long-context engine).

    python pipelines/bench_engine.py [--out docs/benchmarks_engine.md]

~6 minutes on 2 cores. Rows:
- encoder frames/s for vit_tiny and vit_small, fp32 and bf16 (videoring's
  FrameEncoder: inference_mode, batched, autocast) against plain timm eager
  fp32 (``model.forward_features`` under no_grad, same batch) on the same
  320x240 frames;
- an hour at 1 fps with 1+16 tokens per frame (61,200 tokens) through the
  4-layer temporal model (dim 192): forward wall time and peak RSS per rank at
  W = 1, 2 (and 4, oversubscribed on 2 cores), via torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def encoder_rows(n_frames: int = 96) -> list[str]:
    import numpy as np
    import timm
    import torch

    from videoring.config import EncoderConfig
    from videoring.encoder import FrameEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    frames = np.random.default_rng(0).integers(0, 255, (n_frames, 240, 320, 3), dtype=np.uint8)
    rows = ["| model | path | frames/s | vs timm eager fp32 |", "|---|---|---|---|"]
    for name in ("vit_tiny_patch16_224", "vit_small_patch16_224"):
        base = None
        enc32 = FrameEncoder(EncoderConfig(name=name, precision="fp32"))
        x = enc32.preprocess(frames)
        m = timm.create_model(name, pretrained=False, num_classes=0).eval()
        with torch.no_grad():
            m.forward_features(x[:16])
            t0 = time.perf_counter()
            for s in range(0, n_frames, 16):
                m.forward_features(x[s : s + 16])
            base = n_frames / (time.perf_counter() - t0)
        rows.append(f"| {name} | timm eager fp32 (model only, preprocessed) | {base:.1f} | 1.00x |")
        for prec in ("fp32", "bf16"):
            enc = FrameEncoder(EncoderConfig(name=name, precision=prec))
            enc(frames[:16])
            t0 = time.perf_counter()
            enc(frames)
            fps = n_frames / (time.perf_counter() - t0)
            rows.append(f"| {name} | videoring FrameEncoder {prec} (incl. resize+normalise) | {fps:.1f} | {fps / base:.2f}x |")
        print("\n".join(rows[-3:]), flush=True)
    return rows


def temporal_worker(cfg: dict) -> None:
    import torch
    import torch.distributed as dist

    from videoring.config import TemporalConfig
    from videoring.temporal import TemporalModel

    W = int(os.environ.get("WORLD_SIZE", "1"))
    if W > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if W > 1 else 0
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // W))
    F, P = cfg["frames"], 17
    f_local = -(-F // W)
    torch.manual_seed(0)
    model = TemporalModel(TemporalConfig(dim=192, depth=4, heads=4), 192, P).eval()
    tokens = torch.randn(1, f_local, P, 192)
    ts = torch.arange(rank * f_local, (rank + 1) * f_local, dtype=torch.float64).unsqueeze(0)
    mask = (ts < F)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(tokens, ts, mask)
    dt = time.perf_counter() - t0
    row = {"seconds": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = [row]
    if W > 1:
        rows = [None] * W
        dist.all_gather_object(rows, row)
    if rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)


def temporal_rows() -> list[str]:
    rows = ["| W | tokens total | tokens per rank | forward wall (s) | peak RSS per rank (MiB) |", "|---|---|---|---|---|"]
    F = 3600
    for W in (1, 2, 4):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={W}", __file__, "--temporal-worker", json.dumps({"frames": F})]
        r = subprocess.run(cmd, capture_output=True, text=True)
        res = next((json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")), None)
        if res is None:
            rows.append(f"| {W} | {F * 17} | | failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]} | |")
        else:
            note = " (4 ranks on 2 cores)" if W > 2 else ""
            rss = ", ".join(f"{x['rss_mib']:.0f}" for x in res)
            rows.append(f"| {W}{note} | {F * 17} | {-(-F // W) * 17} | {max(x['seconds'] for x in res):.1f} | {rss} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--temporal-worker")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks_engine.md")
    args = ap.parse_args()
    if args.temporal_worker:
        return temporal_worker(json.loads(args.temporal_worker))
    lines = ["# Encoder and temporal model benchmark", "", "2-core CPU, no GPU. Command: `python pipelines/bench_engine.py`.", "",
             "## Encoder (96 frames of 320x240, batch 16, 2 threads)", ""]
    lines += encoder_rows()
    lines += ["", "## An hour at 1 fps, 1+16 tokens per frame (61,200 tokens), 4-layer temporal model (dim 192, 4 heads), forward", ""]
    lines += temporal_rows()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
