"""Typed configuration: one dataclass per stage, YAML in, dotted overrides.

    cfg = load_config("configs/features_tiny.yaml", ["encoder.name=vit_small_patch16_224", "sampling.fps=0.5"])

Unknown keys, wrong types and out-of-range values raise ConfigError naming the
key, the value received and what is allowed. YAML is read with safe_load.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = [
    "EncoderConfig", "TemporalConfig", "SampleConfig", "FeaturesConfig", "TrackConfig", "ActionConfig",
    "OutputConfig", "PipelineConfig", "load_config", "apply_overrides",
]

TOKENS_PER_FRAME = (1, 5, 17, 0)


@dataclass
class EncoderConfig:
    name: str = "vit_tiny_patch16_224"
    """Any timm ViT (``timm.list_models('vit_*')``)."""
    weights: str | None = None
    """Local weights file (.safetensors, .pth/.pt torch checkpoint, timm checkpoint); None = random init."""
    hub: bool = False
    """Download pretrained weights from the hub (only when online and asked for)."""
    tokens_per_frame: int = 17
    """1 (CLS), 5 (CLS + 2x2 grid), 17 (CLS + 4x4 grid) or 0 (CLS + every patch)."""
    batch_size: int = 16
    precision: str = "auto"
    """'fp32', 'bf16' (autocast) or 'auto': bf16 where the CPU computes it natively (AMX or
    AVX512-BF16 in /proc/cpuinfo), else fp32. ViT-Tiny, batch 16: 1.8x faster in bf16 on a CPU
    with AMX, but 2.6-2.8x slower on an AVX-512 CPU without BF16, which emulates it
    (docs/benchmarks_pipeline.md)."""

    def __post_init__(self) -> None:
        if self.tokens_per_frame not in TOKENS_PER_FRAME:
            raise ConfigError(f"encoder.tokens_per_frame: got {self.tokens_per_frame!r}; use one of 1, 5, 17 or 0 (all patches)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"encoder.precision: got {self.precision!r}; use 'auto', 'fp32' or 'bf16'")
        if self.batch_size < 1:
            raise ConfigError(f"encoder.batch_size: got {self.batch_size!r}; use an integer >= 1")


@dataclass
class TemporalConfig:
    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = False
    """Frame-causal attention (every token of a frame sees its frame and the past): for streaming."""
    layout: str = "contiguous"
    """Ring placement: 'contiguous' or 'zigzag' (balances causal work)."""
    time_scale_s: float = 10000.0
    """Longest period of the sinusoidal time encoding, in seconds."""
    dropout: float = 0.0
    """Training only: dropout on the actor features and on each block's residual updates."""
    window_s: float = 0.0
    """0 = attend over the whole video. > 0: independent windows of this many seconds
    (the local-attention ablation that shows what whole-video attention buys; one rank)."""

    def __post_init__(self) -> None:
        if self.dim < 8 or self.dim % self.heads:
            raise ConfigError(f"temporal.dim: got {self.dim!r} with heads={self.heads}; use dim >= 8 divisible by heads")
        if self.depth < 1:
            raise ConfigError(f"temporal.depth: got {self.depth!r}; use an integer >= 1")
        if self.layout not in ("contiguous", "zigzag"):
            raise ConfigError(f"temporal.layout: got {self.layout!r}; use 'contiguous' or 'zigzag'")
        if not (0 <= self.dropout < 1):
            raise ConfigError(f"temporal.dropout: got {self.dropout!r}; use 0 <= dropout < 1")
        if not (self.window_s >= 0 and math.isfinite(self.window_s)):
            raise ConfigError(f"temporal.window_s: got {self.window_s!r}; use 0 (whole video) or a positive number of seconds")
        if not (self.time_scale_s > 0 and math.isfinite(self.time_scale_s)):
            raise ConfigError(f"temporal.time_scale_s: got {self.time_scale_s!r}; use a positive number of seconds")


