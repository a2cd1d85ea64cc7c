"""Streaming memory stays flat with video length (peak RSS, measured in a fresh process)."""

from __future__ import annotations

import subprocess
import sys

from videoring.synth import synthesize

CODE = """
import resource, sys
from videoring.source import VideoSource
from videoring.sampling import Sampling
src = VideoSource(sys.argv[1])
n = 0
for chunk in src.read({"track": Sampling(fps=5.0), "encode": Sampling(fps=1.0)}, chunk_size=32):
    n += len(chunk)
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CODE, str(path)], capture_output=True, text=True, check=True).stdout
    n, rss = out.split()
    return int(n), int(rss)


def test_peak_rss_flat_from_2_to_10_minutes(tmp_path):
    short, long = tmp_path / "2min.mp4", tmp_path / "10min.mp4"
    synthesize(short, seed=1, duration_s=120, fps=10, size=(160, 120))
    synthesize(long, seed=1, duration_s=600, fps=10, size=(160, 120))
    n_short, rss_short = _peak_kib(short)
    n_long, rss_long = _peak_kib(long)
    assert (n_short, n_long) == (600, 3000)
    assert rss_long <= 1.10 * rss_short, (rss_short, rss_long)
