"""A seeded mutation fuzzer for the video readers.

Small valid clips are mutated (bit flips, byte runs, truncation, chunk
deletion/duplication, corrupted MP4 box sizes) and each mutant is probed and
fully decoded in an isolated worker process, with a timeout. Every case must
end as a result or a clean :class:`~videoring.errors.VideoError`; a native
crash or hang is contained in the worker (counted, and reported as a
VideoError to the caller), and anything else -- an unexpected exception type --
is a bug and counted as a failure.

    from videoring.fuzz import fuzz
    report = fuzz(n_cases=1000, seed=0, workdir="/tmp/fuzz")   # pipelines/fuzz_inputs.py
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, VideoError

__all__ = ["mutate", "fuzz", "FuzzReport"]

_BOXES = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"stsz", b"stco", b"stts", b"stss", b"avcC", b"mdat", b"mvhd", b"tkhd")
CASE_TIMEOUT_S = 30.0


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of ``data``: (its name, the mutant)."""
    b = bytearray(data)
    kind = ("bitflip", "bytes", "truncate", "delete", "duplicate", "boxsize")[int(rng.integers(6))]
    n = len(b)
    if kind == "bitflip":
        for pos in rng.integers(0, n, size=int(rng.integers(1, 16))):
            b[pos] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        pos, k = int(rng.integers(0, n)), int(rng.integers(1, 64))
        b[pos:pos + k] = rng.integers(0, 256, size=len(b[pos:pos + k]), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        b = b[: int(rng.integers(0, n))]
    elif kind == "delete":
        pos, k = int(rng.integers(0, n)), int(rng.integers(1, max(2, n // 10)))
        del b[pos:pos + k]
    elif kind == "duplicate":
        pos, k = int(rng.integers(0, n)), int(rng.integers(1, max(2, n // 10)))
        b[pos:pos] = b[pos:pos + k]
    else:  # the 4-byte size in front of an MP4 box type: zero, huge, off by some, random
        spots = [i - 4 for t in _BOXES for i in _find_all(data, t) if i >= 4]
        if not spots:
            return mutate(data, rng)
        pos = spots[int(rng.integers(len(spots)))]
        size = int.from_bytes(b[pos:pos + 4], "big")
        new = (0, 1, 0xFFFFFFFF, size + int(rng.integers(-64, 64)), int(rng.integers(0, 2**32)))[int(rng.integers(5))]
        b[pos:pos + 4] = (new % 2**32).to_bytes(4, "big")
    return kind, bytes(b)


def _find_all(data: bytes, sub: bytes) -> list[int]:
    out, i = [], data.find(sub)
    while i >= 0:
        out.append(i)
        i = data.find(sub, i + 1)
    return out


def _probe_and_decode(path: str) -> int:
    """In the worker: probe, then decode every frame; the frame count."""
    import warnings

    from .source import VideoSource

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = VideoSource(path)
        return sum(len(c.indices) for c in src.read(chunk_size=64))


@dataclass
class FuzzReport:
    cases: int = 0
    decoded: int = 0
    clean_errors: int = 0
    worker_crashes: int = 0
    timeouts: int = 0
    failures: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.cases} cases in {self.seconds:.0f} s: {self.decoded} decoded, {self.clean_errors} clean errors, "
                f"{self.worker_crashes} native crashes contained, {self.timeouts} timeouts, {len(self.failures)} failures")


def _base_clips(workdir: Path) -> list[bytes]:
    from .synth import synthesize

    out = []
    for name, kw in (("a.mp4", {}), ("b.mp4", {"lossless": True})):
        p = workdir / name
        if not p.exists():
            synthesize(p, seed=3, duration_s=2.0, fps=10.0, size=(64, 48), **kw)
        out.append(p.read_bytes())
    return out


def fuzz(n_cases: int, seed: int, workdir: str | Path, timeout_s: float = CASE_TIMEOUT_S) -> FuzzReport:
    from .isolate import IsolatedWorker

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    bases = _base_clips(work)
    rng = np.random.default_rng(seed)
    rep = FuzzReport()
    t0 = time.perf_counter()
    with IsolatedWorker() as worker:
        for i in range(n_cases):
            kind, data = mutate(bases[i % len(bases)], rng)
            path = work / f"case{i % 8}.mp4"
            path.write_bytes(data)
            rep.cases += 1
            rep.by_kind[kind] = rep.by_kind.get(kind, 0) + 1
            try:
                worker.call(_probe_and_decode, str(path), timeout=timeout_s, path=str(path))
                rep.decoded += 1
            except VideoError as e:
                reason = str(e)
                if "did not answer" in reason:
                    rep.timeouts += 1
                elif "crashed" in reason:
                    rep.worker_crashes += 1
                else:
                    rep.clean_errors += 1
            except ConfigError:
                rep.clean_errors += 1
            except Exception as e:  # noqa: BLE001  (a bug: reported, the run goes on)
                rep.failures.append(f"case {i} ({kind}, seed {seed}): {type(e).__name__}: {e}")
    rep.seconds = time.perf_counter() - t0
    return rep
