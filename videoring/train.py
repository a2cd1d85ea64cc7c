"""Training the action model (fusion + temporal model + heads) on cached features.

    videoring train -c configs/train_synth.yaml [key=value ...] [--resume]

Each training video is run ONCE through the pipeline's decode/track/encode
stages (the backbones are frozen) and its model inputs -- frame tokens, actor
tokens, masks, times -- are cached as safetensors beside their labels. Actor
labels come from the ground truth: every actor slot takes the label of the
ground-truth track whose box overlaps it most (IoU >= 0.5) at that time, so the
same code trains on ground-truth boxes (``train.boxes=gt``, fast) or on the
detector's own tracks (``train.boxes=tracker``, what inference sees).

AdamW, linear warmup then cosine decay, bf16 autocast (where the CPU has it natively;
``train.precision``), one video per step
(the whole video is one sequence: the model sees the long range it must
learn). A checkpoint (safetensors with the config and label map in its
metadata) after every epoch; ``--resume`` continues from the last one with
the optimizer state. Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .actions import ActionModel, save_model
from .actors import DET_BOX, ROW_COLS, kin_dim, look_dim
from .config import PipelineConfig, load_config
from .encoder import resolve_precision
from .errors import ConfigError
from .results import Results
from .tracking import box_iou

__all__ = ["TrainConfig", "TrainJob", "Trained", "prepare_video", "label_inputs", "train", "load_train_config"]


_KEY_IF_ON = ("texture_masked", "band_mask")
"""Actor-token settings added after caches existed: in the feature cache's key only when on, so
that the caches made before them keep their keys."""


@dataclass
class TrainOptions:
    videos: list[str] = field(default_factory=list)
    """Training videos (each with ground truth VIDEO.json in the results schema), files or globs."""
    boxes: str = "gt"
    """'gt': ground-truth boxes as tracks; 'tracker': the detector's tracks, labelled by IoU."""
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    precision: str = "auto"
    """'bf16' (autocast), 'fp32' or 'auto': bf16 where the CPU computes it natively (as
    ``encoder.precision``). A training step on a CPU that emulates bf16 (AVX-512 without
    BF16/AMX): 10.6-12.2 ms per video step in bf16, 7.4-7.6 in fp32."""
    out: str = "runs/actions"
    cache_dir: str = ".cache/videoring/train"
    box_jitter: float = 0.03
    """Ground-truth boxes are jittered by this fraction of their size (the tracker is not exact)."""
    actor_weight: float = 1.0
    dense_weight: float = 0.5
    clip_weight: float = 0.2

    def __post_init__(self) -> None:
        if self.boxes not in ("gt", "tracker"):
            raise ConfigError(f"train.boxes: got {self.boxes!r}; use 'gt' or 'tracker'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision: got {self.precision!r}; use 'auto', 'fp32' or 'bf16'")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: got {self.epochs!r}; use an integer >= 1")
        if not (0 < self.lr < 1):
            raise ConfigError(f"train.lr: got {self.lr!r}; use 0 < lr < 1")


@dataclass
class TrainConfig(PipelineConfig):
    train: TrainOptions = field(default_factory=TrainOptions)


def load_train_config(path: str | Path | None, overrides: list[str]) -> TrainConfig:
    return load_config(path, overrides, cls=TrainConfig)


def _gt_rows(gt: Results, rng: np.random.Generator, jitter: float) -> np.ndarray:
    rows = [(b[0], t.id, *b[1:5], 1.0, 0.0) for t in gt.tracks for b in t.boxes]
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
    if jitter and len(r):
        w = (r[:, 4] - r[:, 2])[:, None]
        h = (r[:, 5] - r[:, 3])[:, None]
        r[:, 2:6] += rng.normal(0, jitter, (len(r), 4)) * np.concatenate([w, h, w, h], 1)
    return r