@dataclass
class SampleConfig:
    fps: float = 1.0
    """Encoder sampling rate (frames per second of video)."""
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ConfigError(f"sampling.fps: got {self.fps!r}; use a positive number")
        if self.chunk_size < 1:
            raise ConfigError(f"sampling.chunk_size: got {self.chunk_size!r}; use an integer >= 1")


@dataclass
class FeaturesConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    sampling: SampleConfig = field(default_factory=SampleConfig)
    seed: int = 0
    """Seeds the random init of the temporal model (and the encoder without weights)."""
    cache_dir: str | None = ".cache/videoring/features"
    """Encoder outputs per video span; None disables the cache."""
    threads: int = 0
    """torch threads per process (0 = all cores / processes)."""


TRACKERS = ("bytetrack", "botsort")
DEFAULT_LABELS = ["idle", "walk", "run", "jump", "spin", "wave", "meet", "arrive", "return"]


@dataclass
class TrackConfig:
    detector: str = "sample_data/detector_yolo26n.pt"
    """Local YOLO26 weights (.pt, or an ONNX/OpenVINO export), a model .yaml (random init), or,
    with allow_download=true, a name ultralytics fetches (e.g. yolo26n.pt)."""
    allow_download: bool = False
    tracker: str = "bytetrack"
    """'bytetrack', 'botsort' (ultralytics' configs) or a path to a tracker .yaml."""
    fps: float = 10.0
    """Tracking rate; frames come from the same decode pass as the encoder's."""
    high_thresh: float | None = 0.5
    """Overrides the tracker YAML's track_high_thresh (first association); None keeps it."""
    new_thresh: float | None = 0.6
    """Overrides the tracker YAML's new_track_thresh (starting a track); None keeps it."""
    imgsz: int = 256
    conf: float = 0.1
    iou: float = 0.6
    """Per-class NMS of the detections at this IoU before tracking (YOLO26's end-to-end head has
    none: a spinning actor's second box ran a second track; IDF1 0.807 -> 0.831 on the
    validation clips at 0.6; 0.5 and 0.65 were worse). 1 = off."""
    batch: int = 16
    """Frames per detector call."""
    classes: list[int] | None = None
    """Detector classes kept as actors (None = all)."""
    overlap_s: float = 2.0
    """Each time span is tracked from this many seconds earlier, to stitch IDs across spans."""
    merge_gap_s: float = 4.0
    """Join track fragments of one actor separated by at most this many seconds (0 = off)."""
    extend_s: float = 3.0
    """Grow each track, back from its start and on from its end (and into its gaps), by up to this
    many seconds through the detections the online tracker left unused (0 = off): an actor walking
    in scores under ``new_thresh`` until most of it is in view, so its track starts late."""
    export: str = "openvino"
    """'none' (PyTorch), 'onnx' or 'openvino': export the .pt once (cached beside it) and detect with that."""

    def __post_init__(self) -> None:
        if self.tracker not in TRACKERS and not self.tracker.endswith((".yaml", ".yml")):
            raise ConfigError(f"track.tracker: got {self.tracker!r}; use 'bytetrack', 'botsort' or a tracker .yaml path")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ConfigError(f"track.fps: got {self.fps!r}; use a positive number")
        if not (32 <= self.imgsz <= 4096) or self.imgsz % 32:
            raise ConfigError(f"track.imgsz: got {self.imgsz!r}; use a multiple of 32 from 32 to 4096")
        if not (0 <= self.conf < 1):
            raise ConfigError(f"track.conf: got {self.conf!r}; use 0 <= conf < 1")
        if not (0 < self.iou <= 1):
            raise ConfigError(f"track.iou: got {self.iou!r}; use 0 < iou <= 1 (the NMS overlap before tracking; 1 turns it off)")
        if self.batch < 1:
            raise ConfigError(f"track.batch: got {self.batch!r}; use an integer >= 1")
        if not (0 <= self.overlap_s <= 60):
            raise ConfigError(f"track.overlap_s: got {self.overlap_s!r}; use 0 to 60 seconds")
        for key in ("high_thresh", "new_thresh"):
            v = getattr(self, key)
            if v is not None and not (0 <= v <= 1):
                raise ConfigError(f"track.{key}: got {v!r}; use a score from 0 to 1 or null")
        if not (0 <= self.merge_gap_s <= 60):
            raise ConfigError(f"track.merge_gap_s: got {self.merge_gap_s!r}; use 0 (off) to 60 seconds")
        if not (0 <= self.extend_s <= 60):
            raise ConfigError(f"track.extend_s: got {self.extend_s!r}; use 0 (off) to 60 seconds")
        if self.export not in ("none", "onnx", "openvino"):
            raise ConfigError(f"track.export: got {self.export!r}; use 'none', 'onnx' or 'openvino'")


