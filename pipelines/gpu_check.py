"""Check and time videoring's attention on a CUDA GPU (a recipe, not a test: CI has no GPU).

    python pipelines/gpu_check.py --out DIR            # on a machine with a GPU
    python pipelines/gpu_check.py --device cpu --small # dry run of the script itself
    python pipelines/gpu_check.py --sections model_check,attention   # a subset

Needs only torch (and timm for the encoder row). Writes DIR/gpu_check.json:

1. Correctness at one rank on the GPU: ``ring_attention`` (fused CUDA kernel,
   sub-blocked masks) against float64 attention, output and dq/dk/dv, in fp32,
   bf16, fp16 and fp64; non-causal, causal, frame-causal with key padding
   inside the sequence. For bf16/fp16 the error of torch's own SDPA in the
   same dtype is the yardstick.
2. Several ranks on one GPU (W = 2, 3, 4): gloo, which carries the CUDA
   tensors through host copies (NCCL refuses two ranks on one device); both
   layouts, fp32 and bf16, against float64, bf16 beside torch's SDPA in bf16.
   The same cases over NCCL, one GPU per rank, on a machine with 2+ GPUs
   (section ``nccl``; skipped on one GPU).
3. The temporal model (with Recall) on the GPU against the same weights on
   the CPU: inference and training outputs, every parameter gradient.
4. Timings: ring attention at one rank against torch's SDPA on the same
   problem (4k-64k tokens, H=8, D=64), with each fused engine forced; the
   hour's masked frame + actor sequence (39,600 tokens, frame-causal blocks of
   11, absent actors key-padded); the temporal model over the hour; ViT-Tiny
   frame encoding. Before them, the kernel self-checks and the chosen kernels,
   and (unmasked_probe) each fused engine alone against float64.
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
from videoring.ring import kernels  # noqa: E402
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


def nccl_rank(device, small):
    """The multi-rank cases over NCCL, one GPU per rank, W = 2 .. min(GPUs, 4): needs a
    machine with two or more GPUs (NCCL refuses two ranks on one device)."""
    n = torch.cuda.device_count() if device == "cuda" else 0
    if n < 2:
        print(f"nccl: skipped, {n} GPU(s)", flush=True)
        return [{"skipped": f"{n} GPU(s); NCCL needs one GPU per rank"}]
    return multi_rank(device, small, worlds=tuple(range(2, min(n, 4) + 1)), backend="nccl")


def unmasked_probe(device, small):
    """The fused engines for unmasked half-precision blocks (cuDNN, FlashAttention-2), called
    as the ring calls them (final out and lse handed to the backward), against float64:
    the diagnosis when a self-check fails."""
    if device != "cuda":
        return []
    from videoring.ring.kernels import _UNMASKED

    rows = []
    for engine, (fwd, bwd) in _UNMASKED.items():
        for S in (300, 5000):
            for causal in (False, True):
                (q, k, v, do), _, mask = make(S, 2, 64, causal, 1, False, torch.bfloat16, device)
                ref = reference(q, k, v, do, mask)
                try:
                    out, lse = fwd(q, k, v, causal, 0.125)
                    g = bwd(do, q, k, v, ref[0].float(), lse, causal, 0.125)
                    rows.append({"engine": engine, "S": S, "causal": causal, "err": max_err([out, *g], ref)})
                except Exception as e:
                    rows.append({"engine": engine, "S": S, "causal": causal, "error": repr(e)[:400]})
                print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------ several ranks, one GPU
MULTI_H, MULTI_D = 2, 64  # tokens: 6,600 (--small: 1,320), divisible by 2W for W = 2, 3, 4 (zigzag)
MULTI_CASES = [(dtype, layout, name, causal, block, holes)
               for dtype in (torch.float32, torch.bfloat16)
               for layout in ("contiguous", "zigzag")
               for name, causal, block, holes in (("non-causal", False, 1, False), ("frame-causal 11 + pad", True, 11, True))]


def _half_bwd_from_env() -> None:
    """``--half-bwd off`` (inherited by the spawned ranks): bf16 backward blocks in bf16, as
    before the fp16 path (ring.attention.HALF_BWD_DEVICES), for an A/B in one run."""
    if os.environ.get("VIDEORING_GPU_CHECK_HALF_BWD") == "off":
        import videoring.ring.attention as ra

        ra.HALF_BWD_DEVICES = ()


def _rank_main(rank, world, S, store_path, device, res_path, backend):
    """One rank: gloo with every rank on the first GPU (device tensors staged through host
    memory), or NCCL with one GPU per rank."""
    import torch.distributed as dist

    from videoring.ring.layout import chunks_of

    _half_bwd_from_env()
    try:
        if device == "cuda":
            torch.cuda.set_device(rank if backend == "nccl" else 0)
            device = f"cuda:{torch.cuda.current_device()}"
        dist.init_process_group(backend, store=dist.FileStore(store_path, world), rank=rank, world_size=world)
        res = []
        for dtype, layout, _, causal, block, holes in MULTI_CASES:
            (q, k, v, do), pad, _ = make(S, MULTI_H, MULTI_D, causal, block, holes, torch.float64, "cpu")
            pos = torch.cat([torch.arange(g, g + n) for _, g, n in chunks_of(rank, world, S // world, layout)])
            take = lambda t: t[:, :, pos].to(device, dtype).detach().clone().requires_grad_(True)
            ql, kl, vl = take(q), take(k), take(v)
            out = ring_attention(ql, kl, vl, causal=causal, causal_block=block, layout=layout,
                                 key_padding_mask=None if pad is None else pad[:, pos].to(device))
            out.backward(do[:, :, pos].to(device, dtype))
            res.append({"pos": pos, **{n: t.detach().cpu() for n, t in (("out", out), ("dq", ql.grad), ("dk", kl.grad), ("dv", vl.grad))}})
        torch.save(res, f"{res_path}.{rank}")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        Path(f"{res_path}.{rank}.err").write_text(traceback.format_exc())


def multi_rank(device, small, worlds=(2, 3, 4), backend="gloo"):
    """W ranks over ``backend``, every case against float64; bf16 beside torch's SDPA in bf16."""
    import torch.multiprocessing as mp

    S = 1320 if small else 6600
    refs, sdpa = [], []
    for dtype, layout, name, causal, block, holes in MULTI_CASES:
        (q, k, v, do), pad, mask = make(S, MULTI_H, MULTI_D, causal, block, holes, torch.float64, device)
        refs.append(reference(q, k, v, do, mask))
        sdpa.append(max_err(sdpa_run(*(t.to(dtype) for t in (q, k, v, do)), mask), refs[-1]) if dtype != torch.float32 else None)
    rows = []
    for world in worlds:
        with tempfile.TemporaryDirectory() as tmp:
            rp = os.path.join(tmp, "res")
            t0 = time.perf_counter()
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_rank_main, args=(r, world, S, os.path.join(tmp, "store"), device, rp, backend))
                     for r in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(240)
                if p.is_alive():
                    p.kill()
            errs = [Path(f"{rp}.{r}.err").read_text().strip().splitlines()[-1] for r in range(world) if Path(f"{rp}.{r}.err").exists()]
            if errs or not all(Path(f"{rp}.{r}").exists() for r in range(world)):
                rows.append({"backend": backend, "world": world, "exitcodes": [p.exitcode for p in procs], "error": errs[:1] or ["no result"]})
                print(rows[-1], flush=True)
                continue
            parts = [torch.load(f"{rp}.{r}") for r in range(world)]
            for i, (dtype, layout, name, *_rest) in enumerate(MULTI_CASES):
                pos = torch.cat([p[i]["pos"] for p in parts])
                got = []
                for key in ("out", "dq", "dk", "dv"):
                    full = torch.empty_like(refs[i][0], device="cpu")
                    full[:, :, pos] = torch.cat([p[i][key] for p in parts], dim=2).double()
                    got.append(full)
                row = {"backend": backend, "world": world, "dtype": str(dtype).split(".")[1], "layout": layout, "mask": name,
                       "ring_err": max_err(got, [r.cpu() for r in refs[i]])}
                if sdpa[i] is not None:
                    row["sdpa_err"] = sdpa[i]
                rows.append(row)
                print(row, flush=True)
            print(f"[world {world}: {time.perf_counter() - t0:.1f} s]", flush=True)
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
                if device == "cuda" and dtype == torch.bfloat16:
                    row.update(engine_timings(dtype, device, ring_f, ring_fb, sdpa_f, sdpa_fb))
                rows.append(row)
                print(row, flush=True)
    return rows