def _label_at(actions_by_track: dict[int, list], tid: int, t: float, labels: dict[str, int]) -> int:
    for a in actions_by_track.get(tid, ()):
        if a.start_s <= t < a.end_s:
            return labels.get(a.label, -1)
    return -1


def label_inputs(inp, rows: np.ndarray, gt: Results, labels: list[str]) -> dict[str, torch.Tensor]:
    """Actor (F, A) label ids (-1 = ignore), dense (F, L) and clip (L) multi-hot targets."""
    lab = {k: i for i, k in enumerate(labels)}
    acts: dict[int, list] = {}
    for a in gt.track_actions:
        acts.setdefault(a.track_id, []).append(a)
    boxes_at = {t.id: np.asarray(t.boxes) for t in gt.tracks if t.boxes}
    F_, A = inp.actor_ids.shape
    times = inp.times[0].numpy()
    actor = torch.full((F_, A), -1, dtype=torch.long)
    dense = torch.zeros(F_, len(labels))
    for f in range(F_):
        if not bool(inp.frame_mask[0, f]):
            continue
        t = times[f]
        # the ground-truth boxes at this time
        cand = []
        for tid, b in boxes_at.items():
            i = np.searchsorted(b[:, 0], t - 1e-3)
            if i < len(b) and abs(b[i, 0] - t) < 1e-3:
                cand.append((tid, b[i, 1:5]))
            li = _label_at(acts, tid, t, lab)
            if li >= 0 and b[0, 0] - 1e-3 <= t <= b[-1, 0] + 1e-3:
                dense[f, li] = 1.0
        for j in range(A):
            g = inp.actor_ids[f, j]
            if g < 0 or not cand:
                continue
            r = rows[(rows[:, 1] == g) & (np.abs(rows[:, 0] - t) < 1e-3)]
            if not len(r):
                continue
            ious = box_iou(r[:1, DET_BOX], np.stack([c[1] for c in cand]))[0]  # the box the results report
            k = int(ious.argmax())
            if ious[k] >= 0.5:
                actor[f, j] = _label_at(acts, cand[k][0], t, lab)
    clip = torch.zeros(len(labels))
    for a in gt.track_actions:
        if a.label in lab:
            clip[lab[a.label]] = 1.0
    return {"actor_labels": actor, "dense_labels": dense, "clip_labels": clip}


def prepare_video(pipe, video: str, gt: Results, opts: TrainOptions, seed: int) -> dict[str, torch.Tensor]:
    """Model inputs + labels for one video (frozen backbones: computed once, then cached)."""
    from .videoinfo import probe

    info = probe(video)
    rng = np.random.default_rng(seed)
    gt_rows = _gt_rows(gt, rng, opts.box_jitter) if opts.boxes == "gt" else None
    spans = [s for s in pipe._decode_spans(video, info, gt_rows) if not isinstance(s, np.ndarray)]
    inp, rows = pipe.inputs(spans, info)
    out = {
        "tokens": inp.tokens[0], "times": inp.times[0], "frame_mask": inp.frame_mask[0],
        "actors": inp.actors.dense()[0], "actor_mask": inp.actor_mask[0],
        # each actor slot's track: not read by training yet; kept so that looks pooled along a
        # track can be trained on without preparing every clip again (~2 h for the 312 clips)
        "actor_ids": torch.as_tensor(inp.actor_ids, dtype=torch.int32),
    }
    out.update(label_inputs(inp, rows, gt, pipe.cfg.actions.labels))
    return out


