"""A native crash or hang in a child becomes a VideoError; the caller survives."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from videoring.errors import VideoError
from videoring.isolate import IsolatedWorker, iter_isolated
from videoring.source import VideoSource

from . import isolate_helpers as h


def test_worker_survives_crash_and_hang():
    with IsolatedWorker() as w:
        assert w.call(h.double, 21, timeout=60) == 42
        with pytest.raises(VideoError, match="crashed.*signal 11"):
            w.call(h.segfault, timeout=60, path="bad.mp4")
        t = time.monotonic()
        with pytest.raises(VideoError, match="did not answer within 1s"):
            w.call(h.hang, timeout=1, path="slow.mp4")
        assert time.monotonic() - t < 10
        assert w.call(h.double, 2, timeout=60) == 4  # restarted for the next call


def test_iter_isolated_streams_and_reports_crash():
    gen = iter_isolated(h.gen_ok, (3,), timeout=60)
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            assert stop.value == ["done"]
            break
    assert items == [0, 1, 2]
    got = []
    with pytest.raises(VideoError, match="crashed"):
        for x in iter_isolated(h.gen_then_crash, (2,), timeout=60, path="x.mp4"):
            got.append(x)
    assert got == [0, 1]  # what was decoded before the crash reached the caller


def test_isolated_reading_returns_the_same_frames(lossless_clip):
    a = VideoSource(lossless_clip).read_all()
    b = VideoSource(lossless_clip, isolate=True).read_all()
    assert np.array_equal(a.images, b.images) and np.array_equal(a.timestamps, b.timestamps)


def test_isolated_reading_passes_problems_back(real_videos):
    src = VideoSource(real_videos / "corrupted_h264_decord.mp4", isolate=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = src.read_all()
    assert len(got) == 49
    msgs = " | ".join(str(c.message) for c in caught)
    assert "corrupt packet" in msgs and "frames 30..30" in msgs
