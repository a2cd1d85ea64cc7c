"""Distributed faults: a rank that dies or hangs mid-ring makes the others fail fast, never hang."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
from datetime import timedelta

import pytest

TIMEOUT_S = 8.0  # the process-group timeout under test (the CLI's default is 120 s)


def _rank(rank: int, world: int, store_path: str, fault: str, q) -> None:
    import torch
    import torch.distributed as dist

    from videoring.ring import ring_attention

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT_S))
    q_, k, v = (torch.randn(1, 2, 256, 16) for _ in range(3))
    ring_attention(q_, k, v)  # one healthy ring pass
    if rank == 1:
        if fault == "die":
            os._exit(9)  # like a kill -9: no goodbye
        time.sleep(600)  # hang
    t0 = time.monotonic()
    try:
        for _ in range(3):
            ring_attention(q_, k, v)
        q.put((rank, "finished", time.monotonic() - t0))
    except Exception as e:  # noqa: BLE001
        q.put((rank, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", time.monotonic() - t0))


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_surviving_rank_errors_within_the_timeout(fault):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, 2, os.path.join(tmp, "store"), fault, q), daemon=True) for r in range(2)]
        for p in procs:
            p.start()
        try:
            rank, what, waited = q.get(timeout=TIMEOUT_S + 90)  # generous: spawn + imports on a busy CI machine
        except queue.Empty:
            pytest.fail("the surviving rank hung past its timeout")
        finally:
            for p in procs:
                p.kill()
                p.join(5)
    assert rank == 0
    assert what != "finished", "rank 0 cannot finish a ring without rank 1"
    assert waited <= TIMEOUT_S + 5, f"rank 0 took {waited:.1f}s to fail ({what})"
