"""Decoding and sampling against exact references (lossless synthetic frames)."""

from __future__ import annotations

import numpy as np
import pytest

from videoring import source as source_mod
from videoring.errors import ConfigError
from videoring.sampling import Sampling, plan, select_indices
from videoring.source import VideoSource
from videoring.synth import render_frames

from .conftest import LOSSLESS_ARGS


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.stack(list(render_frames(**LOSSLESS_ARGS)))


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv", "auto"])
def test_every_backend_decodes_exact_frames_and_timestamps(lossless_clip, reference, backend):
    src = VideoSource(lossless_clip, backend=backend)
    got = src.read_all()
    assert got.images.shape == reference.shape
    assert np.array_equal(got.images, reference)
    # frames were written at pts = i / 10 s: timestamps are exact multiples
    np.testing.assert_array_equal(got.indices, np.arange(120))
    np.testing.assert_allclose(got.timestamps, np.arange(120) / 10.0, rtol=0, atol=1e-9)
    assert src.problems == []


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
def test_fps_range_stride_sampling_exact(lossless_clip, reference, backend):
    s = Sampling(fps=2.0, start_s=3.0, end_s=9.0, stride=2, max_frames=5)
    got = VideoSource(lossless_clip, backend=backend).read_all(s)
    # 2 fps on a 10 fps clip from 3 s to 9 s: t = 3.0, 3.5, ..., 8.5 -> frames 30, 35, ..., 85;
    # stride 2 -> 30, 40, 50, 60, 70, 80; max 5 -> 30..70
    np.testing.assert_array_equal(got.indices, [30, 40, 50, 60, 70])
    np.testing.assert_allclose(got.timestamps, [3.0, 4.0, 5.0, 6.0, 7.0], atol=1e-9)
    assert np.array_equal(got.images, reference[[30, 40, 50, 60, 70]])


def test_sparse_sampling_seeks_and_stays_exact(lossless_clip, reference):
    # keyframes every 2 s (20 frames): 0.5 fps wants every 20th frame, so the reader seeks
    got = VideoSource(lossless_clip, backend="pyav").read_all(Sampling(fps=0.5))
    np.testing.assert_array_equal(got.indices, np.arange(0, 120, 20))
    assert np.array_equal(got.images, reference[::20])


def test_time_sampling_follows_real_timestamps_on_vfr():
    ts = np.array([0.0, 0.1, 0.15, 0.6, 0.65, 1.2, 2.0])  # variable frame rate
    # at 2 fps: t=0, 0.5, 1.0, 1.5 -> frames on screen: 0 (0.0), 2 (0.15), 4 (0.65), 5 (1.2); 2.0 -> 6
    np.testing.assert_array_equal(select_indices(ts, Sampling(fps=2.0)), [0, 2, 4, 5, 6])
    # faster than the video: every frame once, no duplicates
    np.testing.assert_array_equal(select_indices(ts, Sampling(fps=100.0)), np.arange(7))
    np.testing.assert_array_equal(select_indices(ts, Sampling(start_s=0.6, end_s=1.2)), [3, 4])


def test_long_video_time_grid_does_not_drift():
    ts = np.arange(36000 * 3) / 30.0  # an hour at 30 fps
    idx = select_indices(ts, Sampling(fps=1.0))
    assert idx.size == 3600
    np.testing.assert_array_equal(idx, np.arange(3600) * 30)


def test_two_consumers_share_one_decode_pass(lossless_clip, reference, monkeypatch):
    calls, decoded = [], []
    real = source_mod._DECODERS["pyav"]

    def counting(info, wanted, threads, problems):
        calls.append(wanted.copy())
        for i, img in real(info, wanted, threads, problems):
            decoded.append(i)
            yield i, img

    monkeypatch.setitem(source_mod._DECODERS, "pyav", counting)
    src = VideoSource(lossless_clip, backend="pyav")
    want = {"track": Sampling(fps=5.0), "encode": Sampling(fps=1.0)}
    chunks = list(src.read(want, chunk_size=7))
    assert len(calls) == 1  # one pass for both consumers
    assert len(decoded) == len(set(decoded)) == 60  # each frame converted once; 1 fps frames are a subset
    track = np.concatenate([c.select("track").indices for c in chunks])
    enc = np.concatenate([c.select("encode").indices for c in chunks])
    np.testing.assert_array_equal(track, np.arange(0, 120, 2))
    np.testing.assert_array_equal(enc, np.arange(0, 120, 10))
    enc_imgs = np.concatenate([c.select("encode").images for c in chunks])
    assert np.array_equal(enc_imgs, reference[::10])
    assert max(len(c) for c in chunks) <= 7


def test_plan_masks_partition_the_union():
    ts = np.arange(100) / 10.0
    p = plan(ts, {"a": Sampling(fps=3.0), "b": Sampling(fps=1.0, start_s=2.5)})
    assert np.all(np.diff(p.indices) > 0)
    assert np.all(p.members["a"] | p.members["b"])


@pytest.mark.parametrize(
    "kwargs, field",
    [({"fps": 0}, "fps"), ({"fps": float("nan")}, "fps"), ({"start_s": -1}, "start_s"),
     ({"start_s": 5, "end_s": 2}, "end_s"), ({"stride": 0}, "stride"), ({"max_frames": 0}, "max_frames")],
)
def test_bad_sampling_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Sampling(**kwargs)
