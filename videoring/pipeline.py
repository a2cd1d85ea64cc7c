"""The whole job: one decode pass -> tracks + frame tokens -> actor tokens -> ring temporal model -> actions.

    from videoring import Pipeline
    pipe = Pipeline.from_config("default", **{"track.fps": 5})
    result = pipe("match.mp4")            # Results (tracks, segments, track_actions)
    for partial in pipe.stream("match.mp4"):
        print(partial.summary())          # tracks so far; the last one has the actions

Per rank (W = 1 runs the same code): the encoder's 1-fps grid is cut into time
spans by the ring layout (:func:`videoring.engine.frame_pieces`). For each of
its spans a rank decodes, in ONE pass, the tracker's frames (from
``track.overlap_s`` before the span, for stitching) and the encoder's frames;
each chunk is detected + tracked, then encoded, and the actors' boxes at the
encoder frames are RoI-pooled from the patch grid while it is in memory.
Only tracks (a few numbers per box) are exchanged between ranks, to stitch
IDs; frame and actor tokens stay on their rank and meet through ring
attention. Rank 0 gathers the per-time-step and per-actor probabilities and
decodes them into results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .actions import ActionModel, decode, load_model, smooth
from .actors import DET_BOX, ActorTokens, ROW_COLS, kin_dim, kinematics, look_dim, neighbour_gap, pixel_stats, roi_features, thumbnails
from .arena import Arena
from .config import PipelineConfig, load_config
from .encoder import FrameEncoder
from .engine import frame_pieces
from .errors import ConfigError
from .results import ClipAction, Results, Track, VideoMeta
from .ring.comm import world_of
from .sampling import Sampling, SamplingPlan, select_indices
from .source import VideoSource
from .tracking import SPARE, Tracker, extend_tracks, link_tracklets, stitch
from .videoinfo import VideoInfo, probe

__all__ = ["Pipeline", "SpanData", "ModelInputs"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class SpanData:
    """What one time span yields from its decode pass (rows include the overlap before ``start_s``)."""

    start_s: float
    rows: np.ndarray
    """(N, ROW_COLS) local track rows: t, id, x1, y1, x2, y2, conf, cls, then per-box pixel and
    neighbour numbers, then the detection's own box (:data:`videoring.actors.ROW_COLS`); the
    detections no track took are rows too, with id ``SPARE``."""
    times: np.ndarray
    """(F,) encoder frame times (seconds)."""
    order: np.ndarray
    """(F,) positions in the global encoder grid."""
    tokens: Tensor
    """(F, P, C) frame tokens."""
    roi: list[dict[int, int]] = field(default_factory=list)
    """Per encoder frame: local track id -> its row of appearance features in ``store``."""
    store: Arena | None = None
    """The RoI appearance features (one store for all of a rank's spans)."""


@dataclass
class ModelInputs:
    """One rank's padded model input (B = 1)."""

    tokens: Tensor | None
    """(B, F, P, C); None once :meth:`ActionModel.infer` has embedded it (so are the actors)."""
    times: Tensor
    frame_mask: Tensor
    actors: ActorTokens | None
    """(B, F, A, actor_dim) fp16, unpadded."""
    actor_mask: Tensor
    actor_ids: np.ndarray
    """(F, A) global track id per slot, -1 = empty."""
    order: np.ndarray
    """(F_real,) global encoder positions of the real frames."""


def _resolve_config(path_or_name: str | Path | None) -> Path | None:
    if path_or_name is None:
        return None
    p = Path(path_or_name)
    if p.exists():
        return p
    named = CONFIG_DIR / f"{path_or_name}.yaml"
    if named.exists():
        return named
    raise ConfigError(f"config {path_or_name!r}: no such file or named config; names: "
                      + ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))))


