"""Frame encoder: a timm ViT, used through timm's own contract.

``timm.create_model(name, pretrained=False, num_classes=0)``; weights from a
local file (safetensors, or a torch checkpoint loaded with
``weights_only=True``); the hub only when ``hub=True``. Preprocessing follows
``timm.data.resolve_model_data_config`` (input size, mean, std,
interpolation). ``forward_features`` gives the prefix (CLS) tokens and the
patch grid; the grid is kept for RoI pooling of actor boxes, and pooled to
k x k for the temporal model's frame tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import EncoderConfig
from .errors import ConfigError

__all__ = ["FrameEncoder", "EncodedFrames", "load_state_dict", "resolve_precision"]

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass
class EncodedFrames:
    cls: Tensor
    """(N, C) CLS embedding per frame."""
    grid: Tensor
    """(N, C, gh, gw) patch grid per frame."""
    tokens: Tensor
    """(N, P, C) frame tokens for the temporal model: CLS + pooled k x k grid (or every patch)."""


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Weights from a local file; refuses pickled code (weights_only=True)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"encoder.weights: {p} not found; give a local .safetensors or .pth file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: untrusted content
        raise ConfigError(f"encoder.weights: {p} is not a plain tensor checkpoint ({type(e).__name__}); "
                          "only weights are loaded (weights_only=True), convert it to safetensors") from None
    for key in ("state_dict", "model", "module"):  # timm / training checkpoints
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"encoder.weights: {p} holds no state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no native bf16 assumed
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def resolve_precision(precision: str, flags: set[str] | None = None) -> str:
    """``encoder.precision`` -> what the encoder runs: 'auto' is bf16 only where the CPU computes
    bf16 natively. Without AMX / AVX512-BF16, oneDNN emulates it and a ViT runs 2.6-2.8x
    slower than in fp32 (measured on a 2-core AVX-512 Xeon), not 1.8x faster as on AMX."""
    if precision != "auto":
        return precision
    flags = _cpu_flags() if flags is None else flags
    return "bf16" if any(f in flags for f in NATIVE_BF16_FLAGS) else "fp32"


class FrameEncoder(torch.nn.Module):
    """RGB uint8 frames -> CLS, patch grid and frame tokens."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        import timm

        if not cfg.name.startswith(("vit_", "deit", "eva")):
            raise ConfigError(f"encoder.name: got {cfg.name!r}; use a timm ViT, e.g. vit_tiny_patch16_224")
        try:
            self.model = timm.create_model(cfg.name, pretrained=cfg.hub, num_classes=0)
        except RuntimeError as e:
            raise ConfigError(f"encoder.name: {cfg.name!r} is not a timm model ({e})") from None
        if cfg.weights:
            missing, unexpected = self.model.load_state_dict(load_state_dict(cfg.weights), strict=False)
            missing = [m for m in missing if not m.startswith("head")]
            if missing:
                raise ConfigError(f"encoder.weights: {cfg.weights} does not fit {cfg.name} (missing {missing[:3]}...)")
        self.model.eval().requires_grad_(False)
        self.cfg = cfg
        self.precision = resolve_precision(cfg.precision)  # what runs ('auto' resolved): cache keys hold it
        data = timm.data.resolve_model_data_config(self.model)
        self.input_size = tuple(data["input_size"][1:])
        self.interpolation = "bicubic" if data.get("interpolation") == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        self.grid_size = tuple(self.model.patch_embed.grid_size)
        self.dim = int(self.model.num_features)
        k = {1: 0, 5: 2, 17: 4, 0: None}[cfg.tokens_per_frame]
        self.pool = k
        self.tokens_per_frame = 1 + (self.grid_size[0] * self.grid_size[1] if k is None else k * k)

    def settings(self) -> dict:
        """The encoder config as it runs ('auto' resolved): what feature-cache keys hold."""
        return {**asdict(self.cfg), "precision": self.precision}

    def preprocess(self, frames: np.ndarray | Tensor) -> Tensor:
        """(N, H, W, 3) uint8 RGB -> (N, 3, h, w) normalised float, resized to the model's input."""
        x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.input_size:
            # the whole frame, squashed: actors near the edges matter (no centre crop)
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def forward(self, frames: np.ndarray | Tensor) -> EncodedFrames:
        outs = []
        for s in range(0, len(frames), self.cfg.batch_size):
            x = self.preprocess(frames[s : s + self.cfg.batch_size])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                outs.append(self.model.forward_features(x).float())
        h = torch.cat(outs)
        cls = h[:, 0]
        gh, gw = self.grid_size
        grid = h[:, self.n_prefix :].reshape(len(h), gh, gw, self.dim).permute(0, 3, 1, 2).contiguous()
        if self.pool is None:
            tokens = torch.cat([cls[:, None], grid.flatten(2).transpose(1, 2)], dim=1)
        elif self.pool == 0:
            tokens = cls[:, None]
        else:
            pooled = F.adaptive_avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
            tokens = torch.cat([cls[:, None], pooled], dim=1)
        return EncodedFrames(cls, grid, tokens)
