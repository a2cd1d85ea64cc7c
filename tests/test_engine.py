"""Encoder, temporal model and the time-sharded engine."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from videoring.config import EncoderConfig, FeaturesConfig, TemporalConfig, load_config
from videoring.encoder import FrameEncoder, load_state_dict
from videoring.engine import frame_pieces
from videoring.errors import ConfigError
from videoring.synth import synthesize
from videoring.temporal import time_encoding

from .distributed import run_world
from .engine_jobs import CASES, features_and_grads


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "clip.mp4"
    synthesize(out, seed=3, duration_s=9.7, fps=10, size=(160, 120))  # 20 samples at 2 fps: uneven for W=3, 4
    return out


def test_sharded_features_and_gradients_equal_single_process(clip):
    """W = 1, 2, 3, 4 give the same per-time-step outputs and parameter gradients.

    Bound 1e-4 (fp32): the ring is exact up to rounding (~1e-6 here); the rest is
    batch-size-dependent rounding in the encoder's matmuls, since each rank encodes
    a different number of frames.
    """
    ref = run_world(features_and_grads, 1, str(clip))[0]
    assert ref[0][0].shape == (20, 64)
    for world in (2, 3, 4):
        got = run_world(features_and_grads, world, str(clip))[0]
        for (layout, causal), r, g in zip(CASES, ref, got):
            f_ref, ts_ref, gr_ref = (torch.as_tensor(x) for x in r)
            f, ts, gr = (torch.as_tensor(x) for x in g)
            np.testing.assert_array_equal(ts, ts_ref)
            assert (f - f_ref).abs().max() <= 1e-4, (world, layout)
            assert (gr - gr_ref).abs().max() <= 1e-4, (world, layout)
            assert gr_ref.abs().max() > 1e-3  # the gradients are not trivially zero


def test_frame_pieces_cover_every_frame_once():
    for T in (1, 7, 20, 101):
        for W in (1, 2, 3, 4):
            for layout in ("contiguous", "zigzag"):
                pieces = frame_pieces(T, W, layout)
                lens = {sum(b - a for a, b in p) for p in pieces}
                assert len(lens) == 1  # the same padded length on every rank
                covered = sorted(i for p in pieces for a, b in p for i in range(a, min(b, T)))
                assert covered == list(range(T))


def test_time_encoding_is_exact_in_seconds():
    t = torch.tensor([0.0, 0.5, 3600.0, 3600.5], dtype=torch.float64)
    e = time_encoding(t, 64, 10000.0)
    assert e.shape == (4, 64) and e.dtype == torch.float32
    assert not torch.allclose(e[2], e[3])  # half a second apart, an hour in: still distinct
    assert torch.allclose(e[0], time_encoding(torch.zeros(1, dtype=torch.float64), 64, 10000.0)[0])


@pytest.mark.parametrize("tpf, n", [(1, 1), (5, 5), (17, 17), (0, 197)])
def test_encoder_tokens_per_frame(tpf, n):
    enc = FrameEncoder(EncoderConfig(tokens_per_frame=tpf, precision="fp32", batch_size=3))
    frames = np.random.default_rng(0).integers(0, 255, (4, 120, 160, 3), dtype=np.uint8)
    out = enc(frames)
    assert out.tokens.shape == (4, n, 192) and out.grid.shape == (4, 192, 14, 14) and out.cls.shape == (4, 192)
    # batching does not change the result (3 + 1 vs one at a time)
    one = enc(frames[3:])
    assert torch.allclose(one.tokens[0], out.tokens[3], atol=1e-4)


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    import videoring.encoder as enc_mod
    from videoring.encoder import resolve_precision

    avx512 = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # oneDNN emulates bf16 here: 2.6x slower
    assert resolve_precision("auto", avx512) == "fp32"
    assert resolve_precision("auto", avx512 | {"avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", avx512 | {"amx_tile", "amx_bf16"}) == "bf16"
    assert resolve_precision("bf16", avx512) == "bf16" and resolve_precision("fp32", {"amx_bf16"}) == "fp32"
    # the encoder runs what auto resolves to, and the feature cache keys on that, not on "auto"
    monkeypatch.setattr(enc_mod, "_cpu_flags", lambda: set(avx512))
    assert FrameEncoder(EncoderConfig(precision="auto")).precision == "fp32"
    monkeypatch.setattr(enc_mod, "_cpu_flags", lambda: avx512 | {"amx_bf16"})
    assert FrameEncoder(EncoderConfig(precision="auto")).precision == "bf16"
    with pytest.raises(ConfigError, match=r"encoder\.precision"):
        EncoderConfig(precision="fp16")
    from videoring.engine import FeatureEngine

    paths = {p: FeatureEngine(load_config(None, [f"encoder.precision={p}", "cache_dir=c"]))._cache_path("v", np.arange(3))
             for p in ("auto", "fp32", "bf16")}
    assert paths["auto"] == paths["bf16"] != paths["fp32"]  # flags: amx_bf16 (set above)


def test_encoder_weights_from_local_files(tmp_path):
    torch.manual_seed(1)
    src = FrameEncoder(EncoderConfig(precision="fp32"))
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    want = src(frames).tokens
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(99)  # a different random init, overwritten by the file
        enc = FrameEncoder(EncoderConfig(precision="fp32", weights=str(tmp_path / name)))
        assert torch.allclose(enc(frames).tokens, want)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(ConfigError, match="weights_only"):
        load_state_dict(path)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="encoder.tokens_per_frame"):
        load_config(None, ["encoder.tokens_per_frame=3"])
    with pytest.raises(ConfigError, match="temporal.depht: unknown key"):
        load_config(None, ["temporal.depht=3"])
    with pytest.raises(ConfigError, match="sampling.fps"):
        load_config(None, ["sampling.fps=abc"])
    with pytest.raises(ConfigError, match="temporal.dim"):
        load_config(None, ["temporal.dim=30", "temporal.heads=4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    cfg = load_config(None, ["temporal.causal=true", "encoder.weights=null"])
    assert cfg.temporal.causal is True and cfg.encoder.weights is None
    assert isinstance(cfg, FeaturesConfig) and isinstance(cfg.temporal, TemporalConfig)


def test_config_extends_another_file_section_by_section(tmp_path):
    """A variant names only what differs: its keys lie over the base's, the base's other keys in
    the same section stay; a missing base or a loop is one line naming the file."""
    (tmp_path / "base.yaml").write_text("sampling:\n  fps: 1.0\n  chunk_size: 16\ntemporal:\n  depth: 2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "fast.yaml").write_text("extends: ../base.yaml\nsampling:\n  fps: 2.0\n")
    cfg = load_config(tmp_path / "sub" / "fast.yaml", ["temporal.depth=3"])
    assert (cfg.sampling.fps, cfg.sampling.chunk_size, cfg.temporal.depth) == (2.0, 16, 3)
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: config file not found \(extended by .*orphan.yaml\)"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="a loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="list.yaml: got list; expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_ranks_with_different_configs_stop_with_a_clear_error(clip):
    from .engine_jobs import disagreeing_ranks

    msgs = run_world(disagreeing_ranks, 2, str(clip), timeout=120)
    assert all("different config" in m and "same job" in m for m in msgs), msgs


def test_cache_reuses_finished_blocks_after_an_interrupted_run(clip, tmp_path):
    """A run killed midway leaves its finished 64-frame blocks; the rerun encodes only the rest."""
    from videoring.engine import FeatureEngine

    cfg = load_config(None, [f"cache_dir={tmp_path}", "sampling.fps=10", "temporal.depth=1", "encoder.precision=fp32"])
    full = FeatureEngine(cfg).run(str(clip)).features
    files = sorted(tmp_path.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2  # 97 frames: blocks of 64 + 33
    kept = files[0].stat().st_ino
    files[1].unlink()  # as if killed while encoding the second block
    again = FeatureEngine(cfg).run(str(clip)).features
    assert files[0].stat().st_ino == kept and files[1].exists()
    assert torch.allclose(again, full, atol=1e-5)


@pytest.mark.parametrize("causal,look,height", [(True, None, None), (False, None, None), (True, slice(4, 10), None),
                                                (True, slice(4, 10), 11)])
def test_chunked_inference_equals_whole_sequence(causal, look, height, monkeypatch):
    """At inference the temporal model embeds and attends a chunk of tokens at a time
    (one rank: query chunks against the whole K/V, residuals updated in place); the
    outputs equal the training-mode pass over the whole sequence at once, and fp16 actor
    features are read as fp32. Both drop the padded tokens and attend by frame; so does the
    padded inference layout (a ring's) run at one rank. Real tokens and frames are
    compared: nothing reads a padded one's output (0 where compacted)."""
    import videoring.temporal as T

    torch.manual_seed(0)
    cfg = TemporalConfig(dim=32, depth=2, heads=4, causal=causal, layout="zigzag")
    model = T.TemporalModel(cfg, 16, 3, 12, 2, look=look, height=height).eval()
    Fr = 300
    g = torch.Generator().manual_seed(1)
    tok = torch.randn(1, Fr, 3, 16, generator=g)
    ts = (torch.arange(Fr, dtype=torch.float64) * 0.7)[None]
    fm = torch.ones(1, Fr, dtype=torch.bool)
    fm[0, -11:] = False
    act = torch.rand(1, Fr, 2, 12, generator=g).half()
    am = torch.rand(1, Fr, 2, generator=g) < 0.5
    with torch.enable_grad():  # the training path: whole-sequence projections and attention
        want, want_step = model(tok, ts, fm, None, act, am)
    monkeypatch.setattr(T, "TOKEN_CHUNK", 128)  # 1,500 tokens: 12 chunks, a partial last one
    with torch.inference_mode():
        got, got_step = model(tok, ts, fm, None, act, am)
        monkeypatch.setattr(T, "real_positions", lambda *a: None)
        pad, pad_step = model(tok, ts, fm, None, act, am)
    real = torch.cat([fm[:, :, None].expand(1, Fr, 3), am & fm[:, :, None]], 2)
    for x, step in ((got, got_step), (pad, pad_step)):
        assert (x - want.detach())[real].abs().max() < 1e-5
        assert (step - want_step.detach())[fm].abs().max() < 1e-5
    assert not want.detach()[~real].any() and not got[~real].any()  # compacted: the padded tokens dropped
    assert pad[~real].abs().min() > 0  # the padded layout computes them


@pytest.mark.parametrize("causal", [True, False])
def test_training_pass_without_padded_tokens_equals_the_padded_pass(causal, monkeypatch):
    """Training at one rank drops the key-padded tokens (absent actors, padded frames) and
    attends by each token's frame: the real tokens' outputs and every parameter's gradient
    equal those of the padded sequence. fp32 sums in another order: outputs to 1e-5; gradients
    to 1e-4 of their largest entry (Recall's temperature sums ~1e3-sized terms that cancel
    to ~2); a wrong mask or frame moves them by O(1). Under bf16 autocast too."""
    import videoring.temporal as T

    torch.manual_seed(0)
    cfg = TemporalConfig(dim=32, depth=2, heads=4, causal=causal)
    model = T.TemporalModel(cfg, 16, 3, 12, 4, look=slice(4, 10), height=11, recall_heads=2, recall_tilt=True).eval()
    with torch.no_grad():
        model.recall.tilt.copy_(torch.tensor([0.0, 0.4]))
    Fr = 140
    g = torch.Generator().manual_seed(2)
    tok = torch.randn(1, Fr, 3, 16, generator=g)
    ts = (torch.arange(Fr, dtype=torch.float64) * 0.5)[None]
    fm = torch.ones(1, Fr, dtype=torch.bool)
    fm[0, -9:] = False
    act = torch.rand(1, Fr, 4, 12, generator=g)
    am = torch.rand(1, Fr, 4, generator=g) < 0.4
    real = torch.cat([fm[:, :, None].expand(1, Fr, 3), am & fm[:, :, None]], 2)
    w = torch.randn(1, Fr, 7, 32, generator=g)

    def run():
        model.zero_grad()
        x, step = model(tok, ts, fm, None, act, am)
        ((x * w)[real].sum() + step[fm].sum()).backward()
        return x.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    real_positions = T.real_positions
    monkeypatch.setattr(T, "real_positions", lambda *a: calls.append(1) or real_positions(*a))
    x1, g1 = run()
    assert len(calls) == 2 and real_positions(real, None).numel() == int(real.sum())  # Recall's and the transformer's
    monkeypatch.setattr(T, "real_positions", lambda *a: None)
    x2, g2 = run()
    assert (x1 - x2)[real].abs().max() < 1e-5
    assert sorted(g1) == sorted(g2) and "recall.tilt" in g1
    for n in g1:
        assert (g1[n] - g2[n]).abs().max() <= 1e-4 * max(1.0, g2[n].abs().max().item()), n

    # under bf16 autocast (training's precision on CPUs with native bf16) the two passes differ
    # by less than bf16 rounding itself moves the padded pass from fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded16 = model(tok, ts, fm, None, act, am)[0].float()
        monkeypatch.setattr(T, "real_positions", real_positions)
        with torch.enable_grad():
            compact16 = model(tok, ts, fm, None, act, am)[0].float().detach()
    assert (compact16 - padded16)[real].abs().max() < (padded16 - x2)[real].abs().max()


def test_arena_keeps_rows_in_blocks():
    from videoring.arena import Arena

    a = Arena((3,), torch.float16, block_bytes=6 * 4)  # 4 rows per block
    xs = [torch.randn(n, 3) for n in (1, 2, 1, 3, 6)]
    ids = [a.append(x) for x in xs]
    assert [list(r) for r in ids[:3]] == [[0], [1, 2], [3]] and len(a) == 13
    allx = torch.cat(xs).half()
    assert torch.equal(a.gather(torch.arange(13)), allx)  # runs straddling blocks (3..5, 7..12)
    pick = torch.tensor([12, 0, 5, 5, 8])
    assert torch.equal(a.gather(pick), allx[pick])
    assert len(a._blocks) == 4 and all(b.shape == (4, 3) for b in a._blocks)  # equal blocks, no gaps
    with pytest.raises(ValueError, match="arena rows"):
        a.append(torch.zeros(1, 4))
    with pytest.raises(IndexError, match="13 rows"):
        a.gather(torch.tensor([13]))


def test_actor_tokens_equal_their_padded_tensor():
    """ActorTokens (rows named in an arena + kinematics) is the padded actor tensor: densely, a
    chunk of frames, some columns; and the model embeds it exactly as it embeds that tensor."""
    from videoring.actors import ActorTokens
    from videoring.arena import Arena
    from videoring.config import TemporalConfig
    from videoring.temporal import TemporalModel

    g = torch.Generator().manual_seed(0)
    B, Fr, A, Dr, K = 1, 50, 3, 10, 4
    store = Arena((Dr,), torch.float16, block_bytes=7 * 2 * Dr)
    store.append(torch.randn(120, Dr, generator=g))
    rows = torch.randint(0, 120, (B, Fr, A), generator=g)
    rows[torch.rand(B, Fr, A, generator=g) < 0.4] = -1
    kin = torch.randn(B, Fr, A, K, generator=g).half() * (rows >= 0).unsqueeze(-1)
    packed = ActorTokens(store, rows, kin)
    want = torch.zeros(B, Fr, A, Dr + K, dtype=torch.float16)
    for f in range(Fr):
        for j in range(A):
            if rows[0, f, j] >= 0:
                want[0, f, j] = torch.cat([store.gather(rows[0, f, j : j + 1])[0], kin[0, f, j]])
    assert packed.shape == (B, Fr, A, Dr + K)
    assert torch.equal(packed.dense(), want)
    assert torch.equal(packed.dense(slice(7, 19)), want[:, 7:19])
    assert torch.equal(packed.dense(torch.tensor([3, 1, 40])), want[:, [3, 1, 40]])
    cols = [2, 9, 11, 0]  # appearance and kinematics columns, out of order
    assert torch.equal(packed.columns(cols), want[..., cols])

    torch.manual_seed(0)
    model = TemporalModel(TemporalConfig(dim=32, depth=1, heads=2), 8, 2, Dr + K, A, look=slice(2, 9), height=Dr + 1).eval()
    tok, ts = torch.randn(B, Fr, 2, 8), torch.arange(Fr, dtype=torch.float64).unsqueeze(0)
    am = rows >= 0
    with torch.inference_mode():
        x1, k1 = model.embed(tok, ts, None, want, am)
        x2, k2 = model.embed(tok, ts, None, packed, am)
    assert torch.equal(x1, x2) and torch.equal(k1, k2)


@pytest.mark.parametrize("tilt, lag_s", [(False, 0.0), (True, 0.0), (True, 4.5)])
def test_recall_sharded_equals_single_process(tilt, lag_s):
    """Recall's attention over the actor tokens is a ring attention like every layer: W = 2, 3
    give the outputs and gradients of W = 1, in both layouts; a look-alike that returns
    recalls its first visit, an actor seen only now recalls (almost) nothing. With ``tilt``:
    two heads, the second tilted towards older looks. With ``lag_s`` (3 frames): the lagged
    numbers too, whose first frames recall nothing."""
    from .engine_jobs import recall_on_ranks

    # outputs are log1p(seconds ago) / 4 from fp32 softmax merges in another order: scores of
    # temperature ~20 carry ~20 x 2^-24 relative rounding into each weight (1e-5 here ~ 4e-5 s);
    # the lagged dissimilarity is temperature / 4 (~5) x a cosine merged in fp32 the same way
    atol = 2e-5 if tilt else 1e-5
    for layout in ("contiguous", "zigzag"):
        ref, gref, mask = run_world(recall_on_ranks, 1, layout, tilt, lag_s)[0]
        ref = {f: torch.as_tensor(o) for f, o in ref.items()}
        gref, mask = torch.as_tensor(gref), torch.as_tensor(mask)
        if lag_s:
            assert ref[0].shape[-1] == 2 * 3 + 1
            seen = 2  # after the two heads' numbers
            assert (ref[2][..., seen] == 0).all() and (ref[3][mask[3], seen] == 1).all()  # keys 3 frames old from frame 3 on
        for world in (2, 3):
            parts = run_world(recall_on_ranks, world, layout, tilt, lag_s)
            got = {f: torch.as_tensor(o) for p in parts for f, o in p[0].items()}
            assert sorted(got) == list(range(23))
            for f in range(23):
                m = mask[f]  # absent actors' outputs are never read
                assert torch.allclose(got[f][m], ref[f][m], rtol=0, atol=atol), (layout, world, f)
            # fp32 gradients, relative to their size (the lagged dissimilarity's are ~5, the times' < 1)
            assert (torch.as_tensor(parts[0][1]) - gref).abs().max() <= 1e-5 * max(1.0, float(gref.abs().max()))
        ago = lambda f, a, h=0: float(torch.expm1(ref[f][a, h] * 4))  # noqa: E731
        assert ago(15, 1) > 5.0  # back at 22.5 s; first seen at 3 s (the mean with its own token: ~10 s)
        assert ago(2, 0) < 2.0  # first seen now
        if tilt:
            assert ago(15, 1, 1) > ago(15, 1)  # the tilted head weighs the first visit more
        if lag_s:  # head 0's lagged dissimilarity: the returning look-alike is nearer what it recalls than a newcomer
            far = 4  # seen, then head 0's lagged time and dissimilarity
            assert float(ref[15][1, far]) < min(float(ref[f][a, far]) for f in range(3, 15) for a in range(3) if mask[f, a])


def test_recall_lag_is_one_for_the_whole_ring():
    """The lag counts global frames, so every rank must turn ``recall_lag_s`` into the same
    number of frames: 13 frames 1.5 s apart on W = 4 ranks of 4 leave the last rank one real
    frame (no step of its own to measure); its outputs still equal W = 1's (4.5 s = 3 frames,
    where a 1-s guess would make it 5)."""
    from .engine_jobs import recall_on_ranks

    T = 13
    ref, _, mask = run_world(recall_on_ranks, 1, "contiguous", False, 4.5, T)[0]
    parts = run_world(recall_on_ranks, 4, "contiguous", False, 4.5, T)
    assert sorted(parts[3][0]) == [12] and bool(torch.as_tensor(mask)[12].any())
    m = torch.as_tensor(mask)[12]
    assert torch.allclose(torch.as_tensor(parts[3][0][12])[m], torch.as_tensor(ref[12])[m], rtol=0, atol=1e-5)


def test_recall_heads_and_tilt_equal_a_float64_reference():
    """Each Recall head is its own softmax over the frame-causal past, of temperature x cosine
    minus the tilt per TILT_UNIT_S of the key's time, whose value is the key's time: the output
    equals that written out in float64, and without tilt a head is a one-head Recall with its
    rows of the projection."""
    from videoring.temporal import Recall

    torch.manual_seed(0)
    T, A, H, L = 17, 3, 3, 9
    model = Recall(L, dim=8, heads=H, tilt=True)
    with torch.no_grad():
        model.tilt.copy_(torch.tensor([0.0, 0.5, -0.2]))
        model.log_temp.copy_(torch.tensor([3.0, 2.0, 3.5]))
    looks = torch.rand(1, T, A, L)
    times = (torch.arange(T, dtype=torch.float64) * 37.0 + 5.0)[None]
    mask = torch.rand(1, T, A) < 0.8
    mask[0, 0, 0] = True
    out = model(looks, times, mask)[0].double()
    # compared in seconds, to 1 ms: the mean time is fp32 kilo-seconds (~6e-5 s apart at 600 s)
    ago = lambda o: torch.expm1(4 * o.detach().double())  # noqa: E731

    z = model.embed(looks[0]).double()  # (T, A, H, dim)
    t = times[0][:, None].expand(T, A).reshape(-1)
    frame = torch.arange(T)[:, None].expand(T, A).reshape(-1)
    for h in range(H):
        zh = z[:, :, h].reshape(T * A, -1)
        s = model.log_temp[h].double().exp() * zh @ zh.T - model.tilt[h].double() * t[None] / Recall.TILT_UNIT_S
        s = s.masked_fill(~mask.reshape(-1)[None] | (frame[None] > frame[:, None]), float("-inf"))
        mean_t = torch.softmax(s, -1) @ t
        m = mask.reshape(-1)
        assert (ago(out[..., h].reshape(-1)) - (t - mean_t).clamp_min(0))[m].abs().max() < 1e-3, h

    # without tilt, each head is a one-head Recall with its rows of the projection
    untilted = Recall(L, dim=8, heads=H)
    untilted.load_state_dict({k: v for k, v in model.state_dict().items() if k != "tilt"})
    several = untilted(looks, times, mask)
    for h in range(H):
        one = Recall(L, dim=8)
        with torch.no_grad():
            one.proj.weight.copy_(model.proj.weight[8 * h:8 * (h + 1)])
            one.proj.bias.copy_(model.proj.bias[8 * h:8 * (h + 1)])
            one.log_temp.copy_(model.log_temp[h])
        assert (ago(one(looks, times, mask)[..., 0]) - ago(several[..., h]))[mask].abs().max() < 1e-3, h


@pytest.mark.parametrize("lag_tilt", [True, False])
def test_recall_lag_equals_a_float64_reference(lag_tilt):
    """With ``lag_s``, each head also recalls only keys at least that long before the query (in
    frames of the sampling step): whether there were any, log1p(seconds since their softmax-
    weighted mean time) / 4, and temperature x (1 - the cosine to their weighted mean
    embedding) / 4, as written out here in float64, the keys weighed by the tilt too or (without
    ``lag_tilt``) by similarity alone; the heads' own numbers are unchanged (tilted either way)."""
    from videoring.temporal import Recall

    torch.manual_seed(1)
    T, A, H, L, lag = 15, 3, 2, 9, 3
    model = Recall(L, dim=8, heads=H, tilt=True, lag_s=lag * 23.0 - 5.0, lag_tilt=lag_tilt)  # 18 s past 2 steps of 23 s: 3 frames
    with torch.no_grad():
        model.tilt.copy_(torch.tensor([0.3, -0.2]))
        model.log_temp.copy_(torch.tensor([2.0, 1.0]))  # cosines far from 1: the clamp at 20 stays out of it
    looks = torch.rand(1, T, A, L)
    times = (torch.arange(T, dtype=torch.float64) * 23.0 + 2.0)[None]
    mask = torch.rand(1, T, A) < 0.8
    mask[0, 0, 0] = True
    out = model(looks, times, mask)[0].double()
    assert out.shape == (T, A, 3 * H + 1)
    plain = Recall(L, dim=8, heads=H, tilt=True)
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(out[..., :H], plain(looks, times, mask)[0].double(), atol=1e-6)

    z = model.embed(looks[0]).double()
    t = times[0][:, None].expand(T, A).reshape(-1)
    frame = torch.arange(T)[:, None].expand(T, A).reshape(-1)
    m = mask.reshape(-1)
    visible = m[None] & (frame[None] <= frame[:, None] - lag)
    seen = visible.any(-1)
    got_seen = out[..., H].reshape(-1)
    assert ((got_seen - seen.double())[m].abs() < 1e-6).all()  # a softmax-weighted mean of ones, or 0 for no key
    for h in range(H):
        zh = z[:, :, h].reshape(T * A, -1)
        temp = model.log_temp[h].double().exp()
        s = temp * zh @ zh.T - (model.tilt[h].double() * t[None] / Recall.TILT_UNIT_S if lag_tilt else 0)
        p = torch.softmax(s.masked_fill(~visible, -1e300), -1)
        ago = (t - p @ t).clamp_min(0)
        cos = ((p @ zh) * zh).sum(-1)
        want_far = (temp * (1 - cos)).clamp(0, 20) / 4
        got_ago = torch.expm1(4 * out[..., H + 1 + 2 * h].reshape(-1))
        got_far = out[..., H + 2 + 2 * h].reshape(-1)
        assert (got_ago - ago)[m & seen].abs().max() < 1e-2, h  # seconds: fp32 kilo-seconds in the values
        assert (got_far - want_far)[m & seen].abs().max() < 1e-4, h
        assert (got_far[m & ~seen] == 5.0).all()  # nothing recalled: as unlike as it gets
