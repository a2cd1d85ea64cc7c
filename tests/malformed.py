"""Malformed inputs for the bad-input tests, written from a small valid clip."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path


def _patch_box(data: bytes, box: bytes, offset: int, value: bytes) -> bytes:
    i = data.find(box)
    assert i > 0, box
    b = bytearray(data)
    b[i + offset : i + offset + len(value)] = value
    return bytes(b)


def write_malformed(base: Path, out: Path) -> dict[str, bool]:
    """Files in ``out``; value: whether videoring should read it (True) or refuse it cleanly (False)."""
    import av
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    data = base.read_bytes()
    files: dict[str, tuple[bytes | None, bool]] = {
        "zero_bytes.mp4": (b"", False),
        "random_bytes.mp4": (np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(), False),
        "trunc10.mp4": (data[: len(data) // 10], False),
        "trunc50.mp4": (data[: len(data) // 2], False),
        "trunc90.mp4": (data[: len(data) * 9 // 10], False),
        "header_only.mp4": (data[:64], False),
        "png_renamed.mp4": (b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(200), False),
        # mvhd duration (version 0: 4 bytes at +24 from the type) claims ~13 years; the real frames still decode
        "absurd_duration.mp4": (_patch_box(data, b"mvhd", 20, b"\xff\xff\xff\xff"), True),
        # a y4m header claiming 16384x16384 with one tiny frame behind it
        "huge_header.y4m": (b"YUV4MPEG2 W16384 H16384 F10:1 Ip A1:1 C420\nFRAME\n" + bytes(1000), False),
    }
    for name, (content, _) in files.items():
        (out / name).write_bytes(content)
    # a video stream with no frames
    with av.open(str(out / "zero_frames.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    # a 1x1 video (lossless RGB)
    with av.open(str(out / "one_pixel.mkv"), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 1, 1, "bgr0"
        for i in range(20):
            f = av.VideoFrame.from_ndarray(np.full((1, 1, 3), i * 10, np.uint8), format="rgb24").reformat(format="bgr0")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    # audio only
    with av.open(str(out / "audio_only.m4a"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        s.time_base = Fraction(1, 16000)
        pts = 0
        for _ in range(20):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, pts
            pts += 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    expect = {name: ok for name, (_, ok) in files.items()}
    expect.update({"zero_frames.mp4": False, "one_pixel.mkv": True, "audio_only.m4a": False})
    return expect
