"""VideoSource: decode a video once, sample it by time, stream it in chunks.

Frames come out as RGB uint8 ``(N, H, W, 3)`` arrays, rotation applied, each
with its exact presentation timestamp (seconds) and frame index. Several
consumers (the tracker at 10 fps, the encoder at 1 fps) share one decode pass:
every chunk carries, per consumer, a mask of the frames that are its own.

Backends (same frames, same timestamps; tested against each other):

- ``pyav``: FFmpeg through PyAV. Reads everything FFmpeg reads, survives
  corrupt packets and truncated files, seeks to keyframes to skip long gaps.
- ``decord``: decord's reader. Used only on files it handles correctly
  (checked against the probe: same frame count and size, no rotation quirks).
- ``opencv``: OpenCV's FFmpeg reader, sequential.
- ``auto``: picks by access pattern from the measured table in
  docs/benchmarks.md (see :func:`choose_backend`).

Memory is bounded by ``chunk_size`` frames whatever the video length.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping

import numpy as np

from .errors import DecodeWarning, VideoError
from .isolate import iter_isolated
from .videoinfo import VideoInfo, _ff_reason, open_container, probe
from .sampling import Sampling, SamplingPlan, plan

__all__ = ["FrameChunk", "VideoSource", "Backend", "choose_backend"]

Backend = Literal["auto", "pyav", "decord", "opencv"]
BACKENDS = ("auto", "pyav", "decord", "opencv")

# Seek instead of decoding through when the next wanted frame lies beyond a
# keyframe this many frames ahead (seek + decode-from-keyframe is cheaper).
_SEEK_MIN_GAP = 16


@dataclass
class FrameChunk:
    """A run of decoded frames, in presentation order."""

    images: np.ndarray
    """(N, H, W, 3) uint8 RGB."""
    timestamps: np.ndarray
    """(N,) float64 seconds from the first frame."""
    indices: np.ndarray
    """(N,) int64 frame indices in presentation order."""
    members: dict[str, np.ndarray]
    """Per consumer, (N,) bool: which frames it asked for."""

    def __len__(self) -> int:
        return int(self.indices.size)

    def select(self, consumer: str) -> "FrameChunk":
        """The frames of one consumer (a view-free copy of only its frames)."""
        m = self.members[consumer]
        return FrameChunk(self.images[m], self.timestamps[m], self.indices[m], {consumer: np.ones(int(m.sum()), bool)})

    @staticmethod
    def concat(chunks: list["FrameChunk"]) -> "FrameChunk":
        if not chunks:
            return FrameChunk(np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64), {})
        keys = chunks[0].members.keys()
        return FrameChunk(
            np.concatenate([c.images for c in chunks]),
            np.concatenate([c.timestamps for c in chunks]),
            np.concatenate([c.indices for c in chunks]),
            {k: np.concatenate([c.members[k] for c in chunks]) for k in keys},
        )


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    # FFmpeg's display rotation is counter-clockwise; np.rot90's k>0 is too.
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def choose_backend(info: VideoInfo, n_wanted: int) -> str:
    """The backend for this file and access pattern, from measurements.

    docs/benchmarks.md (pipelines/bench_decode.py) measured on this class of
    machine: PyAV with frame threads is the fastest for dense decoding and,
    with keyframe seeking, for sparse sampling too; decord is never faster
    and mis-reads several real files (AVI timestamps, multi-stream files,
    AV1, raw streams). So ``auto`` is PyAV.
    """
    del info, n_wanted
    return "pyav"


class VideoSource:
    """One video file, probed once, read in time-sampled chunks.

    >>> src = VideoSource("clip.mp4")
    >>> for chunk in src.read({"track": Sampling(fps=10), "encode": Sampling(fps=1)}):
    ...     track_frames = chunk.select("track")
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        backend: Backend = "auto",
        threads: int = 0,
        info: VideoInfo | None = None,
        isolate: bool = False,
        timeout_s: float = 120.0,
    ) -> None:
        if backend not in BACKENDS:
            raise VideoError(str(path), f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.path = str(path)
        self.backend = backend
        self.threads = threads
        self.isolate = isolate
        """Decode in a child process: a native crash or hang becomes a VideoError (costs a copy per frame)."""
        self.timeout_s = timeout_s
        """With ``isolate``: seconds without a new chunk before the decoder counts as hung."""
        self.info = info if info is not None else probe(self.path)
        self.problems: list[str] = []
        """What went wrong while decoding (also emitted as DecodeWarning)."""

    def plan(self, samplers: Mapping[str, Sampling] | Sampling) -> SamplingPlan:
        if isinstance(samplers, Sampling):
            samplers = {"frames": samplers}
        return plan(self.info.timestamps, samplers)

    def read(self, samplers: Mapping[str, Sampling] | Sampling = Sampling(), *, chunk_size: int = 32) -> Iterator[FrameChunk]:
        """Yield chunks of at most ``chunk_size`` frames covering the samplers' frames, in order."""
        return self.read_plan(self.plan(samplers), chunk_size=chunk_size)

    def read_plan(self, p: SamplingPlan, *, chunk_size: int = 32) -> Iterator[FrameChunk]:
        """Yield the frames of an explicit plan (sorted frame indices + consumer masks)."""
        if len(p) == 0:
            return
        backend = choose_backend(self.info, len(p)) if self.backend == "auto" else self.backend
        self.problems = []
        args = (self.info, p.indices, backend, self.threads, chunk_size)
        if self.isolate:
            runs = iter_isolated(_decode_runs_child, args, timeout=self.timeout_s, path=self.path)
        else:
            runs = _decode_runs(*args, self.problems)
        got = np.zeros(len(p), dtype=bool)
        while True:
            try:
                pos, images = next(runs)
            except StopIteration as stop:
                if self.isolate:
                    self.problems += stop.value  # the child's problem list
                break
            got[pos] = True
            yield FrameChunk(images, self.info.timestamps[p.indices[pos]], p.indices[pos], {k: m[pos] for k, m in p.members.items()})
        if not got.all():
            miss = p.indices[~got]
            t = self.info.timestamps
            self.problems.append(
                f"{miss.size} of {len(p)} requested frames could not be decoded "
                f"(frames {miss[0]}..{miss[-1]}, t={t[miss[0]]:.3f}..{t[miss[-1]]:.3f}s)"
            )
        for msg in self.problems:
            warnings.warn(f"{self.path}: {msg}", DecodeWarning, stacklevel=2)

    def read_all(self, sampling: Sampling = Sampling()) -> FrameChunk:
        """All frames of one sampling in one chunk (short clips and tests only)."""
        return FrameChunk.concat(list(self.read(sampling)))


def _decode_runs(
    info: VideoInfo, indices: np.ndarray, backend: str, threads: int, chunk_size: int, problems: list
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions into ``indices``, (n, H, W, 3) images) runs of <= chunk_size, rotation applied."""
    pos_of = {int(i): n for n, i in enumerate(indices)}
    imgs: list[np.ndarray] = []
    pos: list[int] = []
    for index, img in _DECODERS[backend](info, indices, threads, problems):
        imgs.append(_rotate(img, info.rotation))
        pos.append(pos_of[index])
        if len(imgs) == chunk_size:
            yield np.asarray(pos, dtype=np.int64), np.stack(imgs)
            imgs, pos = [], []
    if imgs:
        yield np.asarray(pos, dtype=np.int64), np.stack(imgs)


def _decode_runs_child(info, indices, backend, threads, chunk_size):
    """In the isolated child: the runs, then (as the generator's return value) the problems."""
    problems: list[str] = []
    yield from _decode_runs(info, indices, backend, threads, chunk_size, problems)
    return problems


# --------------------------------------------------------------------------- backends
DecodeFn = Callable[[VideoInfo, np.ndarray, int, list], Iterator[tuple[int, np.ndarray]]]


def _decode_pyav(info: VideoInfo, wanted: np.ndarray, threads: int, problems: list) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``wanted`` frame indices (sorted) with PyAV; convert only those."""
    import av

    container = open_container(info.path)
    W, H = info.coded_width, info.coded_height
    decode_errors = 0
    size_changed = False
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        pts_arr = info.pts
        n_frames = info.frames
        seekable = info.index_by_pts
        keyframes = info.keyframes
        pos = 0  # position in `wanted`
        counter = -1  # index of the last decoded frame when timestamps are absent
        first_error_t: float | None = None
        last_index = -1
        last_seek = -1  # never seek to the same keyframe twice (frames lag packets)

        def index_of(frame) -> int:
            nonlocal counter
            if not info.index_by_pts:
                counter += 1  # never seeks in this mode: output order = presentation order
                return counter
            i = int(np.searchsorted(pts_arr, frame.pts))
            return i if i < n_frames and pts_arr[i] == frame.pts else -1

        def seek_target(next_wanted: int) -> int | None:
            """Keyframe to seek to before ``next_wanted``, if that beats decoding through."""
            if not seekable:
                return None
            k = int(keyframes[np.searchsorted(keyframes, next_wanted, side="right") - 1])
            return k if k > max(last_index, last_seek) + _SEEK_MIN_GAP else None

        while pos < wanted.size:
            k = seek_target(int(wanted[pos]))
            if k is not None:
                last_seek = k
                container.seek(int(pts_arr[k]), stream=stream, backward=True, any_frame=False)
            reseek = False
            demux_failed: str | None = None
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    demux_failed = _ff_reason(e)
                    packet = None  # flush the decoder: frames still inside it are good
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError:
                    decode_errors += 1
                    if first_error_t is None:
                        first_error_t = info.timestamps[min(max(last_index, 0), n_frames - 1)]
                    if packet is None:
                        frames = []
                    else:
                        continue
                for frame in frames:
                    idx = index_of(frame)
                    if idx < 0:
                        continue
                    last_index = max(last_index, idx)
                    while pos < wanted.size and wanted[pos] < idx:
                        pos += 1  # a wanted frame never came out (corrupt): skip it
                    if pos < wanted.size and wanted[pos] == idx:
                        if (frame.width, frame.height) != (W, H):
                            size_changed = True
                        yield idx, frame.to_ndarray(format="rgb24", width=W, height=H)
                        pos += 1
                    if pos >= wanted.size:
                        return
                if demux_failed is not None:
                    break
                if pos < wanted.size and seek_target(int(wanted[pos])) is not None:
                    reseek = True
                    break
            if demux_failed is not None:
                problems.append(
                    f"decoding stopped at t={info.timestamps[max(last_index, 0)]:.3f}s "
                    f"(frame {last_index}): {demux_failed}; the file is truncated or corrupt"
                )
                break
            if not reseek:
                break
    finally:
        # also on early return / close, so the caller always learns what went wrong
        if decode_errors:
            problems.append(f"{decode_errors} corrupt packet(s) skipped, the first near t={first_error_t:.3f}s")
        if size_changed:
            problems.append(f"frame size changes mid-stream; frames were scaled to {W}x{H}")
        container.close()


def _decode_decord(info: VideoInfo, wanted: np.ndarray, threads: int, problems: list) -> Iterator[tuple[int, np.ndarray]]:
    """decord's batched reader; refuses files where decord disagrees with the probe."""
    import decord

    if info.rotation:
        # decord applies some display matrices itself and not others: refuse rather than guess
        raise VideoError(info.path, f"decord's rotation handling differs (rotation {info.rotation}); use backend='pyav'")
    try:
        vr = decord.VideoReader(info.path, ctx=decord.cpu(0), num_threads=threads)
    except decord.DECORDError as e:
        raise VideoError(info.path, f"decord cannot read this file ({str(e).splitlines()[0][:120]}); use backend='pyav'") from None
    shape = vr[0].shape
    if len(vr) != info.frames or shape[:2] != (info.coded_height, info.coded_width):
        raise VideoError(
            info.path,
            f"decord reads {len(vr)} frames of {shape[1]}x{shape[0]}, the probe {info.frames} of "
            f"{info.coded_width}x{info.coded_height} (another stream or a broken index); use backend='pyav'",
        )
    step = 32
    for s in range(0, wanted.size, step):
        idx = wanted[s : s + step]
        try:
            batch = vr.get_batch(idx.tolist()).asnumpy()
        except decord.DECORDError as e:
            problems.append(f"decord failed near frame {int(idx[0])}: {str(e).splitlines()[0][:120]}")
            return
        for i, img in zip(idx.tolist(), batch):
            yield i, img


def _decode_opencv(info: VideoInfo, wanted: np.ndarray, threads: int, problems: list) -> Iterator[tuple[int, np.ndarray]]:
    """OpenCV's FFmpeg capture, read sequentially (grab() skips colour conversion of unwanted frames)."""
    import cv2

    cap = cv2.VideoCapture(info.path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise VideoError(info.path, "OpenCV cannot open this file; use backend='pyav'")
    try:
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # rotation is applied once, by VideoSource
        if threads:
            cv2.setNumThreads(threads)
        last = int(wanted[-1])
        pos = 0
        for i in range(last + 1):
            if i == wanted[pos]:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                pos += 1
            elif not cap.grab():
                break
        else:
            return
        problems.append(f"OpenCV stopped reading at frame {i} of {info.frames}")
    finally:
        cap.release()


_DECODERS: dict[str, DecodeFn] = {"pyav": _decode_pyav, "decord": _decode_decord, "opencv": _decode_opencv}
