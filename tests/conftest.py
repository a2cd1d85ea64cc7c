"""Shared fixtures: the real clips in ../shared/real_videos and small synthetic clips."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NETLOG = Path(os.environ.setdefault("VIDEORING_NET_LOG", str(Path(__import__("tempfile").mkdtemp()) / "net.log")))
# every Python process the tests start (CLI runs, spawned ranks) loads tests/netguard/sitecustomize.py
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "netguard"), *filter(None, [os.environ.get("PYTHONPATH")])])
import sys as _sys  # noqa: E402

_sys.path.insert(0, str(ROOT / "tests" / "netguard"))
import sitecustomize  # noqa: E402,F401  (the guard, in this process too)
REAL_VIDEOS = Path(os.environ.get("VIDEORING_REAL_VIDEOS", ROOT.parent / "shared" / "real_videos"))


def manifest() -> list[dict]:
    path = REAL_VIDEOS / "MANIFEST.tsv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def real_videos() -> Path:
    if not (REAL_VIDEOS / "MANIFEST.tsv").exists():
        pytest.fail(f"real clips not found at {REAL_VIDEOS}; set VIDEORING_REAL_VIDEOS")
    return REAL_VIDEOS


@pytest.fixture(scope="session")
def lossless_clip(tmp_path_factory) -> Path:
    """12 s, 160x120, 10 fps, lossless RGB: frames must decode bit-exact."""
    from videoring.synth import synthesize

    out = tmp_path_factory.mktemp("clips") / "lossless.mp4"
    synthesize(out, seed=5, duration_s=12.0, fps=10.0, size=(160, 120), lossless=True)
    return out


LOSSLESS_ARGS = dict(seed=5, duration_s=12.0, fps=10.0, size=(160, 120))


@pytest.fixture(scope="session", autouse=True)
def no_network_access():
    """Fails the run if any test process tried to reach the network (DNS or connect)."""
    yield
    attempts = _NETLOG.read_text().splitlines() if _NETLOG.exists() else []
    assert not attempts, "network access attempted during tests:\n" + "\n".join(attempts[:10])