class TrainJob:
    """One rank's share of training. Under torchrun: data parallel across videos.

    Each rank prepares and trains on videos ``rank::world``; gradients are averaged
    over the ranks after every step, so every rank holds the same model. The model
    itself runs on a one-rank group (each video whole on its rank); ring attention
    across time is the inference path (``videoring analyze --nproc``).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        import torch.distributed as dist

        from .pipeline import Pipeline
        from .ring.comm import world_of

        self.cfg = cfg
        self.opts = cfg.train
        self.rank, self.world = world_of(None)
        self.solo = None
        if self.world > 1:
            groups = [dist.new_group([r]) for r in range(self.world)]  # collective: same order on every rank
            self.solo = groups[self.rank]
        self.pipe = Pipeline(cfg, group=self.solo, load_weights=False)

    def _videos(self) -> list[str]:
        import glob

        out: list[str] = []
        for v in self.opts.videos:
            out += sorted(glob.glob(v)) if any(c in v for c in "*?[") else [v]
        if not out:
            raise ConfigError("train.videos: no training videos given (files or globs with ground truth VIDEO.json beside)")
        for v in out:
            if not Path(v).exists() or not Path(v).with_suffix(".json").exists():
                raise ConfigError(f"train.videos: {v} or its ground truth {Path(v).with_suffix('.json').name} is missing")
        return out

    def _cache_key(self) -> str:
        # a decode-only or model-only setting does not change the inputs: nms_labels,
        # segment_tau_s, conf_smooth_s and the recall_* settings are left out of the key (the
        # older decode-only fields, nms_iou and smooth_s, stay in it: caches made with them stay
        # valid); half_windows and texture are there as the actor token's lengths, under "feat"
        act = {k: v for k, v in asdict(self.cfg.actions).items()
               if k not in ("nms_labels", "segment_tau_s", "conf_smooth_s", "half_windows", "texture")
               and not k.startswith("recall_") and not (k in _KEY_IF_ON and not v)}
        return json.dumps({"enc": self.pipe.encoder.settings(), "track": asdict(self.cfg.track), "samp": asdict(self.cfg.sampling),
                           "act": act, "boxes": self.opts.boxes, "jit": self.opts.box_jitter,
                           "seed": self.cfg.seed, "v": 2,
                           "feat": [ROW_COLS, kin_dim(self.cfg.actions.half_windows), look_dim(self.cfg.actions.texture, self.cfg.actions.texture_masked)]}, sort_keys=True)  # what an actor token holds

    def _cached(self, video: str, key_cfg: str) -> Path:
        import hashlib

        from .engine import video_hash

        key = hashlib.blake2b((video_hash(video) + key_cfg).encode(), digest_size=16).hexdigest()
        return Path(self.opts.cache_dir) / f"{key}.safetensors"

    def _prepare(self, i: int, video: str, path: Path, log) -> dict[str, torch.Tensor]:
        from safetensors.torch import save_file

        from .io import atomic_path

        t0 = time.perf_counter()
        # the seed is the video's index in train.videos, whichever process prepares it
        item = prepare_video(self.pipe, video, Results.from_json(Path(video).with_suffix(".json")), self.opts, self.cfg.seed + i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: t.contiguous() for k, t in item.items()}, str(tmp))
        log(f"prepared {video} ({len(item['times'])} steps) in {time.perf_counter() - t0:.1f} s")
        return item

    def cache_paths(self) -> list[Path]:
        """Where each of ``train.videos``' prepared inputs is (or will be) cached."""
        key_cfg = self._cache_key()
        return [self._cached(v, key_cfg) for v in self._videos()]

    def dataset(self, log=print) -> list[dict[str, torch.Tensor]]:
        """This rank's videos' model inputs, from the cache or prepared now (and cached)."""
        from safetensors.torch import load_file

        key_cfg = self._cache_key()
        data = []
        for i, v in list(enumerate(self._videos()))[self.rank :: self.world]:
            path = self._cached(v, key_cfg)
            data.append(load_file(str(path)) if path.exists() else self._prepare(i, v, path, log))
        return data

    def prepare_from_end(self, log=print) -> int:
        """Fill the feature cache from the LAST video backwards; stop at the first one cached.

        A second process beside a training run (which prepares forwards) halves the
        preparation; pin the two to separate cores (taskset), or their detectors' and ViTs'
        thread pools oversubscribe them. The items are the same either way (same seeds, same keys). Returns how many videos this call prepared.
        """
        key_cfg = self._cache_key()
        n = 0
        for i, v in reversed(list(enumerate(self._videos()))):
            path = self._cached(v, key_cfg)
            if path.exists():
                log(f"{v} is cached: the forward pass has reached here")
                break
            self._prepare(i, v, path, log)
            n += 1
        return n


