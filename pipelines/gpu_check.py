"""Check and time videoring's attention on a CUDA GPU (a recipe, not a test: CI has no GPU).

    python pipelines/gpu_check.py --out DIR            # on a machine with a GPU
    python pipelines/gpu_check.py --device cpu --small # dry run of the script itself

Needs only torch (and timm for the encoder row). Writes DIR/gpu_check.json:

1. Correctness at one rank on the GPU: ``ring_attention`` (fused CUDA kernel,
   sub-blocked masks) against float64 attention, output and dq/dk/dv, in fp32,
   bf16, fp16 and fp64; non-causal, causal, frame-causal with key padding
   inside the sequence. For bf16/fp16 the error of torch's own SDPA in the
   same dtype is the yardstick.
2. Several ranks on one GPU: NCCL (expected to refuse two ranks on one
   device) and gloo with CUDA tensors; whatever runs is checked against float64.
3. Timings: ring attention at one rank against torch's SDPA on the same
   problem (4k-64k tokens, H=8, D=64), the hour's masked frame + actor sequence
   (39,600 tokens, frame-causal blocks of 11, absent actors key-padded), the
   temporal model over the hour, and ViT-Tiny frame encoding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.ring import ring_attention  # noqa: E402
from videoring.ring.kernels import get_kernel  # noqa: E402


def reference(q, k, v, do, mask):
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    out = torch.softmax(s, -1) @ v
    out.backward(do.double())
    return [out.detach(), q.grad, k.grad, v.grad]


def make(S, H, D, causal, block, holes, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, do = (torch.randn(1, H, S, D, generator=g).to(device) for _ in range(4))
    pad = None
    mask = None
    if holes:
        pad = ((torch.rand(1, S, generator=g) > 0.4) | (torch.arange(S) % block == 0)).to(device)
        mask = pad[:, None, None, :]
    if causal:
        i = torch.arange(S, device=device)
        cm = (i[None, :] // block) <= (i[:, None] // block)
        mask = cm if mask is None else (mask & cm)
    return [t.to(dtype) for t in (q, k, v, do)], pad, mask


def ring_run(q, k, v, do, pad, causal, block, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = ring_attention(q, k, v, causal=causal, causal_block=block, key_padding_mask=pad, **kw)
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def sdpa_run(q, k, v, do, mask):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def max_err(got, ref):
    return [float((g.double() - r).abs().max()) for g, r in zip(got, ref)]


def correctness(device, small):
    rows = []
    S = 1200 if small else 5000  # > ring.attention.PIECE: masked pairs run in sub-blocks
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for name, causal, block, holes in (("non-causal", False, 1, False), ("causal", True, 1, False),
                                           ("causal+pad", True, 1, True), ("frame-causal 11 + pad", True, 11, True)):
            (q, k, v, do), pad, mask = make(S, 2, 64, causal, block, holes, dtype, device)
            ref = reference(q, k, v, do, mask)
            row = {"dtype": str(dtype).split(".")[1], "mask": name, "S": S,
                   "ring_err": max_err(ring_run(q, k, v, do, pad, causal, block), ref)}
            if dtype in (torch.bfloat16, torch.float16):
                row["sdpa_err"] = max_err(sdpa_run(q, k, v, do, mask), ref)
            rows.append(row)
            print(row, flush=True)
    return rows


def efficient_bwd_probe(device, small):
    """Which inputs torch's fused efficient-attention backward needs to be right in bf16.

    Variants: the forward's own out/lse/philox tensors, or fresh contiguous ones (what a
    ring passes: the merged output and log-sum-exp)."""
    if device != "cuda":
        return []
    ops = torch.ops.aten
    rows = []
    for S in (300, 5000):
        (q, k, v, do), _, _ = make(S, 2, 64, False, 1, False, torch.bfloat16, device)
        ref = reference(q, k, v, do, None)
        out, lse, seed, off = ops._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=0.125)
        variants = {
            "own out, own lse, own philox": (out, lse, seed, off),
            "contiguous out": (out.contiguous(), lse, seed, off),
            "own out, zero philox": (out, lse, torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device)),
            "fp32 lse re-padded": (out, torch.nn.functional.pad(lse[..., :S].float(), (0, (-S) % 32)).contiguous(), seed, off),
        }
        for name, (o, l, sd, of) in variants.items():
            try:
                g = ops._scaled_dot_product_efficient_attention_backward(do.contiguous(), q, k, v, None, o, l, sd, of, 0.0, [True, True, True, False], False, scale=0.125)
                rows.append({"S": S, "variant": name, "out_stride": list(o.stride()), "err": max_err([out, *g[:3]], ref)})
            except Exception as e:
                rows.append({"S": S, "variant": name, "error": repr(e)[:300]})
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------ several ranks, one GPU
def _rank_main(rank, world, backend, store_path, device, q_path, res_path):
    import torch.distributed as dist

    try:
        if device == "cuda":
            torch.cuda.set_device(0)
        store = dist.FileStore(store_path, world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        data = torch.load(q_path)
        S = data["q"].shape[2]
        n = S // world
        sl = slice(rank * n, (rank + 1) * n)
        take = lambda t: t[:, :, sl].to(device).detach().clone().requires_grad_(True)
        q, k, v = take(data["q"]), take(data["k"]), take(data["v"])
        out = ring_attention(q, k, v, causal=True, causal_block=11, key_padding_mask=data["pad"][:, sl].to(device))
        out.backward(data["do"][:, :, sl].to(device))
        torch.save({"out": out.detach().cpu(), "dq": q.grad.cpu(), "dk": k.grad.cpu(), "dv": v.grad.cpu()}, f"{res_path}.{rank}")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        Path(f"{res_path}.{rank}.err").write_text(traceback.format_exc())


def multi_rank(device, world=2):
    import torch.multiprocessing as mp

    rows = []
    (q, k, v, do), pad, mask = make(2 * 1100, 2, 64, True, 11, True, torch.float32, "cpu")
    ref = reference(q, k, v, do, mask)
    for backend in ("nccl", "gloo"):
        if backend == "nccl" and device != "cuda":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            qp, rp = os.path.join(tmp, "in.pt"), os.path.join(tmp, "res")
            torch.save({"q": q, "k": k, "v": v, "do": do, "pad": pad}, qp)
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_rank_main, args=(r, world, backend, os.path.join(tmp, "store"), device, qp, rp)) for r in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(120)
                if p.is_alive():
                    p.kill()
            errs = [Path(f"{rp}.{r}.err").read_text().strip().splitlines()[-1] for r in range(world) if Path(f"{rp}.{r}.err").exists()]
            row = {"backend": backend, "world": world, "exitcodes": [p.exitcode for p in procs]}
            if errs or not all(Path(f"{rp}.{r}").exists() for r in range(world)):
                row["error"] = errs[:1] or ["no result"]
            else:
                parts = [torch.load(f"{rp}.{r}") for r in range(world)]
                got = [torch.cat([p[key] for p in parts], dim=2) for key in ("out", "dq", "dk", "dv")]
                row["ring_err"] = max_err(got, ref)
            rows.append(row)
            print(row, flush=True)
    return rows


# ------------------------------------------------------------ timings
def timeit(fn, device, reps=5):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def attention_timings(device, small):
    rows = []
    sizes = (1024, 4096) if small else (4096, 16384, 65536)
    for dtype in (torch.bfloat16, torch.float32):
        for S in sizes:
            for causal in (False, True):
                q, k, v = (torch.randn(1, 8, S, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                do = torch.randn_like(q)

                def ring_f():
                    with torch.no_grad():
                        ring_attention(q, k, v, causal=causal)

                def sdpa_f():
                    with torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                def ring_fb():
                    ring_attention(q, k, v, causal=causal).backward(do)

                def sdpa_fb():
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)

                row = {"dtype": str(dtype).split(".")[1], "S": S, "causal": causal}
                for name, fn in (("ring_fwd", ring_f), ("sdpa_fwd", sdpa_f), ("ring_fwdbwd", ring_fb), ("sdpa_fwdbwd", sdpa_fb)):
                    row[name + "_ms"] = round(1000 * timeit(fn, device), 3)
                rows.append(row)
                print(row, flush=True)
    return rows


def hour_timings(device, small):
    """The hour's temporal sequence: 3,600 steps x (5 frame + 6 actor tokens), D=32, H=4."""
    rows = []
    steps = 360 if small else 3600
    S, block = steps * 11, 11
    for dtype in (torch.bfloat16, torch.float32):
        (q, k, v, do), pad, _ = make(S, 4, 32, True, block, True, dtype, device)

        def ring_f():
            with torch.no_grad():
                ring_attention(q, k, v, causal=True, causal_block=block, key_padding_mask=pad)

        import videoring.ring.attention as ra

        row = {"dtype": str(dtype).split(".")[1], "S": S}
        default = (ra.PIECE, ra.PIECE_CUDA)
        for piece in (1024, 2048, 4096, 8192, 16384):
            ra.PIECE = ra.PIECE_CUDA = piece
            row[f"ring_fwd_ms_piece{piece}"] = round(1000 * timeit(ring_f, device, 3), 2)
        ra.PIECE, ra.PIECE_CUDA = default
        if device == "cuda":
            i = torch.arange(S, device=device)
            mask = ((i[None, :] // block) <= (i[:, None] // block)) & pad[:, None, None, :]

            def sdpa_f():
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            row["sdpa_dense_mask_fwd_ms"] = round(1000 * timeit(sdpa_f, device, 3), 2)
            del mask
        rows.append(row)
        print(row, flush=True)
    return rows


def model_timings(device, small):
    from videoring.config import TemporalConfig
    from videoring.temporal import TemporalModel

    rows = []
    steps = 360 if small else 3600
    cfg = TemporalConfig(dim=128, depth=3, heads=4, causal=True)
    model = TemporalModel(cfg, in_dim=192, tokens_per_frame=5, actor_dim=64, max_actors=6).to(device).eval()
    tok = torch.randn(1, steps, 5, 192, device=device)
    ts = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(0)
    act = torch.randn(1, steps, 6, 64, device=device)
    am = torch.rand(1, steps, 6, device=device) > 0.5

    def fwd():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            model(tok, ts, actors=act, actor_mask=am)

    rows.append({"what": "temporal model, hour (3 layers, 39,600 tokens), bf16 autocast", "steps": steps, "fwd_ms": round(1000 * timeit(fwd, device, 3), 2)})
    print(rows[-1], flush=True)
    try:
        import timm

        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).to(device).eval()
        x = torch.randn(64 if small else 256, 3, 224, 224, device=device)

        def enc():
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
                vit.forward_features(x)

        t = timeit(enc, device, 3)
        rows.append({"what": "ViT-Tiny/16 224 forward_features, bf16", "batch": x.shape[0], "ms": round(1000 * t, 2), "frames_per_s": round(x.shape[0] / t, 1)})
        print(rows[-1], flush=True)
    except Exception as e:  # timm missing: the row is simply absent
        rows.append({"what": "ViT-Tiny", "error": repr(e)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="small sizes (a dry run of the script)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__}
    if a.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    from videoring.ring.kernels import _candidates, _self_check

    dev = torch.device(a.device)
    report["self_check"] = {str(dt): {repr(c): c.name == "plain" or _self_check(c, dev, dt) for c in _candidates(dev, dt)}
                            for dt in (torch.float32, torch.bfloat16, torch.float16)}
    report["kernels"] = {str(dt): repr(get_kernel(torch.device(a.device), dt)) for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}
    print(report, flush=True)
    for key, fn in (("efficient_bwd_probe", efficient_bwd_probe), ("correctness", correctness), ("multi_rank", lambda d, s: multi_rank(d)),
                    ("attention", attention_timings), ("hour_attention", hour_timings), ("models", model_timings)):
        t0 = time.perf_counter()
        try:
            report[key] = fn(a.device, a.small)
        except Exception:
            report[key] = {"error": traceback.format_exc()}
            print(report[key]["error"], flush=True)
        print(f"[{key}: {time.perf_counter() - t0:.1f} s]", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