@dataclass
class ActionConfig:
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    """Action label set; per-actor and clip-level heads predict these."""
    background: str = "idle"
    """The label that is not an action instance (left out of segments)."""
    model: str | None = "sample_data/actions_tiny.safetensors"
    """Trained heads + fusion + temporal model (videoring train); None = random init (untrained)."""
    max_actors: int = 6
    """Actor tokens per time step (the most confident tracks at that time)."""
    roi_size: int = 2
    """RoIAlign output size on the patch grid (roi_size x roi_size cells per actor)."""
    half_windows: bool = False
    """Actor kinematics also over the half-windows before and after each time step
    (:func:`videoring.actors.kinematics`), which place a phase change inside the window. A model
    trained with them is loaded with them. 52-clip A/B on the validation clips: frame mAP
    0.591 -> 0.648 (docs/actions.md); the shipped model has them."""
    texture: bool = False
    """Actor tokens also carry :func:`videoring.actors.texture_features` (surface pattern at full
    resolution) beside the 6x6 thumbnail, for Recall's look-alike matching. A model trained with
    them is loaded with them; the shipped model has them. 52-clip A/B on the validation clips:
    return/arrive 0.751 -> 0.790 (short), 0.606 -> 0.662 (long), frame and segment mAP +0.02;
    the shipped 156-clip model, held-out long clips: return/arrive 0.717 -> 0.744 (docs/actions.md)."""
    texture_masked: bool = False
    """Actor tokens also carry :func:`videoring.actors.masked_texture_features`: the pattern read
    on the actor's own pixels (those unlike the background just outside the box), 4 more
    numbers after ``texture``'s. No shipped model is trained with them: a model trained with
    them is loaded with them. Why (session 31): beside ``texture``'s numbers they lift a
    nearest-centre reading of the four synthetic patterns (validation tracks) from 0.753 to
    0.844 of single boxes and from 0.837 to 0.930 per track, where look-alike arrivals fail
    (an earlier actor of the same shape and colour: 0.738 right); ~1 ms a box."""
    band_mask: bool = False
    """The band above each box (the waving hand's place, :class:`videoring.actors.PixelStats`)
    leaves out the cells another box of the frame covers: an actor of a farther lane passing
    above an idle one otherwise changes the band as a hand would. No shipped model is trained
    with it: a model trained with it is loaded with it. Why (session 31, the shipped 2-fps
    model, 16 short clips): idle boxes whose band another box covers by more than a quarter
    were read wrong 52% of the time (67 of 128), against 24% (131 of 537) with the band free;
    masking at inference alone (a prototype masking the cells by their centres), with a model
    trained unmasked, lowered validation frame mAP 0.874 -> 0.863 (docs/actions.md)."""
    recall_shape: bool = False
    """Recall (:class:`videoring.temporal.Recall`) also compares the box's height (a fraction of
    the frame's, from the actor token's kinematics) beside the look: two look-alikes of other
    builds are two actors (``arrive`` vs ``return``). Changes the model, not the actor tokens: a
    model trained with it is loaded with it. 52-clip A/B on the validation clips: return/arrive
    0.790 -> 0.809 (short), 0.662 -> 0.704 (long); with the width too (the aspect ratio) it fell
    to 0.630 / 0.515: an entering actor's box is cut by the frame's edge (docs/actions.md)."""
    recall_heads: int = 1
    """Recall's heads: independent learned projections of the look (and height), each giving
    the token its own "how long since a look-alike" number. A model trained with them is
    loaded with them. 52-clip A/B on the validation clips, 4 heads with ``recall_tilt``:
    return/arrive 0.809 -> 0.821 (short), 0.704 -> 0.736 (long) (docs/actions.md)."""
    recall_tilt: bool = False
    """Each Recall head also learns a bias per second of a key's age (init 0: none), weighing
    older or newer look-alikes above the others at equal similarity; trained, every head came
    to prefer newer ones. A model trained with it is loaded with it."""
    recall_lag_s: float = 0.0
    """> 0: each Recall head also recalls only looks at least this many seconds old, and says
    whether there were any, how long ago, and how alike they are (a cosine, which does not count
    tokens as the mean time does): past an entry, an arrival recalls only others' looks.
    0 = off. A model trained with it is loaded with it."""
    recall_lag_tilt: bool = True
    """The lagged recall (``recall_lag_s``) also weighs its looks by the heads' ``recall_tilt``
    (as the shipped models were trained). False: by similarity alone, so that a return an hour
    later finds its first visit as readily as one a minute later: the tilt, learned as about
    -0.45 per 100 s, weighs a look 1,000 s old e^4.5 below a fresh look-alike. An inference
    setting (no weights): on the shipped 2-fps model, held-out long clips' returns after 10 min
    0.793 -> 0.966 (docs/actions.md, "The lagged recall without the tilt")."""
    nms_iou: float = 0.5
    """Temporal NMS (tIoU above which the lower-scoring segment goes) among same-label segments
    of the labels in ``nms_labels``."""
    nms_labels: list[str] | None = None
    """Labels done together by several actors, whose overlapping segments are one event (both
    actors of a ``meet``); None = every label (one segment per label at a time, as
    ActivityNet-style annotations count). Where each actor's phase is its own segment (the
    synthetic benchmark: two actors walking at once are two walks) list only the group labels:
    configs/default.yaml has [meet]; NMS over every label lost the second walk there (segment
    mAP@0.5 0.690 -> 0.740 on the validation clips, docs/actions.md)."""
    segment_tau_s: float = 0.0
    """A clip segment's score is its mean probability times 1 - exp(-duration / segment_tau_s):
    a phase cut short (a track broken mid-phase, a label flickering for a step) ranks below the
    whole phases, which mAP rewards; 0 = off. The per-track actions keep their mean probability.
    configs/default.yaml has 4: validation segment mAP@0.5 0.799 -> 0.826 (short clips, 1 fps),
    0.841 -> 0.860 and 0.823 -> 0.846 (short / long, ``-c accurate``), flat from 2 to 10 s
    (docs/actions.md)."""
    min_track_s: float = 1.0
    """Tracks shorter than this (seconds) are dropped as noise."""
    conf_smooth_s: float = 0.0
    """Gaussian sigma (seconds) over each reported track's box confidences: a box's confidence is
    the detector's, averaged with its track's neighbouring boxes; 0 = the detector's own. AVA-style
    frame mAP ranks box confidence x label probability, and one frame's detector score is noisy
    (a limb, a neighbour, the occluder): configs/default.yaml has 0.2 (0.1-s tracking steps),
    validation frame mAP +0.003 / +0.004 (short / long, 1 fps) and +0.002 / +0.005 (``-c
    accurate``), 0.4 s about as good, 0.8 s and up worse (docs/actions.md). Only the reported
    confidences change."""
    smooth_s: float = 0.8
    """Gaussian sigma (seconds) over each track's per-step label probabilities before decoding;
    0 = off. Measured on session 5's model, with 0.8 s: segment mAP@0.5 0.439 -> 0.526 on the held-out short clips,
    return/arrive 0.771 -> 0.735 (docs/actions.md); 0.8 was picked over 0.5 and 1.2 in an offline sweep."""

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"actions.labels: got {self.labels!r}; use a non-empty list of distinct names")
        if self.background not in self.labels:
            raise ConfigError(f"actions.background: got {self.background!r}; use one of actions.labels")
        if not (1 <= self.max_actors <= 64):
            raise ConfigError(f"actions.max_actors: got {self.max_actors!r}; use 1 to 64")
        if not (1 <= self.roi_size <= 7):
            raise ConfigError(f"actions.roi_size: got {self.roi_size!r}; use 1 to 7")
        if not (0 <= self.segment_tau_s <= 3600):
            raise ConfigError(f"actions.segment_tau_s: got {self.segment_tau_s!r}; use 0 (off) to 3600 seconds")
        if not (type(self.recall_heads) is int and 1 <= self.recall_heads <= 16):  # not a bool
            raise ConfigError(f"actions.recall_heads: got {self.recall_heads!r}; use 1 to 16")
        if not (0 <= self.recall_lag_s <= 600):
            raise ConfigError(f"actions.recall_lag_s: got {self.recall_lag_s!r}; use 0 (off) to 600 seconds")
        if not (0 <= self.nms_iou <= 1):
            raise ConfigError(f"actions.nms_iou: got {self.nms_iou!r}; use a number from 0 to 1")
        if self.nms_labels is not None and not set(self.nms_labels) <= set(self.labels):
            raise ConfigError(f"actions.nms_labels: got {self.nms_labels!r}; use labels from actions.labels, [] (no NMS) or null (all)")
        if self.min_track_s < 0:
            raise ConfigError(f"actions.min_track_s: got {self.min_track_s!r}; use seconds >= 0")
        if not (0 <= self.conf_smooth_s <= 60):
            raise ConfigError(f"actions.conf_smooth_s: got {self.conf_smooth_s!r}; use 0 (off) to 60 seconds")
        if not (0 <= self.smooth_s <= 60):
            raise ConfigError(f"actions.smooth_s: got {self.smooth_s!r}; use 0 (off) to 60 seconds")


