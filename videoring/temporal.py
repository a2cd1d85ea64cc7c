"""The temporal model: a pre-norm transformer over the whole time axis.

Input: per frame, P tokens (CLS + pooled patch grid) from the encoder; each
token gets a sinusoidal encoding of its timestamp *in seconds* (so any
sampling rate and any length work), a token-type embedding (frame now, actor
tokens later) and a slot embedding (which of the P tokens of its frame).
Tokens are laid out frame-major: token ``f * P + p``. Every attention layer is
:func:`videoring.ring.ring_attention` over the rank's shard, so a W-rank run
equals the single-process one; frame-causal masking uses ``causal_block=P``.

Actor tokens (optional): per frame up to ``max_actors`` slots, each an actor's
appearance (RoI features) and kinematics (:mod:`videoring.actors`) projected
to ``dim``, with the actor token type and the frame's time encoding; absent
actors are key-padded. A frame then has ``P + max_actors`` tokens, frame
tokens first, and frame-causal masking uses ``causal_block = P + max_actors``.

Recall (with actor tokens that carry a thumbnail): before the transformer, one
fixed-form attention over all actor tokens of the past, frame-causal, asks "has
someone who looks like this been here before, and how long ago?". Queries and
keys are the same learned, L2-normalised projection of the thumbnail (cosine
similarity times a learned temperature); the value is the key's timestamp, so
the output is the similarity-weighted mean time of the look-alikes, turned into
``log1p(t - mean)``: a few seconds for an actor first seen now (it matches only
its own recent tokens), minutes for one that was here before. It goes into the
actor token's features. With several heads (``actions.recall_heads``) each head
has its own projection and temperature and adds its own number; with a tilt
(``actions.recall_tilt``) a head's scores also gain a learned bias per second of
the key's age; with a lag (``actions.recall_lag_s``) each head also recalls only looks at
least that old, and says whether there were any, how long ago, and how alike (a cosine, which
does not count tokens as the mean time does). This is the long-range path ``arrive`` vs ``return``
needs, and it runs through :func:`ring_attention` like every layer, so it sees
the whole video (or, in the ``window_s`` ablation, only its window).

One video at one rank (training, and inference without a ring) drops the
key-padded tokens, empty actor slots and padded frames, and attends by each
token's frame (``ring_attention(..., frames=)``; :func:`real_positions`): the
same attention on about half the pairs.

Output: every token's embedding and, per time step, the output of the frame's
CLS slot.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .actors import ActorTokens
from .config import TemporalConfig
from .ring import attention_rows, ring_attention
from .ring.comm import world_of

__all__ = ["TemporalModel", "time_encoding", "TOKEN_FRAME", "TOKEN_ACTOR"]

TOKEN_FRAME, TOKEN_ACTOR = 0, 1
MIN_PERIOD_S = 0.25


def time_encoding(t: Tensor, dim: int, max_period_s: float) -> Tensor:
    """(..., dim) sin/cos of 2*pi*t/period, periods geometric from 0.25 s to ``max_period_s``.

    Computed in float64: at t = 3600 s an fp32 angle would lose ~1e-4 rad per
    period step; the result is cast to fp32.
    """
    half = dim // 2
    periods = torch.exp(torch.linspace(math.log(MIN_PERIOD_S), math.log(max_period_s), half, dtype=torch.float64, device=t.device))
    ang = 2 * math.pi * t.to(torch.float64).unsqueeze(-1) / periods
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        enc = torch.cat([enc, torch.zeros_like(enc[..., :1])], dim=-1)
    return enc.float()


# Token-wise layers (norms, projections, MLPs) at inference run on this many tokens at a
# time: their activations (the MLP's 4x hidden above all) then cost O(chunk) memory instead
# of O(S): ~250 MB less at the hour's 39,600 tokens. Only attention needs the whole shard.
TOKEN_CHUNK = 4096


def tokenwise(fn, x: Tensor, dim: int, size: int = TOKEN_CHUNK) -> Tensor:
    """``fn(x)`` for a function acting on each token alone; in chunks of ``size`` along ``dim``
    when no gradient is recorded (with autograd the activations are kept anyway)."""
    if torch.is_grad_enabled() or x.shape[dim] <= size:
        return fn(x)
    # each chunk written into the output as it comes: concatenating a list of chunks would
    # hold the result twice (60 MB more for the hour's fused q/k/v projection)
    out = None
    for i, c in enumerate(x.split(size, dim)):
        y = fn(c)
        if out is None:
            shape = list(y.shape)
            shape[dim] = x.shape[dim]
            out = y.new_empty(shape)
        out.narrow(dim, i * size, y.shape[dim]).copy_(y)
    return out


class Block(nn.Module):
    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.drop = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: Tensor, kpm: Tensor | None, causal: bool, block: int, layout: str, group,
                frames: Tensor | None = None) -> Tensor:
        """``frames``: each token's frame (a compacted sequence), else frame = position // ``block``."""
        B, S, d = x.shape
        if not torch.is_grad_enabled() and S > TOKEN_CHUNK and world_of(group)[1] == 1:
            return self._rows(x, kpm, causal, block, frames)
        qkv = tokenwise(lambda c: self.qkv(self.norm1(c)), x, 1)
        q, k, v = qkv.view(B, S, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = ring_attention(q, k, v, causal=causal, causal_block=block, key_padding_mask=kpm, layout=layout, group=group,
                           frames=frames)
        del qkv, q, k, v
        if torch.is_grad_enabled():
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, S, d)))
            return x + self.drop(self.mlp(self.norm2(x)))
        # inference: residual updates in place, a chunk of tokens at a time (memory O(chunk), not O(S))
        a = a.transpose(1, 2)
        for i in range(0, S, TOKEN_CHUNK):
            c = x[:, i : i + TOKEN_CHUNK]
            c += self.proj(a[:, i : i + TOKEN_CHUNK].reshape(B, -1, d))
            c += self.mlp(self.norm2(c))
        return x

    def _rows(self, x: Tensor, kpm: Tensor | None, causal: bool, block: int, frames: Tensor | None) -> Tensor:
        """Inference at one rank, in query chunks: K/V of every token once, then per chunk its
        queries, attention, projection and MLP, updating x in place (K/V were taken before any
        update, and a chunk's queries come from its own, not yet updated, rows). Holds the whole
        K/V but never the whole Q or attention output."""
        B, S, d = x.shape
        h, hd = self.heads, d // self.heads
        wq, wkv = self.qkv.weight.split([d, 2 * d])
        bq, bkv = self.qkv.bias.split([d, 2 * d])
        kv = tokenwise(lambda c: F.linear(self.norm1(c), wkv, bkv), x, 1)
        k, v = kv.view(B, S, 2, h, hd).permute(2, 0, 3, 1, 4)
        for i in range(0, S, TOKEN_CHUNK):
            c = x[:, i : i + TOKEN_CHUNK]
            n = c.shape[1]
            q = F.linear(self.norm1(c), wq, bq).view(B, n, h, hd).transpose(1, 2)
            a = attention_rows(q, k, v, i, causal=causal, causal_block=block, key_padding_mask=kpm, frames=frames)
            c += self.proj(a.transpose(1, 2).reshape(B, n, d))
            c += self.mlp(self.norm2(c))
        return x