def _loss(model: ActionModel, item: dict, opts: TrainOptions, group=None) -> tuple[torch.Tensor, dict]:
    u = lambda k: item[k].unsqueeze(0)  # noqa: E731
    out = model(u("tokens"), u("times"), u("frame_mask"), u("actors"), u("actor_mask"), group)
    fm = item["frame_mask"]
    al = item["actor_labels"]
    la = F.cross_entropy(out.actor[0].float().reshape(-1, out.actor.shape[-1]), al.reshape(-1), ignore_index=-1) if (al >= 0).any() else out.actor.sum() * 0
    ld = F.binary_cross_entropy_with_logits(out.dense[0][fm].float(), item["dense_labels"][fm])
    lc = F.binary_cross_entropy_with_logits(out.clip[0].float(), item["clip_labels"])
    loss = opts.actor_weight * la + opts.dense_weight * ld + opts.clip_weight * lc
    return loss, {"actor": float(la.detach()), "dense": float(ld.detach()), "clip": float(lc.detach())}


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    import torch.distributed as dist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])  # one all-reduce per step, not one per tensor
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        g.copy_(flat[off : off + g.numel()].view_as(g))
        off += g.numel()


@dataclass
class Trained:
    path: Path
    """OUT/model.safetensors: the last epoch's weights, config and label map."""
    model: ActionModel
    """This rank's model (identical on every rank under data parallelism)."""


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Trained:
    """Train (or continue with ``resume``) and return the final checkpoint and model."""
    opts = cfg.train
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    job = TrainJob(cfg)
    if job.rank != 0:
        log = lambda *a, **k: None  # noqa: E731  (rank 0 reports)
    data = job.dataset(log)
    if not data:
        raise ConfigError(f"train.videos: {len(job._videos())} videos for {job.world} ranks; give at least one per rank")
    model = job.pipe.model.train()
    model.requires_grad_(True)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    # every rank takes the same number of steps (collectives stay aligned); short shares wrap around
    steps = math.ceil(len(job._videos()) / job.world)
    total = opts.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / max(opts.warmup_steps, 1))
                                              * 0.5 * (1 + math.cos(math.pi * min(s / max(total, 1), 1.0))))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    start_epoch = 0
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        optim.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["rng"])
        start_epoch = int(st["epoch"]) + 1
        log(f"resumed after epoch {start_epoch}")
    precision = resolve_precision(opts.precision)
    bf16 = precision == "bf16"
    meta = {"labels": list(cfg.actions.labels), "config": json.loads(json.dumps(asdict(cfg), default=str))}
    meta["config"]["train"]["precision"] = precision  # as it ran ('auto' depends on the CPU)
    log(f"training {len(data)} videos on this rank, {precision}")
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, opts.epochs):
        g.manual_seed(cfg.seed + epoch)
        perm = torch.randperm(len(data), generator=g).tolist()
        perm = [perm[i % len(perm)] for i in range(steps)]
        tot = {"loss": 0.0}
        for i in perm:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, parts = _loss(model, data[i], opts, job.solo)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if job.world > 1:
                _average_gradients(model, job.world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            tot["loss"] += float(loss.detach()) / steps
            for k, v in parts.items():
                tot[k] = tot.get(k, 0.0) + v / steps
        if job.rank == 0:
            save_model(model, out / "model.safetensors", {**meta, "epoch": epoch})
            torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch}, state_path)
        log(f"epoch {epoch + 1}/{opts.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in tot.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return Trained(out / "model.safetensors", model)