class Pipeline:
    """Tracks, frame features and actions for whole videos; reusable across videos."""

    def __init__(self, cfg: PipelineConfig, group=None, *, load_weights: bool = True) -> None:
        self.cfg = cfg
        self.group = group
        self.rank, self.world = world_of(group)
        torch.manual_seed(cfg.seed)  # identical init on every rank (and for an unweighted encoder)
        self.encoder = FrameEncoder(cfg.encoder)
        self.model = ActionModel(cfg, self.encoder.dim, self.encoder.tokens_per_frame).eval()
        self.model_meta: dict = {}
        if load_weights and cfg.actions.model:
            self.model_meta = load_model(self.model, _shipped(cfg.actions.model))
        self._tracker: Tracker | None = None
        self.threads = cfg.threads or torch.get_num_threads()
        self.progress = False
        """Show a progress bar (video seconds done, ETA) while decoding."""
        self.last_info: VideoInfo | None = None
        self._state = None
        self._resume = False
        self.timings = StageClock()
        """Seconds per stage of the last video (decode = time waiting for decoded frames)."""

    @classmethod
    def from_config(cls, path_or_name: str | Path | None = "default", group=None, overrides: list[str] | None = None,
                    **kw) -> "Pipeline":
        """A YAML path or a name in configs/ ("default"), plus overrides: ``key=value`` strings
        and/or keywords with dots or double underscores (``**{"track.fps": 10}``, ``track__fps=10``)."""
        import json

        p = _resolve_config(path_or_name)
        cfg = load_config(p, [*(overrides or []), *(f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in kw.items())],
                          cls=PipelineConfig)
        return cls(cfg, group)

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.cfg.track, self.threads)
        return self._tracker

    # ------------------------------------------------------------------ public
    def __call__(self, video: str | Path, *, state_dir: str | Path | None = None, resume: bool = False,
                 info: VideoInfo | None = None) -> Results | None:
        """Results on rank 0 (None on other ranks)."""
        out = None
        for out in self.stream(video, state_dir=state_dir, resume=resume, info=info, partial=False):
            pass
        return out

    def stream(self, video: str | Path, gt_rows: np.ndarray | None = None, *, state_dir: str | Path | None = None,
               resume: bool = False, info: VideoInfo | None = None, partial: bool = True) -> Iterator[Results]:
        """Yield partial Results (tracks so far, this rank's span) after each decoded chunk;
        the last item is the final result (rank 0).

        ``state_dir``: checkpoint after every chunk there (:mod:`videoring.resume`);
        ``resume=True`` continues from the last checkpoint of the same video and config.
        The state is removed once the result is complete. ``info``: the video's probe,
        when the caller has it already. ``partial=False``: only the final result.
        """
        video = str(video)
        if not Path(video).exists():
            from .errors import VideoError

            raise VideoError(video, "file not found")
        self.timings = StageClock()
        if info is None:
            with self.timings("probe"):
                info = probe(video)
        self.last_info = info
        self._state, self._resume = None, resume
        if state_dir is not None:
            from .engine import video_hash
            from .resume import RunState

            self._state = RunState(state_dir, self.rank, video_hash(video), self.cfg)
        so_far: list[np.ndarray] = []
        spans: list[SpanData] = []
        for item in self._decode_spans(video, info, gt_rows):
            if isinstance(item, SpanData):
                spans.append(item)
                continue
            if partial and self.world == 1 and len(item):
                so_far.append(item)
                rows = np.concatenate(so_far)
                yield Results(_meta(video, info), _tracks_from_rows(rows, self.cfg.actions.min_track_s))
        with self.timings("model"):
            final = self.finish(video, info, spans)
        if self._state is not None:
            self._state.clear()
        if final is not None:
            yield final

    # ------------------------------------------------------------------ stages
    def grids(self, info: VideoInfo) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices of the encoder grid and of the tracker grid (the whole video)."""
        enc = select_indices(info.timestamps, Sampling(fps=self.cfg.sampling.fps))
        trk = select_indices(info.timestamps, Sampling(fps=self.cfg.track.fps))
        return enc, trk

    def _decode_spans(self, video: str, info: VideoInfo, gt_rows: np.ndarray | None) -> Iterator:
        """Yield each chunk's new track rows, then a SpanData per span of this rank."""
        if info.frames == 0:
            raise ConfigError(f"{video}: no video frames to analyse")
        enc, trk = self.grids(info)
        pieces = frame_pieces(len(enc), self.world, self.cfg.temporal.layout)[self.rank]
        src = VideoSource(video, info=info)
        from tqdm import tqdm

        bar = tqdm(total=round(float(info.duration_s), 1), unit="video s", disable=not self.progress, leave=False,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} video s [{elapsed}<{remaining}]")
        try:
            yield from self._spans(video, info, gt_rows, enc, trk, pieces, src, bar)
        finally:
            bar.close()  # before any error line is printed

    def _spans(self, video: str, info: VideoInfo, gt_rows, enc: np.ndarray, trk: np.ndarray,
               pieces: list[tuple[int, int]], src: VideoSource, bar) -> Iterator:
        ts, T = info.timestamps, len(enc)
        W, H = info.width, info.height
        state = self._state
        if state is not None and self._resume and gt_rows is None:
            # the saved tracker is an ultralytics object: import ultralytics the offline way before
            # unpickling it (a bare import of ultralytics checks whether it is online)
            self.tracker  # noqa: B018
        restored = state.load() if state is not None and self._resume else None
        done_parts: dict[int, list[dict]] = {}
        for part in (restored or {}).get("parts", []):
            done_parts.setdefault(part["piece"], []).append(part)
        # kept until the model runs: in large blocks, not per-chunk pieces (videoring.arena)
        roi_store = Arena((self._appearance_dim(),), torch.float16)
        for k, (start, stop) in enumerate(pieces):
            if start >= T:
                yield SpanData(math.inf, np.zeros((0, ROW_COLS)), np.zeros(0), np.zeros(0, np.int64),
                               torch.zeros(0, self.encoder.tokens_per_frame, self.encoder.dim))
                continue
            real = np.arange(start, min(stop, T))
            e_idx = enc[real]
            own0 = 0.0 if start == 0 else float(ts[e_idx[0]])
            own1 = float(ts[enc[stop]]) if stop < T else math.inf
            t_idx = trk[(ts[trk] >= own0 - self.cfg.track.overlap_s) & (ts[trk] < own1)] if start else trk[ts[trk] < own1]
            union = np.union1d(t_idx, e_idx)
            span = SpanData(own0, np.zeros((0, ROW_COLS)), ts[e_idx], real, torch.zeros(0), store=roi_store)
            # the encoder frames that really decoded (a truncated or corrupt file may lose some)
            got_t: list[np.ndarray] = [p["times"] for p in done_parts.get(k, [])]
            got_o: list[np.ndarray] = [p["order"] for p in done_parts.get(k, [])]
            rows_all: list[np.ndarray] = [p["rows"] for p in done_parts.get(k, [])]
            toks = torch.empty(len(real), self.encoder.tokens_per_frame, self.encoder.dim)  # at most one per frame
            n_tok = 0
            for p in done_parts.get(k, []):
                if len(p["toks"]):  # a chunk without encoder frames saved an empty (0,) tensor
                    toks[n_tok : n_tok + len(p["toks"])] = p["toks"]
                    n_tok += len(p["toks"])
            span.roi = [r for p in done_parts.get(k, []) for r in _kept(p["roi"], roi_store)]
            stats = pixel_stats(self.cfg.actions.band_mask)
            skip = sum(p["frames"] for p in done_parts.get(k, []))
            if gt_rows is None:
                self.tracker.reset((W, H))
            if skip and restored is not None and restored["piece"] == k:
                # continue exactly where the killed run stopped: the tracker (with its ID counter) as it was
                self.tracker.tracker = restored["tracker"]
                stats.last = restored["stats"]
            if rows_all:
                yield np.concatenate(rows_all)[np.concatenate(rows_all)[:, 0] >= own0]
            rest = union[skip:]
            plan = SamplingPlan(rest, {"track": np.isin(rest, t_idx), "encode": np.isin(rest, e_idx)})
            clock = self.timings
            for chunk in prefetch(src.read_plan(plan, chunk_size=self.cfg.sampling.chunk_size), clock) if len(rest) else ():
                new: dict = {"piece": k, "frames": len(chunk.indices), "rows": np.zeros((0, ROW_COLS)),
                             "toks": torch.zeros(0), "roi": [], "times": np.zeros(0), "order": np.zeros(0, np.int64)}
                tr = chunk.select("track")
                if len(tr.timestamps):
                    with clock("track"):
                        rows = self._track(tr.images, tr.timestamps, gt_rows, stats)
                    rows_all.append(rows)
                    new["rows"] = rows
                    yield rows[rows[:, 0] >= own0]
                bar.update(max(0.0, float(chunk.timestamps[-1]) - own0 - bar.n) if self.world == 1 else 0)
                en = chunk.select("encode")
                if len(en.timestamps):
                    with clock("encode"):
                        out = self.encoder(en.images)
                    toks[n_tok : n_tok + len(out.tokens)] = out.tokens
                    n_tok += len(out.tokens)
                    recent = np.concatenate(rows_all[-2:]) if rows_all else np.zeros((0, ROW_COLS))
                    with clock("actors"):
                        roi = self._roi(out.grid, en.images, en.timestamps, recent, (W, H))
                    span.roi += _kept(roi, roi_store)
                    order = real[np.searchsorted(e_idx, en.indices)]
                    got_t.append(en.timestamps)
                    got_o.append(order)
                    new["toks"], new["roi"], new["times"], new["order"] = out.tokens, roi, en.timestamps, order
                if state is not None and gt_rows is None:
                    with clock("checkpoint"):
                        state.save(new, {"piece": k, "tracker": self.tracker.tracker, "stats": stats.last})
            span.rows = np.concatenate(rows_all) if rows_all else np.zeros((0, ROW_COLS))
            span.tokens = toks[:n_tok]
            # frames that did not decode (already reported by the reader as a DecodeWarning) are left out
            span.times = np.concatenate(got_t) if got_t else np.zeros(0)
            span.order = np.concatenate(got_o) if got_o else np.zeros(0, np.int64)
            yield span

    def _track(self, images: np.ndarray, times: np.ndarray, gt_rows: np.ndarray | None, stats) -> np.ndarray:
        if gt_rows is None:
            rows = self.tracker.update(images, times)
        else:  # training: ground-truth boxes in place of the tracker, snapped to the decoded times
            near = np.abs(gt_rows[:, :1] - times[None]).argmin(1)
            ok = np.abs(gt_rows[:, 0] - times[near]) < 1e-3
            rows = gt_rows[ok][:, :8].copy()
            rows[:, 0] = times[near[ok]]
        out = np.zeros((len(rows), ROW_COLS))
        out[:, :8] = rows[:, :8]
        out[:, DET_BOX] = rows[:, 8:12] if rows.shape[1] >= 12 else rows[:, 2:6]  # ground truth: one box
        for img, t in zip(images, times):
            m = rows[:, 0] == t
            if m.any():
                out[m, 8:14] = stats(img, rows[m])
                out[m, 14] = neighbour_gap(rows[m], rows[m, 1] != SPARE)  # spare boxes are no one's neighbour
        return out

    def _appearance_dim(self) -> int:
        return self.encoder.dim * self.cfg.actions.roi_size ** 2 + look_dim(self.cfg.actions.texture, self.cfg.actions.texture_masked)

    def _roi(self, grid: Tensor, images: np.ndarray, times: np.ndarray, rows: np.ndarray,
             wh: tuple[int, int]) -> list[dict[int, Tensor]]:
        """Per encoder frame: the boxes tracked at (or just before) its time, RoI-pooled from the
        patch grid, with each box's thumbnail from the frame."""
        tol = 1.0 / self.cfg.track.fps + 1e-6
        boxes, ids = [], []
        tr_times = np.unique(rows[:, 0]) if len(rows) else np.zeros(0)
        rows = rows[rows[:, 1] != SPARE]
        for t in times:
            near = tr_times[(tr_times <= t + 1e-9) & (tr_times > t - tol)]
            r = rows[rows[:, 0] == near.max()] if len(near) else np.zeros((0, ROW_COLS))
            boxes.append(r[:, 2:6])
            ids.append(r[:, 1].astype(int))
        # kept until the end of the video: fp16 halves the hour's ~45 MB of them (rounding 5e-4 relative)
        feats = roi_features(grid, boxes, wh, self.cfg.actions.roi_size, torch.float16)
        a = self.cfg.actions
        feats = [torch.cat([f, torch.as_tensor(thumbnails(img, b, a.texture, a.texture_masked)).to(f.dtype)], dim=1)
                 for f, img, b in zip(feats, images, boxes)]
        return [dict(zip(i.tolist(), f)) for i, f in zip(ids, feats)]

    def _exchange_tracks(self, spans: list[SpanData]) -> tuple[np.ndarray, dict[tuple[int, int], dict[int, int]], np.ndarray]:
        """Every rank gets all spans' rows, stitches them identically -> global rows, id maps and
        the spare detections (each time owned once). The spans' rows are consumed: the hour's
        (19 columns, spares included) are tens of MB, and each copy adds to the peak."""
        mine, spare = [], []
        for k, s in enumerate(spans):
            if math.isfinite(s.start_s):
                r, s.rows = s.rows, np.zeros((0, ROW_COLS))
                spare.append(r[(r[:, 1] == SPARE) & (r[:, 0] >= s.start_s)])
                mine.append((s.start_s, self.rank, k, r[r[:, 1] != SPARE]))
                del r
        if self.world > 1:
            allv: list = [None] * self.world
            dist.all_gather_object(allv, (mine, spare), group=self.group)
            mine = [x for part in allv for x in part[0]]
            spare = [x for part in allv for x in part[1]]
        mine.sort(key=lambda x: x[0])
        keys = [(rk, k) for _, rk, k, _ in mine]
        rows, maps = stitch([(s, r) for s, _, _, r in mine])
        del mine
        spare = np.concatenate(spare) if spare else np.zeros((0, ROW_COLS))
        return rows, dict(zip(keys, maps)), spare

    def inputs(self, spans: list[SpanData], info: VideoInfo) -> tuple[ModelInputs, np.ndarray]:
        """Stitch tracks, build this rank's padded frame + actor token tensors; returns (inputs, global rows)."""
        rows, maps, spare = self._exchange_tracks(spans)
        if self.cfg.track.merge_gap_s > 0:
            rows, remap = link_tracklets(rows, (info.width, info.height), self.cfg.track.merge_gap_s)
            # actor tokens name span-local IDs: follow them to the linked ones
            maps = {key: {loc: remap.get(g, g) for loc, g in m.items()} for key, m in maps.items()}
        rows = extend_tracks(rows, spare, self.cfg.track.fps, self.cfg.track.extend_s)
        keep = _long_tracks(rows, self.cfg.actions.min_track_s)
        by_id = {tid: rows[rows[:, 1] == tid] for tid in keep}
        for tid in by_id:
            by_id[tid] = by_id[tid][np.argsort(by_id[tid][:, 0])]
        A = self.cfg.actions.max_actors
        halves = self.cfg.actions.half_windows
        store = next((s.store for s in spans if s.store is not None), None)
        if store is None:  # no span decoded a frame
            store = Arena((self._appearance_dim(),), torch.float16)
        T_piece = frame_pieces(len(self.grids(info)[0]), self.world, self.cfg.temporal.layout)[self.rank]
        tok_l, ts_l, fm_l, row_l, kin_l, am_l, ids_l, order_l = [], [], [], [], [], [], [], []
        for k, ((start, stop), s) in enumerate(zip(T_piece, spans)):
            n = stop - start
            F = len(s.times)
            m = maps.get((self.rank, k), {})
            slot_rows = torch.full((n, A), -1, dtype=torch.long)
            kins = torch.zeros(n, A, kin_dim(halves), dtype=store.dtype)
            amask = torch.zeros(n, A, dtype=torch.bool)
            aid = np.full((n, A), -1)
            for f in range(F):
                cands = []
                seen = set()
                for local, row in s.roi[f].items():
                    g = m.get(local)
                    # two pieces linked across their overlap are one actor: one token per step
                    if g is None or g not in by_id or g in seen:
                        continue
                    seen.add(g)
                    kin = kinematics(by_id[g], float(s.times[f]), (info.width, info.height), halves)
                    cands.append((-kin[9], g, row, kin))
                for j, (_, g, row, kin) in enumerate(sorted(cands, key=lambda c: (c[0], c[1]))[:A]):
                    slot_rows[f, j] = row
                    kins[f, j] = torch.as_tensor(kin)
                    amask[f, j] = True
                    aid[f, j] = g
            pad = n - F
            tok_l.append(torch.cat([s.tokens, s.tokens.new_zeros(pad, *s.tokens.shape[1:])]) if pad else s.tokens)
            ts_l.append(np.concatenate([s.times, np.zeros(pad)]))
            fm_l.append(np.arange(n) < F)
            row_l.append(slot_rows)
            kin_l.append(kins)
            am_l.append(amask)
            ids_l.append(aid)
            order_l.append(s.order)
        def cat(ts: list[Tensor]) -> Tensor:  # one span (one rank, contiguous layout): no copy
            return (ts[0] if len(ts) == 1 else torch.cat(ts)).unsqueeze(0)

        inp = ModelInputs(
            cat(tok_l), torch.as_tensor(np.concatenate(ts_l)).unsqueeze(0),
            torch.as_tensor(np.concatenate(fm_l)).unsqueeze(0),
            ActorTokens(store, cat(row_l), cat(kin_l)),
            torch.cat(am_l).unsqueeze(0), np.concatenate(ids_l), np.concatenate(order_l),
        )
        return inp, rows

    @torch.inference_mode()
    def finish(self, video: str, info: VideoInfo, spans: list[SpanData]) -> Results | None:
        inp, rows = self.inputs(spans, info)
        # the results need t, id, the reported box and conf: 7 of the 19 columns through the model
        rows = np.concatenate([rows[:, :2], rows[:, DET_BOX], rows[:, 6:7]], 1)
        for s in spans:  # in inp (and the stitched rows) now: let them go before the model's own peak
            s.roi, s.store, s.tokens, s.rows = [], None, s.tokens.new_zeros(0, *s.tokens.shape[1:]), np.zeros((0, ROW_COLS))
        out = self._windowed(inp) if self.cfg.temporal.window_s else self.model.infer(inp, self.group)
        fm = inp.frame_mask[0]
        times = inp.times[0][fm].numpy()
        dense = torch.sigmoid(out.dense[0][fm]).numpy()
        actor_p = torch.softmax(out.actor[0][fm], -1).numpy()
        ids = inp.actor_ids[fm.numpy()]
        obs = [(int(ids[f, j]), float(times[f]), actor_p[f, j]) for f, j in zip(*np.nonzero(ids >= 0))]
        part = (times, dense, obs)
        if self.world > 1:
            allp: list = [None] * self.world
            dist.all_gather_object(allp, part, group=self.group)
        else:
            allp = [part]
        if self.rank != 0:
            return None
        times = np.concatenate([p[0] for p in allp])
        order = np.argsort(times)
        dense = np.concatenate([p[1] for p in allp])[order]
        obs = [o for p in allp for o in p[2]]
        tracks = _tracks_from_rows(rows, self.cfg.actions.min_track_s, box=slice(2, 6), conf_smooth_s=self.cfg.actions.conf_smooth_s)
        span = {t.id: (t.boxes[0][0], t.boxes[-1][0] + 1.0 / self.cfg.track.fps) for t in tracks}
        actions, segments, scores = decode(self.cfg.actions, times[order], dense, obs, span)
        for t in tracks:
            t.scores = scores.get(t.id)
        clip = torch.sigmoid(out.clip[0]).numpy()
        clip_actions = sorted((ClipAction(lab, round(float(p), 4)) for lab, p in zip(self.cfg.actions.labels, clip)), key=lambda c: -c.score)
        return Results(_meta(video, info), tracks, segments, actions, clip_actions, list(self.cfg.actions.labels))


    def _windowed(self, inp: ModelInputs):
        """The ablation: the model run on independent ``window_s``-second windows (no longer context)."""
        from .actions import ActionOutputs

        if self.world > 1:
            raise ConfigError("temporal.window_s: the local-window ablation runs on one rank (--nproc 1)")
        w = self.cfg.temporal.window_s
        win = torch.floor(inp.times[0] / w)
        L = len(self.cfg.actions.labels)
        Fr, A = inp.actor_mask.shape[1:]
        dense, actor, clips = torch.zeros(1, Fr, L), torch.zeros(1, Fr, A, L), []
        for k in torch.unique(win[inp.frame_mask[0]]):
            idx = torch.nonzero((win == k) & inp.frame_mask[0]).flatten()
            o = self.model(inp.tokens[:, idx], inp.times[:, idx], inp.frame_mask[:, idx], inp.actors.dense(idx), inp.actor_mask[:, idx])
            dense[:, idx], actor[:, idx] = o.dense, o.actor
            clips.append(o.clip)
        return ActionOutputs(torch.stack(clips).mean(0), dense, actor)