class Recall(nn.Module):
    """Per actor token and head: log1p(seconds since the similarity-weighted look-alikes of the past)."""

    TIME_UNIT_S = 1000.0  # timestamps enter the attention value in this unit (fp32: ~2 ms at 6 h)
    TILT_UNIT_S = 100.0  # and the tilt's key channel in this one: a tilt of 1 weighs a look 100 s older e times more

    def __init__(self, look_dim: int, dim: int = 32, height: bool = False, heads: int = 1, tilt: bool = False,
                 lag_s: float = 0.0, lag_tilt: bool = True) -> None:
        """``height``: the looks end with the box's height (a fraction of the frame's), which
        enters as 2 (log(height) + 1.6): centred on a fifth of the frame, and a build's spread
        about a thumbnail pixel's. ``heads``: independent projections and temperatures, each
        its own answer. ``tilt``: each head also learns a bias per second of a key's age (init
        0), so it can prefer older looks over the actor's own recent tokens. ``lag_s`` (> 0):
        each head also recalls only looks at least ``lag_s`` seconds old (:meth:`lagged`), weighed
        by the tilt too if ``lag_tilt``, else by similarity alone."""
        super().__init__()
        self.height = height
        self.heads = heads
        self.dim = dim
        self.lag_s = float(lag_s)
        self.lag_tilt = lag_tilt
        self.proj = nn.Linear(look_dim + height, dim * heads)
        # one head keeps the scalar parameter of the models trained before heads existed
        t0 = math.log(20.0)
        self.log_temp = nn.Parameter(torch.tensor(t0) if heads == 1 else torch.full((heads,), t0))
        self.tilt = nn.Parameter(torch.zeros(heads)) if tilt else None

    def _features(self, c: Tensor) -> Tensor:
        c = c.float()
        if not self.height:
            return c - 0.5
        # centred like the thumbnail's pixels (an offset would turn every z the same way at init)
        return torch.cat([c[..., :-1] - 0.5, 2 * (c[..., -1:].clamp_min(1e-3).log() + 1.6)], -1)

    def embed(self, looks: Tensor) -> Tensor:
        """(..., heads, dim) unit vectors: two looks' similarity in a head is their dot product
        (times its temperature)."""
        z = self.proj(self._features(looks))
        return F.normalize(z.unflatten(-1, (self.heads, self.dim)), dim=-1)

    def forward(self, looks: Tensor, times: Tensor, mask: Tensor, group=None, layout: str = "contiguous") -> Tensor:
        """looks (B, F, A, look_dim [+ 1]) in [0, 1] (with ``height``: then the height), times
        (B, F), mask (B, F, A) -> (B, F, A, :attr:`outputs`); 0 where ``mask`` is False when compacted (:func:`real_positions`)."""
        B, Fr, A, _ = looks.shape
        ts = times.unsqueeze(-1).expand(B, Fr, A).reshape(B, Fr * A)  # seconds, float64 from the pipeline
        # frame-causal over the actor tokens (A per frame): only the past (and the same frame) is recalled
        keep = real_positions(mask, group)
        if keep is None:
            rule = {"causal_block": A, "key_padding_mask": mask.reshape(B, Fr * A)}
        else:
            looks, ts = looks.flatten(1, 2)[:, keep], ts[:, keep]
            rule = {"frames": keep // A}
        N = ts.shape[1]
        t = ts.float().reshape(B, 1, N)
        temps = (self.log_temp.reshape(-1) / 2).exp()
        outs, lagged = [], []  # the heads' numbers, then the lagged ones (`seen` once, then per head)
        lag = _frame_lag(times, self.lag_s, group) if self.lag_s > 0 else 0
        for h in range(self.heads):  # a head at a time: the hour's fp32 q/k/v of one head are ~17 MB at 2 fps
            # q = k = z * sqrt(temperature), so q.k = temperature * cosine (and the temperature learns);
            # at inference a chunk of frames at a time
            z = tokenwise(lambda c: self.embed(c)[..., h, :], looks, 1, max(1, TOKEN_CHUNK // A))
            q = z.reshape(B, 1, N, -1) * temps[h]
            k = q
            v = torch.zeros_like(q)
            v[..., 0] = t / self.TIME_UNIT_S
            if self.tilt is not None:
                # one more channel: q.k gains -tilt * key time, i.e. tilt per TILT_UNIT_S of a key's age
                # (the query's own time is the same for all its keys: the softmax drops it)
                q = torch.cat([q, (-self.tilt[h]).expand(B, 1, N, 1)], -1)
                k = torch.cat([k, (t / self.TILT_UNIT_S).unsqueeze(-1)], -1)
                v = torch.cat([v, torch.zeros_like(v[..., :1])], -1)
            mean_t = ring_attention(q, k, v, causal=True, layout=layout, group=group, scale=1.0, **rule)[..., 0]
            ago = (ts - mean_t.reshape(B, N).double() * self.TIME_UNIT_S).clamp_min(0)
            outs.append((torch.log1p(ago) / 4).float())
            if lag:
                lagged += self.lagged(z.reshape(B, 1, N, -1), q, k, t, ts, temps[h], lag, layout, group, rule)[1 if h else 0:]
        out = torch.stack(outs + lagged, -1)
        n = out.shape[-1]
        if keep is not None:
            out = out.new_zeros(B, Fr * A, n).index_copy(1, keep, out)
        return out.reshape(B, Fr, A, n)

    @property
    def outputs(self) -> int:
        """Numbers per actor token: one per head; with a lag 2 more per head and one shared."""
        return self.heads * (3 if self.lag_s > 0 else 1) + (self.lag_s > 0)

    def lagged(self, z: Tensor, q: Tensor, k: Tensor, t: Tensor, ts: Tensor, temp: Tensor, lag: int, layout: str,
               group, rule: dict) -> list[Tensor]:
        """The head's recall of looks at least ``lag`` frames old: [any such look (1/0), log1p(seconds
        since their weighted mean time) / 4, temperature x (1 - the token's cosine to their weighted
        mean embedding) / 4].

        Why: the unlagged recall includes the actor's own recent tokens, and its mean time
        weighs a look-alike by how many tokens it left: one seen for minutes outweighs an
        arrival's own one or two (docs/actions.md, "Why look-alikes are swapped"). Lagged past an
        entry, an arrival recalls only others' looks and a return its own earlier visit; the
        cosine to their mean is then a similarity that does not grow with token counts.
        """
        B, _, N, D = z.shape
        pad = q.shape[-1] - D  # the tilt's channel
        if pad and not self.lag_tilt:
            q = torch.cat([q[..., :D], q.new_zeros(B, 1, N, pad)], -1)  # keys weighed by similarity alone
        # values: [time, 1 (is there any key), embedding]; q/k padded to the values' width
        v = torch.cat([t.unsqueeze(-1) / self.TIME_UNIT_S, torch.ones_like(t).unsqueeze(-1), z.to(t.dtype)], -1)
        v = torch.cat([v, v.new_zeros(B, 1, N, pad)], -1)
        zeros = q.new_zeros(B, 1, N, 2)
        q, k = torch.cat([q, zeros], -1), torch.cat([k, zeros], -1)
        o = ring_attention(q, k, v, causal=True, layout=layout, group=group, scale=1.0, lag=lag, **rule)[:, 0]
        seen = o[..., 1]  # 1 where any key was recalled, 0 where none (the attention's empty rows)
        ago = (ts - o[..., 0].double() * self.TIME_UNIT_S).clamp_min(0)
        cos = (z[:, 0].float() * o[..., 2 : 2 + D].float()).sum(-1)
        far = torch.where(seen > 0.5, temp ** 2 * (1 - cos), 20.0).clamp(0, 20)  # nothing recalled: as unlike as it gets
        return [seen.float(), (torch.log1p(ago) / 4).float(), far / 4]


def _frame_lag(times: Tensor, lag_s: float, group=None) -> int:
    """``lag_s`` in frames of the sampling step (the median step between the real frames of
    ``times``, (B, F) seconds): frames are sampled at a fixed rate, so the lag is one integer.

    Under a ring every rank must use the same lag (it counts global frames), so the step is
    the smallest of the ranks' medians: a rank holding one real frame (a video's tail, the
    rest padding) has no step of its own and would otherwise fall back to 1 s, half the lag
    at 2 fps. On a fixed grid every rank's median is the one step, as at W = 1.
    """
    d = times.diff(dim=-1).reshape(-1)
    d = d[d > 0]
    step = torch.tensor([float(d.median()) if d.numel() else math.inf], dtype=torch.float64)
    if world_of(group)[1] > 1:
        nccl = dist.get_backend(group) == "nccl"  # NCCL reduces device tensors only
        step = step.to(torch.device("cuda", torch.cuda.current_device())) if nccl else step
        dist.all_reduce(step, op=dist.ReduceOp.MIN, group=group)
    step = float(step) if math.isfinite(float(step)) else 1.0  # one frame in the whole video: any lag will do
    return max(1, math.ceil(lag_s / step - 1e-6))


class TemporalModel(nn.Module):
    def __init__(self, cfg: TemporalConfig, in_dim: int, tokens_per_frame: int, actor_dim: int = 0, max_actors: int = 0,
                 look: slice | None = None, height: int | None = None, recall_heads: int = 1, recall_tilt: bool = False,
                 recall_lag_s: float = 0.0, recall_lag_tilt: bool = True) -> None:
        """``look``: where the thumbnail sits in an actor token's features (enables :class:`Recall`);
        ``height``: where the box's height sits, for Recall to compare too; ``recall_heads``,
        ``recall_tilt``, ``recall_lag_s`` and ``recall_lag_tilt``: :class:`Recall`'s ``heads``,
        ``tilt``, ``lag_s`` and ``lag_tilt``."""
        super().__init__()
        self.cfg = cfg
        self.P = tokens_per_frame
        self.A = max_actors
        self.in_proj = nn.Linear(in_dim, cfg.dim)
        self.look = look
        self.height = height
        self.drop = nn.Dropout(cfg.dropout)
        if max_actors:
            if look is not None:
                self.recall = Recall(look.stop - look.start, height=height is not None, heads=recall_heads, tilt=recall_tilt,
                                     lag_s=recall_lag_s, lag_tilt=recall_lag_tilt)
                actor_dim += self.recall.outputs
            self.actor_proj = nn.Sequential(nn.LayerNorm(actor_dim), nn.Linear(actor_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.type_emb = nn.Embedding(2, cfg.dim)
        self.slot_emb = nn.Embedding(tokens_per_frame, cfg.dim)
        self.time_proj = nn.Linear(cfg.dim, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def recall_looks(self, actors: Tensor | ActorTokens) -> Tensor:
        """What :class:`Recall` reads of each actor token (..., look [+ height])."""
        cols = [*range(self.look.start, self.look.stop)] + ([] if self.height is None else [self.height])
        if isinstance(actors, ActorTokens):
            return actors.columns(cols)
        if self.height is None:
            return actors[..., self.look]
        # one gather (a copy of the looks, fp16: ~5 MB for an hour at 1 fps)
        return actors[..., cols]

    def forward(
        self, tokens: Tensor, timestamps: Tensor, frame_mask: Tensor | None = None, group=None,
        actors: Tensor | None = None, actor_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """tokens (B, F, P, C), timestamps (B, F) seconds, frame_mask (B, F) True = real frame;
        actors (B, F, A, actor_dim) (or the same as :class:`videoring.actors.ActorTokens`) and
        actor_mask (B, F, A) True = an actor is there.

        Returns (token outputs (B, F, P [+ A], dim), per-time-step outputs (B, F, dim)). F is
        this rank's frame count, equal on every rank (pad the end, mask it).
        """
        return self.encode(*self.embed(tokens, timestamps, frame_mask, actors, actor_mask, group), group)

    def embed(self, tokens: Tensor, timestamps: Tensor, frame_mask: Tensor | None = None,
              actors: Tensor | ActorTokens | None = None, actor_mask: Tensor | None = None,
              group=None) -> tuple[Tensor, Tensor]:
        """The input sequence: (x (B, F, S, dim), key padding (B, F, S)), S = P [+ A] tokens per frame."""
        B, Fr, P, _ = tokens.shape
        if P != self.P:
            raise ValueError(f"expected {self.P} tokens per frame, got {P}")
        if frame_mask is None:
            frame_mask = torch.ones(B, Fr, dtype=torch.bool, device=tokens.device)
        kpm = frame_mask.unsqueeze(2).expand(B, Fr, P)
        if self.A:
            if actors is None or actors.shape[2] != self.A:
                raise ValueError(f"expected actor tokens of shape (B, F, {self.A}, D)")
            kpm = torch.cat([kpm, actor_mask & frame_mask.unsqueeze(2)], dim=2)
            if self.look is not None:
                recalled = self.recall(self.recall_looks(actors), timestamps, kpm[:, :, P:], group, self.cfg.layout)
                actors = (actors, recalled)
        te = self.time_proj(time_encoding(timestamps, self.cfg.dim, self.cfg.time_scale_s))
        if torch.is_grad_enabled():
            return self._embed(tokens, _frames(actors, slice(None)), te), kpm
        # inference: written a chunk of frames at a time into x (no full-size temporaries)
        x = te.new_empty(B, Fr, P + self.A, self.cfg.dim)
        step = max(1, TOKEN_CHUNK // (P + self.A))
        for f in range(0, Fr, step):
            sl = slice(f, f + step)
            x[:, sl] = self._embed(tokens[:, sl], _frames(actors, sl), te[:, sl])
        return x, kpm

    def _embed(self, tokens: Tensor, actors: Tensor | tuple[Tensor, Tensor] | None, te: Tensor) -> Tensor:
        x = self.in_proj(tokens) + self.slot_emb.weight[None, None] + self.type_emb.weight[TOKEN_FRAME]
        if self.A:
            # actor features may be stored in fp16 (the pipeline keeps the hour's in 34 MB, not 68)
            feats = torch.cat([actors[0].float(), actors[1]], dim=-1) if self.look is not None else actors.float()
            a = self.actor_proj(self.drop(feats)) + self.type_emb.weight[TOKEN_ACTOR]
            x = torch.cat([x, a], dim=2)
        return x + te.unsqueeze(2)

    def encode(self, x: Tensor, kpm: Tensor, group=None) -> tuple[Tensor, Tensor]:
        """The transformer over the embedded sequence; outputs as :meth:`forward`."""
        B, Fr, S, d = x.shape
        x = x.reshape(B, Fr * S, d)
        kpm = kpm.reshape(B, Fr * S)
        keep = real_positions(kpm, group)
        if keep is None:
            for blk in self.blocks:
                x = blk(x, kpm, self.cfg.causal, S, self.cfg.layout, group)
            x = tokenwise(self.norm, x, 1)
        else:
            full, x, frames = x, x[:, keep], keep // S
            for blk in self.blocks:
                x = blk(x, None, self.cfg.causal, S, self.cfg.layout, group, frames)
            x = tokenwise(self.norm, x, 1)
            if torch.is_grad_enabled():
                x = full.new_zeros(B, Fr * S, d).index_copy(1, keep, x)
            else:  # inference: back into the padded input's own memory (no second padded tensor)
                x = full.zero_().index_copy_(1, keep, x)
        x = x.view(B, Fr, S, -1)
        return x, x[:, :, 0]


def real_positions(kpm: Tensor, group) -> Tensor | None:
    """Where a sequence is compacted: the flat positions of its real tokens, or None to keep it padded.

    One video at one rank (training, and inference with ``--nproc 1``) drops the key-padded
    tokens (empty actor slots: 59% of them in the 2-fps training set) and attends by each
    token's frame: the same attention over the same real keys, on 0.47x the main sequence's
    and 0.18x Recall's query-key pairs, and without masks off the diagonal. The padded tokens'
    outputs are then 0 (nothing reads them). A ring (W > 1) keeps the padded layout: it shards
    the sequence by time at equal lengths; so does a batch of several videos.
    """
    if kpm.shape[0] != 1 or world_of(group)[1] != 1:
        return None
    keep = kpm.reshape(-1).nonzero().squeeze(1)
    return keep if keep.numel() else None


def _frames(actors, sl: slice):
    """Frames ``sl`` of the actor tokens (or of (tokens, recalled)), as padded tensors."""
    if isinstance(actors, tuple):
        return (_frames(actors[0], sl), actors[1][:, sl])
    if isinstance(actors, ActorTokens):
        return actors.dense(sl)
    return actors if actors is None else actors[:, sl]
