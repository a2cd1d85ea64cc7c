"""Every clip in ../shared/real_videos: probe and decode against MANIFEST.tsv."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from videoring.errors import DecodeWarning
from videoring.videoinfo import probe
from videoring.sampling import Sampling
from videoring.source import VideoSource

from .conftest import manifest

ROWS = manifest()
BROKEN = {r["file"] for r in ROWS if "BROKEN" in r["notes"]}


def _row_id(r: dict) -> str:
    return r["file"]


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_probe_and_decode_match_manifest(row, real_videos):
    path = real_videos / row["file"]
    info = probe(path)
    w, h = int(row["width"]), int(row["height"])
    # MANIFEST sizes are coded sizes; the probe reports displayed sizes (rotation applied)
    assert {info.width, info.height} == {w, h}
    if abs(info.rotation) % 180 == 90:
        assert (info.width, info.height) == (h, w)
    assert abs(info.fps - float(row["fps"])) <= 0.01 * float(row["fps"])
    n_manifest = int(row["frames"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = VideoSource(path, info=info, backend="pyav")
        n = 0
        for chunk in src.read(Sampling(), chunk_size=64):
            n += len(chunk)
            assert chunk.images.dtype == np.uint8 and chunk.images.shape[1:] == (info.height, info.width, 3)
            assert np.all(np.diff(chunk.timestamps) > 0)
    if row["file"] in BROKEN:
        # partial frames plus a warning that says where decoding stopped
        assert any(issubclass(c.category, DecodeWarning) and "t=" in str(c.message) for c in caught)
        # frame threading may lose the frames in flight at the broken packet (<= 3 here)
        assert n_manifest - 3 <= n <= n_manifest
        assert info.truncated or info.frames > n
    else:
        assert info.frames == n_manifest  # counted exactly, even when the header has no count
        assert n == n_manifest
        expected = 1 if "RESOLUTION CHANGES" in row["notes"] else 0  # the size-change warning
        assert len([c for c in caught if issubclass(c.category, DecodeWarning)]) == expected
    dur = (row["duration"].lstrip("~").split() or [""])[0]
    if dur and row["file"] not in BROKEN and "RAW" not in row["notes"]:
        assert abs(info.duration_s - float(dur)) <= 1.5 / info.fps + 1e-6


def test_rotation_is_applied(real_videos):
    info = probe(real_videos / "rot90_keyboard_3f_decord.mov")
    assert info.rotation == -90 and (info.width, info.height) == (320, 568)
    frames = VideoSource(info.path, info=info).read_all()
    assert frames.images.shape == (3, 568, 320, 3)


def test_vfr_timestamps_are_the_streams(real_videos):
    info = probe(real_videos / "vfr_synthetic_torchcodec.mp4")
    dt = np.diff(info.timestamps)
    assert dt.min() < 0.04 and dt.max() > 0.5  # MANIFEST: frame dt 0.0333..0.5333 s
    got = VideoSource(info.path, info=info).read_all(Sampling(fps=1.0))
    # the frame on screen at each whole second
    for t, ts in zip(range(len(got)), got.timestamps):
        assert ts <= t + 1e-9
        nxt = info.timestamps[np.searchsorted(info.timestamps, ts, side="right")] if ts < info.timestamps[-1] else np.inf
        assert nxt > t


def test_multistream_reads_the_first_video_stream(real_videos):
    info = probe(real_videos / "nasa_multistream_torchcodec.mp4")
    assert (info.width, info.height, info.frames) == (320, 180, 325)


def test_resolution_change_is_scaled_with_warning(real_videos):
    src = VideoSource(real_videos / "res_change_848x464_to_424x232_vpf.h264")
    with pytest.warns(DecodeWarning, match="size changes"):
        got = src.read_all()
    assert got.images.shape == (96, 464, 848, 3)
    assert not src.info.timestamps_exact


CLEAN = ["k400_arm_wrestling_mmaction2.mp4", "vfr_synthetic_torchcodec.mp4", "ntu_A001_drink_water_h264.avi",
         "unordered_pts_4f_decord.mov", "hevc_synthetic_frame_numbers_torchcodec.mp4", "derived_oddsize_321x181_vp9_people.webm"]


@pytest.mark.parametrize("name", CLEAN)
@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_backends_agree_on_real_clips(real_videos, name, backend):
    ref = VideoSource(real_videos / name, backend="pyav").read_all()
    got = VideoSource(real_videos / name, backend=backend).read_all()
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.timestamps, ref.timestamps)
    diff = np.abs(got.images.astype(np.int16) - ref.images.astype(np.int16))
    if "oddsize" in name:
        # odd width/height: the readers round the subsampled chroma plane differently at the edge
        assert diff.mean() < 0.5
    else:
        assert diff.max() == 0  # same FFmpeg decoder and colour conversion: bit-exact


def test_decord_refuses_what_it_misreads(real_videos):
    from videoring.errors import VideoError

    for name in ["nasa_multistream_torchcodec.mp4", "rot90_keyboard_3f_decord.mov"]:
        with pytest.raises(VideoError, match="backend='pyav'"):
            VideoSource(real_videos / name, backend="decord").read_all()


def test_manifest_lists_the_real_clips(real_videos):
    # without it the parametrized test above would silently collect nothing
    assert len(ROWS) >= 25
    for row in ROWS:
        assert (real_videos / row["file"]).exists(), row["file"]