class StageClock(dict):
    """Accumulated wall seconds per stage: ``with clock("track"): ...``."""

    def __call__(self, stage: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def timed():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0

        return timed()


def prefetch(it: Iterator, clock: StageClock, depth: int = 2) -> Iterator:
    """Decode in a background thread, ``depth`` chunks ahead, so decoding overlaps model compute.

    FFmpeg releases the GIL while it decodes and converts, so the two really run
    in parallel; errors from the reader are re-raised here, in order. Time spent
    waiting for the next chunk is recorded as the ``decode`` stage.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    END = object()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            q.put((None, e))
            return
        q.put((END, None))

    th = threading.Thread(target=work, name="videoring-decode", daemon=True)
    th.start()
    try:
        while True:
            with clock("decode"):
                item, err = q.get()
            if err is not None:
                raise err
            if item is END:
                return
            yield item
    finally:
        stop.set()
        th.join(timeout=5)


def _shipped(path: str) -> str:
    p = Path(path)
    if p.exists() or p.is_absolute():
        return str(p)
    root = Path(__file__).resolve().parents[1]
    return str(root / p) if (root / p).exists() else str(p)


def _kept(rois: list[dict[int, Tensor]], store: Arena) -> list[dict[int, int]]:
    """Per-frame RoI features (track id -> features) copied into ``store``, one copy per chunk;
    returns track id -> row number."""
    feats = [f for r in rois for f in r.values()]
    if not feats:
        return [{} for _ in rois]
    rows = iter(store.append(torch.stack(feats)))
    return [{tid: next(rows) for tid in r} for r in rois]


def _meta(video: str, info: VideoInfo) -> VideoMeta:
    return VideoMeta(str(video), float(info.duration_s), float(info.fps), int(info.frames), int(info.width), int(info.height))


def _by_track(rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(track id, its rows in time order) per track; one sort, not a scan of all rows per track
    (that was quadratic on an hour: hundreds of tracks x 10^5 rows, after every chunk)."""
    rows = rows[rows[:, 1] != SPARE]  # the partial results' rows still hold the spare detections
    if not len(rows):
        return []
    r = rows[np.lexsort((rows[:, 0], rows[:, 1]))]
    ids, starts = np.unique(r[:, 1], return_index=True)
    return list(zip(ids.astype(int).tolist(), np.split(r, starts[1:])))


def _long_tracks(rows: np.ndarray, min_s: float) -> set[int]:
    return {tid for tid, r in _by_track(rows) if r[-1, 0] - r[0, 0] >= min_s}


def _tracks_from_rows(rows: np.ndarray, min_s: float, box: slice = DET_BOX, conf_smooth_s: float = 0.0) -> list[Track]:
    """``box``: the columns of the reported box (conf is column 6 either way); ``conf_smooth_s``:
    the Gaussian sigma of each box's confidence along its track (0: the detector's own)."""
    out = []
    for tid, r in _by_track(rows):
        if r[-1, 0] - r[0, 0] < min_s:
            continue
        conf = smooth(r[:, 0], r[:, 6:7], conf_smooth_s)[:, 0]
        boxes = [[round(float(x[0]), 6), *(round(float(v), 2) for v in x[box]), round(float(c), 4)] for x, c in zip(r, conf)]
        out.append(Track(int(tid), "actor", boxes))
    return out
