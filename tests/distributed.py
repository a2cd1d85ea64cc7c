"""Run a function on W gloo processes (FileStore in a temp dir, no ports).

Ranks are forked from a forkserver that has imported torch and videoring once: a
spawned rank spent 4-5 s of CI's two cores importing them, for every rank of every
world (78 ranks in the suite). Forked ranks start clean otherwise: the server never
runs a torch op, so no thread pool or process group is inherited.

A watchdog kills every rank and fails the test if the world does not finish
within ``timeout`` seconds, so a hang never stalls CI.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from typing import Any, Callable


def _plain(x):
    """Tensors -> numpy, so results pickle by value (no shared-memory fds outliving the rank)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _worker(fn, rank, world, store_path, args, q) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        result = _plain(fn(rank, world, *args))
        q.put((rank, "ok", result))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        q.put((rank, "err", traceback.format_exc()))


PRELOAD = ["torch", "torch.distributed", "numpy", "videoring.engine", "videoring.ring", "videoring.train"]


def _context() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read once, when the server starts (the first world)
    return ctx


def run_world(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 240.0) -> list[Any]:
    """``fn(rank, world, *args)`` on each rank; returns the results ordered by rank."""
    ctx = _context()
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, args=(fn, r, world, store, args, q), daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(results) < world:
                try:
                    rank, status, value = q.get(timeout=1.0)
                except queue.Empty:
                    dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode not in (None, 0)]
                    if dead:
                        raise AssertionError(f"rank(s) {dead} died (exit codes {[procs[r].exitcode for r in dead]})") from None
                    if time.monotonic() > deadline:
                        raise AssertionError(f"distributed run hung: no result within {timeout}s (watchdog)") from None
                    continue
                if status == "err":
                    raise AssertionError(f"rank {rank} failed:\n{value}")
                results[rank] = value
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
    return [results[r] for r in range(world)]