@dataclass
class OutputConfig:
    annotate: bool = True
    """Write annotated.mp4 (boxes, IDs, actions at the tracking rate)."""
    timeline: bool = True
    csv: bool = True


@dataclass
class PipelineConfig(FeaturesConfig):
    track: TrackConfig = field(default_factory=TrackConfig)
    actions: ActionConfig = field(default_factory=ActionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}; expected {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: got {value!r}; expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: got {value!r}; expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: got {value!r}; expected a number") from None
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected a list")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: got {value!r}; expected a string")
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: got {data!r}; expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; allowed: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)  # __post_init__ errors already name their full key


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``a.b=value`` strings applied onto a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: use key=value, e.g. sampling.fps=0.5")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = FeaturesConfig):
    """YAML file (optional) + dotted overrides -> a validated config dataclass."""
    data = _read_yaml(Path(path)) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return _build(cls, data)


def _read_yaml(p: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping; ``extends: other.yaml`` (relative to the file) is read first and
    this file's keys laid over it, section by section, so a variant config names only what differs."""
    if not p.exists():
        raise ConfigError(f"{p}: config file not found" + (f" (extended by {chain[-1]})" if chain else ""))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: got {type(data).__name__}; expected a mapping of config sections")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: extends: got {base!r}; expected a path to another config .yaml")
    parent = (p.parent / base).resolve()
    if parent in chain or parent == p.resolve():
        raise ConfigError(f"{p}: extends: {base} extends this file again (a loop); remove one of the two")
    return _merge(_read_yaml(parent, (*chain, p.resolve())), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