def engine_timings(dtype, device, ring_f, ring_fb, sdpa_f, sdpa_fb):
    """The ring with each engine for unmasked blocks forced, and torch's SDPA with each backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    row = {}
    key, chosen = ("cuda", dtype), kernels._CHOSEN.get(("cuda", dtype))
    for engine in ("cudnn", "flash", ""):
        kernels._CHOSEN[key] = kernels.BlockKernel("sdpa", unmasked=engine)
        name = engine or "efficient"
        try:
            row[f"ring_{name}_fwd_ms"] = round(1000 * timeit(ring_f, device), 3)
            row[f"ring_{name}_fwdbwd_ms"] = round(1000 * timeit(ring_fb, device), 3)
        except Exception as e:
            row[f"ring_{name}_error"] = repr(e)[:200]
    kernels._CHOSEN[key] = chosen
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                row[f"sdpa_{name}_fwd_ms"] = round(1000 * timeit(sdpa_f, device), 3)
                row[f"sdpa_{name}_fwdbwd_ms"] = round(1000 * timeit(sdpa_fb, device), 3)
        except Exception as e:
            row[f"sdpa_{name}_error"] = repr(e)[:200]
    return row


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
        if device == "cuda" and dtype in (torch.bfloat16, torch.float16):
            # forward + backward, and the masked blocks through cuDNN (as chosen) or the efficient kernel
            def ring_fb():
                qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
                ring_attention(qq, kk, vv, causal=True, causal_block=block, key_padding_mask=pad).backward(do)

            row["ring_fwdbwd_ms"] = round(1000 * timeit(ring_fb, device, 3), 2)
            key, chosen = ("cuda", dtype), kernels._CHOSEN.get(("cuda", dtype))
            kernels._CHOSEN[key] = kernels.BlockKernel("sdpa", unmasked="cudnn")
            row["ring_fwd_ms_efficient_masked"] = round(1000 * timeit(ring_f, device, 3), 2)
            row["ring_fwdbwd_ms_efficient_masked"] = round(1000 * timeit(ring_fb, device, 3), 2)
            kernels._CHOSEN[key] = chosen
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


def model_check(device, small):
    """The temporal model (3 layers + Recall, frame-causal, absent actors padded) on ``device``
    against itself on the CPU in fp32 (the model computes some features in fp32 by design, so
    not fp64; the CPU path is tested against float64 attention): per-step outputs at inference
    (the chunked ``attention_rows`` path) and in training mode (the ring), and every parameter's
    gradient; errors relative to the largest reference value of each tensor."""
    import copy

    from videoring.config import TemporalConfig
    from videoring.temporal import TemporalModel

    steps = 120 if small else 600
    torch.manual_seed(0)
    model = TemporalModel(TemporalConfig(dim=128, depth=3, heads=4, causal=True, layout="zigzag"), in_dim=192,
                          tokens_per_frame=5, actor_dim=64, max_actors=6, look=slice(16, 52))
    g = torch.Generator().manual_seed(1)
    inputs = dict(tokens=torch.randn(1, steps, 5, 192, generator=g), timestamps=torch.arange(steps, dtype=torch.float32)[None] * 2.0,
                  actors=torch.randn(1, steps, 6, 64, generator=g), actor_mask=torch.rand(1, steps, 6, generator=g) > 0.5)
    w = torch.randn(1, steps, 128, generator=g)

    def run(m, dev, dtype, autocast):
        m = copy.deepcopy(m).to(dev, dtype)
        x = {k: (v.to(dev, dtype) if v.is_floating_point() and k != "timestamps" else v.to(dev)) for k, v in inputs.items()}
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            m.eval()
            with torch.no_grad():
                infer = m(**x)[1].double().cpu()
            m.train()
            train = m(**x)[1]
            (train.double() * w.to(dev, torch.float64)).sum().backward()
        grads = {n: p.grad.double().cpu() for n, p in m.named_parameters() if p.grad is not None}
        return infer, train.detach().double().cpu(), grads

    ref = run(model, "cpu", torch.float32, False)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
    rows = []
    for name, dev, autocast in ((f"{device} fp32", device, False), (f"{device} bf16 autocast", device, True),
                                ("cpu bf16 autocast (yardstick)", "cpu", True)):
        got = run(model, dev, torch.float32, autocast)
        gerr = {n: rel(got[2][n], ref[2][n]) for n in ref[2]}
        worst = max(gerr, key=gerr.get)
        rows.append({"precision": name, "tokens": steps * 11, "infer_rel_err": rel(got[0], ref[0]),
                     "train_rel_err": rel(got[1], ref[1]), "grad_rel_err_max": gerr[worst], "grad_worst": worst,
                     "grads_checked": len(gerr), "grads_missing": sorted(set(ref[2]) - set(got[2]))})
        print(rows[-1], flush=True)
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


SECTIONS = {"unmasked_probe": unmasked_probe, "correctness": correctness, "multi_rank": multi_rank, "nccl": nccl_rank,
            "model_check": model_check,
            "attention": attention_timings, "hour_attention": hour_timings, "models": model_timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="small sizes (a dry run of the script)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--half-bwd", choices=("on", "off"), default="on",
                    help="off: bf16 backward blocks in bf16, not through the fp16 kernels (the A/B baseline)")
    a = ap.parse_args()
    os.environ["VIDEORING_GPU_CHECK_HALF_BWD"] = a.half_bwd
    _half_bwd_from_env()
    unknown = set(a.sections.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "half_bwd": a.half_bwd}
    if a.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    from videoring.ring.kernels import _candidates, _self_check

    dev = torch.device(a.device)
    report["self_check"] = {str(dt): {repr(c): c.name == "plain" or _self_check(c, dev, dt) for c in _candidates(dev, dt)}
                            for dt in (torch.float32, torch.bfloat16, torch.float16)}
    report["kernels"] = {str(dt): repr(get_kernel(torch.device(a.device), dt)) for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}
    print(report, flush=True)
    for key, fn in SECTIONS.items():
        if key not in a.sections.split(","):
            continue
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
