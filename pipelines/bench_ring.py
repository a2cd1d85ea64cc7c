"""Ring attention benchmark: videoring.ring beside single-process SDPA and ring-attention-pytorch.

    python pipelines/bench_ring.py [--quick] [--out docs/benchmarks_ring.md]

Launches every configuration with torchrun (gloo, CPU) and writes one table.
Full run: ~35 minutes on 2 cores (the 64k-token rows dominate); --quick skips
them (~12 minutes). Needs the `bench` extra (ring-attention-pytorch).

Rows:
- speed: forward and forward+backward, S total tokens, H=8, D=64, fp32/bf16;
  single-process SDPA with 2 threads vs ring W=2 (1 thread per rank) vs W=4
  (4 ranks on 2 cores: oversubscribed, shown for completeness) vs
  ring-attention-pytorch (its `ring_flash_attn` with ring passing on,
  `ring_reduce_col=True`; other arguments at their defaults).
- exposed communication: wall time / sum of block compute times (ring, W=2).
- memory: peak RSS per rank at fixed S_local as W grows.
- causal balance: per-rank compute with contiguous vs zigzag placement.
- accuracy: max abs error against float64 of out, dq, dk, dv for both rings.
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


# ----------------------------------------------------------------------------- worker (under torchrun)
def worker(cfg: dict) -> None:
    import torch
    import torch.distributed as dist

    from videoring.ring import record_stats, ring_attention
    from videoring.ring.layout import chunks_of

    dist.init_process_group("gloo")
    rank, W = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(cfg["threads"])
    dtype = getattr(torch, cfg["dtype"])
    S, H, D = cfg["S"], cfg["H"], cfg["D"]
    s_local = S // W
    g = torch.Generator().manual_seed(rank)
    q, k, v = (torch.randn(1, H, s_local, D, generator=g).to(dtype).requires_grad_(cfg["mode"] == "fwdbwd") for _ in range(3))
    impl = cfg["impl"]

    def run() -> tuple[float, dict]:
        for t in (q, k, v):
            t.grad = None
        stats = {}
        t0 = time.perf_counter()
        if impl == "sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=cfg["causal"])
        elif impl == "lucid":
            from ring_attention_pytorch import ring_flash_attn

            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # it takes (b, n, h, d)
            out = ring_flash_attn(qt, kt, vt, causal=cfg["causal"], ring_reduce_col=True)
        else:
            with record_stats() as st:
                out = ring_attention(q, k, v, causal=cfg["causal"], layout=cfg["layout"])
                if cfg["mode"] == "fwdbwd":
                    out.sum().backward()
            stats = {"compute_s": st.compute_s, "ring_wall_s": st.wall_s}
        if cfg["mode"] == "fwdbwd" and impl != "ring":
            out.float().sum().backward()
        dist.barrier()
        return time.perf_counter() - t0, stats

    if cfg.get("warmup"):
        run()
    dt, stats = run()
    pairs = 0
    if impl == "ring" and cfg["causal"]:
        from videoring.ring.layout import block_mask, relation

        for step in range(W):
            src = (rank - step) % W
            for qc in chunks_of(rank, W, s_local, cfg["layout"]):
                for kc in chunks_of(src, W, s_local, cfg["layout"]):
                    rel = relation(qc, kc, True, 1)
                    pairs += 0 if rel == "none" else qc[2] * kc[2] if rel == "full" else int(block_mask(qc, kc, 1, "cpu").sum())
    row = {"rank": rank, "seconds": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "pairs": pairs, **stats}
    rows = [None] * W
    dist.all_gather_object(rows, row)
    if rank == 0:
        print("RESULT " + json.dumps({"cfg": cfg, "ranks": rows}), flush=True)
    dist.destroy_process_group()


def accuracy_worker(cfg: dict) -> None:
    """Both rings against float64 on one problem: out, dq, dk, dv."""
    import torch
    import torch.distributed as dist

    from videoring.ring import ring_attention

    dist.init_process_group("gloo")
    rank, W = dist.get_rank(), dist.get_world_size()
    S, H, D, causal = cfg["S"], cfg["H"], cfg["D"], cfg["causal"]
    g = torch.Generator().manual_seed(0)
    Q, K, V, DO = (torch.randn(1, H, S, D, generator=g, dtype=torch.float64) for _ in range(4))
    sl = slice(rank * S // W, (rank + 1) * S // W)
    res = {}
    for impl in ("ring", "lucid"):
        q, k, v = (t[:, :, sl].float().clone().requires_grad_(True) for t in (Q, K, V))
        if impl == "ring":
            out = ring_attention(q, k, v, causal=causal)
        else:
            from ring_attention_pytorch import ring_flash_attn

            out = ring_flash_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, ring_reduce_col=True).transpose(1, 2)
        out.backward(DO[:, :, sl].float())
        parts = [out.detach(), q.grad, k.grad, v.grad]
        gathered = []
        for p in parts:
            buf = [torch.empty_like(p) for _ in range(W)]
            dist.all_gather(buf, p.contiguous())
            gathered.append(torch.cat(buf, dim=2).double())
        res[impl] = gathered
    if rank == 0:
        q, k, v = (t.clone().requires_grad_(True) for t in (Q, K, V))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref.backward(DO)
        refs = [ref.detach(), q.grad, k.grad, v.grad]
        errs = {impl: [(a - b).abs().max().item() for a, b in zip(res[impl], refs)] for impl in res}
        print("RESULT " + json.dumps({"cfg": cfg, "errors": errs}), flush=True)
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- orchestrator
def launch(cfg: dict, W: int, accuracy: bool = False, env: dict | None = None) -> dict | None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={W}",
           str(Path(__file__).resolve()), "--accuracy-worker" if accuracy else "--worker", json.dumps(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.get("threads", 1)), **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = r.stderr.strip().splitlines() or ["?"]
    err = next((ln.split("]: ", 1)[-1] for ln in lines if "Error" in ln), lines[-1])[:160]
    print(f"  failed: {cfg} W={W}: {err}", flush=True)
    return {"cfg": cfg, "error": err}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--accuracy-worker")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="speed,memory,causal,accuracy", help="comma-separated subset to run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks_ring.md")
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.accuracy_worker:
        return accuracy_worker(json.loads(args.accuracy_worker))
    if args.out.exists() and args.sections != ap.get_default("sections"):
        args.out = args.out.with_name(args.out.stem + "_" + args.sections.replace(",", "_") + args.out.suffix)

    base = dict(H=8, D=64, causal=False, layout="contiguous")
    lines = ["# Ring attention benchmark", "",
             "2-core CPU, gloo, no GPU. Command: `python pipelines/bench_ring.py`. "
             "`ring W=2` runs 2 ranks with 1 thread each on the same 2 cores that single-process SDPA uses with 2 threads.", ""]

    sections = set(args.sections.split(","))
    # speed
    if "speed" in sections:
        lines += ["## Speed (non-causal, H=8, D=64)", "",
                  "| S total | dtype | pass | SDPA 2 threads (s) | ring W=2 (s) | ratio ring/SDPA | ring W=4, oversubscribed (s) | ring-attention-pytorch W=2 (s) | ours vs it | exposed comm W=2 (wall/compute) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        sizes = [4096, 16384] + ([] if args.quick else [65536])
        for S in sizes:
            for dtype in ("float32", "bfloat16"):
                if S == 65536 and dtype == "bfloat16":
                    continue
                for mode in ("fwd", "fwdbwd"):
                    warm = S <= 16384
                    c = dict(base, S=S, dtype=dtype, mode=mode, warmup=warm)
                    sd = launch(dict(c, impl="sdpa", threads=2), 1)
                    r2 = launch(dict(c, impl="ring", threads=1), 2)
                    r4 = launch(dict(c, impl="ring", threads=1), 4) if S <= 16384 else None
                    lu = launch(dict(c, impl="lucid", threads=1), 2) if S <= 16384 else None

                    def sec(r):  # noqa: E306
                        return max(x["seconds"] for x in r["ranks"]) if r and "ranks" in r else float("nan")

                    exp = max(x["ring_wall_s"] / x["compute_s"] for x in r2["ranks"]) if "ranks" in r2 else float("nan")
                    def cell(r):  # noqa: E306
                        if r is None:
                            return "not run"
                        return f"{sec(r):.2f}" if "ranks" in r else f"fails ({r['error'][:60]})"

                    vs = f"{sec(lu) / sec(r2):.1f}x faster" if lu and "ranks" in lu else "n/a"
                    row = (f"| {S // 1024}k | {dtype} | {mode} | {cell(sd)} | {cell(r2)} | {sec(r2) / sec(sd):.2f} | "
                           f"{cell(r4)} | {cell(lu)} | {vs} | {exp:.3f} |")
                    lines.append(row)
                    print(row, flush=True)

    # memory vs W at fixed S_local, under glibc's default allocator and with its dynamic mmap
    # threshold pinned (then every large tensor is its own mapping, returned when freed: peak
    # RSS follows the live tensors instead of heap fragments the allocator keeps)
    if "memory" in sections:
        pinned = {"MALLOC_MMAP_THRESHOLD_": "131072"}
        for s_local in (4096, 16384):
            lines += ["", f"## Peak RSS per rank at fixed S_local = {s_local} (fp32, forward+backward)", "",
                      "| W | S total | peak RSS per rank, glibc default (MiB, max over ranks) | vs W=1 | "
                      "with MALLOC_MMAP_THRESHOLD_=131072 | vs W=1 |", "|---|---|---|---|---|---|"]
            first = {}
            for W in (1, 2, 3, 4):
                cells = []
                for name, env in (("default", {}), ("pinned", pinned)):
                    r = launch(dict(base, S=s_local * W, dtype="float32", mode="fwdbwd", impl="ring", threads=1), W, env=env)
                    rss = max(x["rss_mib"] for x in r["ranks"])
                    first.setdefault(name, rss)
                    cells.append(f"{rss:.0f} | {rss / first[name]:.3f}")
                lines.append(f"| {W} | {s_local * W} | {' | '.join(cells)} |")
                print(lines[-1], flush=True)
        if not args.quick:
            r = launch(dict(base, S=65536, dtype="float32", mode="fwdbwd", impl="ring", threads=1), 2)
            if "ranks" in r:
                lines.append(f"\n64k tokens, non-causal forward+backward over 2 ranks: peak RSS per rank "
                             f"{max(x['rss_mib'] for x in r['ranks']):.0f} MiB, {max(x['seconds'] for x in r['ranks']):.0f} s.")

    # causal balance
    if "causal" in sections:
        lines += ["", "## Causal: contiguous vs zigzag (S=16k, fp32, forward+backward)", "",
                  "| W | layout | wall (s) | per-rank compute (s) | max/min compute | per-rank attended pairs (M) | max/min pairs |",
                  "|---|---|---|---|---|---|---|"]
        for W in (2, 4):
            walls = {}
            for layout in ("contiguous", "zigzag"):
                r = launch(dict(base, S=16384, dtype="float32", mode="fwdbwd", impl="ring", causal=True, layout=layout, threads=1), W)
                comp = [x["compute_s"] for x in r["ranks"]]
                pairs = [x["pairs"] / 1e6 for x in r["ranks"]]
                walls[layout] = max(x["seconds"] for x in r["ranks"])
                lines.append(f"| {W} | {layout} | {walls[layout]:.2f} | {', '.join(f'{c:.2f}' for c in comp)} | "
                             f"{max(comp) / min(comp):.2f} | {', '.join(f'{p:.0f}' for p in pairs)} | {max(pairs) / min(pairs):.3f} |")
                print(lines[-1], flush=True)
            lines.append(f"| {W} | zigzag speed-up over contiguous | {walls['contiguous'] / walls['zigzag']:.2f}x | | | | |")

    # accuracy
    if "accuracy" in sections:
        lines += ["", "## Accuracy against float64 (fp32 inputs, S=2048, H=4, D=64, W=2)", "",
                  "| causal | implementation | out | dq | dk | dv |", "|---|---|---|---|---|---|"]
        for causal in (False, True):
            r = launch(dict(S=2048, H=4, D=64, causal=causal, threads=1), 2, accuracy=True)
            for impl, errs in r.get("errors", {}).items():
                name = "videoring.ring" if impl == "ring" else "ring-attention-pytorch"
                lines.append(f"| {causal} | {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
                print(lines[-1], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
