"""Training: deterministic for a seed, resumable, checkpoints with config + label map, data parallel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .distributed import run_world
from .train_jobs import train_on_rank


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from videoring.synth import synthesize

    root = tmp_path_factory.mktemp("train")
    paths = []
    for seed in (8001, 8002):
        p = root / f"c{seed}.mp4"
        synthesize(p, seed=seed, duration_s=24.0, fps=10.0, size=(160, 120))
        paths.append(str(p))
    return root, paths


def _overrides(root, paths, out, epochs=2):
    return [f"train.videos={json.dumps(paths)}", f"train.epochs={epochs}", f"train.out={out}",
            f"train.cache_dir={root / 'cache'}", "train.warmup_steps=2", "track.export=none"]


def test_deterministic_checkpoint_and_resume(clips, tmp_path):
    from safetensors import safe_open

    from videoring.train import load_train_config, train

    root, paths = clips
    a = train(load_train_config("configs/train_synth.yaml", _overrides(root, paths, tmp_path / "a")), log=lambda *x: None)
    b = train(load_train_config("configs/train_synth.yaml", _overrides(root, paths, tmp_path / "b")), log=lambda *x: None)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k  # same seed, same weights
    with safe_open(str(a.path), "pt") as f:
        meta = json.loads(f.metadata()["videoring"])
    assert meta["labels"][:2] == ["idle", "walk"] and meta["epoch"] == 1 and "temporal" in meta["config"]
    from videoring.encoder import resolve_precision

    assert meta["config"]["train"]["precision"] == resolve_precision("auto") != "auto"  # as it ran on this CPU
    # interrupted right after epoch 1's checkpoint, then --resume: the same weights as two epochs straight
    def stop(msg):
        if str(msg).startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_train_config("configs/train_synth.yaml", _overrides(root, paths, tmp_path / "c")), log=stop)
    r = subprocess.run([sys.executable, "-m", "videoring.cli", "train", "-c", "configs/train_synth.yaml", "--resume",
                        *_overrides(root, paths, tmp_path / "c", epochs=2)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    resumed = load_file(str(tmp_path / "c" / "model.safetensors"))
    for k, x in a.model.state_dict().items():
        assert torch.equal(resumed[k], x), k


def test_prepare_from_end_meets_the_forward_pass_with_the_same_items(clips, tmp_path):
    import shutil

    from videoring.train import TrainJob, load_train_config

    root, paths = clips
    fwd = TrainJob(load_train_config("configs/train_synth.yaml", _overrides(root, paths, tmp_path / "o"))).dataset(log=lambda *x: None)
    job = TrainJob(load_train_config("configs/train_synth.yaml", [*_overrides(root, paths, tmp_path / "o"),
                                                                   f"train.cache_dir={tmp_path / 'back'}"]))
    first = job._cached(paths[0], job._cache_key())
    first.parent.mkdir(parents=True)
    shutil.copyfile(root / "cache" / first.name, first)  # the forward pass has done clip 0
    assert job.prepare_from_end(log=lambda *x: None) == 1  # clip 1, then it stops at clip 0
    back = job.dataset(log=lambda *x: None)
    for a, b in zip(fwd, back, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_feature_cache_key_keeps_older_caches():
    """Token settings added later (``actions.band_mask``, ``texture_masked``) enter the cache key only when on:
    the caches prepared before it existed keep their keys."""
    from videoring.train import TrainJob, load_train_config

    off = TrainJob(load_train_config("configs/train_synth.yaml", []))._cache_key()
    for setting in ("band_mask", "texture_masked"):
        on = TrainJob(load_train_config("configs/train_synth.yaml", [f"actions.{setting}=true"]))._cache_key()
        assert setting not in off and f'"{setting}": true' in on
        assert json.loads(on)["act"] == {**json.loads(off)["act"], setting: True}


def test_train_precision_is_checked():
    from videoring.errors import ConfigError
    from videoring.train import load_train_config

    with pytest.raises(ConfigError, match=r"train\.precision: got 'fp16'"):
        load_train_config("configs/train_synth.yaml", ["train.precision=fp16"])


def test_data_parallel_ranks_stay_identical(clips, tmp_path):
    root, paths = clips
    sums = run_world(train_on_rank, 2, _overrides(root, paths, tmp_path / "dp"), timeout=280)
    assert sums[0] == sums[1]
    assert (tmp_path / "dp" / "model.safetensors").exists()


def test_texture_model_trains_and_is_loaded_only_with_texture(clips, tmp_path):
    """``actions.texture`` widens the actor token: a model trained with it analyses a video with
    it, and a config without it is told which setting the model was trained with."""
    from videoring.errors import ConfigError
    from videoring.pipeline import Pipeline
    from videoring.train import load_train_config, train

    root, paths = clips
    out = tmp_path / "tex"
    trained = train(load_train_config("configs/train_synth.yaml", [*_overrides(root, paths, out, epochs=1), "actions.texture=true"]),
                    log=lambda *x: None)
    common = [f"actions.model={trained.path}", "track.export=none"]
    res = Pipeline.from_config("default", overrides=[*common, "actions.texture=true"])(paths[0])
    assert res.tracks and res.track_actions
    with pytest.raises(ConfigError, match="does not fit this config.*trained with actions.texture=true"):
        Pipeline.from_config("default", overrides=[*common, "actions.texture=false"])


@pytest.mark.parametrize("setting, off", [("recall_shape=true", "recall_shape=false"),
                                           ("recall_heads=3", "recall_heads=1"),
                                           ("recall_tilt=true", "recall_tilt=false"),
                                           ("recall_lag_s=8.0", "recall_lag_s=0"),
                                           ("recall_lag_s=8.0", "recall_lag_s=16"),
                                           ("band_mask=true", "band_mask=false"),
                                           ("texture_masked=true", "texture_masked=false"),
                                           # the same shapes: 4 texture numbers either way
                                           ("texture=false actions.texture_masked=true", "texture=true")])
def test_recall_settings_load_only_with_themselves(tmp_path, setting, off):
    """Recall's settings, and the actor token's where its length does not show them (``band_mask``;
    ``texture`` against ``texture_masked``): a checkpoint made with one loads with it, and a
    config without it is told the setting."""
    from dataclasses import asdict

    from videoring.actions import ActionModel, load_model, save_model
    from videoring.config import PipelineConfig, load_config
    from videoring.errors import ConfigError

    def model(o: str) -> tuple[ActionModel, PipelineConfig]:
        cfg = load_config("configs/default.yaml", [x if x.startswith("actions.") else f"actions.{x}" for x in o.split()], cls=PipelineConfig)
        return ActionModel(cfg, 192, 5), cfg

    m, cfg = model(setting)
    if setting.startswith("recall_shape"):
        assert m.temporal.recall.proj.in_features == model(off)[0].temporal.recall.proj.in_features + 1
    path = tmp_path / "recall.safetensors"
    save_model(m, path, {"labels": m.labels, "config": json.loads(json.dumps(asdict(cfg), default=str))})
    again, _ = model(setting)
    load_model(again, path)
    for k, x in m.state_dict().items():
        assert torch.equal(again.state_dict()[k], x), k
    with pytest.raises(ConfigError, match=f"does not fit this config.*trained with actions.{setting}"):
        load_model(model(off)[0], path)


def test_each_config_fits_the_action_model_it_names():
    """Every analyze config in configs/ runs its action model as it was trained: the weights load
    (the actor token's layout and Recall's inputs match) and the model saw the same encoder and
    the same time steps per second (timestamps enter it in seconds; the rate is not).
    Features-only and training configs name no model to run."""
    from pathlib import Path

    import timm

    from videoring.actions import ActionModel, load_model
    from videoring.config import FeaturesConfig, PipelineConfig, load_config
    from videoring.errors import ConfigError

    checked = []
    for path in sorted(Path("configs").glob("*.yaml")):
        try:
            load_config(path, cls=FeaturesConfig)
            continue  # videoring features: no action model
        except ConfigError:
            pass
        try:
            cfg = load_config(path, cls=PipelineConfig)
        except ConfigError:
            continue  # a training config (its train: section)
        if cfg.actions.model is None:
            continue
        dim = timm.create_model(cfg.encoder.name, pretrained=False, num_classes=0).num_features
        trained = load_model(ActionModel(cfg, dim, cfg.encoder.tokens_per_frame), cfg.actions.model)["config"]
        assert trained["sampling"]["fps"] == cfg.sampling.fps, path
        assert (trained["encoder"]["name"], trained["encoder"]["weights"]) == (cfg.encoder.name, cfg.encoder.weights), path
        checked.append(path.stem)
    assert {"default", "accurate"} <= set(checked)
