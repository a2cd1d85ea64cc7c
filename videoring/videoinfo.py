"""Probe a video file: what it holds, with times counted rather than trusted.

Containers lie (a frame count of 0, a missing duration, a header written
before the file was cut short), so ``probe`` demuxes the whole video stream
once -- packets only, no decoding, about 1 s per hour of video -- and derives
the frame count, the exact presentation timestamps and the keyframe positions
from the packets themselves. It decodes one frame to learn the rotation, the
pixel format and that the codec really decodes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import VideoError

__all__ = ["VideoInfo", "probe"]

# Containers whose packet pts follow decode order rather than presentation order.
_PTS_IN_DECODE_ORDER = {"avi"}


@dataclass(frozen=True)
class VideoInfo:
    """What one video file holds (the first video stream).

    Sizes are as displayed: ``width``/``height`` already account for
    ``rotation``. Timestamps are seconds from the first frame's presentation
    time.
    """

    path: str
    duration_s: float
    """From the first frame's start to the last frame's end (counted, not the header's)."""
    fps: float
    """Nominal frame rate (the stream's average/guessed rate)."""
    avg_fps: float
    """frames / duration_s: what the stream really delivers (VFR files differ from ``fps``)."""
    frames: int
    """Number of frames found by demuxing every packet of the stream."""
    width: int
    height: int
    rotation: int
    """Display rotation in degrees, as FFmpeg reports it (counter-clockwise; -90 = turn clockwise)."""
    codec: str
    pix_fmt: str
    container: str
    has_audio: bool
    header_frames: int
    """Frame count written in the container header (0 when absent); differs from ``frames`` when it lies."""
    truncated: bool
    """Demuxing stopped on an error before the end of the file."""
    timestamps_exact: bool
    """False for streams without timestamps (raw .h264): times are then index / fps."""
    index_by_pts: bool
    """Decoded frames can be matched to indices by their pts, so the reader may seek.
    False for AVI (packet pts are in decode order) and raw streams: frames are then
    counted in output order and read without seeking."""
    timestamps: np.ndarray = field(repr=False, compare=False)
    """(frames,) float64 presentation times in seconds, increasing."""
    pts: np.ndarray = field(repr=False, compare=False)
    """(frames,) int64 presentation timestamps in ``time_base`` units (what the decoder reports)."""
    time_base: Fraction
    keyframes: np.ndarray = field(repr=False, compare=False)
    """Sorted frame indices of keyframes (seek points)."""
    stream_index: int = 0
    coded_width: int = 0
    coded_height: int = 0

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-frame arrays)."""
        d = asdict(self)
        d.pop("timestamps")
        d.pop("keyframes")
        d.pop("pts")
        d["time_base"] = str(self.time_base)
        return d


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(str(path), "no such file; check the path")
    if not path.is_file():
        raise VideoError(str(path), "not a regular file (a directory?); pass a video file")
    if path.stat().st_size == 0:
        raise VideoError(str(path), "empty file (0 bytes); the download or copy did not finish")


def open_container(path: str | os.PathLike):
    """``av.open`` with the failure turned into a one-line VideoError."""
    import av

    p = Path(path)
    _check_file(p)
    try:
        return av.open(str(p), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(str(p), f"not a video FFmpeg can read ({_ff_reason(e)})") from None


def _ff_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:200]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's properties; raise :class:`VideoError` if it cannot be decoded."""
    import av

    p = str(path)
    container = open_container(p)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(p, f"no video stream (streams: {', '.join(kinds)}); pass a file with video")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        # the codec's canonical name ("av1"), not the decoder library's ("libdav1d")
        codec = getattr(ctx.codec, "canonical_name", None) or ctx.name if ctx is not None else "unknown"
        if ctx is None or codec in ("", "none"):
            raise VideoError(p, "unsupported video codec: FFmpeg has no decoder for it")
        header_frames = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        nominal_fps = float(rate) if rate else 0.0
        tb = stream.time_base or Fraction(1, 90000)
        has_audio = bool(container.streams.audio)

        pts_list: list[int] = []
        key_pts: list[int] = []
        durations: list[int] = []
        n_packets = 0
        truncated = False
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the flush packet PyAV yields at the end
                n_packets += 1
                if packet.pts is not None:
                    pts_list.append(packet.pts)
                    if packet.duration:
                        durations.append(packet.duration)
                    if packet.is_keyframe:
                        key_pts.append(packet.pts)
        except av.error.FFmpegError:
            truncated = True
        truncated = truncated or header_frames > n_packets
        if n_packets == 0:
            raise VideoError(p, "the video stream has no frames (0 packets); the file holds no picture data")

        container.close()
        container = open_container(p)  # a fresh demuxer: raw streams cannot seek back to 0
        first = _first_frame(container, container.streams.video[0], p)
        rotation = int(round(first.rotation or 0)) if hasattr(first, "rotation") else 0
        coded_w, coded_h = first.width, first.height
        if coded_w <= 0 or coded_h <= 0:
            raise VideoError(p, f"absurd frame size {coded_w}x{coded_h}")

        exact = len(pts_list) == n_packets and len(set(pts_list)) == n_packets
        if exact:
            pts = np.sort(np.asarray(pts_list, dtype=np.int64))
            t0 = pts[0]
            timestamps = (pts - t0).astype(np.float64) * float(tb)
            step = np.median(np.diff(pts)) if len(pts) > 1 else (durations[-1] if durations else 0)
            last_dur = durations[-1] if durations else step
            duration_s = float((pts[-1] - t0 + (last_dur or 0)) * tb)
            kpos = np.searchsorted(pts, np.asarray(sorted(set(key_pts)), dtype=np.int64))
            keyframes = np.unique(np.concatenate([[0], kpos])).astype(np.int64)
        else:
            # No usable timestamps (raw elementary stream): fall back to the nominal rate.
            fps = nominal_fps or 25.0
            timestamps = np.arange(n_packets, dtype=np.float64) / fps
            duration_s = n_packets / fps
            keyframes = np.zeros(1, dtype=np.int64)
            pts = np.arange(n_packets, dtype=np.int64)
        if duration_s <= 0:
            duration_s = float(timestamps[-1]) + (1.0 / nominal_fps if nominal_fps else 0.0)
        if not nominal_fps:
            nominal_fps = n_packets / duration_s if duration_s > 0 else 0.0

        w, h = (coded_h, coded_w) if rotation % 180 else (coded_w, coded_h)
        return VideoInfo(
            path=p,
            duration_s=duration_s,
            fps=nominal_fps,
            avg_fps=n_packets / duration_s if duration_s > 0 else nominal_fps,
            frames=n_packets,
            width=w,
            height=h,
            rotation=rotation,
            codec=codec,
            pix_fmt=first.format.name,
            container=container.format.name,
            has_audio=has_audio,
            header_frames=header_frames,
            truncated=truncated,
            timestamps_exact=exact,
            index_by_pts=exact and not truncated and container.format.name not in _PTS_IN_DECODE_ORDER,
            timestamps=timestamps,
            pts=pts,
            time_base=Fraction(tb) if exact else Fraction(1, 1),
            keyframes=keyframes,
            stream_index=stream.index,
            coded_width=coded_w,
            coded_height=coded_h,
        )
    finally:
        container.close()


def _first_frame(container, stream, path: str):
    """Decode the first frame: proves the codec decodes and gives rotation and format."""
    import av

    errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError:
                errors += 1
                if errors > 32:
                    break
                continue
            if frames:
                return frames[0]
    except av.error.FFmpegError as e:
        raise VideoError(path, f"corrupt video stream: no frame decodes ({_ff_reason(e)})") from None
    raise VideoError(path, "corrupt or unsupported video stream: no frame decodes")
